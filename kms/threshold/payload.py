"""What a cosigner is asked to sign: it decodes the sign bytes itself and trusts nothing else the coordinator says.

Accepted are exactly CometBFT's canonical sign bytes (length-delimited protobuf): a CanonicalVote (prevote or
precommit), a CanonicalProposal, or a CanonicalVoteExtension. Each candidate type is tried and kept only when its
re-encoding equals the bytes, so no field is unknown, repeated or out of canonical order, and one byte string has
exactly one reading. Anything else is refused: a cosigner never signs bytes it cannot put through its guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message

from pykms.errors import InvalidRequest
from pykms.guard.state import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL
from pykms.privval.varint import decode_uvarint
from pykms.proto.tendermint.types import canonical_pb2

__all__ = ["Payload", "classify"]

#: SignedMsgType values (tendermint/types/types.proto).
_PREVOTE, _PRECOMMIT, _PROPOSAL = 1, 2, 32


@dataclass(frozen=True, slots=True)
class Payload:
    kind: Literal["consensus", "extension"]
    chain_id: str
    height: int
    round: int
    #: CometBFT step (1 proposal, 2 prevote, 3 precommit); 0 for an extension.
    step: int


def _parse(message: Message, body: bytes) -> bool:
    try:
        message.ParseFromString(body)
    except (_ProtobufDecodeError, ValueError, RuntimeError):
        return False
    message.DiscardUnknownFields()  # an unknown field then makes the re-encoding differ: refused
    return message.SerializeToString(deterministic=True) == body


def classify(sign_bytes: bytes) -> Payload:
    head = decode_uvarint(sign_bytes)
    if head is None or head[0] != len(sign_bytes) - head[1]:
        raise InvalidRequest("sign bytes: the length prefix does not match the message")
    body = bytes(sign_bytes[head[1] :])
    vote = canonical_pb2.CanonicalVote()
    if _parse(vote, body) and vote.type in (_PREVOTE, _PRECOMMIT):
        step = STEP_PREVOTE if vote.type == _PREVOTE else STEP_PRECOMMIT
        return Payload("consensus", vote.chain_id, vote.height, vote.round, step)
    proposal = canonical_pb2.CanonicalProposal()
    if _parse(proposal, body) and proposal.type == _PROPOSAL:
        return Payload("consensus", proposal.chain_id, proposal.height, proposal.round, STEP_PROPOSAL)
    extension = canonical_pb2.CanonicalVoteExtension()
    if _parse(extension, body) and extension.chain_id:
        return Payload("extension", extension.chain_id, extension.height, extension.round, 0)
    raise InvalidRequest("sign bytes are not a canonical vote, proposal or vote extension")
