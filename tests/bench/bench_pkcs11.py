"""Benchmark of Pkcs11Signer.sign on a SoftHSM2 token: signatures/s and p50/p99 latency.

Usage: python tests/bench/bench_pkcs11.py [-n N] [--threads T]

A fresh SoftHSM2 token is made in a temporary directory (its own SOFTHSM2_CONF), the "it's a secret" seed is
imported, and three things are timed over a 130-byte message (a precommit's sign bytes are about that long):
the raw python-pkcs11 C_Sign (the token's floor), Pkcs11Signer.sign (lock, session checks, and the Ed25519
verification of every signature), and PyNaCl signing with the same seed (what softsign pays).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey
from pkcs11 import KeyType, Mechanism, ObjectClass

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `tests.softhsm` imports when run as a script

from pykms.providers.pkcs11 import Pkcs11Signer, Pkcs11Token, import_key
from tests.softhsm import finalize_module, find_module, make_token

MESSAGE_LEN = 130
SEED = hashlib.sha256(b"it's a secret").digest()


def measure(n: int, op: Callable[[int], object]) -> list[float]:
    """Microseconds per call of op(i), after 50 warm-up calls."""
    for i in range(50):
        op(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        op(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=100)
    rate = 1e6 / statistics.fmean(samples)
    return (
        f"{name:<34} n={len(samples):<6} {rate:8.0f} sig/s  p50={q[49]:7.1f}  p99={q[98]:7.1f}  "
        f"max={samples[-1]:7.1f}  (µs)"
    )


def threaded_rate(signer: Pkcs11Signer, threads: int, per_thread: int) -> float:
    """Signatures per second with ``threads`` workers sharing one signer (they serialise on its lock)."""
    messages = [os.urandom(MESSAGE_LEN) for _ in range(per_thread)]

    def work() -> None:
        for m in messages:
            signer.sign(m)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * per_thread / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="signatures per measurement (default 5000)")
    parser.add_argument("--threads", type=int, default=4, help="workers for the threaded figure (default 4)")
    args = parser.parse_args()
    module = find_module()
    if module is None:
        sys.exit("SoftHSM2 not found: install the Debian package softhsm2")
    messages = [os.urandom(MESSAGE_LEN) for _ in range(args.n + 50)]
    with tempfile.TemporaryDirectory(prefix="pykms-bench-pkcs11-") as tmp:
        hsm = make_token(Path(tmp))
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        finalize_module(hsm.module)
        with Pkcs11Token(hsm.module, hsm.user_pin, token_label=hsm.label) as token:
            import_key(token, SEED, "bench", None)
            priv = token.run(
                lambda s: s.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label="bench"), "bench setup"
            )
            raw = measure(args.n, lambda i: priv.sign(messages[i], mechanism=Mechanism.EDDSA))
        signer = Pkcs11Signer(Pkcs11Token(hsm.module, hsm.user_pin, token_label=hsm.label), label="bench")
        try:
            wrapped = measure(args.n, lambda i: signer.sign(messages[i]))
            rate = threaded_rate(signer, args.threads, args.n // args.threads)
        finally:
            signer.close()
        nacl_key = SigningKey(SEED)
        soft = measure(args.n, lambda i: nacl_key.sign(messages[i]))
    print(f"SoftHSM2 module {module}, {MESSAGE_LEN}-byte messages")
    print(summary("python-pkcs11 C_Sign (floor)", raw))
    print(summary("Pkcs11Signer.sign (+verify)", wrapped))
    print(summary("PyNaCl sign (softsign)", soft))
    print(f"{'Pkcs11Signer.sign, ' + str(args.threads) + ' threads':<34} {rate:8.0f} sig/s (one lock per module)")


if __name__ == "__main__":
    main()
