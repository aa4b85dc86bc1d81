"""Serve a ``KeyHolder`` over a UNIX socket: one thread per connection, peers checked with SO_PEERCRED.

The server opens no network socket: it listens on a filesystem path (created 0600 in a 0700 directory) or serves
an inherited socketpair end. Every connection is a synchronous request/answer loop; a malformed frame, an oversize
length or a peer that stops reading closes that connection with one log line, and the others keep being served.
Only the project's signing errors cross back (``wire.ERROR_CLASSES``); anything else the key holder raises is
logged here and answered as a bare ProviderError, so no foreign exception text leaves the process.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pykms.errors import ConfigError, KmsError, ProtocolError
from pykms.keyholder import wire
from pykms.keyholder.api import KeyHolder
from pykms.secretconn.sync import set_kernel_timeouts

__all__ = ["KeyHolderServer", "default_allowed_uids", "listen_unix", "peer_uid", "recv_frame", "send_frame"]

#: A peer has this long to send the rest of a frame it started, and to read an answer; then it is dropped. The
#: client waits as long for an answer.
IO_TIMEOUT_S = 30.0

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (<sys/socket.h>)


def default_allowed_uids() -> frozenset[int]:
    """Its own uid (a front user's is added with ``--allowed-uid``)."""
    return frozenset({os.getuid()})


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a UNIX socket (SO_PEERCRED, set by the kernel at connect)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError("key holder channel closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, *, wait_idle: bool = False) -> wire.Message | None:
    """One message, or None on a clean end of stream between frames. FrameError/DecodeError for bad input.

    With ``wait_idle``, a receive timeout before the first byte of a frame is waited out (a peer may stay idle
    between requests as long as it likes); inside a frame it raises (BlockingIOError, an OSError)."""
    while True:
        try:
            first = sock.recv(4)
            break
        except BlockingIOError:
            if not wait_idle:
                raise
    if not first:
        return None
    prefix = first if len(first) == 4 else first + _recv_exact(sock, 4 - len(first))
    length = wire.frame_length(prefix)
    return wire.decode(_recv_exact(sock, length))


def send_frame(sock: socket.socket, msg: wire.Message) -> None:
    sock.sendall(wire.frame(msg))


def listen_unix(path: Path, *, allowed_uids: Iterable[int] = ()) -> socket.socket:
    """Bind ``path`` 0600 in a 0700 directory (created if missing), replacing a stale socket.

    When root lets another uid in (the front user), that uid owns the socket and the directory is 0711 (enter, not
    list), so the front can connect and nobody else can; SO_PEERCRED is checked on every connection regardless.
    """
    path = Path(path)
    directory = path.parent
    others = sorted(set(allowed_uids) - {os.getuid()})
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"the key holder's socket directory {directory} belongs to uid {st.st_uid}, not to this process",
            key="keyholder.addr",
            fix=f"choose a directory owned by uid {os.getuid()}, or remove {directory}",
        )
    os.chmod(directory, 0o711 if others and os.getuid() == 0 else 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(
                f"{path} exists and is not a socket",
                key="keyholder.addr",
                fix=f"remove {path} or choose another socket path",
            )
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    if others and os.getuid() == 0:
        os.chown(path, others[0], -1)
    listener.listen(64)
    return listener


class KeyHolderServer:
    """Answers ``wire`` requests with a KeyHolder; one daemon thread per connection."""

    def __init__(
        self, holder: KeyHolder, *, log: Callable[..., Any], allowed_uids: Iterable[int] | None = None
    ) -> None:
        self.holder = holder
        self.allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else default_allowed_uids()
        self._log = log
        self._stop = threading.Event()

    def _answer(self, request: wire.Message) -> wire.Message:
        try:
            if isinstance(request, wire.ChainsRequest):
                return wire.ChainsReply(self.holder.chains())
            if isinstance(request, wire.HealthRequest):
                return wire.HealthReply(self.holder.health())
            if isinstance(request, wire.SignRequest):
                return self.holder.sign(request.chain_id, request.sign_bytes, request.extension_sign_bytes)
        except KmsError as exc:
            return wire.error_reply(exc)
        except Exception as exc:  # the seam allows none; answered without its text, which could carry anything
            self._log("keyholder_internal_error", error=type(exc).__name__)
            return wire.ErrorReply("ProviderError", "the key holder failed (see its log)", 0)
        raise ProtocolError(f"{type(request).__name__} is an answer, not a request")

    def serve_connection(self, sock: socket.socket) -> None:
        """Serve one peer until it hangs up or misbehaves; always closes ``sock``."""
        try:
            uid = peer_uid(sock)
            if uid not in self.allowed_uids:
                self._log("keyholder_peer_refused", uid=uid, allowed=sorted(self.allowed_uids))
                return
            # The kernel's timeouts, set once: a Python-level timeout would cost a poll before every recv and send.
            set_kernel_timeouts(sock, IO_TIMEOUT_S)
            while not self._stop.is_set():
                request = recv_frame(sock, wait_idle=True)  # waits for the next request as long as the peer stays
                if request is None:
                    return
                send_frame(sock, self._answer(request))
        except ProtocolError as exc:  # FrameError, DecodeError
            self._log("keyholder_peer_dropped", reason=str(exc))
        except OSError as exc:
            self._log("keyholder_peer_dropped", reason=type(exc).__name__)
        finally:
            sock.close()

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept until ``stop``; each connection on its own thread."""
        listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            threading.Thread(target=self.serve_connection, args=(conn,), name="keyholder-conn", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
