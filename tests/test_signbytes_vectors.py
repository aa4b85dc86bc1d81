"""Canonical sign bytes against upstream vectors (tests/vectors/README.md V6-V9) and the derived D2 signatures."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey, VerifyKey

from pykms.errors import DecodeError, InvalidRequest
from pykms.guard.state import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL
from pykms.privval import codec
from pykms.privval.signbytes import (
    GO_ZERO_TIME,
    canonical_view,
    proposal_sign_bytes,
    step_of,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from pykms.proto.cometbft.types.v1 import types_pb2 as v1_types
from pykms.proto.tendermint.types import types_pb2
from tests.broken_signers import with_timestamp


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def block_id(block_hash: bytes, total: int, psh_hash: bytes) -> types_pb2.BlockID:
    bid = types_pb2.BlockID(hash=block_hash)
    bid.part_set_header.total = total
    bid.part_set_header.hash = psh_hash
    bid.part_set_header.SetInParent()
    return bid


def vote(
    type_: int = 0,
    height: int = 0,
    round_: int = 0,
    bid: types_pb2.BlockID | None = None,
    ts: tuple[int, int] | None = None,
    **extra: object,
) -> types_pb2.Vote:
    v = types_pb2.Vote(type=type_, height=height, round=round_, **extra)  # type: ignore[arg-type]
    if bid is not None:
        v.block_id.CopyFrom(bid)
    if ts is not None:
        v.timestamp.seconds, v.timestamp.nanos = ts
        v.timestamp.SetInParent()
    return v


def proposal(
    height: int, round_: int, pol_round: int, bid: types_pb2.BlockID | None, ts: tuple[int, int], type_: int = 32
) -> types_pb2.Proposal:
    p = types_pb2.Proposal(type=type_, height=height, round=round_, pol_round=pol_round)  # type: ignore[arg-type]
    if bid is not None:
        p.block_id.CopyFrom(bid)
    p.timestamp.seconds, p.timestamp.nanos = ts
    p.timestamp.SetInParent()
    return p


# V6: cometbft types/vote_test.go TestVoteSignBytesTestVectors (v0.34.35 .. v1.0.1; case 5 from v0.38.0).
GO_ZERO_TS = "2a0b088092b8c398feffffff01"
TEST_CHAIN = "320d746573745f636861696e5f6964"
V6 = [
    ("", vote(), "0d" + GO_ZERO_TS),
    ("", vote(2, 1, 1), "210802110100000000000000190100000000000000" + GO_ZERO_TS),
    ("", vote(1, 1, 1), "210801110100000000000000190100000000000000" + GO_ZERO_TS),
    ("", vote(0, 1, 1), "1f110100000000000000190100000000000000" + GO_ZERO_TS),
    ("test_chain_id", vote(0, 1, 1), "2e110100000000000000190100000000000000" + GO_ZERO_TS + TEST_CHAIN),
    (
        "test_chain_id",
        vote(0, 1, 1, extension=b"extension"),
        "2e110100000000000000190100000000000000" + GO_ZERO_TS + TEST_CHAIN,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("chain_id", "v", "expected"), V6, ids=[f"V6-{i}" for i in range(len(V6))])
def test_v6_cometbft_vote_sign_bytes(chain_id: str, v: types_pb2.Vote, expected: str) -> None:
    assert vote_sign_bytes(chain_id, v).hex() == expected


# V7: tendermint-rs tendermint/src/vote/sign_vote.rs (v0.40.3), generated with Go per its comments.
V7_TS = (1514170801, 234000000)
V7_ADDR = bytes.fromhex("a3b2ccdd7186f1685f21f2482af4fb3446a84b35")


def test_v7_vote_serialization() -> None:
    bid = block_id(b"DEADBEEFDEADBEEFBAFBAFBAFBAFBAFA", 1000000, b"0022446688AACCEE1133557799BBDDFF")
    v = vote(1, 12345, 2, bid, V7_TS, validator_address=V7_ADDR, validator_index=56789)
    assert vote_sign_bytes("test_chain_id", v).hex() == (
        "7c0801113930000000000000190200000000000000224a0a204445414442454546444541444245454642414642414642414642"
        "414642414641122608c0843d122030303232343436363838414143434545313133333535373739394242444446462a0b08b1d3"
        "81d20510809dca6f320d746573745f636861696e5f6964"
    )


def test_v7_vote_with_empty_block_hash_keeps_part_set_header() -> None:
    bid = block_id(b"", 1000000, b"0022446688AACCEE1133557799BBDDFF")
    v = vote(1, 12345, 2, bid, V7_TS, validator_address=V7_ADDR, validator_index=56789)
    assert vote_sign_bytes("test_chain_id", v).hex() == (
        "5a08011139300000000000001902000000000000002228122608c0843d1220303032323434363638384141434345453131333335"
        "35373739394242444446462a0b08b1d381d20510809dca6f320d746573745f636861696e5f6964"
    )


def test_v7_sign_bytes_compatibility_epoch_timestamp() -> None:
    # tendermint-rs test_sign_bytes_compatibility: Unix epoch is an empty, still present, timestamp (`2a 00`).
    assert vote_sign_bytes("A", vote(1, 1, 0, ts=(0, 0))).hex() == "1008011101000000000000002a00320141"
    assert vote_sign_bytes("A", vote(2, 1, 1, ts=(0, 0)))[1:].hex() == (
        "08021101000000000000001901000000000000002a00320141"
    )
    assert vote_sign_bytes("A", vote(1, 1, 1, ts=(0, 0)))[1:].hex() == (
        "08011101000000000000001901000000000000002a00320141"
    )


# V8: tendermint-rs tendermint/src/proposal.rs (v0.40.3), generated with Go per its comments.
V8_TS = (1518332962, 765000000)
V8_HASH = bytes.fromhex("DEADBEEFDEADBEEFBAFBAFBAFBAFBAFADEADBEEFDEADBEEFBAFBAFBAFBAFBAFA")
V8_PSH = bytes.fromhex("0022446688AACCEE1133557799BBDDFF0022446688AACCEE1133557799BBDDFF")


def test_v8_proposal_serialization() -> None:
    p = proposal(12345, 23456, -1, block_id(V8_HASH, 65535, V8_PSH), V8_TS)
    assert proposal_sign_bytes("test_chain_id", p).hex() == (
        "8801082011393000000000000019a05b00000000000020ffffffffffffffffff012a4a0a20deadbeefdeadbeefbafbafbafbafb"
        "afadeadbeefdeadbeefbafbafbafbafbafa122608ffff0312200022446688aaccee1133557799bbddff0022446688aaccee1133"
        "557799bbddff320c08a2d8ffd30510c0f2e3ec023a0d746573745f636861696e5f6964"
    )


def test_v8_proposal_with_empty_block_hash() -> None:
    p = proposal(12345, 23456, -1, block_id(b"", 65535, V8_PSH), V8_TS)
    assert proposal_sign_bytes("test_chain_id", p).hex() == (
        "66082011393000000000000019a05b00000000000020ffffffffffffffffff012a28122608ffff0312200022446688aaccee11"
        "33557799bbddff0022446688aaccee1133557799bbddff320c08a2d8ffd30510c0f2e3ec023a0d746573745f636861696e5f6964"
    )


# V9: tmkms src/privval.rs (v0.15.0) serialize_canonical_proposal / serialize_canonical_vote.
V9_TS = (1696413600, 0)


def test_v9_tmkms_proposal_without_block_id() -> None:
    p = proposal(12345, 1, -1, None, V9_TS)
    assert proposal_sign_bytes("test_chain_id", p).hex() == (
        "36082011393000000000000019010000000000000020ffffffffffffffffff01320608a0eff4a8063a0d746573745f636861696e5f6964"
    )


def test_v9_tmkms_vote() -> None:
    bid = block_id(b"some hash00000000000000000000000", 1000000, b"parts_hash0000000000000000000000")
    assert vote_sign_bytes("test_chain_id", vote(1, 500001, 2, bid, V9_TS)).hex() == (
        "7708011121a1070000000000190200000000000000224a0a20736f6d6520686173683030303030303030303030303030303030"
        "303030303030122608c0843d122070617274735f68617368303030303030303030303030303030303030303030302a0608a0ef"
        "f4a806320d746573745f636861696e5f6964"
    )


# D2 (derived in tests/vectors/README.md, not upstream): V5 inputs from cometbft privval/msgs_test.go signed with
# ed25519.GenPrivKeyFromSecret("it's a secret"), chain_id test_chain_id.
SECRET_KEY = SigningKey(h(b"it's a secret"))
V5_BID = block_id(h(b"blockID_hash"), 1000000, h(b"blockID_part_set_header_hash"))
V5_TS = (1570983284, 0)


def v5_precommit() -> types_pb2.Vote:
    return vote(2, 3, 2, V5_BID, V5_TS, validator_address=h(b"validator_address")[:20], validator_index=56789,
                extension=b"extension")  # fmt: skip


def test_d2_key_is_the_v5_key() -> None:
    assert bytes(SECRET_KEY.verify_key).hex() == "556a436f1218d30942efe798420f51dc9b6a311b929c578257457d05c5fcf230"


def test_d2_vote_sign_bytes_and_signature() -> None:
    sb = vote_sign_bytes("test_chain_id", v5_precommit())
    assert sb.hex() == (
        "770802110300000000000000190200000000000000224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54"
        "fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a"
        "8ded05320d746573745f636861696e5f6964"
    )
    sig = SECRET_KEY.sign(sb).signature
    assert sig.hex() == (
        "fd4a06bfe49eeef6ab1a1140d10745a0354aac97a7ecb69bb9e10fc6e772f5b2460f03940bee3d628fbb5befe356cd8bbc30f1f1"
        "28d7949c20d681ec4f2ca805"
    )
    VerifyKey(bytes(SECRET_KEY.verify_key)).verify(sb, sig)


def test_d2_vote_extension_sign_bytes_and_signature() -> None:
    sb = vote_extension_sign_bytes("test_chain_id", v5_precommit())
    assert sb.hex() == ("2c0a09657874656e73696f6e110300000000000000190200000000000000220d746573745f636861696e5f6964")
    assert SECRET_KEY.sign(sb).signature.hex() == (
        "ff2836698dd7a45a47cd47aee3617c85349a8dde58e4df4d9b13ad0eb50859cac7f71a2d77ce05fc25595eced8d0cd782f4a639d"
        "553e18aab297cdc4026abd05"
    )


def test_d2_empty_vote_extension_is_still_signed_bytes() -> None:
    v = v5_precommit()
    v.extension = b""
    assert vote_extension_sign_bytes("test_chain_id", v).hex() == (
        "21110300000000000000190200000000000000220d746573745f636861696e5f6964"
    )


def test_d2_proposal_sign_bytes_and_signature() -> None:
    # The V5 proposal says type 1; the canonical proposal hard-codes 32 (types/canonical.go).
    p = proposal(3, 2, 2, V5_BID, V5_TS, type_=1)
    p.signature = b"it's a signature"
    sb = proposal_sign_bytes("test_chain_id", p)
    assert sb.hex() == (
        "79082011030000000000000019020000000000000020022a4a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e"
        "54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a320608f49a"
        "8ded053a0d746573745f636861696e5f6964"
    )
    assert SECRET_KEY.sign(sb).signature.hex() == (
        "4d5e01660273de102d1305a8aa4cc9eb08011e7d8370adb89867aef6b31bea8538cdfa2e100bd1636e5710d680cb97aff2578091"
        "cf8903642c8cc6581de6650e"
    )


# Rules beyond the vectors ----------------------------------------------------------------------------------


def test_signed_fields_outside_canonical_vote_do_not_change_sign_bytes() -> None:
    a = v5_precommit()
    b = v5_precommit()
    b.validator_index, b.validator_address, b.signature = 1, b"\x01" * 20, b"\x02" * 64
    b.extension, b.extension_signature = b"other", b"\x03" * 64
    assert vote_sign_bytes("c", a) == vote_sign_bytes("c", b)


def test_cometbft_v1_classes_give_the_same_bytes() -> None:
    tm = v5_precommit()
    v1 = v1_types.Vote.FromString(tm.SerializeToString())
    assert vote_sign_bytes("x", v1) == vote_sign_bytes("x", tm)  # type: ignore[arg-type]
    assert vote_extension_sign_bytes("x", v1) == vote_extension_sign_bytes("x", tm)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1, 20, 31, 33, 64])
def test_block_hash_of_wrong_length_is_refused(bad: int) -> None:
    with pytest.raises(InvalidRequest, match="block hash"):
        vote_sign_bytes("c", vote(2, 1, 0, block_id(b"\x01" * bad, 1, b"\x02" * 32), (1, 0)))
    with pytest.raises(InvalidRequest, match="part-set header hash"):
        vote_sign_bytes("c", vote(2, 1, 0, block_id(b"\x01" * 32, 1, b"\x02" * bad), (1, 0)))
    with pytest.raises(InvalidRequest):
        proposal_sign_bytes("c", proposal(1, 0, -1, block_id(b"\x01" * bad, 1, b""), (1, 0)))


def test_part_set_total_alone_makes_a_block_id_non_nil() -> None:
    sb = vote_sign_bytes("", vote(2, 1, 0, block_id(b"", 1, b""), (0, 0)))
    assert bytes.fromhex("2204120208 01".replace(" ", "")) in sb
    assert canonical_view(sb, STEP_PRECOMMIT).block_id == bytes.fromhex("12020801")


@pytest.mark.parametrize("ts", [(-62135596801, 0), (253402300800, 0), (0, -1), (0, 1_000_000_000)])
def test_timestamp_outside_go_range_is_refused(ts: tuple[int, int]) -> None:
    with pytest.raises(InvalidRequest, match="timestamp"):
        vote_sign_bytes("c", vote(1, 1, 0, ts=ts))


def test_negative_round_and_height_are_twos_complement_sfixed64() -> None:
    sb = vote_sign_bytes("", vote(1, -1, -2, ts=(0, 0)))
    assert sb.hex() == "16080111ffffffffffffffff19feffffffffffffff2a00"  # 22-byte body


def test_step_of() -> None:
    assert step_of(codec.SignProposalRequest(types_pb2.Proposal(), "c")) == STEP_PROPOSAL
    assert step_of(codec.SignVoteRequest(vote(1), "c")) == STEP_PREVOTE
    assert step_of(codec.SignVoteRequest(vote(2), "c")) == STEP_PRECOMMIT
    for other in (0, 32, 3, 99):
        with pytest.raises(InvalidRequest, match=f"type {other}"):
            step_of(codec.SignVoteRequest(vote(other), "c"))


def test_canonical_view_of_a_vote() -> None:
    sb = vote_sign_bytes("test_chain_id", v5_precommit())
    view = canonical_view(sb, STEP_PRECOMMIT)
    assert view.timestamp == V5_TS
    assert view.block_id is not None
    assert view.block_id.hex().startswith("0a208b0102")
    later = vote_sign_bytes("test_chain_id", with_timestamp(v5_precommit(), (V5_TS[0] + 7, 123)))
    assert later != sb
    later_view = canonical_view(later, STEP_PRECOMMIT)
    assert later_view.timestamp == (V5_TS[0] + 7, 123)
    assert later_view.without_timestamp == view.without_timestamp
    other_round = v5_precommit()
    other_round.round = 3
    assert canonical_view(vote_sign_bytes("test_chain_id", other_round), 3).without_timestamp != (
        view.without_timestamp
    )


def test_canonical_view_of_nil_vote_and_proposal() -> None:
    nil = canonical_view(vote_sign_bytes("c", vote(1, 5, 0)), STEP_PREVOTE)
    assert nil.block_id is None
    assert nil.timestamp == GO_ZERO_TIME
    p = canonical_view(proposal_sign_bytes("c", proposal(5, 0, -1, V5_BID, (9, 9))), STEP_PROPOSAL)
    assert p.block_id is not None
    assert p.timestamp == (9, 9)
    p_nil = canonical_view(proposal_sign_bytes("c", proposal(5, 0, -1, None, (9, 9))), STEP_PROPOSAL)
    assert p_nil.block_id is None


def test_canonical_view_refuses_what_does_not_parse() -> None:
    good = vote_sign_bytes("c", v5_precommit())
    for bad in (b"", good[:-1], good + b"\x00", b"\x03\xff\xff\xff", b"\x80", b"\x02\x0a\x05"):
        with pytest.raises(DecodeError):
            canonical_view(bad, STEP_PRECOMMIT)
    with pytest.raises(DecodeError):
        canonical_view(good, 7)


def test_with_timestamp_copies() -> None:
    original = v5_precommit()
    moved = with_timestamp(original, (1, 2))
    assert (original.timestamp.seconds, original.timestamp.nanos) == V5_TS
    assert (moved.timestamp.seconds, moved.timestamp.nanos) == (1, 2)
    assert moved.extension == original.extension
    p = with_timestamp(proposal(1, 0, -1, None, (5, 5)), (0, 0))
    assert p.HasField("timestamp")
    assert proposal_sign_bytes("", p).endswith(b"\x32\x00")
