"""The PostgreSQL guard's schema and administration: the DSN, connections, migrations (``pykms guard init-db``)
and reading or replacing a chain's row (``pykms state show|import|init``).

The signing transaction itself lives in ``pykms.guard.postgres``; both share the error mapping here, so every
psycopg error becomes a pykms error in one place and never carries the DSN's password.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any, Final

from pykms.config import GuardConfig
from pykms.errors import ConfigError, ConflictError, KmsError, PersistError, StateCorrupt, StateError, StateMissing

try:
    import psycopg
    import psycopg.errors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - an install without the extra
    raise ConfigError(
        "the postgres guard needs psycopg 3, which is not installed",
        key="guard.backend",
        fix="pip install 'pykms[postgres]'",
    ) from None

from pykms.guard.decide import refuse_older_import
from pykms.guard.state import SignState
from pykms.keyfiles import read_secret_file

__all__ = ["SCHEMA_VERSION", "connect", "dsn_from_config", "init_db", "read_state", "redacted_target", "write_state"]

INIT_DB_FIX = (
    "run `pykms guard init-db -c <tmkms.toml>` once against this database (it creates or migrates the schema and "
    "never changes a chain's state)"
)
IMPORT_FIX = (
    "import the node's or tmkms's state with `pykms state import -c <tmkms.toml> --chain <id> <file>` (the guard "
    "then refuses everything up to that height/round/step), or, only for a key that has never signed on this "
    "chain, `pykms state init -c <tmkms.toml> --chain <id>` (it starts the guard at height 0: a key that has "
    "signed could then sign a conflicting vote)"
)

#: Who wrote a row, for operators reading the table: host and process.
INSTANCE: Final = f"{socket.gethostname()}:{os.getpid()}"

#: Extra time the client-side watchdog allows beyond the server-side timeouts, so that in the ordinary case the
#: server cancels cleanly (the connection survives) before the watchdog has to cut the socket.
WATCHDOG_GRACE_S: Final = 0.5

#: pg_advisory_xact_lock key serialising concurrent `init-db` runs (any constant: "pykms" in ASCII).
_MIGRATION_LOCK: Final = 0x70796B6D73

_SCHEMA_V1: Final = r"""
CREATE TABLE pykms_sign_state (
    chain_id    text        PRIMARY KEY CHECK (length(chain_id) BETWEEN 1 AND 50),
    height      bigint      NOT NULL CHECK (height >= 0),
    round       integer     NOT NULL CHECK (round >= 0),
    step        smallint    NOT NULL CHECK (step BETWEEN 0 AND 3),
    signature   bytea       NOT NULL DEFAULT '\x',
    sign_bytes  bytea       NOT NULL DEFAULT '\x',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL DEFAULT '',
    reused_at   timestamptz,
    -- FilePV panics on sign bytes without their signature (privval/file.go); so does the database.
    CONSTRAINT sign_bytes_need_signature CHECK (length(sign_bytes) = 0 OR length(signature) > 0)
);

CREATE FUNCTION pykms_no_regression() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pykms.allow_regression', true), '') = 'on' THEN
        RETURN NEW;
    END IF;
    IF (NEW.height, NEW.round, NEW.step) < (OLD.height, OLD.round, OLD.step) THEN
        RAISE EXCEPTION 'pykms guard: regression of chain % from %/%/% to %/%/%', OLD.chain_id,
            OLD.height, OLD.round, OLD.step, NEW.height, NEW.round, NEW.step
            USING ERRCODE = 'PK001';
    END IF;
    IF (NEW.height, NEW.round, NEW.step) = (OLD.height, OLD.round, OLD.step)
            AND length(OLD.sign_bytes) > 0
            AND (NEW.sign_bytes IS DISTINCT FROM OLD.sign_bytes OR NEW.signature IS DISTINCT FROM OLD.signature)
    THEN
        RAISE EXCEPTION 'pykms guard: conflicting payload for chain % at %/%/%', OLD.chain_id,
            OLD.height, OLD.round, OLD.step
            USING ERRCODE = 'PK002';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER pykms_no_regression BEFORE UPDATE ON pykms_sign_state
    FOR EACH ROW EXECUTE FUNCTION pykms_no_regression();
"""

#: (version, DDL) applied in order by init_db, each in the transaction that records it in pykms_schema_version.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = ((1, _SCHEMA_V1),)
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

SELECT_ROW: Final = "SELECT height, round, step, signature, sign_bytes FROM pykms_sign_state WHERE chain_id = %s"
SELECT_FOR_UPDATE: Final = SELECT_ROW + " FOR UPDATE"
UPDATE_SIGNED: Final = (
    "UPDATE pykms_sign_state SET height = %s, round = %s, step = %s, signature = %s, sign_bytes = %s, "
    "updated_at = now(), updated_by = %s WHERE chain_id = %s"
)


# ----------------------------------------------------------------------------------------------------------------
# DSN and errors


def dsn_from_config(cfg: GuardConfig) -> str:
    """The DSN from ``dsn_file`` (a 0600 file, first line) or the ``dsn_env`` variable; never from the config."""
    if cfg.dsn_file is not None:
        text = read_secret_file(Path(cfg.dsn_file)).decode("utf-8", "replace").strip()
        source = str(cfg.dsn_file)
    elif cfg.dsn_env is not None:
        text = os.environ.get(cfg.dsn_env, "").strip()
        source = f"${cfg.dsn_env}"
    else:
        raise ConfigError(
            "the postgres guard needs a DSN", key="guard.dsn_file", fix='add dsn_file = "secrets/guard.dsn"'
        )
    if not text:
        raise ConfigError(f"{source} is empty", key="guard", fix="put a libpq connection string in it")
    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        # The parser's message may quote the string: name only where it came from.
        raise ConfigError(
            f"{source} is not a valid libpq connection string",
            key="guard",
            fix="write e.g. host=db1 dbname=pykms user=pykms password=… or a postgresql:// URI",
        ) from None
    return text


def redacted_target(dsn: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    return f"{info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _scrub(text: str, dsn: str) -> str:
    """Remove the DSN's password (and the DSN itself) from a message, in case a driver echoes it."""
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.ProgrammingError:
        password = ""
    if dsn:
        text = text.replace(dsn, "<dsn>")
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())


def map_error(exc: psycopg.Error, doing: str, dsn: str, timeout_ms: int) -> KmsError:
    """The one place where psycopg's exceptions become pykms's: fail closed with the reason, never the secret."""
    reason = _scrub(str(exc), dsn) or type(exc).__name__
    target = redacted_target(dsn)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return StateMissing(f"postgres guard {target}: the pykms schema is missing; {INIT_DB_FIX}")
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return PersistError(
            f"postgres guard {target}: the chain's row stayed locked for {timeout_ms} ms while {doing} "
            "(another instance is holding it); nothing signed"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return PersistError(f"postgres guard {target}: {doing} took longer than {timeout_ms} ms; nothing signed")
    if exc.sqlstate in ("PK001", "PK002"):
        return ConflictError(f"postgres guard {target}: the database refused the update: {reason}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return PersistError(f"postgres guard {target}: database unavailable while {doing}: {reason}")
    return PersistError(f"postgres guard {target}: {doing} failed ({exc.sqlstate or type(exc).__name__}): {reason}")


# ----------------------------------------------------------------------------------------------------------------
# Connections and schema


def connect(dsn: str, *, timeout_ms: int, application_name: str = "pykms") -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit) with client and server timeouts set.

    Raises PersistError when the server cannot be reached within the budget.
    """
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            # libpq rounds anything below 2 s up to 2 s; psycopg enforces it around the whole connect.
            connect_timeout=max(2, math.ceil(timeout_ms / 1000)),
            application_name=application_name,
            keepalives=1,
            keepalives_idle=max(1, math.ceil(timeout_ms / 1000)),
            keepalives_interval=1,
            keepalives_count=3,
            # Unacknowledged writes to a vanished peer fail after this many ms instead of TCP's minutes.
            tcp_user_timeout=timeout_ms + int(WATCHDOG_GRACE_S * 1000),
        )
    except psycopg.Error as exc:
        raise map_error(exc, "connecting", dsn, timeout_ms) from None
    try:
        # An instance frozen while holding the row lock must not stall the others for long: the server aborts
        # its transaction (and the lock) once it has been idle for longer than any honest call can take.
        conn.execute(
            sql.SQL("SET idle_in_transaction_session_timeout = {}").format(
                sql.Literal(timeout_ms + int(WATCHDOG_GRACE_S * 1000) + 1000)
            )
        )
        # A weaker synchronous_commit (off, local, remote_write) could lose a committed row on a crash or a
        # failover; "on" waits for the local flush and, when synchronous standbys are configured, their flush.
        setting = conn.execute("SHOW synchronous_commit").fetchone()
        if setting is None or setting[0] not in ("on", "remote_apply"):
            conn.execute("SET synchronous_commit = on")
    except psycopg.Error as exc:
        conn.close()
        raise map_error(exc, "setting up the session", dsn, timeout_ms) from None
    return conn


@contextmanager
def _session(dsn: str, timeout_ms: int, doing: str, application_name: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one administrative command: psycopg's errors mapped, the connection always closed."""
    conn = connect(dsn, timeout_ms=timeout_ms, application_name=application_name)
    try:
        yield conn
    except psycopg.Error as exc:
        raise map_error(exc, doing, dsn, timeout_ms) from None
    finally:
        conn.close()


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The applied schema version, 0 when pykms's schema is absent."""
    row = conn.execute("SELECT to_regclass('pykms_schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM pykms_schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def init_db(dsn: str, *, timeout_ms: int = 10_000) -> tuple[int, int]:
    """Create or migrate the schema; idempotent and safe to run from several hosts at once.

    Returns (version before, version after). Raises StateError when the database is newer than this pykms.
    """
    with _session(dsn, timeout_ms, "migrating the schema", "pykms-init-db") as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS pykms_schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            before = schema_version(conn)
            if before > SCHEMA_VERSION:
                raise StateError(
                    f"postgres guard {redacted_target(dsn)}: schema version {before} is newer than this pykms "
                    f"supports ({SCHEMA_VERSION}); upgrade pykms"
                )
            for version, ddl in MIGRATIONS:
                if version > before:
                    conn.execute(ddl)
                    conn.execute("INSERT INTO pykms_schema_version (version) VALUES (%s)", (version,))
        return before, SCHEMA_VERSION


def check_schema(conn: psycopg.Connection[Any], dsn: str) -> None:
    version = schema_version(conn)
    if version == 0:
        raise StateMissing(f"postgres guard {redacted_target(dsn)}: the pykms schema is missing; {INIT_DB_FIX}")
    if version != SCHEMA_VERSION:
        fix = INIT_DB_FIX if version < SCHEMA_VERSION else "upgrade pykms on every instance"
        raise StateError(
            f"postgres guard {redacted_target(dsn)}: schema version {version}, this pykms needs {SCHEMA_VERSION}; {fix}"
        )


def row_state(row: tuple[Any, ...], chain_id: str, dsn: str) -> SignState:
    try:
        return SignState(int(row[0]), int(row[1]), int(row[2]), bytes(row[3]), bytes(row[4]))
    except (TypeError, ValueError) as exc:
        raise StateCorrupt(
            f"postgres guard {redacted_target(dsn)}: the row of chain {chain_id!r} is invalid ({exc})"
        ) from None


def fetch_state(conn: psycopg.Connection[Any], chain_id: str, dsn: str, *, for_update: bool = False) -> SignState:
    """The chain's row (locked with ``for_update``); StateMissing naming the fix when there is none. psycopg's
    errors pass through: each caller maps them with what it was doing."""
    row = conn.execute(SELECT_FOR_UPDATE if for_update else SELECT_ROW, (chain_id,)).fetchone()
    if row is None:
        raise StateMissing(f"postgres guard {redacted_target(dsn)}: no state for chain {chain_id!r}; {IMPORT_FIX}")
    return row_state(row, chain_id, dsn)


def read_state(dsn: str, chain_id: str, *, timeout_ms: int = 10_000) -> SignState:
    """The chain's committed state (for ``pykms state show``); StateMissing when there is none."""
    with _session(dsn, timeout_ms, "reading the state", "pykms-state") as conn:
        check_schema(conn, dsn)
        return fetch_state(conn, chain_id, dsn)


def write_state(
    dsn: str,
    chain_id: str,
    state: SignState,
    *,
    force: bool,
    replace: bool = True,
    keep: Callable[[dict[str, Any]], str] | None = None,
    timeout_ms: int = 10_000,
) -> str | None:
    """Insert or replace the chain's row (``pykms state import|init``), under the row lock so that no signing
    transaction interleaves. The file guard's rules: unless ``force``, refuse an existing row that cannot be read,
    any existing row when not ``replace`` (init), and a move backwards (SigningRefused). A row that is replaced is
    first handed to ``keep`` (which stores it and says where), inside the transaction, so it is never lost.
    """
    target = redacted_target(dsn)
    with _session(dsn, timeout_ms, "writing the state", "pykms-state") as conn:
        check_schema(conn, dsn)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(timeout_ms)))
            row = conn.execute(SELECT_FOR_UPDATE, (chain_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO pykms_sign_state (chain_id, height, round, step, signature, sign_bytes, updated_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (chain_id, *astuple(state), INSTANCE),
                )
                return None
            force_does = "--force replaces it and keeps the old row in a file beside the configuration"
            try:
                current: SignState | None = row_state(row, chain_id, dsn)
            except StateCorrupt as exc:
                if not force:
                    raise StateCorrupt(
                        f"{exc}; refusing to replace it: pykms cannot tell what this key has already signed. "
                        "Import a state known to be at least as recent as anything this key signed with "
                        f"`pykms state import --force` ({force_does})"
                    ) from None
                current = None
            if current is not None and not force:
                if not replace:
                    raise StateError(
                        f"postgres guard {target}: chain {chain_id!r} already has a state (height {current.height} "
                        f"round {current.round} step {current.step}); `pykms state init` would reset the guard "
                        f"below it, so this key could sign again what it signed before; refusing ({force_does})"
                    )
                refuse_older_import(f"postgres guard {target}", current, state, force_does)
            kept = None
            if keep is not None:
                # The row as JSON can hold it: bytes as hex.
                names = ("height", "round", "step", "signature", "sign_bytes")
                values = [bytes(v).hex() if isinstance(v, bytes | bytearray | memoryview) else v for v in row]
                kept = keep({"chain_id": chain_id, **dict(zip(names, values, strict=True))})
            if force:
                conn.execute("SET LOCAL pykms.allow_regression = 'on'")
            conn.execute(UPDATE_SIGNED, (*astuple(state), "import:" + INSTANCE, chain_id))
            return kept
