"""``pykms audit verify|summary``: check the hash chain of audit logs and count what was signed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pykms.errors import SigningRefused

__all__ = ["register"]


class AuditBroken(SigningRefused):
    """The audit log failed verification."""


def register(sub: Any) -> None:
    group = sub.add_parser("audit", help="tamper-evident audit logs")
    cmds = group.add_subparsers(dest="audit_cmd", metavar="CMD")
    p = cmds.add_parser("verify", help="check the hash chain (files oldest first); exit 8 where it breaks")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--state", type=Path, help="the chain's state file: the log must end with its signature")
    p.set_defaults(func=cmd_verify)
    p = cmds.add_parser("summary", help="signatures by chain and type, refusals by reason, height ranges")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--since", help="only records at or after this RFC 3339 UTC time, e.g. 2026-11-22T18:00:00Z")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)


def cmd_verify(args: argparse.Namespace) -> int:
    from pykms.audit import verify_files

    state_sig = None
    if args.state is not None:
        from pykms.guard.store import read_state_file

        state_sig = read_state_file(args.state)[1].signature
    report = verify_files(args.files, state_signature=state_sig)
    if not report.ok:
        where = f"{report.file} record {report.line}: " if report.file else ""
        raise AuditBroken(f"audit log broken after {report.records} good records: {where}{report.problem}")
    print(f"ok: {report.records} records, chain intact; last hash {report.last_hash}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from pykms.audit import summarize

    since = args.since.replace("+00:00", "Z") if args.since else None
    s = summarize(args.files, since=since)
    if args.json:
        doc = {
            "signatures": [{"chain_id": c, "type": k, "count": n} for (c, k), n in sorted(s.signatures.items())],
            "refusals": [{"chain_id": c, "reason": r, "count": n} for (c, r), n in sorted(s.refusals.items())],
            "heights": {c: {"min": lo, "max": hi} for c, (lo, hi) in sorted(s.heights.items())},
        }
        print(json.dumps(doc, indent=2))
        return 0
    for (chain, kind), n in sorted(s.signatures.items()):
        print(f"signed   {chain:<24} {kind:<10} {n}")
    for (chain, reason), n in sorted(s.refusals.items()):
        print(f"refused  {chain:<24} {reason:<20} {n}")
    for chain, (lo, hi) in sorted(s.heights.items()):
        print(f"heights  {chain:<24} {lo}..{hi}")
    return 0
