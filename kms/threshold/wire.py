"""The cosigner protocol: length-prefixed JSON messages inside a SecretConnection.

Each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON (an object). Requests carry an
``op``; answers ``ok`` true with fields, or ``ok`` false with ``error`` (a short text, never key material):

=========  ======================================================  ============================================
op         request fields                                          answer fields
=========  ======================================================  ============================================
commit     (none)                                                  identifier, session, hiding, binding
sign       session, message, commitments [[id, hiding, binding]]   share, next (a commit answer)
status     (none)                                                  identifier, chains {id: {height, round, step}}
=========  ======================================================  ============================================

Byte strings are hex. The framing is ours because the payload is small and internal to pykms; the
authentication and encryption are CometBFT's SecretConnection, with each side pinning the other's identity.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pykms.errors import DecodeError
from pykms.secretconn import SyncByteStream

__all__ = ["MAX_MESSAGE", "MessageReader", "send_message"]

#: A sign request carries sign bytes (a few hundred bytes; an extension up to the node's 1 MiB cap, hex-doubled)
#: and t commitments: 4 MiB bounds memory per connection while admitting any extension CometBFT accepts.
MAX_MESSAGE = 4 * 1024 * 1024
_LEN = struct.Struct(">I")


def send_message(stream: SyncByteStream, message: dict[str, Any]) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    stream.send(_LEN.pack(len(body)) + body)


class MessageReader:
    """Reassembles messages from the stream's chunks; refuses oversize or non-object messages (DecodeError)."""

    def __init__(self, stream: SyncByteStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at a clean end of stream."""
        while True:
            if len(self._buffer) >= _LEN.size:
                (size,) = _LEN.unpack_from(self._buffer)
                if size > MAX_MESSAGE:
                    raise DecodeError(f"cosigner message of {size} bytes exceeds {MAX_MESSAGE}")
                if len(self._buffer) >= _LEN.size + size:
                    body = bytes(self._buffer[_LEN.size : _LEN.size + size])
                    del self._buffer[: _LEN.size + size]
                    try:
                        message = json.loads(body)
                    except ValueError:
                        raise DecodeError("cosigner message is not JSON") from None
                    if not isinstance(message, dict):
                        raise DecodeError("cosigner message is not a JSON object")
                    return message
            chunk = self.stream.recv()
            if not chunk:
                if self._buffer:
                    raise DecodeError("connection closed in the middle of a cosigner message")
                return None
            self._buffer += chunk
