"""Properties of the privval codec: round trips in every dialect, chunking invariance, hostile input."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from broken_signers import sign_bytes_response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykms.errors import DecodeError, InvalidRequest
from pykms.privval import codec
from pykms.privval.codec import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Dialect, MessageReader, delimit
from pykms.privval.varint import decode_uvarint, encode_uvarint
from pykms.proto.tendermint.types import types_pb2

ALL = list(Dialect)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
HASH = st.one_of(st.just(b""), st.binary(min_size=32, max_size=32), st.binary(max_size=40))
# Open proto3 enum: known values and unknown ones survive alike.
MSG_TYPE = st.one_of(st.sampled_from([0, 1, 2, 32]), INT32)


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields numbered above every known one (as a newer CometBFT would add them), varint or bytes."""
    out = b""
    numbers = draw(st.lists(st.integers(11, 2000), max_size=3).map(sorted))
    for number in numbers:
        if draw(st.booleans()):
            out += encode_uvarint(number << 3) + encode_uvarint(draw(st.integers(0, 2**64 - 1)))
        else:
            value = draw(st.binary(max_size=20))
            out += encode_uvarint(number << 3 | 2) + encode_uvarint(len(value)) + value
    return out


@st.composite
def block_ids(draw: st.DrawFn) -> types_pb2.BlockID | None:
    if draw(st.booleans()):
        return None  # field absent
    bid = types_pb2.BlockID(hash=draw(HASH))
    if draw(st.booleans()):
        bid.part_set_header.total = draw(UINT32)
        bid.part_set_header.hash = draw(HASH)
        bid.part_set_header.SetInParent()
    return bid


def _timestamp(draw: st.DrawFn, msg: types_pb2.Vote | types_pb2.Proposal) -> None:
    if draw(st.booleans()):
        msg.timestamp.seconds = draw(INT64)
        msg.timestamp.nanos = draw(INT32)
        msg.timestamp.SetInParent()


@st.composite
def votes(draw: st.DrawFn) -> types_pb2.Vote:
    v = types_pb2.Vote(
        type=draw(MSG_TYPE),
        height=draw(INT64),
        round=draw(INT32),
        validator_address=draw(st.binary(max_size=24)),
        validator_index=draw(INT32),
        signature=draw(st.binary(max_size=70)),
        extension=draw(st.binary(max_size=300)),
        extension_signature=draw(st.binary(max_size=70)),
    )
    bid = draw(block_ids())
    if bid is not None:
        v.block_id.CopyFrom(bid)
    _timestamp(draw, v)
    return types_pb2.Vote.FromString(v.SerializeToString() + draw(unknown_fields()))


@st.composite
def proposals(draw: st.DrawFn) -> types_pb2.Proposal:
    p = types_pb2.Proposal(
        type=draw(MSG_TYPE),
        height=draw(INT64),
        round=draw(INT32),
        pol_round=draw(INT32),
        signature=draw(st.binary(max_size=70)),
    )
    bid = draw(block_ids())
    if bid is not None:
        p.block_id.CopyFrom(bid)
    _timestamp(draw, p)
    return types_pb2.Proposal.FromString(p.SerializeToString() + draw(unknown_fields()))


CHAIN = st.text(max_size=50)


def requests(dialect: Dialect) -> st.SearchStrategy[codec.Request]:
    options: list[st.SearchStrategy[codec.Request]] = [
        st.builds(codec.PubKeyRequest, chain_id=CHAIN),
        st.builds(
            codec.SignVoteRequest,
            vote=votes(),
            chain_id=CHAIN,
            skip_extension_signing=st.booleans() if dialect.is_v1 else st.just(False),
        ),
        st.builds(codec.SignProposalRequest, proposal=proposals(), chain_id=CHAIN),
        st.just(codec.PingRequest()),
    ]
    if dialect.is_v1:
        options.append(st.builds(codec.SignBytesRequest, value=st.binary(max_size=200)))
    return st.one_of(options)


ERRORS = st.builds(codec.RemoteSignerError, code=INT32, description=st.text(max_size=40))


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ALL)
@given(data=st.data())
def test_request_round_trip(dialect: Dialect, data: st.DataObject) -> None:
    req = data.draw(requests(dialect))
    body = codec.encode_request(dialect, req)
    decoded = codec.decode_request(dialect, body)
    assert decoded == req
    assert codec.encode_request(dialect, decoded) == body


@pytest.mark.parametrize("dialect", ALL)
@given(vote=votes())
def test_every_vote_field_survives_byte_for_byte(dialect: Dialect, vote: types_pb2.Vote) -> None:
    # tmkms#1174: fields 9/10 (and anything newer) must go back out exactly as they came in.
    raw = vote.SerializeToString()
    body = codec.encode_request(dialect, codec.SignVoteRequest(vote, "c"))
    assert raw in body
    req = codec.decode_request(dialect, body)
    assert isinstance(req, codec.SignVoteRequest)
    response = codec.encode_signed_vote(dialect, req.vote)
    assert response[0] == 0x22  # Message field 4
    assert raw in response
    resp = codec.decode_response(dialect, response)
    assert isinstance(resp, codec.SignedVoteResponse)
    assert resp.vote.SerializeToString() == raw
    assert resp.error is None


@pytest.mark.parametrize("dialect", ALL)
@given(proposal=proposals())
def test_every_proposal_field_survives_byte_for_byte(dialect: Dialect, proposal: types_pb2.Proposal) -> None:
    raw = proposal.SerializeToString()
    req = codec.decode_request(dialect, codec.encode_request(dialect, codec.SignProposalRequest(proposal, "c")))
    assert isinstance(req, codec.SignProposalRequest)
    resp = codec.decode_response(dialect, codec.encode_signed_proposal(dialect, req.proposal))
    assert isinstance(resp, codec.SignedProposalResponse)
    assert resp.proposal.SerializeToString() == raw


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ALL)
@given(data=st.data(), error=ERRORS)
def test_error_responses_round_trip(dialect: Dialect, data: st.DataObject, error: codec.RemoteSignerError) -> None:
    req = data.draw(requests(dialect).filter(lambda r: not isinstance(r, codec.PingRequest)))
    resp = codec.decode_response(dialect, codec.encode_error(dialect, req, error.code, error.description))
    assert resp.error == error  # type: ignore[union-attr]
    expected_type = {
        codec.PubKeyRequest: codec.PubKeyResponse,
        codec.SignVoteRequest: codec.SignedVoteResponse,
        codec.SignProposalRequest: codec.SignedProposalResponse,
        codec.SignBytesRequest: codec.SignBytesResponse,
    }[type(req)]
    assert type(resp) is expected_type


@pytest.mark.parametrize("dialect", ALL)
@given(pub=st.binary(max_size=65), key_type=st.sampled_from(["ed25519", "secp256k1"]))
def test_pubkey_response_round_trip(dialect: Dialect, pub: bytes, key_type: str) -> None:
    resp = codec.decode_response(dialect, codec.encode_pubkey_response(dialect, pub, key_type))
    # v0.34-v0.38 cannot tell an empty key from none (oneof case of an empty bytes field is still set).
    assert resp == codec.PubKeyResponse(pub, key_type)


@given(signature=st.binary(max_size=100))
def test_sign_bytes_response_round_trip(signature: bytes) -> None:
    body = sign_bytes_response(signature)
    assert codec.decode_response(Dialect.V1_0, body) == codec.SignBytesResponse(signature)


# Framing -----------------------------------------------------------------------------------------------------

BODIES = st.lists(st.binary(max_size=300), max_size=8)


@given(bodies=BODIES, data=st.data())
def test_reader_is_chunking_invariant(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(delimit(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = MessageReader(300)
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == bodies
    reader.eof()


def test_reader_split_at_every_position() -> None:
    bodies = [b"", b"\x3a\x00", b"x" * 200, bytes(range(256)) * 3, b"\x42\x00"]
    stream = b"".join(delimit(b) for b in bodies)
    for i in range(len(stream) + 1):
        reader = MessageReader(1000)
        assert reader.feed(stream[:i]) + reader.feed(stream[i:]) == bodies, i
    byte_by_byte = MessageReader(1000)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += byte_by_byte.feed(stream[i : i + 1])
    assert got == bodies


def test_reader_cap_is_on_the_body_length() -> None:
    assert MessageReader(10).feed(delimit(b"x" * 10)) == [b"x" * 10]
    reader = MessageReader(10)
    with pytest.raises(DecodeError, match="exceeds the cap"):
        reader.feed(delimit(b"x" * 11)[:2])  # refused on the prefix alone, before the body arrives
    with pytest.raises(DecodeError, match="poisoned"):
        reader.feed(b"\x00")
    with pytest.raises(DecodeError):
        reader.eof()


def test_reader_caps_are_the_documented_ones() -> None:
    assert MAX_RESPONSE_BYTES == 10240
    assert MAX_REQUEST_BYTES > 1024 * 1024
    extension_sized = b"\x00" * (1024 * 1024 + 300)  # a 1 MiB vote extension plus the rest of the request
    assert MessageReader(MAX_REQUEST_BYTES).feed(delimit(extension_sized)) == [extension_sized]
    with pytest.raises(DecodeError):
        MessageReader(MAX_RESPONSE_BYTES).feed(delimit(b"\x00" * 10241))


@pytest.mark.parametrize(
    "prefix",
    [b"\x80" * 10 + b"\x01", b"\xff" * 9 + b"\x02", b"\xff" * 11],
    ids=["11-byte", "over-64-bits", "endless"],
)
def test_reader_refuses_overlong_varint(prefix: bytes) -> None:
    with pytest.raises(DecodeError, match="varint"):
        MessageReader(MAX_REQUEST_BYTES).feed(prefix)


@given(value=st.integers(0, 2**64 - 1), tail=st.binary(max_size=3))
def test_uvarint_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_uvarint(value)
    assert len(encoded) <= 10
    assert decode_uvarint(encoded + tail) == (value, len(encoded))
    assert decode_uvarint(encoded[:-1]) is None


@pytest.mark.parametrize("value", [-1, 2**64])
def test_uvarint_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_uvarint(value)


def test_reader_largest_varint_is_read_then_capped() -> None:
    assert decode_uvarint(b"\xff" * 9 + b"\x01") == (2**64 - 1, 10)
    with pytest.raises(DecodeError, match="exceeds the cap"):
        MessageReader(MAX_REQUEST_BYTES).feed(b"\xff" * 9 + b"\x01")


def test_reader_truncated_stream() -> None:
    reader = MessageReader(100)
    assert reader.feed(b"\x85") == []  # varint continues
    with pytest.raises(DecodeError, match="truncated"):
        reader.eof()
    body_cut = MessageReader(100)
    assert body_cut.feed(b"\x05abc") == []
    with pytest.raises(DecodeError, match="truncated"):
        body_cut.eof()
    with pytest.raises(ValueError):
        MessageReader(-1)


# Hostile bodies ----------------------------------------------------------------------------------------------

BAD_BODIES = {
    "empty": b"",
    "garbage": b"\xff\xff\xff",
    "truncated-field": bytes.fromhex("1a050a"),
    "bad-varint-in-body": b"\x08" + b"\xff" * 11,
    "invalid-utf8-chain-id": bytes.fromhex("0a030a01ff"),
    "unknown-case-11": bytes.fromhex("5a00"),
    "unknown-case-200": encode_uvarint(200 << 3 | 2) + b"\x00",
    "end-group-only": b"\x0c",
    "vote-request-without-vote": bytes.fromhex("1a03120163"),
    "proposal-request-without-proposal": bytes.fromhex("2a03120163"),
    "vote-with-garbage-inside": bytes.fromhex("1a040a02ffff"),
}


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_request_bodies_raise_decode_error(dialect: Dialect, name: str) -> None:
    with pytest.raises(DecodeError):
        codec.decode_request(dialect, BAD_BODIES[name])


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize(
    "name", sorted(set(BAD_BODIES) - {"vote-request-without-vote", "proposal-request-without-proposal"})
)
def test_bad_response_bodies_raise_decode_error(dialect: Dialect, name: str) -> None:
    with pytest.raises(DecodeError):
        codec.decode_response(dialect, BAD_BODIES[name])


@pytest.mark.parametrize("dialect", [Dialect.V0_34, Dialect.V0_37, Dialect.V0_38])
def test_v1_only_cases_are_refused_by_older_dialects(dialect: Dialect) -> None:
    # Fields 9/10 are Celestia's SignRawBytes pair on the v0.34-v0.38 wire (celestia-core, tmkms v0.15), so
    # they decode as that (the handler refuses it with an error reply); what does not parse as it is refused.
    assert codec.decode_request(dialect, bytes.fromhex("4a050a03726177")) == codec.SignRawBytesRequest("raw", b"", "")
    response = codec.decode_response(dialect, sign_bytes_response(b"s"))
    assert response == codec.SignBytesResponse(signature=b"s")
    with pytest.raises(DecodeError):  # each in the wrong direction
        codec.decode_request(dialect, sign_bytes_response(b"s"))
    with pytest.raises(DecodeError):
        codec.decode_response(dialect, bytes.fromhex("4a050a03726177"))


@pytest.mark.parametrize("dialect", ALL)
def test_wrong_direction_is_refused(dialect: Dialect) -> None:
    with pytest.raises(DecodeError, match="is a response"):
        codec.decode_request(dialect, codec.PING_RESPONSE)
    with pytest.raises(DecodeError, match="is a request"):
        codec.decode_response(dialect, codec.encode_request(dialect, codec.PingRequest()))
    with pytest.raises(DecodeError, match="is a request"):
        codec.decode_response(dialect, codec.encode_request(dialect, codec.PubKeyRequest("c")))


# The fuzz target's property, run under hypothesis in the suite -------------------------------------------------


def _load_fuzz_target() -> ModuleType:
    path = Path(__file__).parent / "fuzz" / "fuzz_codec.py"
    spec = importlib.util.spec_from_file_location("fuzz_codec", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _load_fuzz_target()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_fuzz_property_on_random_bytes(data: bytes) -> None:
    FUZZ.TestOneInput(data)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Valid request streams with a few bytes flipped, inserted or cut: closer to the protocol than noise."""
    dialect = draw(st.sampled_from(ALL))
    stream = bytearray(
        b"".join(delimit(codec.encode_request(dialect, r)) for r in draw(st.lists(requests(dialect), max_size=3)))
    )
    for _ in range(draw(st.integers(0, 4))):
        if not stream:
            break
        i = draw(st.integers(0, len(stream) - 1))
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        if action == "flip":
            stream[i] ^= draw(st.integers(1, 255))
        elif action == "insert":
            stream[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del stream[i:]
    return bytes(stream)


@pytest.mark.slow
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_requests())
def test_fuzz_property_on_mutated_requests(data: bytes) -> None:
    FUZZ.TestOneInput(data)
    for dialect in ALL:
        with contextlib.suppress(DecodeError):
            codec.decode_request(dialect, data)


def test_fuzz_target_lets_invalid_requests_pass_as_such() -> None:
    # A vote with a 31-byte hash decodes, then sign bytes refuse it with InvalidRequest, which the target allows.
    vote = types_pb2.Vote(type=2, height=1)  # type: ignore[arg-type]
    vote.block_id.hash = b"\x01" * 31
    body = codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote, "c"))
    FUZZ.TestOneInput(body)
    from pykms.privval.signbytes import vote_sign_bytes

    with pytest.raises(InvalidRequest):
        vote_sign_bytes("c", vote)
