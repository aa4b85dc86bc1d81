"""The local demo: a softsign key in a temporary directory, the validator simulator, and a real ``pykms start``.

Run it with ``scripts/demo`` (or ``python -m pykms.harness.demo``). It shows the whole signing path working on
this machine — key, config, state, SecretConnection, the guard, fsync — and prints the public key and figures.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pykms.harness.bench import format_result, measure_floor, run_sequence, summarize
from pykms.harness.simulator import ValidatorSimulator
from pykms.privval.codec import Dialect

__all__ = ["main", "write_demo_home"]

CHAIN_ID = "pykms-demo-1"


def write_demo_home(home: Path, listen_addr: str, *, chain_id: str = CHAIN_ID, protocol_version: str = "v0.38",
                    state_format: str = "json") -> Path:  # fmt: skip
    """Create key, identity, state and tmkms.toml for one chain served to ``listen_addr``; returns the config."""
    from pykms.guard.state import SignState
    from pykms.guard.store import create_state_file
    from pykms.keyfiles import write_secret_file
    from pykms.providers.softsign import keygen

    home = home.resolve()
    secrets = home / "secrets"
    state = home / "state"
    secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    keygen(secrets / f"{chain_id}-consensus.key")
    # kms-identity.key: base64 of a 32-byte Ed25519 seed, as tmkms writes it (PROTOCOL.md §3.4).
    write_secret_file(secrets / "kms-identity.key", base64.b64encode(os.urandom(32)))
    state_file = state / f"{chain_id}_priv_validator_state.json"
    create_state_file(state_file, SignState(0, 0, 0, b"", b""), fmt=state_format)
    config = home / "tmkms.toml"
    config.write_text(
        f"""[[chain]]
id = "{chain_id}"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{state_file}"
state_format = "{state_format}"

[[providers.softsign]]
chain_ids = ["{chain_id}"]
key_type = "consensus"
path = "{secrets / (chain_id + "-consensus.key")}"

[[validator]]
chain_id = "{chain_id}"
addr = "{listen_addr}"
secret_key = "{secrets / "kms-identity.key"}"
protocol_version = "{protocol_version}"
reconnect = true
"""
    )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykms-demo", description=__doc__)
    parser.add_argument("--votes", type=int, default=300, help="signing requests to send (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    from pykms.keyring import format_public_key

    home = Path(tempfile.mkdtemp(prefix="pykms-demo-"))
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN_ID, dialect=Dialect.V0_38)
    addr = sim.listen()
    config = write_demo_home(home, addr)
    print(f"demo home: {home}")
    print(f"validator simulator listening on {addr} (chain {CHAIN_ID}, protocol v0.38)")
    log_path = home / "pykms.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pykms.cli.main", "start", "-c", str(config), "--log-format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        link = sim.accept(timeout=15)
        pub = link.pubkey().pub_key
        from pykms.config import load_config

        key_format = load_config(config).chains[0].key_format
        print(f"pykms connected; consensus public key: {format_public_key(pub, key_format)}")
        fsync_s, sign_s = measure_floor(home)
        started = time.perf_counter()
        latencies = run_sequence(link, args.votes, start_height=1, proposal=True, extensions=True, pubkey=pub)
        wall = time.perf_counter() - started
        print(f"signed and verified {len(latencies)} proposals, prevotes and precommits (with vote extensions)")
        print(format_result(summarize(latencies, fsync_s, sign_s, wall)))
        link.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        sim.close()
    print(f"pykms stopped with exit code {code}; its log: {log_path}")
    if not args.keep and code == 0:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
