"""Sans-IO edge cases of the handshake and frame codec, and the blocking adapters' less travelled paths."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from pykms.errors import ConnectionLost, FrameError, HandshakeError, LinkTimeout
from pykms.secretconn.core import SEALED_FRAME_SIZE, FrameCodec, Handshake, challenge_of, derive_keys
from pykms.secretconn.sync import (
    BlockingPlainStream,
    BlockingSecretStream,
    secret_connection_sync,
    set_kernel_timeouts,
)


def _peer_codec(hs: Handshake) -> tuple[bytes, FrameCodec, bytes]:
    """A hand-driven peer for ``hs``: (its 35-byte message, its codec, the challenge)."""
    eph = X25519PrivateKey.generate()
    pub = eph.public_key().public_bytes_raw()
    dh = eph.exchange(X25519PublicKey.from_public_bytes(hs.own_ephemeral))
    lo, hi = sorted((pub, hs.own_ephemeral))
    recv_key, send_key = derive_keys(dh, pub == lo)
    return b"\x22\x0a\x20" + pub, FrameCodec(send_key, recv_key), challenge_of(lo, hi, dh)


def _auth(pub_field: bytes, sig: bytes) -> bytes:
    body = b"\x0a" + bytes([len(pub_field)]) + pub_field + b"\x12" + bytes([len(sig)]) + sig
    return bytes([len(body)]) + body


@pytest.mark.parametrize(
    ("plaintext", "match"),
    [
        (_auth(b"\x0a\x1f" + bytes(31), bytes(64)), "ed25519 pubkey of 31 bytes"),
        (_auth(b"\x0a\x20" + bytes(32), bytes(63)), "challenge verification failed"),
        (b"\x05\x0a\x09\xff\xff\xff", "malformed AuthSigMessage"),
        (b"\xff" * 12, "malformed AuthSigMessage length"),
    ],
)
def test_malformed_auth_sig(plaintext: bytes, match: str) -> None:
    hs = Handshake(SigningKey.generate())
    first, codec, _ = _peer_codec(hs)
    with pytest.raises(HandshakeError, match=match):
        hs.receive_data(first + codec.seal(plaintext))
    with pytest.raises(HandshakeError, match="already failed"):
        hs.receive_data(b"")


def test_garbage_where_the_auth_frame_belongs() -> None:
    hs = Handshake(SigningKey.generate())
    first, _, _ = _peer_codec(hs)
    with pytest.raises(HandshakeError, match="frame authentication failed"):
        hs.receive_data(first + bytes(SEALED_FRAME_SIZE))


def test_data_after_the_auth_sig_is_kept_and_done_refuses_more() -> None:
    key = SigningKey.generate()
    hs = Handshake(SigningKey.generate())
    first, codec, challenge = _peer_codec(hs)
    hs.receive_data(
        first + codec.seal(_auth(b"\x0a\x20" + bytes(key.verify_key), key.sign(challenge).signature) + b"early")
    )
    assert hs.done and hs.leftover == b"early"
    with pytest.raises(HandshakeError, match="already complete"):
        hs.receive_data(b"x")


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 1100))
def test_codec_chunking_invariance_and_eof(message: bytes, step: int) -> None:
    a, b = FrameCodec(bytes(32), bytes(range(32))), FrameCodec(bytes(range(32)), bytes(32))
    sealed = a.seal(message)
    got = b"".join(b.feed(sealed[i : i + step]) for i in range(0, len(sealed), step))
    assert got == message
    b.eof()  # between frames: fine
    b.feed(a.seal(b"partial")[: step % SEALED_FRAME_SIZE or 1])
    with pytest.raises(FrameError, match="into a frame"):
        b.eof()


def test_open_refuses_a_short_frame() -> None:
    codec = FrameCodec(bytes(32), bytes(32))
    with pytest.raises(FrameError, match="expected 1044"):
        codec.open(bytes(100))
    with pytest.raises(FrameError, match="earlier error"):
        codec.seal(b"x")


def test_blocking_plain_stream() -> None:
    a, b = socket.socketpair()
    sa, sb = BlockingPlainStream(a), BlockingPlainStream(b)
    sa.send(b"hello")
    assert sb.recv() == b"hello"
    sa.close()
    assert sb.recv() == b""
    sb.close()


def _sync_pair() -> tuple[BlockingSecretStream, BlockingSecretStream, socket.socket]:
    a, b = socket.socketpair()
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(secret_connection_sync(b, SigningKey.generate(), timeout=2)))
    t.start()
    sa = secret_connection_sync(a, SigningKey.generate(), timeout=2)
    t.join()
    sb = result[0]
    assert isinstance(sb, BlockingSecretStream)
    return sa, sb, b


def test_blocking_stream_eof_mid_frame_poisons() -> None:
    sa, sb, b = _sync_pair()
    b.sendall(sb.codec.seal(b"cut")[:500])
    b.close()
    with pytest.raises(FrameError, match="middle of a frame"):
        sa.recv()
    with pytest.raises(FrameError, match="earlier error"):
        sa.send(b"x")
    sa.close()


def test_blocking_stream_write_failure_poisons() -> None:
    sa, sb, _ = _sync_pair()
    sb.close()
    caught: BaseException | None = None
    for _ in range(100):  # the first writes may still land in the socket buffer
        try:
            sa.send(bytes(4096))
        except ConnectionLost as exc:  # the stream maps the socket's OSError to the project's error
            caught = exc
            break
    assert isinstance(caught, ConnectionLost) and not isinstance(caught, OSError)
    with pytest.raises(FrameError, match="write failed"):
        sa.send(b"x")
    sa.close()


def test_plain_stream_with_kernel_timeouts() -> None:
    """The runtime's sockets: blocking, with SO_RCVTIMEO in place of CPython's poll-before-every-call
    timeout; an expired wait is a LinkTimeout (the session's "link is considered dead"), and loses nothing."""
    a, b = socket.socketpair()
    with a, b:
        set_kernel_timeouts(b, 0.2)
        assert b.gettimeout() is None  # no Python-level timeout: one recv syscall per read
        stream = BlockingPlainStream(b)
        a.sendall(b"ping")
        assert stream.recv() == b"ping"
        started = time.monotonic()
        with pytest.raises(LinkTimeout):
            stream.recv()
        assert 0.15 <= time.monotonic() - started < 2.0
        a.sendall(b"after")
        assert stream.recv() == b"after"


def test_secret_stream_with_kernel_timeouts() -> None:
    sa, sb, _ = _sync_pair()
    try:
        set_kernel_timeouts(sa.sock, 0.2)
        sb.send(b"request")
        assert sa.recv() == b"request"
        with pytest.raises(LinkTimeout):
            sa.recv()
        sb.send(b"next")  # a timeout between frames loses nothing
        assert sa.recv() == b"next"
        sa.send(b"reply")
        assert sb.recv() == b"reply"
    finally:
        sa.close()
        sb.close()
