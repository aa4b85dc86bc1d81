"""The PostgreSQL guard against a real PostgreSQL server (tests/pg.py), one fresh database per test.

Schema init/migration, state import/show, FilePV decisions through the row lock, several guards (threads) on one
chain, timeouts, secrecy of the DSN. Faults (server stopped, frozen, connections killed during COMMIT,
unacknowledged synchronous replication) are in test_guard_postgres_faults.py; several processes in
test_guard_postgres_procs.py.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from nacl.signing import SigningKey
from test_guard_support import sign_bytes

from pykms.cli.guard import import_state, show_state
from pykms.cli.main import main as pykms_main
from pykms.config import GuardConfig, KmsConfig, ProvidersConfig
from pykms.errors import (
    ConfigError,
    ConflictError,
    KeyFileError,
    PersistError,
    ProviderError,
    RegressionError,
    SigningRefused,
    StateCorrupt,
    StateError,
    StateMissing,
    TransientProviderError,
)
from pykms.guard.pgadmin import SCHEMA_VERSION, dsn_from_config, init_db, read_state, write_state
from pykms.guard.postgres import PostgresGuard
from pykms.guard.state import SignState
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401  (fixtures)
from tests.pg_worker import KEY_SEED, requests

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CHAIN = "pg-test-chain"
KEY = SigningKey(KEY_SEED)


def sign(data: bytes) -> bytes:
    return bytes(KEY.sign(data).signature)


def ready(dsn: str, state: SignState | None = None, chain: str = CHAIN) -> str:
    init_db(dsn)
    write_state(dsn, chain, state or SignState.initial(), force=False)
    return dsn


def history(dsn: str) -> None:
    """Test-only audit of every committed UPDATE of the row (same transaction, so present iff committed)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE test_history (id bigserial, chain_id text, height bigint, round int, step int,
                                       signature bytea, sign_bytes bytea);
            CREATE FUNCTION test_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                INSERT INTO test_history (chain_id, height, round, step, signature, sign_bytes)
                VALUES (NEW.chain_id, NEW.height, NEW.round, NEW.step, NEW.signature, NEW.sign_bytes);
                RETURN NEW; END $$;
            CREATE TRIGGER test_log AFTER UPDATE ON pykms_sign_state FOR EACH ROW EXECUTE FUNCTION test_log();
            """
        )


def committed_signatures(dsn: str) -> dict[tuple[int, int, int], set[bytes]]:
    out: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
    with psycopg.connect(dsn) as conn:
        for h, r, s, sig, data in conn.execute(
            "SELECT height, round, step, signature, sign_bytes FROM test_history WHERE length(signature) > 0"
        ):
            KEY.verify_key.verify(bytes(data), bytes(sig))  # every committed signature is over its sign bytes
            out[(h, r, s)].add(bytes(sig))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Schema


def test_init_db_creates_and_is_idempotent(pg_dsn: str) -> None:
    assert init_db(pg_dsn) == (0, SCHEMA_VERSION)
    assert init_db(pg_dsn) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version FROM pykms_schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_init_db_concurrently_from_several_hosts(pg_dsn: str) -> None:
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(init_db(pg_dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3


def test_newer_schema_is_refused(pg_dsn: str) -> None:
    ready(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pykms_schema_version (version) VALUES (99)")
    with pytest.raises(StateError, match="newer than this pykms"):
        init_db(pg_dsn)
    with pytest.raises(StateError, match="schema version 99"):
        PostgresGuard(pg_dsn, CHAIN)


def test_missing_schema_and_missing_row_fail_closed_naming_the_fix(pg_dsn: str) -> None:
    with pytest.raises(StateMissing, match="pykms guard init-db"):
        PostgresGuard(pg_dsn, CHAIN)
    with pytest.raises(StateMissing, match="pykms guard init-db"):
        read_state(pg_dsn, CHAIN)
    init_db(pg_dsn)
    with pytest.raises(StateMissing, match="pykms state import"):
        PostgresGuard(pg_dsn, CHAIN)
    with pytest.raises(StateMissing, match="pykms state import"):
        read_state(pg_dsn, CHAIN)


# ---------------------------------------------------------------------------------------------------------------
# Import / show


def test_import_show_round_trip_and_no_silent_regression(pg_dsn: str) -> None:
    init_db(pg_dsn)
    data = sign_bytes(10, 1, 2, 7)
    state = SignState(10, 1, 2, sign(data), data)
    write_state(pg_dsn, CHAIN, state, force=False)
    assert read_state(pg_dsn, CHAIN) == state
    older = SignState(9, 0, 3)
    with pytest.raises(SigningRefused, match="older than the current one"):
        write_state(pg_dsn, CHAIN, older, force=False)
    assert read_state(pg_dsn, CHAIN) == state
    newer = SignState(20, 0, 0)
    write_state(pg_dsn, CHAIN, newer, force=False)
    assert read_state(pg_dsn, CHAIN) == newer
    write_state(pg_dsn, CHAIN, older, force=True)  # the operator's explicit override passes the trigger
    assert read_state(pg_dsn, CHAIN) == older
    with pytest.raises(StateMissing):
        read_state(pg_dsn, "another-chain")


def _config(tmp_path: Path, dsn: str) -> tuple[Path, KmsConfig]:
    dsn_file = tmp_path / "guard.dsn"
    dsn_file.write_text(dsn + "\n")
    dsn_file.chmod(0o600)
    toml = tmp_path / "tmkms.toml"
    toml.write_text(f'[guard]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n')
    cfg = KmsConfig(
        path=toml,
        chains=[],
        validators=[],
        providers=ProvidersConfig(),
        guard=GuardConfig(backend="postgres", dsn_file=dsn_file),
    )
    return toml, cfg


def test_cli_init_db_and_state_functions(pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml, cfg = _config(tmp_path, pg_dsn)
    assert pykms_main(["guard", "init-db", "-c", str(toml)]) == 0
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert pykms_main(["guard", "init-db", "-c", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "already at version" in out
    assert "password" not in out and cfg.guard is not None
    data = sign_bytes(5, 0, 3, 1)
    state = SignState(5, 0, 3, sign(data), data)
    import_state(cfg, CHAIN, state, force=False)
    assert show_state(cfg, CHAIN) == state
    with pytest.raises(SigningRefused):
        import_state(cfg, CHAIN, SignState(4, 0, 0), force=False)
    file_cfg = KmsConfig(path=toml, chains=[], validators=[], providers=ProvidersConfig(), guard=GuardConfig())
    with pytest.raises(ConfigError, match="not in PostgreSQL"):
        show_state(file_cfg, CHAIN)


def test_dsn_sources_and_secrecy(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn_file = tmp_path / "guard.dsn"
    dsn_file.write_text(pg_dsn + "\n")
    dsn_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        dsn_from_config(GuardConfig(backend="postgres", dsn_file=dsn_file))
    dsn_file.chmod(0o600)
    assert dsn_from_config(GuardConfig(backend="postgres", dsn_file=dsn_file)) == pg_dsn
    monkeypatch.setenv("PYKMS_TEST_GUARD_DSN", pg_dsn)
    assert dsn_from_config(GuardConfig(backend="postgres", dsn_env="PYKMS_TEST_GUARD_DSN")) == pg_dsn
    monkeypatch.setenv("PYKMS_TEST_GUARD_DSN", "host='unterminated")
    with pytest.raises(ConfigError, match=r"\$PYKMS_TEST_GUARD_DSN is not a valid") as info:
        dsn_from_config(GuardConfig(backend="postgres", dsn_env="PYKMS_TEST_GUARD_DSN"))
    assert "unterminated" not in str(info.value)

    # A wrong password: the error names user@host:port/db, never the password tried.
    password = "Sup3r-secret-pw"
    bad = pg_dsn.replace("password=", f"password={password}")
    with pytest.raises(PersistError) as err:
        PostgresGuard(bad, CHAIN).check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign)
    assert password not in str(err.value) and "password authentication failed" in str(err.value)
    guard = PostgresGuard(ready(pg_dsn), CHAIN)
    try:
        real_password = pg_dsn.split("password=")[1].split(maxsplit=1)[0]
        assert real_password not in repr(guard)
    finally:
        guard.close()


# ---------------------------------------------------------------------------------------------------------------
# Decisions through the row


def test_fresh_reuse_and_refusals_are_durable_and_shared(pg_dsn: str) -> None:
    ready(pg_dsn)
    a = PostgresGuard(pg_dsn, CHAIN)
    b = PostgresGuard(pg_dsn, CHAIN)
    try:
        prevote = sign_bytes(3, 0, 2, 1)
        first = a.check_and_sign(3, 0, 2, prevote, sign)
        assert first.fresh and first.timestamp is None
        KEY.verify_key.verify(prevote, first.signature)
        assert read_state(pg_dsn, CHAIN) == SignState(3, 0, 2, first.signature, prevote)
        # Another instance: the identical request gets the identical stored signature, without signing.
        again = b.check_and_sign(3, 0, 2, prevote, lambda _: pytest.fail("must not sign a repeat"))
        assert again.signature == first.signature and not again.fresh
        # Timestamp-only difference: the stored signature and the stored timestamp.
        later_ts = sign_bytes(3, 0, 2, 1, (1_700_000_999, 5))
        ts = b.check_and_sign(3, 0, 2, later_ts, sign)
        assert ts.signature == first.signature and ts.timestamp == (1_700_000_000, 123_456_789)
        with pytest.raises(ConflictError, match="conflicting data"):
            b.check_and_sign(3, 0, 2, sign_bytes(3, 0, 2, 2), sign)
        with pytest.raises(ConflictError, match="cross-step"):
            a.check_and_sign(3, 0, 3, sign_bytes(3, 0, 3, 2), sign)
        with pytest.raises(RegressionError, match="height regression"):
            a.check_and_sign(2, 0, 3, sign_bytes(2, 0, 3, 1), sign)
        assert read_state(pg_dsn, CHAIN) == SignState(3, 0, 2, first.signature, prevote)
        precommit = sign_bytes(3, 0, 3, 1)
        out = b.check_and_sign(3, 0, 3, precommit, sign)
        assert out.fresh
        assert read_state(pg_dsn, CHAIN) == SignState(3, 0, 3, out.signature, precommit)
    finally:
        a.close()
        b.close()


def test_signer_failure_rolls_back_and_releases_the_row(pg_dsn: str) -> None:
    ready(pg_dsn)
    guard = PostgresGuard(pg_dsn, CHAIN)
    try:

        def broken(_: bytes) -> bytes:
            raise TransientProviderError("device busy")

        with pytest.raises(ProviderError):
            guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 1), broken)
        assert read_state(pg_dsn, CHAIN) == SignState.initial()
        assert guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 2), sign).fresh
    finally:
        guard.close()


def test_database_trigger_refuses_regression_and_conflict(pg_dsn: str) -> None:
    data = sign_bytes(8, 0, 2, 1)
    ready(pg_dsn, SignState(8, 0, 2, sign(data), data))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="regression"):
            conn.execute("UPDATE pykms_sign_state SET height = 7")
        with pytest.raises(psycopg.Error, match="conflicting payload"):
            conn.execute("UPDATE pykms_sign_state SET sign_bytes = '\\x00'::bytea")
        with pytest.raises(psycopg.Error, match="sign_bytes_need_signature"):
            conn.execute("UPDATE pykms_sign_state SET height = 9, signature = '\\x'::bytea")
    assert read_state(pg_dsn, CHAIN).height == 8


def test_row_lock_held_elsewhere_times_out_without_signing(pg_dsn: str) -> None:
    ready(pg_dsn)
    guard = PostgresGuard(pg_dsn, CHAIN, timeout_ms=300)
    holder = psycopg.connect(pg_dsn)
    try:
        holder.execute("SELECT 1 FROM pykms_sign_state WHERE chain_id = %s FOR UPDATE", (CHAIN,))
        started = time.monotonic()
        with pytest.raises(PersistError, match="stayed locked"):
            guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), lambda _: pytest.fail("signed under a lock"))
        assert time.monotonic() - started < 2
        holder.rollback()
        assert guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign).fresh  # same connection, still usable
    finally:
        holder.close()
        guard.close()


def test_several_guards_in_threads_sign_once_per_hrs(pg_dsn: str) -> None:
    """Four guards (four connections) race through the same heights with identical and conflicting requests."""
    ready(pg_dsn)
    history(pg_dsn)
    results: list[tuple[tuple[int, int, int], bytes, bytes]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run(seed: int) -> None:
        guard = PostgresGuard(pg_dsn, CHAIN, timeout_ms=10_000)  # a loaded CI machine is not the subject here
        try:
            barrier.wait()
            for h, r, s, data in requests(seed, 1, 40):
                try:
                    out = guard.check_and_sign(h, r, s, data, sign)
                except (ConflictError, RegressionError):
                    continue
                results.append(((h, r, s), out.signature, data))
        except BaseException as exc:
            errors.append(exc)
        finally:
            guard.close()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2, 3, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    by_hrs: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
    for hrs, sig, _data in results:
        by_hrs[hrs].add(sig)
    # The first request at each new height is always signed by someone; later steps may be cross-step refusals.
    assert {hrs[0] for hrs, _sig, _data in results} == set(range(1, 41))
    assert all(len(sigs) == 1 for sigs in by_hrs.values()), "two signatures for one height/round/step"
    committed = committed_signatures(pg_dsn)
    for hrs, sigs in by_hrs.items():
        assert sigs == committed[hrs]  # every returned signature was committed, and only that one
    final = read_state(pg_dsn, CHAIN)
    assert (final.height, final.round, final.step) == (40, 0, 3)
    assert final.signature in by_hrs[(40, 0, 3)]


def test_no_database_at_start_is_not_fatal() -> None:
    """A guard created while the database is down fails each request closed and recovers without restart."""
    server = PgServer.create()
    try:
        name = server.create_database()
        dsn = ready(server.dsn(name))
        server.stop()
        guard = PostgresGuard(dsn, CHAIN, timeout_ms=500)
        try:
            with pytest.raises(PersistError, match="database unavailable"):
                guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign)
            server.start()
            assert guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign).fresh
        finally:
            guard.close()
    finally:
        server.destroy()


def test_corrupt_row_fails_closed_and_leaves_no_transaction_open(pg_dsn: str) -> None:
    ready(pg_dsn)
    guard = PostgresGuard(pg_dsn, CHAIN, timeout_ms=500)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            # Only an operator editing the table by hand could do this; the constraint is dropped to get there.
            conn.execute("ALTER TABLE pykms_sign_state DROP CONSTRAINT sign_bytes_need_signature")
            conn.execute("UPDATE pykms_sign_state SET height = 4, step = 2, sign_bytes = '\\x0a'::bytea")
        with pytest.raises(StateCorrupt, match="sign bytes but no signature"):
            guard.check_and_sign(5, 0, 1, sign_bytes(5, 0, 1, 1), sign)
        # The refused call released the row: a writer does not wait for it.
        write_state(pg_dsn, CHAIN, SignState(4, 0, 2), force=True, timeout_ms=300)
        assert guard.check_and_sign(5, 0, 1, sign_bytes(5, 0, 1, 1), sign).fresh
    finally:
        guard.close()


def test_connection_lost_while_idle_is_replaced_within_the_same_call(pg_dsn: str, pg_server: PgServer) -> None:
    ready(pg_dsn)
    guard = PostgresGuard(pg_dsn, CHAIN)
    try:
        assert guard.check_and_sign(1, 0, 1, sign_bytes(1, 0, 1, 1), sign).fresh
        with pg_server.admin() as admin:  # what a server restart or a failover does to a kept connection
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pykms/%'"
            )
        assert guard.check_and_sign(1, 0, 2, sign_bytes(1, 0, 2, 1), sign).fresh  # no error reaches the node
    finally:
        guard.close()


def test_state_commands_through_the_pykms_cli(pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pykms guard init-db`, `state show|import|init` on a real tmkms.toml whose guard is in PostgreSQL."""
    import base64
    import json

    dsn_file = tmp_path / "guard.dsn"
    dsn_file.write_text(pg_dsn + "\n")
    dsn_file.chmod(0o600)
    key = tmp_path / "cons.key"
    key.write_text(base64.b64encode(KEY_SEED).decode())
    key.chmod(0o600)
    toml = tmp_path / "tmkms.toml"
    toml.write_text(
        f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\n\n'
        f'[[providers.softsign]]\nchain_ids = ["{CHAIN}"]\nkey_type = "consensus"\npath = "{key}"\n\n'
        f'[guard]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n'
    )
    state_file = tmp_path / "priv_validator_state.json"
    state_file.write_text(json.dumps({"height": "7", "round": 0, "step": 2}))
    cfg = ["-c", str(toml), "--chain", CHAIN]
    assert pykms_main(["guard", "init-db", "-c", str(toml)]) == 0
    assert pykms_main(["state", "show", *cfg]) == 5  # no row yet: a state error naming the fix
    assert "pykms state import" in capsys.readouterr().err
    assert pykms_main(["state", "import", *cfg, str(state_file)]) == 0
    capsys.readouterr()
    assert pykms_main(["state", "show", *cfg]) == 0
    assert json.loads(capsys.readouterr().out) == {"height": "7", "round": 0, "step": 2}
    assert pykms_main(["state", "init", *cfg]) == 5  # a state exists: init refuses it without --force
    assert read_state(pg_dsn, CHAIN) == SignState(7, 0, 2)
    assert pg_dsn.split("password=")[1].split(maxsplit=1)[0] not in capsys.readouterr().err
