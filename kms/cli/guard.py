"""``pykms guard init-db``: create or migrate the PostgreSQL guard's schema; and the state show/import functions
``pykms state show|import|init`` call for a chain whose guard is in PostgreSQL.
"""

from __future__ import annotations

import argparse
from typing import Any

from pykms.cli.core import config_arg
from pykms.config import GuardConfig, KmsConfig
from pykms.errors import ConfigError
from pykms.guard.state import SignState

__all__ = ["cmd_init_db", "import_state", "register", "show_state"]


def register(sub: Any) -> None:
    group = sub.add_parser("guard", help="the shared double-sign guard in PostgreSQL")
    cmds = group.add_subparsers(dest="guard_cmd", metavar="CMD", required=True)
    p = cmds.add_parser(
        "init-db",
        help="create or migrate the guard's schema (idempotent; safe to run from several hosts)",
        description="Connects with [guard] dsn_file / dsn_env of the configuration and applies every missing "
        "schema migration in one transaction. Chains then get their row with `pykms state import` or "
        "`pykms state init`.",
    )
    config_arg(p)
    p.set_defaults(func=cmd_init_db)


def _postgres_cfg(config: KmsConfig) -> GuardConfig:
    cfg = config.guard
    if cfg is None or cfg.backend != "postgres":
        raise ConfigError(
            "the guard is not in PostgreSQL",
            file=str(config.path),
            key="guard.backend",
            fix='add [guard] backend = "postgres" with dsn_file or dsn_env',
        )
    return cfg


def cmd_init_db(args: argparse.Namespace) -> int:
    from pykms.config import load_config
    from pykms.guard.pgadmin import dsn_from_config, init_db, redacted_target

    config = load_config(args.config)
    dsn = dsn_from_config(_postgres_cfg(config))
    before, after = init_db(dsn)
    target = redacted_target(dsn)
    if before == after:
        print(f"{target}: schema already at version {after}")
    else:
        print(f"{target}: schema migrated from version {before} to {after}")
    return 0


def show_state(cfg: KmsConfig, chain_id: str) -> SignState:
    """The chain's committed state in PostgreSQL; StateMissing when the chain has no row."""
    from pykms.guard.pgadmin import dsn_from_config, read_state

    guard = _postgres_cfg(cfg)
    return read_state(dsn_from_config(guard), chain_id, timeout_ms=max(guard.timeout_ms, 10_000))


def import_state(cfg: KmsConfig, chain_id: str, state: SignState, force: bool, replace: bool = True) -> None:
    """Set the chain's row to ``state`` under its lock, by the file guard's rules (``write_state``); a replaced
    row is kept in ``<chain>_guard_row.replaced-<time>.json`` beside the configuration. Safe while instances are
    signing: they wait for the row or see the new state.
    """
    import json
    import time

    from pykms.guard.pgadmin import dsn_from_config, write_state
    from pykms.keyfiles import write_secret_file

    def keep(row: dict[str, object]) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = cfg.path.parent / f"{chain_id}_guard_row.replaced-{stamp}.json"
        write_secret_file(path, json.dumps(row, indent=2).encode() + b"\n")
        return str(path)

    guard = _postgres_cfg(cfg)
    dsn = dsn_from_config(guard)
    kept = write_state(
        dsn, chain_id, state, force=force, replace=replace, keep=keep, timeout_ms=max(guard.timeout_ms, 10_000)
    )
    if kept is not None:
        print(f"the previous row is kept in {kept}")
