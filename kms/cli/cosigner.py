"""``pykms cosigner init|start``: run one FROST cosigner (one share, its own double-sign state)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("cosigner", help="threshold signing: run one cosigner (one key share, its own guard)")
    cmds = group.add_subparsers(dest="cosigner_cmd", metavar="CMD")
    p = cmds.add_parser("init", help="create the missing double-sign state files of a cosigner.toml")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--height", type=int, default=0, help="start the state at this height (default 0)")
    p.set_defaults(func=cmd_init)
    p = cmds.add_parser("start", help="serve signature shares to the pinned signers")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-format", choices=("console", "json", "auto"), default="auto")
    p.set_defaults(func=cmd_start)


def cmd_init(args: argparse.Namespace) -> int:
    from pykms.guard.state import SignState
    from pykms.guard.store import create_state_file
    from pykms.threshold.config import load_cosigner_config

    config = load_cosigner_config(args.config)
    for chain in config.chains:
        if chain.state_file.exists():
            print(f"{chain.id}: {chain.state_file} exists; kept")
            continue
        chain.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_state_file(chain.state_file, SignState(args.height, 0, 0), fmt=chain.state_format)
        print(f"{chain.id}: created {chain.state_file} at height {args.height}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from pykms.errors import StateMissing
    from pykms.guard.store import StateStore, open_state_store
    from pykms.logconfig import configure_logging, flush_logs
    from pykms.secretconn.identity import load_identity
    from pykms.threshold.config import load_cosigner_config
    from pykms.threshold.cosigner import Cosigner
    from pykms.threshold.keys import load_share_file
    from pykms.threshold.server import CosignerServer

    configure_logging(args.log_format, verbose=args.verbose, background=True)
    config = load_cosigner_config(args.config)
    share, package = load_share_file(config.share_file)
    identity = load_identity(config.secret_key)
    stores: dict[str, StateStore] = {}
    try:
        for chain in config.chains:
            try:
                stores[chain.id] = open_state_store(chain.state_file, chain.state_format)
            except StateMissing:
                raise StateMissing(
                    f"{chain.state_file}: no state file for chain {chain.id!r} (fix: pykms cosigner init -c "
                    f"{args.config}, with --height at or above the last height this key signed)"
                ) from None
        cosigner = Cosigner(share, package, stores)
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    host = config.listen_addr.host or "127.0.0.1"
    server = CosignerServer(cosigner, identity, config.allowed_signers, host, config.listen_addr.port or 0)

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        cosigner.close()
        flush_logs()
    return 0
