"""The pykms CLI through its real entry point: init, softsign, keys show, state show|init|import, version."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pykms.cli.main import main

# tests/vectors/README.md V11 row 1: cometbft tools/tm-signer-harness/internal/test_harness_test.go (keyFileContents).
HARNESS_KEY = {
    "address": "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",
    "pub_key": {"type": "tendermint/PubKeyEd25519", "value": "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="},
    "priv_key": {
        "type": "tendermint/PrivKeyEd25519",
        "value": "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt1kKy5ONpzMTKifvSeYrHC/C76Oqturk4ffJCNwrRIXFw==",
    },
}


def _init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    home = tmp_path / "kms"
    assert main(["init", str(home), "--chain-id", "test-chain-1"]) == 0
    capsys.readouterr()
    return home


def test_init_creates_config_identity_and_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _init(tmp_path, capsys)
    identity = home / "secrets" / "kms-identity.key"
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert len(base64.b64decode(identity.read_text())) == 32
    assert (home / "state").is_dir()
    from pykms.config import load_config

    config = load_config(home / "tmkms.toml")
    assert [c.id for c in config.chains] == ["test-chain-1"]
    # a second init refuses to overwrite
    assert main(["init", str(home)]) == 3
    assert "already exists" in capsys.readouterr().err


def test_softsign_import_keys_show_and_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _init(tmp_path, capsys)
    config = str(home / "tmkms.toml")
    pvk = tmp_path / "priv_validator_key.json"
    pvk.write_text(json.dumps(HARNESS_KEY))
    pvk.chmod(0o600)
    key = home / "secrets" / "test-chain-1-consensus.key"
    assert main(["softsign", "import", str(pvk), str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # tmkms's softsign format: base64 of the 32-byte seed (tests/vectors/README.md V11)
    assert key.read_text().strip() == "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt0="
    capsys.readouterr()
    assert main(["keys", "show", "-c", config]) == 0
    out = capsys.readouterr().out
    assert "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748" in out
    assert "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc=" in out
    assert "cosmosvalconspub1" in out

    # no state yet: show fails closed and names the fix
    assert main(["state", "show", "-c", config, "--chain", "test-chain-1"]) == 5
    assert "pykms state" in capsys.readouterr().err
    # import a node's priv_validator_state.json (CometBFT format)
    node_state = tmp_path / "priv_validator_state.json"
    node_state.write_text('{"height": "41", "round": 2, "step": 3}')
    assert main(["state", "import", "-c", config, "--chain", "test-chain-1", str(node_state)]) == 0
    capsys.readouterr()
    assert main(["state", "show", "-c", config, "--chain", "test-chain-1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"height": "41", "round": 2, "step": 3}
    # an older state is refused (it would weaken the guard) ...
    older = tmp_path / "older.json"
    older.write_text('{"height": "40", "round": 0, "step": 1}')
    assert main(["state", "import", "-c", config, "--chain", "test-chain-1", str(older)]) == 8
    assert "older" in capsys.readouterr().err
    # ... and a tmkms state file (steps 0/1/2) is converted to CometBFT's numbering
    tmkms_state = tmp_path / "tmkms-state.json"
    tmkms_state.write_text('{"height": "50", "round": "0", "step": 2, "block_id": null}')
    assert main(["state", "import", "-c", config, "--chain", "test-chain-1", str(tmkms_state)]) == 0
    capsys.readouterr()
    assert main(["state", "show", "-c", config, "--chain", "test-chain-1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"height": "50", "round": 0, "step": 3}
    # state init refuses to replace an existing state without --force
    assert main(["state", "init", "-c", config, "--chain", "test-chain-1", "--height", "1"]) == 5
    assert main(["state", "init", "-c", config, "--chain", "test-chain-1", "--height", "60", "--force"]) == 0


def test_softsign_keygen_refuses_to_overwrite_and_open_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    assert main(["softsign", "keygen", str(key)]) == 0
    assert len(base64.b64decode(key.read_text())) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert main(["softsign", "keygen", str(key)]) == 4
    home = _init(tmp_path, capsys)
    consensus = home / "secrets" / "test-chain-1-consensus.key"
    consensus.write_text(key.read_text())
    consensus.chmod(0o644)
    assert main(["keys", "show", "-c", str(home / "tmkms.toml")]) == 4
    err = capsys.readouterr().err
    assert "chmod 600" in err
    assert key.read_text() not in err  # never the key itself


def test_config_lookup_order_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _init(tmp_path, capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text((home / "tmkms.toml").read_text().replace("reconnect = true", "reconect = true"))
    assert main(["keys", "show", "-c", str(bad)]) == 3
    err = capsys.readouterr().err
    assert str(bad) in err and "reconect" in err and "reconnect" in err  # file, key, and the fix
    env = dict(os.environ, TMKMS_CONFIG_FILE=str(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "pykms.cli.main", "keys", "show"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3 and str(bad) in proc.stderr


def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("pykms ")
    assert main([]) == 2
