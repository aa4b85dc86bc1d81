"""The configuration as frozen dataclasses: what the rest of pykms reads (the parsing lives beside it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pykms.config.reader import ValidatorAddr, parse_addr
from pykms.keyholder.settings import KeyholderSettings

#: Same environment variable and file name as tmkms (src/config.rs CONFIG_ENV_VAR / CONFIG_FILE_NAME).
CONFIG_ENV_VAR = "TMKMS_CONFIG_FILE"
CONFIG_FILE_NAME = "tmkms.toml"

ProtocolVersion = Literal["v0.34", "v0.37", "v0.38", "v1.0"]
#: tmkms v0.15 knows "v0.38" (default) and "v0.34"; pykms adds v0.37 and v1.0 (v0.38 is the default, as in tmkms v0.15).
PROTOCOL_VERSIONS: tuple[str, ...] = ("v0.34", "v0.37", "v0.38", "v1.0")
DEFAULT_PROTOCOL_VERSION: ProtocolVersion = "v0.38"

#: Per-request budget for the PostgreSQL guard: the node's privval read/write deadline is 5 s
#: (signer_endpoint.go defaultTimeoutReadWriteSeconds, docs/protocol.md §2.1), which must also cover signing and reply.
DEFAULT_GUARD_TIMEOUT_MS = 2000
#: tmkms AdapterConfig::Usb default (src/config/provider/yubihsm.rs usb_timeout_ms_default).
DEFAULT_YUBIHSM_USB_TIMEOUT_MS = 1000


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
    state_format: Literal["auto", "json", "slots"] = "auto"
    #: None: follow the validator's protocol_version (v0.38 signs every non-nil precommit's extension).
    sign_extensions: bool | None = None
    audit_log: Path | None = None
    #: [pykms] "batch": each record written before the reply, flushed every 100 ms; "always": flushed too.
    audit_sync: Literal["batch", "always"] = "batch"
    #: [pykms] start a new audit file (the chain of hashes continues) once the current one reaches this size.
    audit_rotate_bytes: int | None = None


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
    """One ``[[providers.softsign]]``: an Ed25519 consensus key, or a secp256k1 account key for a chain without one."""

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
