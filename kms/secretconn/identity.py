"""The signer's SecretConnection identity (tmkms's ``kms-identity.key``): base64 of a 32-byte Ed25519 seed."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from nacl.signing import SigningKey

from pykms.errors import KeyFileError
from pykms.keyfiles import read_secret_file, write_secret_file
from pykms.secretconn.core import node_id

__all__ = ["generate_identity", "load_identity", "node_id"]


def load_identity(path: Path) -> SigningKey:
    """Load a base64 seed (trailing whitespace trimmed, as tmkms's key_utils does); refuse open permissions."""
    raw = read_secret_file(path).rstrip()
    try:
        seed = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: not base64 (a kms-identity.key holds base64 of a 32-byte seed)") from None
    if len(seed) != 32:
        raise KeyFileError(f"{path}: decodes to {len(seed)} bytes; an identity key is a 32-byte Ed25519 seed")
    return SigningKey(seed)


def generate_identity(path: Path) -> SigningKey:
    """Create a new identity key file, 0600, never overwriting an existing one."""
    seed = os.urandom(32)
    write_secret_file(path, base64.b64encode(seed))
    return SigningKey(seed)
