"""tmkms's README commands and flags through the real ``pykms`` CLI (subprocesses): each works as in tmkms or
exits 2 naming the pykms spelling. YubiHSM commands run against the device simulator (yubihsm-connector API)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.config import load_config
from pykms.harness.yubihsm_sim.server import SimServer

PYKMS = [sys.executable, "-m", "pykms.cli.main"]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tmkms"
COMMANDS = tomllib.loads((FIXTURES / "commands.toml").read_text())["command"]


def pykms(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TMKMS_CONFIG_FILE"}
    return subprocess.run(
        [*PYKMS, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False,
        env=dict(env, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def operator_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A scratch folder, a tmkms.toml whose YubiHSM is the simulator (factory auth key 1), a priv_validator_key."""
    root = tmp_path_factory.mktemp("tmkms-commands")
    sim = SimServer(state_file=root / "hsm.json").start()
    # The wrap key 0x0001 `yubihsm setup` creates, which tmkms's README backup example (-b) relies on.
    from yubihsm.core import YubiHsm
    from yubihsm.defs import ALGORITHM, CAPABILITY
    from yubihsm.objects import WrapKey

    session = YubiHsm.connect(sim.url).create_session_derived(1, "password")
    caps = CAPABILITY.EXPORT_WRAPPED | CAPABILITY.IMPORT_WRAPPED
    WrapKey.put(session, 1, "wrap", 1, caps, ALGORITHM.AES256_CCM_WRAP, CAPABILITY.ALL, bytes(range(32)))
    session.close()
    password = root / "auth.pw"
    password.write_text("password\n")
    password.chmod(0o600)
    config = root / "tmkms.toml"
    config.write_text(
        f"""
[[chain]]
id = "cosmoshub-4"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{root / "state.json"}"

[[providers.yubihsm]]
adapter = {{ type = "http", addr = "tcp://127.0.0.1:{sim.port}" }}
auth = {{ key = 1, password_file = "{password}" }}
keys = [{{ chain_ids = ["cosmoshub-4"], key = 1 }}]
serial_number = "12345678"
"""
    )
    key = SigningKey(bytes(range(7, 39)))
    pub = bytes(key.verify_key)
    pvk = root / "priv_validator_key.json"
    pvk.write_text(json.dumps({
        "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(bytes(key) + pub).decode()},
    }))  # fmt: skip
    pvk.chmod(0o600)
    (root / "cwd").mkdir()
    try:
        yield {"dir": str(root), "config": str(config), "pvk": str(pvk)}
    finally:
        sim.stop()


def test_every_command_fixture_runs_through_the_cli(operator_home: dict[str, str]) -> None:
    """In the fixture's order (generate before list): each tmkms command works or exits 2 naming pykms's way."""
    for command in COMMANDS:
        args = [arg.format(**operator_home) for arg in command["args"]]
        result = pykms(*args, cwd=Path(operator_home["dir"]) / "cwd")
        shown = f"pykms {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert result.returncode == command["exit"], shown
        assert "Traceback" not in result.stderr, shown
        for text in command.get("stdout", []):
            assert text in result.stdout, shown
        for text in command.get("stderr", []):
            assert text in result.stderr, shown
    home = Path(operator_home["dir"])
    networks = load_config(home / "kms-home-networks" / "tmkms.toml", log=lambda *_a, **_k: None)
    assert [c.id for c in networks.chains] == ["cosmoshub-3", "irishub", "osmosis-1"]  # tmkms's networks.rs ids
    assert networks.chains[1].key_format.consensus_key_prefix == "icp"
    for name in ("consensus.key", "account.key", "imported.key", "validator-key.enc"):
        assert (home / name).stat().st_mode & 0o077 == 0, name


USB_CONFIG = """
[[chain]]
id = "usb-1"
key_format = { type = "hex" }
state_file = "state.json"

[[providers.yubihsm]]
adapter = { type = "usb" }
auth = { key = 1, password_file = "password.txt" }
keys = [{ chain_ids = ["usb-1"], key = 1 }]

[[validator]]
chain_id = "usb-1"
addr = "unix:///nonexistent/node.sock"
"""


@pytest.mark.parametrize("command", [["start"], ["yubihsm", "detect"], ["yubihsm", "keys", "list"]])
def test_usb_adapter_looks_for_a_device(tmp_path: Path, command: list[str]) -> None:
    """tmkms's default adapter: pyusb and libusb are installed (the yubihsm extra, scripts/setup), so pykms gets
    as far as searching the bus, and with no device there says so (ProviderError: exit code 6)."""
    (tmp_path / "tmkms.toml").write_text(USB_CONFIG)
    (tmp_path / "password.txt").write_text("password\n")
    (tmp_path / "password.txt").chmod(0o600)
    result = pykms(*command, "-c", str(tmp_path / "tmkms.toml"), cwd=tmp_path)
    assert result.returncode == 6, result.stdout + result.stderr
    assert "no YubiHSM found on USB" in result.stderr
    assert "Traceback" not in result.stderr


def test_usb_adapter_url_carries_serial_and_timeout() -> None:
    from pykms.providers.yubihsm import adapter_url

    assert adapter_url("usb", None) == "yhusb://"
    assert adapter_url("usb", None, "0123456789", timeout_ms=2500) == "yhusb://serial=123456789?timeout_ms=2500"
    assert adapter_url("http", "tcp://127.0.0.1:12345", timeout_ms=2500) == "http://127.0.0.1:12345"
