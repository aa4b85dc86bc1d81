"""Benchmark of the state stores: save() latency of JsonStateStore and SlotStateStore, and the floor.

Usage: python tests/bench/bench_store.py [DIR] [-n N]

DIR defaults to a temporary directory under the current directory (so the figures are for the disk you run
it on, not a tmpfs /tmp). The floor is one pwrite + fdatasync of a small preallocated file: what any durable
store must pay per save on this disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore, SlotStateStore

# A state of realistic size: a precommit's sign bytes are ~130 bytes with a 20-character chain id.
SIGN_BYTES_LEN = 130


def states(n: int) -> list[SignState]:
    return [SignState(h, 0, 3, bytes([h % 256]) * 64, bytes([h % 256]) * SIGN_BYTES_LEN) for h in range(1, n + 1)]


def measure(n: int, op: Callable[[int], None]) -> list[float]:
    """Microseconds per call of op(i), i = 0..n-1, after 20 warm-up calls."""
    for i in range(20):
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
    return (
        f"{name:<28} n={len(samples):<6} min={samples[0]:8.1f}  p50={q[49]:8.1f}  p90={q[89]:8.1f}  "
        f"p99={q[98]:8.1f}  max={samples[-1]:8.1f}  (µs)"
    )


def bench(directory: Path, n: int) -> None:
    seq = states(n + 20)
    floor_path = directory / "floor"
    fd = os.open(floor_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
        buf = b"\x01" * 512

        def bare(_: int) -> None:
            os.pwrite(fd, buf, 0)
            os.fdatasync(fd)

        floor = measure(n, bare)
    finally:
        os.close(fd)
    print(summary("floor: pwrite+fdatasync", floor))

    with SlotStateStore.create(directory / "state.slots", SignState.initial()) as slots:
        slot_times = measure(n, lambda i: slots.save(seq[i]))
    print(summary("SlotStateStore.save", slot_times))

    with JsonStateStore.create(directory / "priv_validator_state.json", SignState.initial()) as js:
        json_times = measure(n, lambda i: js.save(seq[i]))
    print(summary("JsonStateStore.save", json_times))

    p50 = statistics.median(floor)
    print(
        f"ratio to floor (p50): slots {statistics.median(slot_times) / p50:.2f}x, "
        f"json {statistics.median(json_times) / p50:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dir", nargs="?", type=Path, help="directory to write in (default: a temp dir under .)")
    parser.add_argument("-n", type=int, default=1000, help="saves per store (default 1000)")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as tmp:
            print(f"directory: {args.dir.resolve()}")
            bench(Path(tmp), args.n)
    else:
        with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-store-") as tmp:
            print(f"directory: {Path.cwd()}")
            bench(Path(tmp), args.n)


if __name__ == "__main__":
    main()
