"""``pykms``: the command-line entry point and the one place where errors become exit codes.

Exit codes (the README's table): 0 success, 1 a bug, 2 usage, 130 interrupted, ``EXIT_CODES`` for our errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pykms import __version__
from pykms.errors import (
    ConfigError,
    KeyFileError,
    KmsError,
    ProtocolError,
    ProviderError,
    SigningRefused,
    StateError,
    ThresholdError,
)
from pykms.hardening import make_undumpable

__all__ = ["EXIT_CODES", "exit_code_for", "main"]

EXIT_CODES: dict[type[KmsError], int] = {
    ConfigError: 3,
    KeyFileError: 4,
    StateError: 5,
    ProviderError: 6,
    ProtocolError: 7,
    SigningRefused: 8,
    ThresholdError: 8,
}

#: Command groups, each a module with ``register(subparsers)``. Optional ones (a provider whose library is not
#: installed) are skipped with a note in ``pykms --help`` rather than breaking every command.
_GROUPS = ("core", "softsign", "yubihsm", "ledger", "pkcs11", "guard", "audit", "threshold", "cosigner", "keyholder")


def exit_code_for(exc: KmsError) -> int:
    """Map an error to its exit code: the most specific registered class wins."""
    return next((EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES), 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pykms", description="Remote signer for CometBFT validators (a drop-in for tmkms)."
    )
    parser.add_argument("--version", action="version", version=f"pykms {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"pykms.cli.{group}")
        except ImportError as exc:  # an optional provider library missing
            name = exc.name or group
            sub.add_parser(group, help=f"(unavailable: {name} is not installed)")
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # tmkms's `help [COMMAND...]` and `GROUP help` (`tmkms yubihsm help`): argparse's --help of that command.
    if argv[:1] == ["help"]:
        argv = [*argv[1:], "--help"]
    elif argv[1:2] == ["help"] and argv[0] in (*_GROUPS, "state", "keys"):
        argv = [argv[0], *argv[2:], "--help"]
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Before any command can load a key: a crash must not write one to a core file.
    make_undumpable()
    try:
        code = func(args)
        return int(code or 0)
    except KmsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
