"""Error replies tell the node, the party the signer trusts least, nothing about the signer's host.

A real ``pykms start`` whose guard is in PostgreSQL signs once; then the database goes away, and the next
request is refused. The node's error must not name the database's user@host:port/dbname (nor any local file
path); pykms's log keeps that detail for the operator.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

from pathlib import Path

import pytest

from pykms.cli.main import main as pykms_main
from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from tests.adversarial.common import postgres_home
from tests.e2e import KmsProcess, accept
from tests.pg import SUPERUSER, PgServer, private_pg  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

CHAIN = "leak-chain"


def test_error_reply_names_no_database_or_path(tmp_path: Path, private_pg: PgServer) -> None:
    dbname = private_pg.create_database()
    dsn = private_pg.dsn(dbname)
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = postgres_home(tmp_path, CHAIN, sim.listen(), dsn, "timeout_ms = 1000\n")
    assert pykms_main(["guard", "init-db", "-c", str(config)]) == 0
    assert pykms_main(["state", "init", "-c", str(config), "--chain", CHAIN]) == 0
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        assert link.sign_vote(make_vote(1, 0, PREVOTE, b"one")).error is None
        private_pg.stop()
        refused = link.sign_vote(make_vote(2, 0, PREVOTE, b"two"))
    finally:
        kms.stop()
        sim.close()
    assert refused.error is not None
    told = refused.error.description
    for secret_of_the_host in (SUPERUSER, f"127.0.0.1:{private_pg.port}", dbname, str(tmp_path)):
        assert secret_of_the_host not in told, f"the node was told {secret_of_the_host!r}: {told!r}"
    assert f"{SUPERUSER}@127.0.0.1:{private_pg.port}" in kms.log_text()  # the operator still gets the detail
