"""Canonical sign bytes: exactly the bytes CometBFT's FilePV signs for a vote, a proposal and a vote extension.

Sign bytes are ``uvarint(len(m)) || m`` where ``m`` is the CanonicalVote / CanonicalProposal /
CanonicalVoteExtension (cometbft ``types/{vote,proposal,canonical}.go``, docs/protocol.md §0 and §2.6). The canonical
messages are built with the generated protobuf classes; what gogoproto does differently from plain proto3 is done
here by hand:

* the timestamp is always emitted; a Vote/Proposal whose timestamp field was absent on the wire is Go's zero
  ``time.Time`` (0001-01-01T00:00:00Z, seconds -62135596800), not the Unix epoch;
* the CanonicalBlockID is emitted iff the BlockID is not zero, and then always carries its part-set header;
* a block hash or part-set hash of a length other than 0 or 32 is refused (Go's canonicalizer would panic).

The input messages are the generated ``tendermint.types`` Vote/Proposal (what the codec produces for every
dialect); the ``cometbft.types.v1`` classes have the same fields and work too.

Read the other way, :func:`decode_sign_bytes` is the one decoder of sign bytes: the key holder and the threshold
cosigner take height, round, step, block and chain id from it and trust nothing else a caller says. For the
double-sign guard, :func:`canonical_view` reads stored or fresh sign bytes back into the pieces FilePV's rules
compare: the block ID, the timestamp, and the message with its timestamp blanked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message

from pykms.errors import DecodeError, InvalidRequest
from pykms.guard.state import STEP_NAMES, STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL
from pykms.privval.varint import decode_uvarint, encode_uvarint
from pykms.proto.tendermint.types import canonical_pb2, types_pb2

if TYPE_CHECKING:
    from pykms.privval.codec import SignProposalRequest, SignVoteRequest

__all__ = [
    "GO_ZERO_TIME",
    "PRECOMMIT_TYPE",
    "PREVOTE_TYPE",
    "CanonicalView",
    "DecodedSignBytes",
    "canonical_view",
    "decode_sign_bytes",
    "proposal_sign_bytes",
    "step_of",
    "vote_extension_sign_bytes",
    "vote_sign_bytes",
    "with_timestamp_bytes",
]

#: Go's zero time.Time as (seconds, nanos): what an absent non-nullable timestamp becomes (docs/protocol.md §0 rule 5).
GO_ZERO_TIME = (-62135596800, 0)

# Range Go accepts when it turns a protobuf Timestamp into a time.Time (gogoproto types/timestamp.go
# validateTimestamp): 0001-01-01T00:00:00Z <= t < 10000-01-01T00:00:00Z, 0 <= nanos < 1e9. A node cannot
# send anything outside it, so such a request is not one to sign.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300800

#: SignedMsgType values (cometbft proto/tendermint/types/types.proto).
PREVOTE_TYPE = 1
PRECOMMIT_TYPE = 2
PROPOSAL_TYPE = 32

_HASH_SIZE = 32  # tmhash.Size: the only non-empty hash length ValidateBasic accepts


def _timestamp_of(msg: types_pb2.Vote | types_pb2.Proposal) -> tuple[int, int]:
    if not msg.HasField("timestamp"):
        return GO_ZERO_TIME
    seconds, nanos = msg.timestamp.seconds, msg.timestamp.nanos
    if not (_MIN_SECONDS <= seconds < _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        raise InvalidRequest(f"timestamp out of Go's range: seconds={seconds} nanos={nanos}")
    return seconds, nanos


def _fill_block_id(out: canonical_pb2.CanonicalBlockID, block_id: types_pb2.BlockID) -> bool:
    """CanonicalizeBlockID into ``out``; False for the zero BlockID (a nil vote), refusal for a malformed hash."""
    block_hash = block_id.hash
    psh = block_id.part_set_header
    if len(block_hash) not in (0, _HASH_SIZE):
        raise InvalidRequest(f"block hash of {len(block_hash)} bytes (must be 0 or {_HASH_SIZE})")
    if len(psh.hash) not in (0, _HASH_SIZE):
        raise InvalidRequest(f"part-set header hash of {len(psh.hash)} bytes (must be 0 or {_HASH_SIZE})")
    if not block_hash and not psh.total and not psh.hash:
        return False
    out.hash = block_hash
    out.part_set_header.total = psh.total
    out.part_set_header.hash = psh.hash
    out.part_set_header.SetInParent()  # non-nullable: `12 00` even when empty
    return True


def _delimited(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


def _unprefixed(sign_bytes: bytes, error: type[DecodeError | InvalidRequest]) -> bytes:
    """The message inside delimited sign bytes; ``error`` unless the prefix is exactly its length."""
    head = decode_uvarint(sign_bytes)
    if head is None or head[0] != len(sign_bytes) - head[1]:
        raise error("sign bytes: the length prefix does not match the message")
    return bytes(sign_bytes[head[1] :])


def _delimited_canonical(
    msg: canonical_pb2.CanonicalVote | canonical_pb2.CanonicalProposal, source: types_pb2.Vote | types_pb2.Proposal
) -> bytes:
    """Complete ``msg`` with the block ID and timestamp of ``source``, as gogoproto emits them; delimited."""
    if _fill_block_id(msg.block_id, source.block_id):
        msg.block_id.SetInParent()
    else:
        msg.ClearField("block_id")  # nullable: a nil vote has no block_id at all
    msg.timestamp.seconds, msg.timestamp.nanos = _timestamp_of(source)
    msg.timestamp.SetInParent()  # non-nullable: the Unix epoch is `2a 00`, never omitted
    return _delimited(msg.SerializeToString())


def vote_sign_bytes(chain_id: str, vote: types_pb2.Vote) -> bytes:
    """``types.VoteSignBytes``: delimited CanonicalVote. Extension fields are not part of it."""
    msg = canonical_pb2.CanonicalVote(type=vote.type, height=vote.height, round=vote.round, chain_id=chain_id)
    return _delimited_canonical(msg, vote)


def proposal_sign_bytes(chain_id: str, proposal: types_pb2.Proposal) -> bytes:
    """``types.ProposalSignBytes``: delimited CanonicalProposal."""
    # CanonicalizeProposal hard-codes the type to PROPOSAL whatever the request says (types/canonical.go).
    msg = canonical_pb2.CanonicalProposal(
        type=types_pb2.SIGNED_MSG_TYPE_PROPOSAL,
        height=proposal.height,
        round=proposal.round,
        pol_round=proposal.pol_round,
        chain_id=chain_id,
    )
    return _delimited_canonical(msg, proposal)


def vote_extension_sign_bytes(chain_id: str, vote: types_pb2.Vote) -> bytes:
    """``types.VoteExtensionSignBytes`` (v0.38+): delimited CanonicalVoteExtension, signed even when empty."""
    msg = canonical_pb2.CanonicalVoteExtension(
        extension=vote.extension, height=vote.height, round=vote.round, chain_id=chain_id
    )
    return _delimited(msg.SerializeToString())


def step_of(request: SignVoteRequest | SignProposalRequest) -> int:
    """FilePV's step for a request: 1 proposal, 2 prevote, 3 precommit; any other vote type is refused."""
    vote = getattr(request, "vote", None)
    if vote is None:
        return STEP_PROPOSAL
    step = _VOTE_STEPS.get(vote.type)
    if step is None:
        raise InvalidRequest(f"vote of type {int(vote.type)} is neither a prevote nor a precommit")
    return step


_VOTE_STEPS = {PREVOTE_TYPE: STEP_PREVOTE, PRECOMMIT_TYPE: STEP_PRECOMMIT}


@dataclass(frozen=True, slots=True)
class CanonicalView:
    """What the double-sign guard compares between two sign bytes of one height/round/step."""

    #: The serialized CanonicalBlockID, or None for a nil vote / proposal (no block_id field).
    block_id: bytes | None
    #: (seconds, nanos) as signed.
    timestamp: tuple[int, int]
    #: The canonical message (no length prefix) with its timestamp set to the Unix epoch: equal for two sign
    #: bytes that differ only in their timestamp (FilePV checkVotesOnlyDifferByTimestamp).
    without_timestamp: bytes


def canonical_view(sign_bytes: bytes, step: int) -> CanonicalView:
    """Parse sign bytes made by this module (or by CometBFT) for ``step``; DecodeError if they do not parse."""
    msg: canonical_pb2.CanonicalVote | canonical_pb2.CanonicalProposal
    if step == STEP_PROPOSAL:
        msg = canonical_pb2.CanonicalProposal()
    elif step in (STEP_PREVOTE, STEP_PRECOMMIT):
        msg = canonical_pb2.CanonicalVote()
    else:
        raise DecodeError(f"no canonical message for step {step}")
    try:
        msg.ParseFromString(_unprefixed(sign_bytes, DecodeError))
    except (_ProtobufDecodeError, ValueError, RuntimeError) as exc:
        raise DecodeError(f"sign bytes do not parse as a canonical message: {exc}") from None
    block_id = msg.block_id.SerializeToString() if msg.HasField("block_id") else None
    timestamp = (msg.timestamp.seconds, msg.timestamp.nanos) if msg.HasField("timestamp") else GO_ZERO_TIME
    msg.timestamp.Clear()
    msg.timestamp.SetInParent()
    return CanonicalView(block_id=block_id, timestamp=timestamp, without_timestamp=msg.SerializeToString())


@dataclass(frozen=True, slots=True)
class DecodedSignBytes:
    """What canonical sign bytes say, read by whoever must not trust the party that built them."""

    kind: Literal["proposal", "prevote", "precommit", "extension"]
    chain_id: str
    height: int
    round: int
    #: FilePV's step (1 proposal, 2 prevote, 3 precommit); 0 for a vote extension.
    step: int
    #: The block hash; b"" for a nil vote or proposal and for an extension.
    block_hash: bytes
    #: (seconds, nanos) as signed; None for an extension.
    timestamp: tuple[int, int] | None


def _parses_canonically(message: Message, body: bytes) -> bool:
    try:
        message.ParseFromString(body)
    except (_ProtobufDecodeError, ValueError, RuntimeError):
        return False
    message.DiscardUnknownFields()  # an unknown field then makes the re-encoding differ: refused
    return message.SerializeToString(deterministic=True) == body


def _read_canonical(
    sign_bytes: bytes,
) -> canonical_pb2.CanonicalVote | canonical_pb2.CanonicalProposal | canonical_pb2.CanonicalVoteExtension:
    """The canonical message in ``sign_bytes``, kept only when re-encoding it gives the same bytes, so no field is
    unknown, repeated or out of order and one byte string has exactly one meaning. InvalidRequest otherwise."""
    body = _unprefixed(sign_bytes, InvalidRequest)
    vote = canonical_pb2.CanonicalVote()
    if _parses_canonically(vote, body) and vote.type in _VOTE_STEPS:
        return vote
    proposal = canonical_pb2.CanonicalProposal()
    if _parses_canonically(proposal, body) and proposal.type == PROPOSAL_TYPE:
        return proposal
    extension = canonical_pb2.CanonicalVoteExtension()
    if _parses_canonically(extension, body) and extension.chain_id:
        return extension
    raise InvalidRequest("sign bytes are not a canonical vote, proposal or vote extension")


def decode_sign_bytes(sign_bytes: bytes) -> DecodedSignBytes:
    """Read CometBFT's canonical sign bytes: a CanonicalVote (prevote or precommit), a CanonicalProposal or a
    CanonicalVoteExtension; InvalidRequest for anything else."""
    msg = _read_canonical(sign_bytes)
    if isinstance(msg, canonical_pb2.CanonicalVoteExtension):
        return DecodedSignBytes("extension", msg.chain_id, msg.height, msg.round, 0, b"", None)
    step = STEP_PROPOSAL if isinstance(msg, canonical_pb2.CanonicalProposal) else _VOTE_STEPS[msg.type]
    timestamp = (msg.timestamp.seconds, msg.timestamp.nanos)
    kind = STEP_NAMES[step]
    return DecodedSignBytes(kind, msg.chain_id, msg.height, msg.round, step, msg.block_id.hash, timestamp)  # type: ignore[arg-type]


def with_timestamp_bytes(sign_bytes: bytes, timestamp: tuple[int, int]) -> bytes:
    """The vote or proposal sign bytes ``sign_bytes`` with ``timestamp`` instead of their own: what a reused
    signature (FilePV's "same but for the timestamp" rule) must verify over."""
    msg = _read_canonical(sign_bytes)
    if isinstance(msg, canonical_pb2.CanonicalVoteExtension):
        raise InvalidRequest("sign bytes are not a canonical vote or proposal")
    msg.timestamp.seconds, msg.timestamp.nanos = timestamp
    msg.timestamp.SetInParent()
    return _delimited(msg.SerializeToString())
