"""The audit log writer: appends hash-chained records with the chosen durability, rotates, trims on close."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pykms.audit.record import ZERO_HASH, AuditError, _canonical, _format_time, _split_tail
from pykms.handler import SignEvent
from pykms.keyfiles import fsync_dir

SyncMode = Literal["always", "batch"]
#: "batch": written before the reply, flushed within 100 ms; "always" costs one more device flush per signature
#: (docs/observability.md has the figures behind this default).
DEFAULT_SYNC: SyncMode = "batch"
#: Flush period of sync = "batch": bounds what a power loss can take from the log.
BATCH_FLUSH_S = 0.1
#: Preallocation step of sync = "always": 1 MiB is ~2000 records, so the zero-filling write (a few ms, once)
#: is rare, and a closed log wastes nothing (close trims the padding).
PREALLOC_BYTES = 1 << 20
#: Enough of the tail to hold the last record: records are ~500 bytes (a 64-byte signature in base64 plus
#: hashes); 64 KiB leaves room for long chain ids and reasons.
_TAIL_READ = 64 * 1024


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


class AuditLog:
    """The append-only audit file of one chain. ``record`` is thread-safe; the handler calls it under its lock."""

    def __init__(
        self, path: Path, chain_id: str, *, sync: SyncMode = DEFAULT_SYNC, rotate_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self.chain_id = chain_id
        self.sync: SyncMode = sync
        self.rotate_bytes = rotate_bytes
        #: Called with the seconds each record took to write (and flush): the metrics' persistence latency.
        self.on_write: Callable[[float], None] | None = None
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
            fsync_dir(self.path.parent)
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
        fsync_dir(self.path.parent)

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

    def record(self, event: SignEvent) -> None:
        """A durable observer: called under the chain lock once the state is durable and before the reply leaves.
        Raises AuditError (the reply is then withheld)."""
        started = time.perf_counter()
        fields = {
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
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: the audit log is closed")
            try:
                if self.rotate_bytes is not None and self._tail >= self.rotate_bytes:
                    self._rotate()
                self._append(fields, sync=True)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot write the audit record ({exc.strerror or exc})") from None
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started)

    def _rotate(self) -> None:
        """Close this file (trimmed, synced) under its rotated name; the new file's open record continues it."""
        self._trim_and_sync()
        self._close_fd()
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
