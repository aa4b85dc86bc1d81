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
``_calculate_mac``, ``AuthSession._secure_transceive``; ``yubihsm/objects.py``: each command's argument layout).
The numeric constants (commands, errors, object types, algorithms, capabilities, origins) and the password
derivation are python-yubihsm's own public ``yubihsm.defs`` and ``yubihsm.utils.password_to_key``.

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
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from nacl.signing import SigningKey
from yubihsm.defs import ALGORITHM, CAPABILITY, COMMAND, ERROR, OBJECT, ORIGIN
from yubihsm.utils import password_to_key

__all__ = ["MAX_FRAME", "Device", "StoredObject"]

#: Factory state: authentication key 1 with password "password", every capability and domain (Yubico docs,
#: Default Authentication Key; 0x38 capability bits, sixteen domains).
_DEFAULT_AUTH_KEY_ID = 1
_DEFAULT_PASSWORD = "password"
_DEFAULT_AUTH_LABEL = "DEFAULT AUTHKEY CHANGE THIS ASAP"
_ALL_CAPABILITIES = (1 << 0x38) - 1
_ALL_DOMAINS = 0xFFFF

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
#: The algorithms this simulator implements (reported by DEVICE_INFO).
_ALGORITHMS = (
    ALGORITHM.AES128_CCM_WRAP,
    ALGORITHM.OPAQUE_DATA,
    ALGORITHM.AES128_YUBICO_AUTHENTICATION,
    ALGORITHM.AES192_CCM_WRAP,
    ALGORITHM.AES256_CCM_WRAP,
    ALGORITHM.EC_ED25519,
)

# SCP03 KDF derivation constants (GP Amendment D, table 4-1; python-yubihsm core.KEY_* constants).
_DC_CARD_CRYPTOGRAM = 0x00
_DC_HOST_CRYPTOGRAM = 0x01
_DC_S_ENC = 0x04
_DC_S_MAC = 0x06
_DC_S_RMAC = 0x07

#: The object types this simulator stores, and the capability that deletes each.
_DELETE_CAP = {
    OBJECT.OPAQUE: CAPABILITY.DELETE_OPAQUE,
    OBJECT.AUTHENTICATION_KEY: CAPABILITY.DELETE_AUTHENTICATION_KEY,
    OBJECT.ASYMMETRIC_KEY: CAPABILITY.DELETE_ASYMMETRIC_KEY,
    OBJECT.WRAP_KEY: CAPABILITY.DELETE_WRAP_KEY,
}
#: What each PUT/GENERATE command stores and the capability it needs.
_PUTS = {
    COMMAND.PUT_AUTHENTICATION_KEY: (OBJECT.AUTHENTICATION_KEY, CAPABILITY.PUT_AUTHENTICATION_KEY),
    COMMAND.PUT_WRAP_KEY: (OBJECT.WRAP_KEY, CAPABILITY.PUT_WRAP_KEY),
    COMMAND.PUT_ASYMMETRIC_KEY: (OBJECT.ASYMMETRIC_KEY, CAPABILITY.PUT_ASYMMETRIC),
    COMMAND.GENERATE_ASYMMETRIC_KEY: (OBJECT.ASYMMETRIC_KEY, CAPABILITY.GENERATE_ASYMMETRIC_KEY),
    COMMAND.PUT_OPAQUE: (OBJECT.OPAQUE, CAPABILITY.PUT_OPAQUE),
}
#: The secret's length for each (type, algorithm) a PUT accepts; opaque data may have any non-zero length.
_SECRET_SIZES = {
    (OBJECT.AUTHENTICATION_KEY, ALGORITHM.AES128_YUBICO_AUTHENTICATION): 32,
    (OBJECT.WRAP_KEY, ALGORITHM.AES128_CCM_WRAP): 16,
    (OBJECT.WRAP_KEY, ALGORITHM.AES192_CCM_WRAP): 24,
    (OBJECT.WRAP_KEY, ALGORITHM.AES256_CCM_WRAP): 32,
    (OBJECT.ASYMMETRIC_KEY, ALGORITHM.EC_ED25519): 32,
}
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
        6: lambda v: _label_bytes(obj.label) == v,
    }
    return all(checks[tag](value) for tag, value in wanted.items())


class DeviceError(Exception):
    """A command failed with a device error code (becomes a 0x7f frame)."""

    def __init__(self, code: ERROR):
        super().__init__(code.name)
        self.code = code


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
        raise DeviceError(ERROR.INVALID_DATA)
    return stripped[:-1]


def _frame(cmd: int, data: bytes) -> bytes:
    return struct.pack("!BH", cmd, len(data)) + data


def _error_frame(code: ERROR) -> bytes:
    return _frame(COMMAND.ERROR, bytes([code]))


def _label_bytes(raw: bytes) -> bytes:
    return raw.ljust(LABEL_LENGTH, b"\x00")[:LABEL_LENGTH]


@dataclass
class StoredObject:
    """One object in the device's store. ``secret`` never appears in repr."""

    obj_id: int
    obj_type: OBJECT
    algorithm: ALGORITHM
    label: bytes
    domains: int
    capabilities: int
    delegated: int
    secret: bytes = field(repr=False)
    origin: int
    sequence: int = 0

    def info(self) -> bytes:
        return struct.pack(
            _INFO_FMT,
            self.capabilities,
            self.obj_id,
            len(self.secret),  # an authentication key's K-ENC | K-MAC: 32, as the device reports
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
            obj_type=OBJECT(int(item["type"])),
            algorithm=ALGORITHM(int(item["algorithm"])),
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
    enc, mac = password_to_key(_DEFAULT_PASSWORD)
    return StoredObject(
        obj_id=_DEFAULT_AUTH_KEY_ID,
        obj_type=OBJECT.AUTHENTICATION_KEY,
        algorithm=ALGORITHM.AES128_YUBICO_AUTHENTICATION,
        label=_DEFAULT_AUTH_LABEL.encode(),
        domains=_ALL_DOMAINS,
        capabilities=_ALL_CAPABILITIES,
        delegated=_ALL_CAPABILITIES,
        secret=enc + mac,
        origin=ORIGIN.IMPORTED,
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
        self.objects: dict[tuple[OBJECT, int], StoredObject] = {}
        self._sessions: dict[int, _Session] = {}
        self._sequences: dict[tuple[OBJECT, int], int] = {}
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
            return _error_frame(ERROR.WRONG_LENGTH), False
        cmd, length = struct.unpack("!BH", frame[:3])
        if len(frame) != 3 + length:
            return _error_frame(ERROR.WRONG_LENGTH), False
        data = frame[3:]
        try:
            if cmd == COMMAND.ECHO:
                return _frame(COMMAND.ECHO | 0x80, data), False
            if cmd == COMMAND.DEVICE_INFO:
                return _frame(COMMAND.DEVICE_INFO | 0x80, self._device_info(data)), False
            if cmd == COMMAND.CREATE_SESSION:
                return _frame(COMMAND.CREATE_SESSION | 0x80, self._create_session(data)), False
            if cmd == COMMAND.AUTHENTICATE_SESSION:
                self._authenticate_session(frame)
                return _frame(COMMAND.AUTHENTICATE_SESSION | 0x80, b""), False
            if cmd == COMMAND.SESSION_MESSAGE:
                return self._session_message(frame)
            raise DeviceError(ERROR.INVALID_COMMAND)
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
            raise DeviceError(ERROR.INVALID_DATA)
        # version(3), serial(4), log size, log used, then the supported algorithm ids (python-yubihsm DeviceInfo).
        head = struct.pack("!BBBIBB", *FIRMWARE, self.serial, 62, 0)
        return head + bytes(sorted(_ALGORITHMS))

    def _create_session(self, data: bytes) -> bytes:
        if len(data) != 2 + 8:
            raise DeviceError(ERROR.WRONG_LENGTH)
        (key_id,) = struct.unpack("!H", data[:2])
        key = self.objects.get((OBJECT.AUTHENTICATION_KEY, key_id))
        if key is None:
            raise DeviceError(ERROR.OBJECT_NOT_FOUND)
        # Round-robin allocation: a just-freed id is reused last, so a client still holding an expired
        # session is unlikely to address (and, with a bad MAC, end) the session that replaced it.
        order = [(self._next_sid + i) % MAX_SESSIONS for i in range(MAX_SESSIONS)]
        free = [sid for sid in order if sid not in self._sessions]
        if not free:
            raise DeviceError(ERROR.SESSIONS_FULL)
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
            raise DeviceError(ERROR.WRONG_LENGTH)
        session = self._sessions.get(frame[3])
        if session is None or session.authenticated:
            raise DeviceError(ERROR.INVALID_SESSION)
        expected = _scp03_derive(session.s_mac, _DC_HOST_CRYPTOGRAM, session.context, 64)
        chain = _cmac(session.s_mac, session.mac_chain, frame[:-8])
        if not (constant_time.bytes_eq(frame[4:12], expected) and constant_time.bytes_eq(frame[-8:], chain[:8])):
            del self._sessions[session.sid]
            raise DeviceError(ERROR.AUTHENTICATION_FAILED)
        session.mac_chain = chain
        session.authenticated = True
        session.last_used = self._now()

    def _session_message(self, frame: bytes) -> tuple[bytes, bool]:
        # sid(1) | ciphertext (a whole number of AES blocks) | C-MAC(8)
        if len(frame) < 3 + 1 + 16 + 8 or (len(frame) - 3 - 1 - 8) % 16:
            raise DeviceError(ERROR.WRONG_LENGTH)
        sid = frame[3]
        session = self._sessions.get(sid)
        if session is None or not session.authenticated:
            raise DeviceError(ERROR.INVALID_SESSION)
        chain = _cmac(session.s_mac, session.mac_chain, frame[:-8])
        if not constant_time.bytes_eq(chain[:8], frame[-8:]):
            # A MAC failure ends the session: the chain can no longer be trusted.
            del self._sessions[sid]
            raise DeviceError(ERROR.SESSION_FAILED)
        iv = _iv(session.s_enc, session.counter)
        cipher = Cipher(algorithms.AES(session.s_enc), modes.CBC(iv))
        dec = cipher.decryptor()
        inner = _unpad(dec.update(frame[4:-8]) + dec.finalize())
        session.last_used = self._now()
        changed = False
        close = False
        reset = False
        if len(inner) < 3 or struct.unpack("!H", inner[1:3])[0] != len(inner) - 3:
            reply = _error_frame(ERROR.WRONG_LENGTH)
        else:
            cmd = inner[0]
            try:
                body, changed = self._dispatch(session, cmd, inner[3:])
                reply = _frame(cmd | 0x80, body)
                close = cmd == COMMAND.CLOSE_SESSION
                reset = cmd == COMMAND.RESET_DEVICE
            except DeviceError as exc:
                reply = _error_frame(exc.code)
        enc = cipher.encryptor()
        payload = bytes([sid]) + enc.update(_pad(reply)) + enc.finalize()
        header = struct.pack("!BH", COMMAND.SESSION_MESSAGE | 0x80, len(payload) + 8)
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
        if cmd == COMMAND.ECHO:
            return data, False
        if cmd == COMMAND.CLOSE_SESSION:
            return b"", False
        if cmd == COMMAND.RESET_DEVICE:
            self._require(auth, CAPABILITY.RESET_DEVICE)
            return b"", True
        if cmd == COMMAND.LIST_OBJECTS:
            return self._list_objects(auth, data), False
        if cmd == COMMAND.GET_OBJECT_INFO:
            return self._lookup(auth, data).info(), False
        if cmd == COMMAND.DELETE_OBJECT:
            obj = self._lookup(auth, data)
            self._require(auth, _DELETE_CAP[obj.obj_type])
            del self.objects[(obj.obj_type, obj.obj_id)]
            return b"", True
        if cmd in _PUTS:
            return self._put_command(auth, cmd, data), True
        if cmd == COMMAND.GET_OPAQUE:
            if len(data) != 2:
                raise DeviceError(ERROR.WRONG_LENGTH)
            self._require(auth, CAPABILITY.GET_OPAQUE)
            return self._lookup(auth, data + bytes([OBJECT.OPAQUE])).secret, False
        if cmd == COMMAND.GET_PUBLIC_KEY:
            key = self._lookup(auth, data[:2] + bytes([OBJECT.ASYMMETRIC_KEY]))
            if len(data) not in (2, 3) or (len(data) == 3 and data[2] != OBJECT.ASYMMETRIC_KEY):
                raise DeviceError(ERROR.INVALID_DATA)
            return bytes([key.algorithm]) + bytes(SigningKey(key.secret).verify_key), False
        if cmd == COMMAND.SIGN_EDDSA:
            if len(data) < 2:
                raise DeviceError(ERROR.WRONG_LENGTH)
            key = self._lookup(auth, data[:2] + bytes([OBJECT.ASYMMETRIC_KEY]))
            self._require(auth, CAPABILITY.SIGN_EDDSA)
            if not key.capabilities & CAPABILITY.SIGN_EDDSA:
                raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
            if key.algorithm != ALGORITHM.EC_ED25519:
                raise DeviceError(ERROR.INVALID_DATA)
            return SigningKey(key.secret).sign(data[2:]).signature, False
        if cmd == COMMAND.GET_PSEUDO_RANDOM:
            if len(data) != 2:
                raise DeviceError(ERROR.WRONG_LENGTH)
            self._require(auth, CAPABILITY.GET_PSEUDO_RANDOM)
            (length,) = struct.unpack("!H", data)
            if length > MAX_FRAME - 64:
                raise DeviceError(ERROR.INVALID_DATA)
            return self._random(length), False
        if cmd == COMMAND.EXPORT_WRAPPED:
            return self._export_wrapped(auth, data), False
        if cmd == COMMAND.IMPORT_WRAPPED:
            return self._import_wrapped(auth, data), True
        raise DeviceError(ERROR.INVALID_COMMAND)

    @staticmethod
    def _require(auth: StoredObject, capability: int) -> None:
        if not auth.capabilities & capability:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)

    def _lookup(self, auth: StoredObject, data: bytes) -> StoredObject:
        """The object named by id(2) | type(1)."""
        if len(data) != 3:
            raise DeviceError(ERROR.WRONG_LENGTH)
        obj_id, obj_type = struct.unpack("!HB", data)
        if obj_type not in _DELETE_CAP:
            raise DeviceError(ERROR.INVALID_DATA)
        obj = self.objects.get((OBJECT(obj_type), obj_id))
        # Objects outside the session's domains are invisible, exactly as if absent (Yubico docs, Domains).
        if obj is None or not obj.domains & auth.domains:
            raise DeviceError(ERROR.OBJECT_NOT_FOUND)
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
                raise DeviceError(ERROR.INVALID_DATA)
            wanted[tag] = data[pos + 1 : pos + 1 + size]
            pos += 1 + size
        out = b""
        for obj in sorted(self.objects.values(), key=lambda o: (o.obj_id, o.obj_type)):
            if obj.domains & auth.domains and _matches(obj, wanted):
                out += struct.pack("!HBB", obj.obj_id, obj.obj_type, obj.sequence & 0xFF)
        return out

    def _put(self, obj: StoredObject) -> None:
        key = (obj.obj_type, obj.obj_id)
        obj.sequence = self._sequences.get(key, -1) + 1
        self._sequences[key] = obj.sequence
        self.objects[key] = obj

    def _add(self, auth: StoredObject, obj: StoredObject) -> bytes:
        """Store a new object in the session's domains, with capabilities the session may delegate; id 0 asks
        the device to choose a free id. Answers the id."""
        if not obj.domains or obj.domains & ~auth.domains or obj.capabilities & ~auth.delegated:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
        if not obj.obj_id:
            obj.obj_id = next((i for i in _ID_RANGE if (obj.obj_type, i) not in self.objects), 0)
            if not obj.obj_id:  # every id taken
                raise DeviceError(ERROR.STORAGE_FAILED)
        elif (obj.obj_type, obj.obj_id) in self.objects:
            raise DeviceError(ERROR.OBJECT_EXISTS)
        self._put(obj)
        return struct.pack("!H", obj.obj_id)

    def _put_command(self, auth: StoredObject, cmd: int, data: bytes) -> bytes:
        """PUT_* and GENERATE_ASYMMETRIC_KEY: id(2) | label(40) | domains(2) | capabilities(8) | algorithm(1),
        then delegated capabilities(8) for authentication and wrap keys, then the secret (python-yubihsm
        objects.*.put and AsymmetricKey.generate)."""
        obj_type, needed = _PUTS[COMMAND(cmd)]
        with_delegated = obj_type in (OBJECT.AUTHENTICATION_KEY, OBJECT.WRAP_KEY)
        fmt = "!H40sHQBQ" if with_delegated else "!H40sHQB"
        head = struct.calcsize(fmt)
        if len(data) < head:
            raise DeviceError(ERROR.WRONG_LENGTH)
        obj_id, label, domains, caps, algorithm, *delegated = struct.unpack(fmt, data[:head])
        secret, origin = data[head:], ORIGIN.IMPORTED
        self._require(auth, needed)
        if cmd == COMMAND.GENERATE_ASYMMETRIC_KEY:
            if secret:
                raise DeviceError(ERROR.WRONG_LENGTH)
            secret, origin = self._random(32), ORIGIN.GENERATED
        if obj_type == OBJECT.OPAQUE:
            valid = algorithm == ALGORITHM.OPAQUE_DATA and bool(secret)
        else:
            valid = _SECRET_SIZES.get((obj_type, algorithm)) == len(secret)
        if not valid:
            raise DeviceError(ERROR.INVALID_DATA)
        if delegated and delegated[0] & ~auth.delegated:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
        obj = StoredObject(
            obj_id, obj_type, ALGORITHM(algorithm), label.rstrip(b"\x00"), domains, caps,
            delegated[0] if delegated else 0, secret, origin,
        )  # fmt: skip
        return self._add(auth, obj)

    def _wrap_key(self, auth: StoredObject, wrap_id: bytes, needed: int) -> StoredObject:
        self._require(auth, needed)
        wrap = self._lookup(auth, wrap_id + bytes([OBJECT.WRAP_KEY]))
        if not wrap.capabilities & needed:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
        return wrap

    def _export_wrapped(self, auth: StoredObject, data: bytes) -> bytes:
        if len(data) not in (5, 6):
            raise DeviceError(ERROR.WRONG_LENGTH)
        wrap = self._wrap_key(auth, data[:2], CAPABILITY.EXPORT_WRAPPED)
        obj = self._lookup(auth, bytes([data[3], data[4], data[2]]))
        # The object must be marked exportable, and the wrap key may only carry capabilities it may delegate.
        if not obj.capabilities & CAPABILITY.EXPORTABLE_UNDER_WRAP or obj.capabilities & ~wrap.delegated:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
        nonce = self._random(_WRAP_NONCE)
        plain = obj.info() + obj.secret
        return nonce + AESCCM(wrap.secret, tag_length=16).encrypt(nonce, plain, None)

    def _import_wrapped(self, auth: StoredObject, data: bytes) -> bytes:
        if len(data) < 2 + _WRAP_NONCE + 16 + struct.calcsize(_INFO_FMT):
            raise DeviceError(ERROR.WRONG_LENGTH)
        wrap = self._wrap_key(auth, data[:2], CAPABILITY.IMPORT_WRAPPED)
        nonce, sealed = data[2 : 2 + _WRAP_NONCE], data[2 + _WRAP_NONCE :]
        try:
            plain = AESCCM(wrap.secret, tag_length=16).decrypt(nonce, sealed, None)
        except InvalidTag:
            raise DeviceError(ERROR.INVALID_DATA) from None
        head = struct.calcsize(_INFO_FMT)
        caps, obj_id, _size, domains, obj_type, algorithm, _seq, origin, label, delegated = struct.unpack(
            _INFO_FMT, plain[:head]
        )
        if obj_type not in _DELETE_CAP or algorithm not in _ALGORITHMS:
            raise DeviceError(ERROR.INVALID_DATA)
        if caps & ~wrap.delegated:
            raise DeviceError(ERROR.INSUFFICIENT_PERMISSIONS)
        obj = StoredObject(
            obj_id, OBJECT(obj_type), ALGORITHM(algorithm), label.rstrip(b"\x00"), domains, caps, delegated,
            plain[head:], (origin & 0x0F) | ORIGIN.IMPORTED_WRAPPED,
        )  # fmt: skip
        return bytes([obj_type]) + self._add(auth, obj)
