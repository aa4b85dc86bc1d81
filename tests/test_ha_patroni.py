"""High availability proven on real failovers: PostgreSQL under Patroni (strict synchronous mode) with etcd.

One stack for the module (tests/patroni_stack.py: etcd, three PostgreSQL nodes, Patroni), and in every scenario
two real ``pykms start`` instances given the same multi-host DSN, each serving a sentry; the sentries ask for
conflicting blocks at the same heights (tests/ha_signing.py). What is broken underneath:

1. the primary's host SIGKILLed (Patroni and PostgreSQL): a synchronous standby is promoted, signing resumes;
2. the primary's host frozen (SIGSTOP) until a standby was promoted, then resumed: nothing signs through it;
3. both standbys lost: no commit, so no signature (fail closed), until one standby is back;
4. an operator's ``patronictl switchover``;
5. etcd lost: Patroni demotes the primary rather than risk two; pykms fails closed and resumes with etcd.

Each prints its figures (``-s``): the gap without a signature, signatures returned, double signs, and signatures
returned whose state is not committed on the primary at the end (the new primary after a failover). The long
form (``PYKMS_SOAK_FAILOVERS``, scripts/soak --failovers N) repeats failovers and prints the same figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykms.errors import PersistError
from pykms.guard.postgres import PostgresGuard
from tests.ha_signing import TIMEOUT_MS, Figures, HaPair
from tests.patroni_stack import LOOP_WAIT_S, RETRY_TIMEOUT_S, TTL_S, Node, PatroniStack, missing_packages

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: How long a failover may take on a loaded CI machine before the test calls it failed: Patroni's ttl (the leader
#: key must expire), a few HA loops, the promotion, and pykms's reconnection.
FAILOVER_BOUND_S = TTL_S + 10 * LOOP_WAIT_S + 30


@pytest.fixture(scope="module")
def stack() -> Iterator[PatroniStack]:
    missing = missing_packages()
    if missing:
        pytest.skip(f"Debian packages missing: {', '.join(missing)} (scripts/setup installs them)")
    s = PatroniStack.create()
    try:
        yield s
    finally:
        s.destroy()


@contextlib.contextmanager
def signing(stack: PatroniStack, tmp_path: Path, chain: str) -> Iterator[HaPair]:
    stack.wait_healthy()
    pair = HaPair.start(tmp_path / "kms", stack.dsn(), chain)
    try:
        pair.run()
        assert pair.wait_signatures(20, since=0, timeout=60), f"no signing before the fault: {pair.failures[-3:]}"
        yield pair
    finally:
        pair.close()


def report(name: str, fig: Figures) -> None:
    print(fig.line(name))
    assert fig.invalid == 0
    assert fig.double_signs == 0, f"{name}: double signs"
    assert fig.not_on_primary == 0, f"{name}: signatures returned whose state is not on the primary"


def primary_dsn(stack: PatroniStack) -> str:
    leader = stack.wait_leader(timeout=FAILOVER_BOUND_S)
    return stack.node_dsn(leader)


def restore(stack: PatroniStack, *nodes: Node) -> None:
    """Brings killed hosts back; they rejoin as standbys (pg_rewind when their timeline diverged)."""
    for node in nodes:
        if node.proc is None or node.proc.poll() is not None:
            stack.start_node(node)
    stack.wait_healthy(timeout=180)


def kill_primary_and_measure(stack: PatroniStack, pair: HaPair) -> tuple[Node, Node, float]:
    """One failover under load: (old leader, new leader, fault time)."""
    old = stack.wait_leader()
    fault = time.monotonic()
    stack.kill_host(old)
    new = stack.wait_leader(other_than=old, timeout=FAILOVER_BOUND_S)
    assert pair.wait_signatures(10, since=fault, timeout=FAILOVER_BOUND_S), (
        f"signing did not resume after the failover to {new.name}: {pair.failures[-3:]}"
    )
    return old, new, fault


# ---------------------------------------------------------------------------------------------------------------


def test_1_sigkill_primary_host(stack: PatroniStack, tmp_path: Path) -> None:
    with signing(stack, tmp_path, "ha-kill") as pair:
        old, new, fault = kill_primary_and_measure(stack, pair)
        pair.stop()
        fig = pair.figures(stack.node_dsn(new), fault_at=fault)
    report(f"1 SIGKILL of {old.name}'s host, {new.name} promoted", fig)
    assert fig.gap_s is not None and fig.gap_s < FAILOVER_BOUND_S
    restore(stack, old)


def test_2_frozen_primary_resumed_after_failover(stack: PatroniStack, tmp_path: Path) -> None:
    with signing(stack, tmp_path, "ha-freeze") as pair:
        old = stack.wait_leader()
        fault = time.monotonic()
        groups = stack.freeze_host(old)
        try:
            new = stack.wait_leader(other_than=old, timeout=FAILOVER_BOUND_S)
            assert pair.wait_signatures(10, since=fault, timeout=FAILOVER_BOUND_S), pair.failures[-3:]
        finally:
            stack.thaw(groups)
        thawed = time.monotonic()
        # The old primary wakes up believing it is the primary until its Patroni sees the lost leader key. A
        # signer that reaches it then must not get a commit: its synchronous standbys follow the new primary.
        old_guard = PostgresGuard(stack.node_dsn(old), "ha-freeze", timeout_ms=TIMEOUT_MS)
        try:
            with pytest.raises(PersistError):
                old_guard.check_and_sign(pair.height + 1000, 0, 1, b"split-brain probe", lambda b: b"\x00" * 64)
        finally:
            old_guard.close()
        assert pair.wait_signatures(10, since=thawed, timeout=60), pair.failures[-3:]
        pair.stop()
        fig = pair.figures(primary_dsn(stack), fault_at=fault)
    report(f"2 {old.name} frozen, {new.name} promoted, {old.name} resumed", fig)
    restore(stack, old)


def test_3_both_standbys_lost_fail_closed(stack: PatroniStack, tmp_path: Path) -> None:
    with signing(stack, tmp_path, "ha-standbys") as pair:
        leader = stack.wait_leader()
        standbys = [n for n in stack.nodes if n is not leader]
        lost = time.monotonic()
        stack.kill_host(*standbys)
        # A commit acknowledged just before the kill may still be on its way back: allow half a second.
        time.sleep(TTL_S)
        during = [(round(x.at - lost, 2), x.height) for x in pair.signed if x.at > lost + 0.5]
        assert not during, f"signatures with no standby to acknowledge a commit: {during[:10]}\n{stack.logs_tail()}"
        assert stack.leader() is leader, "the primary must stay (and refuse commits), not be replaced"
        back = time.monotonic()
        stack.start_node(standbys[0])
        assert pair.wait_signatures(10, since=back, timeout=FAILOVER_BOUND_S + 30), pair.failures[-3:]
        resumed = time.monotonic() - back
        pair.stop()
        fig = pair.figures(stack.node_dsn(leader), fault_at=lost)
    report(f"3 both standbys lost ({TTL_S} s without signatures checked), one back after {resumed:.1f} s", fig)
    restore(stack, *standbys)


def test_4_switchover(stack: PatroniStack, tmp_path: Path) -> None:
    with signing(stack, tmp_path, "ha-switchover") as pair:
        old = stack.wait_leader()
        candidate = stack.node(stack.sync_standbys()[0])
        fault = time.monotonic()
        out = stack.patronictl("switchover", "--leader", old.name, "--candidate", candidate.name, "--force")
        assert out.returncode == 0, out.stdout + out.stderr
        new = stack.wait_leader(other_than=old, timeout=FAILOVER_BOUND_S)
        assert new is candidate
        assert pair.wait_signatures(10, since=fault, timeout=FAILOVER_BOUND_S), pair.failures[-3:]
        pair.stop()
        fig = pair.figures(stack.node_dsn(new), fault_at=fault)
    report(f"4 switchover {old.name} -> {new.name}", fig)
    stack.wait_healthy(timeout=120)


def test_5_etcd_lost(stack: PatroniStack, tmp_path: Path) -> None:
    with signing(stack, tmp_path, "ha-etcd") as pair:
        leader = stack.wait_leader()
        fault = time.monotonic()
        stack.kill_etcd()
        # Without the DCS the primary cannot renew its leader key; after retry_timeout Patroni demotes it to
        # read-only (no failsafe mode), and no standby can be promoted either: nobody writes, pykms fails closed.
        demote_bound = RETRY_TIMEOUT_S + TTL_S + 10
        time.sleep(demote_bound)
        quiet_from = time.monotonic()
        time.sleep(5)
        after_demotion = pair.count_since(quiet_from)
        last = max((s.at for s in pair.signed), default=fault)
        back = time.monotonic()
        stack.start_etcd()
        new = stack.wait_leader(timeout=FAILOVER_BOUND_S + 30)
        assert pair.wait_signatures(10, since=back, timeout=FAILOVER_BOUND_S + 30), pair.failures[-3:]
        pair.stop()
        fig = pair.figures(stack.node_dsn(new), fault_at=fault)
    report(
        f"5 etcd lost: signatures for {max(0.0, last - fault):.1f} s more, none after demotion "
        f"({after_demotion}); leader after etcd is back: {new.name} (was {leader.name})",
        fig,
    )
    assert after_demotion == 0, "the primary kept committing with no DCS beyond retry_timeout"
    stack.wait_healthy(timeout=120)


def test_repeated_failovers(stack: PatroniStack, tmp_path: Path) -> None:
    """The long form: PYKMS_SOAK_FAILOVERS failovers (host SIGKILLs) under load, one figures line each."""
    n = int(os.environ.get("PYKMS_SOAK_FAILOVERS", "2"))
    gaps: list[float] = []
    with signing(stack, tmp_path, "ha-repeat") as pair:
        for i in range(n):
            old, new, fault = kill_primary_and_measure(stack, pair)
            fig = pair.figures(stack.node_dsn(new), fault_at=fault)
            print(fig.line(f"failover {i + 1}/{n}: {old.name} killed, {new.name} promoted"))
            assert fig.gap_s is not None
            gaps.append(fig.gap_s)
            restore(stack, old)
        pair.stop()
        fig = pair.figures(primary_dsn(stack), fault_at=None)
    gaps.sort()
    print(
        f"[ha failovers] {n} failovers; gap min {gaps[0]:.1f} s, median {gaps[len(gaps) // 2]:.1f} s, "
        f"max {gaps[-1]:.1f} s"
    )
    report(f"{n} failovers in all", fig)
