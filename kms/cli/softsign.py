"""``pykms softsign keygen|import``: tmkms-compatible software keys (base64 seed, 0600)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("softsign", help="software-held keys (tmkms softsign format)")
    cmds = group.add_subparsers(dest="softsign_cmd", metavar="CMD")
    p = cmds.add_parser("keygen", help="generate an Ed25519 consensus key (base64 seed, mode 0600)")
    p.add_argument("-t", "--type", dest="key_type", choices=("consensus", "account"), default="consensus",
                   help="consensus: Ed25519 (default); account: secp256k1 (tmkms's flag)")  # fmt: skip
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_keygen)
    p = cmds.add_parser("import", help="import a CometBFT priv_validator_key.json as a softsign key")
    p.add_argument("-f", dest="format", choices=("json", "raw"), default="json",
                   help="input format (tmkms's flag; only json, as in tmkms)")  # fmt: skip
    p.add_argument("json_path", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_import)


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.key_type == "account":
        from pykms.providers.secp256k1 import keygen_secp256k1

        pub = keygen_secp256k1(args.path)
        print(f"generated account (secp256k1) key {args.path}; public key (hex): {pub.hex().upper()}")
        return 0
    from pykms.providers.softsign import keygen

    pub = keygen(args.path)
    print(f"generated {args.path}; public key (hex): {pub.hex().upper()}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.format != "json":
        # tmkms refuses it too ("must be 'json'"): the raw format has no file to import from.
        print("error: -f raw: only -f json (a priv_validator_key.json) can be imported", file=sys.stderr)
        return 2
    from pykms.providers.softsign import import_priv_validator_key

    pub = import_priv_validator_key(args.json_path, args.output)
    print(f"imported {args.json_path} into {args.output}; public key (hex): {pub.hex().upper()}")
    return 0
