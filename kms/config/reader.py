"""Typed reading of one TOML table and of the addresses it names: every error names the file, the dotted key
and the fix.

``Table`` pops the keys it knows, checks their types and finally (``done``) refuses whatever is left, with a
"did you mean" for typos: like tmkms's ``#[serde(deny_unknown_fields)]``, a misspelt key is an error.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from pykms.errors import ConfigError
from pykms.paths import AmbiguousPath, resolve_relative

#: CometBFT MaxChainIDLen (types/genesis.go).
MAX_CHAIN_ID_LEN = 50
HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")

T = TypeVar("T")

#: Keys whose values are secrets or lead to one (passwords, PINs, DSNs, seeds, and their _file/_env forms).
_SECRET_KEY_RE = re.compile(r"pass|pin|dsn|seed|secret|mnemonic|token|private|credential", re.IGNORECASE)


def _shown(key: str, value: object) -> str:
    """How an error may quote ``value`` of ``key``: never the value of a secret-bearing key, whatever the error."""
    if _SECRET_KEY_RE.search(key.rsplit(".", 1)[-1]):
        return "(value not shown: the key holds a secret)"
    return repr(value)


def type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Ctx:
    """Per-file context: where errors point and where relative paths resolve."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.warnings: list[str] = []
        #: (dotted key as written, its chain ids) of each consensus key the provider parsers kept.
        self.owners: list[tuple[str, tuple[str, ...]]] = []

    def error(self, key: str, message: str, fix: str | None = None) -> ConfigError:
        return ConfigError(message, file=str(self.path), key=key, fix=fix)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.path}: key `{key}`: {message}")


class Table:
    """Pops known keys off one TOML table; ``done()`` refuses the rest with a did-you-mean."""

    def __init__(self, ctx: Ctx, data: object, key: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ctx.error(key, f"expected a table, found {type_name(data)}")
        self.ctx = ctx
        self.data = dict(data)
        self.key = key
        self.known = known

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def has(self, name: str) -> bool:
        return name in self.data

    def _take(self, name: str, kind: type[T], what: str, required: bool, fix: str | None) -> T | None:
        if name not in self.data:
            if required:
                raise self.ctx.error(self.sub(name), "missing", fix or f"add {name} = <{what}>")
            return None
        value = self.data.pop(name)
        # bool is an int subclass in Python; TOML keeps them apart, and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.ctx.error(
                self.sub(name),
                f"expected {what}, found {type_name(value)} {_shown(name, value)}",
                fix or f"set {name} to {what}",
            )
        return value

    def str_(self, name: str, *, required: bool = False, fix: str | None = None) -> str | None:
        value = self._take(name, str, "a string", required, fix)
        if value is not None and not value:
            raise self.ctx.error(self.sub(name), "must not be empty", fix)
        return value

    def req_str(self, name: str, fix: str | None = None) -> str:
        value = self.str_(name, required=True, fix=fix)
        assert value is not None
        return value

    def bool_(self, name: str) -> bool | None:
        return self._take(name, bool, "true or false", False, None)

    def int_(self, name: str, *, lo: int, hi: int, required: bool = False, fix: str | None = None) -> int | None:
        value = self._take(name, int, "an integer", required, fix)
        if value is not None and not lo <= value <= hi:
            raise self.ctx.error(
                self.sub(name), f"{_shown(name, value)} is out of range", fix or f"use a value in {lo}..{hi}"
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | None:
        fix = "use one of " + ", ".join(choices)
        value = self._take(name, str, "a string", required, fix)
        if value is not None and value not in choices:
            raise self.ctx.error(
                self.sub(name), f"unknown value {_shown(name, value)}{did_you_mean(value, choices)}", fix
            )
        return value

    def path(self, name: str, *, required: bool = False) -> Path | None:
        value = self.str_(name, required=required, fix=f'add {name} = "/path/to/file"')
        if value is None:
            return None
        try:
            return resolve_relative(value, self.ctx.base)  # the working directory or the config's folder
        except AmbiguousPath as exc:
            raise self.ctx.error(
                self.sub(name), str(exc), f"write the absolute path of the one you mean, e.g. {exc.cwd_path}"
            ) from None

    def raw(self, name: str) -> object:
        return self.data.pop(name, None)

    def table_list(self, name: str) -> list[object]:
        """An array of tables (``[[x]]`` or ``x = [{...}]``); absent means empty."""
        if name not in self.data:
            return []
        value = self.data.pop(name)
        if not isinstance(value, list):
            raise self.ctx.error(
                self.sub(name), f"expected an array of tables, found {type_name(value)}", f"write [[{name}]]"
            )
        return value

    def chain_ids(self, name: str = "chain_ids") -> tuple[str, ...]:
        fix = f'add {name} = ["<chain-id>"]'
        value = self._take(name, list, "an array of chain ids", True, fix)
        assert value is not None
        if not value:
            raise self.ctx.error(self.sub(name), "must name at least one chain", fix)
        seen: list[str] = []
        for index, item in enumerate(value):
            key = f"{self.sub(name)}[{index}]"
            if not isinstance(item, str):
                raise self.ctx.error(
                    key, f"expected a string, found {type_name(item)} {item!r}", 'quote it: "<chain-id>"'
                )
            check_chain_id(self.ctx, key, item)
            if item in seen:
                raise self.ctx.error(key, f"chain {item!r} is listed twice", "list each chain once")
            seen.append(item)
        return tuple(seen)

    def done(self) -> None:
        for name in self.data:
            hint = did_you_mean(name, self.known)
            fix = f"remove it{hint and ' or correct the spelling'}; known keys here: {', '.join(self.known)}"
            raise self.ctx.error(self.sub(name), f"unknown key{hint}", fix)


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""


def check_chain_id(ctx: Ctx, key: str, chain_id: str) -> None:
    if not chain_id or len(chain_id) > MAX_CHAIN_ID_LEN or any(c.isspace() or not c.isprintable() for c in chain_id):
        raise ctx.error(
            key,
            f"invalid chain id {chain_id!r}",
            f"a chain id is 1 to {MAX_CHAIN_ID_LEN} printable characters without spaces (CometBFT MaxChainIDLen)",
        )


def no_clear_secret(t: Table, name: str, file_key: str, env_key: str) -> None:
    """Refuse a secret written in clear in the config file: it belongs in a 0600 file or the environment."""
    if t.has(name):
        raise t.ctx.error(
            t.sub(name),
            "secrets are never written in the config file",
            f"put it in a 0600 file and set {file_key} = <path>, or set {env_key} = <environment variable name>",
        )


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
        return str(replace(self, peer_id=None))

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        peer = f"{self.peer_id}@" if self.peer_id else ""
        return f"tcp://{peer}{host}:{self.port}"


class AddrError(ConfigError):
    """A bad address, named without file or key: ``load_config`` re-raises it with both."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.message = message


def parse_addr(addr: str, *, base: Path | None = None) -> ValidatorAddr:
    """Parse ``tcp://[ID@]host:port`` or ``unix:///path`` (no scheme means tcp, as in tendermint-rs net.rs)."""
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
