"""asyncio edge of SecretConnection: drives the sans-IO handshake and frame codec over StreamReader/Writer.

The protocol is symmetric, so ``secret_connection`` serves the dialling signer and the listening validator
simulator alike. Foreign exceptions (OSError, IncompleteReadError, InvalidTag, ValueError, TimeoutError) are
turned into pykms errors in one place, ``_edge``; nothing else escapes ``send``/``recv``/the handshake. A
timeout around ``recv`` (``asyncio.timeout``) is safe: bytes already read stay buffered in the codec.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from nacl.signing import SigningKey

from pykms.errors import FrameError, HandshakeError, KmsError, ProtocolError
from pykms.secretconn.core import FrameCodec, Handshake

__all__ = [
    "AsyncPlainStream",
    "AsyncSecretStream",
    "ConnectionLost",
    "PlainStream",
    "SecretStream",
    "secret_connection",
]

#: The node gives the whole handshake 5 s (cometbft privval/signer_endpoint.go defaultTimeoutReadWriteSeconds).
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
#: Read size: 62 sealed frames; one syscall per burst without holding much memory.
READ_SIZE = 65536


class ConnectionLost(ProtocolError):
    """The transport failed (reset, broken pipe, closed mid-frame); the connection is gone."""


@contextlib.contextmanager
def _edge(during: str, handshake: bool = False) -> Iterator[None]:
    """Map foreign exceptions met at the I/O edge to the pykms tree (the one place that does so)."""
    err: type[ProtocolError] = HandshakeError if handshake else ConnectionLost
    try:
        yield
    except KmsError:
        raise
    except asyncio.IncompleteReadError:
        raise err(f"the peer closed the connection during {during}") from None
    except TimeoutError:
        raise err(f"{during} timed out") from None
    except OSError as exc:
        raise err(f"{during} failed: {exc.strerror or type(exc).__name__}") from None
    except InvalidTag:
        raise FrameError(f"{during}: frame authentication failed") from None
    except ValueError as exc:
        raise err(f"{during} failed: {exc}") from None


class SecretStream:
    """An established SecretConnection over asyncio streams."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        codec: FrameCodec,
        remote_pubkey: bytes,
        remote_id: str,
        plaintext: bytes = b"",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._codec = codec
        self._pending = plaintext
        self.remote_pubkey: bytes | None = remote_pubkey
        self.remote_id: str | None = remote_id

    def __repr__(self) -> str:
        return f"SecretStream(remote_id={self.remote_id}, {self._codec!r})"

    async def send(self, data: bytes) -> None:
        """Seal one message and write all its frames together."""
        frames = self._codec.seal(data)
        if not frames:
            return
        try:
            with _edge("sending"):
                self._writer.write(frames)
                await self._writer.drain()
        except ProtocolError as exc:
            self._codec.poison(str(exc))
            raise

    async def recv(self) -> bytes:
        """The next non-empty chunk of plaintext; b"" when the peer closed cleanly between frames."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        self._codec.check()
        while True:
            try:
                with _edge("receiving"):
                    chunk = await self._reader.read(READ_SIZE)
            except ConnectionLost as exc:
                self._codec.poison(str(exc))
                raise
            if not chunk:
                self._codec.eof()
                return b""
            data = self._codec.feed(chunk)
            if data:
                return data

    async def close(self) -> None:
        """Close the transport; later sends and receives raise FrameError."""
        self._codec.poison("closed")
        await _close_writer(self._writer)


class PlainStream:
    """The same interface without encryption: privval over unix sockets is plaintext (docs/protocol.md §2.1)."""

    remote_pubkey: bytes | None = None
    remote_id: str | None = None

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    def __repr__(self) -> str:
        return f"PlainStream(closed={self._closed})"

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionLost("the stream is closed")
        if data:
            with _edge("sending"):
                self._writer.write(data)
                await self._writer.drain()

    async def recv(self) -> bytes:
        if self._closed:
            raise ConnectionLost("the stream is closed")
        with _edge("receiving"):
            return await self._reader.read(READ_SIZE)

    async def close(self) -> None:
        self._closed = True
        await _close_writer(self._writer)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    if writer.is_closing():
        return
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
        await writer.wait_closed()


async def secret_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: SigningKey | bytes,
    *,
    expected_peer_id: str | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ephemeral_secret: bytes | None = None,
) -> SecretStream:
    """Run the handshake (either role) within ``timeout`` seconds; return the encrypted stream.

    Raises HandshakeError (timeout, bad key, bad challenge signature, transport failure) or PeerIdMismatch.
    """
    hs = Handshake(identity, ephemeral_secret=ephemeral_secret, expected_peer_id=expected_peer_id)
    try:
        async with asyncio.timeout(timeout):
            with _edge("the handshake", handshake=True):
                while True:
                    out = hs.data_to_send()
                    if out:
                        writer.write(out)
                        await writer.drain()
                    if hs.done:
                        break
                    chunk = await reader.read(READ_SIZE)
                    if not chunk:
                        raise HandshakeError(f"the peer closed the connection during the handshake ({hs.state})")
                    hs.receive_data(chunk)
    except TimeoutError:
        raise HandshakeError(f"handshake timed out after {timeout:g} s: the peer stalled ({hs.state})") from None
    assert hs.codec is not None
    return SecretStream(reader, writer, hs.codec, hs.remote_pubkey, hs.remote_id, hs.leftover)


#: Names of the first version of this module, kept for callers written against it.
AsyncSecretStream = SecretStream
AsyncPlainStream = PlainStream
