"""Command-line interface.

Convention: each command group lives in its own module exposing ``register(subparsers) -> None``; a handler is
set with ``parser.set_defaults(func=handler)`` where ``handler(args: argparse.Namespace) -> int`` returns the
exit code and raises ``pykms.errors.KmsError`` for failures. ``pykms.cli.main`` maps errors to exit codes in one
place (see EXIT_CODES there).
"""
