"""privval codec: protobuf ``Message`` bodies <-> typed requests and responses, per protocol dialect.

Theory of operation
-------------------
A node and its signer exchange ``uvarint(len(body)) || body`` on the stream, where ``body`` is a privval
``Message`` (a protobuf oneof, docs/protocol.md §2.2-§2.4). This module is sans-IO: :class:`MessageReader` turns
stream bytes into bodies, :func:`delimit` does the reverse, and the ``decode_*`` / ``encode_*`` functions turn
bodies into frozen dataclasses and back. Nothing here reads a socket, a clock or a key.

Dialects (``protocol_version``): v0.34 and v0.37 are wire-identical; v0.38 adds Vote fields 9/10 (extension,
extension_signature) inside the same ``tendermint.privval`` messages; v1.0 (``cometbft.privval.v1``) moves the
public key of PubKeyResponse to fields 3/4, adds ``skip_extension_signing`` to SignVoteRequest and adds
SignBytesRequest/Response as Message cases 9/10.

Votes and proposals are always the generated ``pykms.proto.tendermint.types.types_pb2`` Vote / Proposal, in every
dialect: ``cometbft.types.v1`` is wire-identical, and one class lets the sign-bytes code, the handler and the
guard ignore dialects. They are kept as protobuf messages (not copied into dataclasses) so every field, the
extension fields and fields unknown to us included (cometbft main adds non_rp_extension 11/12), goes back out
byte for byte: tmkms#1174 dropped fields 9/10 in its re-encoding and broke a chain.

Every decoding failure raises :class:`pykms.errors.DecodeError`, and nothing else, so the connection layer has
one thing to catch: it drops that connection.

Byte-exactness against Go: proto3 zero scalars are omitted by both encoders; non-nullable (gogoproto) message
fields Go always emits are set explicitly here where a response is built from nothing (error responses:
``0a 00`` public key, an empty Vote with ``22 02 12 00`` block id and Go's zero-time timestamp).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeVar

from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message as _PbMessage

from pykms.errors import ConfigError, DecodeError, InvalidRequest
from pykms.privval.signbytes import GO_ZERO_TIME
from pykms.privval.varint import decode_uvarint, encode_uvarint
from pykms.proto.cometbft.privval.v1 import types_pb2 as v1_privval
from pykms.proto.cometbft.types.v1 import types_pb2 as v1_types
from pykms.proto.tendermint.privval import celestia_pb2
from pykms.proto.tendermint.privval import types_pb2 as tm_privval
from pykms.proto.tendermint.types import types_pb2

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "PING_RESPONSE",
    "Dialect",
    "MessageReader",
    "PingRequest",
    "PingResponse",
    "PubKeyRequest",
    "PubKeyResponse",
    "RemoteSignerError",
    "Request",
    "Response",
    "SignBytesRequest",
    "SignBytesResponse",
    "SignProposalRequest",
    "SignRawBytesRequest",
    "SignVoteRequest",
    "SignedProposalResponse",
    "SignedVoteResponse",
    "decode_request",
    "decode_response",
    "delimit",
    "encode_error",
    "encode_pubkey_response",
    "encode_request",
    "encode_signed_proposal",
    "encode_signed_vote",
]

#: Cap on a request body the signer reads. CometBFT v0.38+ lets a precommit carry a vote extension of up to
#: 1 MiB (docs/protocol.md §2.2; types.MaxVoteExtensionSize = 1024 * 1024 in cometbft types/vote.go); the rest of a
#: SignVoteRequest (vote fields, chain id, tags) is a few hundred bytes, so 64 KiB of margin is ample while still
#: bounding what a hostile peer can make us buffer.
MAX_REQUEST_BYTES: Final = 1024 * 1024 + 64 * 1024

#: Cap on a response body the node reads: maxRemoteSignerMsgSize = 1024 * 10 in cometbft
#: privval/signer_endpoint.go (v0.34.35 .. v1.0.1). A validator simulator reading our responses uses it to see
#: what a real node would refuse.
MAX_RESPONSE_BYTES: Final = 1024 * 10


class Dialect(enum.Enum):
    """The privval wire dialect a ``[[validator]]`` speaks (its ``protocol_version``)."""

    V0_34 = "v0.34"
    V0_37 = "v0.37"
    V0_38 = "v0.38"
    V1_0 = "v1.0"

    @classmethod
    def parse(cls, text: str) -> Dialect:
        """``"v0.38"`` -> ``Dialect.V0_38``; ConfigError naming the accepted values otherwise."""
        for member in cls:
            if member.value == text.strip().lower():
                return member
        accepted = ", ".join(f'"{m.value}"' for m in cls)
        raise ConfigError(f"unknown protocol_version {text!r}", key="protocol_version", fix=f"use one of {accepted}")

    @property
    def has_extensions(self) -> bool:
        """v0.38 and later carry vote extensions (Vote fields 9/10)."""
        return self in (Dialect.V0_38, Dialect.V1_0)

    @property
    def is_v1(self) -> bool:
        return self is Dialect.V1_0


# Typed messages ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteSignerError:
    """The error a response carries instead of a result; the node treats its mere presence as failure."""

    code: int
    description: str


@dataclass(frozen=True, slots=True)
class PubKeyRequest:
    chain_id: str


@dataclass(frozen=True, slots=True)
class SignVoteRequest:
    vote: types_pb2.Vote
    chain_id: str
    #: v1.0 only (false on older dialects, and not sent in them): the node asks not to sign the extension.
    skip_extension_signing: bool = False


@dataclass(frozen=True, slots=True)
class SignProposalRequest:
    proposal: types_pb2.Proposal
    chain_id: str


@dataclass(frozen=True, slots=True)
class PingRequest:
    pass


@dataclass(frozen=True, slots=True)
class SignBytesRequest:
    """v1.0 only: arbitrary bytes to sign verbatim. Carries no chain id and no height."""

    value: bytes


@dataclass(frozen=True, slots=True)
class SignRawBytesRequest:
    """Celestia's extension (celestia-core; tmkms v0.15 src/proto/privval/celestia.rs), v0.34-v0.38 wire only:
    bytes to sign after a domain-separation prefix, bound to a chain id and a caller-chosen unique id."""

    chain_id: str
    raw_bytes: bytes
    unique_id: str


@dataclass(frozen=True, slots=True)
class PubKeyResponse:
    #: Raw key bytes (32 for ed25519); empty in an error response.
    pub_key: bytes
    #: "ed25519", "secp256k1", "bls12_381" (v1.0 names; v0.34-v0.38 map the PublicKey oneof case onto them).
    key_type: str
    error: RemoteSignerError | None = None


@dataclass(frozen=True, slots=True)
class SignedVoteResponse:
    vote: types_pb2.Vote
    error: RemoteSignerError | None = None


@dataclass(frozen=True, slots=True)
class SignedProposalResponse:
    proposal: types_pb2.Proposal
    error: RemoteSignerError | None = None


@dataclass(frozen=True, slots=True)
class PingResponse:
    pass


@dataclass(frozen=True, slots=True)
class SignBytesResponse:
    signature: bytes
    error: RemoteSignerError | None = None


Request = PubKeyRequest | SignVoteRequest | SignProposalRequest | PingRequest | SignBytesRequest | SignRawBytesRequest
Response = PubKeyResponse | SignedVoteResponse | SignedProposalResponse | PingResponse | SignBytesResponse

_AnyMessage = tm_privval.Message | v1_privval.Message
_TmMessage = TypeVar("_TmMessage", types_pb2.Vote, types_pb2.Proposal)

# The v0.34-v0.38 PublicKey oneof cases, named as v1.0 names the key types (cometbft crypto/encoding/codec.go).
_PUBLIC_KEY_CASES: Final = ("ed25519", "secp256k1")

# The Message oneof cases only v1.0 has (docs/protocol.md §2.3), named in the error an older dialect gives.
_V1_ONLY_CASES: Final = {9: "SignBytesRequest", 10: "SignBytesResponse"}


# Helpers ---------------------------------------------------------------------------------------------------


def _new_message(dialect: Dialect) -> _AnyMessage:
    return v1_privval.Message() if dialect is Dialect.V1_0 else tm_privval.Message()


def _parse(msg: _PbMessage, body: bytes) -> None:
    try:
        msg.ParseFromString(body)
    except (_ProtobufDecodeError, ValueError, TypeError, RuntimeError, RecursionError) as exc:
        raise DecodeError(f"not a privval Message: {exc}") from None


def _first_field_number(body: bytes) -> int | None:
    """Field number of the first tag of a ``body`` protobuf has parsed; None if it is empty."""
    head = decode_uvarint(body)
    return None if head is None else head[0] >> 3


def _empty_case_error(dialect: Dialect, body: bytes) -> DecodeError:
    if not body:
        return DecodeError("empty privval Message (no case set)")
    number = _first_field_number(body)
    if number in _V1_ONLY_CASES and dialect is not Dialect.V1_0:
        name = _V1_ONLY_CASES[number]
        return DecodeError(f"{name} (Message field {number}) exists only in protocol_version v1.0, not {dialect.value}")
    return DecodeError(f"unknown privval Message case (field {number}) for protocol_version {dialect.value}")


def _copy_into(target: _PbMessage, source: _PbMessage) -> None:
    """Copy a Vote/Proposal into a message field of either proto package (wire-identical), marking it present."""
    if type(target) is type(source):
        target.CopyFrom(source)
    else:
        target.Clear()
        target.MergeFromString(source.SerializeToString())
    target.SetInParent()


def _as_tm(msg: _PbMessage, cls: type[_TmMessage]) -> _TmMessage:
    """A ``cometbft.types.v1`` Vote/Proposal as its wire-identical ``tendermint.types`` class."""
    if isinstance(msg, cls):
        return msg
    out = cls()
    out.MergeFromString(msg.SerializeToString())
    return out


_WithError = (
    tm_privval.PubKeyResponse
    | v1_privval.PubKeyResponse
    | tm_privval.SignedVoteResponse
    | v1_privval.SignedVoteResponse
    | tm_privval.SignedProposalResponse
    | v1_privval.SignedProposalResponse
    | v1_privval.SignBytesResponse
    | celestia_pb2.SignedRawBytesResponse
)


def _error_of(msg: _WithError) -> RemoteSignerError | None:
    if not msg.HasField("error"):
        return None
    err = msg.error
    return RemoteSignerError(code=int(err.code), description=str(err.description))


def _set_error(target: tm_privval.RemoteSignerError | v1_privval.RemoteSignerError, code: int, text: str) -> None:
    target.code = code
    target.description = text
    target.SetInParent()  # present even when code is 0 and the text empty: presence is what the node checks


def _fill_empty_go_consensus_msg(msg: types_pb2.Vote | v1_types.Vote | types_pb2.Proposal | v1_types.Proposal) -> None:
    """What Go's zero Vote{} / Proposal{} marshal to: non-nullable block id, part-set header and timestamp."""
    msg.block_id.part_set_header.SetInParent()
    msg.block_id.SetInParent()
    msg.timestamp.seconds, msg.timestamp.nanos = GO_ZERO_TIME
    msg.timestamp.SetInParent()


# Framing ---------------------------------------------------------------------------------------------------


def delimit(body: bytes) -> bytes:
    """``uvarint(len(body)) || body``: one message as it goes on the stream."""
    return encode_uvarint(len(body)) + body


class MessageReader:
    """Sans-IO reader of uvarint-delimited bodies: ``feed`` stream bytes, get complete bodies back.

    ``max_size`` caps a body's length (the prefix excluded, as libs/protoio's reader does): use
    :data:`MAX_REQUEST_BYTES` on the signer side, :data:`MAX_RESPONSE_BYTES` to read like a node. A bad prefix
    (a varint over 10 bytes, a length above the cap) raises DecodeError and poisons the reader: the stream has
    lost its framing, every later ``feed`` raises too.
    """

    __slots__ = ("_buf", "_error", "_max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self._max_size = max_size
        self._buf = bytearray()
        self._error: DecodeError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add stream bytes; return the bodies they complete, in order (possibly none)."""
        if self._error is not None:
            raise DecodeError(f"reader poisoned by an earlier error: {self._error}")
        buf = self._buf
        buf += data
        bodies: list[bytes] = []
        pos = 0
        try:
            while (head := decode_uvarint(buf, pos)) is not None:
                length, start = head
                if length > self._max_size:
                    raise DecodeError(f"message of {length} bytes exceeds the cap of {self._max_size} bytes")
                if start + length > len(buf):
                    break
                pos = start + length
                bodies.append(bytes(buf[start:pos]))
        except DecodeError as exc:
            self._error = exc
            buf.clear()
            raise
        del buf[:pos]
        return bodies

    def eof(self) -> None:
        """The stream ended: DecodeError if it ended inside a message (a truncated prefix or body)."""
        if self._error is not None:
            raise DecodeError(f"reader poisoned by an earlier error: {self._error}")
        if self._buf:
            raise DecodeError("stream ended inside a message (truncated length prefix or body)")


# Requests --------------------------------------------------------------------------------------------------


def decode_request(dialect: Dialect, body: bytes | bytearray | memoryview) -> Request:
    """A request body (no length prefix) -> typed request; DecodeError for anything else."""
    data = bytes(body)
    msg = _new_message(dialect)
    _parse(msg, data)
    case = msg.WhichOneof("sum")
    if case == "sign_vote_request":
        svr = msg.sign_vote_request
        if not svr.HasField("vote"):
            raise DecodeError("SignVoteRequest without a vote")
        skip = bool(svr.skip_extension_signing) if isinstance(svr, v1_privval.SignVoteRequest) else False
        return SignVoteRequest(
            vote=_as_tm(svr.vote, types_pb2.Vote), chain_id=svr.chain_id, skip_extension_signing=skip
        )
    if case == "sign_proposal_request":
        spr = msg.sign_proposal_request
        if not spr.HasField("proposal"):
            raise DecodeError("SignProposalRequest without a proposal")
        return SignProposalRequest(proposal=_as_tm(spr.proposal, types_pb2.Proposal), chain_id=spr.chain_id)
    if case == "ping_request":
        return PingRequest()
    if case == "pub_key_request":
        return PubKeyRequest(chain_id=msg.pub_key_request.chain_id)
    if case == "sign_bytes_request" and isinstance(msg, v1_privval.Message):
        return SignBytesRequest(value=bytes(msg.sign_bytes_request.value))
    if case is None:
        if dialect is not Dialect.V1_0 and _first_field_number(data) == 9:
            celestia = celestia_pb2.CelestiaMessage()
            _parse(celestia, data)
            if celestia.WhichOneof("sum") == "sign_raw_bytes_request":
                raw = celestia.sign_raw_bytes_request
                return SignRawBytesRequest(
                    chain_id=raw.chain_id, raw_bytes=bytes(raw.raw_bytes), unique_id=raw.unique_id
                )
        raise _empty_case_error(dialect, data)
    raise DecodeError(f"privval Message case {case} is a response, not a request")


def encode_request(dialect: Dialect, req: Request) -> bytes:
    """Typed request -> body (the node's side; the validator simulator uses it)."""
    msg = _new_message(dialect)
    if isinstance(req, SignVoteRequest):
        svr = msg.sign_vote_request
        _copy_into(svr.vote, req.vote)
        svr.chain_id = req.chain_id
        if isinstance(svr, v1_privval.SignVoteRequest):
            svr.skip_extension_signing = req.skip_extension_signing
    elif isinstance(req, SignProposalRequest):
        spr = msg.sign_proposal_request
        _copy_into(spr.proposal, req.proposal)
        spr.chain_id = req.chain_id
    elif isinstance(req, PingRequest):
        msg.ping_request.SetInParent()
    elif isinstance(req, PubKeyRequest):
        msg.pub_key_request.chain_id = req.chain_id
        msg.pub_key_request.SetInParent()
    elif isinstance(req, SignBytesRequest):
        if not isinstance(msg, v1_privval.Message):
            raise InvalidRequest(f"SignBytesRequest exists only in protocol_version v1.0, not {dialect.value}")
        msg.sign_bytes_request.value = req.value
        msg.sign_bytes_request.SetInParent()
    else:  # SignRawBytesRequest
        if dialect is Dialect.V1_0:
            raise InvalidRequest("SignRawBytesRequest (Celestia) exists only in protocol_versions v0.34-v0.38")
        celestia = celestia_pb2.CelestiaMessage()
        raw = celestia.sign_raw_bytes_request
        raw.chain_id, raw.raw_bytes, raw.unique_id = req.chain_id, req.raw_bytes, req.unique_id
        raw.SetInParent()
        return celestia.SerializeToString()
    return msg.SerializeToString()


# Responses -------------------------------------------------------------------------------------------------


def encode_pubkey_response(dialect: Dialect, pub: bytes, key_type: str = "ed25519") -> bytes:
    """PubKeyResponse: ``pub_key`` PublicKey (v0.34-v0.38) or ``pub_key_bytes``/``pub_key_type`` (v1.0)."""
    msg = _new_message(dialect)
    if isinstance(msg, v1_privval.Message):
        msg.pub_key_response.pub_key_bytes = pub
        msg.pub_key_response.pub_key_type = key_type
        msg.pub_key_response.SetInParent()
    else:
        if key_type not in _PUBLIC_KEY_CASES:
            raise InvalidRequest(f"key type {key_type!r} cannot be sent in protocol_version {dialect.value}")
        setattr(msg.pub_key_response.pub_key, key_type, pub)
        msg.pub_key_response.pub_key.SetInParent()
    return msg.SerializeToString()


def encode_signed_vote(dialect: Dialect, vote: types_pb2.Vote, *, echo_extension: bool = True) -> bytes:
    """SignedVoteResponse echoing ``vote`` (with its signature and extension signature set), no error.

    ``echo_extension=False`` leaves the extension bytes (field 9) out of the echo. The node copies only the
    signature, timestamp and extension signature from the returned vote (docs/protocol.md §2.8) but reads responses
    capped at MAX_RESPONSE_BYTES, so echoing an extension of more than ~10 KB makes the node drop the response.
    """
    msg = _new_message(dialect)
    target = msg.signed_vote_response.vote
    _copy_into(target, vote)
    if not echo_extension:
        target.ClearField("extension")
    return msg.SerializeToString()


def encode_signed_proposal(dialect: Dialect, proposal: types_pb2.Proposal) -> bytes:
    """SignedProposalResponse echoing ``proposal`` (with its signature set), no error."""
    msg = _new_message(dialect)
    _copy_into(msg.signed_proposal_response.proposal, proposal)
    return msg.SerializeToString()


#: The PingResponse body, Message{ping_response (8): {}}: the same in every dialect (V5).
PING_RESPONSE: Final = b"\x42\x00"


def encode_error(dialect: Dialect, request: Request, code: int, description: str) -> bytes:
    """The response type matching ``request``, carrying RemoteSignerError{code, description}, as CometBFT's
    handler (privval/signer_requestHandler.go) emits it: with the empty non-nullable result Go cannot omit."""
    msg = _new_message(dialect)
    if isinstance(request, SignVoteRequest):
        _fill_empty_go_consensus_msg(msg.signed_vote_response.vote)
        _set_error(msg.signed_vote_response.error, code, description)
    elif isinstance(request, SignProposalRequest):
        _fill_empty_go_consensus_msg(msg.signed_proposal_response.proposal)
        _set_error(msg.signed_proposal_response.error, code, description)
    elif isinstance(request, PubKeyRequest):
        if isinstance(msg, tm_privval.Message):
            msg.pub_key_response.pub_key.SetInParent()  # non-nullable PublicKey: `0a 00`
        _set_error(msg.pub_key_response.error, code, description)
    elif isinstance(request, SignBytesRequest):
        if not isinstance(msg, v1_privval.Message):
            raise InvalidRequest(f"SignBytesResponse exists only in protocol_version v1.0, not {dialect.value}")
        _set_error(msg.sign_bytes_response.error, code, description)
    elif isinstance(request, SignRawBytesRequest):
        celestia = celestia_pb2.CelestiaMessage()
        celestia.signed_raw_bytes_response.SetInParent()
        _set_error(celestia.signed_raw_bytes_response.error, code, description)
        return celestia.SerializeToString()
    else:
        raise InvalidRequest("a PingRequest has no error response")
    return msg.SerializeToString()


def decode_response(dialect: Dialect, body: bytes | bytearray | memoryview) -> Response:
    """A response body (no length prefix) -> typed response; DecodeError for a request or anything else."""
    data = bytes(body)
    msg = _new_message(dialect)
    _parse(msg, data)
    case = msg.WhichOneof("sum")
    if case == "signed_vote_response":
        svr = msg.signed_vote_response
        return SignedVoteResponse(vote=_as_tm(svr.vote, types_pb2.Vote), error=_error_of(svr))
    if case == "signed_proposal_response":
        spr = msg.signed_proposal_response
        return SignedProposalResponse(proposal=_as_tm(spr.proposal, types_pb2.Proposal), error=_error_of(spr))
    if case == "ping_response":
        return PingResponse()
    if case == "pub_key_response":
        pkr = msg.pub_key_response
        if isinstance(pkr, v1_privval.PubKeyResponse):
            return PubKeyResponse(pub_key=bytes(pkr.pub_key_bytes), key_type=pkr.pub_key_type, error=_error_of(pkr))
        key_case = pkr.pub_key.WhichOneof("sum")
        if key_case is None:
            return PubKeyResponse(pub_key=b"", key_type="", error=_error_of(pkr))
        return PubKeyResponse(pub_key=bytes(getattr(pkr.pub_key, key_case)), key_type=key_case, error=_error_of(pkr))
    if case == "sign_bytes_response" and isinstance(msg, v1_privval.Message):
        sbr = msg.sign_bytes_response
        return SignBytesResponse(signature=bytes(sbr.signature), error=_error_of(sbr))
    if case is None:
        if dialect is not Dialect.V1_0 and _first_field_number(data) == 10:
            celestia = celestia_pb2.CelestiaMessage()
            _parse(celestia, data)
            if celestia.WhichOneof("sum") == "signed_raw_bytes_response":
                srr = celestia.signed_raw_bytes_response
                return SignBytesResponse(signature=bytes(srr.signature), error=_error_of(srr))
        raise _empty_case_error(dialect, data)
    raise DecodeError(f"privval Message case {case} is a request, not a response")
