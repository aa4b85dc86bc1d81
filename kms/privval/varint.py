"""Protobuf base-128 unsigned varints, as length prefixes (``libs/protoio`` delimited framing).

Kept apart from the codec because the canonical sign bytes are delimited the same way (docs/protocol.md §2.2, §2.6).
"""

from __future__ import annotations

from pykms.errors import DecodeError

__all__ = ["decode_uvarint", "encode_uvarint"]

#: A uint64 takes at most 10 base-128 groups; Go's binary.ReadUvarint refuses an 11th byte (and a 10th > 1).
MAX_VARINT_BYTES = 10

_U64 = (1 << 64) - 1


def encode_uvarint(value: int) -> bytes:
    """Encode ``0 <= value < 2**64``."""
    if value < 0 or value > _U64:
        raise ValueError(f"uvarint out of range: {value}")
    if value < 0x80:  # the common case: every sign-bytes and most request prefixes
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode one uvarint at ``pos``; return ``(value, next_pos)``, or None when ``data`` ends mid-varint.

    Raises DecodeError for a varint longer than 10 bytes or one that overflows 64 bits (as Go's ReadUvarint).
    """
    end = len(data)
    if pos < end and data[pos] < 0x80:  # the common case: one byte
        return data[pos], pos + 1
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            return None
        byte = data[pos + i]
        if i == MAX_VARINT_BYTES - 1 and byte > 1:
            # A 10th byte above 1 either continues (an 11th byte) or sets bits beyond 64.
            raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes or above 2**64-1")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise AssertionError("unreachable: the 10th byte either ends the varint or raised")  # pragma: no cover
