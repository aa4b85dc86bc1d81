"""Micro-benchmark of SecretConnection (prints figures; not a test).

    python tests/bench/bench_secretconn.py [--seconds 1.0]

Handshake time with both sides in one process (sans-IO in memory, blocking sockets over a socketpair);
seal+open per KiB and per small message (a ~100-byte privval request), in microseconds, best of 5 runs; and a
blocking request/reply round trip over loopback TCP (both ends in this process).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable

from nacl.signing import SigningKey

from pykms.secretconn.core import FrameCodec, Handshake
from pykms.secretconn.sync import secret_connection_sync

KEY_A, KEY_B = SigningKey.generate(), SigningKey.generate()


def _best_us(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-5 mean microseconds per call, each run lasting about seconds/5."""
    best = float("inf")
    for _ in range(5):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while True:
            fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / n * 1e6)
    return best


def _sans_io_handshake() -> None:
    a, b = Handshake(KEY_A), Handshake(KEY_B)
    wa, wb = a.data_to_send(), b.data_to_send()
    while not (a.done and b.done):
        if wb:
            a.receive_data(wb)
        if wa:
            b.receive_data(wa)
        wa, wb = a.data_to_send(), b.data_to_send()


def _sync_handshakes(count: int) -> list[float]:
    times: list[float] = []
    for _ in range(count):
        a, b = socket.socketpair()
        t = threading.Thread(target=secret_connection_sync, args=(b, KEY_B))
        start = time.perf_counter()
        t.start()
        secret_connection_sync(a, KEY_A)
        times.append((time.perf_counter() - start) * 1e3)
        t.join()
        a.close()
        b.close()
    return times


def _sync_round_trips(count: int, size: int) -> list[float]:
    """Request/reply of ``size`` bytes each way over loopback TCP, blocking streams, an echo thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = secret_connection_sync(conn, KEY_B)
        while data := stream.recv():
            stream.send(data)
        stream.close()

    t = threading.Thread(target=echo)
    t.start()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = secret_connection_sync(sock, KEY_A)
    payload = os.urandom(size)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        stream.send(payload)
        got = b""
        while len(got) < size:
            got += stream.recv()
        times.append((time.perf_counter() - start) * 1e6)
    stream.close()
    t.join()
    listener.close()
    return times


def _pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure (default 1.0)")
    args = parser.parse_args()

    print("SecretConnection benchmark (both sides in this process)")
    hs_us = _best_us(_sans_io_handshake, args.seconds)
    print(f"  handshake, sans-IO in memory (both sides):     {hs_us / 1e3:8.2f} ms")
    sync = _sync_handshakes(30)
    print(f"  handshake, blocking sockets (socketpair):      {statistics.median(sync):8.2f} ms median, "
          f"{max(sync):.2f} ms max (30 runs)")  # fmt: skip

    k1, k2 = os.urandom(32), os.urandom(32)
    tx, rx = FrameCodec(k1, k2), FrameCodec(k2, k1)  # tx seals what rx opens
    kib = os.urandom(1024)
    small = os.urandom(110)  # about a delimited SignVoteRequest with a vote extension
    big = os.urandom(64 * 1024)

    def seal_open(data: bytes) -> Callable[[], object]:
        def run() -> object:
            return rx.feed(tx.seal(data))

        return run

    seal_only = _best_us(lambda: tx.seal(kib), args.seconds)
    rx.recv_nonce = tx.send_nonce
    print(f"  seal one 1 KiB frame:                          {seal_only:8.2f} us")
    print(f"  seal+open per KiB (1 KiB message):             {_best_us(seal_open(kib), args.seconds):8.2f} us")
    per_kib_big = _best_us(seal_open(big), args.seconds) / 64
    print(f"  seal+open per KiB (64 KiB message):            {per_kib_big:8.2f} us")
    print(f"  seal+open per small message (110 bytes):       {_best_us(seal_open(small), args.seconds):8.2f} us")

    rtt = _sync_round_trips(2000, 110)
    print(f"  request/reply 110 B, blocking, loopback TCP:   p50 {_pctl(rtt, 0.5):6.1f} us, "
          f"p99 {_pctl(rtt, 0.99):6.1f} us, max {max(rtt):6.1f} us (2000 round trips)")  # fmt: skip


if __name__ == "__main__":
    main()
