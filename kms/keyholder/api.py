"""The seam between the front and the key holder: what crosses it, and nothing more.

Everything here is plain data (bytes, str, int, float) so that the same protocol is served in-process and over a
UNIX socket by a key holder in another process. The key holder trusts nothing the front says beyond the sign bytes:
it decodes them itself and takes height, round, step and block from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ChainKey", "KeyHolder", "Signed"]


@dataclass(frozen=True, slots=True)
class ChainKey:
    """What the front may know of one chain's key."""

    public_key: bytes
    key_type: str  # "ed25519" | "secp256k1"
    #: Whether this chain's signer signs vote extensions (False behind a Ledger, or with extensions disabled).
    signs_extensions: bool


@dataclass(frozen=True, slots=True)
class Signed:
    """The answer to one signing request."""

    signature: bytes
    #: (seconds, nanos) stored with a reused signature when the request differed only by its timestamp: the front
    #: puts it back in the vote or proposal it returns.
    timestamp: tuple[int, int] | None
    #: b"" when no extension sign bytes were given.
    extension_signature: bytes
    #: False when the stored signature was returned (an identical or timestamp-only repeat).
    fresh: bool
    #: Seconds spent in the provider and making the state durable, for the front's metrics.
    sign_s: float = 0.0
    persist_s: float = 0.0


class KeyHolder(Protocol):
    """One narrow request (sign these bytes for this chain) and what the front needs to serve validators."""

    def chains(self) -> dict[str, ChainKey]:
        """The chains served; a chain whose state cannot be trusted is absent (see ``health``)."""

    def health(self) -> dict[str, str]:
        """Chain id -> "ok", or what is wrong with its key, state or audit log."""

    def sign(self, chain_id: str, sign_bytes: bytes, extension_sign_bytes: bytes = b"") -> Signed:
        """Decode, check, decide, sign, verify, persist, record; return only once the state is durable.

        Raises only the project's errors: SigningRefused (refused, nothing signed), StateError (not durable: no
        signature), ProviderError (the key failed).
        """

    def close(self) -> None:
        """Release keys, guards and audit logs."""
