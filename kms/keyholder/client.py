"""``RemoteKeyHolder``: the KeyHolder protocol spoken to a key holder in another process.

One connection per calling thread, so the key holder serves two chains' sessions in parallel. A request whose
connection breaks raises TransientProviderError (the node is told "unable to sign"; nothing was returned, so no
signature can be released that the key holder did not make durable); that connection is dropped and the next
request reconnects, waiting up to ``reconnect_s`` for a restarted key holder.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from typing import TypeVar

from pykms.errors import KmsError, TransientProviderError
from pykms.keyholder import wire
from pykms.keyholder.api import ChainKey, Signed
from pykms.keyholder.server import IO_TIMEOUT_S, recv_frame, send_frame
from pykms.secretconn.sync import set_kernel_timeouts

__all__ = ["RemoteKeyHolder", "parse_unix_addr"]

_Reply = TypeVar("_Reply", wire.ChainsReply, wire.HealthReply, Signed)


def parse_unix_addr(addr: str) -> Path:
    """``unix:///run/pykms/keyholder.sock`` -> the path; ValueError for anything else."""
    prefix = "unix://"
    if not addr.startswith(prefix) or not addr[len(prefix) :].startswith("/"):
        raise ValueError(f"{addr!r} is not unix:///absolute/path")
    return Path(addr[len(prefix) :])


def _idle_and_open(sock: socket.socket) -> bool:
    """Whether a connection between requests is still open: nothing to read (no EOF, no stray bytes).

    select with a zero timeout, not recv(MSG_DONTWAIT): a socket with a timeout waits for readability first.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class RemoteKeyHolder:
    """A KeyHolder reached over a UNIX socket path."""

    def __init__(self, path: Path | str, *, reconnect_s: float = 5.0) -> None:
        self.path = Path(path)
        self.reconnect_s = reconnect_s
        self._local = threading.local()
        self._all: set[socket.socket] = set()
        self._all_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.reconnect_s
        delay = 0.01
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(IO_TIMEOUT_S)
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                if self._closed or time.monotonic() >= deadline:
                    raise TransientProviderError(
                        f"the key holder at {self.path} is unreachable ({type(exc).__name__})"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.25)
                continue
            set_kernel_timeouts(sock, IO_TIMEOUT_S)  # no poll before every recv and send, as a Python timeout has
            with self._all_lock:
                self._all.add(sock)
            return sock

    def _drop(self, sock: socket.socket) -> None:
        with self._all_lock:
            self._all.discard(sock)
        sock.close()
        if getattr(self._local, "sock", None) is sock:
            self._local.sock = None

    def _ask(self, request: wire.Message, expected: type[_Reply]) -> _Reply:
        if self._closed:
            raise TransientProviderError("the key holder client is closed")
        sock = getattr(self._local, "sock", None)
        if sock is not None and not _idle_and_open(sock):
            self._drop(sock)  # the key holder restarted since this thread's last request
            sock = None
        if sock is None:
            sock = self._local.sock = self._connect()
        try:
            send_frame(sock, request)
            reply = recv_frame(sock)
        except KmsError as exc:  # an answer we cannot read: the stream is out of step, drop it
            self._drop(sock)
            raise TransientProviderError(f"the key holder's answer was refused: {exc}") from None
        except OSError as exc:
            self._drop(sock)
            raise TransientProviderError(f"the key holder went away mid-request ({type(exc).__name__})") from None
        if reply is None:
            self._drop(sock)
            raise TransientProviderError("the key holder went away mid-request")
        if isinstance(reply, wire.ErrorReply):
            raise wire.raise_error(reply)
        if not isinstance(reply, expected):
            raise TransientProviderError(f"the key holder answered {type(reply).__name__}")
        return reply

    def chains(self) -> dict[str, ChainKey]:
        return self._ask(wire.ChainsRequest(), wire.ChainsReply).chains

    def health(self) -> dict[str, str]:
        return self._ask(wire.HealthRequest(), wire.HealthReply).health

    def sign(self, chain_id: str, sign_bytes: bytes, extension_sign_bytes: bytes = b"") -> Signed:
        return self._ask(wire.SignRequest(chain_id, sign_bytes, extension_sign_bytes), Signed)

    def close(self) -> None:
        """Close every connection (the key holder's keys stay with it)."""
        self._closed = True
        with self._all_lock:
            socks, self._all = list(self._all), set()
        for sock in socks:
            sock.close()
