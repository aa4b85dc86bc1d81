"""Signatures through the real ledgerblue TCP transport against pykms-ledger-sim: p50/p99 and signatures/s.

Run: python tests/bench/bench_ledger.py [-n 2000]. A real Ledger is far slower (its own signing and USB); this
measures pykms's provider and the transport, not a device.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nacl.signing import SigningKey

from pykms.harness.ledger_sim import LedgerApp, LedgerSimServer
from pykms.harness.simulator import PREVOTE, make_vote
from pykms.privval.signbytes import vote_sign_bytes
from pykms.providers.ledger import LedgerSigner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    server = LedgerSimServer(LedgerApp(SigningKey.generate())).start()
    signer = LedgerSigner("tcp", f"127.0.0.1:{server.port}")
    messages = [vote_sign_bytes("bench-1", make_vote(h, 0, PREVOTE, b"A")) for h in range(1, args.n + 1)]
    latencies = []
    started = time.perf_counter()
    for message in messages:
        t0 = time.perf_counter()
        signer.sign(message)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3
    print(f"ledger (ledgerblue TCP -> pykms-ledger-sim), n={args.n}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
          f"{args.n / wall:.0f} signatures/s")  # fmt: skip
    signer.close()
    server.stop()


if __name__ == "__main__":
    main()
