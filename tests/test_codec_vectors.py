"""privval codec against upstream message encodings (test vector V5, V7/V8 deserialization, V10), every dialect."""

from __future__ import annotations

import hashlib

import pytest
from broken_signers import sign_bytes_response

from pykms.errors import ConfigError, InvalidRequest
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.varint import encode_uvarint
from pykms.proto.tendermint.types import types_pb2

ALL = list(Dialect)
OLD = [Dialect.V0_34, Dialect.V0_37, Dialect.V0_38]


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def wrap(case: int, body: bytes) -> bytes:
    """A privval Message with oneof field ``case`` holding ``body``."""
    return encode_uvarint(case << 3 | 2) + encode_uvarint(len(body)) + body


# V5: cometbft privval/msgs_test.go TestPrivvalVectors (v0.34.35, v0.37.18, v0.38.25, v1.0.1). -------------------
PUB = bytes.fromhex("556a436f1218d30942efe798420f51dc9b6a311b929c578257457d05c5fcf230")  # "it's a secret"
STAMP = (1570983284, 0)  # 2019-10-13T16:14:44Z


def v5_block_id() -> types_pb2.BlockID:
    bid = types_pb2.BlockID(hash=h(b"blockID_hash"))
    bid.part_set_header.total = 1000000
    bid.part_set_header.hash = h(b"blockID_part_set_header_hash")
    return bid


def v5_vote(dialect: Dialect) -> types_pb2.Vote:
    # The v0.38/v1.0 test switched to a precommit carrying an extension.
    v = types_pb2.Vote(
        type=2 if dialect.has_extensions else 1,  # type: ignore[arg-type]
        height=3,
        round=2,
        validator_address=h(b"validator_address")[:20],
        validator_index=56789,
    )
    if dialect.has_extensions:
        v.extension = b"extension"
    v.block_id.CopyFrom(v5_block_id())
    v.timestamp.seconds, v.timestamp.nanos = STAMP
    return v


def v5_proposal() -> types_pb2.Proposal:
    p = types_pb2.Proposal(type=1, height=3, round=2, pol_round=2, signature=b"it's a signature")  # type: ignore[arg-type]
    p.block_id.CopyFrom(v5_block_id())
    p.timestamp.seconds, p.timestamp.nanos = STAMP
    return p


VOTE_OLD = (
    "0a74080110031802224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635"
    "dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded0532146af1f4111082efb388211bc72c55bcd61e9ac3d538d5bb03"
)
VOTE_EXT = (
    "0a7f080210031802224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d959635"
    "dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded0532146af1f4111082efb388211bc72c55bcd61e9ac3d538d5"
    "bb034a09657874656e73696f6e"
)
PROPOSAL = (
    "0a6e08011003180220022a4a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652f4fc80122608c0843d122072db3d95"
    "9635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a320608f49a8ded053a10697427732061207369676e6174757265"
)
ERROR = "12100801120c697427732061206572726f72"  # RemoteSignerError{1, "it's a error"} as field 2


def vote_request_hex(dialect: Dialect) -> str:
    return ("1a8101" + VOTE_EXT) if dialect.has_extensions else ("1a76" + VOTE_OLD)


def vote_response_hex(dialect: Dialect) -> str:
    return ("228101" + VOTE_EXT) if dialect.has_extensions else ("2276" + VOTE_OLD)


@pytest.mark.parametrize("dialect", ALL)
def test_v5_ping(dialect: Dialect) -> None:
    assert codec.encode_request(dialect, codec.PingRequest()).hex() == "3a00"
    assert codec.decode_request(dialect, bytes.fromhex("3a00")) == codec.PingRequest()
    assert codec.PING_RESPONSE.hex() == "4200"
    assert codec.decode_response(dialect, bytes.fromhex("4200")) == codec.PingResponse()


@pytest.mark.parametrize("dialect", ALL)
def test_v5_pubkey_request(dialect: Dialect) -> None:
    assert codec.encode_request(dialect, codec.PubKeyRequest(chain_id="")).hex() == "0a00"
    assert codec.decode_request(dialect, bytes.fromhex("0a00")) == codec.PubKeyRequest(chain_id="")


@pytest.mark.parametrize("dialect", OLD)
def test_v5_pubkey_response_pre_v1(dialect: Dialect) -> None:
    expected = "12240a220a20" + PUB.hex()
    assert codec.encode_pubkey_response(dialect, PUB).hex() == expected
    assert codec.decode_response(dialect, bytes.fromhex(expected)) == codec.PubKeyResponse(PUB, "ed25519")
    err = "12140a00" + ERROR
    assert codec.encode_error(dialect, codec.PubKeyRequest(""), 1, "it's a error").hex() == err
    got = codec.decode_response(dialect, bytes.fromhex(err))
    assert got == codec.PubKeyResponse(b"", "", codec.RemoteSignerError(1, "it's a error"))


def test_v5_pubkey_response_v1() -> None:
    expected = "122b1a20" + PUB.hex() + "220765643235353139"
    assert codec.encode_pubkey_response(Dialect.V1_0, PUB).hex() == expected
    assert codec.decode_response(Dialect.V1_0, bytes.fromhex(expected)) == codec.PubKeyResponse(PUB, "ed25519")
    err = "1212" + ERROR
    assert codec.encode_error(Dialect.V1_0, codec.PubKeyRequest(""), 1, "it's a error").hex() == err
    got = codec.decode_response(Dialect.V1_0, bytes.fromhex(err))
    assert got == codec.PubKeyResponse(b"", "", codec.RemoteSignerError(1, "it's a error"))


@pytest.mark.parametrize("dialect", ALL)
def test_v5_vote_request_and_response(dialect: Dialect) -> None:
    req = codec.SignVoteRequest(vote=v5_vote(dialect), chain_id="")
    assert codec.encode_request(dialect, req).hex() == vote_request_hex(dialect)
    decoded = codec.decode_request(dialect, bytes.fromhex(vote_request_hex(dialect)))
    assert decoded == req
    assert codec.encode_signed_vote(dialect, v5_vote(dialect)).hex() == vote_response_hex(dialect)
    resp = codec.decode_response(dialect, bytes.fromhex(vote_response_hex(dialect)))
    assert resp == codec.SignedVoteResponse(vote=v5_vote(dialect))


@pytest.mark.parametrize("dialect", ALL)
def test_v5_vote_response_with_error(dialect: Dialect) -> None:
    expected = "22250a11220212002a0b088092b8c398feffffff01" + ERROR
    req = codec.SignVoteRequest(vote=v5_vote(dialect), chain_id="")
    assert codec.encode_error(dialect, req, 1, "it's a error").hex() == expected
    resp = codec.decode_response(dialect, bytes.fromhex(expected))
    assert isinstance(resp, codec.SignedVoteResponse)
    assert resp.error == codec.RemoteSignerError(1, "it's a error")
    assert resp.vote.timestamp.seconds == -62135596800
    assert not resp.vote.signature


@pytest.mark.parametrize("dialect", ALL)
def test_v5_proposal_request_and_response(dialect: Dialect) -> None:
    req = codec.SignProposalRequest(proposal=v5_proposal(), chain_id="")
    assert codec.encode_request(dialect, req).hex() == "2a70" + PROPOSAL
    assert codec.decode_request(dialect, bytes.fromhex("2a70" + PROPOSAL)) == req
    assert codec.encode_signed_proposal(dialect, v5_proposal()).hex() == "3270" + PROPOSAL
    resp = codec.decode_response(dialect, bytes.fromhex("3270" + PROPOSAL))
    assert resp == codec.SignedProposalResponse(proposal=v5_proposal())


@pytest.mark.parametrize("dialect", ALL)
def test_v5_proposal_response_with_error(dialect: Dialect) -> None:
    expected = "32250a112a021200320b088092b8c398feffffff01" + ERROR
    req = codec.SignProposalRequest(proposal=v5_proposal(), chain_id="")
    assert codec.encode_error(dialect, req, 1, "it's a error").hex() == expected
    resp = codec.decode_response(dialect, bytes.fromhex(expected))
    assert isinstance(resp, codec.SignedProposalResponse)
    assert resp.error == codec.RemoteSignerError(1, "it's a error")


# V7 / V8 test_deserialization: tendermint-rs vote/sign_vote.rs and proposal.rs (v0.40.3); request bodies
# without the Message wrapper, so they are wrapped here as Message cases 3 and 5. ---------------------------------
V7_REQUEST = bytes.fromhex(
    "0abc01080110b9601802224a0a20deadbeefdeadbeefbafbafbafbafbafa00000000000000000000000000000000122608c0843d1220"
    "0022446688aaccee1133557799bbddff000000000000000000000000000000002a0b08b1d381d20510809dca6f3214a3b2ccdd7186f1"
    "685f21f2482af4fb3446a84b3538d5bb034240" + "01" * 64 + "120d746573745f636861696e5f6964"
)
V8_REQUEST = bytes.fromhex(
    "0ab001082010b96018a0b70120ffffffffffffffffff012a4a0a20deadbeefdeadbeefbafbafbafbafbafadeadbeefdeadbeefbafbaf"
    "bafbafbafa122608ffff0312200022446688aaccee1133557799bbddff0022446688aaccee1133557799bbddff320c08a2d8ffd30510c0"
    "f2e3ec023a40" + "00" * 64 + "120d746573745f636861696e5f6964"
)


@pytest.mark.parametrize("dialect", ALL)
def test_v7_tendermint_rs_vote_request(dialect: Dialect) -> None:
    body = wrap(3, V7_REQUEST)
    req = codec.decode_request(dialect, body)
    assert isinstance(req, codec.SignVoteRequest)
    assert req.chain_id == "test_chain_id"
    v = req.vote
    assert (v.type, v.height, v.round, v.validator_index) == (1, 12345, 2, 56789)
    assert v.block_id.hash == bytes.fromhex("deadbeefdeadbeefbafbafbafbafbafa") + bytes(16)
    assert v.block_id.part_set_header.total == 1000000
    assert (v.timestamp.seconds, v.timestamp.nanos) == (1514170801, 234000000)
    assert v.validator_address.hex() == "a3b2ccdd7186f1685f21f2482af4fb3446a84b35"
    assert v.signature == b"\x01" * 64
    assert codec.encode_request(dialect, req) == body


@pytest.mark.parametrize("dialect", ALL)
def test_v8_tendermint_rs_proposal_request(dialect: Dialect) -> None:
    body = wrap(5, V8_REQUEST)
    req = codec.decode_request(dialect, body)
    assert isinstance(req, codec.SignProposalRequest)
    p = req.proposal
    assert (p.type, p.height, p.round, p.pol_round) == (32, 12345, 23456, -1)
    assert p.block_id.part_set_header.total == 65535
    assert (p.timestamp.seconds, p.timestamp.nanos) == (1518332962, 765000000)
    assert p.signature == bytes(64)
    assert codec.encode_request(dialect, req) == body


# V10: tendermint-rs tendermint/src/public_key.rs test_ed25519_pubkey_msg (v0.40.3), generated with Go.
def test_v10_pubkey_response_body() -> None:
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    body = bytes.fromhex("0a220a20d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    for dialect in OLD:
        assert codec.encode_pubkey_response(dialect, pub) == wrap(2, body)
        assert codec.decode_response(dialect, wrap(2, body)) == codec.PubKeyResponse(pub, "ed25519")


# V12 shapes: tm-signer-harness (cometbft commit 13c1ef3d42^, internal/test_harness.go) ---------------------------
@pytest.mark.parametrize("dialect", ALL)
def test_v12_harness_requests_round_trip(dialect: Dialect) -> None:
    hv = h(b"hash")
    vote = types_pb2.Vote(type=1, height=101, round=0, validator_index=0, validator_address=h(b"addr")[:20])  # type: ignore[arg-type]
    vote.block_id.hash = hv
    vote.block_id.part_set_header.total = 1000000
    vote.block_id.part_set_header.hash = hv
    vote.timestamp.seconds = 1700000000
    body = codec.encode_request(dialect, codec.SignVoteRequest(vote, "test-chain-0XwP5E"))
    assert codec.decode_request(dialect, body) == codec.SignVoteRequest(vote, "test-chain-0XwP5E")


# Dialect specifics ------------------------------------------------------------------------------------------


def test_dialect_parse() -> None:
    assert Dialect.parse("v0.38") is Dialect.V0_38
    assert Dialect.parse("v1.0") is Dialect.V1_0
    assert [d.value for d in Dialect] == ["v0.34", "v0.37", "v0.38", "v1.0"]
    with pytest.raises(ConfigError, match="protocol_version"):
        Dialect.parse("v0.39")


def test_skip_extension_signing_is_v1_only() -> None:
    vote = v5_vote(Dialect.V1_0)
    v1_body = codec.encode_request(Dialect.V1_0, codec.SignVoteRequest(vote, "c", skip_extension_signing=True))
    assert v1_body.endswith(b"\x18\x01")  # SignVoteRequest field 3 = true, after the chain id
    got = codec.decode_request(Dialect.V1_0, v1_body)
    assert isinstance(got, codec.SignVoteRequest)
    assert got.skip_extension_signing is True
    # A v0.38 node never sends field 3: it is not read (unknown field, skipped) and not written.
    old = codec.decode_request(Dialect.V0_38, v1_body)
    assert isinstance(old, codec.SignVoteRequest)
    assert old.skip_extension_signing is False
    old_body = codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote, "c", skip_extension_signing=True))
    assert old_body == codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote, "c"))


def test_sign_bytes_messages_v1() -> None:
    body = codec.encode_request(Dialect.V1_0, codec.SignBytesRequest(b"raw"))
    assert body.hex() == "4a050a03726177"
    assert codec.decode_request(Dialect.V1_0, body) == codec.SignBytesRequest(b"raw")
    resp = sign_bytes_response(b"\x07" * 64)
    assert resp == wrap(10, b"\x0a\x40" + b"\x07" * 64)
    assert codec.decode_response(Dialect.V1_0, resp) == codec.SignBytesResponse(b"\x07" * 64)
    err = codec.encode_error(Dialect.V1_0, codec.SignBytesRequest(b"raw"), 0, "refused")
    assert err == wrap(10, wrap(2, b"\x12\x07refused"))
    assert codec.decode_response(Dialect.V1_0, err) == codec.SignBytesResponse(
        b"", codec.RemoteSignerError(0, "refused")
    )


@pytest.mark.parametrize("dialect", OLD)
def test_sign_bytes_cannot_be_encoded_before_v1(dialect: Dialect) -> None:
    with pytest.raises(InvalidRequest):
        codec.encode_request(dialect, codec.SignBytesRequest(b"x"))
    with pytest.raises(InvalidRequest):
        codec.encode_error(dialect, codec.SignBytesRequest(b"x"), 0, "no")


def test_error_with_code_zero_and_empty_text_is_still_present() -> None:
    # The node treats the presence of the error field as failure, whatever it holds (docs/protocol.md §2.8).
    body = codec.encode_error(Dialect.V1_0, codec.PubKeyRequest("c"), 0, "")
    assert body.hex() == "12021200"
    resp = codec.decode_response(Dialect.V1_0, body)
    assert isinstance(resp, codec.PubKeyResponse)
    assert resp.error == codec.RemoteSignerError(0, "")


def test_ping_has_no_error_response() -> None:
    with pytest.raises(InvalidRequest):
        codec.encode_error(Dialect.V0_38, codec.PingRequest(), 0, "x")


def test_secp256k1_pubkey_and_unsendable_key_types() -> None:
    key = b"\x02" + b"\x11" * 32
    body = codec.encode_pubkey_response(Dialect.V0_34, key, key_type="secp256k1")
    assert body == wrap(2, wrap(1, wrap(2, key)))
    assert codec.decode_response(Dialect.V0_34, body) == codec.PubKeyResponse(key, "secp256k1")
    with pytest.raises(InvalidRequest):
        codec.encode_pubkey_response(Dialect.V0_38, b"\x01" * 48, key_type="bls12_381")
    v1 = codec.encode_pubkey_response(Dialect.V1_0, b"\x01" * 48, key_type="bls12_381")
    assert codec.decode_response(Dialect.V1_0, v1) == codec.PubKeyResponse(b"\x01" * 48, "bls12_381")


def test_vote_from_the_wire_without_timestamp_stays_without() -> None:
    # Go would re-encode an absent timestamp as its zero time; we echo the request as it came (no field), and
    # the sign bytes use Go's zero time either way (docs/protocol.md §0 rule 5).
    vote = types_pb2.Vote(type=1, height=1)  # type: ignore[arg-type]
    body = codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote, "c"))
    got = codec.decode_request(Dialect.V0_38, body)
    assert isinstance(got, codec.SignVoteRequest)
    assert not got.vote.HasField("timestamp")
    assert codec.encode_request(Dialect.V0_38, got) == body


@pytest.mark.parametrize("dialect", [Dialect.V0_38, Dialect.V1_0])
def test_signed_vote_without_echoing_a_large_extension(dialect: Dialect) -> None:
    vote = v5_vote(dialect)
    vote.extension = b"\x05" * 20_000
    vote.signature, vote.extension_signature = b"\x01" * 64, b"\x02" * 64
    full = codec.encode_signed_vote(dialect, vote)
    assert len(full) > codec.MAX_RESPONSE_BYTES  # a v0.38-v1.0.1 node would refuse to read it
    slim = codec.encode_signed_vote(dialect, vote, echo_extension=False)
    assert len(slim) < 300
    resp = codec.decode_response(dialect, slim)
    assert isinstance(resp, codec.SignedVoteResponse)
    assert resp.vote.extension == b""
    assert (resp.vote.signature, resp.vote.extension_signature) == (vote.signature, vote.extension_signature)
    assert resp.vote.timestamp == vote.timestamp
    assert vote.extension == b"\x05" * 20_000  # the caller's vote is untouched
