"""tmkms's README commands and flags through the real ``pykms`` CLI (subprocesses): each works as in tmkms or
exits 2 naming the pykms spelling. YubiHSM commands run against the device simulator (yubihsm-connector API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PYKMS = [sys.executable, "-m", "pykms.cli.main"]


def pykms(
    *args: str, cwd: Path | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYKMS, *args], capture_output=True, text=True, cwd=cwd, input=stdin, timeout=timeout, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


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
