"""What one signing request costs in CPU in this CPython, in one process, with no waiting (prints figures; not a test).

    python tests/bench/bench_handler.py [-n 3000]

The concurrent benchmark's closed-loop target (20 chains x 2 sentries) is a CPU budget: on 2 cores shared with the
load generator, a rate of requests needs that many microseconds of CPU per request at most. This prints the parts
that every pykms request must pay — the Ed25519 signature and its verification (every signature is verified before
it leaves), and SecretConnection's sealing and opening of the request and the reply — beside the whole handler path
(open, decode, sign bytes, guard, sign, verify, state encode + pwrite, encode, seal) and its log line. The state's
flush is skipped (fdatasync is a no-op here): it costs wall time, waiting on the disk, and its kernel CPU is
measured by ``scripts/bench`` with the rest of the system calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey

from pykms.guard.backend import FileGuard
from pykms.guard.state import SignState
from pykms.guard.store import FileOps, SlotStateStore
from pykms.handler import LogObserver, Observer, RequestHandler
from pykms.harness.simulator import PREVOTE, make_vote
from pykms.keyholder.local import LocalKeyHolder
from pykms.logconfig import configure_logging, flush_logs, get_logger
from pykms.privval import codec
from pykms.privval.codec import Dialect, MessageReader, delimit
from pykms.providers.softsign import SoftsignSigner
from pykms.secretconn.core import FrameCodec

CHAIN = "bench-chain"


class _NoFlush(FileOps):
    """Real writes, no flush: the CPU of a request without its wait on the disk."""

    def fdatasync(self, fd: int) -> None:
        pass


def _cpu_us(n: int, fn: Callable[[int], object]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of fn(i), best of 3 runs of n calls."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        c1, w1 = time.process_time(), time.perf_counter()
        best = min(best, ((c1 - c0) / n * 1e6, (w1 - w0) / n * 1e6))
    return best


def _body(frame_data: bytes) -> bytes:
    bodies = MessageReader(codec.MAX_REQUEST_BYTES).feed(frame_data)
    assert len(bodies) == 1
    return bodies[0]


def _handler_path(path: Path, n: int, *, logged: bool) -> tuple[float, float]:
    """CPU and wall µs per request of sealed requests in, sealed replies out, through a real RequestHandler."""
    SlotStateStore.create(path, SignState.initial()).close()
    keyholder = LocalKeyHolder()
    keyholder.add(
        CHAIN, SoftsignSigner(SigningKey(os.urandom(32))), FileGuard(CHAIN, SlotStateStore(path, ops=_NoFlush()))
    )
    log = None
    observers: list[Observer] = []
    if logged:
        configure_logging("json", stream=open(os.devnull, "w"), background=True)  # open for the process
        log = get_logger("pykms.session", chain_id=CHAIN, validator="tcp://127.0.0.1:26659")
        observers.append(LogObserver(log))
    handler = RequestHandler(
        keyholder, keyholder.chains()[CHAIN], Dialect.V0_38, chain_id=CHAIN, observers=observers, log=log
    )
    k1, k2 = os.urandom(32), os.urandom(32)
    node, signer_side = FrameCodec(k1, k2), FrameCodec(k2, k1)
    reader = MessageReader(codec.MAX_REQUEST_BYTES)
    frames = iter(
        [
            node.seal(
                delimit(
                    codec.encode_request(
                        Dialect.V0_38,
                        codec.SignVoteRequest(
                            make_vote(10 + i, 0, PREVOTE, f"b{i}", timestamp=(1_700_000_000 + i, 0)), CHAIN
                        ),
                    )
                )
            )
            for i in range(3 * n)
        ]
    )
    sent: list[bytes] = []

    def reply(body: bytes) -> None:
        sent.append(signer_side.seal(delimit(body)))

    def request(_i: int) -> None:
        for body in reader.feed(signer_side.feed(next(frames))):
            handler.handle(body, reply)

    figures = _cpu_us(n, request)
    flush_logs()
    keyholder.close()
    # Every reply is a signed vote (nothing refused, nothing lost): the figures are of the real path.
    replies = [codec.decode_response(Dialect.V0_38, _body(node.open(f))) for f in sent]
    assert len(replies) == 3 * n and not any(r.error for r in replies)  # type: ignore[union-attr]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="requests per run")
    args = parser.parse_args()
    n = args.n
    rows: list[tuple[str, float, float]] = []

    key = SigningKey(os.urandom(32))
    message = os.urandom(120)  # a vote's sign bytes are ~120 bytes
    signed = key.sign(message)
    rows.append(("Ed25519 sign (PyNaCl)", *_cpu_us(n, lambda _i: key.sign(message))))
    rows.append(("Ed25519 verify (PyNaCl)", *_cpu_us(n, lambda _i: key.verify_key.verify(signed))))
    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = FrameCodec(k1, k2), FrameCodec(k2, k1)
    request_len, reply_len = 180, 260
    rows.append(
        (
            "seal + open a request and a reply frame",
            *_cpu_us(n, lambda _i: (b.open(a.seal(b"r" * request_len)), a.open(b.seal(b"s" * reply_len)))),
        )
    )

    with tempfile.TemporaryDirectory() as d:
        for label, logged in (("handler path (front + key holder)", False), ("  + its JSON log line", True)):
            rows.append((label, *_handler_path(Path(d) / f"{len(rows)}.slots", n, logged=logged)))

    width = max(len(name) for name, _, _ in rows)
    print(f"{'per request'.ljust(width)}  CPU µs   wall µs")
    for name, cpu, wall in rows:
        print(f"{name.ljust(width)}  {cpu:7.1f}  {wall:8.1f}")


if __name__ == "__main__":
    main()
