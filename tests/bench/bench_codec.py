"""Micro-benchmark of the privval codec and sign bytes (prints figures; not a test).

    python tests/bench/bench_codec.py [--seconds 1.0]

Per dialect: decode + re-encode of a SignVoteRequest (the V5 precommit with an extension), encode of the signed
response, vote / proposal / extension sign bytes, canonical_view; microseconds per operation, best of 5 runs.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

from pykms.privval import codec
from pykms.privval.codec import Dialect, MessageReader, delimit
from pykms.privval.signbytes import (
    canonical_view,
    proposal_sign_bytes,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from pykms.proto.tendermint.types import types_pb2


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _vote(extension: bytes) -> types_pb2.Vote:
    v = types_pb2.Vote(type=2, height=3, round=2, validator_address=_h(b"a")[:20], validator_index=7)  # type: ignore[arg-type]
    v.block_id.hash = _h(b"block")
    v.block_id.part_set_header.total = 1
    v.block_id.part_set_header.hash = _h(b"parts")
    v.timestamp.seconds, v.timestamp.nanos = 1700000000, 123456789
    v.extension = extension
    return v


def _proposal() -> types_pb2.Proposal:
    p = types_pb2.Proposal(type=32, height=3, round=2, pol_round=-1)  # type: ignore[arg-type]
    p.block_id.CopyFrom(_vote(b"").block_id)
    p.timestamp.seconds = 1700000000
    return p


def _per_op_us(fn: Callable[[], object], seconds: float) -> float:
    n = 1
    while True:  # calibrate a batch that takes ~1/10 of the budget
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took > seconds / 10:
            break
        n *= 2
    best = took / n
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="rough time budget per figure")
    args = parser.parse_args()
    chain = "cosmoshub-4"
    rows: list[tuple[str, float]] = []
    for dialect in Dialect:
        vote = _vote(b"extension" if dialect.has_extensions else b"")
        body = codec.encode_request(dialect, codec.SignVoteRequest(vote, chain))

        def round_trip(d: Dialect = dialect, b: bytes = body) -> bytes:
            return codec.encode_request(d, codec.decode_request(d, b))

        def respond(d: Dialect = dialect, v: types_pb2.Vote = vote) -> bytes:
            return codec.encode_signed_vote(d, v)

        rows.append(
            (f"{dialect.value} SignVoteRequest decode+encode ({len(body)} B)", _per_op_us(round_trip, args.seconds))
        )
        rows.append((f"{dialect.value} SignedVoteResponse encode", _per_op_us(respond, args.seconds)))

    big = codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(_vote(b"\x01" * 1024 * 1024), chain))

    def big_round_trip() -> bytes:
        return codec.encode_request(Dialect.V0_38, codec.decode_request(Dialect.V0_38, big))

    rows.append(("v0.38 decode+encode with a 1 MiB extension", _per_op_us(big_round_trip, args.seconds)))
    stream = delimit(big)

    def read_big() -> list[bytes]:
        reader = MessageReader(codec.MAX_REQUEST_BYTES)
        out: list[bytes] = []
        for i in range(0, len(stream), 65536):  # as 64 KiB socket reads would deliver it
            out += reader.feed(stream[i : i + 65536])
        return out

    rows.append(("MessageReader, 1 MiB message in 64 KiB reads", _per_op_us(read_big, args.seconds)))
    small = delimit(codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(_vote(b"x"), chain)))
    rows.append(
        ("MessageReader, one ~170 B message", _per_op_us(lambda: MessageReader(1 << 20).feed(small), args.seconds))
    )

    vote, proposal = _vote(b"extension"), _proposal()
    sb = vote_sign_bytes(chain, vote)
    rows.append(("vote_sign_bytes", _per_op_us(lambda: vote_sign_bytes(chain, vote), args.seconds)))
    rows.append(("proposal_sign_bytes", _per_op_us(lambda: proposal_sign_bytes(chain, proposal), args.seconds)))
    rows.append(("vote_extension_sign_bytes", _per_op_us(lambda: vote_extension_sign_bytes(chain, vote), args.seconds)))
    rows.append(("canonical_view (precommit)", _per_op_us(lambda: canonical_view(sb, 3), args.seconds)))

    width = max(len(name) for name, _ in rows)
    print(f"{'operation'.ljust(width)}  µs/op")
    for name, us in rows:
        print(f"{name.ljust(width)}  {us:10.2f}")


if __name__ == "__main__":
    main()
