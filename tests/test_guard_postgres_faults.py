"""The PostgreSQL guard under faults, each on a server of the test's own: the server stopped or crashed mid-run,
frozen (answers nothing), a backend killed during COMMIT, and COMMIT cancelled while waiting for a synchronous
standby. In every case: no signature without a committed state, signing resumes, never two signatures per HRS.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import psycopg
import pytest
from psycopg import sql
from test_guard_postgres import CHAIN, KEY, committed_signatures, history, ready, sign
from test_guard_support import sign_bytes

from pykms.errors import ConflictError, DoubleSignError, PersistError
from pykms.guard.pgadmin import read_state
from pykms.guard.postgres import PostgresGuard
from pykms.guard.state import SignState
from tests.pg import PgServer, private_pg  # noqa: F401  (fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _db(server: PgServer) -> str:
    dsn = ready(server.dsn(server.create_database()))
    history(dsn)
    return dsn


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_stopped_mid_run_pauses_and_resumes(private_pg: PgServer, mode: str) -> None:
    """Stop (fast: clean shutdown; immediate: a crash with WAL recovery) while a guard signs in a loop."""
    dsn = _db(private_pg)
    guard = PostgresGuard(dsn, CHAIN, timeout_ms=500)
    returned: dict[tuple[int, int, int], bytes] = {}
    failures = 0
    stop = threading.Event()
    progress = threading.Event()

    def run() -> None:
        nonlocal failures
        height = 1
        while not stop.is_set():
            for step in (1, 2, 3):
                try:
                    out = guard.check_and_sign(height, 0, step, sign_bytes(height, 0, step, 1), sign)
                except PersistError:
                    failures += 1
                    time.sleep(0.02)
                    continue
                returned[(height, 0, step)] = out.signature
                progress.set()
            height += 1

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(2):
            progress.wait(10)
            time.sleep(0.2)
            private_pg.stop(mode)
            time.sleep(0.1)  # a call whose COMMIT landed just before the stop has returned by now
            before = len(returned)
            time.sleep(0.5)
            assert len(returned) == before, "a signature was returned while the server was down"
            progress.clear()
            private_pg.start()
            assert progress.wait(15), "signing did not resume after the server came back"
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)
        guard.close()
    assert failures > 0
    committed = committed_signatures(dsn)
    for hrs, sig in returned.items():
        assert committed[hrs] == {sig}, f"{hrs}: returned a signature the database does not hold"
    assert all(len(sigs) == 1 for sigs in committed.values())
    final = read_state(dsn, CHAIN)
    assert returned[(final.height, final.round, final.step)] == final.signature or final.height > max(returned)[0]


def test_frozen_server_is_bounded_by_the_watchdog(private_pg: PgServer) -> None:
    """A server that accepts TCP but never answers (SIGSTOP): the call fails within its budget, then recovers."""
    dsn = _db(private_pg)
    guard = PostgresGuard(dsn, CHAIN, timeout_ms=400)
    try:
        assert guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign).fresh
        private_pg.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(PersistError):
                guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 1), sign)
            elapsed = time.monotonic() - started
        finally:
            private_pg.thaw()
        assert elapsed < 0.4 + 0.5 + 1.0, f"blocked {elapsed:.2f} s"
        out = guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 1), sign)
        assert out.fresh
        assert read_state(dsn, CHAIN).signature == out.signature
    finally:
        guard.close()


def _slow_commit(dsn: str, seconds: float) -> None:
    """A deferred constraint trigger: runs at COMMIT, so COMMIT itself takes ``seconds``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER test_slow AFTER UPDATE ON pykms_sign_state
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_slow();
            """  # type: ignore[arg-type]
        )


def _drop_slow_commit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER test_slow ON pykms_sign_state")


def test_backend_killed_during_commit_returns_no_signature(private_pg: PgServer) -> None:
    dsn = _db(private_pg)
    _slow_commit(dsn, 1.0)
    guard = PostgresGuard(dsn, CHAIN, timeout_ms=3000)
    killed = threading.Event()

    def killer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(300):
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query = 'COMMIT' AND state = 'active'"
                    " AND application_name LIKE 'pykms/%'"
                ).fetchone()
                if row is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    killed.set()
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    data = sign_bytes(1, 0, 2, 1)
    signed: list[bytes] = []
    try:
        with pytest.raises(PersistError, match="COMMIT"):
            guard.check_and_sign(1, 0, 2, data, lambda d: signed.append(sign(d)) or signed[-1])
        thread.join()
        assert killed.is_set()
        assert signed, "the signer ran (the kill hit COMMIT, after signing)"
        # The terminated COMMIT did not land: the state is unchanged and the same request signs again.
        assert read_state(dsn, CHAIN) == SignState.initial()
        _drop_slow_commit(dsn)
        out = guard.check_and_sign(1, 0, 2, data, sign)
        assert out.fresh and out.signature == signed[0]
        with pytest.raises(ConflictError):
            guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 2), sign)
    finally:
        guard.close()
    assert committed_signatures(dsn) == {(1, 0, 2): {signed[0]}}


def _set_sync_standbys(server: PgServer, value: str) -> None:
    """Set synchronous_standby_names and wait until new sessions see it (the reload is asynchronous)."""
    with server.admin() as admin:
        if value:
            admin.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(value)))
        else:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")
    for _ in range(200):
        with server.admin() as probe:
            row = probe.execute("SHOW synchronous_standby_names").fetchone()
        if row is not None and row[0] == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"synchronous_standby_names did not become {value!r}")


def test_commit_cancelled_waiting_for_a_synchronous_standby_is_not_a_success(private_pg: PgServer) -> None:
    """synchronous_standby_names names a standby that never answers, so COMMIT waits for it.

    Two ways out, both must withhold the signature: the budget expires (the watchdog cuts the connection: outcome
    unknown), or a cancel reaches the server, which then reports success with a WARNING ("committed locally, but
    might not have been replicated"). Either way the row did land locally; the next request re-reads it.
    """
    dsn = _db(private_pg)
    _set_sync_standbys(private_pg, "ghost_standby")
    guard = PostgresGuard(dsn, CHAIN, timeout_ms=400)
    patient = PostgresGuard(dsn, CHAIN, timeout_ms=5000)
    data = sign_bytes(2, 0, 2, 1)

    def cancel_syncrep_waiters() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(300):
                rows = conn.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                ).fetchall()
                if rows:
                    return True
                time.sleep(0.01)
        return False

    try:
        thread = threading.Thread(target=cancel_syncrep_waiters)
        thread.start()
        with pytest.raises(PersistError, match="canceling wait for synchronous replication"):
            patient.check_and_sign(2, 0, 2, data, sign)
        thread.join()
        # Committed locally (visible once the wait ended), but never returned.
        local = read_state(dsn, CHAIN)
        assert (local.height, local.step, local.sign_bytes) == (2, 2, data)
        # Reusing it is gated the same way: the reuse path commits a write and waits for the standby too.
        with pytest.raises(PersistError, match="COMMIT"):
            guard.check_and_sign(2, 0, 2, data, sign)
        assert cancel_syncrep_waiters()  # the abandoned backend still waits, holding the row: release it
        _set_sync_standbys(private_pg, "")
        guard.close()
        guard = PostgresGuard(dsn, CHAIN, timeout_ms=400)  # a fresh session surely sees the reloaded setting
        out = guard.check_and_sign(2, 0, 2, data, sign)
        assert not out.fresh and out.signature == local.signature
        KEY.verify_key.verify(data, out.signature)
        with pytest.raises(ConflictError):
            guard.check_and_sign(2, 0, 2, sign_bytes(2, 0, 2, 9), sign)
    finally:
        guard.close()
        patient.close()


def test_many_restarts_never_two_signatures_per_hrs(private_pg: PgServer) -> None:
    """Two guards race while the server is crashed and restarted repeatedly."""
    dsn = _db(private_pg)
    returned: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
    stop = threading.Event()
    lock = threading.Lock()

    errors: list[BaseException] = []

    def run(block: int) -> None:
        guard = PostgresGuard(dsn, CHAIN, timeout_ms=500)
        try:
            height = 1
            while not stop.is_set() and height < 10_000:
                for step in (1, 2, 3):
                    try:
                        out = guard.check_and_sign(height, 0, step, sign_bytes(height, 0, step, block), sign)
                    except PersistError:
                        time.sleep(0.01)
                        continue
                    except DoubleSignError:
                        continue  # the other guard got there first (conflict) or is ahead (regression)
                    with lock:
                        returned[(height, 0, step)].add(out.signature)
                height += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            guard.close()

    threads = [threading.Thread(target=run, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    try:
        # A soak run raises this: PYKMS_PG_RESTARTS=100 pytest -k many_restarts -s
        for _ in range(int(os.environ.get("PYKMS_PG_RESTARTS", "4"))):
            time.sleep(0.3)
            private_pg.restart("immediate")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    n_committed = sum(len(c) for c in committed_signatures(dsn).values())
    print(f"{len(returned)} HRS signed and returned, {n_committed} HRS committed")
    assert len(returned) > 20
    assert all(len(sigs) == 1 for sigs in returned.values()), "double sign"
    committed = committed_signatures(dsn)
    for hrs, sigs in returned.items():
        assert sigs == committed[hrs]
