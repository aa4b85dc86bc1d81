"""``pykms-signer-harness``: a conformance test for any CometBFT remote signer (pykms, tmkms, horcrux, ...).

CometBFT removed its tm-signer-harness (v0.34.27 / v0.37.0). This one behaves like it (docs/protocol.md §5; facts from
cometbft at the parent of 13c1ef3d42, tools/tm-signer-harness/main.go and internal/test_harness.go): it plays the
node — listens, accepts the signer, checks the public key against ``$TMHOME/config/priv_validator_key.json``,
asks for a proposal at height 100 and a prevote and a precommit at height 101 with the chain id of
``$TMHOME/config/genesis.json`` — and verifies each signature over the sign bytes of its *own* request, so a
signer that alters what it signs fails. ``--suite full`` adds vote extensions, the v1.0 shapes, double-sign
refusals, regressions, a wrong chain id, pings and a reconnect.

Exit codes (tm-signer-harness's): 0 success, 1 bad parameters or key/state load failure, 2 no signer connected,
3 genesis, 4 cannot create the listener, 5 the listener failed while accepting, 6 interrupted (SIGINT), 7 other
error (including a signer that refuses or fails the public-key request), 8 public key mismatch, 9 proposal,
10 vote.

Where this harness differs from tm-signer-harness, on purpose:

- each accept attempt waits 100 ms, not 10 ms, so the default 100 attempts give a signer 10 s to dial in (a
  signer in reconnect backoff, as pykms caps it at 10 s, would miss a 1 s window); the count semantics are the
  same, and ``--accept-retries 0`` fails at once with exit code 2;
- ``extract_key`` refuses to overwrite an existing output file (tm-signer-harness truncates it, keeping its old,
  possibly world-readable, mode) and makes the new file durable;
- a stale ``unix://`` path is removed only if it is a socket;
- a key file whose public half does not match its seed is refused (exit code 1) rather than trusted;
- ``--tmhome`` defaults to ``~/.cometbft`` (CometBFT's home today; tm-signer-harness: ``~/.tendermint``).

``--suite full`` reports every check and exits with the code of the first failure: 7 for pings, 9 for proposal
checks, 10 for vote, extension and SignBytes checks, 2 if the signer does not come back after a dropped link.
A signer may refuse by answering RemoteSignerError or by closing the link (tmkms's way for regressions).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from pykms import __version__
from pykms.config.reader import MAX_CHAIN_ID_LEN
from pykms.errors import HarnessError, KeyFileError, KmsError, ProtocolError, StateError
from pykms.guard.state import from_cometbft_json
from pykms.harness.conformance import (
    ACCEPT_ATTEMPT_S,
    EXIT,
    Harness,
    fail,
    refusal_reason,
    run_basic,
    run_full,
)
from pykms.harness.simulator import ValidatorSimulator
from pykms.keyfiles import write_secret_file
from pykms.privval import codec
from pykms.privval.codec import Dialect

__all__ = ["build_parser", "main"]


#: Read/write deadline on the signer connection (tm-signer-harness main.go: defaultConnDeadline = 3 s).
CONN_DEADLINE_S = 3.0


# Loading $TMHOME ---------------------------------------------------------------------------------------------


def load_key(home: Path) -> tuple[bytes, bytes]:
    """(public key, seed) from ``config/priv_validator_key.json``; checks ``data/priv_validator_state.json`` too.

    tm-signer-harness loads both through privval.LoadFilePV, which exits with code 1 if either is missing or
    malformed; so does this.
    """
    key_path = home / "config" / "priv_validator_key.json"
    try:
        doc = json.loads(key_path.read_bytes())
        priv_key = doc["priv_key"]
        if priv_key.get("type") != "tendermint/PrivKeyEd25519":
            raise ValueError(f"priv_key.type {priv_key.get('type')!r}: only tendermint/PrivKeyEd25519 is supported")
        priv = base64.b64decode(priv_key["value"], validate=True)
        if len(priv) != 64:
            raise ValueError(f"priv_key.value is {len(priv)} bytes; an Ed25519 key is 64 (seed || public key)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise fail(f"cannot load {key_path}: {_reason(exc)}", "params") from None
    seed, pub = priv[:32], priv[32:]
    # FilePV takes the public key from the private key's second half (crypto/ed25519 PrivKey.PubKey); a file
    # whose halves disagree would make every check compare against a key the seed cannot sign for.
    if bytes(SigningKey(seed).verify_key) != pub:
        raise fail(f"cannot load {key_path}: the public half of priv_key does not match its seed", "params")
    state_path = home / "data" / "priv_validator_state.json"
    try:
        from_cometbft_json(state_path.read_bytes(), str(state_path))
    except (OSError, StateError) as exc:
        raise fail(f"cannot load {state_path}: {_reason(exc)}", "params") from None
    return pub, seed


def load_genesis_chain_id(home: Path) -> str:
    """The chain id of ``config/genesis.json`` (exit code 3 on failure, as MakeGenesisDocFromFile's errors)."""
    genesis_path = home / "config" / "genesis.json"
    try:
        chain_id = json.loads(genesis_path.read_bytes())["chain_id"]
        if not isinstance(chain_id, str) or not chain_id:
            raise ValueError("genesis doc must include a non-empty chain_id")
        if len(chain_id) > MAX_CHAIN_ID_LEN:
            raise ValueError(f"chain_id is too long (max: {MAX_CHAIN_ID_LEN})")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"cannot load the chain id from {genesis_path}: {_reason(exc)}", "genesis") from None
    return chain_id


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at line {exc.lineno})"
    return str(exc)


# Commands ---------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    dialect = Dialect(args.protocol_version)  # one of argparse's choices
    tmhome = Path(args.tmhome).expanduser()
    pub, _seed = load_key(tmhome)  # key and state first (exit code 1), then the genesis (3), as tm-signer-harness
    chain_id = load_genesis_chain_id(tmhome)
    sim = ValidatorSimulator(
        args.addr,
        chain_id=chain_id,
        dialect=dialect,
        handshake_timeout=CONN_DEADLINE_S,
        request_timeout=CONN_DEADLINE_S,
    )
    harness = Harness(sim, pub, args.accept_retries)
    try:
        bound = sim.listen()  # ListenerError carries exit code 4
        print(
            f"listening on {bound} for chain {chain_id} ({dialect.value}); expecting public key "
            f"{pub.hex().upper()}; waiting for the signer",
            flush=True,
        )
        harness.accept()
        if args.suite == "full":
            run_full(harness, dialect)
        else:
            run_basic(harness)
    finally:
        harness.close()
    print(f"SUCCESS: all {harness.passes} checks passed", flush=True)
    return EXIT["ok"]


def cmd_extract_key(args: argparse.Namespace) -> int:
    """The raw 32-byte seed, mode 0600 (tm-signer-harness writes pkb[:32] with os.WriteFile(..., 0600))."""
    _pub, seed = load_key(Path(args.tmhome).expanduser())
    output = Path(args.output).expanduser()
    try:
        write_secret_file(output, seed)
    except KeyFileError as exc:
        raise fail(f"failed to write the key: {exc}", "params") from None
    print(
        f"wrote the raw 32-byte Ed25519 seed to {output} (mode 0600); tmkms and pykms softsign want it base64: "
        f"base64 -w0 {output}"
    )
    return EXIT["ok"]


def cmd_bench(args: argparse.Namespace) -> int:
    from pykms.harness.bench import (
        format_result,
        lower_floor,
        measure_floor,
        measure_ideal_signer,
        run_sequence,
        summarize,
    )

    dialect = Dialect(args.protocol_version)  # one of argparse's choices
    if args.chains < 1 or args.sentries < 1:
        raise fail("--chains and --sentries must be at least 1", "params")
    if args.chains > 1 or args.sentries > 1:
        return _bench_concurrent(args, dialect)
    if args.n < 1:
        raise fail("-n must be at least 1", "params")
    sim = ValidatorSimulator(args.addr, chain_id=args.chain_id, dialect=dialect)
    harness = Harness(sim, b"", args.accept_retries, out=sys.stderr)
    try:
        bound = sim.listen()  # ListenerError carries exit code 4
        print(f"listening on {bound} for chain {args.chain_id}; waiting for the signer", file=sys.stderr, flush=True)
        link = harness.accept()
        resp = harness.call("public key", "other", link.pubkey)
        if not isinstance(resp, codec.PubKeyResponse) or resp.error is not None or len(resp.pub_key) != 32:
            why = refusal_reason(resp) or type(resp).__name__
            raise fail(f"the signer did not give its public key: {why}", "other")
        pub = bytes(resp.pub_key)
        floor_before = measure_floor(Path(args.floor_dir))
        start_height = args.start_height if args.start_height is not None else time.time_ns() // 1000
        run_sequence(  # untimed warmup
            link, args.warmup, start_height=start_height, proposal=args.proposal, extensions=args.extensions, pubkey=pub
        )
        start_height += args.warmup
        started = time.perf_counter()
        latencies = run_sequence(
            link, args.n, start_height=start_height, proposal=args.proposal, extensions=args.extensions, pubkey=pub
        )
        wall = time.perf_counter() - started
        fsync_s, sign_s = lower_floor(floor_before, measure_floor(Path(args.floor_dir)))
    except ProtocolError as exc:
        raise fail(f"the link failed: {exc}", "other") from None
    finally:
        harness.close()
    ideal = measure_ideal_signer(Path(args.floor_dir), min(args.n, 2000)) if args.ideal else None
    print(format_result(summarize(latencies, fsync_s, sign_s, wall, ideal), as_json=args.json), flush=True)
    return EXIT["ok"]


def _bench_concurrent(args: argparse.Namespace, dialect: Dialect) -> int:
    """``--chains M --sentries N``: M chains named CHAIN_ID-0..M-1, N listeners each, driven at once."""
    from urllib.parse import urlsplit

    from pykms.harness.load import format_concurrent, run_concurrent

    if args.proposal or args.extensions:
        raise fail("--proposal and --extensions are for the single-chain run (omit --chains/--sentries)", "params")
    if args.seconds <= 0:
        raise fail("--seconds must be positive", "params")
    try:
        parts = urlsplit(args.addr)
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a bracketed host that is not IPv6
        scheme, host, port = "", None, None
    if scheme != "tcp" or not host or port is None:
        raise fail(
            f"--addr {args.addr!r}: several listeners need tcp://HOST:PORT (port 0: any free ports; "
            "otherwise PORT, PORT+1, ... in the order printed)",
            "params",
        )
    listen: dict[str, list[str]] = {}
    for c in range(args.chains):
        ports = [port + c * args.sentries + k if port else 0 for k in range(args.sentries)]
        listen[f"{args.chain_id}-{c}"] = [f"tcp://{host}:{sentry_port}" for sentry_port in ports]

    def on_listening(bound: dict[str, list[str]]) -> int | None:
        for cid, addrs in bound.items():
            for k, addr in enumerate(addrs):
                print(f"listening on {addr} for chain {cid} (sentry {k + 1} of {len(addrs)})", file=sys.stderr)
        print(f"waiting for the signer ({args.chains * args.sentries} connections)", file=sys.stderr, flush=True)
        return args.signer_pid  # type: ignore[no-any-return]

    result = run_concurrent(
        listen,
        args.seconds,
        on_listening=on_listening,
        dialect=dialect,
        block_ms=args.block_ms,
        workers=args.workers or min(4, args.chains),
        accept_timeout=args.accept_retries * ACCEPT_ATTEMPT_S,
    )
    print(format_concurrent(result, as_json=args.json), flush=True)
    return EXIT["ok"]


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"pykms-signer-harness {__version__}")
    return EXIT["ok"]


def _add(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--name`` plus Go's single-dash ``-name`` (tm-signer-harness's flags), so its scripts keep working."""
    p.add_argument(f"--{name}", f"-{name}", **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pykms-signer-harness", description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dialects = [d.value for d in Dialect]
    p = sub.add_parser("run", help="conformance test against a signer that dials --addr", allow_abbrev=False)
    _add(p, "addr", default="tcp://127.0.0.1:0", help="tcp://host:port or unix://path to listen on")
    _add(p, "tmhome", default="~/.cometbft", help="home with config/priv_validator_key.json and genesis.json")
    _add(p, "accept-retries", type=int, default=100, help=f"accept attempts of {ACCEPT_ATTEMPT_S * 1000:g} ms each")
    _add(p, "protocol-version", default="v0.38", choices=dialects)
    p.add_argument("--suite", choices=("basic", "full"), default="basic")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "extract_key", help="write the raw 32-byte seed of $TMHOME's priv_validator_key.json", allow_abbrev=False
    )
    _add(p, "tmhome", default="~/.cometbft")
    _add(p, "output", default="./signing.key")
    p.set_defaults(func=cmd_extract_key)
    p = sub.add_parser("bench", help="latency and throughput of a signer that dials --addr", allow_abbrev=False)
    p.add_argument("--addr", required=True)
    p.add_argument("-n", type=int, default=1000, help="signing requests to time (default 1000)")
    p.add_argument("--chain-id", default="test-chain")
    p.add_argument("--protocol-version", default="v0.38", choices=dialects)
    p.add_argument("--proposal", action="store_true", help="a proposal before the votes of each height")
    p.add_argument("--extensions", action="store_true", help="vote extensions on precommits")
    p.add_argument("--json", action="store_true")
    p.add_argument("--floor-dir", default=".", help="where to measure the fsync floor (the signer's state disk)")
    p.add_argument("--start-height", type=int, default=None, help="default: microseconds since the epoch")
    p.add_argument("--warmup", type=int, default=50, help="untimed requests first (default 50)")
    p.add_argument("--accept-retries", type=int, default=300)
    p.add_argument(
        "--no-ideal",
        dest="ideal",
        action="store_false",
        help="skip the ideal signer: the smallest signer loop this machine can run, the best any signer can do here",
    )
    g = p.add_argument_group(
        "several chains and sentries at once",
        "with --chains or --sentries above 1: chains CHAIN_ID-0.., each with SENTRIES listeners (one line each on "
        "stderr), all driven for --seconds; prevote and precommit per height, both sentries of a chain asking for "
        "the same votes",
    )
    g.add_argument("--chains", type=int, default=1)
    g.add_argument("--sentries", type=int, default=1)
    g.add_argument("--seconds", type=float, default=10.0, help="how long the load runs (default 10)")
    g.add_argument("--block-ms", type=float, default=None, help="one height per block of this length (default: "
                   "closed loop, each sentry's next request as soon as it has the answer)")  # fmt: skip
    g.add_argument("--workers", type=int, default=0, help="load processes (default: min(4, chains))")
    g.add_argument("--signer-pid", type=int, default=None, help="the signer's process id, for its CPU per request")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: bad parameters are exit code 1, as in tm-signer-harness
        return EXIT["params"] if exc.code not in (0, None) else 0
    # SIGINT is exit code 6 even when started in the background with SIGINT ignored (Go's signal.Notify
    # installs its handler regardless).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT["interrupted"]
    except (KmsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT["other"]
    except Exception:  # tm-signer-harness: any other error is 7; say where it came from
        traceback.print_exc()
        return EXIT["other"]


if __name__ == "__main__":
    sys.exit(main())
