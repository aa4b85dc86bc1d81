"""Opens the configured guard backend of one chain: the local file store by default, PostgreSQL on request."""

from __future__ import annotations

from pathlib import Path

from pykms.config import ChainConfig, KmsConfig
from pykms.errors import ConfigError
from pykms.guard.backend import FileGuard, GuardBackend
from pykms.guard.store import StateStore, open_state_store
from pykms.paths import AmbiguousPath, resolve_relative

__all__ = ["default_state_path", "open_guard", "open_store"]


def default_state_path(config: KmsConfig, chain: ChainConfig) -> Path:
    """Where a chain's state lives when ``state_file`` is not set: tmkms's ``<chain id>_priv_validator_state.json``
    (src/chain.rs Chain::from_config), relative like every path (pykms.paths). Earlier pykms releases used
    ``state/<same name>`` beside the config: still found there when it exists and tmkms's place does not."""
    if chain.state_file is not None:
        return chain.state_file
    name = f"{chain.id}_priv_validator_state.json"
    try:
        path = resolve_relative(name, config.path.parent)
    except AmbiguousPath as exc:
        raise ConfigError(
            str(exc), file=str(config.path), key="chain.state_file", fix=f'write state_file = "{exc.cwd_path}"'
        ) from None
    legacy = config.path.parent / "state" / name
    if not path.exists() and legacy.exists():
        return legacy
    return path


def open_store(config: KmsConfig, chain: ChainConfig) -> StateStore:
    """The chain's file store: its configured format, or with ``auto`` the file's own (new state: slots)."""
    return open_state_store(default_state_path(config, chain), chain.state_format)


def open_guard(config: KmsConfig, chain: ChainConfig) -> GuardBackend:
    """Raises StateError (missing, corrupt, locked) when the chain must not sign."""
    if config.guard is not None and config.guard.backend == "postgres":
        from pykms.guard.pgadmin import dsn_from_config
        from pykms.guard.postgres import PostgresGuard

        return PostgresGuard(dsn_from_config(config.guard), chain.id, timeout_ms=config.guard.timeout_ms)
    return FileGuard(chain.id, open_store(config, chain))
