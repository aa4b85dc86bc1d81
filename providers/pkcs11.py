"""PKCS#11 provider: Ed25519 consensus keys on an HSM reached through its PKCS#11 module.

Theory of operation
-------------------
A PKCS#11 module is loaded once per process (python-pkcs11 caches it by path). Every call into one module goes
through one lock (``_Module.lock``): the module is initialised with ``C_Initialize(NULL)``, which promises the
library single-threaded access, and signers are called from several connections' threads.

Each configured token (module + token label or slot) is a ``Pkcs11Token``: one logged-in session, shared by the
signers of every key on it. ``Pkcs11Token.run(op)`` runs ``op(session)`` and, when the module reports a lost
session or device (CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_CRYPTOKI_NOT_
INITIALIZED, ...), re-opens the session (re-initialising the module where the whole library was lost) and retries
once before raising ``TransientProviderError``. Wrong or locked PINs and absent keys are ``FatalProviderError``
naming what to fix; the PIN itself never appears in any message.

Key material: Ed25519 per PKCS#11 3.0 (``CKK_EC_EDWARDS``, ``CKM_EC_EDWARDS_KEY_PAIR_GEN``, ``CKM_EDDSA`` without
parameters = pure Ed25519). ``CKA_EC_PARAMS`` is the DER PrintableString "edwards25519" (the form SoftHSM2 2.6 and
PKCS#11 3.0 section 2.3.5 name; the OID 1.3.101.112 is also accepted by SoftHSM2). ``CKA_EC_POINT`` of the public
key is a DER OCTET STRING holding the 32 raw bytes. An imported private key's ``CKA_VALUE`` is the 32-byte seed
(RFC 8032 private key), checked against PyNaCl in the tests.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from pykms.errors import (
    ConfigError,
    FatalProviderError,
    KeyFileError,
    KmsError,
    ProviderError,
    TransientProviderError,
)
from pykms.keyfiles import read_secret_file
from pykms.providers.signer import verify_or_raise

if TYPE_CHECKING:
    from pykms.config import Pkcs11Config, Pkcs11Key

__all__ = [
    "KeyInfo",
    "Pkcs11Signer",
    "Pkcs11Token",
    "generate_key",
    "import_key",
    "list_keys",
    "open_token",
    "parse_key_id",
]

PROVIDER = "pkcs11"

#: DER PrintableString "edwards25519": PKCS#11 3.0 section 2.3.5 (curve name form), what SoftHSM2 2.6 writes.
EC_PARAMS_ED25519 = b"\x13\x0cedwards25519"

#: Message signed once when a signer opens, to prove the public key object matches the private key.
_PROBE_MESSAGE = b"pykms pkcs11 key check"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- pure helpers


def encode_ec_point(public_key: bytes) -> bytes:
    """CKA_EC_POINT for an Ed25519 public key: DER OCTET STRING (tag 0x04, length 0x20) of the 32 bytes."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b"\x04\x20" + public_key


def decode_ec_point(ec_point: bytes) -> bytes:
    """The 32 raw bytes from CKA_EC_POINT; some tokens return them bare instead of DER-wrapped."""
    if len(ec_point) == 34 and ec_point[:2] == b"\x04\x20":
        return bytes(ec_point[2:])
    if len(ec_point) == 32:
        return bytes(ec_point)
    raise FatalProviderError(
        f"the token's Ed25519 public key has an unexpected CKA_EC_POINT encoding ({len(ec_point)} bytes)"
    )


def parse_key_id(key_id: str | None) -> bytes | None:
    """CKA_ID from its hex spelling in the config (``id = "01a2"``; the config reader has checked it is hex)."""
    return None if key_id is None else bytes.fromhex(key_id)


def read_pin(pin_file: Path | None, pin_env: str | None) -> str:
    """The user PIN from a private file (trailing newline dropped) or an environment variable; never the config."""
    if pin_file is not None:
        try:
            raw = read_secret_file(pin_file)
        except KeyFileError as exc:
            raise ConfigError(f"PIN file unusable: {exc}", key="providers.pkcs11.user_pin_file") from None
        try:
            pin = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"PIN file {pin_file} is not UTF-8 text", key="providers.pkcs11.user_pin_file") from None
        if not pin:
            raise ConfigError(f"PIN file {pin_file} is empty", key="providers.pkcs11.user_pin_file")
        return pin
    if pin_env is not None:
        pin = os.environ.get(pin_env, "")
        if not pin:
            raise ConfigError(
                f"environment variable {pin_env} is unset or empty",
                key="providers.pkcs11.user_pin_env",
                fix=f"export {pin_env} with the token's user PIN before starting pykms",
            )
        return pin
    raise ConfigError(
        "no user PIN source",
        key="providers.pkcs11",
        fix="set user_pin_file (a 0600 file holding the PIN) or user_pin_env (a variable name)",
    )


# ------------------------------------------------------------------------------------------- error mapping

#: The session is gone but the library is fine: open a new session and retry.
_SESSION_LOST: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.UserNotLoggedIn,
    p11e.OperationActive,
    p11e.OperationNotInitialized,
    p11e.SessionCount,
)
#: The device or the library is gone: re-initialise the module, then open a new session and retry.
_DEVICE_LOST: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.SlotIDInvalid,
    p11e.GeneralError,
    p11e.FunctionFailed,
    p11e.HostMemory,
    p11e.NoSuchToken,
)
_PIN_ERRORS: dict[type[p11e.PKCS11Error], str] = {
    p11e.PinIncorrect: "the user PIN was refused (CKR_PIN_INCORRECT); fix the PIN file or variable",
    p11e.PinInvalid: "the user PIN has invalid characters (CKR_PIN_INVALID); fix the PIN file or variable",
    p11e.PinLenRange: "the user PIN has the wrong length (CKR_PIN_LEN_RANGE); fix the PIN file or variable",
    p11e.PinLocked: "the user PIN is locked (CKR_PIN_LOCKED); unlock it with the token's SO tools",
    p11e.PinExpired: "the user PIN has expired (CKR_PIN_EXPIRED); set a new one with the token's tools",
    p11e.UserPinNotInitialized: "the token has no user PIN (CKR_USER_PIN_NOT_INITIALIZED); initialise it",
}


def _needs_reinit(exc: p11e.PKCS11Error) -> bool:
    # python-pkcs11 0.10 maps CKR_CRYPTOKI_NOT_INITIALIZED to a bare PKCS11Error (pkcs11/_pkcs11.pxd,
    # map_rv_to_error), so the exact class is the signal that the library lost its state.
    return isinstance(exc, _DEVICE_LOST) or type(exc) is p11e.PKCS11Error


def _is_retryable(exc: p11e.PKCS11Error) -> bool:
    return isinstance(exc, _SESSION_LOST) or _needs_reinit(exc)


def map_pkcs11_error(exc: BaseException, where: str) -> ProviderError:
    """Our exception for a python-pkcs11 one. The text names the failing step and the PKCS#11 error class only."""
    name = type(exc).__name__
    if isinstance(exc, p11e.PKCS11Error):
        for cls, text in _PIN_ERRORS.items():
            if isinstance(exc, cls):
                return FatalProviderError(f"pkcs11: {where}: {text}")
        if isinstance(exc, p11e.NoSuchToken):
            return TransientProviderError(f"pkcs11: {where}: token not found (is it connected and initialised?)")
        if _is_retryable(exc):
            return TransientProviderError(f"pkcs11: {where}: {name} (session or device lost)")
        if isinstance(exc, (p11e.MechanismInvalid, p11e.FunctionNotSupported, p11e.KeyTypeInconsistent)):
            return FatalProviderError(f"pkcs11: {where}: the token does not support Ed25519 (CKM_EDDSA): {name}")
        return TransientProviderError(f"pkcs11: {where}: {name}")
    return TransientProviderError(f"pkcs11: {where}: unexpected {name}")


# ------------------------------------------------------------------------------------------ module & token


class _Module:
    """One loaded PKCS#11 library; ``lock`` serialises every call into it (C_Initialize(NULL) semantics)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.users = 0
        #: Bumped on every (re-)initialisation; tokens re-open their session when it changed (stale handles
        #: could otherwise name another session's objects once the library reuses handle numbers).
        self.generation = 0
        self._lib: Any = None

    def lib(self) -> Any:
        if self._lib is None or not self._lib.initialized:
            try:
                self._lib = pkcs11.lib(self.path)  # initialises it (python-pkcs11 caches by path)
            except p11e.PKCS11Error as exc:
                # The binding's text here is the loader's (dlopen/dlsym) and holds no secret.
                detail = str(exc) or type(exc).__name__
                raise FatalProviderError(
                    f"pkcs11: cannot load module {self.path}: {detail} "
                    "(fix: give the vendor's PKCS#11 library as `module` in [[providers.pkcs11]])"
                ) from None
            self.generation += 1
        return self._lib

    def finalize(self) -> None:
        """Best effort; the next ``lib()`` initialises again (how a lost device or library state recovers)."""
        if self._lib is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                self._lib.finalize()
        self._lib = None


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _acquire_module(path: str) -> _Module:
    if not Path(path).is_file():
        raise ConfigError(
            f"PKCS#11 module {path} does not exist",
            key="providers.pkcs11.module",
            fix="give the path of the vendor's PKCS#11 .so (e.g. libsofthsm2.so)",
        )
    with _modules_lock:
        # Kept for the process's life: python-pkcs11 caches one library object per path, so one lock per path.
        module = _modules.setdefault(path, _Module(path))
    with module.lock:
        module.users += 1
    return module


class Pkcs11Token:
    """A logged-in session on one token, re-opened when lost. Thread-safe; shared by that token's signers.

    Reference counted: ``close()`` ends the session once every holder (``acquire``) has closed it.
    """

    def __init__(self, module: str | Path, pin: str, *, token_label: str | None = None, slot: int | None = None):
        self.token_label = token_label
        self.slot = slot
        self._pin = pin
        self._module = _acquire_module(str(module))
        self._session: Any = None
        self._generation = -1
        #: Bumped whenever a new session is opened, so signers know their cached key handles are stale.
        self.session_serial = 0
        self._users = 1

    def __repr__(self) -> str:  # never the PIN
        return f"Pkcs11Token(module={self._module.path!r}, token_label={self.token_label!r}, slot={self.slot!r})"

    @property
    def description(self) -> str:
        return f"token {self.token_label!r}" if self.token_label is not None else f"slot {self.slot}"

    @property
    def lock(self) -> threading.RLock:
        return self._module.lock

    def acquire(self) -> bool:
        """One more holder; False when the token is already closed."""
        with self._module.lock:
            if self._users == 0:
                return False
            self._users += 1
            return True

    def _find_token(self, lib: Any) -> Any:
        if self.token_label is not None:
            tokens = [
                t
                for t in lib.get_tokens(token_label=self.token_label)
                if self.slot is None or t.slot.slot_id == self.slot
            ]
            if len(tokens) > 1:
                raise FatalProviderError(
                    f"pkcs11: {len(tokens)} tokens are labelled {self.token_label!r} (fix: add `slot` to "
                    "[[providers.pkcs11]] to pick one)"
                )
            if not tokens:
                raise p11e.NoSuchToken()
            return tokens[0]
        for slot in lib.get_slots(token_present=True):
            if slot.slot_id == self.slot:
                return slot.get_token()
        raise p11e.NoSuchToken()

    def _session_now(self) -> Any:
        if self._users == 0:
            raise FatalProviderError("pkcs11: signer used after close()")
        if self._session is not None and self._generation == self._module.generation:
            return self._session
        token = self._find_token(self._module.lib())
        try:
            self._session = token.open(rw=True, user_pin=self._pin)
        except p11e.UserAlreadyLoggedIn:
            # Login state is per application and token: another session of ours is already logged in, and a new
            # session inherits it (PKCS#11 2.40 section 5.6, C_Login).
            self._session = token.open(rw=True)
        self._generation = self._module.generation
        self.session_serial += 1
        return self._session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()

    def run(self, op: Callable[[Any], T], where: str) -> T:
        """``op(session)`` under the module lock; one re-open and retry when the session or device was lost."""
        with self._module.lock:
            for attempt in (0, 1):
                try:
                    return op(self._session_now())
                except p11e.PKCS11Error as exc:
                    if attempt == 0 and _is_retryable(exc):
                        if _needs_reinit(exc):
                            self._session = None
                            self._module.finalize()
                        else:
                            self._drop_session()
                        continue
                    raise map_pkcs11_error(exc, f"{where} on {self.description}") from None
                except KmsError:
                    raise
                except Exception as exc:  # a foreign error from the binding: still ours at this edge
                    raise map_pkcs11_error(exc, f"{where} on {self.description}") from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Drop one holder; the last ends the session and releases the module (finalised when unused)."""
        module = self._module
        with module.lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users > 0:
                return
            self._drop_session()
            module.users -= 1
            if module.users == 0:
                # Last user: finalize so sessions and logins end and a later load re-reads the module's config.
                module.finalize()

    def __enter__(self) -> Pkcs11Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------------------------------- key objects


def _named(label: str | None, key_id: bytes | None) -> dict[Attribute, Any]:
    """The label and id attributes of a key, those given."""
    attrs: dict[Attribute, Any] = {}
    if label is not None:
        attrs[Attribute.LABEL] = label
    if key_id is not None:
        attrs[Attribute.ID] = key_id
    return attrs


def _key_template(label: str | None, key_id: bytes | None) -> dict[Attribute, Any]:
    return {Attribute.KEY_TYPE: KeyType.EC_EDWARDS, **_named(label, key_id)}


def _describe(label: str | None, key_id: bytes | None) -> str:
    parts = []
    if label is not None:
        parts.append(f"label {label!r}")
    if key_id is not None:
        parts.append(f"id {key_id.hex()}")
    return " and ".join(parts) or "no label or id"


def _find_one(session: Any, cls: ObjectClass, label: str | None, key_id: bytes | None) -> Any | None:
    found = list(session.get_objects({**_key_template(label, key_id), Attribute.CLASS: cls}))
    if len(found) > 1:
        raise FatalProviderError(
            f"pkcs11: {len(found)} Ed25519 {cls.name.lower().replace('_', ' ')}s match {_describe(label, key_id)} "
            "(fix: give each key a unique label or id)"
        )
    return found[0] if found else None


@dataclass(frozen=True)
class KeyInfo:
    """One Ed25519 public key object on a token, as `pykms pkcs11 keys list` shows it."""

    label: str
    key_id: bytes
    public_key: bytes
    has_private: bool


def list_keys(token: Pkcs11Token) -> list[KeyInfo]:
    """Every Ed25519 public key on the token, and whether its private half (same label and id) is there."""

    def op(session: Any) -> list[KeyInfo]:
        out = []
        # Materialised first: a session runs one C_FindObjects search at a time (CKR_OPERATION_ACTIVE otherwise).
        pubs = list(session.get_objects({**_key_template(None, None), Attribute.CLASS: ObjectClass.PUBLIC_KEY}))
        for pub in pubs:
            label = str(pub[Attribute.LABEL])
            key_id = bytes(pub[Attribute.ID])
            public_key = decode_ec_point(bytes(pub[Attribute.EC_POINT]))
            priv = list(session.get_objects({**_key_template(label, key_id), Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
            out.append(KeyInfo(label, key_id, public_key, bool(priv)))
        return sorted(out, key=lambda k: (k.label, k.key_id))

    return token.run(op, "listing keys")


def _refuse_existing(session: Any, label: str | None, key_id: bytes | None, where: str) -> None:
    for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        if list(session.get_objects({**_key_template(label, key_id), Attribute.CLASS: cls})):
            raise FatalProviderError(
                f"pkcs11: an Ed25519 key with {_describe(label, key_id)} already exists on {where}; "
                "refusing to create a second one (fix: choose another label/id, or delete the old key with the "
                "token's tools if you mean to replace it)"
            )


def _public_template(label: str | None, key_id: bytes | None) -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        **_named(label, key_id),
        Attribute.EC_PARAMS: EC_PARAMS_ED25519,
        Attribute.VERIFY: True,
    }


def _private_template(label: str | None, key_id: bytes | None) -> dict[Attribute, Any]:
    # Sensitive, non-extractable, private: the seed never leaves the token again (PKCS#11 2.40 section 4.9).
    return {
        Attribute.TOKEN: True,
        **_named(label, key_id),
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }


def generate_key(token: Pkcs11Token, label: str | None, key_id: bytes | None) -> bytes:
    """Generate an Ed25519 key pair on the token (never extractable); returns the raw public key."""

    def op(session: Any) -> bytes:
        _refuse_existing(session, label, key_id, token.description)
        pub, _priv = session.generate_keypair(
            KeyType.EC_EDWARDS,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            public_template=_public_template(label, key_id),
            private_template=_private_template(label, key_id),
            store=True,
        )
        return decode_ec_point(bytes(pub[Attribute.EC_POINT]))

    return token.run(op, "generating a key")


def import_key(token: Pkcs11Token, seed: bytes, label: str | None, key_id: bytes | None) -> bytes:
    """Store an Ed25519 seed on the token as a sensitive, non-extractable key plus its public key object."""
    from nacl.signing import SigningKey

    public_key = bytes(SigningKey(seed).verify_key)

    def op(session: Any) -> bytes:
        _refuse_existing(session, label, key_id, token.description)
        priv = session.create_object(
            {
                **_private_template(label, key_id),
                **_key_template(label, key_id),
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.EC_PARAMS: EC_PARAMS_ED25519,
                Attribute.VALUE: seed,
            }
        )
        try:
            session.create_object(
                {
                    **_public_template(label, key_id),
                    **_key_template(label, key_id),
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.EC_POINT: encode_ec_point(public_key),
                }
            )
        except p11e.PKCS11Error:
            priv.destroy()  # no half-imported key left behind
            raise
        return public_key

    return token.run(op, "importing a key")


# ------------------------------------------------------------------------------------------------ signer


_shared_tokens: dict[tuple[str, str | None, int | None], Pkcs11Token] = {}
_shared_lock = threading.Lock()


def open_token(cfg: Pkcs11Config) -> Pkcs11Token:
    """A session of its own on the token of one ``[[providers.pkcs11]]`` entry, logged in with its PIN source."""
    pin = read_pin(cfg.user_pin_file, cfg.user_pin_env)
    return Pkcs11Token(cfg.module, pin, token_label=cfg.token_label, slot=cfg.slot)


def _shared_token(cfg: Pkcs11Config) -> Pkcs11Token:
    """One Pkcs11Token per configured token, so two keys on it share one session and one login."""
    key = (str(cfg.module), cfg.token_label, cfg.slot)
    with _shared_lock:
        token = _shared_tokens.get(key)
        if token is None or not token.acquire():
            token = _shared_tokens[key] = open_token(cfg)
        return token


class Pkcs11Signer:
    """An Ed25519 consensus key on a PKCS#11 token; holds (and on close releases) one reference to the token."""

    provider = PROVIDER
    signs_extensions = True

    def __init__(self, token: Pkcs11Token, *, label: str | None = None, key_id: bytes | None = None) -> None:
        self._token = token
        self._label = label
        self._key_id = key_id
        self._priv: Any = None
        self._priv_serial = -1
        self._closed = False
        try:
            self._public_key = token.run(self._read_public_key, "reading the public key")
            token.run(self._locate_private, "finding the private key")
            self._check_pair()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, cfg: Pkcs11Config, key: Pkcs11Key) -> Pkcs11Signer:
        """A signer for one ``[[providers.pkcs11]]`` key entry; keys on the same token share its session."""
        return cls(_shared_token(cfg), label=key.label, key_id=parse_key_id(key.id))

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._token!r}, key={_describe(self._label, self._key_id)})"

    def _read_public_key(self, session: Any) -> bytes:
        pub = _find_one(session, ObjectClass.PUBLIC_KEY, self._label, self._key_id)
        if pub is None:
            raise FatalProviderError(
                f"pkcs11: no Ed25519 public key with {_describe(self._label, self._key_id)} on "
                f"{self._token.description} (the public half is needed for verification; fix: import or generate "
                "the key with `pykms pkcs11 keys`)"
            )
        return decode_ec_point(bytes(pub[Attribute.EC_POINT]))

    def _locate_private(self, session: Any) -> Any:
        if self._priv is not None and self._priv_serial == self._token.session_serial:
            return self._priv
        priv = _find_one(session, ObjectClass.PRIVATE_KEY, self._label, self._key_id)
        if priv is None:
            raise FatalProviderError(
                f"pkcs11: no Ed25519 private key with {_describe(self._label, self._key_id)} on "
                f"{self._token.description} (fix: `pykms pkcs11 keys generate|import -c FILE`, or correct the "
                "label/id in [[providers.pkcs11.keys]])"
            )
        self._priv, self._priv_serial = priv, self._token.session_serial
        return priv

    def _check_pair(self) -> None:
        """Prove once, up front, that the public object matches the private key: otherwise every sign fails."""
        signature = self._token.run(lambda s: self._raw_sign(s, _PROBE_MESSAGE), "signing a check message")
        try:
            verify_or_raise(self._public_key, _PROBE_MESSAGE, signature, PROVIDER)
        except TransientProviderError:
            raise FatalProviderError(
                f"pkcs11: the public key object with {_describe(self._label, self._key_id)} on "
                f"{self._token.description} does not match its private key (fix: delete the stray public key "
                "object with the token's tools, or re-import the key)"
            ) from None

    def _raw_sign(self, session: Any, message: bytes) -> bytes:
        priv = self._locate_private(session)
        # CKM_EDDSA with no parameters is pure Ed25519 (PKCS#11 3.0 section 2.3.14): the message, unhashed.
        return bytes(priv.sign(message, mechanism=Mechanism.EDDSA))

    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        with self._token.lock:  # one signer call at a time per module (several connections' threads call it)
            if self._closed:
                raise FatalProviderError("pkcs11: signer used after close()")
            signature = self._token.run(lambda s: self._raw_sign(s, message), "signing")
        verify_or_raise(self._public_key, message, signature, PROVIDER)
        return signature

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._priv = None
        self._token.close()
