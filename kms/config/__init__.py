"""tmkms.toml -> frozen dataclasses, strictly.

A tmkms.toml written for tmkms v0.15 (softsign, yubihsm and ledgertm sections) parses unchanged; pykms adds a
few keys of its own (``[[chain]] state_format / audit_log``, ``[guard]``, ``[metrics]``, ``[[providers.pkcs11]]``
and ledger transport options). Like tmkms (``#[serde(deny_unknown_fields)]`` on every config struct), an unknown
key is an error, not a silent no-op: a misspelt ``max_heigth`` must not quietly disable a safety limit. Every
error names the file, the dotted key (``validator[0].protocol_version``) and the fix, with a "did you mean"
for typos.

Where things live: ``model`` (the frozen dataclasses the rest of pykms reads), ``reader`` (typed reading of one
table and of addresses, errors with file/key/fix), ``providers`` (the ``[[providers.X]]`` table: parse, keys,
build) and ``load`` (the other sections, the whole file, the checks across sections, the I/O edge). This package
re-exports the public names.

Relative paths: tmkms resolves them against the working directory, pykms against the config file's folder;
a path found at only one of the two is taken from there, one found at both with different contents is refused
with both named (pykms.paths).
"""

from __future__ import annotations

from pykms.config.load import find_config_path, load_config, parse_config
from pykms.config.model import (
    CONFIG_ENV_VAR,
    CONFIG_FILE_NAME,
    PROTOCOL_VERSIONS,
    ChainConfig,
    GuardConfig,
    KeyFormat,
    KmsConfig,
    LedgerConfig,
    MetricsConfig,
    Pkcs11Config,
    Pkcs11Key,
    ProvidersConfig,
    SoftsignConfig,
    ValidatorConfig,
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmConnectorServer,
    YubihsmKey,
)
from pykms.config.reader import ValidatorAddr, parse_addr

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
