"""``pykms yubihsm setup``: provision a YubiHSM2 from a 24-word BIP39 mnemonic, the way tmkms does.

Derivation (tmkms ``src/commands/yubihsm/setup.rs``, hkd32 ``key_material.rs``; facts only, own code):

* The mnemonic encodes 32 bytes of entropy (BIP39: 256 bits + 8-bit SHA-256 checksum = 24 words of 11 bits).
* ``derive(path)``: hkd32. The path is the version component ``b"1"`` followed by the given components; the key
  starts as the entropy and for each component becomes ``HMAC-SHA512(key, component)``: its right half (chain
  code) for every component but the last, its left half for the last.
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
from yubihsm.defs import ALGORITHM, CAPABILITY, OBJECT
from yubihsm.objects import AuthenticationKey, Opaque, WrapKey

from pykms.errors import ConfigError, KmsError, ProviderError
from pykms.keyring import bech32_encode
from pykms.providers.yubihsm import close_session, device_errors, open_session

__all__ = [
    "WRAP_KEY_ID",
    "MnemonicError",
    "Role",
    "SetupPlan",
    "derive_secret",
    "entropy_to_mnemonic",
    "mnemonic_to_entropy",
    "new_mnemonic_entropy",
    "plan_from_entropy",
    "provision",
]

WRAP_KEY_ID = 1
#: Temporary setup key and report object id (yubihsm.rs setup/profile.rs DEFAULT_SETUP_KEY_ID, ..._REPORT_...).
SETUP_KEY_ID = 0xFFFF
REPORT_OBJECT_ID = 0xFFFF
#: The factory default authentication key, restored by a reset.
_FACTORY_KEY_ID = 1
_FACTORY_PASSWORD = "password"
#: How long the device may take to come back after a reset.
_RESET_TIMEOUT_S = 10.0
_DERIVATION_VERSION = b"1"
_HKDF_INFO = b"yubihsm setup BIP39 derivation"
_KEY_SIZE = 32
ALL_DOMAINS = 0xFFFF
DOMAIN_1 = 0x0001


class MnemonicError(KmsError):
    """The mnemonic is not 24 valid BIP39 English words with a correct checksum."""


# ---- BIP39 / hkd32 (pure) ------------------------------------------------------------------------------------


def _bip39() -> Any:
    try:
        from mnemonic import Mnemonic
    except ImportError:
        raise ConfigError(
            "the BIP39 English word list is not available", fix="pip install mnemonic (a pykms dependency)"
        ) from None
    return Mnemonic("english")


def entropy_to_mnemonic(entropy: bytes) -> str:
    if len(entropy) != _KEY_SIZE:
        raise MnemonicError("mnemonic entropy must be 32 bytes")
    return str(_bip39().to_mnemonic(entropy))


def mnemonic_to_entropy(phrase: str) -> bytes:
    """Decode and checksum a 24-word phrase; the error never repeats the words."""
    words = phrase.lower().split()
    if len(words) != 24:
        raise MnemonicError(f"expected 24 words, got {len(words)}")
    bip39 = _bip39()
    for position, word in enumerate(words, 1):
        if word not in bip39.wordlist:
            raise MnemonicError(f"word {position} is not in the BIP39 English word list")
    try:
        return bytes(bip39.to_entropy(words))
    except ValueError:
        raise MnemonicError("checksum mismatch: a word is wrong or out of order") from None


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
    operator = (
        CAPABILITY.GENERATE_ASYMMETRIC_KEY
        | CAPABILITY.PUT_ASYMMETRIC
        | CAPABILITY.GENERATE_HMAC_KEY
        | CAPABILITY.PUT_HMAC_KEY
        | CAPABILITY.IMPORT_WRAPPED
        | CAPABILITY.EXPORT_WRAPPED
        | CAPABILITY.GET_OPAQUE
        | CAPABILITY.GET_OPTION
        | CAPABILITY.GET_LOG_ENTRIES
        | CAPABILITY.SIGN_ATTESTATION_CERTIFICATE
    )
    auditor = CAPABILITY.GET_LOG_ENTRIES | CAPABILITY.GET_OPTION | CAPABILITY.SET_OPTION | CAPABILITY.GET_OPAQUE
    validator = (
        CAPABILITY.SIGN_ECDSA
        | CAPABILITY.SIGN_EDDSA
        | CAPABILITY.SIGN_ATTESTATION_CERTIFICATE
        | CAPABILITY.GET_LOG_ENTRIES
    )
    roles = (
        Role("admin", 1, CAPABILITY.ALL, CAPABILITY.ALL, ALL_DOMAINS, phrase),
        Role("operator", 2, operator, CAPABILITY.ALL, ALL_DOMAINS, _role_password(entropy, "operator")),
        Role("auditor", 3, auditor, CAPABILITY.NONE, ALL_DOMAINS, _role_password(entropy, "auditor")),
        Role("validator", 4, validator, CAPABILITY.NONE, DOMAIN_1, _role_password(entropy, "validator")),
    )
    wrap_key = derive_secret(entropy, [b"wrap", f"0x{WRAP_KEY_ID:04x}".encode()])
    return SetupPlan(phrase, roles, wrap_key)


def _label(prefix: str, now: datetime) -> str:
    """``<prefix>:<RFC 3339 UTC seconds>``, as tmkms labels its objects (setup.rs create_object_label)."""
    return f"{prefix}:{now.strftime('%Y-%m-%dT%H:%M:%SZ')}"[:40]


# ---- provisioning (I/O, through python-yubihsm) -------------------------------------------------------------


def provision(url: str, auth_key: int, password: str, plan: SetupPlan) -> dict[str, Any]:
    """Erase the device and install ``plan``; returns the provisioning report (no secrets in it)."""
    when = datetime.now(UTC)
    backend, hsm, session = open_session(url, auth_key, password, what="yubihsm setup")
    try:
        with device_errors("yubihsm setup: reset", auth_key):
            serial = hsm.get_device_info().serial
            session.reset_device()
    finally:
        backend.close()

    # The device reboots after a reset: poll with the factory credentials until it answers.
    deadline = time.monotonic() + _RESET_TIMEOUT_S
    while True:
        try:
            backend, hsm, session = open_session(
                url, _FACTORY_KEY_ID, _FACTORY_PASSWORD, what="yubihsm setup: reconnect after reset"
            )
            break
        except ProviderError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
    setup_password = secrets.token_hex(16)
    try:
        with device_errors("yubihsm setup: temporary key", _FACTORY_KEY_ID):
            AuthenticationKey.put_derived(
                session, SETUP_KEY_ID, "pykms temporary setup key", ALL_DOMAINS, CAPABILITY.ALL, CAPABILITY.ALL,
                setup_password,
            )  # fmt: skip
    finally:
        close_session(session, backend)

    backend, hsm, session = open_session(url, SETUP_KEY_ID, setup_password, what="yubihsm setup")
    try:
        with device_errors("yubihsm setup: delete default key", SETUP_KEY_ID):
            session.get_object(_FACTORY_KEY_ID, OBJECT.AUTHENTICATION_KEY).delete()
        for role in plan.roles:
            with device_errors(f"yubihsm setup: install role {role.name}", SETUP_KEY_ID):
                AuthenticationKey.put_derived(
                    session, role.key_id, _label(role.name, when), role.domains, CAPABILITY(role.capabilities),
                    CAPABILITY(role.delegated), role.password,
                )  # fmt: skip
        with device_errors("yubihsm setup: install wrap key", SETUP_KEY_ID):
            WrapKey.put(
                session, WRAP_KEY_ID, _label("primary", when), ALL_DOMAINS,
                CAPABILITY.EXPORT_WRAPPED | CAPABILITY.IMPORT_WRAPPED | CAPABILITY.WRAP_DATA | CAPABILITY.UNWRAP_DATA,
                ALGORITHM.AES256_CCM_WRAP, CAPABILITY.ALL, plan.wrap_key,
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
        with device_errors("yubihsm setup: store report", SETUP_KEY_ID):
            Opaque.put(
                session, REPORT_OBJECT_ID, "pykms setup report", ALL_DOMAINS, CAPABILITY.GET_OPAQUE,
                ALGORITHM.OPAQUE_DATA,
                json.dumps(report, sort_keys=True).encode(),
            )  # fmt: skip
        with device_errors("yubihsm setup: delete temporary setup key", SETUP_KEY_ID):
            session.get_object(SETUP_KEY_ID, OBJECT.AUTHENTICATION_KEY).delete()
    finally:
        close_session(session, backend)
    return report
