"""The key holder's channel, sans-IO: length-prefixed frames of a tiny fixed binary layout.

A fixed layout rather than protobuf because every byte of it is checked here and nothing else parses it: a
decoder of a few dozen lines is easier to verify than a generated one, and it refuses what protobuf would accept
(unknown fields, trailing bytes, duplicated fields). Layout, all integers big-endian::

    frame    = u32 length || body                       (length <= MAX_FRAME)
    body     = u8 kind || fields
    str/blob = u32 length || bytes                      (str is UTF-8)

    CHAINS   0x01  -
    HEALTH   0x02  -
    SIGN     0x03  str chain_id, blob sign_bytes, blob extension_sign_bytes
    CHAINS_OK 0x81 u32 n, n * (str chain_id, blob public_key, str key_type, u8 signs_extensions)
    HEALTH_OK 0x82 u32 n, n * (str chain_id, str status)
    SIGNED   0x83  blob signature, u8 has_timestamp, i64 seconds, i32 nanos, blob extension_signature, u8 fresh,
                   f64 sign_s, f64 persist_s
    ERROR    0xFF  str class name (from ERROR_CLASSES), str message, i32 code

Anything else (unknown kind, trailing bytes, a bool other than 0/1, bad UTF-8, an error class off the list) is a
``DecodeError``; a declared length above ``MAX_FRAME`` is a ``FrameError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pykms import errors
from pykms.errors import DecodeError, FrameError, KmsError
from pykms.keyholder.api import ChainKey, Signed

__all__ = [
    "ERROR_CLASSES",
    "MAX_FRAME",
    "ChainsRequest",
    "ErrorReply",
    "HealthRequest",
    "Message",
    "SignRequest",
    "decode",
    "encode",
    "error_reply",
    "frame",
    "frame_length",
    "raise_error",
]

#: A vote extension may be up to 1 MiB (CometBFT's MaxVoteExtensionSize is set per chain; 1 MiB is the largest the
#: privval message cap of the validator link lets through); the sign bytes of the vote itself and the fields are
#: far below 64 KiB.
MAX_FRAME = (1 << 20) + (64 << 10)

_LEN = struct.Struct(">I")
KEY_TYPES = ("ed25519", "secp256k1")

#: The project errors a key holder may answer with; the client re-raises the same class. Nothing else crosses.
ERROR_CLASSES: dict[str, type[KmsError]] = {
    cls.__name__: cls
    for cls in (
        errors.SigningRefused,
        errors.ChainIdMismatch,
        errors.HeightAboveMax,
        errors.InvalidRequest,
        errors.DoubleSignError,
        errors.RegressionError,
        errors.ConflictError,
        errors.StateError,
        errors.StateMissing,
        errors.StateCorrupt,
        errors.StateLocked,
        errors.PersistError,
        errors.ProviderError,
        errors.TransientProviderError,
        errors.FatalProviderError,
    )
}


@dataclass(frozen=True, slots=True)
class ChainsRequest:
    pass


@dataclass(frozen=True, slots=True)
class HealthRequest:
    pass


@dataclass(frozen=True, slots=True)
class SignRequest:
    chain_id: str
    sign_bytes: bytes
    extension_sign_bytes: bytes = b""


@dataclass(frozen=True, slots=True)
class ChainsReply:
    chains: dict[str, ChainKey]


@dataclass(frozen=True, slots=True)
class HealthReply:
    health: dict[str, str]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    name: str
    message: str
    code: int


Message = ChainsRequest | HealthRequest | SignRequest | ChainsReply | HealthReply | Signed | ErrorReply

_CHAINS, _HEALTH, _SIGN, _CHAINS_OK, _HEALTH_OK, _SIGNED, _ERROR = 0x01, 0x02, 0x03, 0x81, 0x82, 0x83, 0xFF


def _blob(value: bytes) -> bytes:
    return _LEN.pack(len(value)) + value


def _text(value: str) -> bytes:
    return _blob(value.encode())


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.body) - self.pos:
            raise DecodeError("key holder message truncated")
        out = bytes(self.body[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        s = struct.Struct(">" + fmt)
        return s.unpack(self.take(s.size))

    def u32(self) -> int:
        return int(_LEN.unpack(self.take(4))[0])

    def blob(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.blob().decode()
        except UnicodeDecodeError:
            raise DecodeError("key holder message: a string is not UTF-8") from None

    def bool(self) -> bool:
        value = self.take(1)[0]
        if value > 1:
            raise DecodeError(f"key holder message: boolean byte {value}")
        return value == 1

    def done(self) -> None:
        if self.pos != len(self.body):
            raise DecodeError(f"key holder message: {len(self.body) - self.pos} trailing bytes")


def encode(msg: Message) -> bytes:
    """The body of one message (no length prefix)."""
    if isinstance(msg, ChainsRequest):
        return bytes([_CHAINS])
    if isinstance(msg, HealthRequest):
        return bytes([_HEALTH])
    if isinstance(msg, SignRequest):
        return bytes([_SIGN]) + _text(msg.chain_id) + _blob(msg.sign_bytes) + _blob(msg.extension_sign_bytes)
    if isinstance(msg, ChainsReply):
        parts = [bytes([_CHAINS_OK]), _LEN.pack(len(msg.chains))]
        for chain_id, key in msg.chains.items():
            parts += [_text(chain_id), _blob(key.public_key), _text(key.key_type), bytes([key.signs_extensions])]
        return b"".join(parts)
    if isinstance(msg, HealthReply):
        parts = [bytes([_HEALTH_OK]), _LEN.pack(len(msg.health))]
        for chain_id, status in msg.health.items():
            parts += [_text(chain_id), _text(status)]
        return b"".join(parts)
    if isinstance(msg, Signed):
        seconds, nanos = msg.timestamp if msg.timestamp is not None else (0, 0)
        flagged_timestamp = struct.pack(">Bqi", msg.timestamp is not None, seconds, nanos)
        tail = struct.pack(">Bdd", msg.fresh, msg.sign_s, msg.persist_s)
        return bytes([_SIGNED]) + _blob(msg.signature) + flagged_timestamp + _blob(msg.extension_signature) + tail
    if isinstance(msg, ErrorReply):
        return bytes([_ERROR]) + _text(msg.name) + _text(msg.message) + struct.pack(">i", msg.code)
    raise TypeError(f"not a key holder message: {type(msg).__name__}")


def decode(body: bytes) -> Message:
    """One message from its body; DecodeError for anything not exactly as ``encode`` writes it."""
    if not body:
        raise DecodeError("key holder message: empty body")
    r = _Reader(body)
    kind = r.take(1)[0]
    msg: Message
    if kind == _CHAINS:
        msg = ChainsRequest()
    elif kind == _HEALTH:
        msg = HealthRequest()
    elif kind == _SIGN:
        msg = SignRequest(r.text(), r.blob(), r.blob())
    elif kind == _CHAINS_OK:
        chains: dict[str, ChainKey] = {}
        for _ in range(r.u32()):
            chain_id, public_key, key_type = r.text(), r.blob(), r.text()
            if key_type not in KEY_TYPES or chain_id in chains:
                raise DecodeError(f"key holder message: bad key type or repeated chain {chain_id!r}")
            chains[chain_id] = ChainKey(public_key, key_type, r.bool())
        msg = ChainsReply(chains)
    elif kind == _HEALTH_OK:
        health: dict[str, str] = {}
        for _ in range(r.u32()):
            chain_id, status = r.text(), r.text()
            if chain_id in health:
                raise DecodeError(f"key holder message: repeated chain {chain_id!r}")
            health[chain_id] = status
        msg = HealthReply(health)
    elif kind == _SIGNED:
        signature = r.blob()
        has_ts = r.bool()
        seconds, nanos = r.unpack("qi")
        if not has_ts and (seconds or nanos):
            raise DecodeError("key holder message: a timestamp without its flag")
        extension_signature = r.blob()
        fresh = r.bool()
        sign_s, persist_s = r.unpack("dd")
        msg = Signed(signature, (seconds, nanos) if has_ts else None, extension_signature, fresh, sign_s, persist_s)
    elif kind == _ERROR:
        name, message = r.text(), r.text()
        (code,) = r.unpack("i")
        if name not in ERROR_CLASSES:
            raise DecodeError(f"key holder message: error class {name[:40]!r} is not on the allow-list")
        msg = ErrorReply(name, message, code)
    else:
        raise DecodeError(f"key holder message: unknown kind 0x{kind:02x}")
    r.done()
    return msg


def frame(msg: Message) -> bytes:
    """``encode`` with its length prefix; FrameError if the body exceeds MAX_FRAME (refused before sending)."""
    body = encode(msg)
    if len(body) > MAX_FRAME:
        raise FrameError(f"key holder message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def frame_length(prefix: bytes) -> int:
    """The body length a 4-byte prefix declares; FrameError above MAX_FRAME (or zero)."""
    (length,) = _LEN.unpack(prefix)
    if length == 0 or length > MAX_FRAME:
        raise FrameError(f"key holder frame declares {length} bytes (1..{MAX_FRAME} allowed)")
    return int(length)


def error_reply(exc: KmsError) -> ErrorReply:
    """The reply for a project error: its nearest class on the allow-list, its message and its code."""
    for cls in type(exc).__mro__:
        if cls.__name__ in ERROR_CLASSES and ERROR_CLASSES[cls.__name__] is cls:
            return ErrorReply(cls.__name__, str(exc), int(getattr(exc, "code", 0)))
    return ErrorReply("ProviderError", "the key holder failed (see its log)", 0)


def raise_error(reply: ErrorReply) -> KmsError:
    """The project error an ErrorReply stands for (to be raised by the caller), with the code it carried."""
    exc = ERROR_CLASSES[reply.name](reply.message)
    if isinstance(exc, errors.SigningRefused):
        exc.code = reply.code
    return exc
