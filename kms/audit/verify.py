"""Reading audit logs: file order, hash-chain verification against the double-sign state, and summaries."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykms.audit.record import _ROTATED, ZERO_HASH, AuditCorrupt, _hash, _split_tail, parse_time


def order_files(paths: Sequence[Path]) -> list[Path]:
    """Chain order: for each log, its rotated files (``NAME.<12-digit seq>``) by seq, then ``NAME`` itself.

    So ``pykms audit verify audit.log*`` works whatever order the shell expands the pattern in. Other names keep
    the order given (the sort is stable), and logs keep the order in which they first appear.
    """

    def base_and_seq(path: Path) -> tuple[str, float]:
        match = _ROTATED.match(path.name)
        return (str(path.with_name(match["base"])), int(match["seq"])) if match else (str(path), float("inf"))

    first_seen: dict[str, int] = {}
    for path in paths:
        first_seen.setdefault(base_and_seq(path)[0], len(first_seen))
    return sorted(paths, key=lambda path: (first_seen[base_and_seq(path)[0]], base_and_seq(path)[1]))


@dataclass
class VerifyReport:
    """The outcome of ``verify_files``: where the chain first breaks, or its extent when it holds."""

    ok: bool
    records: int
    problem: str = ""
    file: str = ""
    line: int = 0
    last_hash: str = ""
    last_signature: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AuditCorrupt(f"{path}: no such audit file") from None
    except OSError as exc:
        raise AuditCorrupt(f"{path}: cannot read the audit file ({exc.strerror or exc})") from None


def _first_record(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def verify_files(paths: Sequence[Path], *, state_signature: bytes | None = None) -> VerifyReport:
    """Check the hash chain through ``paths`` (oldest first) and report the first record where it breaks.

    The first file may start mid-history (older files archived away); each later one must continue the one
    before it. ``state_signature`` (the chain's double-sign state) must be the last signature in the log.
    """
    prev: str | None = None
    seq: int | None = None
    chain_id: str | None = None
    count = 0
    last_sig: str | None = None  # the last signature released
    before_release: str | None = None
    withheld: list[str] = []  # signatures withheld since the last release (the state may hold one)
    previous_signing: dict[str, Any] | None = None
    first_seq: int | None = None
    contents = [_read(path) for path in paths]

    def broken(problem: str, path: Path, line: int) -> VerifyReport:
        return VerifyReport(False, count, problem, str(path), line, prev or "", last_sig, first_seq, seq)

    for index, (path, data) in enumerate(zip(paths, contents, strict=True)):
        lines, torn = _split_tail(data)
        if not lines and not torn:
            return broken("empty file: no open record", path, 1)
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise TypeError
                claimed = record.pop("hash")
                this_seq = record["seq"]
                if not isinstance(this_seq, int) or not isinstance(claimed, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return broken("not a valid record (damaged, truncated or an empty line)", path, number)
            if _hash(record) != claimed:
                return broken("hash mismatch: the record was edited", path, number)
            if chain_id is not None and record.get("chain_id") != chain_id:
                return broken(f"chain id {record.get('chain_id')!r} in a log of {chain_id!r}", path, number)
            if number == 1:
                if record.get("kind") != "open":
                    return broken("the file does not start with an open record (its beginning is missing)", path, 1)
                if prev is None and this_seq == 0 and record.get("prev") != ZERO_HASH:
                    return broken("the first record of the chain does not start from the zero hash", path, 1)
                if prev is not None and record.get("prev") != prev:
                    return broken(
                        "the file does not continue the previous file's chain (a file is missing or out of order)",
                        path,
                        1,
                    )
            else:
                if record.get("kind") == "open":
                    return broken("an open record in the middle of a file", path, number)
                if record.get("prev") != prev:
                    return broken(
                        "chain broken: a record before this one was removed, inserted or reordered", path, number
                    )
            if seq is not None and this_seq != seq + 1:
                return broken(f"sequence number {this_seq} where {seq + 1} was due", path, number)
            prev, seq = claimed, this_seq
            chain_id = record.get("chain_id")
            first_seq = this_seq if first_seq is None else first_seq
            count += 1
            if record.get("kind") != "open":
                if record.get("outcome") in ("signed", "reused") and record.get("signature"):
                    before_release, last_sig, withheld = last_sig, record["signature"], []
                elif _withdraws(record, previous_signing):
                    withheld.append(str(last_sig))
                    last_sig = before_release
                previous_signing = record
        if torn:
            following = _first_record(contents[index + 1]) if index + 1 < len(contents) else None
            if (
                following is None
                or following.get("torn_sha256") != hashlib.sha256(torn).hexdigest()
                or following.get("previous_file") != path.name
            ):
                return broken("the last record is truncated (a torn or cut write)", path, len(lines) + 1)
    report = VerifyReport(True, count, last_hash=prev or "", last_signature=last_sig, first_seq=first_seq, last_seq=seq)
    if state_signature is not None:
        expected = base64.b64encode(state_signature).decode()
        if last_sig != expected and expected not in withheld:
            report.ok = False
            report.problem = (
                "the last signature in the log is not the one in the double-sign state: records were removed from "
                "the end, the log is not this chain's, or pykms stopped between writing the state and the record "
                "(that signature was then never released)"
            )
            report.file = str(paths[-1]) if paths else ""
    return report


@dataclass
class AuditSummary:
    """Counts over signing records (open records excluded), keyed by (chain id, type) or (chain id, reason)."""

    #: Signatures released (fresh + reused): what the nodes received.
    signatures: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Of those, the stored signature returned again for a repeated request (not a new signature).
    reused: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Signatures recorded but withheld from the node (the state or the extension failed after the record).
    withheld: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Lowest and highest height signed, per (chain id, type).
    heights: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    first_time: str = ""
    last_time: str = ""

    def chain_heights(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for (chain, _kind), (low, high) in self.heights.items():
            old = out.get(chain, (low, high))
            out[chain] = (min(old[0], low), max(old[1], high))
        return out


def _withdraws(record: dict[str, Any], previous: dict[str, Any] | None) -> bool:
    """An error/refusal right after a signed/reused record of the same request: that signature was withheld.

    It happens when the state could not be saved after the record was begun, or the extension signature failed.
    """
    return (
        previous is not None
        and record.get("outcome") in ("error", "refused")
        and previous.get("outcome") in ("signed", "reused")
        and all(record.get(k) == previous.get(k) for k in ("height", "round", "step", "sign_bytes_sha256"))
    )


def summarize(paths: Iterable[Path], *, since: int | None = None) -> AuditSummary:
    """Signatures by chain and type, refusals by chain and reason, height ranges; ``since`` in ns (parse_time).

    A signature withheld (a signed record followed by an error for the same request) is not counted as released
    but under ``withheld``. A torn last line (a crash artifact) is skipped; other damage is an AuditCorrupt.
    """
    out = AuditSummary()
    held: dict[str, Any] | None = None  # a released signature not yet counted: the next record may withdraw it

    def release(record: dict[str, Any]) -> None:
        key = (str(record["chain_id"]), str(record["kind"]))
        out.signatures[key] += 1
        if record.get("outcome") == "reused":
            out.reused[key] += 1
        height = int(record["height"])
        low, high = out.heights.get(key, (height, height))
        out.heights[key] = (min(low, height), max(high, height))

    for path in paths:
        lines, _torn = _split_tail(_read(path))
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
                stamp = record["time"]
                chain = record["chain_id"]
                kind = record["kind"]
            except (ValueError, KeyError, TypeError):
                raise AuditCorrupt(f"{path}: record {number} is damaged; run `pykms audit verify` first") from None
            if kind == "open":
                continue
            withdrawn = _withdraws(record, held)
            if held is not None and not withdrawn:
                release(held)
            held = None
            try:
                if since is not None and parse_time(stamp) < since:
                    continue
            except ValueError:
                raise AuditCorrupt(f"bad record time {stamp!r}; run `pykms audit verify`") from None
            out.first_time = out.first_time or stamp
            out.last_time = stamp
            outcome = record.get("outcome")
            if withdrawn:
                out.withheld[(chain, kind)] += 1
            if outcome in ("signed", "reused"):
                held = record
            else:
                out.refusals[(chain, str(record.get("reason") or outcome))] += 1
    if held is not None:
        release(held)
    return out
