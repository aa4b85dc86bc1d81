"""``pykms audit verify|summary``: check the hash chain of a chain's audit log and count what was signed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pykms.errors import SigningRefused

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser("audit", help="tamper-evident audit logs")
    cmds = group.add_subparsers(dest="audit_cmd", metavar="CMD", required=True)
    p = cmds.add_parser(
        "verify",
        help="check the hash chain of one chain's log; exit 8 naming the record where it breaks",
        description="Files are taken in chain order: rotated files NAME.<seq> by seq, then NAME.",
    )
    p.add_argument("files", type=Path, nargs="+", help="the log and its rotated files, e.g. audit.log*")
    p.add_argument("--state", type=Path, help="the chain's state file: the log must end with its signature")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
    p = cmds.add_parser("summary", help="signatures by chain and type, refusals by reason, height ranges")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--since", help="only records at or after this RFC 3339 time, e.g. 2026-11-22T18:00:00Z")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)


def cmd_verify(args: argparse.Namespace) -> int:
    from pykms.audit import order_files, verify_files

    state_sig = None
    if args.state is not None:
        from pykms.guard.store import read_state_file

        state_sig = read_state_file(args.state)[1].signature
    files = order_files(args.files)
    report = verify_files(files, state_signature=state_sig)
    if args.json:
        print(json.dumps(vars(report), indent=2))
    if not report.ok:
        where = f"{report.file} record {report.line}: " if report.line else ""
        raise SigningRefused(f"audit log broken after {report.records} good records: {where}{report.problem}")
    if not args.json:
        extent = f"seq {report.first_seq}..{report.last_seq}" if report.records else "empty"
        checked = "; ends with the state's signature" if state_sig is not None else ""
        print(f"ok: {report.records} records ({extent}) in {len(files)} file(s), chain intact{checked}")
        print(f"last hash {report.last_hash}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from pykms.audit import parse_time, summarize

    since = None
    if args.since:
        try:
            since = parse_time(args.since)
        except ValueError as exc:  # a usage error, like argparse's own (exit 2)
            print(f"pykms audit summary: error: --since: {exc}", file=sys.stderr)
            return 2
    s = summarize(args.files, since=since)
    if args.json:
        doc = {
            "signatures": [
                {
                    "chain_id": c,
                    "type": k,
                    "count": n,
                    "reused": s.reused.get((c, k), 0),
                    "withheld": s.withheld.get((c, k), 0),
                    "min_height": s.heights[(c, k)][0],
                    "max_height": s.heights[(c, k)][1],
                }
                for (c, k), n in sorted(s.signatures.items())
            ],
            "refusals": [{"chain_id": c, "reason": r, "count": n} for (c, r), n in sorted(s.refusals.items())],
            "heights": {c: {"min": lo, "max": hi} for c, (lo, hi) in sorted(s.chain_heights().items())},
            "first_time": s.first_time,
            "last_time": s.last_time,
        }
        print(json.dumps(doc, indent=2))
        return 0
    for (chain, kind), n in sorted(s.signatures.items()):
        low, high = s.heights[(chain, kind)]
        reused = s.reused.get((chain, kind), 0)
        print(f"signed   {chain:<24} {kind:<10} {n:>8}  (reused {reused})  heights {low}..{high}")
    for (chain, kind), n in sorted(s.withheld.items()):
        print(f"withheld {chain:<24} {kind:<10} {n:>8}  (recorded, never released: the state was not saved)")
    for (chain, reason), n in sorted(s.refusals.items()):
        print(f"refused  {chain:<24} {reason:<20} {n:>8}")
    for chain, (low, high) in sorted(s.chain_heights().items()):
        print(f"heights  {chain:<24} {low}..{high}")
    if not s.signatures and not s.refusals:
        print("no signing records" + (" since then" if since is not None else ""))
    return 0
