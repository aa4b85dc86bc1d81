"""SecretConnection (docs/protocol.md §1): the encrypted, authenticated transport between pykms and a validator.

Layers: ``core`` holds the sans-IO handshake and frame codec (bytes in, bytes out, no sockets, no clock);
``aio`` drives them over asyncio streams and ``sync`` over blocking sockets; ``identity`` loads the signer's
``kms-identity.key``. ``ByteStream`` / ``SyncByteStream`` are the interfaces the runtime and the validator
simulator take, so an encrypted TCP link and a plaintext unix-socket link are interchangeable.
"""

from __future__ import annotations

from typing import Protocol

from pykms.secretconn.aio import ConnectionLost, PlainStream, SecretStream, secret_connection
from pykms.secretconn.core import FrameCodec, Handshake, check_peer_id, node_id
from pykms.secretconn.identity import generate_identity, load_identity
from pykms.secretconn.sync import BlockingSecretStream, secret_connection_sync

__all__ = [
    "BlockingSecretStream",
    "ByteStream",
    "ConnectionLost",
    "FrameCodec",
    "Handshake",
    "PlainStream",
    "SecretStream",
    "SyncByteStream",
    "check_peer_id",
    "generate_identity",
    "load_identity",
    "node_id",
    "secret_connection",
    "secret_connection_sync",
]


class ByteStream(Protocol):
    """An asyncio byte stream: ``SecretStream`` (TCP) or ``PlainStream`` (unix socket)."""

    remote_pubkey: bytes | None
    remote_id: str | None

    async def send(self, data: bytes) -> None:
        """Write all of ``data`` (one message: its frames leave together)."""

    async def recv(self) -> bytes:
        """The next non-empty chunk of the peer's byte stream; b"" at a clean EOF."""

    async def close(self) -> None:
        """Close the transport; idempotent."""


class SyncByteStream(Protocol):
    """The blocking counterpart (``BlockingSecretStream``), used by the threaded runtime."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...
