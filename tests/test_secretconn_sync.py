"""SecretConnection over real loopback sockets with the blocking adapter (the production one), and every refusal
of bad input.

Honest peers are our own handshake on both ends (the protocol is symmetric); hostile peers are built from the pure
pieces of ``pykms.secretconn.core`` so that each test changes exactly one thing on the wire.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from pykms.errors import ConnectionLost, FrameError, HandshakeError, LinkTimeout, PeerIdMismatch, ProtocolError
from pykms.secretconn.core import (
    _NONCE,
    DATA_MAX_SIZE,
    SEALED_FRAME_SIZE,
    FrameCodec,
    Handshake,
    challenge_of,
    derive_keys,
    node_id,
)
from pykms.secretconn.sync import (
    BlockingPlainStream,
    BlockingSecretStream,
    secret_connection_sync,
    set_kernel_timeouts,
)

T = 2.0  # generous handshake timeout for honest peers on a loaded CI machine
R = TypeVar("R")
Serve = Callable[[socket.socket], None]


def _with_peer(serve: Serve, client: Callable[[socket.socket], R]) -> R:
    """Run ``serve`` on one accepted TCP connection (in a thread) and ``client`` on the dialled one; both finish."""
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def run() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            serve(conn)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        sock = socket.create_connection(listener.getsockname(), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            result = client(sock)
        finally:
            sock.close()
        thread.join(10)
        assert not thread.is_alive(), "the peer did not finish"
    finally:
        listener.close()
    if errors:
        raise errors[0]
    return result


def _established(sock: socket.socket, key: SigningKey | bytes, **kw: object) -> BlockingSecretStream:
    """Our handshake, then the kernel read/write timeouts the runtime sets on a live link."""
    stream = secret_connection_sync(sock, key, timeout=T, **kw)  # type: ignore[arg-type]
    set_kernel_timeouts(sock, 10)
    return stream


def _drain_until_eof(sock: socket.socket) -> None:
    """Keep the link open, reading and ignoring, until the other side gives up."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "unexpected EOF"
        got += chunk
    return got


def _recv_exactly(stream: BlockingSecretStream | BlockingPlainStream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = stream.recv()
        assert chunk, "unexpected EOF"
        got += chunk
    return got


# -- honest peers ----------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.lists(st.binary(max_size=5000), min_size=1, max_size=4))
def test_loopback_both_roles_messages_of_any_size(messages: list[bytes]) -> None:
    key_a, key_b = SigningKey.generate(), SigningKey.generate()

    def listener(sock: socket.socket) -> None:
        stream = _established(sock, key_b)
        assert stream.remote_id == node_id(bytes(key_a.verify_key))
        for message in messages:
            stream.send(_recv_exactly(stream, len(message))[::-1])
        assert stream.recv() == b""  # the dialler closed cleanly between frames
        stream.close()

    def dialler(sock: socket.socket) -> None:
        stream = _established(sock, key_a, expected_peer_id=node_id(bytes(key_b.verify_key)))
        assert stream.remote_pubkey == bytes(key_b.verify_key)
        for message in messages:
            stream.send(message)
            assert _recv_exactly(stream, len(message)) == message[::-1]
        stream.close()

    _with_peer(listener, dialler)


def _pump(src: socket.socket, dst: socket.socket, cuts: list[int]) -> None:
    """Copy ``src`` to ``dst`` re-cut at the given sizes, one write per piece; pass the EOF on."""
    i = 0
    with_error = False
    try:
        while chunk := src.recv(65536):
            while chunk:
                n = cuts[i % len(cuts)]
                i += 1
                dst.sendall(chunk[:n])
                chunk = chunk[n:]
    except OSError:
        with_error = True
    if not with_error:
        dst.shutdown(socket.SHUT_WR)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_of_the_tcp_stream(data: st.DataObject) -> None:
    """A relay between dialler and listener re-cuts the byte stream at arbitrary points in both directions."""
    cuts = data.draw(st.lists(st.integers(1, 1500), min_size=1, max_size=8), label="cuts")
    message = data.draw(st.binary(max_size=5000), label="message")
    key_a, key_b = SigningKey.generate(), SigningKey.generate()

    def listener(sock: socket.socket) -> None:
        stream = _established(sock, key_b)
        stream.send(_recv_exactly(stream, len(message)) + b"!")
        assert stream.recv() == b""

    def via_relay(to_listener: socket.socket) -> None:
        def relay(from_dialler: socket.socket) -> None:
            back = threading.Thread(target=_pump, args=(to_listener, from_dialler, cuts), daemon=True)
            back.start()
            _pump(from_dialler, to_listener, cuts)
            back.join(10)

        def dialler(sock: socket.socket) -> None:
            stream = _established(sock, key_a)
            stream.send(message)
            assert _recv_exactly(stream, len(message) + 1) == message + b"!"
            sock.shutdown(socket.SHUT_WR)
            assert stream.recv() == b""

        _with_peer(relay, dialler)

    _with_peer(listener, via_relay)


def test_first_frame_in_the_same_segment_as_the_ephemeral_key() -> None:
    """A peer that writes its ephemeral key, AuthSig frame and first data frame in one go (nothing is lost)."""
    key_a, key_b = SigningKey.generate(), SigningKey.generate()

    def listener(sock: socket.socket) -> None:
        # Sans-IO peer: wait for the dialler's ephemeral key, then send everything of ours in one write.
        hs = Handshake(key_b)
        first = hs.data_to_send()
        hs.receive_data(_read_exactly(sock, 35))
        assert hs.codec is not None
        sock.sendall(first + hs.data_to_send() + hs.codec.seal(b"hello, early data"))
        hs.receive_data(_read_exactly(sock, SEALED_FRAME_SIZE))
        assert hs.done

    def dialler(sock: socket.socket) -> None:
        stream = _established(sock, key_a)
        assert _recv_exactly(stream, 17) == b"hello, early data"

    _with_peer(listener, dialler)


def test_plain_stream_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "pv.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    payload = os.urandom(5000)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        stream = BlockingPlainStream(conn)
        got.append(_recv_exactly(stream, len(payload)))
        stream.send(b"ok")
        stream.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    set_kernel_timeouts(sock, 10)
    stream = BlockingPlainStream(sock)
    assert stream.remote_id is None and stream.remote_pubkey is None
    stream.send(payload)
    assert _recv_exactly(stream, 2) == b"ok"
    assert stream.recv() == b""
    thread.join(10)
    assert got == [payload]
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(ConnectionLost):
        stream.send(b"x")
    with pytest.raises(ConnectionLost):
        stream.recv()
    server.close()


# -- hostile peers during the handshake -------------------------------------------------------------------------


def _refused(raw_peer: Serve, **kw: object) -> BaseException:
    """Dial ``raw_peer`` and return what our handshake raised."""
    kw.setdefault("timeout", T)

    def dialler(sock: socket.socket) -> BaseException:
        try:
            secret_connection_sync(sock, SigningKey.generate(), **kw)  # type: ignore[arg-type]
        except BaseException as exc:
            return exc
        raise AssertionError("the handshake should have been refused")

    return _with_peer(raw_peer, dialler)


def _sends(first: bytes) -> Serve:
    def peer(sock: socket.socket) -> None:
        sock.sendall(first)
        _drain_until_eof(sock)  # until the dialler gives up

    return peer


@pytest.mark.parametrize(
    "key",
    [
        bytes(32),
        (1).to_bytes(32, "little"),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        (2**255 - 19).to_bytes(32, "little"),
    ],
    ids=["zero", "one", "order8", "p"],
)
def test_low_order_ephemeral_key(key: bytes) -> None:
    exc = _refused(_sends(b"\x22\x0a\x20" + key))
    assert isinstance(exc, HandshakeError) and "low-order" in str(exc)


def test_all_zero_dh_from_a_key_outside_the_list() -> None:
    # 00..00 with the top bit set: X25519 ignores bit 255, so this is the zero point in another spelling, absent
    # from tendermint-rs's list; the all-zero DH check (docs/protocol.md §1.2 step 6) is what refuses it.
    exc = _refused(_sends(b"\x22\x0a\x20" + bytes(31) + b"\x80"))
    assert isinstance(exc, HandshakeError) and "all zero" in str(exc)


def test_reflected_ephemeral_key() -> None:
    def mirror(sock: socket.socket) -> None:
        sock.sendall(_read_exactly(sock, 35))
        _drain_until_eof(sock)

    exc = _refused(mirror)
    assert (isinstance(exc, HandshakeError) and "equals ours" in str(exc)) or "echoed" in str(exc)


@pytest.mark.parametrize(
    "first", [b"\x22\x0a\x21" + bytes(32), b"\x23\x0a\x20" + bytes(32), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(8)]
)
def test_malformed_ephemeral_message(first: bytes) -> None:
    exc = _refused(_sends(first))
    assert isinstance(exc, HandshakeError) and "malformed ephemeral" in str(exc)


def _evil(auth_plaintext: Callable[[bytes, SigningKey], bytes], *, then: bytes = b"") -> Serve:
    """A peer that does the key exchange honestly and then sends ``auth_plaintext(challenge, key)`` sealed."""

    def peer(sock: socket.socket) -> None:
        eph = X25519PrivateKey.generate()
        own = eph.public_key().public_bytes_raw()
        sock.sendall(b"\x22\x0a\x20" + own)
        remote = _read_exactly(sock, 35)[3:]
        dh = eph.exchange(X25519PublicKey.from_public_bytes(remote))
        lo, hi = sorted((own, remote))
        recv_key, send_key = derive_keys(dh, own == lo)
        codec = FrameCodec(send_key, recv_key)
        sock.sendall(codec.seal(auth_plaintext(challenge_of(lo, hi, dh), SigningKey.generate())) + then)
        _drain_until_eof(sock)

    return peer


def _auth(pub_case: bytes, sig: bytes) -> bytes:
    body = b"\x0a" + bytes([len(pub_case)]) + pub_case + b"\x12" + bytes([len(sig)]) + sig
    return bytes([len(body)]) + body


def test_bad_challenge_signature() -> None:
    exc = _refused(_evil(lambda ch, k: _auth(b"\x0a\x20" + bytes(k.verify_key), k.sign(ch[::-1]).signature)))
    assert isinstance(exc, HandshakeError) and "challenge verification failed" in str(exc)


def test_signature_by_another_key() -> None:
    other = SigningKey.generate()
    exc = _refused(_evil(lambda ch, k: _auth(b"\x0a\x20" + bytes(k.verify_key), other.sign(ch).signature)))
    assert isinstance(exc, HandshakeError) and "challenge verification failed" in str(exc)


def test_secp256k1_key_refused() -> None:
    exc = _refused(_evil(lambda ch, k: _auth(b"\x12\x21\x02" + bytes(32), k.sign(ch).signature)))
    assert isinstance(exc, HandshakeError) and "expected ed25519 pubkey" in str(exc)


def test_missing_key_refused() -> None:
    exc = _refused(_evil(lambda ch, k: _auth(b"", k.sign(ch).signature)))
    assert isinstance(exc, HandshakeError) and "expected ed25519 pubkey" in str(exc)


def test_oversized_auth_sig_refused() -> None:
    exc = _refused(_evil(lambda ch, k: b"\xff\xff\x03" + bytes(40)))
    assert isinstance(exc, HandshakeError) and "too large" in str(exc)


def test_peer_id_mismatch() -> None:
    exc = _refused(_evil(lambda ch, k: _auth(b"\x0a\x20" + bytes(k.verify_key), k.sign(ch).signature)),
                   expected_peer_id="ab" * 20)  # fmt: skip
    assert isinstance(exc, PeerIdMismatch)


def test_stall_before_the_ephemeral_key() -> None:
    exc = _refused(_sends(b""), timeout=0.3)
    assert isinstance(exc, HandshakeError) and "timed out" in str(exc)


def test_stall_mid_handshake() -> None:
    # Half a frame of "AuthSig", then nothing.
    key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    exc = _refused(_sends(b"\x22\x0a\x20" + key + bytes(500)), timeout=0.3)
    assert isinstance(exc, HandshakeError) and "timed out" in str(exc)


def test_peer_closes_mid_handshake() -> None:
    def hang_up(sock: socket.socket) -> None:
        _read_exactly(sock, 35)  # read what the dialler sent so the close is a FIN, not a reset
        sock.sendall(b"\x22\x0a")

    exc = _refused(hang_up)
    assert isinstance(exc, HandshakeError) and "closed" in str(exc)


def test_peer_resets_mid_handshake() -> None:
    def reset(sock: socket.socket) -> None:
        _read_exactly(sock, 35)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    exc = _refused(reset)
    assert isinstance(exc, HandshakeError) and not isinstance(exc, OSError)


def test_handshake_is_poisoned_after_a_refusal() -> None:
    hs = Handshake(SigningKey.generate())
    with pytest.raises(HandshakeError, match="low-order"):
        hs.receive_data(b"\x22\x0a\x20" + bytes(32))
    with pytest.raises(HandshakeError, match="already failed"):
        hs.receive_data(b"\x22\x0a\x20" + os.urandom(32))
    assert not hs.done


# -- hostile frames after the handshake --------------------------------------------------------------------------


def _raw_handshake(sock: socket.socket) -> FrameCodec:
    hs = Handshake(SigningKey.generate())
    sock.sendall(hs.data_to_send())
    while not hs.done:
        hs.receive_data(sock.recv(65536))
        sock.sendall(hs.data_to_send())
    assert hs.codec is not None
    return hs.codec


def _after_handshake(tamper: Callable[[FrameCodec], bytes]) -> list[BaseException | bytes]:
    """An honest handshake, then the listener writes ``tamper(its codec)`` raw; return what two recvs gave."""

    def listener(sock: socket.socket) -> None:
        sock.sendall(tamper(_raw_handshake(sock)))
        sock.shutdown(socket.SHUT_WR)
        _drain_until_eof(sock)

    def dialler(sock: socket.socket) -> list[BaseException | bytes]:
        stream = _established(sock, SigningKey.generate())
        outcomes: list[BaseException | bytes] = []
        for _ in range(2):
            try:
                outcomes.append(stream.recv())
            except ProtocolError as exc:
                outcomes.append(exc)
        stream.close()
        return outcomes

    return _with_peer(listener, dialler)


def _assert_poisoned(outcomes: list[BaseException | bytes], match: str) -> None:
    first, second = outcomes
    assert isinstance(first, FrameError) and match in str(first), first
    assert isinstance(second, FrameError) and "earlier error" in str(second), second


@settings(max_examples=30, deadline=None)
@given(st.integers(0, SEALED_FRAME_SIZE * 8 - 1))
def test_any_flipped_bit_in_a_frame(bit: int) -> None:
    def tamper(codec: FrameCodec) -> bytes:
        frame = bytearray(codec.seal(b"\x02\x3a\x00"))
        frame[bit // 8] ^= 1 << (bit % 8)
        return bytes(frame)

    _assert_poisoned(_after_handshake(tamper), "authentication failed")


def test_replayed_frame() -> None:
    def tamper(codec: FrameCodec) -> bytes:
        frame = codec.seal(b"once")
        return frame + frame

    first, second = _after_handshake(tamper)
    assert first == b"once"  # the original is delivered ...
    assert isinstance(second, FrameError) and "authentication failed" in str(second)  # ... its replay is not


def test_reordered_frames() -> None:
    def tamper(codec: FrameCodec) -> bytes:
        one, two = codec.seal(b"one"), codec.seal(b"two")
        return two + one

    _assert_poisoned(_after_handshake(tamper), "authentication failed")


def test_declared_length_above_1024() -> None:
    def tamper(codec: FrameCodec) -> bytes:
        plain = (DATA_MAX_SIZE + 1).to_bytes(4, "little") + bytes(DATA_MAX_SIZE)
        return codec._send.encrypt(_NONCE.pack(codec.send_nonce), plain, None)

    _assert_poisoned(_after_handshake(tamper), "more than 1024")


def test_eof_in_the_middle_of_a_frame() -> None:
    _assert_poisoned(_after_handshake(lambda codec: codec.seal(b"cut")[:700]), "in the middle of a frame")


def test_send_after_close_and_poisoned_send() -> None:
    def listener(sock: socket.socket) -> None:
        stream = _established(sock, SigningKey.generate())
        assert stream.recv() == b"bye"

    def dialler(sock: socket.socket) -> None:
        stream = _established(sock, SigningKey.generate())
        stream.send(b"bye")
        stream.close()
        stream.close()  # idempotent
        with pytest.raises(FrameError):
            stream.send(b"more")
        with pytest.raises(FrameError):
            stream.recv()

    _with_peer(listener, dialler)


# -- the mapping of socket errors to the project's own -----------------------------------------------------------


def test_reset_becomes_connection_lost_and_a_failed_write_poisons() -> None:
    """A reset by the peer reads as ConnectionLost (never OSError); a write that fails poisons the stream."""

    def resetter(sock: socket.socket) -> None:
        assert _established(sock, SigningKey.generate()).recv() == b"ready"  # both handshakes are over
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    def dialler(sock: socket.socket) -> None:
        stream = _established(sock, SigningKey.generate())
        stream.send(b"ready")
        with pytest.raises(ConnectionLost, match="reset"):
            stream.recv()
        lost: ConnectionLost | None = None
        for _ in range(100):  # the first write after a reset may still be accepted locally
            try:
                stream.send(b"x" * 5000)
            except ConnectionLost as exc:
                lost = exc
                break
        assert lost is not None, "writes to a reset connection kept succeeding"
        with pytest.raises(FrameError, match="earlier error"):
            stream.send(b"x")

    _with_peer(resetter, dialler)


def test_silent_peer_becomes_link_timeout() -> None:
    """A peer that completes the handshake and then says nothing: recv gives up as LinkTimeout, not OSError."""
    done = threading.Event()

    def silent(sock: socket.socket) -> None:
        _established(sock, SigningKey.generate())
        done.wait(10)

    def dialler(sock: socket.socket) -> None:
        stream = secret_connection_sync(sock, SigningKey.generate(), timeout=T)
        set_kernel_timeouts(sock, 0.2)
        try:
            with pytest.raises(LinkTimeout):
                stream.recv()
        finally:
            done.set()

    _with_peer(silent, dialler)


def test_d1_over_sockets() -> None:
    """tests/vectors/README.md D1 inputs through the blocking adapter: both sides agree on the derived keys."""
    seed_a = bytes.fromhex("f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add")
    seed_b = bytes.fromhex("11592a24efe3217a77ae40125df87d627c93a185d15e106bea0f5c415c4f1674")
    eph_a, eph_b = hashlib.sha256(b"ephemeral A").digest(), hashlib.sha256(b"ephemeral B").digest()
    seen: dict[str, bytes] = {}

    def listener(sock: socket.socket) -> None:
        stream = _established(sock, seed_b, ephemeral_secret=eph_b)
        seen["b_remote"] = stream.remote_pubkey
        stream.send(stream.recv())

    def dialler(sock: socket.socket) -> None:
        stream = _established(sock, seed_a, ephemeral_secret=eph_a)
        seen["a_remote"] = stream.remote_pubkey
        stream.send(bytes.fromhex("023a00"))
        seen["echo"] = stream.recv()

    _with_peer(listener, dialler)
    assert seen["a_remote"] == bytes(SigningKey(seed_b).verify_key)
    assert seen["b_remote"] == bytes(SigningKey(seed_a).verify_key)
    assert seen["echo"] == bytes.fromhex("023a00")
