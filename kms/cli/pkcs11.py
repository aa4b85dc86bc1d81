"""``pykms pkcs11 keys generate|import|list -c FILE``: Ed25519 consensus keys on a PKCS#11 token.

The token, PIN source and per-chain key label/id come from ``[[providers.pkcs11]]`` in the config, so what these
commands create is exactly what ``pykms start`` will look for. Seeds are read from files only (never from the
command line, where ``ps`` would show them).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from pykms.errors import ConfigError, KeyFileError
from pykms.keyfiles import read_secret_file

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("pkcs11", help="Ed25519 keys on a PKCS#11 token (SoftHSM2, Luna, nShield, CloudHSM)")
    groups = group.add_subparsers(dest="pkcs11_cmd", metavar="CMD")
    keys = groups.add_parser("keys", help="generate, import or list consensus keys on the token")
    cmds = keys.add_subparsers(dest="pkcs11_keys_cmd", metavar="CMD")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", type=Path, required=True, help="tmkms.toml with [[providers.pkcs11]]")

    p = cmds.add_parser("generate", help="generate the configured keys on the token (non-extractable)")
    common(p)
    p.add_argument("--chain", help="only the key of this chain id (default: every configured key not yet present)")
    p.set_defaults(func=cmd_generate)

    p = cmds.add_parser("import", help="import an existing key for one chain (sensitive, non-extractable)")
    common(p)
    p.add_argument("--chain", required=True, help="chain id whose configured key label/id receives the key")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--priv-validator-key", type=Path, help="CometBFT priv_validator_key.json")
    src.add_argument("--seed-file", type=Path, help="file holding the base64 32-byte seed (tmkms softsign format)")
    p.set_defaults(func=cmd_import)

    p = cmds.add_parser("list", help="list Ed25519 keys on the configured tokens with their consensus keys")
    common(p)
    p.set_defaults(func=cmd_list)


# --------------------------------------------------------------------------------------------- key files


def parse_priv_validator_key(data: bytes, source: str) -> bytes:
    """The 32-byte seed of a CometBFT priv_validator_key.json, after checking its public key matches."""
    from nacl.signing import SigningKey

    try:
        doc = json.loads(data)
        priv = doc["priv_key"]
        if priv.get("type") != "tendermint/PrivKeyEd25519":
            raise KeyFileError(f"{source}: priv_key.type is {priv.get('type')!r}, not tendermint/PrivKeyEd25519")
        raw = base64.b64decode(priv["value"], validate=True)
    except KeyFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise KeyFileError(f"{source}: not a CometBFT priv_validator_key.json (priv_key.value unreadable)") from None
    if len(raw) != 64:
        raise KeyFileError(f"{source}: priv_key.value is {len(raw)} bytes, expected 64 (seed and public key)")
    seed, pub = raw[:32], raw[32:]
    if bytes(SigningKey(seed).verify_key) != pub:
        raise KeyFileError(f"{source}: priv_key.value's public half does not match its seed; the file is corrupt")
    declared = doc.get("pub_key", {}).get("value") if isinstance(doc.get("pub_key"), dict) else None
    if declared is not None and declared != base64.b64encode(pub).decode():
        raise KeyFileError(f"{source}: pub_key.value does not match priv_key.value; the file is corrupt")
    return seed


def parse_seed_file(data: bytes, source: str) -> bytes:
    """A tmkms softsign key: base64 of the 32-byte seed (64 bytes seed and public key also accepted, checked)."""
    from nacl.signing import SigningKey

    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"{source}: not base64 (expected a tmkms softsign Ed25519 seed)") from None
    if len(raw) == 64:
        if bytes(SigningKey(raw[:32]).verify_key) != raw[32:]:
            raise KeyFileError(f"{source}: the public half does not match the seed; the file is corrupt")
        return raw[:32]
    if len(raw) != 32:
        raise KeyFileError(f"{source}: decodes to {len(raw)} bytes, expected a 32-byte Ed25519 seed")
    return raw


def consensus_key(config: Any, chain_id: str, public_key: bytes) -> str:
    """The public key as the chain's operators write it: the chain's key_format (bech32, hex, cosmos-json)."""
    from pykms.keyring import format_public_key

    for chain in config.chains:
        if chain.id == chain_id:
            return format_public_key(public_key, chain.key_format)
    return public_key.hex().upper()


# ----------------------------------------------------------------------------------------------- commands


def _load(config_path: Path) -> tuple[Any, list[tuple[Any, Any]]]:
    """The config and its (provider entry, key entry) pairs, one per configured pkcs11 key."""
    from pykms.config import load_config

    config = load_config(config_path)
    rows = [(entry, key) for entry in config.providers.pkcs11 for key in entry.keys]
    if not rows:
        raise ConfigError(
            "no [[providers.pkcs11]] section",
            file=str(config_path),
            fix="add one with module, token_label, user_pin_file and keys",
        )
    return config, rows


def _no_key_for(args: argparse.Namespace) -> ConfigError:
    return ConfigError(
        f"no [[providers.pkcs11.keys]] entry serves chain {args.chain!r}",
        file=str(args.config),
        fix="add the chain id to a key's chain_ids",
    )


def _key_name(key: Any) -> str:
    parts = [f"label={key.label!r}" if key.label is not None else "", f"id={key.id}" if key.id is not None else ""]
    return " ".join(p for p in parts if p)


def _names(key: Any, info: Any) -> bool:
    """Whether a configured key entry names this key found on the token (by its label and id, those given)."""
    from pykms.providers.pkcs11 import parse_key_id

    key_id = parse_key_id(key.id)
    return (key.label is None or info.label == key.label) and (key_id is None or info.key_id == key_id)


def cmd_generate(args: argparse.Namespace) -> int:
    from pykms.providers.pkcs11 import generate_key, list_keys, open_token, parse_key_id

    config, rows = _load(args.config)
    matched = False
    for entry, key in rows:
        if args.chain is not None and args.chain not in key.chain_ids:
            continue
        matched = True
        with open_token(entry) as token:
            present = any(info.has_private and _names(key, info) for info in list_keys(token))
            if present and args.chain is None:
                print(f"{','.join(key.chain_ids)}: {_key_name(key)} already on {token.description}; skipped")
                continue
            pub = generate_key(token, key.label, parse_key_id(key.id))
        for chain_id in key.chain_ids:
            print(f"{chain_id}: generated {_key_name(key)}; consensus key {consensus_key(config, chain_id, pub)}")
    if not matched:
        raise _no_key_for(args)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pykms.providers.pkcs11 import import_key, open_token, parse_key_id

    if args.priv_validator_key is not None:
        seed = parse_priv_validator_key(read_secret_file(args.priv_validator_key), str(args.priv_validator_key))
    else:
        seed = parse_seed_file(read_secret_file(args.seed_file), str(args.seed_file))
    config, rows = _load(args.config)
    for entry, key in rows:
        if args.chain in key.chain_ids:
            with open_token(entry) as token:
                pub = import_key(token, seed, key.label, parse_key_id(key.id))
            for chain_id in key.chain_ids:
                print(f"{chain_id}: imported {_key_name(key)}; consensus key {consensus_key(config, chain_id, pub)}")
            return 0
    raise _no_key_for(args)


def cmd_list(args: argparse.Namespace) -> int:
    from pykms.providers.pkcs11 import list_keys, open_token

    config, rows = _load(args.config)
    seen: set[tuple[str, str | None, int | None]] = set()
    for entry, _key in rows:
        where = (str(entry.module), entry.token_label, entry.slot)
        if where in seen:
            continue
        seen.add(where)
        with open_token(entry) as token:
            found = list_keys(token)
            print(f"{token.description} ({entry.module}): {len(found)} Ed25519 key(s)")
        same_token = [key for ent, key in rows if (str(ent.module), ent.token_label, ent.slot) == where]
        for info in found:
            chains = [chain_id for key in same_token if _names(key, info) for chain_id in key.chain_ids]
            private = "" if info.has_private else " (public key only: no private key!)"
            head = f"  label={info.label!r} id={info.key_id.hex() or '-'}{private}"
            if not chains:
                print(f"{head} not configured; public key {info.public_key.hex().upper()}")
            for chain_id in chains:
                print(f"{head} chain {chain_id}: {consensus_key(config, chain_id, info.public_key)}")
    return 0
