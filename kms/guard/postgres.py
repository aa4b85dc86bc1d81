"""The double-sign guard in PostgreSQL: one row per chain, shared by any number of pykms instances.

Theory of operation (docs/ha-postgres.md has the operator's side)
-----------------------------------------------------------------
Every pykms instance serving a chain runs each signing request as one transaction on that chain's row::

    BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout/statement_timeout
    SELECT height, round, step, signature, sign_bytes ... WHERE chain_id = $1 FOR UPDATE
    decide()  ->  refuse: ROLLBACK, raise
              ->  reuse:  UPDATE reused_at; COMMIT; return the stored signature
              ->  fresh:  sign; UPDATE the row; COMMIT; return the new signature

The row lock serialises the instances: a second instance's SELECT ... FOR UPDATE waits for the first one's
COMMIT and then reads the committed row, so it reuses the very same signature (identical request) or refuses
(conflicting one). A signature is returned only after COMMIT has reported success; nothing else counts.

READ COMMITTED, not SERIALIZABLE: a FOR UPDATE that waited re-reads the newest committed row (PostgreSQL docs,
"Read Committed Isolation Level"), which is what the decision needs; SERIALIZABLE adds nothing on one locked row
and would fail the waiter with a serialization error instead of letting it decide.

The reuse path COMMITs a write because PostgreSQL shows a committed row to other sessions before a synchronous
standby has it: committing makes this instance wait, under synchronous replication, until the WAL up to the row
it read is on the standby (WAL is acknowledged in order), so no stored signature leaves that a promoted standby
would not know.

Fail closed: an unreachable database, a lock or statement over its budget, a lost connection, or a COMMIT whose
outcome is unknown (lost during COMMIT, or any WARNING during COMMIT, which is how PostgreSQL reports "canceling
wait for synchronous replication") raise ``PersistError`` and the signature is dropped; the next request re-reads
the row. ``timeout_ms`` bounds the call on the server (``lock_timeout``/``statement_timeout``) and on the client
(a watchdog that shuts the socket down: a frozen host still acknowledges TCP keepalives). A missing schema or row
is ``StateMissing`` naming ``pykms guard init-db`` / ``pykms state import``.

A trigger refuses any UPDATE that moves (height, round, step) backwards or changes the sign bytes at the same
height/round/step, unless the transaction set ``pykms.allow_regression`` (``pykms state import --force``): a
second line of defence against a faulty or outdated client, not the decision itself.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import astuple
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg import sql

from pykms.errors import KmsError, PersistError, StateError
from pykms.guard.backend import GuardOutcome, SignFn
from pykms.guard.decide import ReuseSignature, decide
from pykms.guard.pgadmin import (
    INSTANCE,
    UPDATE_SIGNED,
    WATCHDOG_GRACE_S,
    check_schema,
    connect,
    fetch_state,
    map_error,
    redacted_target,
)
from pykms.guard.state import SignState
from pykms.logconfig import get_logger

__all__ = ["PostgresGuard"]

#: A WARNING during COMMIT means its outcome is not what we asked for (syncrep.c: "canceling wait for synchronous
#: replication ... The transaction has already committed locally, but might not have been replicated").
COMMIT_WARNING: Final = "WARNING"

#: statement_timeout is set this much above lock_timeout so that waiting for the row reports as a lock wait.
STATEMENT_SLACK_MS: Final = 100

UPDATE_REUSED: Final = "UPDATE pykms_sign_state SET reused_at = now() WHERE chain_id = %s"

# ----------------------------------------------------------------------------------------------------------------
# Watchdog


class _Watchdog:
    """Cuts a connection's socket (shutdown, not close: no descriptor is freed under libpq's feet) when a call
    outlives its deadline, so a frozen or partitioned server cannot hold a signing request forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fd = -1
        self._deadline = 0.0
        self._fired = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pykms-pg-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def armed(self, fd: int, deadline: float) -> Iterator[Callable[[], bool]]:
        """Within the block, the socket ``fd`` is shut down at ``deadline`` (monotonic); yields ``fired()``."""
        with self._cond:
            self._fd, self._deadline, self._fired = fd, deadline, False
            self._cond.notify()
        try:
            yield lambda: self._fired
        finally:
            self.disarm()

    def disarm(self) -> None:
        """Forget the socket; once this returns the watchdog will not touch it (call before closing it)."""
        with self._cond:
            self._fd = -1

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if self._fd < 0:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                try:
                    dup = socket.socket(fileno=os.dup(self._fd))
                    try:
                        dup.shutdown(socket.SHUT_RDWR)
                    finally:
                        dup.close()
                except OSError:
                    pass  # already closed: the call is failing anyway
                self._fired = True
                self._fd = -1

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=1)


# ----------------------------------------------------------------------------------------------------------------
# The guard


class _CommitUnknown(Exception):
    """COMMIT was sent and its outcome is not known to be a durable success."""


class PostgresGuard:
    """One chain's guard in PostgreSQL; see the module doc. Callers serialise calls on one instance (the chain
    lock); separate instances (threads, processes, hosts) are serialised by the row lock.
    """

    backend = "postgres"

    def __init__(self, dsn: str, chain_id: str, *, timeout_ms: int = 2000) -> None:
        self.chain_id = chain_id
        self.timeout_ms = timeout_ms
        self._dsn = dsn
        self._target = redacted_target(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        #: (severity, message) of the notices received during the current COMMIT.
        self._notices: list[tuple[str, str]] = []
        self._watchdog = _Watchdog()
        self._log = get_logger("pykms.guard.postgres", chain_id=chain_id, db=self._target)
        try:
            self._check_row()
        except PersistError as exc:
            # Unreachable now is not a reason to stop for good: every request retries and fails closed meanwhile.
            self._log.warning("guard_db_unavailable", reason=str(exc))
        except StateError:
            self._watchdog.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresGuard(chain_id={self.chain_id!r}, db={self._target!r}, timeout_ms={self.timeout_ms})"

    # -- connection ---------------------------------------------------------------------------------------------

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """(connection, reused): the live connection or a new one (schema checked)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, True
        self._drop()
        conn = connect(self._dsn, timeout_ms=self.timeout_ms, application_name=f"pykms/{self.chain_id}"[:63])
        try:
            check_schema(conn, self._dsn)
        except psycopg.Error as exc:
            conn.close()
            raise map_error(exc, "checking the schema", self._dsn, self.timeout_ms) from None
        except KmsError:
            conn.close()
            raise
        conn.add_notice_handler(self._on_notice)
        self._conn = conn
        self._log.info("guard_db_connected")
        return conn, False

    def _drop(self) -> None:
        # Disarm first: the descriptor number may be reused as soon as the connection closes it.
        self._watchdog.disarm()
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def _check_row(self) -> None:
        """Fail at start (StateError) when the schema or the chain's row is missing or unreadable."""
        conn, _ = self._connection()
        try:
            fetch_state(conn, self.chain_id, self._dsn)
        except psycopg.Error as exc:
            self._drop()
            raise map_error(exc, "reading the state", self._dsn, self.timeout_ms) from None

    # -- GuardBackend ---------------------------------------------------------------------------------------------

    def check_and_sign(self, height: int, round_: int, step: int, sign_bytes: bytes, sign: SignFn) -> GuardOutcome:
        deadline = time.monotonic() + self.timeout_ms / 1000
        try:
            try:
                return self._attempt(height, round_, step, sign_bytes, sign, deadline, first=True)
            except _StaleConnection:
                # The kept connection died while idle (server restart, failover): nothing was sent that could
                # have committed, so one more attempt on a fresh connection is safe.
                self._log.info("guard_db_reconnecting")
                return self._attempt(height, round_, step, sign_bytes, sign, deadline, first=False)
        except PersistError as exc:
            self._log.warning("guard_db_unavailable", reason=str(exc), height=height, round=round_, step=step)
            raise

    def _attempt(
        self, height: int, round_: int, step: int, sign_bytes: bytes, sign: SignFn, deadline: float, *, first: bool
    ) -> GuardOutcome:
        conn, reused = self._connection()
        if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._rollback_quietly(conn)  # never start inside a leftover transaction
            conn, reused = self._connection()
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise PersistError(f"postgres guard {self._target}: no time left of the {self.timeout_ms} ms budget")
        doing = "locking the chain's row"
        committing = False
        with self._watchdog.armed(conn.pgconn.socket, deadline + WATCHDOG_GRACE_S) as fired:
            try:
                conn.execute(
                    sql.SQL(
                        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {0}; "
                        "SET LOCAL statement_timeout = {1}"
                    ).format(sql.Literal(remaining_ms), sql.Literal(remaining_ms + STATEMENT_SLACK_MS))
                )
                state = fetch_state(conn, self.chain_id, self._dsn, for_update=True)
                doing = "deciding"
                decision = decide(state, height, round_, step, sign_bytes)  # refusals roll back below
                if isinstance(decision, ReuseSignature):
                    doing = "recording the reuse"
                    conn.execute(UPDATE_REUSED, (self.chain_id,))
                    committing = True
                    self._commit(conn)
                    return GuardOutcome(decision.signature, decision.timestamp, fresh=False)
                doing = "signing"
                signature = sign(sign_bytes)
                new_state = SignState(height, round_, step, signature, sign_bytes)
                doing = "writing the state"
                conn.execute(UPDATE_SIGNED, (*astuple(new_state), INSTANCE, self.chain_id))
                committing = True
                self._commit(conn)
                return GuardOutcome(signature, None, fresh=True)
            except _CommitUnknown as exc:
                self._drop()
                self._log.error("guard_commit_unknown", reason=str(exc), height=height, round=round_, step=step)
                raise PersistError(
                    f"postgres guard {self._target}: the outcome of COMMIT is unknown ({exc}); the signature is "
                    "withheld and the next request re-reads the state"
                ) from None
            except psycopg.Error as exc:
                timed_out = fired()
                broken = conn.broken or conn.closed or timed_out
                if broken:
                    self._drop()
                else:
                    self._rollback_quietly(conn)
                if committing and broken:
                    self._log.error("guard_commit_unknown", height=height, round=round_, step=step)
                    raise PersistError(
                        f"postgres guard {self._target}: the connection was lost during COMMIT; the signature is "
                        "withheld and the next request re-reads the state"
                    ) from None
                if timed_out:
                    raise PersistError(
                        f"postgres guard {self._target}: no answer from the database within {self.timeout_ms} ms "
                        f"while {doing}; nothing signed"
                    ) from None
                if first and reused and broken and doing == "locking the chain's row":
                    raise _StaleConnection() from None
                raise map_error(exc, doing, self._dsn, self.timeout_ms) from None
            except BaseException:
                # A refusal, a corrupt row, a signer failure, an interrupt: end the transaction, free the row.
                self._rollback_quietly(conn)
                raise

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        # Copy the fields now: the Diagnostic reads a libpq result that is freed once this handler returns.
        self._notices.append((str(diag.severity_nonlocalized or diag.severity or ""), str(diag.message_primary)))

    def _commit(self, conn: psycopg.Connection[Any]) -> None:
        """COMMIT, and succeed only on a clean success: a WARNING means it is not what we asked for."""
        self._notices.clear()
        conn.execute("COMMIT")
        warnings = [message for severity, message in self._notices if severity == COMMIT_WARNING]
        if warnings:
            raise _CommitUnknown("; ".join(warnings))
        status = conn.pgconn.transaction_status
        if status != psycopg.pq.TransactionStatus.IDLE:
            raise _CommitUnknown(f"transaction status {status!r} after COMMIT")

    def _rollback_quietly(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop()

    def close(self) -> None:
        self._drop()
        self._watchdog.close()


class _StaleConnection(Exception):
    """The kept connection was dead before anything of this call reached the server."""
