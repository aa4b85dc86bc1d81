"""YubiHSM2 signing backend (tmkms's ``[[providers.yubihsm]]``), through Yubico's python-yubihsm library.

One ``YubihsmSigner`` holds one Ed25519 key on the device, over one authenticated session (SCP03). A lost
session (idle timeout, device reset, connector restart, MAC chain broken by a dropped reply) is re-established
transparently; while the connector is away, ``sign`` keeps retrying for ``retry_seconds`` and then raises
``TransientProviderError``, so signing pauses and resumes by itself. Every signature is verified against the
public key read at connect time before it is returned: a faulty device or link can never emit a bad signature.

Errors that retrying cannot fix (wrong password, absent authentication key or signing key, a key without the
sign-eddsa capability, a serial number that does not match) raise ``FatalProviderError`` with the fix in the text.

``ConnectorServer`` implements tmkms's ``connector_server``: a yubihsm-connector-compatible HTTP API that
forwards raw frames to the device through pykms's own connection, so yubihsm-shell can reach the HSM while
pykms holds it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yubihsm.backends.http import HttpBackend
from yubihsm.core import YubiHsm
from yubihsm.defs import ALGORITHM, CAPABILITY, ERROR, OBJECT
from yubihsm.exceptions import (
    YubiHsmAuthenticationError,
    YubiHsmConnectionError,
    YubiHsmDeviceError,
    YubiHsmInvalidResponseError,
)

from pykms.errors import ConfigError, FatalProviderError, KmsError, ProviderError, TransientProviderError
from pykms.httpreply import send_reply
from pykms.keyfiles import read_secret_file
from pykms.providers.signer import verify_or_raise

if TYPE_CHECKING:
    from pykms.config import YubihsmConfig, YubihsmKey

__all__ = [
    "ConnectorServer",
    "YubihsmSigner",
    "adapter_url",
    "close_session",
    "device_errors",
    "make_backend",
    "open_session",
    "raw_public_key",
    "read_password",
    "usb_devices",
]

#: How long one sign() keeps retrying a lost connector/session: under the node's 5 s per-message deadline
#: (CometBFT privval signer_endpoint.go defaultTimeoutReadWriteSeconds = 5), so the node gets an error reply
#: rather than a dead connection; the next request resumes once the device is back.
DEFAULT_RETRY_SECONDS = 3.0
#: Connection timeouts (connect, read) for the HTTP connector: a signature takes milliseconds on the device,
#: and a validator must not block for minutes on a hung connector (python-yubihsm defaults to 10 s / 600 s).
_HTTP_TIMEOUT = (2, 4)
#: Read/write timeout of one USB transfer: tmkms's adapter default, 1000 ms (src/config/provider/yubihsm.rs
#: usb_timeout_ms_default); python-yubihsm's own URL default is 600 s, far too long to stall a validator.
_USB_TIMEOUT_S = 1
_TCP_CONNECTOR_HINT = 'use yubihsm-connector with adapter = { type = "http", addr = "tcp://127.0.0.1:12345" }'


def adapter_url(
    adapter_type: str, addr: str | None, serial_number: str | None = None, *, timeout_ms: int | None = None
) -> str:
    """tmkms adapter settings -> a python-yubihsm backend URL (``http://host:port`` or ``yhusb://``)."""
    if adapter_type == "http":
        host, port = _host_port(addr or "tcp://127.0.0.1:12345", "adapter", "addr")
        return f"http://{host}:{port}"
    if adapter_type == "usb":
        # python-yubihsm's USB backend needs pyusb (and libusb underneath).
        if importlib.util.find_spec("usb") is None:
            raise ConfigError(
                "the USB adapter needs pyusb and libusb, which are not installed",
                key="providers.yubihsm.adapter.type",
                fix=f"pip install pyusb (and install libusb-1.0), or {_TCP_CONNECTOR_HINT}",
            )
        url = f"yhusb://serial={int(serial_number)}" if serial_number else "yhusb://"
        return f"{url}?timeout_ms={timeout_ms}" if timeout_ms else url
    raise ConfigError(
        f"unknown adapter type {adapter_type!r}", key="providers.yubihsm.adapter.type", fix='use "http" or "usb"'
    )


def _host_port(addr: str, table: str, name: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``http://``) -> (host, port); ``table.name`` is the config key it came from."""
    host, sep, port = addr.removeprefix("tcp://").removeprefix("http://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"{table} {name} {addr!r} is not host:port",
            key=f"providers.yubihsm.{table}.{name}",
            fix=f'write e.g. {name} = "tcp://127.0.0.1:12345"',
        )
    return host, int(port)


def read_password(password: str | None, password_file: Path | None) -> str:
    """The authentication password, from the config or its file (0600; trailing newline stripped)."""
    if password_file is not None:
        raw = read_secret_file(Path(password_file))
        try:
            return raw.decode().rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{password_file}: the password file is not UTF-8 text",
                key="providers.yubihsm.auth.password_file",
                fix="write the password as one line of text",
            ) from None
    if password is not None:
        return password
    raise ConfigError(
        "no password for the authentication key",
        key="providers.yubihsm.auth",
        fix='set auth = { key = N, password_file = "/path/to/password" }',
    )


@contextlib.contextmanager
def device_errors(what: str, auth_key: int, key_id: int | None = None) -> Iterator[None]:
    """python-yubihsm's exceptions raised in the block become ours, their message naming ``what``."""
    try:
        yield
    except KmsError:
        raise
    except Exception as exc:
        raise _map_error(exc, what, auth_key, key_id) from None


def _map_error(exc: Exception, what: str, auth_key: int, key_id: int | None) -> ProviderError:
    """python-yubihsm exception -> our tree, with a message that says what to fix. Never includes secrets."""
    if isinstance(exc, YubiHsmAuthenticationError):
        return FatalProviderError(
            f"{what}: the YubiHSM rejected the password of authentication key 0x{auth_key:04x} "
            "(fix: check auth.password / auth.password_file in the [[providers.yubihsm]] section)"
        )
    if isinstance(exc, YubiHsmConnectionError):
        return TransientProviderError(f"{what}: cannot reach the YubiHSM connector ({type(exc).__name__})")
    if isinstance(exc, YubiHsmInvalidResponseError):
        return TransientProviderError(f"{what}: the YubiHSM sent an invalid response; the session is reset")
    if not isinstance(exc, YubiHsmDeviceError):
        return TransientProviderError(f"{what}: unexpected YubiHSM failure ({type(exc).__name__})")
    name = getattr(exc.code, "name", hex(int(exc.code)))
    if exc.code in (ERROR.INVALID_SESSION, ERROR.SESSION_FAILED):
        return TransientProviderError(f"{what}: YubiHSM session lost ({name})")
    if exc.code == ERROR.SESSIONS_FULL:
        return TransientProviderError(f"{what}: all 16 YubiHSM sessions are in use")
    if exc.code == ERROR.OBJECT_NOT_FOUND:
        target = f"key 0x{key_id:04x}" if key_id is not None else f"authentication key 0x{auth_key:04x}"
        return FatalProviderError(
            f"{what}: {target} is not on the YubiHSM or not in a domain of authentication key "
            f"0x{auth_key:04x} (fix: check the key id with `pykms yubihsm keys list`, or import the key)"
        )
    if exc.code == ERROR.INSUFFICIENT_PERMISSIONS:
        return FatalProviderError(
            f"{what}: authentication key 0x{auth_key:04x} lacks the capability for this operation "
            "(fix: use an authentication key with that capability, e.g. the validator key for signing "
            "or the admin/operator key for key management)"
        )
    if exc.code == ERROR.AUTHENTICATION_FAILED:
        return FatalProviderError(f"{what}: authentication with key 0x{auth_key:04x} failed (fix: check the password)")
    return FatalProviderError(f"{what}: YubiHSM error {name}")


def _usb_search_error(exc: Exception) -> FatalProviderError:
    """pyusb absent, or without libusb (usb.core.NoBackendError): USB cannot be searched at all."""
    return FatalProviderError(
        f"cannot search USB for a YubiHSM ({type(exc).__name__}: {exc}) "
        "(fix: install the yubihsm extra and libusb-1.0, e.g. apt-get install libusb-1.0-0)"
    )


def usb_devices() -> list[tuple[int, int]]:
    """(serial number, bus) of each YubiHSM2 on USB."""
    try:
        import usb.core  # type: ignore[import-untyped]

        found = list(usb.core.find(find_all=True, idVendor=0x1050, idProduct=0x0030) or ())
    except Exception as exc:
        raise _usb_search_error(exc) from None
    devices = []
    for device in found:
        try:
            serial = int(device.serial_number)
        except (ValueError, TypeError, OSError):
            serial = 0  # unreadable without permission on the device node; still worth showing
        devices.append((serial, int(device.bus)))
    return devices


def make_backend(url: str) -> Any:
    """The python-yubihsm backend for an ``adapter_url``, with USB search failures in our tree."""
    if url.startswith("http"):
        return HttpBackend(url, _HTTP_TIMEOUT)
    from yubihsm.backends.usb import UsbBackend  # needs pyusb, which an HTTP-only install may lack

    where, _, query = url.removeprefix("yhusb://").partition("?")
    serial_text = where.removeprefix("serial=")
    serial = int(serial_text) if serial_text.isdigit() else None
    timeout_ms = query.removeprefix("timeout_ms=")
    # python-yubihsm takes whole seconds: the configured milliseconds rounded up.
    timeout_s = -(-int(timeout_ms) // 1000) if timeout_ms.isdigit() else _USB_TIMEOUT_S
    try:
        return UsbBackend(serial=serial, timeout=timeout_s)
    except YubiHsmConnectionError as exc:
        which = f"with serial number {serial}" if serial is not None else "at all"
        raise FatalProviderError(
            f"no YubiHSM found on USB {which} ({exc}) (fix: plug the YubiHSM 2 in and check that this user may "
            f"open it (a udev rule for USB ID 1050:0030), check serial_number, or {_TCP_CONNECTOR_HINT})"
        ) from None
    except Exception as exc:
        raise _usb_search_error(exc) from None


def open_session(
    url: str, auth_key: int, password: str, *, serial_number: str | None = None, what: str = "yubihsm"
) -> tuple[Any, Any, Any]:
    """Connect and authenticate: ``(backend, YubiHsm, AuthSession)``. Raises our errors only."""
    backend = make_backend(url)
    try:
        with device_errors(what, auth_key):
            hsm = YubiHsm(backend)
            if serial_number is not None:
                serial = str(hsm.get_device_info().serial)
                if serial not in (serial_number, serial_number.lstrip("0")):
                    raise FatalProviderError(
                        f"{what}: the YubiHSM at {url} has serial {serial}, not {serial_number} "
                        "(fix: correct serial_number in [[providers.yubihsm]] or connect the right device)"
                    )
            return backend, hsm, hsm.create_session_derived(auth_key, password)
    except ProviderError:
        backend.close()
        raise


def raw_public_key(key: Any) -> bytes:
    """The 32 raw bytes of an asymmetric key object's public key."""
    return bytes(key.get_public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def close_session(session: Any, backend: Any) -> None:
    """Close the session on the device first: it holds only 16, and an abandoned one stays allocated until its
    30 s idle timeout. A dead link makes that close fail fast."""
    with contextlib.suppress(Exception):
        session.close()
    with contextlib.suppress(Exception):
        backend.close()


class YubihsmSigner:
    """An Ed25519 key held in a YubiHSM2 (``pykms.providers.signer.Signer``)."""

    provider = "yubihsm"
    signs_extensions = True

    def __init__(
        self,
        url: str,
        auth_key: int,
        password: str,
        key_id: int,
        *,
        serial_number: str | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        retry_interval: float = 0.05,
    ):
        self.url = url
        self.auth_key = auth_key
        self.key_id = key_id
        self._password = password
        self._serial_number = serial_number
        self._retry_seconds = retry_seconds
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._backend: Any = None
        self._session: Any = None
        self._key: Any = None
        self._public_key = b""
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"YubihsmSigner(url={self.url!r}, auth_key={self.auth_key}, key_id={self.key_id})"

    @classmethod
    def from_config(cls, cfg: YubihsmConfig, key: YubihsmKey) -> YubihsmSigner:
        """Build from a ``[[providers.yubihsm]]`` section and one of its ``keys`` entries."""
        url = adapter_url(cfg.adapter.type, cfg.adapter.addr, cfg.serial_number, timeout_ms=cfg.adapter.timeout_ms)
        password = read_password(cfg.auth.password, cfg.auth.password_file)
        signer = cls(url, cfg.auth.key, password, key.key, serial_number=cfg.serial_number)
        if cfg.connector_server is not None:
            ConnectorServer.ensure(cfg.connector_server.laddr, url)
        return signer

    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        """Sign on the device; re-establish a lost session and retry until ``retry_seconds`` have passed."""
        deadline = time.monotonic() + self._retry_seconds
        interval = self._retry_interval
        with self._lock:
            while True:
                try:
                    if self._session is None:
                        self._connect()
                    with device_errors("sign", self.auth_key, self.key_id):
                        signature = bytes(self._key.sign_eddsa(message))
                    verify_or_raise(self._public_key, message, signature, self.provider)
                    return signature
                except TransientProviderError:
                    self._drop()
                    if time.monotonic() >= deadline:
                        raise
                    # Exponential backoff up to 1 s: each attempt may leave a half-open session on the device
                    # (its reply lost), and the device has only 16 until the 30 s idle timeout frees them.
                    time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                    interval = min(interval * 2, 1.0)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> None:
        backend, _hsm, session = open_session(
            self.url, self.auth_key, self._password, serial_number=self._serial_number, what="yubihsm connect"
        )
        try:
            with device_errors("yubihsm connect", self.auth_key, self.key_id):
                key = session.get_object(self.key_id, OBJECT.ASYMMETRIC_KEY)
                info = key.get_info()
                if info.algorithm != ALGORITHM.EC_ED25519:
                    raise FatalProviderError(
                        f"yubihsm key 0x{self.key_id:04x} is {info.algorithm!s}, not Ed25519 "
                        "(fix: point keys.key at an Ed25519 key; see `pykms yubihsm keys list`)"
                    )
                if not info.capabilities & CAPABILITY.SIGN_EDDSA:
                    raise FatalProviderError(
                        f"yubihsm key 0x{self.key_id:04x} lacks the sign-eddsa capability "
                        "(fix: re-import or regenerate it with `pykms yubihsm keys generate`/`keys import`, "
                        "which grant sign-eddsa)"
                    )
                pub = raw_public_key(key)
                if self._public_key and pub != self._public_key:
                    raise FatalProviderError(
                        f"yubihsm key 0x{self.key_id:04x} changed while pykms was running; refusing to sign with it"
                    )
        except ProviderError:
            close_session(session, backend)
            raise
        self._public_key = pub
        self._backend, self._session, self._key = backend, session, key

    def _drop(self) -> None:
        """Forget the session, closing it on the device."""
        if self._session is not None:
            close_session(self._session, self._backend)
        self._backend = self._session = self._key = None


class ConnectorServer:
    """yubihsm-connector-compatible HTTP API forwarding raw frames to the device (tmkms ``connector_server``).

    Frames are forwarded verbatim through a backend of our own, one at a time under a lock, so a client such as
    yubihsm-shell runs its own SCP03 session alongside pykms's sessions.
    """

    #: One server per listen address, shared by every key of the provider section.
    _running: dict[str, ConnectorServer] = {}
    _registry_lock = threading.Lock()

    def __init__(self, laddr: str, device_url: str):
        address = _host_port(laddr, "connector_server", "laddr")
        self.laddr = laddr
        self._backend = make_backend(device_url)
        self._lock = threading.Lock()
        try:
            self.httpd = ThreadingHTTPServer(address, self._handler())
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {laddr}: {exc.strerror}",
                key="providers.yubihsm.connector_server.laddr",
                fix="choose a free port",
            ) from None
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="yubihsm-connector", daemon=True
        ).start()

    @classmethod
    def ensure(cls, laddr: str, device_url: str) -> ConnectorServer:
        with cls._registry_lock:
            if laddr not in cls._running:
                cls._running[laddr] = cls(laddr, device_url)
            return cls._running[laddr]

    def forward(self, frame: bytes) -> bytes:
        with self._lock:
            return bytes(self._backend.transceive(frame))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._backend.close()
        with self._registry_lock:
            if self._running.get(self.laddr) is self:
                del self._running[self.laddr]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without TCP_NODELAY, Nagle plus delayed ACK adds
            # ~40 ms to every request.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/connector/status":
                    send_reply(self, 404, b"not found\n", "text/plain")
                    return
                body = f"status=OK\nserial=*\nversion=pykms\naddress=\nport={server.port}\n"
                send_reply(self, 200, body.encode(), "text/plain")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                frame = self.rfile.read(min(length, 4096))
                if self.path != "/connector/api":
                    send_reply(self, 404, b"not found\n", "text/plain")
                    return
                try:
                    reply = server.forward(frame)
                except Exception:
                    send_reply(self, 502, b"device unreachable\n", "text/plain")
                    return
                send_reply(self, 200, reply, "application/octet-stream")

        return Handler
