"""Software-held Ed25519 consensus keys, file-compatible with tmkms's softsign provider.

Formats read (tmkms v0.15 ``src/key_utils.rs``, ``src/keyring/ed25519/signing_key.rs``,
``src/keyring/providers/softsign.rs``; docs/protocol.md §3.4):

* ``base64`` (tmkms's default): standard padded base64 of the key bytes, trailing whitespace trimmed, where the
  bytes are a 32-byte seed (what ``tmkms softsign keygen`` writes), a 64-byte expanded key (clamped scalar ‖
  nonce prefix, ed25519-dalek ``ExpandedSecretKey``) or a 96-byte YubiHSM export (scalar byte-reversed ‖ prefix ‖
  public key).
* ``raw``: the same bytes without base64 (a pykms extension).
* ``json``: CometBFT's ``priv_validator_key.json`` (priv_key.value = seed ‖ public key).

One deliberate difference: 64 bytes whose second half is the public key of the first half are Go's seed ‖ public
key layout (someone base64-encoded ``priv_key.value``). tmkms would read them as an expanded key, i.e. a different
key the chain does not know; pykms reads them as the seed they are.

Key bytes never reach an error text or a repr. ``sign`` verifies each signature before returning it, so the
guard never stores one that does not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nacl import bindings
from nacl.signing import SigningKey

from pykms.errors import FatalProviderError, KeyFileError
from pykms.keyfiles import read_secret_file, write_secret_file
from pykms.providers.signer import verify_or_raise

if TYPE_CHECKING:
    from pykms.config import SoftsignConfig

__all__ = ["KeyFormat", "SoftsignSigner", "import_priv_validator_key", "keygen", "load_signing_key"]

KeyFormat = Literal["base64", "raw", "json"]

SEED_LEN = 32
EXPANDED_LEN = 64
#: tmkms COMBINED_KEY_LENGTH: expanded secret key (64) + public key (32), as exported from a YubiHSM.
YUBIHSM_EXPORT_LEN = 96
#: CometBFT amino names (crypto/ed25519/ed25519.go PrivKeyName / PubKeyName).
PRIV_KEY_TYPE = "tendermint/PrivKeyEd25519"
PUB_KEY_TYPE = "tendermint/PubKeyEd25519"

_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]+={0,2}")


class _Expanded:
    """Ed25519 signing from an expanded secret key (no seed), built from libsodium's scalar primitives.

    RFC 8032 §5.1.6 with the hashed key already split: a = clamp(scalar) mod L, r = H(prefix ‖ M) mod L,
    R = rB, k = H(R ‖ A ‖ M) mod L, S = r + k·a mod L.
    """

    __slots__ = ("_prefix", "_scalar", "public")

    def __init__(self, scalar: bytes, prefix: bytes) -> None:
        clamped = bytearray(scalar)
        # RFC 8032 §5.1.5 clamping, as ed25519-dalek's ExpandedSecretKey::from_bytes applies it.
        clamped[0] &= 248
        clamped[31] &= 127
        clamped[31] |= 64
        self._scalar = bindings.crypto_core_ed25519_scalar_reduce(bytes(clamped) + bytes(32))
        self._prefix = prefix
        self.public: bytes = bindings.crypto_scalarmult_ed25519_base_noclamp(self._scalar)

    def sign(self, message: bytes) -> bytes:
        r = bindings.crypto_core_ed25519_scalar_reduce(hashlib.sha512(self._prefix + message).digest())
        big_r = bindings.crypto_scalarmult_ed25519_base_noclamp(r)
        k = bindings.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + self.public + message).digest())
        s = bindings.crypto_core_ed25519_scalar_add(r, bindings.crypto_core_ed25519_scalar_mul(k, self._scalar))
        return big_r + s


def _from_key_bytes(data: bytes, where: str) -> SigningKey | _Expanded:
    """Interpret decoded key bytes by length, as tmkms's ``SigningKey::try_from`` does."""
    if len(data) == SEED_LEN:
        return SigningKey(data)
    if len(data) == EXPANDED_LEN:
        seed_key = SigningKey(data[:SEED_LEN])
        if bytes(seed_key.verify_key) == data[SEED_LEN:]:
            return seed_key  # Go's seed ‖ public key (see the module docstring)
        return _Expanded(data[:32], data[32:])
    if len(data) == YUBIHSM_EXPORT_LEN:
        # tmkms: "little-endian encoded, prehashed key, exported from YubiHSM": reverse the scalar's bytes.
        return _Expanded(data[:32][::-1], data[32:64])
    raise KeyFileError(
        f"{where}: an Ed25519 key is 32 (seed), 64 (expanded) or 96 (YubiHSM export) bytes, found {len(data)}"
    )


def _decode_json(raw: bytes, where: str) -> SigningKey:
    """A CometBFT priv_validator_key.json; the stored public key and address must match the private key."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{where}: not a priv_validator_key.json (invalid JSON)") from None
    priv = doc.get("priv_key") if isinstance(doc, dict) else None
    if not isinstance(priv, dict) or not isinstance(priv.get("value"), str):
        raise KeyFileError(f"{where}: no priv_key.value; expected CometBFT's priv_validator_key.json")
    if priv.get("type") != PRIV_KEY_TYPE:
        raise KeyFileError(
            f"{where}: priv_key.type is {priv.get('type')!r}; only {PRIV_KEY_TYPE} consensus keys are supported"
        )
    try:
        value = base64.b64decode(priv["value"], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: priv_key.value is not base64") from None
    if len(value) != EXPANDED_LEN:
        raise KeyFileError(f"{where}: priv_key.value is {len(value)} bytes; expected 64 (seed ‖ public key)")
    key = SigningKey(value[:SEED_LEN])
    pub = bytes(key.verify_key)
    if value[SEED_LEN:] != pub:
        raise KeyFileError(f"{where}: priv_key.value's public half does not match its seed (corrupt key file)")
    pub_key = doc.get("pub_key")
    if (
        isinstance(pub_key, dict)
        and pub_key.get("value") is not None
        and (pub_key.get("type") != PUB_KEY_TYPE or pub_key.get("value") != base64.b64encode(pub).decode())
    ):
        raise KeyFileError(f"{where}: pub_key does not match priv_key (corrupt or edited key file)")
    address = doc.get("address")
    if isinstance(address, str) and address.upper() != hashlib.sha256(pub).digest()[:20].hex().upper():
        raise KeyFileError(f"{where}: address does not match priv_key (corrupt or edited key file)")
    return key


def _detect(raw: bytes) -> KeyFormat:
    text = raw.strip()
    if text.startswith(b"{"):
        return "json"
    if _BASE64_TEXT.fullmatch(text):
        return "base64"
    return "raw"


def load_signing_key(path: Path, key_format: KeyFormat | None = None) -> SigningKey | _Expanded:
    """Read a softsign key file (permissions checked first); ``key_format`` None means autodetect."""
    raw = read_secret_file(path)
    fmt = key_format or _detect(raw)
    if fmt == "json":
        return _decode_json(raw, str(path))
    if fmt == "base64":
        try:
            data = base64.b64decode(raw.rstrip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(
                f"{path}: not valid base64 (key_format = base64); for a priv_validator_key.json set "
                'key_format = "json" or run `pykms softsign import`'
            ) from None
        return _from_key_bytes(data, str(path))
    return _from_key_bytes(raw, str(path))


class SoftsignSigner:
    """An Ed25519 key held in process memory (the ``softsign`` provider)."""

    provider = "softsign"
    signs_extensions = True

    def __init__(self, key: SigningKey | _Expanded, *, source: str = "memory") -> None:
        self._key: SigningKey | _Expanded | None = key
        self._public = bytes(key.verify_key) if isinstance(key, SigningKey) else key.public
        self._source = source

    @classmethod
    def from_config(cls, cfg: SoftsignConfig) -> SoftsignSigner:
        if cfg.key_type != "consensus":
            raise FatalProviderError(f"{cfg.path}: softsign account keys are not supported (consensus keys only)")
        return cls(load_signing_key(cfg.path, cfg.key_format), source=str(cfg.path))

    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        key = self._key
        if key is None:
            raise FatalProviderError(f"softsign key {self._source} is closed")
        signature = key.sign(message).signature if isinstance(key, SigningKey) else key.sign(message)
        verify_or_raise(self._public, message, signature, self.provider)
        return signature

    def close(self) -> None:
        self._key = None

    def __repr__(self) -> str:
        return f"SoftsignSigner(public_key={self._public.hex().upper()}, source={self._source!r})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a SoftsignSigner holds a secret key and cannot be pickled")


def keygen(path: Path) -> bytes:
    """``tmkms softsign keygen``: a random 32-byte seed, base64 without newline, mode 0600. Returns the pubkey.

    Unlike tmkms, an existing file is never overwritten (losing a consensus key cannot be undone).
    """
    seed = os.urandom(SEED_LEN)
    write_secret_file(path, base64.b64encode(seed))
    return bytes(SigningKey(seed).verify_key)


def import_priv_validator_key(json_path: Path, out_path: Path) -> bytes:
    """``tmkms softsign import``: priv_validator_key.json -> base64 seed file (0600). Returns the pubkey."""
    key = _decode_json(read_secret_file(json_path), str(json_path))
    write_secret_file(out_path, base64.b64encode(bytes(key)))
    return bytes(key.verify_key)
