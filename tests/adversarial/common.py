"""What the attacks share: the real CLI in a subprocess, and a home whose guard is in PostgreSQL."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from pykms.keyfiles import write_secret_file


def pykms(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``pykms`` command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pykms.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def postgres_home(root: Path, chain: str, addr: str, dsn: str, guard_extra: str = "") -> Path:
    """A softsign home for one chain and one validator address, its guard the PostgreSQL database at ``dsn``."""
    key = root / "consensus.key"
    write_secret_file(key, base64.b64encode(os.urandom(32)))
    dsn_file = root / "guard.dsn"
    write_secret_file(dsn_file, dsn.encode() + b"\n")
    identity = root / "identity.key"
    write_secret_file(identity, base64.b64encode(os.urandom(32)))
    config = root / "tmkms.toml"
    config.write_text(
        f'[[chain]]\nid = "{chain}"\nkey_format = {{ type = "hex" }}\n\n'
        f'[[providers.softsign]]\nchain_ids = ["{chain}"]\nkey_type = "consensus"\npath = "{key}"\n\n'
        f'[[validator]]\nchain_id = "{chain}"\naddr = "{addr}"\nsecret_key = "{identity}"\n'
        f'protocol_version = "v0.38"\n\n[guard]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n{guard_extra}'
    )
    return config
