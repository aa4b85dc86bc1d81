"""SecretConnection over a blocking socket: the signer's production path (kms/runtime.py) and the simulator's.

A thin adapter over the sans-IO ``pykms.secretconn.core``: it moves bytes between the socket and the state
machines and enforces the handshake deadline. Socket errors and timeouts are mapped to pykms errors here: the
streams raise ConnectionLost (LinkTimeout for a deadline) and the handshake HandshakeError, never OSError.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time

from nacl.signing import SigningKey

from pykms.errors import ConnectionLost, FrameError, HandshakeError, LinkTimeout
from pykms.secretconn.core import Handshake

__all__ = ["BlockingPlainStream", "BlockingSecretStream", "secret_connection_sync", "set_kernel_timeouts"]


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make ``sock`` blocking, with reads and writes that give up after ``seconds`` (SO_RCVTIMEO / SO_SNDTIMEO).

    CPython polls before every call on a socket with a Python-level timeout: poll + recv and poll + send, two
    more system calls (and GIL hand-offs) per request than needed. With the kernel's timeouts an
    expired wait raises BlockingIOError, which the streams below turn into LinkTimeout.
    """
    sock.settimeout(None)
    timeval = struct.pack("@ll", int(seconds), int(seconds % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def sendall_within(sock: socket.socket, data: bytes, timeout: float | None) -> None:
    """Write all of ``data`` within ``timeout`` seconds in total (None: ``sendall``, bounded by SO_SNDTIMEO).

    The kernel's SO_SNDTIMEO restarts after every partial write, so a peer that opens its receive window a few
    bytes at a time could hold a plain ``sendall`` for ever; here the deadline covers the whole reply. Raises
    LinkTimeout when it passes (part of ``data`` may have been written: the stream is then unusable),
    ConnectionLost when the socket fails.
    The common case is one non-blocking ``send`` that takes everything: no extra system call.
    """
    view = memoryview(data)
    deadline = 0.0
    poller: select.poll | None = None
    try:
        if timeout is None:
            sock.sendall(data)
            return
        while view:
            with contextlib.suppress(BlockingIOError):  # the buffer is full: wait below
                view = view[sock.send(view, socket.MSG_DONTWAIT) :]
            if not view:
                return
            now = time.monotonic()
            if poller is None:
                deadline = now + timeout
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            if now >= deadline:
                raise LinkTimeout(f"the peer did not take {len(data)} bytes within {timeout:g} s")
            poller.poll(max(1, int((deadline - now) * 1000)))
    except BlockingIOError:  # SO_SNDTIMEO expired
        raise LinkTimeout(f"the peer did not take {len(data)} bytes in time") from None
    except TimeoutError as exc:
        raise LinkTimeout(str(exc)) from None
    except OSError as exc:
        raise ConnectionLost(f"cannot write to the peer: {exc.strerror or exc}") from None


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO expired (set_kernel_timeouts), or a Python timeout
        raise LinkTimeout("no data before the socket's receive timeout") from None
    except OSError as exc:
        raise ConnectionLost(f"cannot read from the peer: {exc.strerror or exc}") from None


class BlockingPlainStream:
    """privval over a unix socket is plaintext (docs/protocol.md §2.1): the same interface, no encryption."""

    remote_pubkey: bytes | None = None
    remote_id: str | None = None

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes, timeout: float | None = None) -> None:
        sendall_within(self.sock, data, timeout)

    def recv(self) -> bytes:
        return _recv(self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class BlockingSecretStream:
    """An established SecretConnection: ``send`` a message, ``recv`` the next plaintext data (b"" at EOF)."""

    def __init__(self, sock: socket.socket, handshake: Handshake) -> None:
        """The connection ``handshake`` (done) established on ``sock``."""
        assert handshake.codec is not None
        self.sock = sock
        self.codec = handshake.codec
        self._plain = handshake.leftover
        self.remote_pubkey = handshake.remote_pubkey
        self.remote_id = handshake.remote_id

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Seal ``data`` and write all its frames at once, within ``timeout`` seconds in total when given."""
        frames = self.codec.seal(data)
        try:
            sendall_within(self.sock, frames, timeout)
        except ConnectionLost:
            self.codec.poison("write failed")
            raise

    def recv(self) -> bytes:
        """The data of the next frame(s); b"" when the peer closed the connection cleanly between frames.

        A socket timeout raises LinkTimeout; a partial frame stays buffered for the next call.
        """
        if self._plain:
            data, self._plain = self._plain, b""
            return data
        self.codec.check()
        while True:
            chunk = _recv(self.sock)
            if not chunk:
                if self.codec.mid_frame:
                    self.codec.poison("connection closed in the middle of a frame")
                    raise FrameError("connection closed in the middle of a frame")
                return b""
            data = self.codec.feed(chunk)
            if data:
                return data

    def close(self) -> None:
        self.codec.poison("closed")
        with contextlib.suppress(OSError):
            self.sock.close()


def secret_connection_sync(
    sock: socket.socket,
    identity: SigningKey | bytes,
    *,
    expected_peer_id: str | None = None,
    timeout: float = 5.0,
    ephemeral_secret: bytes | None = None,
) -> BlockingSecretStream:
    """Run the handshake on a connected socket (either role) within ``timeout`` seconds.

    Raises HandshakeError (stall, bad keys, bad challenge signature, socket failure) or PeerIdMismatch.
    """
    hs = Handshake(identity, ephemeral_secret=ephemeral_secret, expected_peer_id=expected_peer_id)
    deadline = time.monotonic() + timeout
    try:
        while True:
            out = hs.data_to_send()
            if out:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(out)
            if hs.done:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeError(f"handshake timed out: the peer stalled ({hs.state})")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise HandshakeError(f"the peer closed the connection during the handshake ({hs.state})")
            hs.receive_data(chunk)
    except TimeoutError:
        raise HandshakeError(f"handshake timed out: the peer stalled ({hs.state})") from None
    except OSError as exc:
        raise HandshakeError(f"handshake failed: {exc.strerror or exc}") from None
    return BlockingSecretStream(sock, hs)
