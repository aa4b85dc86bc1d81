"""Secrets: key, identity and state files are created 0600; a group/world-readable key is refused
with a message that names the fix and no key material; and the scanner that tests/conftest.py runs over every log
and error text of the session finds key material in every form a leak would take (so its "0 hits" means something).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.harness.simulator import ValidatorSimulator
from tests.e2e import SECRETS, KmsProcess, write_home
from tests.secret_forms import harvest_key_files, scan


def _pykms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with umask 0, so only the mode the code asks for protects the files it creates."""
    return subprocess.run(
        [sys.executable, "-m", "pykms.cli.main", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_scanner_finds_every_form_of_a_leak() -> None:
    seed = os.urandom(32)
    sk = SigningKey(seed)
    expanded = hashlib.sha512(seed).digest()
    leaks = {
        "raw": b"prefix" + seed + b"suffix",
        "hex": b"key=" + seed.hex().encode(),
        "HEX": b"key=" + seed.hex().upper().encode(),
        "base64": json.dumps({"key": base64.b64encode(seed).decode()}).encode(),
        "urlsafe": base64.urlsafe_b64encode(seed).rstrip(b"="),
        "libsodium 64-byte key": base64.b64encode(bytes(sk._signing_key)),
        "embedded at offset 1": base64.b64encode(b"\x0a" + seed),
        "embedded at offset 2": base64.b64encode(b"\x0a\x20" + seed),
        "truncated": b"seed starts " + seed[:14].hex().encode() + b"...",
        "expanded key prefix": b"prefix" + expanded[32:],
    }
    for name, blob in leaks.items():
        assert scan([seed], [(name, blob)]), f"missed a leak in {name} form"
    clean = b"pub " + bytes(sk.verify_key).hex().encode() + base64.b64encode(bytes(sk.verify_key)) + os.urandom(4096)
    assert scan([seed], [("clean", clean)]) == []


def test_key_identity_and_state_files_are_created_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _pykms("init", str(home), "--chain-id", "perm-chain", cwd=tmp_path).returncode == 0
    key = home / "secrets" / "perm-chain-consensus.key"
    out = _pykms("softsign", "keygen", str(key), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    state = _pykms("state", "init", "-c", str(home / "tmkms.toml"), "--chain", "perm-chain", "--height", "7",
                   cwd=tmp_path)  # fmt: skip
    assert state.returncode == 0, state.stdout + state.stderr
    created = [key, home / "secrets" / "kms-identity.key", *(home / "state").iterdir()]
    assert any("state" in p.name for p in created[2:]), created
    for path in created:
        if path.is_file():
            assert _mode(path) == 0o600, f"{path.name}: {_mode(path):04o}"
    for d in ("secrets", "state"):
        assert _mode(home / d) & 0o077 == 0, d
    seeds = harvest_key_files(home)
    assert len(seeds) == 2  # both keys were found, so the session scan covers files made this way
    SECRETS.extend(seeds)
    texts = [("init/keygen/state output", (out.stdout + out.stderr + state.stdout + state.stderr).encode())]
    assert scan(seeds, texts) == []


@pytest.mark.slow
@pytest.mark.parametrize("which", ["consensus", "identity"])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, which: str) -> None:
    """Either key, readable by others, stops start-up (exit 4) with the chmod that fixes it; no handshake happens."""
    node = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="perm-chain")
    config = write_home(tmp_path / "kms", [node.listen()], chain_id="perm-chain")
    secrets = tmp_path / "kms" / "secrets"
    key = secrets / ("perm-chain-consensus.key" if which == "consensus" else "kms-identity.key")
    key.chmod(0o644)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    assert kms.proc is not None
    try:
        deadline = time.monotonic() + 20
        while f"chmod 600 {key}" not in kms.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kms.proc.wait(timeout=20) == 4
        with pytest.raises(Exception):  # no handshake of any kind may complete
            node.accept(timeout=1)
    finally:
        kms.stop()
        node.close()
    log = kms.log_text()
    assert f"chmod 600 {key}" in log, log
    assert scan(harvest_key_files(secrets), [("refusal", log.encode())]) == []
