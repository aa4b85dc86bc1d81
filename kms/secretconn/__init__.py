"""SecretConnection (docs/protocol.md §1): the encrypted, authenticated transport between pykms and a validator.

Layers: ``core`` holds the sans-IO handshake and frame codec (bytes in, bytes out, no sockets, no clock);
``sync`` drives them over blocking sockets; ``identity`` loads the signer's ``kms-identity.key``.
``SyncByteStream`` is the interface the runtime and the validator simulator take, so an encrypted TCP link and a
plaintext unix-socket link are interchangeable.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SyncByteStream"]


class SyncByteStream(Protocol):
    """A blocking byte stream: ``BlockingSecretStream`` (TCP) or ``BlockingPlainStream`` (unix socket)."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...
