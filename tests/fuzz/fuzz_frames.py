"""Fuzz target: the SecretConnection frame codec (``pykms.secretconn.core.FrameCodec``) on arbitrary input.

Run with atheris (``python tests/fuzz/fuzz_frames.py [corpus_dir] -max_total_time=60``), or call ``TestOneInput``
from a test. Properties: only pykms ProtocolError escapes; an honest stream comes out exactly as it went in
however it is cut; any change to a sealed frame raises FrameError and poisons the codec.
"""

from __future__ import annotations

import sys

from pykms.errors import FrameError, ProtocolError
from pykms.secretconn.core import _NONCE, DATA_MAX_SIZE, SEALED_FRAME_SIZE, FrameCodec

__all__ = ["TestOneInput"]

_KEY_AB = bytes(range(32))
_KEY_BA = bytes(range(32, 64))


def _pair() -> tuple[FrameCodec, FrameCodec]:
    return FrameCodec(_KEY_AB, _KEY_BA), FrameCodec(_KEY_BA, _KEY_AB)


def _feed_in_pieces(codec: FrameCodec, data: bytes, step: int) -> bytes:
    return b"".join(codec.feed(data[i : i + step]) for i in range(0, len(data), step))


def _must_be_poisoned(codec: FrameCodec) -> None:
    try:
        codec.feed(b"")
    except FrameError:
        return
    raise AssertionError("a codec that refused a frame must stay unusable")


def TestOneInput(data: bytes) -> None:  # atheris's required name
    """One fuzz input: only ProtocolError may escape; the properties above are asserted."""
    if not data:
        return
    mode, step, body = data[0] % 4, (data[0] >> 2) * 37 + 1, data[1:]
    tx, rx = _pair()
    if mode == 0:  # raw bytes from a peer without the key
        try:
            _feed_in_pieces(rx, body, step)
            rx.eof()
        except ProtocolError:
            return
        assert len(body) < SEALED_FRAME_SIZE or not body  # a full frame of noise cannot authenticate
        return
    sealed = tx.seal(body)
    assert len(sealed) == SEALED_FRAME_SIZE * -(-len(body) // DATA_MAX_SIZE)
    if mode == 1:  # honest stream, any cut
        assert _feed_in_pieces(rx, sealed, step) == body
        rx.eof()
        return
    if mode == 2 and sealed:  # one flipped bit anywhere
        bit = int.from_bytes(body[:4].ljust(4, b"\0"), "little") % (len(sealed) * 8)
        bad = bytearray(sealed)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            got = _feed_in_pieces(rx, bytes(bad), step)
        except FrameError:
            _must_be_poisoned(rx)
            return
        # frames before the damaged one may be delivered, never the damaged one or anything after it
        assert body.startswith(got) and len(got) <= (bit // 8) // SEALED_FRAME_SIZE * DATA_MAX_SIZE
        _must_be_poisoned(rx)
        return
    if mode == 3:  # a frame sealed with the right key whose length field is chosen by the input
        length = int.from_bytes(body[:4].ljust(4, b"\0"), "little")
        plain = length.to_bytes(4, "little") + body[4:].ljust(DATA_MAX_SIZE, b"\0")[:DATA_MAX_SIZE]
        frame = tx._send.encrypt(_NONCE.pack(0), plain, None)
        try:
            got = rx.feed(frame)
        except FrameError:
            assert length > DATA_MAX_SIZE
            _must_be_poisoned(rx)
            return
        assert length <= DATA_MAX_SIZE and got == plain[4 : 4 + length]


def main() -> None:  # pragma: no cover - needs atheris and runs until stopped
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main()
