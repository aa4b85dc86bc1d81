"""SecretConnection pure pieces against upstream vectors (test vector V1 column 5, V2-V4) and the peer-ID check."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from merlin_transcripts.merlin_transcript import MerlinTranscript
from merlin_transcripts.strobe import Strobe128

from pykms.errors import PeerIdMismatch
from pykms.secretconn.core import _NONCE, HKDF_INFO, FrameCodec, Handshake, check_peer_id, node_id

GOLDEN = Path(__file__).resolve().parent / "vectors" / "secretconn_hkdf_golden.txt"


def test_v1_third_hkdf_block() -> None:
    """Column 5 of the cometbft golden file is okm[64:96]: checks the HKDF parameters beyond the key split."""
    lines = [ln for ln in GOLDEN.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 32
    for line in lines:
        dh, _least, _recv, _send, legacy = line.split(",")
        okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=None, info=HKDF_INFO).derive(bytes.fromhex(dh))
        assert okm[64:].hex() == legacy


def test_v2_nonce_checkpoints_by_increment() -> None:
    # tendermint-rs test/src/test/unit/p2p/secret_connection/nonce.rs test_incr_nonce: checkpoint i = i+1 increments.
    expected = {
        0: "000000000100000000000000",
        1: "000000000200000000000000",
        510: "00000000ff01000000000000",
        511: "000000000002000000000000",
        512: "000000000102000000000000",
        1023: "000000000004000000000000",
    }
    for i, want in expected.items():
        assert _NONCE.pack(i + 1).hex() == want
    assert _NONCE.pack(2**64 - 1).hex() == "00000000" + "ff" * 8


def test_v3_node_id_and_sort() -> None:
    # tendermint-rs public_key.rs test_secret_connection_pubkey_serialization
    pub = bytes.fromhex("F7FEB0B5BA0760B2C58893E329475D1EA81781DD636E37144B6D599AD38AA825")
    assert node_id(pub) == "117c95c4fd7e636c38d303493302d2c271a39669"
    # tendermint-rs secret_connection.rs test_sort: 00..00 sorts below 00..01 (byte-wise, as our handshake does)
    a, b = bytes(32), bytes(31) + b"\x01"
    assert sorted((b, a)) == [a, b]


def test_v4_merlin_simple_transcript() -> None:
    # gtank/merlin merlin_test.go and curve25519-voi primitives/merlin/merlin_test.go TestSimpleTranscript
    t = MerlinTranscript(b"test protocol")
    t.append_message(b"some label", b"some data")
    assert t.challenge_bytes(b"challenge", 32).hex() == (
        "d5a21972d0d5fe320c0d263fac7fffb8145aa640af6e9bca177c03c7efcf0615"
    )


def test_v4_merlin_complex_transcript() -> None:
    # same files, TestComplexTranscript
    t = MerlinTranscript(b"test protocol")
    t.append_message(b"step1", b"some data")
    data = b"c" * 1024
    c = b""
    for _ in range(32):
        c = t.challenge_bytes(b"challenge", 32)
        t.append_message(b"bigdata", data)
        t.append_message(b"challengedata", c)
    assert c.hex() == "a8c933f54fae76e3f9bea93648c1308e7dfa2152dd51674ff3ca438351cf003c"


def test_v4_strobe_conformance_pair() -> None:
    # STROBE-128 conformance values quoted in tests/vectors/README.md V4 (merlin-transcripts' test_merlin.py and an
    # independent Java STROBE test): checks the STROBE layer under Merlin directly.
    s = Strobe128.new(b"Conformance Test Protocol")
    s.meta_ad(b"ms", False)
    s.meta_ad(b"g", True)
    s.ad(b"\x63" * 1024, False)
    s.meta_ad(b"prf", False)
    prf = bytes(s.prf(32, False))
    assert prf.hex() == "b48e645ca17c667fd5206ba57a6a228d72d8e1903814d3f17f622996d7cfefb0"
    s.meta_ad(b"key", False)
    s.key(prf, False)
    s.meta_ad(b"prf", False)
    assert bytes(s.prf(32, False)).hex() == "07e45cce8078cee259e3e375bb85d75610e2d1e1201c5f645045a194edd49ff8"


def test_check_peer_id() -> None:
    good = node_id(bytes(32))
    check_peer_id(good, good)
    check_peer_id(good.upper(), good)  # IDs are hex: case does not matter
    with pytest.raises(PeerIdMismatch, match="not the pinned"):
        check_peer_id("00" * 20, good)
    with pytest.raises(PeerIdMismatch):
        check_peer_id(good[:-1], good)  # a prefix is not a match
    with pytest.raises(PeerIdMismatch):
        check_peer_id("é" * 40, good)  # non-ASCII input is a mismatch, not a crash


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_node_id_shape_and_injective_on_samples(a: bytes, b: bytes) -> None:
    ida, idb = node_id(a), node_id(b)
    assert len(ida) == 40 and int(ida, 16) >= 0 and ida == ida.lower()
    assert (ida == idb) == (a == b)


def test_identity_as_seed_and_no_keys_in_repr() -> None:
    seed = bytes(range(32))
    hs = Handshake(seed, ephemeral_secret=bytes(32))
    assert hs.data_to_send()[:3] == b"\x22\x0a\x20"
    key = bytes(range(1, 33))
    text = repr(FrameCodec(key, key))
    assert key.hex() not in text and "sent=0" in text
