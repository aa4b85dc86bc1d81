"""Benchmark of YubiHSM-backed signing through YubihsmSigner against the simulator over loopback HTTP.

Usage: python tests/bench/bench_yubihsm.py [-n N] [--url URL --auth-key K --password P --key-id I]

Without --url a simulator is started in-process on a free port (its own thread, so the figures include the
HTTP round trip, SCP03 encryption and MACs on both sides, Ed25519 signing in the simulator, and pykms's
verification of every signature). With --url it measures a running connector instead (a real YubiHSM2, whose
own signing time then dominates: the simulator's figures are an upper bound on what the pykms side allows).
Also measured: the cost of re-establishing a session (what a lost session costs one request).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from pykms.harness.yubihsm_sim.server import SimServer
from pykms.providers.yubihsm import YubihsmSigner

# A precommit's sign bytes are ~130 bytes with a 20-character chain id.
MESSAGE = b"\x08\x02" + b"\x11" * 128


def measure(n: int, op: Callable[[int], None]) -> list[float]:
    """Milliseconds per call of op(i), after 20 warm-up calls."""
    for i in range(20):
        op(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        op(i)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=100)
    rate = 1000 / statistics.fmean(samples)
    return (
        f"{name:<26} n={len(samples):<6} p50={q[49]:7.3f}  p90={q[89]:7.3f}  p99={q[98]:7.3f}  "
        f"max={samples[-1]:7.3f} ms  ({rate:,.0f}/s)"
    )


def bench(url: str, auth_key: int, password: str, key_id: int, n: int) -> None:
    signer = YubihsmSigner(url, auth_key, password, key_id)
    try:
        print(summary("sign (verified)", measure(n, lambda i: signer.sign(MESSAGE + i.to_bytes(4, "big")))))

        def reconnect(i: int) -> None:
            signer._drop()
            signer.sign(MESSAGE)

        print(summary("new session + sign", measure(max(n // 10, 20), reconnect)))
    finally:
        signer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=2000, help="signatures (default 2000)")
    parser.add_argument("--url", default=None, help="connector URL (default: an in-process simulator)")
    parser.add_argument("--auth-key", type=int, default=1)
    parser.add_argument("--password", default="password")
    parser.add_argument("--key-id", type=int, default=1)
    args = parser.parse_args()
    if args.url:
        print(f"connector: {args.url}")
        bench(args.url, args.auth_key, args.password, args.key_id, args.n)
        return
    from yubihsm.core import YubiHsm
    from yubihsm.defs import ALGORITHM, CAPABILITY
    from yubihsm.objects import AsymmetricKey

    sim = SimServer().start()
    try:
        session = YubiHsm.connect(sim.url).create_session_derived(1, "password")
        AsymmetricKey.generate(session, 1, "bench", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
        session.close()
        print(f"simulator: {sim.url} (in-process, loopback HTTP)")
        bench(sim.url, 1, "password", 1, args.n)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
