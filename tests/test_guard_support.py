"""Builders shared by the guard, state and store tests: real canonical sign bytes from real protobuf messages."""

from __future__ import annotations

from pykms.guard.state import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL
from pykms.privval.signbytes import (
    PRECOMMIT_TYPE,
    PREVOTE_TYPE,
    proposal_sign_bytes,
    vote_sign_bytes,
)
from pykms.proto.tendermint.types import types_pb2

CHAIN = "guard-test-chain"
TS = (1_700_000_000, 123_456_789)


def block_id(tag: int | None) -> types_pb2.BlockID:
    """A complete BlockID derived from ``tag`` (None: the zero BlockID of a nil vote)."""
    out = types_pb2.BlockID()
    if tag is not None:
        out.hash = bytes([tag % 256]) * 32
        out.part_set_header.total = 1 + tag % 7
        out.part_set_header.hash = bytes([(tag * 7 + 1) % 256]) * 32
    return out


def vote_bytes(height: int, round_: int, step: int, block: int | None, ts: tuple[int, int] = TS) -> bytes:
    vote = types_pb2.Vote(
        type=PREVOTE_TYPE if step == STEP_PREVOTE else PRECOMMIT_TYPE,
        height=height,
        round=round_,
        block_id=block_id(block),
        validator_address=b"\x11" * 20,
        validator_index=3,
    )
    vote.timestamp.seconds, vote.timestamp.nanos = ts
    return vote_sign_bytes(CHAIN, vote)


def proposal_bytes(height: int, round_: int, block: int | None, ts: tuple[int, int] = TS, pol_round: int = -1) -> bytes:
    proposal = types_pb2.Proposal(type=32, height=height, round=round_, pol_round=pol_round, block_id=block_id(block))
    proposal.timestamp.seconds, proposal.timestamp.nanos = ts
    return proposal_sign_bytes(CHAIN, proposal)


def sign_bytes(height: int, round_: int, step: int, block: int | None, ts: tuple[int, int] = TS) -> bytes:
    if step == STEP_PROPOSAL:
        return proposal_bytes(height, round_, block, ts)
    assert step in (STEP_PREVOTE, STEP_PRECOMMIT)
    return vote_bytes(height, round_, step, block, ts)


def fake_signature(data: bytes) -> bytes:
    """A deterministic 64-byte stand-in for a signature over ``data`` (the guard never verifies signatures)."""
    import hashlib

    return hashlib.sha512(data).digest()
