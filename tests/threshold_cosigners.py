"""A t-of-n FROST cosigner set on loopback, built from an existing softsign key, for the tests and the benchmark.

``write_cosigner_set`` runs what an operator runs (``pykms threshold split``, one identity key per cosigner,
``cosigner.toml`` files, ``pykms cosigner init``) and returns the ``[[providers.threshold]]`` section that
replaces the key's softsign section in tmkms.toml (``use_threshold``). ``start_cosigner`` runs one real
``pykms cosigner start`` process.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CosignerSet", "start_cosigner", "use_threshold", "write_cosigner_set"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CosignerSet:
    configs: list[Path]
    addrs: list[str]
    provider_toml: str
    group_file: Path


def write_cosigner_set(
    home: Path,
    key_file: Path,
    signer_identity: Path,
    *,
    chain_id: str,
    threshold: int = 2,
    participants: int = 3,
    timeout_ms: int = 2000,
    extra_signers: tuple[Path, ...] = (),
    state_format: str = "slots",
) -> CosignerSet:
    from pykms.cli.main import main as pykms_main
    from pykms.keyfiles import write_secret_file
    from pykms.secretconn.identity import load_identity, node_id

    home = home.resolve()
    shares = home / "shares"
    code = pykms_main(["threshold", "split", str(key_file), str(shares), "-t", str(threshold), "-n", str(participants)])
    if code != 0:
        raise RuntimeError(f"pykms threshold split exited with {code}")
    allowed = [node_id(bytes(load_identity(p).verify_key)) for p in (signer_identity, *extra_signers)]
    configs: list[Path] = []
    addrs: list[str] = []
    for i in range(1, participants + 1):
        directory = home / f"cosigner{i}"
        (directory / "state").mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = directory / "identity.key"
        write_secret_file(identity, base64.b64encode(os.urandom(32)))
        share = directory / "share.json"
        (shares / f"share-{i}.json").rename(share)
        port = free_port()
        config = directory / "cosigner.toml"
        config.write_text(
            f'listen_addr = "tcp://127.0.0.1:{port}"\n'
            f'share_file = "{share}"\n'
            f'secret_key = "{identity}"\n'
            f"allowed_signers = {allowed!r}\n".replace("'", '"')
            + "\n[[chain]]\n"
            f'id = "{chain_id}"\n'
            f'state_file = "{directory / "state" / (chain_id + "_cosigner_state")}"\n'
            f'state_format = "{state_format}"\n'
        )
        if pykms_main(["cosigner", "init", "-c", str(config)]) != 0:
            raise RuntimeError("pykms cosigner init failed")
        configs.append(config)
        addrs.append(f"tcp://{node_id(bytes(load_identity(identity).verify_key))}@127.0.0.1:{port}")
    cosigners = ",\n".join(f'  {{ addr = "{a}" }}' for a in addrs)
    provider = (
        "[[providers.threshold]]\n"
        f'chain_ids = ["{chain_id}"]\n'
        f"threshold = {threshold}\n"
        f'group_file = "{shares / "group.json"}"\n'
        f'secret_key = "{signer_identity}"\n'
        f"timeout_ms = {timeout_ms}\n"
        f"cosigners = [\n{cosigners},\n]\n"
    )
    return CosignerSet(configs, addrs, provider, shares / "group.json")


def use_threshold(config_text: str, cosigners: CosignerSet) -> str:
    """A demo tmkms.toml with its one [[providers.softsign]] section replaced by the threshold section."""
    pattern = re.compile(r"\[\[providers\.softsign\]\]\n(?:[^\[\n][^\n]*\n)*", re.MULTILINE)
    text, count = pattern.subn(lambda _: cosigners.provider_toml + "\n", config_text, count=1)
    if count != 1:
        raise ValueError("no [[providers.softsign]] section to replace")
    return text


def start_cosigner(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # the child owns it; our copy is closed below
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "pykms.cli.main", "cosigner", "start", "-c", str(config), "--log-format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    finally:
        log.close()
