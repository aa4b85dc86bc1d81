"""``pykms threshold split|status|peer-id``: move a validator key to FROST shares and watch the cosigners."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("threshold", help="threshold signing (FROST t of n): split a key, cosigner status")
    cmds = group.add_subparsers(dest="threshold_cmd", metavar="CMD")
    p = cmds.add_parser(
        "split", help="split a priv_validator_key.json or softsign key into n share files (0600) for threshold t"
    )
    p.add_argument("key_file", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("-t", "--threshold", type=int, required=True)
    p.add_argument("-n", "--participants", type=int, required=True)
    p.add_argument("--force", action="store_true", help="allow a threshold that is not a majority (unsafe)")
    p.set_defaults(func=cmd_split)
    p = cmds.add_parser("status", help="each cosigner's reachability and last signed height/round/step")
    p.add_argument("-c", "--config", type=Path, default=None, help="tmkms.toml with [[providers.threshold]]")
    p.set_defaults(func=cmd_status)
    p = cmds.add_parser("peer-id", help="the node ID of an identity key (for allowed_signers and ID@ addresses)")
    p.add_argument("key_file", type=Path)
    p.set_defaults(func=cmd_peer_id)


def cmd_split(args: argparse.Namespace) -> int:
    from pykms.threshold.keys import split_key_file

    package, paths = split_key_file(args.key_file, args.out_dir, args.threshold, args.participants, force=args.force)
    print(f"group public key (hex): {package.group_public_key.hex().upper()} (unchanged: the validator keeps its key)")
    for identifier, verifying in sorted(package.verifying_shares.items()):
        print(f"share {identifier}: {paths[identifier - 1]} (0600), verifying key {verifying.hex()}")
    print(f"group file: {paths[-1]}")
    print("copy each share file to its own cosigner host, then delete it here and keep the original key offline")
    return 0


def cmd_peer_id(args: argparse.Namespace) -> int:
    from pykms.secretconn.identity import load_identity, node_id

    print(node_id(bytes(load_identity(args.key_file).verify_key)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pykms.config import load_config
    from pykms.errors import ConfigError
    from pykms.providers.threshold import cosigner_status

    config = load_config(args.config)
    entries = config.providers.threshold
    if not entries:
        raise ConfigError("no [[providers.threshold]]", file=str(config.path), fix="add a [[providers.threshold]]")
    worst = 0
    for entry in entries:
        for reachable, line in cosigner_status(entry):
            if not reachable:
                worst = 6
            print(line)
    return worst
