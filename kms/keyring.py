"""How a chain displays its consensus key.

Display formats follow tmkms ``src/keyring/format.rs`` and tendermint-rs ``PublicKey::to_bech32``
(docs/protocol.md §3.5): bech32 of the Amino-prefixed key with the chain's consensus prefix, uppercase hex, or
Cosmos protobuf JSON; plus base64 and the validator address (SHA-256(pub)[0:20]) in hex. A 33-byte secp256k1
key is shown the same ways, as tmkms shows an account key (bech32 with the chain's account_key_prefix).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

from pykms.config import KeyFormat
from pykms.errors import ConfigError, KmsError

__all__ = [
    "AMINO_ED25519_PUBKEY_PREFIX",
    "bech32_encode",
    "consensus_address",
    "format_public_key",
]

#: Amino prefix of tendermint/PubKeyEd25519 (16 24 de 64) followed by the length byte 0x20 (docs/protocol.md §3.5,
#: VECTORS V10: derived from SHA-256("tendermint/PubKeyEd25519")).
AMINO_ED25519_PUBKEY_PREFIX = bytes.fromhex("1624de6420")
#: Protobuf Any type URL tmkms's cosmos-json format uses (src/keyring/format.rs ED25519_TYPE_URL).
ED25519_TYPE_URL = "/cosmos.crypto.ed25519.PubKey"

# BIP-173: data alphabet, generator constants; bech32 (not bech32m) checksum constant 1.
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_words(data: bytes) -> list[int]:
    """8-bit bytes as 5-bit words, the last one zero-padded (BIP-173 convertbits with padding)."""
    acc = bits = 0
    out: list[int] = []
    for value in data:
        acc = (acc << 8) | value
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """BIP-173 bech32 of ``data`` (8-bit bytes) under the human-readable part ``hrp``."""
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp) or hrp.lower() != hrp:
        raise ValueError(f"invalid bech32 prefix {hrp!r}")
    words = _to_words(data)
    polymod = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in words + checksum)


def consensus_address(public_key: bytes) -> bytes:
    """CometBFT's address of a key: SHA-256(pub)[0:20] for Ed25519 (crypto/ed25519 PubKey.Address),
    RIPEMD-160(SHA-256(pub)) for a 33-byte secp256k1 key (crypto/secp256k1 PubKey.Address)."""
    digest = hashlib.sha256(public_key).digest()
    return hashlib.new("ripemd160", digest).digest() if len(public_key) == 33 else digest[:20]


#: Amino prefix of PubKeySecp256k1 (cometbft crypto/secp256k1 "tendermint/PubKeySecp256k1": eb5ae987, length
#: 0x21) and the protobuf Any type URL (cosmos-sdk crypto/keys/secp256k1).
AMINO_SECP256K1_PUBKEY_PREFIX = bytes.fromhex("eb5ae98721")
SECP256K1_TYPE_URL = "/cosmos.crypto.secp256k1.PubKey"
#: Per key length: its Amino prefix, its protobuf Any type URL, and the KeyFormat field with its bech32 prefix.
_KEY_TYPES = {
    32: (AMINO_ED25519_PUBKEY_PREFIX, ED25519_TYPE_URL, "consensus_key_prefix"),
    33: (AMINO_SECP256K1_PUBKEY_PREFIX, SECP256K1_TYPE_URL, "account_key_prefix"),
}


def format_public_key(public_key: bytes, key_format: KeyFormat) -> str:
    """Display a key the way the chain's ``key_format`` asks (as ``tmkms`` prints it)."""
    if len(public_key) not in _KEY_TYPES:
        raise KmsError(f"an Ed25519 public key is 32 bytes, found {len(public_key)}")
    amino_prefix, type_url, prefix_field = _KEY_TYPES[len(public_key)]
    if key_format.type == "hex":
        return public_key.hex().upper()
    if key_format.type == "cosmos-json":
        doc = {"@type": type_url, "key": base64.b64encode(public_key).decode()}
        return json.dumps(doc, separators=(",", ":"))
    prefix = getattr(key_format, prefix_field)  # bech32
    if not prefix:
        raise ConfigError(f"bech32 needs the {prefix_field}", key=f"chain.key_format.{prefix_field}")
    return bech32_encode(prefix, amino_prefix + public_key)
