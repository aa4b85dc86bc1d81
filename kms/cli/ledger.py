"""``pykms ledger pubkey|init``: the Ledger Tendermint validator app."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pykms.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("ledger", help="Ledger Tendermint validator app")
    cmds = group.add_subparsers(dest="ledger_cmd", metavar="CMD")
    p = cmds.add_parser("pubkey", help="print the consensus public key of each configured Ledger")
    p.add_argument("-c", "--config", type=Path, default=None)
    p.set_defaults(func=cmd_pubkey)
    p = cmds.add_parser("init", help="set the app's height/round watermark (approve the signature on the device)")
    p.add_argument("-c", "--config", type=Path, default=None)
    p.add_argument("-H", "--height", type=int, required=True)
    p.add_argument("-r", "--round", type=int, default=0)
    p.add_argument("--chain", help="chain id (default: the first chain served by a Ledger)")
    p.set_defaults(func=cmd_init)


def _config(args: argparse.Namespace) -> Any:
    from pykms.config import load_config

    config = load_config(args.config)
    if not config.providers.ledger:
        raise ConfigError("no [[providers.ledger]] (or ledgertm) section", file=str(config.path),
                          key="providers.ledger", fix="add one with chain_ids and the transport")  # fmt: skip
    return config


def cmd_pubkey(args: argparse.Namespace) -> int:
    from pykms.keyring import format_public_key
    from pykms.providers.ledger import LedgerSigner

    config = _config(args)
    formats = {c.id: c.key_format for c in config.chains}
    for cfg in config.providers.ledger:
        signer = LedgerSigner.from_config(cfg)
        try:
            pub = signer.public_key()
            mode, major, minor, patch = signer.version()
            print(f"ledger ({cfg.transport}{' ' + cfg.addr if cfg.addr else ''}), app v{major}.{minor}.{patch}"
                  f"{' (test mode)' if mode else ''}:")  # fmt: skip
            print(f"  hex: {pub.hex().upper()}")
            for chain_id in cfg.chain_ids:
                if chain_id in formats:
                    print(f"  {chain_id}: {format_public_key(pub, formats[chain_id])}")
        finally:
            signer.close()
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Sign a proposal-type message at HEIGHT/ROUND so the app's watermark starts there (as tmkms does)."""
    from pykms.privval.signbytes import vote_sign_bytes
    from pykms.proto.tendermint.types import types_pb2
    from pykms.providers.ledger import LedgerSigner

    config = _config(args)
    matching = [c for c in config.providers.ledger if args.chain is None or args.chain in c.chain_ids]
    if not matching:
        raise ConfigError(
            f"no Ledger serves chain {args.chain!r}",
            file=str(config.path),
            key="providers.ledger.chain_ids",
            fix="add the chain id to a Ledger's chain_ids, or name a chain one serves",
        )
    cfg = matching[0]
    chain_id = args.chain or cfg.chain_ids[0]
    vote = types_pb2.Vote(height=args.height, round=args.round)
    vote.type = 32  # type: ignore[assignment]  # tmkms's `ledger init` signs a proposal-type vote
    vote.timestamp.SetInParent()
    signer = LedgerSigner.from_config(cfg)
    try:
        signer.sign(vote_sign_bytes(chain_id, vote))
    finally:
        signer.close()
    print(f"the Ledger app's watermark is now height {args.height} round {args.round} (chain {chain_id})")
    return 0
