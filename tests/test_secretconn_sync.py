"""SecretConnection over blocking sockets: upstream vectors (VECTORS.md V1-V3, D1) and bad input."""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from pykms.errors import FrameError, HandshakeError, PeerIdMismatch
from pykms.secretconn.sync import (
    LOW_ORDER_POINTS,
    SEALED_FRAME_SIZE,
    BlockingSecretStream,
    _nonce,
    challenge_of,
    derive_keys,
    node_id,
    secret_connection_sync,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "VECTORS.md"

# VECTORS.md D1 (derived, consistent with every upstream vector): harness fixture key (V11 row 1) and the
# cometbft internal/test key (V11 row 2); ephemeral secrets SHA-256("ephemeral A") and SHA-256("ephemeral B").
SEED_A = bytes.fromhex("f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add")
SEED_B = bytes.fromhex("11592a24efe3217a77ae40125df87d627c93a185d15e106bea0f5c415c4f1674")
EPH_A = hashlib.sha256(b"ephemeral A").digest()
EPH_B = hashlib.sha256(b"ephemeral B").digest()
D1 = {
    "a_pub": "36efecdb25add0345d15e1889ecb318d0a512f349ef077cdc59594043b2cc949",
    "b_pub": "ed02498385ede0bbece62d3f6dac00a127b7c5383ff0324997958a2ec38c8072",
    "dh": "211c68337fba4a6226dcf37c744dd7f849c5a01e54435601d8d7bfa5954de159",
    "okm0": "e925d2cf73d58ec6bed4e2e4b0c7dc05129bb4a02cdfee29eb1c83b9e0d68f9c",
    "okm1": "cd3fbe7cf1e304ae1a91f43d45e2a20758856a8457e4ca9dec41a009099a25f5",
    "challenge": "cbbf38de3c57545f5ebf5a54a4d450bbf27d2bc385ab74efd418c693e27b80cb",
    "a_authsig": "660a220a20642b2e4e369ccc4ca89fbd2798ac70bf0bbe8eaadbab9387df242370ad121717124041840cc4724d9fcc03ff"
    "91f947add709f88ed7a8f965d6d702a2a715965dcd4d2198a380a925b7c17b4fa0bfb35c5f8ed51254fa42711d3e7a869c86f9d4f00f",
    "frame0_sha": "b32653afbeb4da3461ded587d8ac7d9a17ab1b48096534ce50aca848899a52b9",
    "frame1_sha": "0df13ea98d20db07cc613ccdd1056c179bd0de4a5e9f4af826ea67d5f44347bc",
}


def _golden_lines() -> list[str]:
    """VECTORS.md V1: cometbft p2p/conn/testdata/TestDeriveSecretsAndChallengeGolden.golden (32 lines)."""
    text = SHARED.read_text() if SHARED.exists() else ""
    return [ln for ln in text.splitlines() if ln.count(",") == 4 and ln.split(",")[1] in ("true", "false")]


def test_v1_hkdf_golden_file() -> None:
    lines = _golden_lines()
    if not lines:
        pytest.skip("../shared/VECTORS.md not beside the repository")
    assert len(lines) == 32
    for line in lines:
        dh, least, recv, send, _legacy = line.split(",")
        assert derive_keys(bytes.fromhex(dh), least == "true") == (bytes.fromhex(recv), bytes.fromhex(send))


def test_v2_nonces() -> None:
    # tendermint-rs test/src/test/unit/p2p/secret_connection/nonce.rs test_incr_nonce: after i+1 increments
    for increments, expected in [(1, "000000000100000000000000"), (2, "000000000200000000000000"),
                                 (511, "00000000ff01000000000000"), (512, "000000000002000000000000"),
                                 (513, "000000000102000000000000"), (1024, "000000000004000000000000")]:  # fmt: skip
        assert _nonce(increments).hex() == expected


def test_nonce_never_wraps() -> None:
    a, b = socket.socketpair()
    try:
        stream = BlockingSecretStream(a, bytes(32), bytes(32))
        stream._send_nonce = 2**64 - 1  # the last usable nonce (Go panics on the increment after it)
        stream.seal_frames(b"x")
        with pytest.raises(FrameError, match="nonce exhausted"):
            stream.seal_frames(b"y")
        with pytest.raises(FrameError):
            stream.seal_frames(b"z")  # poisoned
    finally:
        a.close()
        b.close()


def test_v3_node_id() -> None:
    # tendermint-rs public_key.rs test_secret_connection_pubkey_serialization
    pub = bytes.fromhex("F7FEB0B5BA0760B2C58893E329475D1EA81781DD636E37144B6D599AD38AA825")
    assert node_id(pub) == "117c95c4fd7e636c38d303493302d2c271a39669"


def test_d1_derivation_challenge_and_frames() -> None:
    dh = bytes.fromhex(D1["dh"])
    a_pub, b_pub = bytes.fromhex(D1["a_pub"]), bytes.fromhex(D1["b_pub"])
    lo, hi = sorted((a_pub, b_pub))
    assert lo == a_pub
    recv, send = derive_keys(dh, True)  # A is least
    assert (recv.hex(), send.hex()) == (D1["okm0"], D1["okm1"])
    challenge = challenge_of(lo, hi, dh)
    assert challenge.hex() == D1["challenge"]
    a_sig = SigningKey(SEED_A).sign(challenge).signature
    assert D1["a_authsig"].endswith(a_sig.hex())
    x, y = socket.socketpair()
    try:
        stream = BlockingSecretStream(x, send, recv)
        frame0 = stream.seal_frames(bytes.fromhex(D1["a_authsig"]))
        frame1 = stream.seal_frames(bytes.fromhex("023a00"))
        assert len(frame0) == len(frame1) == SEALED_FRAME_SIZE
        assert hashlib.sha256(frame0).hexdigest() == D1["frame0_sha"]
        assert hashlib.sha256(frame1).hexdigest() == D1["frame1_sha"]
    finally:
        x.close()
        y.close()


def _pair(
    key_a: SigningKey, key_b: SigningKey, **kw_b: object
) -> tuple[BlockingSecretStream, BlockingSecretStream | BaseException]:
    a, b = socket.socketpair()
    result: list[BlockingSecretStream | BaseException] = []

    def side_b() -> None:
        try:
            result.append(secret_connection_sync(b, key_b, timeout=2, **kw_b))  # type: ignore[arg-type]
        except BaseException as exc:
            result.append(exc)
            b.close()

    t = threading.Thread(target=side_b)
    t.start()
    try:
        stream_a = secret_connection_sync(a, key_a, timeout=2, ephemeral_secret=EPH_A)
    finally:
        t.join()
    return stream_a, result[0]


def test_handshake_both_roles_and_messages() -> None:
    key_a, key_b = SigningKey(SEED_A), SigningKey(SEED_B)
    stream_a, stream_b = _pair(key_a, key_b, ephemeral_secret=EPH_B)
    assert isinstance(stream_b, BlockingSecretStream)
    assert stream_a.remote_pubkey == bytes(key_b.verify_key)
    assert stream_b.remote_id == node_id(bytes(key_a.verify_key))
    for size in (1, 1023, 1024, 1025, 5000):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        stream_a.send(payload)
        got = b""
        while len(got) < size:
            got += stream_b.recv()
        assert got == payload
    stream_a.close()
    assert stream_b.recv() == b""
    stream_b.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=5000), min_size=1, max_size=4))
def test_messages_of_any_size_survive(messages: list[bytes]) -> None:
    stream_a, stream_b = _pair(SigningKey.generate(), SigningKey.generate())
    assert isinstance(stream_b, BlockingSecretStream)
    try:
        for message in messages:
            stream_b.send(message)
            got = b""
            while len(got) < len(message):
                got += stream_a.recv()
            assert got == message
    finally:
        stream_a.close()
        stream_b.close()


def test_peer_id_pinning() -> None:
    key_a, key_b = SigningKey.generate(), SigningKey.generate()
    good = node_id(bytes(key_a.verify_key))
    stream_a, stream_b = _pair(key_a, key_b, expected_peer_id=good.upper())
    assert isinstance(stream_b, BlockingSecretStream)
    stream_a.close()
    stream_b.close()
    stream_a, err = _pair(key_a, key_b, expected_peer_id="00" * 20)
    assert isinstance(err, PeerIdMismatch)
    stream_a.close()


@pytest.mark.parametrize("point", sorted(LOW_ORDER_POINTS))
def test_low_order_ephemeral_keys_refused(point: bytes) -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x22\x0a\x20" + point)
        with pytest.raises(HandshakeError, match="low-order"):
            secret_connection_sync(a, SigningKey.generate(), timeout=1)
    finally:
        a.close()
        b.close()


def test_stalled_peer_times_out() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x22\x0a")  # then nothing
        with pytest.raises(HandshakeError, match="timed out"):
            secret_connection_sync(a, SigningKey.generate(), timeout=0.3)
    finally:
        a.close()
        b.close()


def test_garbage_and_bad_signature_refused() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(20))
        with pytest.raises(HandshakeError, match="malformed ephemeral"):
            secret_connection_sync(a, SigningKey.generate(), timeout=1)
    finally:
        a.close()
        b.close()


def _established() -> tuple[BlockingSecretStream, BlockingSecretStream]:
    stream_a, stream_b = _pair(SigningKey.generate(), SigningKey.generate())
    assert isinstance(stream_b, BlockingSecretStream)
    return stream_a, stream_b


@pytest.mark.parametrize("bit", [0, 7, 500, 1027 * 8, SEALED_FRAME_SIZE * 8 - 1])
def test_any_flipped_bit_poisons(bit: int) -> None:
    stream_a, stream_b = _established()
    frame = bytearray(stream_a.seal_frames(b"\x02\x3a\x00"))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        stream_b.open_frame(bytes(frame))
    with pytest.raises(FrameError, match="earlier error"):
        stream_b.open_frame(stream_a.seal_frames(b"ok"))
    stream_a.close()
    stream_b.close()


def test_replayed_and_reordered_frames_poison() -> None:
    stream_a, stream_b = _established()
    first = stream_a.seal_frames(b"one")
    second = stream_a.seal_frames(b"two")
    assert stream_b.open_frame(first) == b"one"
    with pytest.raises(FrameError):
        stream_b.open_frame(first)  # replay
    stream_c, stream_d = _established()
    one = stream_c.seal_frames(b"one")
    two = stream_c.seal_frames(b"two")
    with pytest.raises(FrameError):
        stream_d.open_frame(two)  # reordered
    del one, second
    for s in (stream_a, stream_b, stream_c, stream_d):
        s.close()


def test_declared_length_above_1024_poisons() -> None:
    stream_a, stream_b = _established()
    # Seal a frame by hand whose length field says 1025.
    plain = (1025).to_bytes(4, "little") + bytes(1024)
    sealed = stream_a._send_aead.encrypt(_nonce(stream_a._send_nonce), plain, None)
    with pytest.raises(FrameError, match="more than 1024"):
        stream_b.open_frame(sealed)
    stream_a.close()
    stream_b.close()
