"""``pykms yubihsm setup``: provision a YubiHSM2 from a 24-word BIP39 mnemonic, the way tmkms does.

Derivation (tmkms ``src/commands/yubihsm/setup.rs``, hkd32 ``key_material.rs``; facts only, own code):

* The mnemonic encodes 32 bytes of entropy (BIP39: 256 bits + 8-bit SHA-256 checksum = 24 words of 11 bits).
* ``derive(path)``: hkd32. The path is the version component ``b"1"`` followed by the given components, each
  serialised as ``len-1`` (one byte) then the bytes; the key starts as the entropy and for each component becomes
  ``HMAC-SHA512(key, component)``: its right half (chain code) for every component but the last, its left half
  for the last.
* admin (auth key 1): password = the mnemonic phrase itself; capabilities and delegated capabilities all,
  domains all.
* operator (2), auditor (3), validator (4): password = bech32(hrp ``kms-<role>-password-``,
  ``derive([b"role", role])[:16]``), with tmkms's capabilities and domains (below).
* wrap key 1 (label ``primary``): AES-256-CCM, key = ``derive([b"wrap", b"0x0001"])``, capabilities
  export/import-wrapped and wrap/unwrap-data, delegated all, domains all.
* New mnemonic entropy: HKDF-SHA512 (no salt, info ``yubihsm setup BIP39 derivation``) over 32 bytes from the
  device's PRNG followed by 32 bytes from the OS, so one good source suffices.

Provisioning (yubihsm.rs ``setup::erase_device_and_init_with_profile``): reset the device with the configured
credentials, reconnect with the factory default (key 1, "password"), install a temporary setup key 0xFFFF,
reconnect with it, delete the default key, install the roles and the wrap key, store the JSON report as opaque
object 0xFFFF, and delete the setup key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pykms.errors import ConfigError, FatalProviderError, KmsError, ProviderError
from pykms.providers.yubihsm import map_yubihsm_error, open_session

__all__ = [
    "ADMIN_KEY_ID",
    "AUDITOR_KEY_ID",
    "OPERATOR_KEY_ID",
    "VALIDATOR_KEY_ID",
    "WRAP_KEY_ID",
    "Credentials",
    "MnemonicError",
    "Role",
    "SetupPlan",
    "bech32_encode",
    "derive_secret",
    "entropy_to_mnemonic",
    "mnemonic_to_entropy",
    "new_mnemonic_entropy",
    "plan_from_entropy",
    "provision",
]

ADMIN_KEY_ID = 1
OPERATOR_KEY_ID = 2
AUDITOR_KEY_ID = 3
VALIDATOR_KEY_ID = 4
WRAP_KEY_ID = 1
#: Temporary setup key and report object id (yubihsm.rs setup/profile.rs DEFAULT_SETUP_KEY_ID, ..._REPORT_...).
SETUP_KEY_ID = 0xFFFF
REPORT_OBJECT_ID = 0xFFFF
_DERIVATION_VERSION = b"1"
_HKDF_INFO = b"yubihsm setup BIP39 derivation"
_KEY_SIZE = 32

# Capability bits (python-yubihsm defs.CAPABILITY).
_C = {
    "GET_OPAQUE": 1 << 0x00,
    "PUT_OPAQUE": 1 << 0x01,
    "PUT_ASYMMETRIC": 1 << 0x03,
    "GENERATE_ASYMMETRIC_KEY": 1 << 0x04,
    "SIGN_ECDSA": 1 << 0x07,
    "SIGN_EDDSA": 1 << 0x08,
    "EXPORT_WRAPPED": 1 << 0x0C,
    "IMPORT_WRAPPED": 1 << 0x0D,
    "SET_OPTION": 1 << 0x11,
    "GET_OPTION": 1 << 0x12,
    "PUT_HMAC_KEY": 1 << 0x14,
    "GENERATE_HMAC_KEY": 1 << 0x15,
    "GET_LOG_ENTRIES": 1 << 0x18,
    "SIGN_ATTESTATION_CERTIFICATE": 1 << 0x22,
    "WRAP_DATA": 1 << 0x25,
    "UNWRAP_DATA": 1 << 0x26,
}
ALL_CAPABILITIES = (1 << 0x38) - 1
ALL_DOMAINS = 0xFFFF
DOMAIN_1 = 0x0001


def _caps(*names: str) -> int:
    total = 0
    for name in names:
        total |= _C[name]
    return total


class MnemonicError(KmsError):
    """The mnemonic is not 24 valid BIP39 English words with a correct checksum."""


# ---- BIP39 / hkd32 / bech32 (pure) ---------------------------------------------------------------------------


def _wordlist() -> list[str]:
    try:
        from mnemonic import Mnemonic
    except ImportError:
        raise ConfigError(
            "the BIP39 English word list is not available", fix="pip install mnemonic (a pykms dependency)"
        ) from None
    return list(Mnemonic("english").wordlist)


def entropy_to_mnemonic(entropy: bytes) -> str:
    """BIP39: entropy || first len/32 bits of SHA-256(entropy), split into 11-bit word indexes."""
    if len(entropy) != _KEY_SIZE:
        raise MnemonicError("mnemonic entropy must be 32 bytes")
    words = _wordlist()
    bits = int.from_bytes(entropy, "big") << 8 | hashlib.sha256(entropy).digest()[0]
    return " ".join(words[(bits >> (11 * (23 - i))) & 0x7FF] for i in range(24))


def mnemonic_to_entropy(phrase: str) -> bytes:
    """Decode and checksum a 24-word phrase; the error never repeats the words."""
    words = phrase.split()
    if len(words) != 24:
        raise MnemonicError(f"expected 24 words, got {len(words)}")
    index = {word: i for i, word in enumerate(_wordlist())}
    bits = 0
    for position, word in enumerate(words, 1):
        if word.lower() not in index:
            raise MnemonicError(f"word {position} is not in the BIP39 English word list")
        bits = bits << 11 | index[word.lower()]
    entropy = (bits >> 8).to_bytes(_KEY_SIZE, "big")
    if hashlib.sha256(entropy).digest()[0] != bits & 0xFF:
        raise MnemonicError("checksum mismatch: a word is wrong or out of order")
    return entropy


def derive_secret(entropy: bytes, path: list[bytes]) -> bytes:
    """hkd32 subkey of ``entropy`` for ``[version] + path`` (see the module docstring)."""
    if not path:
        raise ValueError("cannot derive the root path")
    components = [_DERIVATION_VERSION, *path]
    key = entropy
    for i, component in enumerate(components):
        digest = hmac.new(key, component, hashlib.sha512).digest()
        key = digest[:_KEY_SIZE] if i == len(components) - 1 else digest[_KEY_SIZE:]
    return key


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32_polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if (top >> i) & 1 else 0
    return chk


def bech32_encode(hrp: str, data: bytes) -> str:
    """BIP173 bech32 (not bech32m) of 8-bit ``data`` regrouped into 5-bit words."""
    acc, bits, words = 0, 0, []
    for byte in data:
        acc = acc << 8 | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            words.append(acc >> bits & 31)
    if bits:
        words.append(acc << (5 - bits) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = _bech32_polymod([*expanded, *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[w] for w in words + checksum)


def new_mnemonic_entropy(device_random: bytes, os_random: Callable[[int], bytes] = os.urandom) -> bytes:
    """HKDF-SHA512 over device randomness || OS randomness -> 32 bytes of mnemonic entropy."""
    ikm = device_random + os_random(_KEY_SIZE)
    return HKDF(algorithm=hashes.SHA512(), length=_KEY_SIZE, salt=None, info=_HKDF_INFO).derive(ikm)


# ---- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """One authentication key to install. The password is kept out of repr."""

    name: str
    key_id: int
    capabilities: int
    delegated: int
    domains: int
    password: str = field(repr=False)


@dataclass(frozen=True)
class Credentials:
    key_id: int
    password: str = field(repr=False)


@dataclass(frozen=True)
class SetupPlan:
    """Everything derived from one mnemonic: the roles, the wrap key, and the phrase for display."""

    mnemonic: str = field(repr=False)
    roles: tuple[Role, ...]
    wrap_key: bytes = field(repr=False)

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)


def _role_password(entropy: bytes, role: str) -> str:
    # Auth keys are two AES-128 keys from PBKDF2: more than 128 bits of password add nothing, so tmkms
    # truncates the derived secret to 16 bytes before bech32 encoding.
    secret = derive_secret(entropy, [b"role", role.encode()])[: _KEY_SIZE // 2]
    return bech32_encode(f"kms-{role}-password-", secret)


def plan_from_entropy(entropy: bytes) -> SetupPlan:
    """tmkms's roles (setup.rs derive_roles_from_mnemonic) and wrap key 1 for this entropy."""
    phrase = entropy_to_mnemonic(entropy)
    roles = (
        Role("admin", ADMIN_KEY_ID, ALL_CAPABILITIES, ALL_CAPABILITIES, ALL_DOMAINS, phrase),
        Role(
            "operator",
            OPERATOR_KEY_ID,
            _caps(
                "GENERATE_ASYMMETRIC_KEY",
                "PUT_ASYMMETRIC",
                "GENERATE_HMAC_KEY",
                "PUT_HMAC_KEY",
                "IMPORT_WRAPPED",
                "EXPORT_WRAPPED",
                "GET_OPAQUE",
                "GET_OPTION",
                "GET_LOG_ENTRIES",
                "SIGN_ATTESTATION_CERTIFICATE",
            ),
            ALL_CAPABILITIES,
            ALL_DOMAINS,
            _role_password(entropy, "operator"),
        ),
        Role(
            "auditor",
            AUDITOR_KEY_ID,
            _caps("GET_LOG_ENTRIES", "GET_OPTION", "SET_OPTION", "GET_OPAQUE"),
            0,
            ALL_DOMAINS,
            _role_password(entropy, "auditor"),
        ),
        Role(
            "validator",
            VALIDATOR_KEY_ID,
            _caps("SIGN_ECDSA", "SIGN_EDDSA", "SIGN_ATTESTATION_CERTIFICATE", "GET_LOG_ENTRIES"),
            0,
            DOMAIN_1,
            _role_password(entropy, "validator"),
        ),
    )
    wrap_key = derive_secret(entropy, [b"wrap", f"0x{WRAP_KEY_ID:04x}".encode()])
    return SetupPlan(phrase, roles, wrap_key)


def _label(prefix: str, now: datetime) -> str:
    """``<prefix>:<RFC 3339 UTC seconds>``, as tmkms labels its objects (setup.rs create_object_label)."""
    return f"{prefix}:{now.strftime('%Y-%m-%dT%H:%M:%SZ')}"[:40]


# ---- provisioning (I/O, through python-yubihsm) -------------------------------------------------------------


def _close(session: Any, backend: Any) -> None:
    """Close the session on the device (it has only 16), then the connection."""
    with contextlib.suppress(Exception):
        session.close()
    backend.close()


def provision(
    url: str,
    current: Credentials,
    plan: SetupPlan,
    *,
    now: datetime | None = None,
    reset_timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Erase the device and install ``plan``; returns the provisioning report (no secrets in it)."""
    from yubihsm.defs import ALGORITHM, CAPABILITY, OBJECT
    from yubihsm.objects import AuthenticationKey, Opaque, WrapKey

    when = now or datetime.now(UTC)
    backend, hsm, session = open_session(url, current.key_id, current.password, what="yubihsm setup")
    serial = None
    try:
        serial = hsm.get_device_info().serial
        session.reset_device()
    except Exception as exc:
        raise map_yubihsm_error(exc, what="yubihsm setup: reset", auth_key=current.key_id) from None
    finally:
        backend.close()

    # The device reboots after a reset: poll with the factory credentials until it answers.
    deadline = time.monotonic() + reset_timeout
    while True:
        try:
            backend, hsm, session = open_session(url, 1, "password", what="yubihsm setup: reconnect after reset")
            break
        except ProviderError:
            if time.monotonic() >= deadline:
                raise
            sleep(0.25)
    setup_password = secrets.token_hex(16)
    try:
        AuthenticationKey.put_derived(
            session, SETUP_KEY_ID, "pykms temporary setup key", ALL_DOMAINS, CAPABILITY(ALL_CAPABILITIES),
            CAPABILITY(ALL_CAPABILITIES), setup_password,
        )  # fmt: skip
    except Exception as exc:
        raise map_yubihsm_error(exc, what="yubihsm setup: temporary key", auth_key=1) from None
    finally:
        _close(session, backend)

    backend, hsm, session = open_session(url, SETUP_KEY_ID, setup_password, what="yubihsm setup")
    step = "delete default key"
    try:
        session.get_object(1, OBJECT.AUTHENTICATION_KEY).delete()
        for role in plan.roles:
            step = f"install role {role.name}"
            AuthenticationKey.put_derived(
                session, role.key_id, _label(role.name, when), role.domains, CAPABILITY(role.capabilities),
                CAPABILITY(role.delegated), role.password,
            )  # fmt: skip
        step = "install wrap key"
        WrapKey.put(
            session, WRAP_KEY_ID, _label("primary", when), ALL_DOMAINS,
            CAPABILITY(_caps("EXPORT_WRAPPED", "IMPORT_WRAPPED", "WRAP_DATA", "UNWRAP_DATA")),
            ALGORITHM.AES256_CCM_WRAP, CAPABILITY(ALL_CAPABILITIES), plan.wrap_key,
        )  # fmt: skip
        report = {
            "serial_number": serial,
            "provisioned_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "roles": [
                {
                    "name": r.name,
                    "authentication_key_id": r.key_id,
                    "capabilities": f"0x{r.capabilities:016x}",
                    "delegated_capabilities": f"0x{r.delegated:016x}",
                    "domains": f"0x{r.domains:04x}",
                }
                for r in plan.roles
            ],
            "wrap_keys": [{"id": WRAP_KEY_ID, "algorithm": "aes256-ccm-wrap", "label": _label("primary", when)}],
            "software": "pykms",
        }
        step = "store report"
        Opaque.put(
            session, REPORT_OBJECT_ID, "pykms setup report", ALL_DOMAINS, CAPABILITY(_C["GET_OPAQUE"]),
            ALGORITHM.OPAQUE_DATA,
            json.dumps(report, sort_keys=True).encode(),
        )  # fmt: skip
        step = "delete temporary setup key"
        session.get_object(SETUP_KEY_ID, OBJECT.AUTHENTICATION_KEY).delete()
    except ProviderError:
        raise
    except Exception as exc:
        raise map_yubihsm_error(exc, what=f"yubihsm setup: {step}", auth_key=SETUP_KEY_ID) from None
    finally:
        _close(session, backend)
    if serial is None:
        raise FatalProviderError("yubihsm setup: no serial number")
    return report
