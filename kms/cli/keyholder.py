"""``pykms keyholder serve``: the keys, the guard and the audit log in a process that opens no network socket.

Run by ``pykms start`` when ``[keyholder] isolation = "process"``, or by the operator on another VM or container
(``addr = "unix:///..."`` in the front's tmkms.toml points at it).
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from pykms.cli.core import config_arg
from pykms.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("keyholder", help="the key holder: keys, guard and audit log behind a UNIX socket")
    cmds = group.add_subparsers(dest="keyholder_cmd", metavar="CMD", required=True)
    p = cmds.add_parser("serve", help="load the keys and guards, then answer signing requests on a UNIX socket")
    config_arg(p)
    p.add_argument("--listen", required=True, help="unix:///absolute/path.sock (created 0600 in a 0700 directory)")
    p.add_argument(
        "--allowed-uid",
        type=int,
        action="append",
        default=None,
        help="a uid allowed to connect (repeatable; default: [keyholder] allowed_uids, else this process's uid)",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # pykms start: written to once serving
    p.add_argument("--log-format", choices=("console", "json", "auto"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from pykms.config import load_config
    from pykms.keyholder.client import parse_unix_addr
    from pykms.keyholder.local import LocalKeyHolder
    from pykms.keyholder.process import die_with_supervisor
    from pykms.keyholder.server import KeyHolderServer, default_allowed_uids, listen_unix
    from pykms.logconfig import configure_logging, flush_logs, get_logger

    die_with_supervisor()
    configure_logging(args.log_format, verbose=args.verbose, background=True)
    try:
        path = parse_unix_addr(args.listen)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--listen", fix="pass --listen unix:///run/pykms/keyholder.sock") from None
    config = load_config(args.config)
    allowed = set(args.allowed_uid or config.keyholder.allowed_uids) | set(default_allowed_uids())
    # The keys and guards are opened here, before any answer.
    holder = LocalKeyHolder(config)
    log = get_logger("pykms.keyholder")
    try:
        server = KeyHolderServer(holder, allowed_uids=allowed, log=log.warning)
        listener = listen_unix(path, allowed_uids=allowed)

        def stop(signum: int, frame: object) -> None:
            server.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("keyholder_serving", socket=str(path), chains=sorted(holder.chains()), allowed_uids=sorted(allowed))
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)
        server.serve_forever(listener)
        listener.close()
        path.unlink(missing_ok=True)
    finally:
        holder.close()
        flush_logs()
    return 0
