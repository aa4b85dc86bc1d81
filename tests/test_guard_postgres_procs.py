"""Several OS processes (tests/pg_worker.py, each its own PostgresGuard and connection) on one chain.

A signature counts as escaped when its worker printed it. Checks, over everything every worker printed (also the
workers we SIGKILLed): at most one signature per height/round/step, each one committed in the database (a
test-only history trigger records every committed UPDATE), each valid over its committed sign bytes.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from test_guard_postgres import CHAIN, committed_signatures, history, ready

from pykms.guard.pgadmin import read_state
from tests.pg import pg_dsn, pg_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One pg_worker process and the lines it printed (read by a thread so its pipe never fills)."""

    def __init__(self, dsn: str, seed: int, start: int, heights: int, *, wait: bool = False) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        args = [dsn, CHAIN, str(seed), str(start), str(heights), "1500"] + (["wait"] if wait else [])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.pg_worker", *args],
            stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def go(self) -> None:
        deadline = time.monotonic() + 30
        while not any(line == "READY" for _, line in self.lines):
            assert time.monotonic() < deadline and self.proc.poll() is None, "worker did not start"
            time.sleep(0.01)
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait()
        self.reader.join(10)

    def finish(self, timeout: float = 60) -> None:
        self.proc.wait(timeout)
        self.reader.join(10)


def _check(dsn: str, workers: list[Worker]) -> tuple[int, int]:
    """(signatures printed, refusals printed); asserts the invariants."""
    printed: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
    sigs = refused = 0
    for w in workers:
        for _t, line in w.lines:
            parts = line.split()
            if not parts or parts[0] == "READY":
                continue
            if parts[0] == "SIG":
                h, r, s = int(parts[1]), int(parts[2]), int(parts[3])
                printed[(h, r, s)].add(bytes.fromhex(parts[5]))
                sigs += 1
            elif parts[0] == "REFUSED":
                refused += 1
    assert all(len(v) == 1 for v in printed.values()), "two different signatures escaped for one HRS"
    committed = committed_signatures(dsn)
    assert all(len(v) == 1 for v in committed.values()), "two different signatures committed for one HRS"
    for hrs, sig in printed.items():
        assert sig == committed[hrs], f"{hrs}: a printed signature is not the committed one"
    return sigs, refused


def test_two_processes_same_and_conflicting_requests(pg_dsn: str) -> None:
    ready(pg_dsn)
    history(pg_dsn)
    # Seeds 11 and 12 choose blocks independently (conflicts at about half the HRS); 11 twice: identical.
    workers = [Worker(pg_dsn, seed, 1, 150, wait=True) for seed in (11, 12, 11)]
    for w in workers:
        w.go()
    for w in workers:
        w.finish()
        assert w.proc.returncode == 0
    sigs, refused = _check(pg_dsn, workers)
    assert sigs >= 150 and refused > 0  # every height is signed by someone (its first request is always fresh)
    # Identical requests from the two seed-11 workers: wherever both got a signature, it is the same one.
    a = {tuple(line.split()[1:4]): line.split()[5] for _, line in workers[0].lines if line.startswith("SIG")}
    b = {tuple(line.split()[1:4]): line.split()[5] for _, line in workers[2].lines if line.startswith("SIG")}
    both = a.keys() & b.keys()
    assert both and all(a[k] == b[k] for k in both)
    assert read_state(pg_dsn, CHAIN).height == 150


def test_sigkill_at_random_moments_never_double_signs(pg_dsn: str) -> None:
    """Two workers race; one of them is SIGKILLed at a random moment about 50 times and replaced."""
    ready(pg_dsn)
    history(pg_dsn)
    rng = random.Random(int(os.environ.get("PYKMS_KILL_SEED", "20261122")))
    # A soak run raises these: PYKMS_PG_KILLS=1000 PYKMS_PG_KILL_BUDGET_S=900 pytest -k sigkill -s
    kills = int(os.environ.get("PYKMS_PG_KILLS", "50"))
    budget_s = float(os.environ.get("PYKMS_PG_KILL_BUDGET_S", "40"))
    started = time.monotonic()
    seed = 100

    def spawn() -> Worker:
        nonlocal seed
        seed += 1
        return Worker(pg_dsn, seed, read_state(pg_dsn, CHAIN).height + 1, 100_000)

    live = [spawn(), spawn()]
    everyone = list(live)
    done = 0
    try:
        while done < kills and time.monotonic() - started < budget_s:
            time.sleep(rng.uniform(0.05, 0.5))
            victim = rng.randrange(2)
            live[victim].kill()
            done += 1
            live[victim] = spawn()
            everyone.append(live[victim])
        # The survivors keep signing after the last kill.
        mark = time.monotonic()
        time.sleep(1.5)
    finally:
        for w in live:
            w.kill()
    assert done >= min(30, kills), f"only {done} kills within {budget_s} s"
    sigs, _refused = _check(pg_dsn, everyone)
    print(
        f"kills={done} in {time.monotonic() - started:.0f} s, workers={len(everyone)}, signatures={sigs}, "
        f"refusals={_refused}, final={read_state(pg_dsn, CHAIN)}"
    )
    assert sigs > done
    assert any(t > mark and line.startswith("SIG") for w in everyone for t, line in w.lines)
