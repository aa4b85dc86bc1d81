"""tmkms.toml -> frozen dataclasses, strictly.

A tmkms.toml written for tmkms v0.15 (softsign, yubihsm and ledgertm sections) parses unchanged; pykms adds a
few keys of its own (``[[chain]] state_format / audit_log``, ``[guard]``, ``[metrics]``, ``[[providers.pkcs11]]``
and ledger transport options). Like tmkms (``#[serde(deny_unknown_fields)]`` on every config struct), an unknown
key is an error, not a silent no-op: a misspelt ``max_heigth`` must not quietly disable a safety limit. Every
error names the file, the dotted key (``validator[0].protocol_version``) and the fix, with a "did you mean"
for typos.

Theory of operation: ``parse_config(data, path)`` is a pure function over the dict tomllib produced; a small
``_Table`` reader pops the keys it knows, checks their types and finally refuses whatever is left. Cross-checks
between sections run once every section is parsed. ``load_config`` is the I/O edge (finding and reading the file).

Relative paths: tmkms resolves them against the working directory, pykms against the config file's folder;
a path found at only one of the two is taken from there, one found at both with different contents is refused
with both named (pykms.paths).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pykms.errors import ConfigError
from pykms.keyholder.settings import KeyholderSettings, parse_keyholder
from pykms.paths import AmbiguousPath, resolve_relative

__all__ = [
    "CONFIG_ENV_VAR",
    "CONFIG_FILE_NAME",
    "PROTOCOL_VERSIONS",
    "ChainConfig",
    "GuardConfig",
    "KeyFormat",
    "KmsConfig",
    "LedgerConfig",
    "MetricsConfig",
    "Pkcs11Config",
    "Pkcs11Key",
    "ProvidersConfig",
    "SoftsignConfig",
    "ValidatorAddr",
    "ValidatorConfig",
    "YubihsmAdapter",
    "YubihsmAuth",
    "YubihsmConfig",
    "YubihsmConnectorServer",
    "YubihsmKey",
    "find_config_path",
    "load_config",
    "parse_addr",
    "parse_config",
]

#: Same environment variable and file name as tmkms (src/config.rs CONFIG_ENV_VAR / CONFIG_FILE_NAME).
CONFIG_ENV_VAR = "TMKMS_CONFIG_FILE"
CONFIG_FILE_NAME = "tmkms.toml"

ProtocolVersion = Literal["v0.34", "v0.37", "v0.38", "v1.0"]
#: tmkms v0.15 knows "v0.38" (default) and "v0.34"; pykms adds v0.37 and v1.0 (DESIGN §3: v0.38 default).
PROTOCOL_VERSIONS: tuple[str, ...] = ("v0.34", "v0.37", "v0.38", "v1.0")
DEFAULT_PROTOCOL_VERSION: ProtocolVersion = "v0.38"
#: Amino-era values older tmkms releases accepted (tmkms v0.10-v0.14 src/config/validator.rs).
_AMINO_PROTOCOL_VERSIONS = ("v0.33", "legacy")

#: CometBFT MaxChainIDLen (types/genesis.go).
MAX_CHAIN_ID_LEN = 50
#: Per-request budget for the PostgreSQL guard: the node's privval read/write deadline is 5 s
#: (signer_endpoint.go defaultTimeoutReadWriteSeconds, docs/protocol.md §2.1), which must also cover signing and reply.
DEFAULT_GUARD_TIMEOUT_MS = 2000
#: tmkms AdapterConfig::Usb default (src/config/provider/yubihsm.rs usb_timeout_ms_default).
DEFAULT_YUBIHSM_USB_TIMEOUT_MS = 1000

_PEER_ID_RE = re.compile(r"[0-9a-fA-F]{40}")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class KeyFormat:
    """How a chain displays keys (tmkms src/keyring/format.rs): bech32 with prefixes, cosmos-json or hex."""

    type: Literal["bech32", "cosmos-json", "hex"]
    account_key_prefix: str | None = None
    consensus_key_prefix: str | None = None


@dataclass(frozen=True)
class ChainConfig:
    """One ``[[chain]]``."""

    id: str
    key_format: KeyFormat
    state_file: Path | None = None
    state_format: Literal["json", "slots"] = "json"
    #: None: follow the validator's protocol_version (v0.38 signs every non-nil precommit's extension).
    sign_extensions: bool | None = None
    audit_log: Path | None = None
    #: [pykms] "batch": each record written before the reply, flushed every 100 ms; "always": flushed too.
    audit_sync: Literal["batch", "always"] = "batch"
    #: [pykms] start a new audit file (the chain of hashes continues) once the current one reaches this size.
    audit_rotate_bytes: int | None = None


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


@dataclass(frozen=True)
class ValidatorConfig:
    """One ``[[validator]]``: a node to dial and serve."""

    addr: str
    chain_id: str
    secret_key: Path | None = None
    protocol_version: ProtocolVersion = DEFAULT_PROTOCOL_VERSION
    reconnect: bool = True
    max_height: int | None = None
    #: tmkms's per-connection TCP timeout in seconds: dial, handshake and idle read (None = pykms's defaults).
    timeout: int | None = None

    @property
    def parsed_addr(self) -> ValidatorAddr:
        """``addr`` as a typed value (validated at load time, so this does not fail for a loaded config)."""
        return parse_addr(self.addr)


@dataclass(frozen=True)
class SoftsignConfig:
    """One ``[[providers.softsign]]`` (consensus keys only; tmkms account keys are skipped with a warning)."""

    chain_ids: tuple[str, ...]
    key_type: Literal["consensus", "account"]
    #: None = autodetect (tmkms default is base64).
    key_format: Literal["base64", "raw", "json"] | None
    path: Path


@dataclass(frozen=True)
class YubihsmAdapter:
    type: Literal["http", "usb"]
    #: http only: the connector address as written (tmkms form ``tcp://127.0.0.1:12345``; ``http://`` accepted).
    addr: str | None = None
    timeout_ms: int = DEFAULT_YUBIHSM_USB_TIMEOUT_MS


@dataclass(frozen=True)
class YubihsmAuth:
    key: int
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None


@dataclass(frozen=True)
class YubihsmKey:
    chain_ids: list[str]
    key: int
    type: str = "consensus"


@dataclass(frozen=True)
class YubihsmConnectorServer:
    laddr: str
    #: True when a ``cli = { ... }`` table is present (the ``pykms yubihsm`` CLI goes through this server).
    cli: bool | None = None
    cli_auth_key: int | None = None


@dataclass(frozen=True)
class YubihsmConfig:
    adapter: YubihsmAdapter
    auth: YubihsmAuth
    keys: list[YubihsmKey]
    serial_number: str | None = None
    connector_server: YubihsmConnectorServer | None = None


@dataclass(frozen=True)
class LedgerConfig:
    chain_ids: tuple[str, ...]
    transport: Literal["hid", "tcp"] = "hid"
    #: tcp only: host:port of a Ledger (simulator) speaking APDUs over TCP.
    addr: str | None = None
    extensions_disabled: bool = False


@dataclass(frozen=True)
class Pkcs11Key:
    chain_ids: tuple[str, ...]
    label: str | None = None
    #: CKA_ID as hex.
    id: str | None = None


@dataclass(frozen=True)
class Pkcs11Config:
    module: Path
    token_label: str | None
    slot: int | None
    user_pin_file: Path | None
    user_pin_env: str | None
    keys: list[Pkcs11Key]


@dataclass(frozen=True)
class GuardConfig:
    backend: Literal["file", "postgres"] = "file"
    dsn_file: Path | None = None
    dsn_env: str | None = None
    timeout_ms: int = DEFAULT_GUARD_TIMEOUT_MS


@dataclass(frozen=True)
class MetricsConfig:
    #: host:port of the Prometheus /metrics and /health listener.
    addr: str


@dataclass(frozen=True)
class ProvidersConfig:
    softsign: list[SoftsignConfig] = field(default_factory=list)
    yubihsm: list[YubihsmConfig] = field(default_factory=list)
    ledger: list[LedgerConfig] = field(default_factory=list)
    pkcs11: list[Pkcs11Config] = field(default_factory=list)
    #: [pykms] FROST t-of-n cosigners (pykms.threshold.config.ThresholdConfig).
    threshold: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class KmsConfig:
    path: Path
    chains: list[ChainConfig]
    validators: list[ValidatorConfig]
    providers: ProvidersConfig
    guard: GuardConfig | None = None
    metrics: MetricsConfig | None = None
    #: Things accepted but worth telling the operator (clear-text password, ignored tmkms features).
    warnings: tuple[str, ...] = ()
    keyholder: KeyholderSettings = field(default_factory=KeyholderSettings)


# --------------------------------------------------------------------------------------------------------------
# Reader


#: Keys whose values are secrets or lead to one (passwords, PINs, DSNs, seeds, and their _file/_env forms).
_SECRET_KEY_RE = re.compile(r"pass|pin|dsn|seed|secret|mnemonic|token|private|credential", re.IGNORECASE)


def _shown(key: str, value: object) -> str:
    """How an error may quote ``value`` of ``key``: never the value of a secret-bearing key, whatever the error."""
    if _SECRET_KEY_RE.search(key.rsplit(".", 1)[-1]):
        return "(value not shown: the key holds a secret)"
    return repr(value)


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Ctx:
    """Per-file context: where errors point and where relative paths resolve."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.warnings: list[str] = []
        #: Dotted name of each ledger entry as written ([[providers.ledgertm]] or its alias [[providers.ledger]]).
        self.ledger_keys: list[str] = []
        #: Dotted name, as written, of each kept YubiHSM key (account keys before it are dropped).
        self.key_names: dict[int, str] = {}

    def error(self, key: str, message: str, fix: str | None = None) -> ConfigError:
        return ConfigError(message, file=str(self.path), key=key, fix=fix)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.path}: key `{key}`: {message}")

    def resolve(self, value: str) -> Path:
        """tmkms's working directory or pykms's config folder (pykms.paths); AmbiguousPath if they disagree."""
        return resolve_relative(value, self.base)


class _Table:
    """Pops known keys off one TOML table; ``done()`` refuses the rest with a did-you-mean."""

    def __init__(self, ctx: _Ctx, data: object, key: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ctx.error(key, f"expected a table, found {_type_name(data)}")
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
                f"expected {what}, found {_type_name(value)} {_shown(name, value)}",
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
                self.sub(name), f"unknown value {_shown(name, value)}{_did_you_mean(value, choices)}", fix
            )
        return value

    def path(self, name: str, *, required: bool = False) -> Path | None:
        value = self.str_(name, required=required, fix=f'add {name} = "/path/to/file"')
        if value is None:
            return None
        try:
            return self.ctx.resolve(value)
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
                self.sub(name), f"expected an array of tables, found {_type_name(value)}", f"write [[{name}]]"
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
                    key, f"expected a string, found {_type_name(item)} {item!r}", 'quote it: "<chain-id>"'
                )
            _check_chain_id(self.ctx, key, item)
            if item in seen:
                raise self.ctx.error(key, f"chain {item!r} is listed twice", "list each chain once")
            seen.append(item)
        return tuple(seen)

    def done(self) -> None:
        for name in self.data:
            hint = _did_you_mean(name, self.known)
            fix = f"remove it{hint and ' or correct the spelling'}; known keys here: {', '.join(self.known)}"
            raise self.ctx.error(self.sub(name), f"unknown key{hint}", fix)


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""


def _check_chain_id(ctx: _Ctx, key: str, chain_id: str) -> None:
    if not chain_id or len(chain_id) > MAX_CHAIN_ID_LEN or any(c.isspace() or not c.isprintable() for c in chain_id):
        raise ctx.error(
            key,
            f"invalid chain id {chain_id!r}",
            f"a chain id is 1 to {MAX_CHAIN_ID_LEN} printable characters without spaces (CometBFT MaxChainIDLen)",
        )


# --------------------------------------------------------------------------------------------------------------
# Addresses


class _AddrError(ValueError):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def parse_addr(addr: str, *, base: Path | None = None) -> ValidatorAddr:
    """Parse ``tcp://[ID@]host:port`` or ``unix:///path`` (no scheme means tcp, as in tendermint-rs net.rs).

    Raises ConfigError (without file or key: ``load_config`` reports those).
    """
    try:
        return _parse_addr(addr, base)
    except _AddrError as exc:
        raise ConfigError(exc.message, fix=exc.fix) from None


def _parse_addr(addr: str, base: Path | None) -> ValidatorAddr:
    fix = 'write "tcp://NODE_ID@host:port", "tcp://host:port" or "unix:///path/to/socket"'
    if addr.startswith("unix://"):
        rest = addr[len("unix://") :]
        if not rest:
            raise _AddrError(f"{addr!r}: no socket path", fix)
        path = Path(rest)
        if not path.is_absolute() and base is not None:
            path = base / path
        return ValidatorAddr(scheme="unix", path=path)
    if "://" in addr and not addr.startswith("tcp://"):
        scheme = addr.split("://", 1)[0]
        raise _AddrError(f"{addr!r}: unsupported scheme {scheme!r}{_did_you_mean(scheme, ['tcp', 'unix'])}", fix)
    rest = addr.removeprefix("tcp://")
    peer_id: str | None = None
    if "@" in rest:
        peer, rest = rest.split("@", 1)
        if not _PEER_ID_RE.fullmatch(peer):
            raise _AddrError(
                f"{addr!r}: peer ID {peer!r} is not 40 hex characters",
                "use the node's ID (hex of the first 20 bytes of SHA-256 of its key), or drop `ID@`",
            )
        peer_id = peer.lower()
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise _AddrError(f"{addr!r}: bad bracketed IPv6 address", "write tcp://[::1]:26658")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or ":" in host:
            raise _AddrError(f"{addr!r}: expected host:port", fix)
    if not host or "/" in host:
        raise _AddrError(f"{addr!r}: bad host {host!r}", fix)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _AddrError(f"{addr!r}: bad port {port_text!r}", "the port is a number in 1..65535")
    return ValidatorAddr(scheme="tcp", host=host, port=int(port_text), peer_id=peer_id)


def _host_port(ctx: _Ctx, key: str, value: str, *, schemes: tuple[str, ...] = ()) -> str:
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


# --------------------------------------------------------------------------------------------------------------
# Sections


def _key_format(ctx: _Ctx, data: object, key: str) -> KeyFormat:
    if isinstance(data, str):
        # Not tmkms syntax, but an obvious shorthand for the two formats that take no options.
        if data in ("hex", "cosmos-json"):
            return KeyFormat(type=cast(Any, data))
        raise ctx.error(
            key,
            f"expected a table, found {data!r}",
            'write key_format = { type = "bech32", account_key_prefix = "cosmospub", '
            'consensus_key_prefix = "cosmosvalconspub" } or { type = "hex" }',
        )
    kind = _Table(ctx, data, key, ("type",)).choice("type", ("bech32", "cosmos-json", "hex"), required=True)
    if kind == "bech32":
        t = _Table(ctx, data, key, ("type", "account_key_prefix", "consensus_key_prefix"))
        t.raw("type")
        account = t.req_str("account_key_prefix", 'add account_key_prefix = "cosmospub"')
        consensus = t.req_str("consensus_key_prefix", 'add consensus_key_prefix = "cosmosvalconspub"')
        for name, prefix in (("account_key_prefix", account), ("consensus_key_prefix", consensus)):
            if not all(33 <= ord(c) <= 126 for c in prefix) or prefix.lower() != prefix:
                raise ctx.error(f"{key}.{name}", f"{prefix!r} is not a valid bech32 prefix", "use lowercase ASCII")
        t.done()
        return KeyFormat(type="bech32", account_key_prefix=account, consensus_key_prefix=consensus)
    # tmkms's CosmosJson and Hex variants carry no fields and serde ignores extra ones: guides (Neutron's)
    # write { type = "cosmos-json", account_key_prefix = ..., consensus_key_prefix = ... }; accepted, unused.
    t = _Table(ctx, data, key, ("type", "account_key_prefix", "consensus_key_prefix"))
    for name in ("type", "account_key_prefix", "consensus_key_prefix"):
        t.raw(name)
    t.done()
    return KeyFormat(type=cast(Any, kind))


_CHAIN_KEYS = (
    "id", "key_format", "sign_extensions", "state_file", "state_hook", "state_format", "audit_log", "audit_sync",
    "audit_rotate_bytes",
)  # fmt: skip


def _chain(ctx: _Ctx, data: object, key: str) -> ChainConfig:
    t = _Table(ctx, data, key, _CHAIN_KEYS)
    chain_id = t.req_str("id", 'add id = "<chain-id>"')
    _check_chain_id(ctx, t.sub("id"), chain_id)
    if not t.has("key_format"):
        raise ctx.error(
            t.sub("key_format"),
            "missing",
            'add key_format = { type = "bech32", account_key_prefix = "cosmospub", '
            'consensus_key_prefix = "cosmosvalconspub" } (or { type = "hex" })',
        )
    key_format = _key_format(ctx, t.raw("key_format"), t.sub("key_format"))
    sign_extensions = t.bool_("sign_extensions")
    state_file = t.path("state_file")
    if t.has("state_hook"):
        hook = _Table(ctx, t.raw("state_hook"), t.sub("state_hook"), ("cmd", "timeout_secs", "fail_closed"))
        hook.raw("cmd")
        hook.int_("timeout_secs", lo=0, hi=2**32)
        hook.bool_("fail_closed")
        hook.done()
        ctx.warn(
            t.sub("state_hook"),
            "ignored: pykms never guesses a starting height; it refuses to start without a state "
            "(run `pykms state import` with the node's priv_validator_state.json, which sets the guard to that "
            "state; or, only for a key that has never signed, `pykms state init`, which starts it at height 0)",
        )
    state_format = cast(Literal["json", "slots"], t.choice("state_format", ("json", "slots")) or "json")
    audit_log = t.path("audit_log")
    audit_sync = cast(Literal["batch", "always"], t.choice("audit_sync", ("batch", "always")) or "batch")
    audit_rotate_bytes = t.int_("audit_rotate_bytes", lo=4096, hi=2**40)
    t.done()
    return ChainConfig(
        id=chain_id,
        key_format=key_format,
        state_file=state_file,
        state_format=state_format,
        sign_extensions=sign_extensions,
        audit_log=audit_log,
        audit_sync=audit_sync,
        audit_rotate_bytes=audit_rotate_bytes,
    )


_VALIDATOR_KEYS = ("addr", "chain_id", "reconnect", "timeout", "secret_key", "max_height", "protocol_version")


def _validator(ctx: _Ctx, data: object, key: str) -> ValidatorConfig:
    t = _Table(ctx, data, key, _VALIDATOR_KEYS)
    addr_text = t.req_str("addr", 'add addr = "tcp://NODE_ID@host:port" (the node\'s priv_validator_laddr)')
    try:
        addr = _parse_addr(addr_text, ctx.base)
    except _AddrError as exc:
        raise ctx.error(t.sub("addr"), exc.message, exc.fix) from None
    chain_id = t.req_str("chain_id", 'add chain_id = "<chain-id>"')
    reconnect = t.bool_("reconnect")
    timeout = t.int_("timeout", lo=1, hi=65535)  # tmkms: Option<u16> seconds
    secret_key = t.path("secret_key")
    max_height: int | None = None
    if t.has("max_height"):
        raw = t.raw("max_height")
        # tmkms's own example writes max_height = "500000" (a string); the tendermint Height type takes both.
        if isinstance(raw, str) and raw.isdigit():
            max_height = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            max_height = raw
        else:
            raise ctx.error(t.sub("max_height"), f"expected a height, found {raw!r}", "write max_height = 500000")
        if not 1 <= max_height < 2**63:
            raise ctx.error(t.sub("max_height"), f"{max_height} is out of range", "use a height in 1..2^63-1")
    version = DEFAULT_PROTOCOL_VERSION
    if t.has("protocol_version"):
        raw = t.raw("protocol_version")
        fix = "use one of " + ", ".join(PROTOCOL_VERSIONS) + " (the CometBFT version of the node)"
        if raw in _AMINO_PROTOCOL_VERSIONS:
            raise ctx.error(t.sub("protocol_version"), f"{raw!r} (Amino-era Tendermint) is not supported", fix)
        if not isinstance(raw, str) or raw not in PROTOCOL_VERSIONS:
            hint = _did_you_mean(raw, PROTOCOL_VERSIONS) if isinstance(raw, str) else ""
            raise ctx.error(t.sub("protocol_version"), f"unknown protocol version {raw!r}{hint}", fix)
        version = cast(ProtocolVersion, raw)
    t.done()
    if addr.scheme == "tcp" and secret_key is None:
        raise ctx.error(
            t.sub("secret_key"),
            "missing: a tcp:// validator needs the SecretConnection identity key",
            'add secret_key = "secrets/kms-identity.key" (created by `pykms init`)',
        )
    if addr.scheme == "unix" and addr.path is not None:
        addr_text = str(addr)
    return ValidatorConfig(
        addr=addr_text,
        chain_id=chain_id,
        secret_key=secret_key,
        protocol_version=version,
        reconnect=True if reconnect is None else reconnect,
        max_height=max_height,
        timeout=timeout,
    )


def _softsign(ctx: _Ctx, data: object, key: str) -> SoftsignConfig:
    t = _Table(ctx, data, key, ("chain_ids", "key_type", "key_format", "path"))
    chain_ids = t.chain_ids()
    key_type = cast(Literal["consensus", "account"], t.choice("key_type", ("consensus", "account")) or "consensus")
    key_format = cast(Literal["base64", "raw", "json"] | None, t.choice("key_format", ("base64", "json", "raw")))
    path = t.path("path", required=True)
    assert path is not None
    t.done()
    return SoftsignConfig(chain_ids=chain_ids, key_type=key_type, key_format=key_format, path=path)


def _yubihsm(ctx: _Ctx, data: object, key: str) -> YubihsmConfig:
    t = _Table(ctx, data, key, ("adapter", "auth", "keys", "serial_number", "connector_server"))
    if not t.has("adapter"):
        raise ctx.error(t.sub("adapter"), "missing", 'add adapter = { type = "usb" } or { type = "http", addr = ... }')
    akey = t.sub("adapter")
    raw_adapter = t.raw("adapter")
    kind = _Table(ctx, raw_adapter, akey, ("type",)).choice("type", ("usb", "http"), required=True)
    if kind == "usb":
        a = _Table(ctx, raw_adapter, akey, ("type", "timeout_ms"))
        a.raw("type")
        usb_timeout = a.int_("timeout_ms", lo=1, hi=600_000)
        a.done()
        adapter = YubihsmAdapter(type="usb", timeout_ms=usb_timeout or DEFAULT_YUBIHSM_USB_TIMEOUT_MS)
    else:
        a = _Table(ctx, raw_adapter, akey, ("type", "addr"))
        a.raw("type")
        connector = a.req_str("addr", 'add addr = "tcp://127.0.0.1:12345" (the yubihsm-connector)')
        _host_port(ctx, f"{akey}.addr", connector, schemes=("tcp", "http"))
        a.done()
        adapter = YubihsmAdapter(type="http", addr=connector)

    if not t.has("auth"):
        raise ctx.error(t.sub("auth"), "missing", 'add auth = { key = 1, password_file = "secrets/yubihsm-password" }')
    u = _Table(ctx, t.raw("auth"), t.sub("auth"), ("key", "password", "password_file"))
    auth_key = u.int_("key", lo=0, hi=0xFFFF, required=True, fix="add key = 1 (the auth key's object id)")
    assert auth_key is not None
    password = u._take("password", str, "a string", False, None)
    password_file = u.path("password_file")
    u.done()
    if (password is None) == (password_file is None):
        raise ctx.error(
            t.sub("auth"),
            "give exactly one of password_file and password",
            'use password_file = "secrets/yubihsm-password" (a 0600 file)',
        )
    if password is not None:
        ctx.warn(t.sub("auth.password"), "password in clear in the config file; prefer password_file (mode 0600)")

    keys: list[YubihsmKey] = []
    for index, raw_key in enumerate(t.table_list("keys")):
        kkey = f"{t.sub('keys')}[{index}]"
        k = _Table(ctx, raw_key, kkey, ("chain_ids", "key", "type"))
        chain_ids = k.chain_ids()
        object_id = k.int_("key", lo=0, hi=0xFFFF, required=True, fix="add key = <object id of the signing key>")
        assert object_id is not None
        key_type = k.choice("type", ("consensus", "account")) or "consensus"
        k.done()
        if key_type == "account":
            ctx.warn(kkey, "account keys are not used by pykms (it signs consensus messages only); entry ignored")
            continue
        keys.append(YubihsmKey(chain_ids=list(chain_ids), key=object_id, type=key_type))
        ctx.key_names[id(keys[-1])] = kkey

    serial = t.str_("serial_number", fix='quote it: serial_number = "0123456789"')
    server: YubihsmConnectorServer | None = None
    if t.has("connector_server"):
        skey = t.sub("connector_server")
        s = _Table(ctx, t.raw("connector_server"), skey, ("laddr", "cli"))
        laddr = s.req_str("laddr", 'add laddr = "tcp://127.0.0.1:12345"')
        _host_port(ctx, f"{skey}.laddr", laddr, schemes=("tcp", "http"))
        cli: bool | None = None
        cli_auth_key: int | None = None
        if s.has("cli"):
            c = _Table(ctx, s.raw("cli"), f"{skey}.cli", ("auth_key",))
            cli_auth_key = c.int_("auth_key", lo=0, hi=0xFFFF)
            c.done()
            cli = True
        s.done()
        server = YubihsmConnectorServer(laddr=laddr, cli=cli, cli_auth_key=cli_auth_key)
    t.done()
    return YubihsmConfig(
        adapter=adapter,
        auth=YubihsmAuth(key=auth_key, password=password, password_file=password_file),
        keys=keys,
        serial_number=serial,
        connector_server=server,
    )


def _ledger(ctx: _Ctx, data: object, key: str) -> LedgerConfig:
    t = _Table(ctx, data, key, ("chain_ids", "transport", "addr", "extensions_disabled"))
    chain_ids = t.chain_ids()
    transport = cast(Literal["hid", "tcp"], t.choice("transport", ("hid", "tcp")) or "hid")
    addr = t.str_("addr")
    extensions_disabled = t.bool_("extensions_disabled")
    t.done()
    if transport == "tcp":
        if addr is None:
            raise ctx.error(t.sub("addr"), "missing for transport = tcp", 'add addr = "127.0.0.1:9999"')
        _host_port(ctx, t.sub("addr"), addr, schemes=("tcp",))
    elif addr is not None:
        raise ctx.error(t.sub("addr"), "only used with transport = tcp", 'remove addr or set transport = "tcp"')
    return LedgerConfig(
        chain_ids=chain_ids, transport=transport, addr=addr, extensions_disabled=bool(extensions_disabled)
    )


def _no_clear_secret(ctx: _Ctx, t: _Table, name: str, file_key: str, env_key: str) -> None:
    if t.has(name):
        raise ctx.error(
            t.sub(name),
            "secrets are never written in the config file",
            f"put it in a 0600 file and set {file_key} = <path>, or set {env_key} = <environment variable name>",
        )


def _pkcs11(ctx: _Ctx, data: object, key: str) -> Pkcs11Config:
    known = ("module", "token_label", "slot", "user_pin_file", "user_pin_env", "keys")
    t = _Table(ctx, data, key, known)
    for secret in ("user_pin", "pin"):
        _no_clear_secret(ctx, t, secret, "user_pin_file", "user_pin_env")
    module = t.path("module", required=True)
    assert module is not None
    token_label = t.str_("token_label")
    slot = t.int_("slot", lo=0, hi=2**32 - 1)
    if token_label is None and slot is None:
        raise ctx.error(t.sub("token_label"), "missing: name the token", 'add token_label = "<label>" (or slot = N)')
    pin_file = t.path("user_pin_file")
    pin_env = t.str_("user_pin_env")
    if pin_file is not None and pin_env is not None:
        raise ctx.error(t.sub("user_pin_file"), "give only one of user_pin_file and user_pin_env", "remove one")
    keys: list[Pkcs11Key] = []
    for index, raw_key in enumerate(t.table_list("keys")):
        kkey = f"{t.sub('keys')}[{index}]"
        k = _Table(ctx, raw_key, kkey, ("chain_ids", "label", "id"))
        chain_ids = k.chain_ids()
        label = k.str_("label")
        key_id = k.str_("id")
        k.done()
        if key_id is not None and not _HEX_RE.fullmatch(key_id):
            raise ctx.error(f"{kkey}.id", f"{key_id!r} is not hex", 'write the CKA_ID as hex, e.g. id = "01"')
        if label is None and key_id is None:
            raise ctx.error(kkey, "name the key by label or id", 'add label = "<CKA_LABEL>" or id = "<hex CKA_ID>"')
        keys.append(Pkcs11Key(chain_ids=chain_ids, label=label, id=None if key_id is None else key_id.lower()))
    t.done()
    if not keys:
        raise ctx.error(t.sub("keys"), "no keys", 'add keys = [{ chain_ids = ["<chain-id>"], label = "<label>" }]')
    return Pkcs11Config(
        module=module, token_label=token_label, slot=slot, user_pin_file=pin_file, user_pin_env=pin_env, keys=keys
    )


def _guard(ctx: _Ctx, data: object, key: str) -> GuardConfig:
    t = _Table(ctx, data, key, ("backend", "dsn_file", "dsn_env", "timeout_ms"))
    _no_clear_secret(ctx, t, "dsn", "dsn_file", "dsn_env")
    backend = cast(Literal["file", "postgres"], t.choice("backend", ("file", "postgres")) or "file")
    dsn_file = t.path("dsn_file")
    dsn_env = t.str_("dsn_env")
    timeout_ms = t.int_("timeout_ms", lo=1, hi=60_000)
    t.done()
    if backend == "postgres" and (dsn_file is None) == (dsn_env is None):
        raise ctx.error(
            t.sub("dsn_file"),
            "the postgres backend needs exactly one of dsn_file and dsn_env",
            'add dsn_file = "secrets/guard.dsn" (a 0600 file) or dsn_env = "PYKMS_GUARD_DSN"',
        )
    return GuardConfig(
        backend=backend, dsn_file=dsn_file, dsn_env=dsn_env, timeout_ms=timeout_ms or DEFAULT_GUARD_TIMEOUT_MS
    )


def _metrics(ctx: _Ctx, data: object, key: str) -> MetricsConfig:
    t = _Table(ctx, data, key, ("addr",))
    addr = t.req_str("addr", 'add addr = "127.0.0.1:9102"')
    _host_port(ctx, t.sub("addr"), addr)
    t.done()
    return MetricsConfig(addr=addr)


_PROVIDERS = ("softsign", "yubihsm", "ledgertm", "ledger", "pkcs11", "threshold")


def _providers(ctx: _Ctx, data: object) -> ProvidersConfig:
    t = _Table(ctx, data, "providers", _PROVIDERS)
    if t.has("fortanixdsm"):
        raise ctx.error(
            "providers.fortanixdsm",
            "the Fortanix DSM provider is not supported by pykms",
            "use softsign, yubihsm, ledgertm or pkcs11",
        )
    softsign: list[SoftsignConfig] = []
    parsed = [_softsign(ctx, item, f"providers.softsign[{i}]") for i, item in enumerate(t.table_list("softsign"))]
    ed25519_chains = {c for soft in parsed if soft.key_type == "consensus" for c in soft.chain_ids}
    for i, soft in enumerate(parsed):
        # tmkms (src/keyring.rs KeyRing::sign) signs with a chain's secp256k1 "account" key only when the chain
        # has no Ed25519 key: such an entry is kept (pykms.providers.secp256k1), a shadowed one dropped.
        if soft.key_type == "account" and set(soft.chain_ids) <= ed25519_chains:
            ctx.warn(
                f"providers.softsign[{i}]",
                "account keys are not used by pykms for a chain that has a consensus (Ed25519) key, as in tmkms; "
                "entry ignored",
            )
            continue
        softsign.append(soft)
    yubihsm = [_yubihsm(ctx, item, f"providers.yubihsm[{i}]") for i, item in enumerate(t.table_list("yubihsm"))]
    ledger: list[LedgerConfig] = []
    for section in ("ledgertm", "ledger"):
        for i, item in enumerate(t.table_list(section)):
            ctx.ledger_keys.append(f"providers.{section}[{i}]")
            ledger.append(_ledger(ctx, item, ctx.ledger_keys[-1]))
    pkcs11 = [_pkcs11(ctx, item, f"providers.pkcs11[{i}]") for i, item in enumerate(t.table_list("pkcs11"))]
    threshold: list[Any] = []
    if t.has("threshold"):
        from pykms.threshold.config import parse_threshold_provider

        threshold = [
            parse_threshold_provider(ctx, item, f"providers.threshold[{i}]")
            for i, item in enumerate(t.table_list("threshold"))
        ]
    t.done()
    return ProvidersConfig(softsign=softsign, yubihsm=yubihsm, ledger=ledger, pkcs11=pkcs11, threshold=threshold)


def _key_owners(providers: ProvidersConfig, ledger_keys: list[str], key_names: dict[int, str]) -> list[tuple[str, str]]:
    """(chain id, dotted provider key) for every consensus key entry."""
    owners: list[tuple[str, str]] = []
    for i, soft in enumerate(providers.softsign):
        owners += [(c, f"providers.softsign[{i}]") for c in soft.chain_ids]
    for i, hsm in enumerate(providers.yubihsm):
        for j, key in enumerate(hsm.keys):
            name = key_names.get(id(key), f"providers.yubihsm[{i}].keys[{j}]")
            owners += [(c, name) for c in key.chain_ids]
    for ledger, name in zip(providers.ledger, ledger_keys, strict=True):
        owners += [(c, name) for c in ledger.chain_ids]
    for i, token in enumerate(providers.pkcs11):
        for j, p11 in enumerate(token.keys):
            owners += [(c, f"providers.pkcs11[{i}].keys[{j}]") for c in p11.chain_ids]
    for i, group in enumerate(providers.threshold):
        owners += [(c, f"providers.threshold[{i}]") for c in group.chain_ids]
    return owners


def parse_config(data: Mapping[str, Any], path: Path) -> KmsConfig:
    """Validate a parsed tmkms.toml (the pure core of ``load_config``); ``path`` is for messages and paths."""
    ctx = _Ctx(path)
    top = _Table(ctx, dict(data), "", ("chain", "validator", "providers", "guard", "metrics", "keyholder"))
    chains = [_chain(ctx, item, f"chain[{i}]") for i, item in enumerate(top.table_list("chain"))]
    validators = [_validator(ctx, item, f"validator[{i}]") for i, item in enumerate(top.table_list("validator"))]
    providers = _providers(ctx, top.raw("providers") or {})
    guard = _guard(ctx, top.raw("guard"), "guard") if top.has("guard") else None
    metrics = _metrics(ctx, top.raw("metrics"), "metrics") if top.has("metrics") else None
    keyholder = parse_keyholder(top.raw("keyholder"), path)
    top.done()

    chain_ids: list[str] = []
    for i, chain in enumerate(chains):
        if chain.id in chain_ids:
            raise ctx.error(f"chain[{i}].id", f"chain {chain.id!r} is configured twice", "keep one [[chain]] per id")
        chain_ids.append(chain.id)
    for i, validator in enumerate(validators):
        if validator.chain_id not in chain_ids:
            raise ctx.error(
                f"validator[{i}].chain_id",
                f"no [[chain]] with id {validator.chain_id!r}{_did_you_mean(validator.chain_id, chain_ids)}",
                f'add a [[chain]] with id = "{validator.chain_id}" or correct the chain_id',
            )
    owners = _key_owners(providers, ctx.ledger_keys, ctx.key_names)
    for chain_id, key in owners:
        if chain_id not in chain_ids:
            raise ctx.error(
                f"{key}.chain_ids",
                f"no [[chain]] with id {chain_id!r}{_did_you_mean(chain_id, chain_ids)}",
                f'add a [[chain]] with id = "{chain_id}" or correct chain_ids',
            )
    served = {v.chain_id for v in validators}
    kept: list[ChainConfig] = []
    for i, chain in enumerate(chains):
        mine = [key for chain_id, key in owners if chain_id == chain.id]
        if not mine and chain.id not in served:
            # tmkms's own example lists chains without keys; such a chain can do nothing, so it is left out
            # (the runtime opens a key and a state for every chain it is given).
            ctx.warn(f"chain[{i}]", f"chain {chain.id!r} has no key and no [[validator]]; ignored")
            continue
        if not mine:
            raise ctx.error(
                f"chain[{i}]",
                f"no consensus key for chain {chain.id!r}",
                f'add chain_ids = ["{chain.id}"] to one [[providers.*]] entry',
            )
        if len(mine) > 1:
            raise ctx.error(
                f"{mine[1]}.chain_ids",
                f"chain {chain.id!r} has a consensus key in {len(mine)} provider entries ({', '.join(mine)})",
                "keep exactly one key per chain",
            )
        kept.append(chain)
    return KmsConfig(
        path=path,
        chains=kept,
        validators=validators,
        providers=providers,
        guard=guard,
        metrics=metrics,
        warnings=tuple(ctx.warnings),
        keyholder=keyholder,
    )


# --------------------------------------------------------------------------------------------------------------
# I/O edge


def find_config_path(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Path:
    """``-c`` path, else $TMKMS_CONFIG_FILE, else ./tmkms.toml (tmkms's order)."""
    env = os.environ if environ is None else environ
    if path is not None:
        return path
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    return Path(CONFIG_FILE_NAME)


def load_config(path: Path | None, *, log: Callable[..., Any] | None = None) -> KmsConfig:
    """Find, read and validate the config file; warnings are logged as ``config_warning`` events."""
    config_path = find_config_path(path)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "no such file",
            file=str(config_path),
            fix=f"pass -c /path/to/{CONFIG_FILE_NAME}, set {CONFIG_ENV_VAR}, or create one with `pykms init`",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror})", file=str(config_path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(config_path), fix="save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(config_path), fix="correct the TOML syntax") from None
    config = parse_config(data, config_path.absolute())
    if config.warnings:
        if log is None:
            from pykms.logconfig import get_logger

            log = get_logger("pykms.config").warning
        for warning in config.warnings:
            log("config_warning", detail=warning)
    return config
