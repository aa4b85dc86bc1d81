"""The YubiHSM2 operator flow end to end: setup from a mnemonic, import of a priv_validator_key.json, `pykms start`
with the validator auth key, and the signer harness's full suite — all through the unmodified `yubihsm` library
over the connector HTTP protocol against the device simulator."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.cli.main import main as pykms_main
from pykms.harness.yubihsm_sim.device import Device
from pykms.harness.yubihsm_sim.server import SimServer
from pykms.keyfiles import write_secret_file
from pykms.providers import yubihsm_setup as setup
from tests.test_yubihsm import TEST_ENTROPY, TEST_PHRASE, Clock

CHAIN = "hsm-chain-1"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimServer]:
    server = SimServer(state_file=tmp_path / "hsm.json", device=Device(now=Clock())).start()
    yield server
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_setup_import_start_and_the_harness_passes(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The validator's existing key, as a node has it (TMHOME for the harness).
    key = SigningKey(hashlib.sha256(b"hsm e2e validator").digest())
    pub = bytes(key.verify_key)
    tmhome = tmp_path / "tmhome"
    (tmhome / "config").mkdir(parents=True)
    (tmhome / "data").mkdir()
    pvk = tmhome / "config" / "priv_validator_key.json"
    pvk.write_text(json.dumps({
        "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(bytes(key) + pub).decode()},
    }))  # fmt: skip
    pvk.chmod(0o600)
    (tmhome / "config" / "genesis.json").write_text(json.dumps({"chain_id": CHAIN}))
    (tmhome / "data" / "priv_validator_state.json").write_text('{"height": "0", "round": 0, "step": 0}')

    # 1. setup from the mnemonic with the factory credentials (auth key 1, "password")
    factory_pw = tmp_path / "factory.pw"
    write_secret_file(factory_pw, b"password\n")
    port = _free_port()
    identity = tmp_path / "kms-identity.key"
    write_secret_file(identity, base64.b64encode(os.urandom(32)))
    plan = setup.plan_from_entropy(TEST_ENTROPY)
    validator_pw = tmp_path / "validator.pw"
    write_secret_file(validator_pw, plan.role("validator").password.encode())
    operator_pw = tmp_path / "operator.pw"
    write_secret_file(operator_pw, plan.role("operator").password.encode())
    state = tmp_path / "state.json"

    def config(auth_key: int, password_file: Path) -> Path:
        path = tmp_path / f"tmkms-{auth_key}.toml"
        path.write_text(
            f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\nstate_file = "{state}"\n\n'
            f'[[providers.yubihsm]]\nadapter = {{ type = "http", addr = "tcp://127.0.0.1:{sim.port}" }}\n'
            f'auth = {{ key = {auth_key}, password_file = "{password_file}" }}\n'
            f'keys = [{{ chain_ids = ["{CHAIN}"], key = 1 }}]\n\n'
            f'[[validator]]\nchain_id = "{CHAIN}"\naddr = "tcp://127.0.0.1:{port}"\nsecret_key = "{identity}"\n'
            f'protocol_version = "v0.38"\n'
        )
        return path

    monkeypatch.setattr("sys.stdin", io.StringIO(TEST_PHRASE + "\n"))
    assert pykms_main(["yubihsm", "setup", "--restore", "--yes", "-c", str(config(1, factory_pw))]) == 0
    # 2. import the node's key with the operator role
    assert pykms_main(["yubihsm", "keys", "import", "-i", "1", str(pvk), "-c", str(config(2, operator_pw))]) == 0
    # 3. the state, then `pykms start` with the validator role
    run_config = config(4, validator_pw)
    assert pykms_main(["state", "init", "-c", str(run_config), "--chain", CHAIN]) == 0
    kms = subprocess.Popen([sys.executable, "-m", "pykms.cli.main", "start", "-c", str(run_config)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        # 4. the signer harness, full suite, against pykms signing in the (simulated) YubiHSM2
        harness = subprocess.run(
            [sys.executable, "-m", "pykms.harness.signer_harness", "run", "--addr", f"tcp://127.0.0.1:{port}",
             "--tmhome", str(tmhome), "--suite", "full"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert harness.returncode == 0, harness.stdout + harness.stderr
        assert "checks passed" in harness.stdout
    finally:
        kms.terminate()
        out, _ = kms.communicate(timeout=20)
    assert kms.returncode == 0, out.decode(errors="replace")[-3000:]
    assert plan.role("validator").password.encode() not in out
