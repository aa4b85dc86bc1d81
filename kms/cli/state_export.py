"""``pykms state export``: the way back to tmkms or to the node's own key (pykms.guard.export)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pykms.errors import StateError

__all__ = ["register"]


def register(state: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``export`` to the ``pykms state`` subcommands."""
    p = state.add_parser(
        "export",
        help="write a chain's state for tmkms (--format tmkms) or the node's FilePV (--format cometbft)",
    )
    config_arg(p)
    p.add_argument("--chain", required=True)
    p.add_argument("--format", dest="format", choices=("tmkms", "cometbft"), required=True)
    p.add_argument("file", type=Path, help="where to write (mode 0600, replaced atomically)")
    p.set_defaults(func=cmd_state_export)


def cmd_state_export(args: argparse.Namespace) -> int:
    from pykms.config import load_config
    from pykms.guard.export import export_state, write_export
    from pykms.guard.factory import default_state_path
    from pykms.guard.store import read_state_file

    config = load_config(args.config)
    chain = next((c for c in config.chains if c.id == args.chain), None)
    if chain is None:
        from pykms.errors import ConfigError

        known = ", ".join(c.id for c in config.chains) or "none"
        raise ConfigError(f"no [[chain]] with id {args.chain!r} (configured: {known})", file=str(config.path))
    live: Path | None = None
    if config.guard is not None and config.guard.backend == "postgres":
        from pykms.cli.guard import show_state

        state = show_state(config, chain.id)
    else:
        live = default_state_path(config, chain)
        state = read_state_file(live)[1]  # a snapshot read: no lock taken, nothing written
    try:
        write_export(args.file, export_state(state, args.format), protect=live)
    except OSError as exc:
        raise StateError(f"{args.file}: cannot write the export ({exc.strerror or exc})") from None
    print(
        f"exported {chain.id} at height {state.height}, round {state.round}, step {state.step} "
        f"({args.format} format) to {args.file}"
    )
    print("stop pykms before starting the other signer with this file: one signer per key at any time")
    return 0
