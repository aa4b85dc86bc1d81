"""secp256k1 consensus keys: tmkms's softsign ``key_type = "account"``, for chains whose validators use them.

tmkms (src/keyring.rs ``KeyRing::sign``) signs a chain's consensus messages with its secp256k1 key when the chain
has no Ed25519 key; the key file is base64 of the 32-byte secret scalar (``tmkms softsign keygen -t account``,
src/key_utils.rs). CometBFT's rules for the signature (crypto/secp256k1/secp256k1.go): ECDSA over SHA-256 of
the sign bytes, 64 bytes ``r || s`` big-endian, and ``s`` in the lower half of the group order (a high-S
signature is rejected as malleable). The public key travels compressed (33 bytes) in PublicKey's ``secp256k1``
case (tendermint/crypto/keys.proto field 2; v1.0: pub_key_type "secp256k1").

Signing uses pyca/cryptography; every signature is normalised to low S and verified against the public key
before it is returned, as every other provider's.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pykms.errors import ConfigError, KeyFileError, TransientProviderError
from pykms.keyfiles import read_secret_file, write_secret_file

if TYPE_CHECKING:
    from pykms.config import SoftsignConfig

__all__ = ["Secp256k1Signer", "keygen_secp256k1", "verify_secp256k1"]

#: The order of the secp256k1 group (SEC 2 v2, §2.4.1).
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Compressed SEC1 point: 0x02/0x03 and the 32-byte x coordinate.
PUBLIC_KEY_LEN = 33


def _ecdsa() -> ec.ECDSA:
    """RFC 6979 deterministic nonces where the OpenSSL build has them (as tmkms's k256), random ones otherwise."""
    try:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except (TypeError, UnsupportedAlgorithm):  # cryptography < 44 or OpenSSL < 3.2
        return ec.ECDSA(hashes.SHA256())


@functools.lru_cache(maxsize=16)
def _public_key(encoded: bytes) -> ec.EllipticCurvePublicKey:
    """Decompressing the point costs as much as a verification: done once per key (a chain has one)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), encoded)


def verify_secp256k1(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """CometBFT's check: 64 bytes r || s, low S, a valid ECDSA/SHA-256 signature under the compressed key."""
    if len(signature) != 64 or len(public_key) != PUBLIC_KEY_LEN:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s <= N // 2):
        return False
    try:
        _public_key(public_key).verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


class Secp256k1Signer:
    """A secp256k1 key in a file (``pykms.providers.signer.Signer``; ``key_type`` tells the handler)."""

    provider = "softsign"
    signs_extensions = True
    key_type = "secp256k1"

    def __init__(self, scalar: bytes) -> None:
        value = int.from_bytes(scalar, "big")
        if len(scalar) != 32 or not 0 < value < N:
            raise KeyFileError("a secp256k1 secret key is a 32-byte scalar in 1..n-1")
        self._key = ec.derive_private_key(value, ec.SECP256K1())
        self._public = self._key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)

    def __repr__(self) -> str:
        return f"Secp256k1Signer(public_key={self._public.hex()})"

    @classmethod
    def from_config(cls, cfg: SoftsignConfig) -> Secp256k1Signer:
        if cfg.key_format not in (None, "base64"):
            raise ConfigError(
                "account (secp256k1) keys are base64 files, as tmkms writes them",
                key="providers.softsign.key_format",
                fix='remove key_format or write key_format = "base64"',
            )
        raw = read_secret_file(Path(cfg.path))
        try:
            scalar = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(
                f"{cfg.path}: not base64 (expected a secp256k1 key from softsign keygen -t account)"
            ) from None
        try:
            return cls(scalar)
        except KeyFileError as exc:
            raise KeyFileError(f"{cfg.path}: {exc}") from None

    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(message, _ecdsa()))
        if s > N // 2:
            s = N - s  # CometBFT accepts only the low-S form of the two equivalent signatures
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if not verify_secp256k1(self._public, message, signature):
            raise TransientProviderError("softsign returned a secp256k1 signature that does not verify")
        return signature

    def close(self) -> None:
        """Nothing to release."""


def keygen_secp256k1(path: Path) -> bytes:
    """``softsign keygen -t account``: a random secret scalar, base64, mode 0600. Returns the compressed pubkey."""
    key = ec.generate_private_key(ec.SECP256K1())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    write_secret_file(path, base64.b64encode(scalar))
    return Secp256k1Signer(scalar).public_key()
