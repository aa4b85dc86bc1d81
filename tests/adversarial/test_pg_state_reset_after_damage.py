"""The PostgreSQL guard's admin commands follow the file guard's rules after the chain's row was damaged.

A real ``pykms start`` signs at height 5 through the PostgreSQL guard; the row is then damaged (a step no
signer writes, past a dropped CHECK constraint), so pykms stops the chain. ``pykms state init`` and ``state
import`` run as the message suggests must refuse without --force; with --force the old row is kept in a file.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from tests.adversarial.common import postgres_home, pykms
from tests.e2e import KmsProcess, accept
from tests.pg import pg_dsn, pg_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

CHAIN = "pg-reset-chain"


def test_damaged_row_is_not_reset_without_force(tmp_path: Path, pg_dsn: str) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = postgres_home(tmp_path, CHAIN, sim.listen(), pg_dsn)
    cfg = ["-c", str(config), "--chain", CHAIN]
    assert pykms("guard", "init-db", "-c", str(config)).returncode == 0
    assert pykms("state", "init", *cfg).returncode == 0
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        assert accept(sim, kms).sign_vote(make_vote(5, 0, PREVOTE, b"A")).error is None
    finally:
        kms.stop()
        sim.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pykms_sign_state DROP CONSTRAINT pykms_sign_state_step_check")
        conn.execute("UPDATE pykms_sign_state SET step = 9 WHERE chain_id = %s", (CHAIN,))

    shown = pykms("state", "show", *cfg)
    assert shown.returncode == 5 and "invalid" in shown.stderr, shown.stderr
    older = tmp_path / "older.json"
    older.write_text('{"height": "2", "round": 0, "step": 2}')
    init = pykms("state", "init", *cfg)
    assert init.returncode != 0, f"state init reset a damaged row without --force: {init.stdout}"
    assert "--force" in init.stderr
    imported = pykms("state", "import", *cfg, str(older))
    assert imported.returncode != 0, f"state import replaced a damaged row without --force: {imported.stdout}"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT height, step FROM pykms_sign_state").fetchall() == [(5, 9)]

    forced = pykms("state", "init", *cfg, "--force")
    assert forced.returncode == 0, forced.stderr
    kept = list(tmp_path.glob(f"{CHAIN}_guard_row.replaced-*.json"))
    assert len(kept) == 1 and str(kept[0]) in forced.stdout
    row = json.loads(kept[0].read_text())
    assert (row["height"], row["step"]) == (5, 9) and len(bytes.fromhex(row["signature"])) == 64
