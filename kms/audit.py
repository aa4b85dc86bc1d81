"""A tamper-evident audit log: one hash-chained JSON line per signature and per refusal, per chain.

When a signer host is compromised, the first question is how many signatures the intruder obtained. Every
record carries the SHA-256 of the previous record, so ``pykms audit verify`` finds the exact record where a file
was edited, reordered or cut, and ``--state`` checks that the last signature in the log is the one the
double-sign state holds (which catches records removed from the end: a hash chain alone cannot, since any prefix
of a chain is a valid chain).

Records: one JSON object per line, UTF-8, no spaces, keys sorted with ``hash`` last. Every record has

==================  ==========================================================================================
``seq``             0 for the very first record of the chain, then +1 per record, continuing across rotated files
``time``            when the record was written, RFC 3339 UTC with nanoseconds (``2026-11-22T19:00:00.123456789Z``)
``prev``            ``hash`` of the record before it in the chain (64 zeros for seq 0), across files too
``kind``            ``open`` (first record of every file), or the request type: ``proposal``, ``prevote``,
                    ``precommit``, or ``vote`` (a vote refused before its type was known)
``chain_id``        the chain this log belongs to (one log, one chain)
``hash``            SHA-256 (hex) of the record's canonical JSON without ``hash``
==================  ==========================================================================================

A signing record (any ``kind`` but ``open``) adds ``height``, ``round``, ``step`` (1 proposal, 2 prevote,
3 precommit, 0 unknown), ``block_id`` (hex of the block hash, "" for nil), ``sign_bytes_sha256`` (hex; of ""
when refused before sign bytes were built), ``signature`` (base64 of what left pykms, null when refused),
``outcome`` (``signed``: a fresh signature; ``reused``: the stored signature returned again for a repeated
request; ``refused``: the guard or a check said no; ``error``: the state could not be made durable or the
provider failed, nothing was released) and ``reason`` (the error class, "" when signed).

An ``open`` record adds ``previous_file`` (the name the previous file was rotated to, or null) and, when the
previous file ended in a torn record (a crash in the middle of a write), ``torn_sha256`` and ``torn_bytes`` of
that fragment, so ``verify`` accepts exactly that damage and no other.

Durability. Every record is written (``pwrite`` into the file, i.e. handed to the kernel) before the reply
leaves, so it survives pykms being killed at any instant. How far it must reach before the reply is
``sync``:

- ``"batch"`` (the default): a thread flushes (``fdatasync``) every 100 ms. A power loss can lose the last 100 ms of
  records, never double-sign state (which has its own flush before the reply); ``verify --state`` then shows the
  log ends short of the state. Adds ~0.05 ms per signature (JSON, hash, pwrite).
- ``"always"``: the record is on stable storage before the reply. The file is preallocated with zeros
  (``PREALLOC_BYTES`` at a time) and written in place, so ``fdatasync`` has no metadata to commit. One more device
  flush per signature: ~0.14 ms on the disk measured, over the 10 % budget there (docs/observability.md has the
  figures), hence not the default.

Order. A record that carries a signature is written only once the state covering that signature is durable (the
handler calls ``record`` after the guard's save): a crash or a failed state write can never leave in the log a
valid signature that was not released, which would be evidence of a double sign once the same height/round/step
is signed again after a restart. Logs written by older versions may hold a ``signed`` record followed by an
``error`` record for the same request (the record was begun before the state's save, which then failed); readers
count that pair as withheld.

Readers ignore the zero padding after the last record; ``close``
trims it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pykms.errors import StateCorrupt, StateError
from pykms.handler import SignEvent

__all__ = [
    "DEFAULT_SYNC",
    "AuditCorrupt",
    "AuditError",
    "AuditLog",
    "AuditSummary",
    "SyncMode",
    "VerifyReport",
    "order_files",
    "parse_time",
    "summarize",
    "verify_files",
]

SyncMode = Literal["always", "batch"]
#: "batch": written before the reply, flushed within 100 ms; "always" costs one more device flush per signature
#: (docs/observability.md has the figures behind this default).
DEFAULT_SYNC: SyncMode = "batch"
ZERO_HASH = "0" * 64
#: Flush period of sync = "batch": bounds what a power loss can take from the log.
BATCH_FLUSH_S = 0.1
#: Preallocation step of sync = "always": 1 MiB is ~2000 records, so the zero-filling write (a few ms, once)
#: is rare, and a closed log wastes nothing (close trims the padding).
PREALLOC_BYTES = 1 << 20
#: Enough of the tail to hold the last record: records are ~500 bytes (a 64-byte signature in base64 plus
#: hashes); 64 KiB leaves room for long chain ids and reasons.
_TAIL_READ = 64 * 1024
_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<seq>\d{12})$")


class AuditError(StateError):
    """The audit log cannot be written; like the state, nothing is released without its record."""


class AuditCorrupt(StateCorrupt):
    """An audit file cannot be read as records (verify it to find where)."""


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(record)).hexdigest()


_stamp_cache: tuple[int, str] = (-1, "")


def _format_time(ns: int) -> str:
    global _stamp_cache
    seconds = ns // 1_000_000_000
    cached_seconds, stamp = _stamp_cache
    if seconds != cached_seconds:  # strftime once per second, not per record
        stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _stamp_cache = (seconds, stamp)
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def parse_time(text: str) -> int:
    """RFC 3339 (``Z`` or an offset, any fraction) or a plain date, to ns since the epoch; naive means UTC."""
    value = text.strip()
    fraction_ns = 0
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", value)
    if match:  # datetime keeps microseconds only: take the fraction ourselves
        digits = match.group(2)[:9]
        fraction_ns = int(digits.ljust(9, "0"))
        value = match.group(1) + match.group(3)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r} (e.g. 2026-11-22T18:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + fraction_ns


def _split_tail(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines, and the fragment after the last newline (b"" when the file ends cleanly).

    Zero bytes at the end are preallocation padding, not content.
    """
    data = data.rstrip(b"\0")
    lines = data.split(b"\n")
    torn = lines.pop()
    return lines, torn


def _data_end(f: Any) -> int:
    """Offset just past the last non-zero byte of an open binary file (0 when it holds only zeros)."""
    end: int = f.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - _TAIL_READ)
        f.seek(start)
        chunk = f.read(end - start).rstrip(b"\0")
        if chunk:
            end = start + len(chunk)
            f.seek(0)
            return end
        end = start
    f.seek(0)
    return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """The append-only audit file of one chain. ``record`` is thread-safe; the handler calls it under its lock."""

    def __init__(
        self,
        path: Path,
        chain_id: str,
        *,
        sync: SyncMode = DEFAULT_SYNC,
        rotate_bytes: int | None = None,
        on_write: Callable[[float], None] | None = None,
    ) -> None:
        if sync not in ("always", "batch"):
            raise ValueError(f"sync must be 'always' or 'batch', not {sync!r}")
        self.path = Path(path)
        self.chain_id = chain_id
        self.sync: SyncMode = sync
        self.rotate_bytes = rotate_bytes
        #: Called with the seconds each record took to write (and flush): the metrics' persistence latency.
        self.on_write = on_write
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._fd = -1
        self._tail = 0  # where the next record goes
        self._allocated = 0  # bytes of the file (records + zero padding)
        self._prev = ZERO_HASH
        self._seq = 0
        self._file_first_seq = 0
        try:
            self._open_existing_or_new()
        except OSError as exc:
            self._close_fd()
            raise AuditError(f"{self.path}: cannot open the audit log ({exc.strerror or exc})") from None
        self._flusher: threading.Thread | None = None
        if sync == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, name=f"audit-{chain_id}", daemon=True)
            self._flusher.start()

    # Opening -----------------------------------------------------------------------------------------------

    def _open_existing_or_new(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with open(self.path, "rb") as f:
                end = _data_end(f)
                head = f.readline(_TAIL_READ) if end else b""
                f.seek(max(0, end - _TAIL_READ))
                tail = f.read(end - f.tell())
        except FileNotFoundError:
            end = -1
        if end <= 0:
            # Absent, empty, or only padding (a crash between preallocating and the open record): nothing lost.
            if end == 0:
                os.unlink(self.path)
            self._start_file(previous_file=None, torn=b"")
            return
        lines, torn = _split_tail(tail)
        lines = [line for line in lines if line]
        if not lines:
            raise AuditError(f"{self.path}: no complete audit record; run `pykms audit verify {self.path}`")
        last = self._parse(lines[-1])
        if last.get("chain_id") != self.chain_id:
            raise AuditError(
                f"{self.path}: this audit log belongs to chain {last.get('chain_id')!r}, not {self.chain_id!r}"
            )
        self._prev = str(last["hash"])
        self._seq = int(last["seq"]) + 1
        self._file_first_seq = int(self._parse(head).get("seq", 0))
        if torn:
            # A crash in the middle of a write left a fragment (never replied to: the reply follows the write).
            # Keep the damaged file as evidence and continue the chain in a new file that names the fragment.
            rotated = self._rotated_name()
            os.rename(self.path, rotated)
            _fsync_dir(self.path.parent)
            self._start_file(previous_file=rotated.name, torn=torn)
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._allocated = os.fstat(self._fd).st_size
        self._tail = end

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or "hash" not in record or "seq" not in record:
                raise ValueError
        except ValueError:
            raise AuditError(
                f"{self.path}: the last audit record is damaged; run `pykms audit verify {self.path}`"
            ) from None
        return record

    def _start_file(self, *, previous_file: str | None, torn: bytes) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._tail = self._allocated = 0
        self._file_first_seq = self._seq
        fields: dict[str, Any] = {"kind": "open", "chain_id": self.chain_id, "previous_file": previous_file}
        if torn:
            fields["torn_sha256"] = hashlib.sha256(torn).hexdigest()
            fields["torn_bytes"] = len(torn)
        self._append(fields, sync=False)
        os.fsync(self._fd)
        _fsync_dir(self.path.parent)

    def _rotated_name(self) -> Path:
        """``NAME.<seq of the file's first record, 12 digits>``: names sort in chain order."""
        return self.path.with_name(f"{self.path.name}.{self._file_first_seq:012d}")

    # Writing -----------------------------------------------------------------------------------------------

    def _append(self, fields: dict[str, Any], *, sync: bool) -> None:
        record = dict(fields, seq=self._seq, time=_format_time(time.time_ns()), prev=self._prev)
        body = _canonical(record)
        digest = hashlib.sha256(body).hexdigest()
        # One encoding: the hashed body with "hash" appended last (readers parse JSON, so key order is free).
        line = body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
        if self.sync == "always" and self._tail + len(line) > self._allocated:
            self._preallocate(len(line))
        written = os.pwrite(self._fd, line, self._tail)
        if written != len(line):
            raise OSError(28, "short write (disk full?)")
        if sync:
            if self.sync == "always":
                os.fdatasync(self._fd)
            else:
                self._dirty = True
        self._tail += len(line)
        self._allocated = max(self._allocated, self._tail)
        self._prev = digest
        self._seq += 1

    def _preallocate(self, need: int) -> None:
        """Write real zeros (not fallocate: unwritten extents would need a metadata commit on first write)."""
        grow = max(PREALLOC_BYTES, need)
        os.pwrite(self._fd, b"\0" * grow, self._allocated)
        os.fsync(self._fd)  # the new size and blocks, once per PREALLOC_BYTES
        self._allocated += grow

    @staticmethod
    def _fields(event: SignEvent) -> dict[str, Any]:
        return {
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

    def record(self, event: SignEvent) -> None:
        """A durable observer: called under the chain lock once the state is durable and before the reply leaves.
        Raises AuditError (the reply is then withheld)."""
        started = time.perf_counter()
        with self._lock:
            self._check_open()
            try:
                self._maybe_rotate()
                self._append(self._fields(event), sync=True)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot write the audit record ({exc.strerror or exc})") from None
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started)

    def _check_open(self) -> None:
        if self._fd < 0:
            raise AuditError(f"{self.path}: the audit log is closed")

    def _maybe_rotate(self) -> None:
        if self.rotate_bytes is not None and self._tail >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """Close this file (trimmed, synced) under its rotated name; the new file's open record continues it."""
        self._trim_and_sync()
        os.close(self._fd)
        self._fd = -1
        rotated = self._rotated_name()
        os.rename(self.path, rotated)
        self._start_file(previous_file=rotated.name, torn=b"")  # fsyncs the directory (rename and create)

    def _trim_and_sync(self) -> None:
        if self._allocated > self._tail:
            os.ftruncate(self._fd, self._tail)
            self._allocated = self._tail
        os.fsync(self._fd)

    def _flush_loop(self) -> None:
        while not self._stop.wait(BATCH_FLUSH_S):
            self.flush()

    def flush(self) -> None:
        """Make every written record durable (sync = "batch" calls this every 100 ms)."""
        # The flush runs outside the lock, so a signature in flight never waits behind it; a rotation that
        # closes this fd meanwhile has synced the file itself (a reused fd number only flushes another file).
        with self._lock:
            fd = self._fd
            if not self._dirty or fd < 0:
                return
            self._dirty = False
        try:
            os.fdatasync(fd)
        except OSError:
            with self._lock:
                self._dirty = True  # retried at the next tick; the next record's write reports a broken disk

    def writable(self) -> str:
        """ "" when the log can take records, else why not (for /health)."""
        if self._fd < 0:
            return "audit log closed"
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            return f"audit log directory {self.path.parent} is not writable"
        return ""

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):  # the padding stays; readers ignore it
                    self._trim_and_sync()
                self._close_fd()


# Reading ---------------------------------------------------------------------------------------------------


def order_files(paths: Sequence[Path]) -> list[Path]:
    """Chain order: for each log, its rotated files (``NAME.<12-digit seq>``) by seq, then ``NAME`` itself.

    So ``pykms audit verify audit.log*`` works whatever order the shell expands the pattern in. Other names keep
    the order given.
    """

    def key(item: tuple[int, Path]) -> tuple[str, float, int]:
        index, path = item
        match = _ROTATED.match(path.name)
        if match:
            return (str(path.with_name(match["base"])), int(match["seq"]), index)
        return (str(path), float("inf"), index)

    first_seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        match = _ROTATED.match(path.name)
        base = str(path.with_name(match["base"])) if match else str(path)
        first_seen.setdefault(base, index)
    items = sorted(enumerate(paths), key=lambda item: (first_seen[key(item)[0]], key(item)[1], key(item)[2]))
    return [path for _, path in items]


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
            report.line = 0
    return report


@dataclass
class AuditSummary:
    """Counts over signing records (open records excluded), keyed by (chain id, type) or (chain id, reason)."""

    #: Signatures released (fresh + reused): what the nodes received.
    signatures: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Of those, the stored signature returned again for a repeated request (not a new signature).
    reused: dict[tuple[str, str], int] = field(default_factory=dict)
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Signatures recorded but withheld from the node (the state or the extension failed after the record).
    withheld: dict[tuple[str, str], int] = field(default_factory=dict)
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


def _record_ns(stamp: str) -> int:
    try:
        return parse_time(stamp)
    except ValueError:
        raise AuditCorrupt(f"bad record time {stamp!r}; run `pykms audit verify`") from None


def summarize(paths: Iterable[Path], *, since: int | None = None) -> AuditSummary:
    """Signatures by chain and type, refusals by chain and reason, height ranges; ``since`` in ns (parse_time).

    A signature withheld (a signed record followed by an error for the same request) is not counted as released
    but under ``withheld``. A torn last line (a crash artifact) is skipped; other damage is an AuditCorrupt.
    """
    out = AuditSummary()
    held: dict[str, Any] | None = None  # a released signature not yet counted: the next record may withdraw it

    def release(record: dict[str, Any]) -> None:
        key = (str(record["chain_id"]), str(record["kind"]))
        out.signatures[key] = out.signatures.get(key, 0) + 1
        if record.get("outcome") == "reused":
            out.reused[key] = out.reused.get(key, 0) + 1
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
            if since is not None and _record_ns(stamp) < since:
                continue
            out.first_time = out.first_time or stamp
            out.last_time = stamp
            outcome = record.get("outcome")
            if withdrawn:
                key = (chain, kind)
                out.withheld[key] = out.withheld.get(key, 0) + 1
            if outcome in ("signed", "reused"):
                held = record
            else:
                key = (chain, str(record.get("reason") or outcome))
                out.refusals[key] = out.refusals.get(key, 0) + 1
    if held is not None:
        release(held)
    return out
