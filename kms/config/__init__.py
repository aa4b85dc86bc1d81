"""tmkms.toml -> frozen dataclasses, strictly.

A tmkms.toml written for tmkms v0.15 (softsign, yubihsm and ledgertm sections) parses unchanged; pykms adds a
few keys of its own (``[[chain]] state_format / audit_log``, ``[guard]``, ``[metrics]``, ``[[providers.pkcs11]]``
and ledger transport options). Like tmkms (``#[serde(deny_unknown_fields)]`` on every config struct), an unknown
key is an error, not a silent no-op: a misspelt ``max_heigth`` must not quietly disable a safety limit.

``model`` holds the dataclasses, ``reader`` the typed reading of one table, ``providers`` the
``[[providers.X]]`` tables and ``load`` the rest of the file and the checks across sections.
"""

from __future__ import annotations

from pykms.config.load import find_config_path, load_config, parse_config
from pykms.config.model import (
    CONFIG_ENV_VAR,
    ChainConfig,
    GuardConfig,
    KeyFormat,
    KmsConfig,
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
    "ChainConfig",
    "GuardConfig",
    "KeyFormat",
    "KmsConfig",
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
