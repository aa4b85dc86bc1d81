"""Benchmark: check_and_sign latency of the PostgreSQL guard against the file guard, on this machine.

Usage: python tests/bench/bench_guard_postgres.py [-n N] [--dsn DSN | --patroni]

Without --dsn a PostgreSQL server is started from the local binaries (tests/pg.py: fsync on,
synchronous_commit on, no standby), its data directory on the same disk as the file stores' temporary
directory, so both pay this disk's flush. Every call is a fresh signature (the next height) with a real Ed25519
key over real vote sign bytes, so each one is: decide, sign, persist durably, return. Rows:

- file/json, file/slots: FileGuard over JsonStateStore / SlotStateStore (one process, no sharing)
- postgres: one PostgresGuard, the only client (BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT)
- postgres, 2 instances: two PostgresGuards (two connections) in two threads, each signing every height (one
  signs fresh, the other waits for the row lock and reuses the signature), latency per returned signature
- postgres reuse: an identical repeat (row lock, a write, COMMIT: what a second sentry's request costs)

A synchronous standby adds a network round trip and the standby's flush to every COMMIT; measure it on the
real deployment with --dsn, or with --patroni on this machine: the tests' Patroni cluster (tests/patroni_stack.py:
three nodes on loopback, strict synchronous mode, one synchronous standby), through its multi-host DSN.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.* helpers when run as a script

from nacl.signing import SigningKey

from pykms.errors import DoubleSignError
from pykms.guard.backend import FileGuard
from pykms.guard.pgadmin import init_db, write_state
from pykms.guard.postgres import PostgresGuard
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore, SlotStateStore, create_state_file
from tests.test_guard_support import vote_bytes

KEY = SigningKey(bytes(range(32)))


def sign(data: bytes) -> bytes:
    return bytes(KEY.sign(data).signature)


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=100)
    return (
        f"{name:<28} n={len(samples):<6} p50={q[49]:8.1f}  p90={q[89]:8.1f}  p99={q[98]:8.1f}  "
        f"max={samples[-1]:8.1f}  (µs)  {1e6 / statistics.fmean(samples):7.0f}/s"
    )


def measure(n: int, op: Callable[[int], object], warmup: int = 20) -> list[float]:
    for i in range(warmup):
        op(i)
    out = []
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter_ns()
        op(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def payloads(n: int) -> list[bytes]:
    return [vote_bytes(h, 0, 2, 1) for h in range(1, n + 1)]


def bench_file(directory: Path, n: int, fmt: str) -> list[float]:
    path = directory / f"state-{fmt}.json"
    create_state_file(path, SignState.initial(), fmt="slots" if fmt == "slots" else "json")
    store = SlotStateStore(path) if fmt == "slots" else JsonStateStore(path)
    guard = FileGuard("bench", store)
    data = payloads(n + 20)
    try:
        return measure(n, lambda i: guard.check_and_sign(i + 1, 0, 2, data[i], sign))
    finally:
        guard.close()


def bench_pg(dsn: str, n: int, chain: str) -> tuple[list[float], list[float]]:
    write_state(dsn, chain, SignState.initial(), force=True)
    guard = PostgresGuard(dsn, chain)
    data = payloads(n + 20)
    try:
        fresh = measure(n, lambda i: guard.check_and_sign(i + 1, 0, 2, data[i], sign))
        last = n + 20
        reuse = measure(n, lambda i: guard.check_and_sign(last, 0, 2, data[last - 1], sign))
        return fresh, reuse
    finally:
        guard.close()


def bench_pg_pair(dsn: str, n: int, chain: str) -> list[float]:
    write_state(dsn, chain, SignState.initial(), force=True)
    data = payloads(n)
    samples: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def run() -> None:
        guard = PostgresGuard(dsn, chain)
        mine = []
        try:
            barrier.wait()
            for i in range(n):
                t0 = time.perf_counter_ns()
                try:
                    guard.check_and_sign(i + 1, 0, 2, data[i], sign)
                except DoubleSignError:
                    continue  # the other instance is already past this height: not a latency sample
                mine.append((time.perf_counter_ns() - t0) / 1000)
        finally:
            guard.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--dsn", help="an existing database (the schema is created; chain ids bench-*)")
    parser.add_argument("--patroni", action="store_true", help="start the tests' Patroni cluster and use it")
    args = parser.parse_args()
    server = None
    stack = None
    dsn = args.dsn
    if args.patroni:
        from tests.patroni_stack import PatroniStack

        stack = PatroniStack.create()
        dsn = stack.dsn()
    elif dsn is None:
        from tests.pg import PgServer

        server = PgServer.create()
        dsn = server.dsn(server.create_database())
    try:
        init_db(dsn)
        with tempfile.TemporaryDirectory(prefix="pykms-bench-", dir=".") as tmp:
            print(f"check_and_sign, fresh signature each call (Ed25519 sign included), n={args.n}")
            print(summary("file/json", bench_file(Path(tmp), args.n, "json")))
            print(summary("file/slots", bench_file(Path(tmp), args.n, "slots")))
        fresh, reuse = bench_pg(dsn, args.n, "bench-single")
        print(summary("postgres", fresh))
        print(summary("postgres, 2 instances", bench_pg_pair(dsn, args.n, "bench-pair")))
        print(summary("postgres reuse (repeat)", reuse))
        sign_only = measure(args.n, lambda i: sign(b"x" * 130))
        print(summary("Ed25519 sign alone", sign_only))
    finally:
        if server is not None:
            server.destroy()
        if stack is not None:
            stack.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
