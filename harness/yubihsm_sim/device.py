"""A YubiHSM2 device as a pure command processor (sans-IO): frames in, frames out.

Theory of operation
-------------------
The YubiHSM2 speaks length-prefixed frames: ``cmd(1) | len(2, big endian) | data``. A reply carries
``cmd | 0x80`` or, on failure, ``0x7f | 0x0001 | error code``. Three frames are sent in the clear:
CREATE_SESSION, AUTHENTICATE_SESSION and SESSION_MESSAGE (plus ECHO and DEVICE_INFO); everything else travels
inside SESSION_MESSAGE, encrypted and MACed with SCP03 session keys (GlobalPlatform Card Spec 2.2 Amendment D):

* CREATE_SESSION(auth key id, host challenge) derives S-ENC, S-MAC and S-RMAC from the authentication key's
  static K-ENC/K-MAC with the AES-CMAC KDF over ``host challenge | card challenge`` and answers with the
  card challenge and the card cryptogram.
* AUTHENTICATE_SESSION(host cryptogram, C-MAC) proves the host holds the same keys; the C-MAC starts the MAC
  chain (a 16-byte all-zero chain value before it).
* SESSION_MESSAGE(sid, AES-CBC(S-ENC, IV = AES-ECB(S-ENC, counter)), C-MAC over chain | header | ciphertext);
  the reply is encrypted under the same IV and carries an R-MAC keyed by S-RMAC over the new chain value.
  The counter starts at 1 and increases with each message.

Sources of the facts (no code copied): Yubico's YubiHSM2 documentation (Session, Commands, Capabilities,
Errors, Objects pages) and the python-yubihsm client (``yubihsm/core.py``: ``_derive``, ``_calculate_iv``,
``_calculate_mac``, ``AuthSession._secure_transceive``; ``yubihsm/defs.py``: the numeric constants;
``yubihsm/objects.py``: each command's argument layout).

The clock (``now``) and the randomness (``random``) are injected, so the 30 s idle timeout and the session
challenges are deterministic in tests. ``Device.process`` returns the reply and whether the object store changed,
so the I/O edge knows when to persist.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from nacl.signing import SigningKey

__all__ = [
    "ALL_CAPABILITIES",
    "ALL_DOMAINS",
    "DEFAULT_AUTH_KEY_ID",
    "DEFAULT_PASSWORD",
    "Algorithm",
    "Cap",
    "Cmd",
    "Device",
    "DeviceError",
    "Err",
    "ObjType",
    "StoredObject",
    "password_to_keys",
]


class Cmd(IntEnum):
    """Command codes (python-yubihsm defs.COMMAND; Yubico docs, Commands)."""

    ECHO = 0x01
    CREATE_SESSION = 0x03
    AUTHENTICATE_SESSION = 0x04
    SESSION_MESSAGE = 0x05
    DEVICE_INFO = 0x06
    RESET_DEVICE = 0x08
    CLOSE_SESSION = 0x40
    PUT_OPAQUE = 0x42
    GET_OPAQUE = 0x43
    PUT_AUTHENTICATION_KEY = 0x44
    PUT_ASYMMETRIC_KEY = 0x45
    GENERATE_ASYMMETRIC_KEY = 0x46
    LIST_OBJECTS = 0x48
    EXPORT_WRAPPED = 0x4A
    IMPORT_WRAPPED = 0x4B
    PUT_WRAP_KEY = 0x4C
    GET_OBJECT_INFO = 0x4E
    GET_PSEUDO_RANDOM = 0x51
    GET_PUBLIC_KEY = 0x54
    DELETE_OBJECT = 0x58
    SIGN_EDDSA = 0x6A
    ERROR = 0x7F


class Err(IntEnum):
    """Device error codes (python-yubihsm defs.ERROR; Yubico docs, Errors)."""

    INVALID_COMMAND = 0x01
    INVALID_DATA = 0x02
    INVALID_SESSION = 0x03
    AUTHENTICATION_FAILED = 0x04
    SESSIONS_FULL = 0x05
    SESSION_FAILED = 0x06
    STORAGE_FAILED = 0x07
    WRONG_LENGTH = 0x08
    INSUFFICIENT_PERMISSIONS = 0x09
    OBJECT_NOT_FOUND = 0x0B
    INVALID_ID = 0x0C
    OBJECT_EXISTS = 0x11


class ObjType(IntEnum):
    """Object types (python-yubihsm defs.OBJECT)."""

    OPAQUE = 0x01
    AUTHENTICATION_KEY = 0x02
    ASYMMETRIC_KEY = 0x03
    WRAP_KEY = 0x04


class Algorithm(IntEnum):
    """The algorithms this simulator implements (python-yubihsm defs.ALGORITHM)."""

    AES128_CCM_WRAP = 29
    OPAQUE_DATA = 30
    AES128_YUBICO_AUTHENTICATION = 38
    AES192_CCM_WRAP = 41
    AES256_CCM_WRAP = 42
    EC_ED25519 = 46


class Cap:
    """Capability bits (python-yubihsm defs.CAPABILITY; Yubico docs, Capabilities)."""

    GET_OPAQUE = 1 << 0x00
    PUT_OPAQUE = 1 << 0x01
    PUT_AUTHENTICATION_KEY = 1 << 0x02
    PUT_ASYMMETRIC = 1 << 0x03
    GENERATE_ASYMMETRIC_KEY = 1 << 0x04
    SIGN_ECDSA = 1 << 0x07
    SIGN_EDDSA = 1 << 0x08
    EXPORT_WRAPPED = 1 << 0x0C
    IMPORT_WRAPPED = 1 << 0x0D
    PUT_WRAP_KEY = 1 << 0x0E
    EXPORTABLE_UNDER_WRAP = 1 << 0x10
    SET_OPTION = 1 << 0x11
    GET_OPTION = 1 << 0x12
    GET_PSEUDO_RANDOM = 1 << 0x13
    GET_LOG_ENTRIES = 1 << 0x18
    RESET_DEVICE = 1 << 0x1C
    SIGN_ATTESTATION_CERTIFICATE = 1 << 0x22
    WRAP_DATA = 1 << 0x25
    UNWRAP_DATA = 1 << 0x26
    DELETE_OPAQUE = 1 << 0x27
    DELETE_AUTHENTICATION_KEY = 1 << 0x28
    DELETE_ASYMMETRIC_KEY = 1 << 0x29
    DELETE_WRAP_KEY = 1 << 0x2A


#: Every capability bit the YubiHSM2 defines (0x00..0x37; python-yubihsm CAPABILITY.ALL).
ALL_CAPABILITIES = (1 << 0x38) - 1
#: Sixteen domains, one bit each (Yubico docs, Domains).
ALL_DOMAINS = 0xFFFF
#: Factory state: authentication key 1 with password "password" (Yubico docs, Default Authentication Key).
DEFAULT_AUTH_KEY_ID = 1
DEFAULT_PASSWORD = "password"
_DEFAULT_AUTH_LABEL = "DEFAULT AUTHKEY CHANGE THIS ASAP"

#: Sixteen concurrent sessions and a 30 s idle timeout (Yubico docs, Session).
MAX_SESSIONS = 16
SESSION_IDLE_TIMEOUT = 30.0
#: Firmware we claim; 2.4.0+ makes clients fetch a second DEVICE_INFO page (python-yubihsm get_device_info).
FIRMWARE = (2, 4, 0)
PART_NUMBER = "pykms-sim"
#: Largest frame a 2.4 device accepts (python-yubihsm: message buffer 3136 bytes).
MAX_FRAME = 3136
LABEL_LENGTH = 40
#: Object ids are 16-bit; 0 asks the device to choose one (python-yubihsm objects.put docstrings).
_ID_RANGE = range(1, 0x10000)

# SCP03 KDF derivation constants (GP Amendment D, table 4-1; python-yubihsm core.KEY_* constants).
_DC_CARD_CRYPTOGRAM = 0x00
_DC_HOST_CRYPTOGRAM = 0x01
_DC_S_ENC = 0x04
_DC_S_MAC = 0x06
_DC_S_RMAC = 0x07

# Object origin flags (python-yubihsm defs.ORIGIN).
_ORIGIN_GENERATED = 0x01
_ORIGIN_IMPORTED = 0x02
_ORIGIN_WRAPPED = 0x10

_DELETE_CAP = {
    ObjType.OPAQUE: Cap.DELETE_OPAQUE,
    ObjType.AUTHENTICATION_KEY: Cap.DELETE_AUTHENTICATION_KEY,
    ObjType.ASYMMETRIC_KEY: Cap.DELETE_ASYMMETRIC_KEY,
    ObjType.WRAP_KEY: Cap.DELETE_WRAP_KEY,
}
_WRAP_KEY_SIZES = {Algorithm.AES128_CCM_WRAP: 16, Algorithm.AES192_CCM_WRAP: 24, Algorithm.AES256_CCM_WRAP: 32}
#: AES-CCM with a 13-byte nonce and a 16-byte tag, the wrap format Yubico documents for export/import wrapped.
_WRAP_NONCE = 13
#: Object header inside a wrapped blob: capabilities, id, size, domains, type, algorithm, sequence, origin,
#: label, delegated capabilities (the GET_OBJECT_INFO layout, python-yubihsm ObjectInfo.FORMAT).
_INFO_FMT = "!QHHHBBBB40sQ"


def _matches(obj: StoredObject, wanted: dict[int, bytes]) -> bool:
    """Every given LIST_OBJECTS filter holds for ``obj``."""
    checks: dict[int, Callable[[bytes], bool]] = {
        1: lambda v: obj.obj_id == int.from_bytes(v, "big"),
        2: lambda v: obj.obj_type == v[0],
        3: lambda v: bool(obj.domains & int.from_bytes(v, "big")),
        4: lambda v: bool(obj.capabilities & int.from_bytes(v, "big")),
        5: lambda v: obj.algorithm == v[0],
        6: lambda v: _label_bytes(obj.label) == _label_bytes(v),
    }
    return all(checks[tag](value) for tag, value in wanted.items())


class DeviceError(Exception):
    """A command failed with a device error code (becomes a 0x7f frame)."""

    def __init__(self, code: Err):
        super().__init__(code.name)
        self.code = code


def password_to_keys(password: str) -> tuple[bytes, bytes]:
    """K-ENC, K-MAC from a password: PBKDF2-HMAC-SHA256, salt "Yubico", 10000 rounds, 32 bytes split in two.

    Source: Yubico docs (Authentication Key, password derivation); python-yubihsm utils.password_to_key.
    """
    key = PBKDF2HMAC(algorithm=SHA256(), length=32, salt=b"Yubico", iterations=10000).derive(password.encode())
    return key[:16], key[16:]


def _cmac(key: bytes, *parts: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    for part in parts:
        mac.update(part)
    return mac.finalize()


def _scp03_derive(key: bytes, constant: int, context: bytes, bits: int = 128) -> bytes:
    """SCP03 KDF in counter mode: 11 zero bytes | constant | 0 | L (16 bit) | i=1 | context, AES-CMAC."""
    label = b"\x00" * 11 + struct.pack("!BBHB", constant, 0, bits, 1) + context
    return _cmac(key, label)[: bits // 8]


def _iv(key_enc: bytes, counter: int) -> bytes:
    enc = Cipher(algorithms.AES(key_enc), modes.ECB()).encryptor()  # noqa: S305 - the SCP03 IV derivation
    return enc.update(counter.to_bytes(16, "big")) + enc.finalize()


def _pad(data: bytes) -> bytes:
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % 16)


def _unpad(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise DeviceError(Err.INVALID_DATA)
    return stripped[:-1]


def _frame(cmd: int, data: bytes) -> bytes:
    return struct.pack("!BH", cmd, len(data)) + data


def _error_frame(code: Err) -> bytes:
    return _frame(Cmd.ERROR, bytes([code]))


def _label_bytes(raw: bytes) -> bytes:
    return raw.ljust(LABEL_LENGTH, b"\x00")[:LABEL_LENGTH]


@dataclass
class StoredObject:
    """One object in the device's store. ``secret`` never appears in repr."""

    obj_id: int
    obj_type: ObjType
    algorithm: Algorithm
    label: bytes
    domains: int
    capabilities: int
    delegated: int
    secret: bytes = field(repr=False)
    origin: int
    sequence: int = 0

    @property
    def size(self) -> int:
        if self.obj_type == ObjType.AUTHENTICATION_KEY:
            return 32
        return len(self.secret)

    def info(self) -> bytes:
        return struct.pack(
            _INFO_FMT,
            self.capabilities,
            self.obj_id,
            self.size,
            self.domains,
            self.obj_type,
            self.algorithm,
            self.sequence,
            self.origin,
            _label_bytes(self.label),
            self.delegated,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.obj_id,
            "type": int(self.obj_type),
            "algorithm": int(self.algorithm),
            "label": base64.b64encode(self.label).decode(),
            "domains": self.domains,
            "capabilities": self.capabilities,
            "delegated": self.delegated,
            "secret": base64.b64encode(self.secret).decode(),
            "origin": self.origin,
            "sequence": self.sequence,
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StoredObject:
        return cls(
            obj_id=int(item["id"]),
            obj_type=ObjType(int(item["type"])),
            algorithm=Algorithm(int(item["algorithm"])),
            label=base64.b64decode(item["label"]),
            domains=int(item["domains"]),
            capabilities=int(item["capabilities"]),
            delegated=int(item["delegated"]),
            secret=base64.b64decode(item["secret"]),
            origin=int(item["origin"]),
            sequence=int(item.get("sequence", 0)),
        )


@dataclass
class _Session:
    sid: int
    auth_key: StoredObject
    context: bytes
    s_enc: bytes = field(repr=False)
    s_mac: bytes = field(repr=False)
    s_rmac: bytes = field(repr=False)
    last_used: float
    authenticated: bool = False
    mac_chain: bytes = b"\x00" * 16
    counter: int = 1


def _default_auth_key() -> StoredObject:
    enc, mac = password_to_keys(DEFAULT_PASSWORD)
    return StoredObject(
        obj_id=DEFAULT_AUTH_KEY_ID,
        obj_type=ObjType.AUTHENTICATION_KEY,
        algorithm=Algorithm.AES128_YUBICO_AUTHENTICATION,
        label=_DEFAULT_AUTH_LABEL.encode(),
        domains=ALL_DOMAINS,
        capabilities=ALL_CAPABILITIES,
        delegated=ALL_CAPABILITIES,
        secret=enc + mac,
        origin=_ORIGIN_IMPORTED,
    )


class Device:
    """The device: an object store, sixteen session slots, and ``process(frame) -> (reply, changed)``."""

    def __init__(
        self,
        serial: int = 12345678,
        *,
        now: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
        idle_timeout: float = SESSION_IDLE_TIMEOUT,
    ):
        self.serial = serial
        self._now = now
        self._random = random
        self.idle_timeout = idle_timeout
        self.objects: dict[tuple[ObjType, int], StoredObject] = {}
        self._sessions: dict[int, _Session] = {}
        self._sequences: dict[tuple[ObjType, int], int] = {}
        self._next_sid = 0
        self.factory_reset()

    # ---- state --------------------------------------------------------------------------------------------

    def factory_reset(self) -> None:
        """Erase everything and restore the default authentication key, as RESET_DEVICE does."""
        self.objects = {}
        self._sessions = {}
        self._put(_default_auth_key())

    def to_state(self) -> dict[str, Any]:
        return {"serial": self.serial, "objects": [obj.to_json() for obj in self.objects.values()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.serial = int(state["serial"])
        self.objects = {}
        for item in state["objects"]:
            obj = StoredObject.from_json(item)
            self.objects[(obj.obj_type, obj.obj_id)] = obj
        self._sessions = {}

    def expire_sessions(self) -> None:
        """Drop every session, as a device power cycle does (fault switch for tests)."""
        self._sessions = {}

    @property
    def session_count(self) -> int:
        self._reap()
        return len(self._sessions)

    # ---- frame level -------------------------------------------------------------------------------------

    def process(self, frame: bytes) -> tuple[bytes, bool]:
        """One request frame in, one reply frame out, plus whether the object store changed."""
        self._reap()
        if len(frame) < 3 or len(frame) > MAX_FRAME:
            return _error_frame(Err.WRONG_LENGTH), False
        cmd, length = struct.unpack("!BH", frame[:3])
        if len(frame) != 3 + length:
            return _error_frame(Err.WRONG_LENGTH), False
        data = frame[3:]
        try:
            if cmd == Cmd.ECHO:
                return _frame(Cmd.ECHO | 0x80, data), False
            if cmd == Cmd.DEVICE_INFO:
                return _frame(Cmd.DEVICE_INFO | 0x80, self._device_info(data)), False
            if cmd == Cmd.CREATE_SESSION:
                return _frame(Cmd.CREATE_SESSION | 0x80, self._create_session(data)), False
            if cmd == Cmd.AUTHENTICATE_SESSION:
                self._authenticate_session(frame)
                return _frame(Cmd.AUTHENTICATE_SESSION | 0x80, b""), False
            if cmd == Cmd.SESSION_MESSAGE:
                return self._session_message(frame)
            raise DeviceError(Err.INVALID_COMMAND)
        except DeviceError as exc:
            return _error_frame(exc.code), False

    def _reap(self) -> None:
        now = self._now()
        for sid in [s.sid for s in self._sessions.values() if now - s.last_used > self.idle_timeout]:
            del self._sessions[sid]

    def _device_info(self, data: bytes) -> bytes:
        if data == b"\x01":
            return PART_NUMBER.encode()
        if data:
            raise DeviceError(Err.INVALID_DATA)
        # version(3), serial(4), log size, log used, then the supported algorithm ids (python-yubihsm DeviceInfo).
        head = struct.pack("!BBBIBB", *FIRMWARE, self.serial, 62, 0)
        return head + bytes(sorted(int(a) for a in Algorithm))

    def _create_session(self, data: bytes) -> bytes:
        if len(data) != 2 + 8:
            raise DeviceError(Err.WRONG_LENGTH)
        (key_id,) = struct.unpack("!H", data[:2])
        key = self.objects.get((ObjType.AUTHENTICATION_KEY, key_id))
        if key is None:
            raise DeviceError(Err.OBJECT_NOT_FOUND)
        # Round-robin allocation: a just-freed id is reused last, so a client still holding an expired
        # session is unlikely to address (and, with a bad MAC, end) the session that replaced it.
        order = [(self._next_sid + i) % MAX_SESSIONS for i in range(MAX_SESSIONS)]
        free = [sid for sid in order if sid not in self._sessions]
        if not free:
            raise DeviceError(Err.SESSIONS_FULL)
        self._next_sid = (free[0] + 1) % MAX_SESSIONS
        card_challenge = self._random(8)
        context = data[2:] + card_challenge
        k_enc, k_mac = key.secret[:16], key.secret[16:]
        session = _Session(
            sid=free[0],
            auth_key=key,
            context=context,
            s_enc=_scp03_derive(k_enc, _DC_S_ENC, context),
            s_mac=_scp03_derive(k_mac, _DC_S_MAC, context),
            s_rmac=_scp03_derive(k_mac, _DC_S_RMAC, context),
            last_used=self._now(),
        )
        self._sessions[session.sid] = session
        card_cryptogram = _scp03_derive(session.s_mac, _DC_CARD_CRYPTOGRAM, context, 64)
        return bytes([session.sid]) + card_challenge + card_cryptogram

    def _authenticate_session(self, frame: bytes) -> None:
        if len(frame) != 3 + 1 + 8 + 8:
            raise DeviceError(Err.WRONG_LENGTH)
        session = self._sessions.get(frame[3])
        if session is None or session.authenticated:
            raise DeviceError(Err.INVALID_SESSION)
        expected = _scp03_derive(session.s_mac, _DC_HOST_CRYPTOGRAM, session.context, 64)
        chain = _cmac(session.s_mac, session.mac_chain, frame[:-8])
        if not (constant_time.bytes_eq(frame[4:12], expected) and constant_time.bytes_eq(frame[-8:], chain[:8])):
            del self._sessions[session.sid]
            raise DeviceError(Err.AUTHENTICATION_FAILED)
        session.mac_chain = chain
        session.authenticated = True
        session.last_used = self._now()

    def _session_message(self, frame: bytes) -> tuple[bytes, bool]:
        # sid(1) | ciphertext (a whole number of AES blocks) | C-MAC(8)
        if len(frame) < 3 + 1 + 16 + 8 or (len(frame) - 3 - 1 - 8) % 16:
            raise DeviceError(Err.WRONG_LENGTH)
        sid = frame[3]
        session = self._sessions.get(sid)
        if session is None or not session.authenticated:
            raise DeviceError(Err.INVALID_SESSION)
        chain = _cmac(session.s_mac, session.mac_chain, frame[:-8])
        if not constant_time.bytes_eq(chain[:8], frame[-8:]):
            # A MAC failure ends the session: the chain can no longer be trusted.
            del self._sessions[sid]
            raise DeviceError(Err.SESSION_FAILED)
        iv = _iv(session.s_enc, session.counter)
        cipher = Cipher(algorithms.AES(session.s_enc), modes.CBC(iv))
        dec = cipher.decryptor()
        inner = _unpad(dec.update(frame[4:-8]) + dec.finalize())
        session.last_used = self._now()
        changed = False
        close = False
        reset = False
        if len(inner) < 3 or struct.unpack("!H", inner[1:3])[0] != len(inner) - 3:
            reply = _error_frame(Err.WRONG_LENGTH)
        else:
            cmd = inner[0]
            try:
                body, changed = self._dispatch(session, cmd, inner[3:])
                reply = _frame(cmd | 0x80, body)
                close = cmd == Cmd.CLOSE_SESSION
                reset = cmd == Cmd.RESET_DEVICE
            except DeviceError as exc:
                reply = _error_frame(exc.code)
        enc = cipher.encryptor()
        payload = bytes([sid]) + enc.update(_pad(reply)) + enc.finalize()
        header = struct.pack("!BH", Cmd.SESSION_MESSAGE | 0x80, len(payload) + 8)
        rmac = _cmac(session.s_rmac, chain, header + payload)[:8]
        session.mac_chain = chain
        session.counter += 1
        if close:
            self._sessions.pop(sid, None)
        if reset:
            self.factory_reset()
            changed = True
        return header + payload + rmac, changed

    # ---- commands inside a session ------------------------------------------------------------------------

    def _dispatch(self, session: _Session, cmd: int, data: bytes) -> tuple[bytes, bool]:
        auth = session.auth_key
        if cmd == Cmd.ECHO:
            return data, False
        if cmd == Cmd.CLOSE_SESSION:
            return b"", False
        if cmd == Cmd.RESET_DEVICE:
            self._require(auth, Cap.RESET_DEVICE)
            return b"", True
        if cmd == Cmd.LIST_OBJECTS:
            return self._list_objects(auth, data), False
        if cmd == Cmd.GET_OBJECT_INFO:
            obj = self._lookup(auth, data, with_type=True)
            return obj.info(), False
        if cmd == Cmd.DELETE_OBJECT:
            obj = self._lookup(auth, data, with_type=True)
            self._require(auth, _DELETE_CAP[obj.obj_type])
            del self.objects[(obj.obj_type, obj.obj_id)]
            return b"", True
        if cmd == Cmd.PUT_AUTHENTICATION_KEY:
            return self._put_with_delegated(auth, data, ObjType.AUTHENTICATION_KEY), True
        if cmd == Cmd.PUT_WRAP_KEY:
            return self._put_with_delegated(auth, data, ObjType.WRAP_KEY), True
        if cmd in (Cmd.PUT_ASYMMETRIC_KEY, Cmd.GENERATE_ASYMMETRIC_KEY, Cmd.PUT_OPAQUE):
            return self._put_plain(auth, cmd, data), True
        if cmd == Cmd.GET_OPAQUE:
            if len(data) != 2:
                raise DeviceError(Err.WRONG_LENGTH)
            self._require(auth, Cap.GET_OPAQUE)
            return self._lookup(auth, data + bytes([ObjType.OPAQUE]), with_type=True).secret, False
        if cmd == Cmd.GET_PUBLIC_KEY:
            key = self._lookup(auth, data[:2] + bytes([ObjType.ASYMMETRIC_KEY]), with_type=True)
            if len(data) not in (2, 3) or (len(data) == 3 and data[2] != ObjType.ASYMMETRIC_KEY):
                raise DeviceError(Err.INVALID_DATA)
            return bytes([key.algorithm]) + bytes(SigningKey(key.secret).verify_key), False
        if cmd == Cmd.SIGN_EDDSA:
            if len(data) < 2:
                raise DeviceError(Err.WRONG_LENGTH)
            key = self._lookup(auth, data[:2] + bytes([ObjType.ASYMMETRIC_KEY]), with_type=True)
            self._require(auth, Cap.SIGN_EDDSA)
            if not key.capabilities & Cap.SIGN_EDDSA:
                raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
            if key.algorithm != Algorithm.EC_ED25519:
                raise DeviceError(Err.INVALID_DATA)
            return SigningKey(key.secret).sign(data[2:]).signature, False
        if cmd == Cmd.GET_PSEUDO_RANDOM:
            if len(data) != 2:
                raise DeviceError(Err.WRONG_LENGTH)
            self._require(auth, Cap.GET_PSEUDO_RANDOM)
            (length,) = struct.unpack("!H", data)
            if length > MAX_FRAME - 64:
                raise DeviceError(Err.INVALID_DATA)
            return self._random(length), False
        if cmd == Cmd.EXPORT_WRAPPED:
            return self._export_wrapped(auth, data), False
        if cmd == Cmd.IMPORT_WRAPPED:
            return self._import_wrapped(auth, data), True
        raise DeviceError(Err.INVALID_COMMAND)

    @staticmethod
    def _require(auth: StoredObject, capability: int) -> None:
        if not auth.capabilities & capability:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)

    def _lookup(self, auth: StoredObject, data: bytes, *, with_type: bool) -> StoredObject:
        if len(data) != 3:
            raise DeviceError(Err.WRONG_LENGTH)
        obj_id, raw_type = struct.unpack("!HB", data)
        try:
            obj_type = ObjType(raw_type)
        except ValueError:
            raise DeviceError(Err.INVALID_DATA) from None
        obj = self.objects.get((obj_type, obj_id))
        # Objects outside the session's domains are invisible, exactly as if absent (Yubico docs, Domains).
        if obj is None or not obj.domains & auth.domains:
            raise DeviceError(Err.OBJECT_NOT_FOUND)
        return obj

    def _list_objects(self, auth: StoredObject, data: bytes) -> bytes:
        # Filters: tag(1) then a fixed-size value: 1 id(2), 2 type(1), 3 domains(2), 4 capabilities(8),
        # 5 algorithm(1), 6 label(40) (python-yubihsm defs.LIST_FILTER, AuthSession.list_objects).
        sizes = {1: 2, 2: 1, 3: 2, 4: 8, 5: 1, 6: LABEL_LENGTH}
        wanted: dict[int, bytes] = {}
        pos = 0
        while pos < len(data):
            tag = data[pos]
            size = sizes.get(tag)
            if size is None or pos + 1 + size > len(data):
                raise DeviceError(Err.INVALID_DATA)
            wanted[tag] = data[pos + 1 : pos + 1 + size]
            pos += 1 + size
        out = b""
        for obj in sorted(self.objects.values(), key=lambda o: (o.obj_id, o.obj_type)):
            if obj.domains & auth.domains and _matches(obj, wanted):
                out += struct.pack("!HBB", obj.obj_id, obj.obj_type, obj.sequence & 0xFF)
        return out

    def _check_grant(self, auth: StoredObject, domains: int, capabilities: int) -> None:
        """A new object may only get domains of the session and capabilities the session may delegate."""
        if not domains or domains & ~auth.domains or capabilities & ~auth.delegated:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)

    def _free_id(self, obj_type: ObjType, wanted: int) -> int:
        if wanted:
            if (obj_type, wanted) in self.objects:
                raise DeviceError(Err.OBJECT_EXISTS)
            return wanted
        for candidate in _ID_RANGE:
            if (obj_type, candidate) not in self.objects:
                return candidate
        raise DeviceError(Err.STORAGE_FAILED)

    def _put(self, obj: StoredObject) -> None:
        key = (obj.obj_type, obj.obj_id)
        obj.sequence = self._sequences.get(key, -1) + 1
        self._sequences[key] = obj.sequence
        self.objects[key] = obj

    def _put_with_delegated(self, auth: StoredObject, data: bytes, obj_type: ObjType) -> bytes:
        fmt = "!H40sHQBQ"
        head = struct.calcsize(fmt)
        if len(data) < head:
            raise DeviceError(Err.WRONG_LENGTH)
        obj_id, label, domains, caps, raw_algo, delegated = struct.unpack(fmt, data[:head])
        secret = data[head:]
        if obj_type == ObjType.AUTHENTICATION_KEY:
            self._require(auth, Cap.PUT_AUTHENTICATION_KEY)
            if raw_algo != Algorithm.AES128_YUBICO_AUTHENTICATION or len(secret) != 32:
                raise DeviceError(Err.INVALID_DATA)
        else:
            self._require(auth, Cap.PUT_WRAP_KEY)
            size = _WRAP_KEY_SIZES.get(Algorithm(raw_algo)) if raw_algo in set(_WRAP_KEY_SIZES) else None
            if size is None or len(secret) != size:
                raise DeviceError(Err.INVALID_DATA)
        self._check_grant(auth, domains, caps)
        self._check_grant(auth, domains, delegated)
        new_id = self._free_id(obj_type, obj_id)
        obj = StoredObject(
            new_id, obj_type, Algorithm(raw_algo), label.rstrip(b"\x00"), domains, caps, delegated, secret,
            _ORIGIN_IMPORTED,
        )  # fmt: skip
        self._put(obj)
        return struct.pack("!H", new_id)

    def _put_plain(self, auth: StoredObject, cmd: int, data: bytes) -> bytes:
        fmt = "!H40sHQB"
        head = struct.calcsize(fmt)
        if len(data) < head:
            raise DeviceError(Err.WRONG_LENGTH)
        obj_id, label, domains, caps, raw_algo = struct.unpack(fmt, data[:head])
        payload = data[head:]
        if cmd == Cmd.PUT_OPAQUE:
            self._require(auth, Cap.PUT_OPAQUE)
            if raw_algo != Algorithm.OPAQUE_DATA or not payload:
                raise DeviceError(Err.INVALID_DATA)
            obj_type, origin, secret = ObjType.OPAQUE, _ORIGIN_IMPORTED, payload
        else:
            generate = cmd == Cmd.GENERATE_ASYMMETRIC_KEY
            self._require(auth, Cap.GENERATE_ASYMMETRIC_KEY if generate else Cap.PUT_ASYMMETRIC)
            if raw_algo != Algorithm.EC_ED25519:
                raise DeviceError(Err.INVALID_DATA)
            if generate:
                if payload:
                    raise DeviceError(Err.WRONG_LENGTH)
                secret, origin = self._random(32), _ORIGIN_GENERATED
            else:
                if len(payload) != 32:
                    raise DeviceError(Err.INVALID_DATA)
                secret, origin = payload, _ORIGIN_IMPORTED
            obj_type = ObjType.ASYMMETRIC_KEY
        self._check_grant(auth, domains, caps)
        new_id = self._free_id(obj_type, obj_id)
        obj = StoredObject(
            new_id, obj_type, Algorithm(raw_algo), label.rstrip(b"\x00"), domains, caps, 0, secret, origin
        )
        self._put(obj)
        return struct.pack("!H", new_id)

    def _wrap_key(self, auth: StoredObject, wrap_id: bytes, needed: int) -> StoredObject:
        wrap = self._lookup(auth, wrap_id + bytes([ObjType.WRAP_KEY]), with_type=True)
        if not wrap.capabilities & needed:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
        return wrap

    def _export_wrapped(self, auth: StoredObject, data: bytes) -> bytes:
        if len(data) not in (5, 6):
            raise DeviceError(Err.WRONG_LENGTH)
        self._require(auth, Cap.EXPORT_WRAPPED)
        wrap = self._wrap_key(auth, data[:2], Cap.EXPORT_WRAPPED)
        obj = self._lookup(auth, bytes([data[3], data[4], data[2]]), with_type=True)
        # The object must be marked exportable, and the wrap key may only carry capabilities it may delegate.
        if not obj.capabilities & Cap.EXPORTABLE_UNDER_WRAP or obj.capabilities & ~wrap.delegated:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
        nonce = self._random(_WRAP_NONCE)
        plain = obj.info() + obj.secret
        return nonce + AESCCM(wrap.secret, tag_length=16).encrypt(nonce, plain, None)

    def _import_wrapped(self, auth: StoredObject, data: bytes) -> bytes:
        if len(data) < 2 + _WRAP_NONCE + 16 + struct.calcsize(_INFO_FMT):
            raise DeviceError(Err.WRONG_LENGTH)
        self._require(auth, Cap.IMPORT_WRAPPED)
        wrap = self._wrap_key(auth, data[:2], Cap.IMPORT_WRAPPED)
        nonce, sealed = data[2 : 2 + _WRAP_NONCE], data[2 + _WRAP_NONCE :]
        try:
            plain = AESCCM(wrap.secret, tag_length=16).decrypt(nonce, sealed, None)
        except InvalidTag:
            raise DeviceError(Err.INVALID_DATA) from None
        head = struct.calcsize(_INFO_FMT)
        caps, obj_id, _size, domains, raw_type, raw_algo, _seq, origin, label, delegated = struct.unpack(
            _INFO_FMT, plain[:head]
        )
        try:
            obj_type, algorithm = ObjType(raw_type), Algorithm(raw_algo)
        except ValueError:
            raise DeviceError(Err.INVALID_DATA) from None
        if caps & ~wrap.delegated:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
        self._check_grant(auth, domains, caps)
        new_id = self._free_id(obj_type, obj_id)
        obj = StoredObject(
            new_id, obj_type, algorithm, label.rstrip(b"\x00"), domains, caps, delegated, plain[head:],
            (origin & 0x0F) | _ORIGIN_WRAPPED,
        )  # fmt: skip
        self._put(obj)
        return struct.pack("!BH", obj_type, new_id)
