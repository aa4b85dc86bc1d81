"""Fuzz target: the sans-IO SecretConnection handshake (``pykms.secretconn.core.Handshake``) on hostile input.

Run with atheris (``python tests/fuzz/fuzz_handshake.py [corpus_dir] -max_total_time=60``), or call
``TestOneInput`` from a test. Three shapes of input reach every state: raw bytes as the peer's whole stream; a
well-formed ephemeral key followed by raw bytes (garbage where sealed frames belong); and a correct key
exchange whose sealed AuthSigMessage plaintext is the input. Property: only ProtocolError escapes, and the
handshake never completes without a valid signature over the challenge.
"""

from __future__ import annotations

import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.signing import SigningKey

from pykms.errors import HandshakeError, ProtocolError
from pykms.secretconn.core import FrameCodec, Handshake, challenge_of, derive_keys

__all__ = ["TestOneInput"]

_OURS = SigningKey(bytes(range(32)))
_PEER_EPH = X25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
_PEER_EPH_PUB = _PEER_EPH.public_key().public_bytes_raw()
_OUR_EPH = bytes(range(200, 232))


def _feed(hs: Handshake, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        hs.receive_data(data[i : i + step])


def _poisoned(hs: Handshake) -> None:
    try:
        hs.receive_data(b"\x00")
    except HandshakeError:
        return
    raise AssertionError("a refused handshake must stay refused")


def TestOneInput(data: bytes) -> None:  # atheris's required name
    """One fuzz input: only ProtocolError may escape; no completion without the peer's valid signature."""
    if not data:
        return
    mode, step, body = data[0] % 3, (data[0] >> 2) * 29 + 1, data[1:]
    hs = Handshake(_OURS, ephemeral_secret=_OUR_EPH)
    assert len(hs.data_to_send()) == 35
    if mode == 0:
        stream = body
    elif mode == 1:
        stream = b"\x22\x0a\x20" + _PEER_EPH_PUB + body
    else:
        own = hs.own_ephemeral
        dh = _PEER_EPH.exchange(X25519PublicKey.from_public_bytes(own))
        lo, hi = sorted((own, _PEER_EPH_PUB))
        recv_key, send_key = derive_keys(dh, lo == _PEER_EPH_PUB)
        assert challenge_of(lo, hi, dh)
        stream = b"\x22\x0a\x20" + _PEER_EPH_PUB + FrameCodec(send_key, recv_key).seal(body)
    try:
        _feed(hs, stream, step)
    except ProtocolError:
        _poisoned(hs)
        return
    # Forging an Ed25519 signature over a fresh challenge is out of reach of a fuzzer.
    assert not hs.done


def main() -> None:  # pragma: no cover - needs atheris and runs until stopped
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main()
