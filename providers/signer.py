"""The contract every signing backend fulfils.

Providers are synchronous and small: the key holder calls them from the connections' threads, one lock per device, and
verifies every signature against ``public_key()`` before it leaves the process, so a faulty device can never
emit garbage to the node.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from pykms.errors import TransientProviderError

__all__ = ["Signer", "verify_or_raise"]


@runtime_checkable
class Signer(Protocol):
    """An Ed25519 consensus key held somewhere (file, HSM, Ledger, PKCS#11 token)."""

    #: Short backend name for logs and metrics: "softsign", "yubihsm", "ledger", "pkcs11".
    provider: str
    #: Whether this key can sign vote-extension sign bytes (False behind a Ledger); the runtime plans with it.
    signs_extensions: bool

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message`` (the sign bytes, unhashed).

        Raises TransientProviderError when a retry may succeed, FatalProviderError otherwise.
        """

    def close(self) -> None:
        """Release the device or session. Idempotent."""


def verify_or_raise(public_key: bytes, message: bytes, signature: bytes, provider: str) -> None:
    """Refuse a signature that does not verify: it must never reach the node. A 33-byte key is secp256k1."""
    if len(public_key) == 33:
        from pykms.providers.secp256k1 import verify_secp256k1

        if not verify_secp256k1(public_key, message, signature):
            raise TransientProviderError(f"{provider} returned a signature that does not verify")
        return
    # libsodium's combined open, without PyNaCl's VerifyKey wrapper (~2.5 µs a signature); it reads a 32-byte key
    # and a 64-byte signature, so other lengths are refused first.
    if len(public_key) != 32 or len(signature) != 64:
        raise TransientProviderError(f"{provider} returned a signature that does not verify")
    try:
        crypto_sign_open(signature + message, public_key)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise TransientProviderError(f"{provider} returned a signature that does not verify") from exc
