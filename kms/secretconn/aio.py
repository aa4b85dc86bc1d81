"""SecretConnection over asyncio streams: a thin adapter over the sans-IO ``pykms.secretconn.core``."""

from __future__ import annotations

import asyncio
import contextlib

from nacl.signing import SigningKey

from pykms.errors import FrameError, HandshakeError
from pykms.secretconn.core import FrameCodec, Handshake

__all__ = ["AsyncPlainStream", "AsyncSecretStream", "secret_connection"]


class AsyncSecretStream:
    """An established SecretConnection on asyncio streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: FrameCodec, leftover: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = codec
        self._plain = leftover
        self.remote_pubkey = b""
        self.remote_id = ""

    async def send(self, data: bytes) -> None:
        self.writer.write(self.codec.seal(data))
        await self.writer.drain()

    async def recv(self) -> bytes:
        """The next plaintext data; b"" when the peer closed the connection between frames."""
        if self._plain:
            data, self._plain = self._plain, b""
            return data
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                if self.codec.mid_frame:
                    self.codec.poison("connection closed in the middle of a frame")
                    raise FrameError("connection closed in the middle of a frame")
                return b""
            data = self.codec.feed(chunk)
            if data:
                return data

    async def close(self) -> None:
        self.codec.poison("closed")
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class AsyncPlainStream:
    """privval over a unix socket is plaintext: the same interface without encryption."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        return await self.reader.read(65536)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


async def secret_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: SigningKey | bytes,
    *,
    expected_peer_id: str | None = None,
    timeout: float = 5.0,
    ephemeral_secret: bytes | None = None,
) -> AsyncSecretStream:
    """Run the handshake (either role) within ``timeout`` seconds; raises HandshakeError / PeerIdMismatch."""
    key = identity if isinstance(identity, SigningKey) else SigningKey(identity)
    hs = Handshake(key, ephemeral_secret=ephemeral_secret, expected_peer_id=expected_peer_id)
    try:
        async with asyncio.timeout(timeout):
            while True:
                out = hs.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                if hs.done:
                    break
                chunk = await reader.read(65536)
                if not chunk:
                    raise HandshakeError(f"the peer closed the connection during the handshake ({hs.state})")
                hs.receive_data(chunk)
    except TimeoutError:
        raise HandshakeError(f"handshake timed out: the peer stalled ({hs.state})") from None
    except (OSError, ConnectionError) as exc:
        raise HandshakeError(f"handshake failed: {exc}") from None
    assert hs.codec is not None
    stream = AsyncSecretStream(reader, writer, hs.codec, hs.leftover)
    stream.remote_pubkey = hs.remote_pubkey
    stream.remote_id = hs.remote_id
    return stream
