"""A tamper-evident audit log: one hash-chained JSON line per signature and per refusal.

When a signer host is compromised, the first question is how many signatures the intruder obtained. Every
record carries the SHA-256 of the previous record, so ``pykms audit verify`` finds the exact record where a file
was edited, reordered or cut, and ``--state`` checks that the last signature in the log is the one the
double-sign state holds (which catches records removed from the end).

Record (one JSON object per line, keys sorted, no spaces)::

    {"block_id": hex, "chain_id": str, "height": int, "kind": "prevote"|..., "outcome": "signed"|"reused"|
     "refused"|"error", "prev": hex64, "reason": str, "round": int, "seq": int, "sign_bytes_sha256": hex64,
     "signature": base64|null, "step": int, "time": RFC 3339 UTC with ns, "hash": hex64}

``hash`` = SHA-256 of the line's JSON without ``hash``. The first record of a file is a ``kind = "open"``
record whose ``prev`` is the last hash of the previous file (rotation keeps the chain) or 64 zeros.

Durability: each record is written (``write(2)``) before the reply leaves, so it survives the process being
killed. ``sync = "always"`` also fdatasyncs each record (one more flush per signature); the default
``"batch"`` flushes from a background thread every 100 ms, so a power loss can lose at most the last 100 ms of
audit records — never double-sign state, which has its own flush.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pykms.errors import KmsError, StateError
from pykms.handler import SignEvent

__all__ = ["AuditLog", "AuditSummary", "VerifyReport", "summarize", "verify_files"]

ZERO_HASH = "0" * 64
BATCH_FLUSH_S = 0.1


class AuditError(StateError):
    """The audit log cannot be written; like the state, nothing is signed without its record."""


def _hash(record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


def _now() -> str:
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of a file (reads backwards from the end)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        chunk = min(size, 64 * 1024)
        f.seek(size - chunk)
        tail = f.read(chunk)
    lines = [line for line in tail.split(b"\n") if line.strip()]
    if not lines:
        return None
    try:
        record: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        raise AuditError(f"{path}: the last audit record is damaged; run `pykms audit verify {path}`") from None
    return record


class AuditLog:
    """The append-only audit file of one chain."""

    def __init__(
        self,
        path: Path,
        chain_id: str,
        *,
        sync: Literal["always", "batch"] = "batch",
        rotate_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.chain_id = chain_id
        self.sync = sync
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._fd = -1
        self._open(previous=None)
        self._flusher: threading.Thread | None = None
        if sync == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, name=f"audit-{chain_id}", daemon=True)
            self._flusher.start()

    def _open(self, previous: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        exists = self.path.exists() and self.path.stat().st_size > 0
        last = _last_record(self.path) if exists else None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if last is not None:
            self._prev = str(last["hash"])
            self._seq = int(last["seq"]) + 1
            return
        self._prev = ZERO_HASH if previous is None else previous
        self._seq = 0
        self._append({"kind": "open", "chain_id": self.chain_id, "previous_file": previous is not None})
        os.fsync(self._fd)

    def _append(self, fields: dict[str, Any]) -> None:
        record = dict(fields, seq=self._seq, time=_now(), prev=self._prev)
        record["hash"] = _hash(record)
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write")
            if self.sync == "always":
                os.fdatasync(self._fd)
            else:
                self._dirty = True
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot write the audit record ({exc.strerror})") from None
        self._prev = record["hash"]
        self._seq += 1

    def record(self, event: SignEvent) -> None:
        """A durable observer: called under the chain lock before the reply leaves."""
        with self._lock:
            self._append(
                {
                    "kind": event.kind,
                    "chain_id": event.chain_id,
                    "height": event.height,
                    "round": event.round,
                    "step": event.step,
                    "block_id": event.block_id.hex(),
                    "sign_bytes_sha256": hashlib.sha256(event.sign_bytes).hexdigest(),
                    "signature": base64.b64encode(event.signature).decode() if event.signature else None,
                    "outcome": event.outcome,
                    "reason": event.reason,
                }
            )
            if self.rotate_bytes is not None and os.fstat(self._fd).st_size >= self.rotate_bytes:
                self._rotate()

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        rotated = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{self._seq}")
        os.rename(self.path, rotated)
        self._open(previous=self._prev)

    def _flush_loop(self) -> None:
        while not self._stop.wait(BATCH_FLUSH_S):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._dirty and self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                self._dirty = False

    def close(self) -> None:
        self._stop.set()
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


@dataclass
class VerifyReport:
    ok: bool
    records: int
    problem: str = ""
    file: str = ""
    line: int = 0
    last_hash: str = ""
    last_signature: str | None = None


def verify_files(paths: Iterable[Path], *, state_signature: bytes | None = None) -> VerifyReport:
    """Check the hash chain through ``paths`` (oldest first); report the first record where it breaks."""
    prev: str | None = None
    count = 0
    last_sig: str | None = None
    last_hash = ""
    for path in paths:
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            return VerifyReport(False, count, "the last record is truncated (no newline)", str(path), len(lines))
        for number, raw in enumerate(lines, start=1):
            where = (str(path), number)
            try:
                record = json.loads(raw)
                claimed = record.pop("hash")
            except (ValueError, KeyError, AttributeError):
                return VerifyReport(False, count, "not a valid record (damaged or truncated)", *where)
            if _hash(record) != claimed:
                return VerifyReport(False, count, "hash mismatch: the record was edited", *where)
            if number == 1:
                if record.get("kind") != "open":
                    return VerifyReport(False, count, "the file does not start with an open record", *where)
                # The first file given may start mid-history (rotated files); later ones must continue it.
                if prev is not None and record.get("prev") != prev:
                    return VerifyReport(False, count, "the file does not continue the previous file's chain", *where)
            elif record.get("prev") != prev:
                return VerifyReport(
                    False, count, "chain broken: a record before this one was removed, inserted or reordered", *where
                )
            if number > 1 and int(record.get("seq", -1)) != count_in_file(lines, number):
                return VerifyReport(False, count, "sequence number out of order", *where)
            prev = claimed
            last_hash = claimed
            count += 1
            if record.get("outcome") in ("signed", "reused") and record.get("signature"):
                last_sig = record["signature"]
    report = VerifyReport(True, count, last_hash=last_hash, last_signature=last_sig)
    if state_signature is not None:
        expected = base64.b64encode(state_signature).decode()
        if last_sig != expected:
            report.ok = False
            report.problem = (
                "the last signature in the log is not the one in the double-sign state: records were removed "
                "from the end, or the log is not this chain's"
            )
    return report


def count_in_file(lines: list[bytes], number: int) -> int:
    """The seq the record at 1-based ``number`` must carry: the open record's seq plus its offset."""
    first = json.loads(lines[0])
    return int(first["seq"]) + number - 1


@dataclass
class AuditSummary:
    signatures: dict[tuple[str, str], int] = field(default_factory=dict)
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    heights: dict[str, tuple[int, int]] = field(default_factory=dict)


def summarize(paths: Iterable[Path], *, since: str | None = None) -> AuditSummary:
    """Signatures by chain and type, refusals by chain and reason, signed height range per chain."""
    out = AuditSummary()
    for path in paths:
        for raw in path.read_bytes().splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                raise KmsError(f"{path}: damaged record; run `pykms audit verify` first") from None
            if record.get("kind") == "open" or (since is not None and record["time"] < since):
                continue
            chain = record["chain_id"]
            if record["outcome"] in ("signed", "reused"):
                key = (chain, record["kind"])
                out.signatures[key] = out.signatures.get(key, 0) + 1
                low, high = out.heights.get(chain, (record["height"], record["height"]))
                out.heights[chain] = (min(low, record["height"]), max(high, record["height"]))
            else:
                key = (chain, record["reason"])
                out.refusals[key] = out.refusals.get(key, 0) + 1
    return out
