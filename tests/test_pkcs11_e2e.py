"""End to end with a SoftHSM2 key: the signer harness (full suite) against a real ``pykms start`` subprocess.

The tm-signer-harness fixture key (test vector V11, cometbft tools/tm-signer-harness/internal/test_harness_test.go)
is imported into a fresh SoftHSM2 token with ``pykms pkcs11 keys import``; the harness then checks the public key,
proposals, votes, extensions and double-sign refusals over a real SecretConnection.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykms.harness.conformance import Harness, run_full
from pykms.harness.simulator import ValidatorSimulator
from pykms.privval.codec import Dialect
from tests.softhsm import SoftHsm, fresh_token

pytest.importorskip("pykms.secretconn.identity", reason="SecretConnection identity keys not available yet")

# tests/vectors/README.md V11 (harness key) and its fixture chain id.
HARNESS_PUB_B64 = "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="
HARNESS_PRIV_B64 = "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt1kKy5ONpzMTKifvSeYrHC/C76Oqturk4ffJCNwrRIXFw=="
CHAIN = "test-chain-0XwP5E"


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    with fresh_token(tmp_path, monkeypatch) as token:
        yield token


def _home(hsm: SoftHsm, home: Path, addr: str, dialect: Dialect) -> Path:
    from pykms.guard.state import SignState
    from pykms.guard.store import create_state_file
    from pykms.secretconn.identity import generate_identity

    secrets = home / "secrets"
    secrets.mkdir(mode=0o700, parents=True)
    generate_identity(secrets / "kms-identity.key")
    state_file = home / f"{CHAIN}_priv_validator_state.json"
    create_state_file(state_file, SignState(0, 0, 0, b"", b""), fmt="json")
    hsm.pin_file(secrets)
    config = home / "tmkms.toml"
    config.write_text(
        f"""[[chain]]
id = "{CHAIN}"
key_format = {{ type = "hex" }}
state_file = "{state_file}"

[[providers.pkcs11]]
module = "{hsm.module}"
token_label = "{hsm.label}"
user_pin_file = "{secrets / "pkcs11-pin"}"
keys = [{{ chain_ids = ["{CHAIN}"], label = "consensus" }}]

[[validator]]
chain_id = "{CHAIN}"
addr = "{addr}"
secret_key = "{secrets / "kms-identity.key"}"
protocol_version = "{dialect.value}"
reconnect = true
"""
    )
    return config


@pytest.mark.slow
@pytest.mark.softhsm
@pytest.mark.parametrize("dialect", [Dialect.V0_38, Dialect.V1_0], ids=["v0.38", "v1.0"])
def test_signer_harness_passes_with_a_softhsm_key(hsm: SoftHsm, tmp_path: Path, dialect: Dialect) -> None:
    from pykms.cli.main import main
    from tests.e2e import KmsProcess

    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=dialect)
    addr = sim.listen()
    config = _home(hsm, tmp_path / "kms", addr, dialect)
    key_json = tmp_path / "priv_validator_key.json"
    key_json.write_text(
        json.dumps(
            {
                "address": "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": HARNESS_PUB_B64},
                "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": HARNESS_PRIV_B64},
            }
        )
    )
    key_json.chmod(0o600)
    argv = ["pkcs11", "keys", "import", "-c", str(config), "--chain", CHAIN, "--priv-validator-key", str(key_json)]
    assert main(argv) == 0

    kms = KmsProcess(config, tmp_path / "pykms.log", extra_env={"SOFTHSM2_CONF": str(hsm.conf)})
    kms.start()
    out = io.StringIO()
    harness = Harness(sim, base64.b64decode(HARNESS_PUB_B64), accept_retries=40, out=out)
    try:
        harness.accept()
        run_full(harness, dialect)
    except Exception as exc:
        raise AssertionError(f"{exc}\nharness:\n{out.getvalue()}\npykms:\n{kms.log_text()}") from None
    finally:
        if harness.link is not None:
            harness.link.close()
        kms.stop()
        sim.close()
    report = out.getvalue()
    assert not harness.failures and "[FAIL]" not in report, report
    # The full suite ran to its end: the last checks follow a reconnect of pykms to the harness.
    assert "[pass] public key after the reconnect" in report, report
    assert report.count("[pass]") >= 20, report
