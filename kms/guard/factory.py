"""Opens the configured guard backend of one chain: the local file store by default, PostgreSQL on request."""

from __future__ import annotations

from pathlib import Path

from pykms.config import ChainConfig, KmsConfig
from pykms.guard.backend import GuardBackend
from pykms.guard.store import JsonStateStore, SlotStateStore, StateStore

__all__ = ["default_state_path", "open_guard", "open_store"]


def default_state_path(config: KmsConfig, chain: ChainConfig) -> Path:
    """Where a chain's state lives when ``state_file`` is not set: beside the config, as tmkms does."""
    if chain.state_file is not None:
        return chain.state_file
    return config.path.parent / "state" / f"{chain.id}_priv_validator_state.json"


def open_store(config: KmsConfig, chain: ChainConfig) -> StateStore:

    path = default_state_path(config, chain)
    if chain.state_format == "slots":
        return SlotStateStore(path)
    return JsonStateStore(path)


def open_guard(config: KmsConfig, chain: ChainConfig) -> GuardBackend:
    """Raises StateError (missing, corrupt, locked) when the chain must not sign."""
    if config.guard is not None and config.guard.backend == "postgres":
        from pykms.guard.postgres import PostgresGuard

        guard: GuardBackend = PostgresGuard.from_config(config.guard, chain.id)
        return guard
    from pykms.guard.file_guard import FileGuard

    return FileGuard(chain.id, open_store(config, chain))
