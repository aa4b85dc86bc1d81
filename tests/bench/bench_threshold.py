"""Benchmark of threshold signing: latency p50/p99/max of ThresholdSigner.sign against 2-of-3 cosigner processes.

Usage: python tests/bench/bench_threshold.py [-n N]

Three real ``pykms cosigner start`` processes on loopback (each with its own durable JSON state: one
temp + fsync + rename + directory fsync per fresh share), and the provider ``pykms start`` uses, in this
process. Each request is a fresh prevote (a new height), so every cosigner's guard persists. Figures:

1. all three cosigners up;
2. one cosigner SIGKILLed (the provider skips it, asking it again once a second: ``retry_after_ms``);
3. the floor: the same FROST arithmetic in one process, no network, no state (what Python + libsodium cost).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nacl.signing import SigningKey

from pykms.config import load_config
from pykms.harness.demo import write_demo_home
from pykms.privval.signbytes import vote_sign_bytes
from pykms.proto.tendermint.types import types_pb2
from pykms.providers.registry import build_signers
from pykms.threshold import frost
from tests.threshold_cosigners import start_cosigner, use_threshold, write_cosigner_set

CHAIN = "bench-chain"


def prevote(height: int) -> bytes:
    vote = types_pb2.Vote(type=1, height=height, round=0)
    vote.block_id.hash = hashlib.sha256(str(height).encode()).digest()
    vote.block_id.part_set_header.total = 1
    vote.block_id.part_set_header.hash = vote.block_id.hash
    vote.timestamp.seconds = 1_700_000_000 + height
    vote.validator_address = bytes(20)
    return vote_sign_bytes(CHAIN, vote)


def measure(n: int, start: int, op: Callable[[bytes], object]) -> list[float]:
    """Milliseconds per call, after 20 warm-up calls."""
    for i in range(20):
        op(prevote(start + i))
    out = []
    for i in range(n):
        message = prevote(start + 20 + i)
        t0 = time.perf_counter_ns()
        op(message)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def summary(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    q = statistics.quantiles(s, n=100)
    return f"{name:<38} n={len(s):<5} p50 {q[49]:6.2f} ms  p99 {q[98]:6.2f} ms  max {s[-1]:6.2f} ms"


def floor(n: int) -> list[float]:
    seed = hashlib.sha256(b"floor").digest()
    public = bytes(SigningKey(seed).verify_key)
    shares = frost.split_secret(frost.secret_scalar_from_seed(seed), 2, 3)[:2]
    package = frost.public_key_package(shares, 2, public)

    def sign(message: bytes) -> bytes:
        rounds = {s.identifier: frost.commit(s) for s in shares}
        commitments = [c for _, c in rounds.values()]
        z = {s.identifier: frost.sign_share(s, rounds[s.identifier][0], message, commitments, public) for s in shares}
        return frost.aggregate(package, message, commitments, z)

    return measure(n, 0, sign)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_demo_home(root / "kms", "tcp://127.0.0.1:1", chain_id=CHAIN)
        cset = write_cosigner_set(
            root / "threshold",
            root / "kms" / "secrets" / f"{CHAIN}-consensus.key",
            root / "kms" / "secrets" / "kms-identity.key",
            chain_id=CHAIN,
        )
        config.write_text(use_threshold(config.read_text(), cset))
        logs = [root / f"cosigner{i}.log" for i in range(3)]
        procs = [start_cosigner(c, log) for c, log in zip(cset.configs, logs, strict=True)]
        try:
            for log in logs:
                while not log.exists() or "cosigner_listening" not in log.read_text():
                    time.sleep(0.05)
            signer = build_signers(load_config(config))[CHAIN]
            print(summary("2 of 3, all up", measure(args.n, 1_000, signer.sign)))
            procs[0].kill()
            procs[0].wait()
            print(summary("2 of 3, one cosigner dead", measure(args.n, 100_000, signer.sign)))
            signer.close()
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    print(summary("floor: FROST 2 of 3 in one process", floor(args.n)))


if __name__ == "__main__":
    main()
