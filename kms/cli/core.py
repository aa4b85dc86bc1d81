"""Core commands: ``start``, ``init``, ``keys show``, ``state show|init|import|export``, ``version``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pykms import __version__
from pykms.config import ChainConfig, KmsConfig, load_config
from pykms.errors import ConfigError, StateError

__all__ = ["config_arg", "register"]


class Network(NamedTuple):
    chain_id: str
    account_key_prefix: str
    consensus_key_prefix: str


#: The networks ``tmkms init -n`` knows (tmkms v0.15 src/commands/init/networks.rs, templates/networks/*.toml).
NETWORKS: dict[str, Network] = {
    "cosmoshub": Network("cosmoshub-3", "cosmospub", "cosmosvalconspub"),
    "irishub": Network("irishub", "iap", "icp"),
    "sentinelhub": Network("sentinelhub-2", "sentpub", "sentvalconspub"),
    "osmosis": Network("osmosis-1", "osmopub", "osmovalconspub"),
    "core": Network("core-1", "persistencepub", "persistencevalconspub"),  # Persistence
}

_CONFIG_TEMPLATE = """\
# pykms configuration (tmkms.toml format). Every key is documented in config/tmkms.toml.example.

[[chain]]
id = "{chain_id}"
key_format = {{ type = "bech32", account_key_prefix = "{account}", consensus_key_prefix = "{consensus}" }}
state_file = "{home}/state/{chain_id}_priv_validator_state.json"

[[providers.softsign]]
chain_ids = ["{chain_id}"]
key_type = "consensus"
path = "{home}/secrets/{chain_id}-consensus.key"

[[validator]]
chain_id = "{chain_id}"
# The node's priv_validator_laddr. Pin the node with tcp://NODE_ID@host:port only if you accept re-pinning after
# every node restart: CometBFT makes a new SecretConnection key for the privval listener at each start.
addr = "tcp://127.0.0.1:26659"
secret_key = "{home}/secrets/kms-identity.key"
protocol_version = "v0.38"
reconnect = true
"""


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, default=None, help="tmkms.toml (default: $TMKMS_CONFIG_FILE, then ./tmkms.toml)"
    )


def register(sub: Any) -> None:
    p = sub.add_parser("start", help="run the signer")
    config_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("console", "json", "auto"), default="auto")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("init", help="create a KMS home: config from a template, identity key, directories")
    p.add_argument("home", type=Path)
    p.add_argument("--chain-id", default="cosmoshub-4")
    p.add_argument("-n", "--networks", default=None,
                   help="tmkms's networks, comma separated: " + ", ".join(NETWORKS))  # fmt: skip
    p.set_defaults(func=cmd_init)

    keys = sub.add_parser("keys", help="consensus keys").add_subparsers(dest="keys_cmd", metavar="CMD")
    p = keys.add_parser("show", help="each chain's consensus public key (bech32, hex, base64, address)")
    config_arg(p)
    p.set_defaults(func=cmd_keys_show)

    state = sub.add_parser("state", help="double-sign state").add_subparsers(dest="state_cmd", metavar="CMD")

    def state_cmd(name: str, text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = state.add_parser(name, help=text)
        config_arg(p)
        p.add_argument("--chain", required=True)
        p.set_defaults(func=func)
        return p

    state_cmd("show", "print a chain's last signed height/round/step (CometBFT JSON)", cmd_state_show)
    p = state_cmd("init", "create a chain's state file at a given height/round/step", cmd_state_init)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--step", type=int, default=0, choices=(0, 1, 2, 3))
    p.add_argument("--force", action="store_true", help="overwrite an existing state (dangerous)")
    p = state_cmd("import", "import a node's priv_validator_state.json or a tmkms state file", cmd_state_import)
    p.add_argument("file", type=Path)
    p.add_argument("--force", action="store_true", help="allow importing a state older than the current one")
    text = "write a chain's state for tmkms (--format tmkms) or the node's FilePV (--format cometbft)"
    p = state_cmd("export", text, cmd_state_export)
    p.add_argument("--format", dest="format", choices=("tmkms", "cometbft"), required=True)
    p.add_argument("file", type=Path, help="where to write (mode 0600, replaced atomically)")

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=lambda _args: print(f"pykms {__version__}") or 0)


def _chain(config: KmsConfig, chain_id: str) -> ChainConfig:
    for chain in config.chains:
        if chain.id == chain_id:
            return chain
    known = ", ".join(c.id for c in config.chains) or "none"
    raise ConfigError(f"no [[chain]] with id {chain_id!r} (configured: {known})", file=str(config.path), key="chain.id")


def cmd_start(args: argparse.Namespace) -> int:
    from pykms.logconfig import configure_logging, flush_logs
    from pykms.runtime import Runtime

    configure_logging(args.log_format, verbose=args.verbose, background=True)
    try:
        config = load_config(args.config)
        from pykms.keyholder.process import die_with_supervisor, wants_split

        die_with_supervisor()  # the front of a split: goes when its supervisor goes
        if wants_split(config):  # keys in a process of their own: supervise it and a key-less front
            from pykms.keyholder.process import run_split

            # The logging options of ``pykms start``, passed on to the key holder and the front.
            return run_split(config, args=["--log-format", args.log_format, *(["-v"] if args.verbose else [])])
        runtime = Runtime(config)
        runtime.build()
        return runtime.run_forever()
    finally:
        flush_logs()


def cmd_init(args: argparse.Namespace) -> int:
    from pykms.secretconn.identity import generate_identity

    chains = _init_chains(args)
    if not chains:
        return 2
    home: Path = args.home.resolve()
    config_path = home / "tmkms.toml"
    if config_path.exists():
        raise ConfigError("already exists; refusing to overwrite", file=str(config_path))
    for sub in ("secrets", "state"):
        (home / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    generate_identity(home / "secrets" / "kms-identity.key")
    header, _, block = _CONFIG_TEMPLATE.partition("[[chain]]")
    blocks = ["[[chain]]" + block.format(home=home, chain_id=c, account=a, consensus=v) for c, a, v in chains]
    config_path.write_text(header + "\n".join(blocks))
    print(f"created {config_path}, {home / 'secrets' / 'kms-identity.key'} (0600) and {home / 'state'}")
    print("next steps:")
    for chain_id, _a, _v in chains[1:]:
        print(f"  pykms softsign keygen {home / 'secrets' / (chain_id + '-consensus.key')}")
    args.chain_id = chains[0][0]
    print(f"  pykms softsign keygen {home / 'secrets' / (args.chain_id + '-consensus.key')}   (or: softsign import)")
    print(f"  pykms state import -c {config_path} --chain {args.chain_id} NODE_HOME/data/priv_validator_state.json")
    print(f"     or, for a brand-new validator: pykms state init -c {config_path} --chain {args.chain_id}")
    print(f"  pykms start -c {config_path}")
    return 0


def _init_chains(args: argparse.Namespace) -> list[Network]:
    """The chains to write: tmkms's ``-n`` networks, else ``--chain-id``."""
    if not args.networks:
        return [Network(args.chain_id, "cosmospub", "cosmosvalconspub")]
    chains = []
    for name in args.networks.split(","):
        network = NETWORKS.get(name.strip())
        if network is None:
            known = ", ".join(NETWORKS)
            print(
                f"error: -n: unknown network {name.strip()!r} (tmkms knows {known}); for another chain use "
                "pykms init --chain-id CHAIN_ID HOME and set its key_format",
                file=sys.stderr,
            )
            return []
        chains.append(network)
    return chains


def cmd_keys_show(args: argparse.Namespace) -> int:
    import base64

    from pykms.keyring import consensus_address, format_public_key
    from pykms.providers.registry import build_signers

    config = load_config(args.config)
    signers = build_signers(config)
    try:
        for chain in config.chains:
            signer = signers.get(chain.id)
            if signer is None:
                print(f"{chain.id}: no key configured")
                continue
            pub = signer.public_key()
            print(f"{chain.id} ({signer.provider}):")
            print(f"  consensus key: {format_public_key(pub, chain.key_format)}")
            print(f"  hex:           {pub.hex().upper()}")
            print(f"  base64:        {base64.b64encode(pub).decode()}")
            print(f"  address:       {consensus_address(pub).hex().upper()}")
    finally:
        for signer in signers.values():
            signer.close()
    return 0


def _postgres(config: KmsConfig) -> bool:
    return config.guard is not None and config.guard.backend == "postgres"


def cmd_state_show(args: argparse.Namespace) -> int:
    from pykms.guard.state import state_to_json

    config = load_config(args.config)
    chain = _chain(config, args.chain)
    if _postgres(config):
        from pykms.cli.guard import show_state

        state = show_state(config, chain.id)
    else:
        from pykms.guard.factory import open_store

        with contextlib.closing(open_store(config, chain)) as store:
            state = store.load()
    text = state_to_json(state)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_state_export(args: argparse.Namespace) -> int:
    """The way back to tmkms or to the node's own key (pykms.guard.export)."""
    from pykms.guard.export import export_state, write_export
    from pykms.guard.factory import default_state_path
    from pykms.guard.store import read_state_file

    config = load_config(args.config)
    chain = _chain(config, args.chain)
    live: Path | None = None
    if _postgres(config):
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


def cmd_state_init(args: argparse.Namespace) -> int:
    from pykms.guard.state import SignState

    state = SignState(height=args.height, round=args.round, step=args.step, signature=b"", sign_bytes=b"")
    return _write_state(args, state, command="init")


def cmd_state_import(args: argparse.Namespace) -> int:
    from pykms.guard.store import read_state_file

    _fmt, state = read_state_file(args.file)
    return _write_state(args, state, command="import")


#: What --force does, for every message that suggests it.
_FORCE_DOES = "--force replaces it and keeps the old file beside it as <state file>.replaced-<time>"


def _write_state(args: argparse.Namespace, state: Any, *, command: str) -> int:
    """Write ``state`` as the chain's guard state. Without --force: ``init`` refuses any existing state and
    ``import`` one it cannot read or that is newer than ``state``; a state that cannot be read is never treated
    as absent."""
    config = load_config(args.config)
    chain = _chain(config, args.chain)
    if _postgres(config):
        from pykms.cli.guard import import_state

        import_state(config, chain.id, state, force=args.force, replace=command == "import")
        print(f"{chain.id}: state set to height {state.height} round {state.round} step {state.step} (postgres)")
        return 0
    from pykms.guard.factory import default_state_path
    from pykms.guard.store import create_state_file, state_was_here

    path = default_state_path(config, chain)
    if os.path.lexists(path):
        if not args.force:
            _refuse_replacing(path, state, command)
    elif not args.force and state_was_here(path):
        raise StateError(
            f"{path}: no state file, but its lock file {path}.lock shows a state was opened here before (deleted or "
            "moved?): this key may already have signed. Restore the file from a backup; or import a state known "
            "to be at least as recent as anything this key signed with `pykms state import --force`; "
            "`pykms state init --force` starts the guard at height 0 and is only for a key that has never signed "
            "on this chain"
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Takes the state's lock: refuses (StateLocked) while a running pykms holds this chain's state.
    kept = create_state_file(path, state, fmt=chain.state_format, overwrite=True)
    print(f"{chain.id}: state set to height {state.height} round {state.round} step {state.step} ({path})")
    if kept is not None:
        print(f"the previous state file is kept as {kept}")
    return 0


def _refuse_replacing(path: Path, state: Any, command: str) -> None:
    """Raise unless ``state`` may replace the existing state at ``path`` without --force."""
    from pykms.guard.decide import refuse_older_import
    from pykms.guard.store import read_state_file

    try:
        _fmt, current = read_state_file(path)
    except StateError as exc:
        raise StateError(
            f"{path}: a state file exists but cannot be read ({exc}); refusing to replace it: pykms cannot tell "
            "what this key has already signed. Restore it from a backup, or import a state known to be at least "
            f"as recent as anything this key signed with `pykms state import --force` ({_FORCE_DOES}); "
            "`pykms state init --force` would reset the guard to height 0 and is only for a key that has never "
            "signed on this chain"
        ) from None
    if command == "init":
        raise StateError(
            f"{path}: a state already exists (height {current.height} round {current.round} step {current.step}); "
            "`pykms state init` would reset the guard below it, so this key could sign again what it signed "
            f"before; refusing ({_FORCE_DOES})"
        )
    refuse_older_import(str(path), current, state, _FORCE_DOES)
