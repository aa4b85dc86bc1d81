"""``pykms-signer-harness``: a conformance test for any CometBFT remote signer (pykms, tmkms, horcrux, ...).

CometBFT removed its tm-signer-harness (v0.34.27 / v0.37.0). This one behaves like it (PROTOCOL.md §5): it plays
the node — listens, accepts the signer, checks the public key against ``$TMHOME/config/priv_validator_key.json``,
asks for a proposal at height 100 and a prevote and a precommit at height 101 with the chain id of
``$TMHOME/config/genesis.json`` — and verifies each signature over the sign bytes of its *own* request, so a
signer that alters what it signs fails. ``--suite full`` adds vote extensions, the v1.0 shapes, double-sign
refusals, regressions, a wrong chain id, pings and a reconnect.

Exit codes (tm-signer-harness's): 0 success, 1 bad parameters or key/state load failure, 2 no signer connected,
3 genesis, 4 cannot create the listener, 5 cannot start the listener, 6 interrupted, 7 other error,
8 public key mismatch, 9 proposal, 10 vote.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from pykms.errors import HarnessError, KeyFileError, KmsError, ProtocolError
from pykms.harness.simulator import PRECOMMIT, PREVOTE, SignerLink, ValidatorSimulator, make_proposal, make_vote
from pykms.keyfiles import write_secret_file
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes

__all__ = ["EXIT", "main", "run_basic", "run_full"]

EXIT = {
    "ok": 0,
    "params": 1,
    "no_signer": 2,
    "genesis": 3,
    "create_listener": 4,
    "start_listener": 5,
    "interrupted": 6,
    "other": 7,
    "pubkey": 8,
    "proposal": 9,
    "vote": 10,
}

#: tm-signer-harness's fixed request contents (VECTORS.md V12): block hash = part-set hash = SHA-256("hash").
HARNESS_BLOCK_SEED = b"hash"
HARNESS_PART_TOTAL = 1_000_000
#: Each accept attempt waits this long; --accept-retries attempts in all (tm-signer-harness: 100 retries).
ACCEPT_ATTEMPT_S = 0.1


@dataclass(frozen=True)
class TmHome:
    pub_key: bytes
    seed: bytes
    chain_id: str


def load_tmhome(home: Path) -> TmHome:
    """Read the expected key and the chain id; exit codes 1 (key/state) and 3 (genesis) on failure."""
    key_path = home / "config" / "priv_validator_key.json"
    try:
        doc = json.loads(key_path.read_text())
        priv = base64.b64decode(doc["priv_key"]["value"], validate=True)
        pub = base64.b64decode(doc["pub_key"]["value"], validate=True)
        if len(priv) != 64 or len(pub) != 32 or priv[32:] != pub:
            raise ValueError("priv_key.value must be 64 bytes = seed || public key, matching pub_key")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"cannot load {key_path}: {_reason(exc)}", EXIT["params"]) from None
    state_path = home / "data" / "priv_validator_state.json"
    if state_path.exists():
        try:
            json.loads(state_path.read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot load {state_path}: {_reason(exc)}", EXIT["params"]) from None
    genesis_path = home / "config" / "genesis.json"
    try:
        chain_id = json.loads(genesis_path.read_text())["chain_id"]
        if not isinstance(chain_id, str) or not chain_id:
            raise ValueError("chain_id must be a non-empty string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"cannot load the chain id from {genesis_path}: {_reason(exc)}", EXIT["genesis"]) from None
    return TmHome(pub_key=pub, seed=priv[:32], chain_id=chain_id)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return str(exc)


class Harness:
    """Listener plus the checks; prints one line per check."""

    def __init__(self, sim: ValidatorSimulator, expected_pub: bytes, accept_retries: int, out: Any = None) -> None:
        self.sim = sim
        self.expected_pub = expected_pub
        self.accept_retries = accept_retries
        self.out = out if out is not None else sys.stdout
        self.link: SignerLink | None = None
        self.failures = 0

    def say(self, status: str, name: str, detail: str = "") -> None:
        print(f"[{status}] {name}{': ' + detail if detail else ''}", file=self.out, flush=True)

    def accept(self) -> SignerLink:
        for _attempt in range(max(1, self.accept_retries)):
            try:
                self.link = self.sim.accept(timeout=ACCEPT_ATTEMPT_S)
                return self.link
            except TimeoutError:
                continue
            except (ProtocolError, OSError) as exc:
                self.say("info", "accept", f"a connection failed the handshake: {exc}")
                continue
        raise HarnessError(f"no signer connected after {self.accept_retries} accept attempts", EXIT["no_signer"])

    @property
    def chain_id(self) -> str:
        return self.sim.chain_id

    def expect(self, ok: bool, name: str, detail: str, code: str) -> None:
        if ok:
            self.say("pass", name, detail)
            return
        self.say("FAIL", name, detail)
        raise HarnessError(f"{name}: {detail}", EXIT[code])


def _verify(pub: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(pub).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def _error_text(resp: Any) -> str | None:
    err = getattr(resp, "error", None)
    return None if err is None else f"RemoteSignerError(code {err.code}): {err.description}"


def check_pubkey(h: Harness, link: SignerLink) -> None:
    resp = link.pubkey()
    err = _error_text(resp)
    h.expect(err is None, "public key", err or "answered", "pubkey")
    h.expect(
        bytes(resp.pub_key) == h.expected_pub,
        "public key matches priv_validator_key.json",
        f"got {bytes(resp.pub_key).hex()}, expected {h.expected_pub.hex()}",
        "pubkey",
    )


def check_proposal(h: Harness, link: SignerLink, height: int = 100) -> None:
    proposal = make_proposal(height, 0, HARNESS_BLOCK_SEED)
    expected = proposal_sign_bytes(h.chain_id, proposal)
    resp = link.sign_proposal(proposal)
    err = _error_text(resp)
    h.expect(err is None, f"proposal at height {height}", err or "signed", "proposal")
    sig = bytes(resp.proposal.signature)
    h.expect(
        _verify(h.expected_pub, expected, sig),
        "proposal signature",
        "verifies over the request's sign bytes" if _verify(h.expected_pub, expected, sig)
        else "does not verify over the sign bytes of the request (altered content or wrong key)",
        "proposal",
    )  # fmt: skip


def check_vote(h: Harness, link: SignerLink, vote_type: int, height: int = 101) -> bytes:
    name = "prevote" if vote_type == PREVOTE else "precommit"
    vote = make_vote(height, 0, vote_type, HARNESS_BLOCK_SEED)
    expected = vote_sign_bytes(h.chain_id, vote)
    resp = link.sign_vote(vote)
    err = _error_text(resp)
    h.expect(err is None, f"{name} at height {height}", err or "signed", "vote")
    sig = bytes(resp.vote.signature)
    ok = _verify(h.expected_pub, expected, sig)
    h.expect(ok, f"{name} signature", "verifies over the request's sign bytes" if ok else
             "does not verify over the sign bytes of the request (altered content or wrong key)", "vote")  # fmt: skip
    return sig


def run_basic(h: Harness) -> None:
    link = h.link or h.accept()
    check_pubkey(h, link)
    check_proposal(h, link)
    check_vote(h, link, PREVOTE)
    check_vote(h, link, PRECOMMIT)


def run_full(h: Harness, dialect: Dialect) -> None:
    """The basic run, then the checks a signer must pass to be trusted with a validator key."""
    run_basic(h)
    link = h.link
    assert link is not None
    pub, chain = h.expected_pub, h.chain_id
    base = 1000 + int(time.time())  # above anything the basic run signed

    resp = link.ping()
    h.expect(_error_text(resp) is None, "ping", "answered", "other")

    # Identical repeat: the same signature (FilePV returns the stored one; Ed25519 is deterministic anyway).
    vote = make_vote(base, 0, PREVOTE, b"A", timestamp=(1_700_000_000, 0))
    first = link.sign_vote(vote)
    h.expect(_error_text(first) is None, "prevote for block A", _error_text(first) or "signed", "vote")
    again = link.sign_vote(make_vote(base, 0, PREVOTE, b"A", timestamp=(1_700_000_000, 0)))
    h.expect(
        _error_text(again) is None and bytes(again.vote.signature) == bytes(first.vote.signature),
        "identical repeat returns the same signature",
        _error_text(again) or "same signature",
        "vote",
    )
    conflict = link.sign_vote(make_vote(base, 0, PREVOTE, b"B", timestamp=(1_700_000_000, 0)))
    h.expect(
        _error_text(conflict) is not None,
        "conflicting prevote at the same height/round/step is refused",
        _error_text(conflict) or "SIGNED A DOUBLE SIGN",
        "vote",
    )
    # Regressions.
    link.sign_vote(make_vote(base + 1, 1, PRECOMMIT, b"C"))
    cases = [
        ("height regression is refused", make_vote(base, 5, PRECOMMIT, b"C")),
        ("round regression is refused", make_vote(base + 1, 0, PRECOMMIT, b"C")),
        ("step regression is refused", make_vote(base + 1, 1, PREVOTE, b"C")),
    ]
    for name, regress in cases:
        resp = link.sign_vote(regress)
        h.expect(_error_text(resp) is not None, name, _error_text(resp) or "SIGNED", "vote")

    # Vote extensions by dialect (PROTOCOL.md §2.7).
    height = base + 10
    if dialect in (Dialect.V0_38, Dialect.V1_0):
        pre = link.sign_vote(make_vote(height, 0, PREVOTE, b"D"))
        h.expect(
            _error_text(pre) is None and not bytes(pre.vote.extension_signature),
            "no extension signature on a prevote",
            _error_text(pre) or "none",
            "vote",
        )
        vote = make_vote(height, 0, PRECOMMIT, b"D", extension=b"ext-data")
        resp = link.sign_vote(vote)
        ext_sig = bytes(resp.vote.extension_signature) if _error_text(resp) is None else b""
        h.expect(
            _verify(pub, vote_extension_sign_bytes(chain, vote), ext_sig),
            "extension signature on a non-nil precommit",
            "verifies over CanonicalVoteExtension" if ext_sig else (_error_text(resp) or "missing"),
            "vote",
        )
        nil = link.sign_vote(make_vote(height, 1, PRECOMMIT, b""))
        h.expect(
            _error_text(nil) is None and not bytes(nil.vote.extension_signature),
            "no extension signature on a nil precommit",
            _error_text(nil) or "none",
            "vote",
        )
        if dialect is Dialect.V1_0:
            skip = link.sign_vote(make_vote(height, 2, PRECOMMIT, b"E"), skip_extension_signing=True)
            h.expect(
                _error_text(skip) is None and not bytes(skip.vote.extension_signature),
                "v1.0 skip_extension_signing is obeyed",
                _error_text(skip) or "no extension signature",
                "vote",
            )
    # A vote for another chain: refused (RemoteSignerError) or the connection dropped (tmkms).
    try:
        wrong = link.sign_vote(make_vote(base + 20, 0, PREVOTE, b"F"), chain_id=chain + "-other")
        refused = _error_text(wrong) is not None
        detail = _error_text(wrong) or "SIGNED FOR ANOTHER CHAIN"
    except (ProtocolError, OSError):
        refused, detail = True, "connection closed by the signer"
    h.expect(refused, "a request for another chain id is refused", detail, "vote")
    # Reconnect: the validator drops the link; the signer must dial again and keep its state.
    link.close()
    h.link = None
    start = time.monotonic()
    link = h.accept()
    h.expect(True, "signer reconnected after the validator dropped the link", f"{time.monotonic() - start:.2f} s",
             "no_signer")  # fmt: skip
    after = link.sign_vote(make_vote(base, 0, PREVOTE, b"B", timestamp=(1_700_000_000, 0)))
    h.expect(_error_text(after) is not None, "double-sign state kept across the reconnect",
             _error_text(after) or "SIGNED A DOUBLE SIGN", "vote")  # fmt: skip
    check_pubkey(h, link)


def cmd_run(args: argparse.Namespace) -> int:
    home = load_tmhome(Path(args.tmhome).expanduser())
    try:
        dialect = Dialect.parse(args.protocol_version)
    except KmsError as exc:
        raise HarnessError(str(exc), EXIT["params"]) from None
    if not (args.addr.startswith("tcp://") or args.addr.startswith("unix://")):
        raise HarnessError(f"--addr must be tcp://host:port or unix://path, got {args.addr!r}", EXIT["params"])
    sim = ValidatorSimulator(args.addr, chain_id=home.chain_id, dialect=dialect)
    try:
        bound = sim.listen()
    except OSError as exc:
        code = EXIT["create_listener"] if isinstance(exc, socket.gaierror | PermissionError) else EXIT["start_listener"]
        raise HarnessError(f"cannot listen on {args.addr}: {exc.strerror or exc}", code) from None
    print(f"listening on {bound} for chain {home.chain_id} ({dialect.value}); waiting for the signer", flush=True)
    harness = Harness(sim, home.pub_key, args.accept_retries)
    try:
        harness.accept()
        if args.suite == "full":
            run_full(harness, dialect)
        else:
            run_basic(harness)
    finally:
        if harness.link is not None:
            harness.link.close()
        sim.close()
    print("all checks passed", flush=True)
    return EXIT["ok"]


def cmd_extract_key(args: argparse.Namespace) -> int:
    home = load_tmhome(Path(args.tmhome).expanduser())
    try:
        write_secret_file(Path(args.output), home.seed)
    except KeyFileError as exc:
        raise HarnessError(str(exc), EXIT["params"]) from None
    print(f"wrote the 32-byte raw seed to {args.output} (mode 0600)")
    return EXIT["ok"]


def cmd_bench(args: argparse.Namespace) -> int:
    from pykms.harness.bench import format_result, measure_floor, run_sequence, summarize

    dialect = Dialect.parse(args.protocol_version)
    sim = ValidatorSimulator(args.addr, chain_id=args.chain_id, dialect=dialect)
    try:
        bound = sim.listen()
    except OSError as exc:
        raise HarnessError(f"cannot listen on {args.addr}: {exc.strerror or exc}", EXIT["start_listener"]) from None
    print(f"listening on {bound}; waiting for the signer", file=sys.stderr, flush=True)
    harness = Harness(sim, b"", args.accept_retries)
    link = harness.accept()
    try:
        pub = link.pubkey().pub_key
        fsync_s, sign_s = measure_floor(Path(args.floor_dir))
        start_height = args.start_height if args.start_height is not None else time.time_ns() // 1000
        if args.warmup:
            run_sequence(link, args.warmup, start_height=start_height, pubkey=pub)
            start_height += args.warmup
        started = time.perf_counter()
        latencies = run_sequence(
            link, args.n, start_height=start_height, proposal=args.proposal, extensions=args.extensions, pubkey=pub
        )
        wall = time.perf_counter() - started
    finally:
        link.close()
        sim.close()
    print(format_result(summarize(latencies, fsync_s, sign_s, wall), as_json=args.json), flush=True)
    return EXIT["ok"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pykms-signer-harness", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="conformance test against a signer that dials --addr")
    p.add_argument("--addr", default="tcp://127.0.0.1:0")
    p.add_argument("--tmhome", default="~/.cometbft")
    p.add_argument("--accept-retries", type=int, default=100)
    p.add_argument("--protocol-version", default="v0.38", choices=[d.value for d in Dialect])
    p.add_argument("--suite", choices=("basic", "full"), default="basic")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("extract_key", help="write the raw 32-byte seed of $TMHOME's priv_validator_key.json")
    p.add_argument("--tmhome", default="~/.cometbft")
    p.add_argument("--output", default="./signing.key")
    p.set_defaults(func=cmd_extract_key)
    p = sub.add_parser("bench", help="latency and throughput of a signer that dials --addr")
    p.add_argument("--addr", required=True)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--chain-id", default="test-chain")
    p.add_argument("--protocol-version", default="v0.38", choices=[d.value for d in Dialect])
    p.add_argument("--proposal", action="store_true", help="a proposal before the votes of each height")
    p.add_argument("--extensions", action="store_true", help="vote extensions on precommits")
    p.add_argument("--json", action="store_true")
    p.add_argument("--floor-dir", default=".", help="where to measure the fsync floor (the signer's state disk)")
    p.add_argument("--start-height", type=int, default=None, help="default: microseconds since the epoch")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--accept-retries", type=int, default=300)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: bad parameters are exit code 1, as in tm-signer-harness
        return EXIT["params"] if exc.code not in (0, None) else 0
    try:
        code: int = args.func(args)
        return code
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT["interrupted"]
    except (KmsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT["other"]


_ = (Callable, hashlib)

if __name__ == "__main__":
    sys.exit(main())
