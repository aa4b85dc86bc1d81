"""The signer harness against a real ``pykms start``: the operator's flow of scripts/harness-vs-pykms.

The TMHOME is tm-signer-harness's own fixture; pykms's softsign key is imported from its
priv_validator_key.json with ``pykms softsign import``; the harness listens (a real process) and pykms dials it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pykms.cli.main import main as pykms_main
from pykms.harness.conformance import EXIT
from tests.broken_signers import FIXTURE_CHAIN_ID, HarnessProcess, write_tmhome
from tests.e2e import KmsProcess, write_home


def _kms_config(tmp_path: Path, tmhome: Path, addr: str, version: str) -> Path:
    config = write_home(tmp_path / "kms", [addr], chain_id=FIXTURE_CHAIN_ID, protocol_version=version)
    key = tmp_path / "kms" / "secrets" / f"{FIXTURE_CHAIN_ID}-consensus.key"
    key.unlink()  # replaced by the validator's own key, as an operator migrating from a node does
    assert pykms_main(["softsign", "import", str(tmhome / "config" / "priv_validator_key.json"), str(key)]) == 0
    return config


def _run(harness: HarnessProcess, kms: KmsProcess) -> tuple[int, str]:
    code = harness.wait(60)
    return code, f"{harness.output}\n--- pykms log ---\n{kms.log_text()}"


@pytest.mark.parametrize(
    ("transport", "suite", "version", "isolation"),
    [
        ("tcp", "full", "v0.38", "none"),
        ("tcp", "full", "v1.0", "none"),
        ("tcp", "full", "v0.34", "none"),
        ("unix", "basic", "v0.38", "none"),
        ("tcp", "full", "v0.38", "process"),  # the same suite against the key holder and the front split in two
    ],
    indirect=["isolation"],
)
def test_harness_passes_against_pykms(tmp_path: Path, transport: str, suite: str, version: str, isolation: str) -> None:
    tmhome = write_tmhome(tmp_path / "tmhome")
    addr = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{tmp_path}/harness.sock"
    harness = HarnessProcess(["run", "--addr", addr, "--tmhome", str(tmhome), "--suite", suite,
                              "--protocol-version", version, "--accept-retries", "300"])  # fmt: skip
    kms = KmsProcess(_kms_config(tmp_path, tmhome, harness.wait_listening(), version), tmp_path / "pykms.log")
    kms.start()
    try:
        code, out = _run(harness, kms)
    finally:
        assert kms.stop() == 0, kms.log_text()
    assert code == EXIT["ok"], out
    assert "[FAIL]" not in out and "SUCCESS" in out


@pytest.mark.slow
def test_second_basic_run_against_persisted_state_fails_at_the_proposal(tmp_path: Path) -> None:
    # As with tm-signer-harness: heights 100/101 again are a regression for a signer that kept its state.
    tmhome = write_tmhome(tmp_path / "tmhome")
    addr = f"unix://{tmp_path}/harness.sock"
    args = ["run", "--addr", addr, "--tmhome", str(tmhome), "--accept-retries", "300"]
    first = HarnessProcess(args)
    kms = KmsProcess(_kms_config(tmp_path, tmhome, first.wait_listening(), "v0.38"), tmp_path / "pykms.log")
    kms.start()
    try:
        code, out = _run(first, kms)
        assert code == EXIT["ok"], out
        second = HarnessProcess(args)  # pykms, still running, dials the new listener by itself
        second.wait_listening()
        code, out = _run(second, kms)
    finally:
        kms.stop()
    assert code == EXIT["proposal"], out
    assert "[FAIL] proposal at height 100" in out and "regression" in out
