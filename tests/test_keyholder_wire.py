"""The key holder's wire format: every message round-trips, and nothing else decodes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykms import errors
from pykms.keyholder import wire
from pykms.keyholder.api import ChainKey, Signed

texts = st.text(max_size=40)
blobs = st.binary(max_size=300)
floats = st.floats(allow_nan=False)
chain_keys = st.builds(ChainKey, blobs, st.sampled_from(wire.KEY_TYPES), st.booleans())
timestamps = st.none() | st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1))

messages = st.one_of(
    st.just(wire.ChainsRequest()),
    st.just(wire.HealthRequest()),
    st.builds(wire.SignRequest, texts, blobs, blobs),
    st.builds(wire.ChainsReply, st.dictionaries(texts, chain_keys, max_size=5)),
    st.builds(wire.HealthReply, st.dictionaries(texts, texts, max_size=5)),
    st.builds(Signed, blobs, timestamps, blobs, st.booleans(), floats, floats),
    st.builds(wire.ErrorReply, st.sampled_from(sorted(wire.ERROR_CLASSES)), texts, st.integers(-(2**31), 2**31 - 1)),
)


@given(messages)
def test_every_message_round_trips(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg
    framed = wire.frame(msg)
    assert wire.frame_length(framed[:4]) == len(framed) - 4
    assert wire.decode(framed[4:]) == msg


@given(messages, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(msg: wire.Message, extra: bytes) -> None:
    with pytest.raises(errors.DecodeError):
        wire.decode(wire.encode(msg) + extra)


@given(messages, st.data())
def test_every_truncation_is_refused(msg: wire.Message, data: st.DataObject) -> None:
    body = wire.encode(msg)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(errors.DecodeError):
        wire.decode(body[:cut])


@given(st.binary(max_size=200))
def test_garbage_decodes_or_raises_a_decode_error(body: bytes) -> None:
    """No other exception type, whatever the bytes (a hostile front controls them all)."""
    try:
        msg = wire.decode(body)
    except errors.DecodeError:
        return
    assert wire.encode(msg) == body  # what decodes is canonical: one encoding per message


def test_unknown_kind_bool_and_error_class_are_refused() -> None:
    with pytest.raises(errors.DecodeError, match="unknown kind"):
        wire.decode(b"\x04")
    signed = bytearray(wire.encode(Signed(b"s", None, b"", True)))
    signed[1 + 4 + 1] = 2  # has_timestamp byte
    with pytest.raises(errors.DecodeError, match="boolean"):
        wire.decode(bytes(signed))
    forged = b"\xff" + struct.pack(">I", 10) + b"SystemExit" + struct.pack(">I", 0) + struct.pack(">i", 0)
    with pytest.raises(errors.DecodeError, match="allow-list"):
        wire.decode(forged)
    with pytest.raises(errors.DecodeError, match="UTF-8"):
        wire.decode(b"\x03" + struct.pack(">I", 1) + b"\xff" + struct.pack(">II", 0, 0))
    with pytest.raises(errors.DecodeError, match="key type"):
        wire.decode(
            b"\x81"
            + struct.pack(">I", 1)
            + struct.pack(">I", 1)
            + b"c"
            + struct.pack(">I", 0)
            + struct.pack(">I", 3)
            + b"rsa\x00"
        )


def test_frame_length_bounds() -> None:
    assert wire.frame_length(struct.pack(">I", wire.MAX_FRAME)) == wire.MAX_FRAME
    for bad in (0, wire.MAX_FRAME + 1, 2**32 - 1):
        with pytest.raises(errors.FrameError):
            wire.frame_length(struct.pack(">I", bad))
    # a 1 MiB vote extension fits; more than the cap is refused before it is sent
    wire.frame(wire.SignRequest("c", b"v" * 200, b"x" * (1 << 20)))
    with pytest.raises(errors.FrameError):
        wire.frame(wire.SignRequest("c", b"", b"x" * (wire.MAX_FRAME + 1)))


def test_errors_cross_as_the_same_class_with_their_code() -> None:
    exc = errors.ConflictError("same HRS, other block")
    exc.code = 7
    back = wire.raise_error(wire.decode(wire.encode(wire.error_reply(exc))))  # type: ignore[arg-type]
    assert type(back) is errors.ConflictError and str(back) == "same HRS, other block" and back.code == 7
    assert type(wire.raise_error(wire.error_reply(errors.PersistError("fsync failed")))) is errors.PersistError
    # an error off the list crosses as its nearest listed ancestor, or as a bare ProviderError
    assert wire.error_reply(errors.KeyFileError("x")).name == "ProviderError"
    assert wire.error_reply(errors.ProtocolError("x")).name == "ProviderError"
