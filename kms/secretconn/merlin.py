"""A typed face for the Merlin transcript (STROBE-128) that SecretConnection hashes its handshake into.

Why a wrapper: the PyPI ``merlin-transcripts`` package (pinned; checked against the gtank/merlin and
curve25519-voi vectors, see tests/test_secretconn_vectors.py) returns ``bytearray`` and carries loose types. This
module is the one place that imports it, so swapping it for a vendored STROBE later touches nothing else.
"""

from __future__ import annotations

from merlin_transcripts.merlin_transcript import MerlinTranscript

__all__ = ["Transcript"]


class Transcript:
    """``append_message`` / ``challenge_bytes`` exactly as Merlin v1.0 defines them."""

    __slots__ = ("_t",)

    def __init__(self, label: bytes) -> None:
        self._t = MerlinTranscript(bytes(label))

    def append_message(self, label: bytes, message: bytes) -> None:
        """STROBE meta-AD(label || LE32(len)) then AD(message)."""
        self._t.append_message(bytes(label), bytes(message))

    def challenge_bytes(self, label: bytes, length: int) -> bytes:
        """STROBE meta-AD(label || LE32(length)) then PRF(length)."""
        if not 0 <= length < 2**32:
            raise ValueError("challenge length must fit in 32 bits")
        return bytes(self._t.challenge_bytes(bytes(label), length))

    def __repr__(self) -> str:  # the state is secret-derived: never print it
        return "Transcript(<redacted>)"
