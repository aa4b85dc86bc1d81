"""The local demo: a softsign key in a temporary directory, the validator simulator, and a real ``pykms start``.

Run it with ``scripts/demo`` (or ``python -m pykms.harness.demo``). It shows the whole signing path working on
this machine — key, config, state, SecretConnection, the guard, fsync — and prints the public key and figures.
It exits non-zero if anything fails (pykms does not connect, a request is refused, a signature does not verify,
pykms does not stop cleanly), always stops the pykms process it started and removes its temporary directory
(``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pykms.errors import KmsError
from pykms.harness.bench import format_result, lower_floor, measure_floor, run_sequence, summarize
from pykms.harness.simulator import AcceptTimeout, SignerLink, ValidatorSimulator
from pykms.privval import codec
from pykms.privval.codec import Dialect

__all__ = ["add_sentries", "main", "start_pykms", "stop_pykms", "write_demo_home", "write_multichain_home"]

CHAIN_ID = "pykms-demo-1"
#: How long pykms may take to start and dial in (imports, key and state loading, handshake).
CONNECT_DEADLINE_S = 30.0
#: How long pykms may take to stop after SIGTERM before it is killed (its own shutdown is well under 1 s).
STOP_DEADLINE_S = 15.0


def write_demo_home(
    home: Path,
    listen_addr: str,
    *,
    chain_id: str = CHAIN_ID,
    protocol_version: str = "v0.38",
    state_format: str | None = None,
) -> Path:
    """Create key, identity, state and tmkms.toml for one chain served to ``listen_addr``; returns the config.

    ``state_format`` None: the default config (no ``state_format`` line: auto, a new state is slots)."""
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
    # kms-identity.key: base64 of a 32-byte Ed25519 seed, as tmkms writes it (docs/protocol.md §3.4).
    write_secret_file(secrets / "kms-identity.key", base64.b64encode(os.urandom(32)))
    state_file = state / f"{chain_id}_priv_validator_state.json"
    create_state_file(state_file, SignState(0, 0, 0, b"", b""), fmt=state_format or "auto")
    format_line = "" if state_format is None else f'state_format = "{state_format}"\n'
    config = home / "tmkms.toml"
    config.write_text(
        f"""[[chain]]
id = "{chain_id}"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{state_file}"
{format_line}
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


def add_sentries(config_text: str, addrs: list[str]) -> str:
    """A demo config with its [[validator]] repeated for each further sentry address (``addrs[0]`` is its own)."""
    validator = config_text[config_text.index("[[validator]]") :]
    for addr in addrs[1:]:
        config_text += "\n" + validator.replace(f'addr = "{addrs[0]}"', f'addr = "{addr}"')
    return config_text


def write_multichain_home(
    home: Path, listen: dict[str, list[str]], *, state_format: str | None = None, protocol_version: str = "v0.38"
) -> Path:
    """One tmkms.toml for several chains (chain id -> one address per sentry), each with its own key and state,
    as a demo home per chain under ``home``; returns the config (the benchmarks' and tests' signer set-up)."""
    blocks = []
    for chain_id, addrs in listen.items():
        config = write_demo_home(
            home / chain_id, addrs[0], chain_id=chain_id, protocol_version=protocol_version, state_format=state_format
        )
        blocks.append(add_sentries(config.read_text(), addrs))
    config = home / "tmkms.toml"
    config.write_text("\n".join(blocks))
    return config


class DemoError(KmsError):
    """The demo failed; the message says where."""


def _accept(sim: ValidatorSimulator, proc: subprocess.Popen[bytes]) -> SignerLink:
    deadline = time.monotonic() + CONNECT_DEADLINE_S
    while True:
        try:
            return sim.accept(timeout=0.5)
        except AcceptTimeout:
            if proc.poll() is not None:
                raise DemoError(f"pykms exited with code {proc.returncode} before connecting") from None
            if time.monotonic() > deadline:
                raise DemoError(f"pykms did not connect within {CONNECT_DEADLINE_S:g} s") from None


def start_pykms(config: Path, log_path: Path, *, user_namespace: bool = False) -> subprocess.Popen[bytes]:
    """``pykms start`` in a child process, its JSON log lines appended to ``log_path``.

    ``user_namespace``: as root, inside an unprivileged user namespace, so that a split key holder's front runs as
    this user instead of ``front_user``, who may not reach this Python."""
    argv = [sys.executable, "-m", "pykms.cli.main", "start", "-c", str(config), "--log-format", "json"]
    if user_namespace and os.getuid() == 0:
        argv = ["unshare", "--user", *argv]
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def stop_pykms(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after ``STOP_DEADLINE_S``; the exit code (negative: the signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -signal.SIGKILL


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_demo(home: Path, votes: int) -> None:
    """Everything but the temporary directory: start pykms, sign ``votes`` requests, stop pykms."""
    from pykms.config import load_config
    from pykms.keyring import format_public_key

    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN_ID, dialect=Dialect.V0_38)
    proc: subprocess.Popen[bytes] | None = None
    log_path = home / "pykms.log"
    failed = True
    try:
        addr = sim.listen()
        config = write_demo_home(home, addr)
        print(f"validator simulator listening on {addr} (chain {CHAIN_ID}, protocol v0.38)", flush=True)
        proc = start_pykms(config, log_path)
        link = _accept(sim, proc)
        resp = link.pubkey()
        if not isinstance(resp, codec.PubKeyResponse) or resp.error is not None:
            raise DemoError(f"pykms did not give its public key: {getattr(resp, 'error', None) or resp}")
        pub = bytes(resp.pub_key)
        key_format = load_config(config).chains[0].key_format
        print(f"pykms connected; consensus public key: {format_public_key(pub, key_format)}", flush=True)
        floor_before = measure_floor(home)
        started = time.perf_counter()
        latencies = run_sequence(link, votes, start_height=1, proposal=True, extensions=True, pubkey=pub)
        wall = time.perf_counter() - started
        fsync_s, sign_s = lower_floor(floor_before, measure_floor(home))
        print(f"signed and verified {len(latencies)} proposals, prevotes and precommits (with vote extensions)")
        print(format_result(summarize(latencies, fsync_s, sign_s, wall)), flush=True)
        link.close()
        failed = False
    finally:
        sim.close()
        code = None if proc is None else stop_pykms(proc)
        if proc is not None and (failed or code != 0):
            print(f"pykms log (last lines):\n{_tail(log_path)}", file=sys.stderr)
    if code != 0:
        raise DemoError(f"pykms stopped with exit code {code} (expected 0 after SIGTERM)")
    print("pykms stopped cleanly (exit code 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykms-demo", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=300, help="signing requests to send (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.votes < 1:
        parser.error("--votes must be at least 1")

    home = Path(tempfile.mkdtemp(prefix="pykms-demo-"))
    print(f"demo home: {home}")
    try:
        run_demo(home, args.votes)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except (KmsError, OSError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
