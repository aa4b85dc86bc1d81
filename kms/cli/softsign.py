"""``pykms softsign keygen|import``: tmkms-compatible software keys (base64 seed, 0600)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("softsign", help="software-held keys (tmkms softsign format)")
    cmds = group.add_subparsers(dest="softsign_cmd", metavar="CMD")
    p = cmds.add_parser("keygen", help="generate an Ed25519 consensus key (base64 seed, mode 0600)")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_keygen)
    p = cmds.add_parser("import", help="import a CometBFT priv_validator_key.json as a softsign key")
    p.add_argument("json_path", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_import)


def cmd_keygen(args: argparse.Namespace) -> int:
    from pykms.providers.softsign import keygen

    pub = keygen(args.path)
    print(f"generated {args.path}; public key (hex): {pub.hex().upper()}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pykms.providers.softsign import import_priv_validator_key

    pub = import_priv_validator_key(args.json_path, args.output)
    print(f"imported {args.json_path} into {args.output}; public key (hex): {pub.hex().upper()}")
    return 0
