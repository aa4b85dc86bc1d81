"""Validator addresses: ``tcp://[ID@]host:port`` or ``unix:///path`` parsed into a typed value, and ``host:port``
checks for the other listeners a config names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pykms.config.reader import Ctx, did_you_mean
from pykms.errors import ConfigError

__all__ = ["PEER_ID_RE", "AddrError", "ValidatorAddr", "check_host_port", "parse_addr", "parse_addr_text"]

PEER_ID_RE = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class ValidatorAddr:
    """A parsed ``[[validator]] addr``: ``tcp://[ID@]host:port`` or ``unix:///path``."""

    scheme: Literal["tcp", "unix"]
    host: str | None = None
    port: int | None = None
    #: Lowercase 40-hex node ID to pin, or None.
    peer_id: str | None = None
    path: Path | None = None

    @property
    def display(self) -> str:
        """For logs: where we dial, without the (long) peer ID."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        peer = f"{self.peer_id}@" if self.peer_id else ""
        return f"tcp://{peer}{host}:{self.port}"


class AddrError(ValueError):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def parse_addr(addr: str, *, base: Path | None = None) -> ValidatorAddr:
    """Parse ``tcp://[ID@]host:port`` or ``unix:///path`` (no scheme means tcp, as in tendermint-rs net.rs).

    Raises ConfigError (without file or key: ``load_config`` reports those).
    """
    try:
        return parse_addr_text(addr, base)
    except AddrError as exc:
        raise ConfigError(exc.message, fix=exc.fix) from None


def parse_addr_text(addr: str, base: Path | None) -> ValidatorAddr:
    fix = 'write "tcp://NODE_ID@host:port", "tcp://host:port" or "unix:///path/to/socket"'
    if addr.startswith("unix://"):
        rest = addr[len("unix://") :]
        if not rest:
            raise AddrError(f"{addr!r}: no socket path", fix)
        path = Path(rest)
        if not path.is_absolute() and base is not None:
            path = base / path
        return ValidatorAddr(scheme="unix", path=path)
    if "://" in addr and not addr.startswith("tcp://"):
        scheme = addr.split("://", 1)[0]
        raise AddrError(f"{addr!r}: unsupported scheme {scheme!r}{did_you_mean(scheme, ['tcp', 'unix'])}", fix)
    rest = addr.removeprefix("tcp://")
    peer_id: str | None = None
    if "@" in rest:
        peer, rest = rest.split("@", 1)
        if not PEER_ID_RE.fullmatch(peer):
            raise AddrError(
                f"{addr!r}: peer ID {peer!r} is not 40 hex characters",
                "use the node's ID (hex of the first 20 bytes of SHA-256 of its key), or drop `ID@`",
            )
        peer_id = peer.lower()
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise AddrError(f"{addr!r}: bad bracketed IPv6 address", "write tcp://[::1]:26658")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or ":" in host:
            raise AddrError(f"{addr!r}: expected host:port", fix)
    if not host or "/" in host:
        raise AddrError(f"{addr!r}: bad host {host!r}", fix)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddrError(f"{addr!r}: bad port {port_text!r}", "the port is a number in 1..65535")
    return ValidatorAddr(scheme="tcp", host=host, port=int(port_text), peer_id=peer_id)


def check_host_port(ctx: Ctx, key: str, value: str, *, schemes: tuple[str, ...] = ()) -> str:
    """Check a ``host:port`` (optionally behind one of ``schemes``); returns the value unchanged."""
    rest = value
    for scheme in schemes:
        if rest.startswith(scheme + "://"):
            rest = rest[len(scheme) + 3 :]
            break
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        prefix = f"{schemes[0]}://" if schemes else ""
        raise ctx.error(key, f"{value!r} is not host:port", f'write "{prefix}127.0.0.1:12345"')
    return value
