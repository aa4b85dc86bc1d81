"""Durable storage of one chain's ``SignState``: the CometBFT JSON file and the two-slot file (new states' default).

Contract of every store: ``save`` returns only once the new state is on stable storage, so the guard may release
the signature it covers; if ``save`` raises (``PersistError``) the previous durable state is intact and the
signature must be withheld. A missing file is ``StateMissing`` and an unreadable one ``StateCorrupt`` (fail
closed: never a silent restart from height 0). An exclusive ``flock`` on ``<state file>.lock`` is held while a
store is open, so two pykms processes cannot sign from one state (``StateLocked``). The lock lives in a separate
file because the JSON store replaces the state file by rename, which a lock on the file itself would not survive.

Stores are not thread-safe: the guard calls them under the chain's lock. Every OS call goes through a
``FileOps`` object so the power-loss test can fail any one of them (tests/test_store_powerloss.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import time
from pathlib import Path
from typing import Final, Self

from pykms.errors import PersistError, StateCorrupt, StateError, StateLocked, StateMissing
from pykms.guard.state import (
    INIT_FIX,
    MAX_JSON_STATE_SIZE,
    SLOTS_MAGIC,
    SignState,
    StateFormat,
    corrupt,
    detect_format,
    from_cometbft_json,
    parse_json_state,
    to_cometbft_json,
)

__all__ = [
    "FileOps",
    "JsonStateStore",
    "SlotStateStore",
    "StateStore",
    "create_state_file",
    "decode_slots_file",
    "open_state_store",
    "read_state_file",
    "resolve_store_format",
    "state_was_here",
]


class FileOps:
    """The OS calls the stores make, gathered so a test can fail any one of them. Default: the os module."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    read = staticmethod(os.read)
    pread = staticmethod(os.pread)
    write = staticmethod(os.write)
    pwrite = staticmethod(os.pwrite)
    fsync = staticmethod(os.fsync)
    # fdatasync is Linux-only in Python; fsync is the safe (slower) substitute elsewhere.
    fdatasync = staticmethod(getattr(os, "fdatasync", os.fsync))
    fchmod = staticmethod(os.fchmod)
    fstat = staticmethod(os.fstat)
    rename = staticmethod(os.rename)
    flock = staticmethod(fcntl.flock)


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def _write_all(ops: FileOps, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[ops.write(fd, bytes(view)) :]


def _pwrite_all(ops: FileOps, fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = ops.pwrite(fd, bytes(view), offset)
        view, offset = view[written:], offset + written


def _read_all(ops: FileOps, fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = ops.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class StateStore:
    """Where one chain's last signed state lives. Both file stores share the lock, the atomic whole-file replace
    and the open/close bookkeeping here; each format fills in the hooks at the end."""

    def __init__(
        self, path: Path | str, *, ops: FileOps | None = None, new: SignState | None = None, overwrite: bool = False
    ) -> None:
        self.path = Path(path)
        self._ops = ops or FileOps()
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self._fd: int | None = None
        #: Where ``create`` kept the file it replaced (None when there was none).
        self.kept: Path | None = None
        self._tmp = str(self.path.with_name(f".{self.path.name}.tmp"))
        try:
            self._acquire_lock()
            if new is not None:
                self._write_new(new, overwrite=overwrite)
            self._attach()
            self._mark_used()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, path: Path | str, state: SignState, *, ops: FileOps | None = None, overwrite: bool = False) -> Self:
        """Write a new state file holding ``state`` atomically, and return the store open on it.

        For ``pykms state init`` (``SignState.initial()``) and ``pykms state import`` (``overwrite=True`` replaces
        an existing file, under the lock, so a running pykms on it is refused with StateLocked first). A replaced
        file, readable or not, is first copied beside it (``kept``): a double-sign state is never lost.
        """
        return cls(path, ops=ops, new=state, overwrite=overwrite)

    def _write_new(self, state: SignState, *, overwrite: bool) -> None:
        if self._exists():
            if not overwrite:
                raise StateError(
                    f"{self.path}: a state file already exists; refusing to replace a double-sign state "
                    "(import over it explicitly if that is really what you want)"
                )
            self.kept = self._keep_copy()
        try:
            self._replace_file(self._encode_new_file(state))
        except OSError as exc:
            raise PersistError(f"{self.path}: could not create the state file ({_reason(exc)})") from None

    def _keep_copy(self) -> Path:
        """Copy the current file, byte for byte, to ``NAME.replaced-<UTC time>`` (never overwriting a copy)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        ops = self._ops
        try:
            fd = ops.open(str(self.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                data = _read_all(ops, fd, 1 << 30)
            finally:
                ops.close(fd)
            for attempt in range(1000):
                copy = self.path.with_name(f"{self.path.name}.replaced-{stamp}" + (f".{attempt}" if attempt else ""))
                try:
                    out = ops.open(
                        str(copy), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                    )
                except FileExistsError:
                    continue
                try:
                    _write_all(ops, out, data)
                    ops.fsync(out)
                finally:
                    ops.close(out)
                dir_fd = self._open_dir()
                try:
                    ops.fsync(dir_fd)
                finally:
                    ops.close(dir_fd)
                return copy
        except OSError as exc:
            raise PersistError(
                f"{self.path}: could not keep a copy of the state file before replacing it ({_reason(exc)}); "
                "nothing was changed"
            ) from None
        raise PersistError(f"{self.path}: too many kept copies named {self.path.name}.replaced-{stamp}*")

    # -- shared machinery --------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        lock_path = str(self.path) + ".lock"
        try:
            self._lock_fd = self._ops.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise StateMissing(f"{self.path}: directory {self.path.parent} does not exist; {INIT_FIX}") from None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the lock file {lock_path} ({_reason(exc)})") from None
        try:
            self._ops.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(
                f"{self.path}: the state is in use by another pykms process (lock {lock_path} is held); "
                "two signers must never share one double-sign state: stop the other one first"
            ) from None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot lock {lock_path} ({_reason(exc)})") from None

    def _mark_used(self) -> None:
        """Note in the lock file that a state was opened here (``state_was_here``), so that a state file deleted
        later is not mistaken for one that never existed. Best effort: written once, not flushed."""
        assert self._lock_fd is not None
        try:
            if self._ops.fstat(self._lock_fd).st_size == 0:
                self._ops.pwrite(self._lock_fd, USED_MARK, 0)
        except OSError:
            pass

    def _exists(self) -> bool:
        try:
            fd = self._ops.open(str(self.path), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the state file ({_reason(exc)})") from None
        self._ops.close(fd)
        return True

    def _open_dir(self) -> int:
        return self._ops.open(str(self.path.parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _replace_file(self, data: bytes) -> None:
        """Atomically replace the state file: temp file (0600) + fsync + rename + fsync of the directory.

        After a crash the name points at the old file or the complete new one: the data is synced before the
        rename can reach the disk, and the directory fsync makes the rename itself durable before we return.
        """
        ops = self._ops
        if self._dir_fd is None:
            self._dir_fd = self._open_dir()
        fd = ops.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            ops.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
            _write_all(ops, fd, data)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.rename(self._tmp, str(self.path))
        ops.fsync(self._dir_fd)

    def _read_file(self) -> bytes:
        ops = self._ops
        try:
            fd = ops.open(str(self.path), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateMissing(f"{self.path}: no state file; {INIT_FIX}") from None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the state file ({_reason(exc)})") from None
        try:
            return _read_all(ops, fd, MAX_JSON_STATE_SIZE)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read the state file ({_reason(exc)})") from None
        finally:
            ops.close(fd)

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StateError(f"{self.path}: the state store is closed")

    def close(self) -> None:
        """Close descriptors; closing the lock descriptor releases the flock. Idempotent."""
        for name in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    self._ops.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # -- per-format hooks --------------------------------------------------------------------------------------

    def load(self) -> SignState:
        """The durable state. Raises StateMissing, StateCorrupt, StateError."""
        raise NotImplementedError

    def save(self, state: SignState) -> None:
        """Make ``state`` durable; returns only once it is on stable storage. Raises PersistError."""
        raise NotImplementedError

    def _attach(self) -> None:
        raise NotImplementedError

    def _encode_new_file(self, state: SignState) -> bytes:
        raise NotImplementedError


class JsonStateStore(StateStore):
    """CometBFT's ``priv_validator_state.json``, replaced atomically on every save.

    One save = open temp + write + fsync + close + rename + fsync(directory): the same cost as CometBFT's FilePV
    (which, unlike us, skips the directory fsync), and the file stays interchangeable with a node's.
    """

    def _attach(self) -> None:
        if not self._exists():
            raise StateMissing(f"{self.path}: no state file; {INIT_FIX}")
        if self._dir_fd is None:
            self._dir_fd = self._open_dir()

    def _encode_new_file(self, state: SignState) -> bytes:
        return to_cometbft_json(state)

    def load(self) -> SignState:
        self._check_open()
        data = self._read_file()
        if data.startswith(SLOTS_MAGIC):
            raise StateCorrupt(
                f'{self.path}: this is a pykms slots file, not CometBFT JSON; set state_format = "slots" '
                "for this chain (or remove state_format: the file's own format is then used), "
                "or convert it with `pykms state import …`"
            )
        return from_cometbft_json(data, str(self.path))

    def save(self, state: SignState) -> None:
        self._check_open()
        try:
            self._replace_file(to_cometbft_json(state))
        except OSError as exc:
            raise PersistError(
                f"{self.path}: could not make the new state durable ({_reason(exc)}); the signature is withheld"
            ) from None


# ---- the two-slot store ----------------------------------------------------------------------------------------

#: One header block then two slots, each one filesystem block (4096 bytes, the page size and the sector size of
#: 4Kn disks) so a write to one slot never shares a page or a sector with the other.
BLOCK: Final = 4096
SLOTS_FILE_SIZE: Final = 3 * BLOCK
SLOTS_VERSION: Final = 1
_HEADER = struct.Struct("<8sHI")  # magic, version, block size
_SLOT_MAGIC: Final = b"pykmsSLT"
_SLOT_HEAD = struct.Struct("<8sHBxHQ")  # magic, version, slot index, pad, payload length, sequence
_PAYLOAD_HEAD = struct.Struct("<QIBHH")  # height, round, step, signature length, sign-bytes length
_DIGEST_SIZE: Final = 16  # SHA-256 truncated to 128 bits: detects torn/garbled slots, not an adversary
_MAX_PAYLOAD: Final = BLOCK - _SLOT_HEAD.size - _DIGEST_SIZE


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:_DIGEST_SIZE]


def _encode_header() -> bytes:
    head = _HEADER.pack(SLOTS_MAGIC, SLOTS_VERSION, BLOCK)
    return (head + _digest(head)).ljust(BLOCK, b"\0")


def _encode_slot(state: SignState, seq: int, index: int) -> bytes:
    payload = (
        _PAYLOAD_HEAD.pack(state.height, state.round, state.step, len(state.signature), len(state.sign_bytes))
        + state.signature
        + state.sign_bytes
    )
    if len(payload) > _MAX_PAYLOAD:
        raise PersistError(f"state too large for a slot ({len(payload)} > {_MAX_PAYLOAD} bytes)")
    head = _SLOT_HEAD.pack(_SLOT_MAGIC, SLOTS_VERSION, index, len(payload), seq)
    return (head + payload + _digest(head + payload)).ljust(BLOCK, b"\0")


def _decode_slot(block: bytes, index: int) -> tuple[int, SignState] | None:
    """(sequence, state) of a valid slot; None for a torn, blank or foreign one."""
    magic, version, slot_index, length, seq = _SLOT_HEAD.unpack_from(block)
    if magic != _SLOT_MAGIC or version != SLOTS_VERSION or slot_index != index or length > _MAX_PAYLOAD:
        return None
    end = _SLOT_HEAD.size + length
    if _digest(block[:end]) != block[end : end + _DIGEST_SIZE] or length < _PAYLOAD_HEAD.size:
        return None
    payload = block[_SLOT_HEAD.size : end]
    height, round_, step, sig_len, sb_len = _PAYLOAD_HEAD.unpack_from(payload)
    if _PAYLOAD_HEAD.size + sig_len + sb_len != length:
        return None
    sig = payload[_PAYLOAD_HEAD.size : _PAYLOAD_HEAD.size + sig_len]
    try:
        return seq, SignState(height, round_, step, sig, payload[_PAYLOAD_HEAD.size + sig_len :])
    except (ValueError, TypeError):
        return None


def decode_slots_file(data: bytes, source: str) -> tuple[int, SignState]:
    """(sequence, state) of the newest valid slot of a slots file's bytes. Pure."""
    if len(data) != SLOTS_FILE_SIZE:
        raise corrupt(source, f"slots file of {len(data)} bytes, expected {SLOTS_FILE_SIZE}")
    head = data[: _HEADER.size]
    magic, version, block = _HEADER.unpack(head)
    if magic != SLOTS_MAGIC or data[_HEADER.size : _HEADER.size + _DIGEST_SIZE] != _digest(head):
        raise corrupt(source, "slots file header is damaged")
    if version != SLOTS_VERSION or block != BLOCK:
        raise corrupt(source, f"slots file version {version} / block {block} not supported by this pykms")
    slots = [_decode_slot(data[BLOCK * (1 + i) : BLOCK * (2 + i)], i) for i in (0, 1)]
    valid = [s for s in slots if s is not None]
    if not valid:
        raise corrupt(source, "both slots fail their checksum")
    if len(valid) == 2 and valid[0][0] == valid[1][0] and valid[0][1] != valid[1][1]:
        raise corrupt(source, "both slots carry the same sequence number with different states")
    return max(valid, key=lambda s: s[0])


class SlotStateStore(StateStore):
    """The fast store: a preallocated file of two checksummed slots, written in place alternately.

    Layout: block 0 is a header (magic, version, block size, checksum) written once at creation; blocks 1 and 2
    are slots. A slot holds magic, version, its own index, payload length, a sequence number, the payload
    (height, round, step, signature, sign bytes) and a truncated SHA-256 over all of that. Save n writes
    sequence n into slot ``n % 2`` with one ``pwrite`` and one ``fdatasync``; load takes the valid slot with the
    highest sequence. Both slots invalid is StateCorrupt.

    Why one fdatasync is enough: the file is created whole (every block written with real bytes, not
    fallocated), fsynced, renamed into place and its directory fsynced, so its size and block map never change
    afterwards; fdatasync must flush the data and any metadata needed to read it back, and there is none
    left to flush (only mtime, which does not matter). A crash or power loss during a save can only damage the
    slot being written (its own block(s)); the other slot still holds the previous durable state, and the
    checksum tells a torn or half-written slot from a complete one. A slot is never overwritten while it holds
    the newest durable state: save n+1 goes to the other slot. Proven by tests/test_store_powerloss.py.
    """

    def _attach(self) -> None:
        ops = self._ops
        try:
            self._fd = ops.open(str(self.path), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateMissing(f"{self.path}: no state file; {INIT_FIX}") from None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the state file ({_reason(exc)})") from None
        self._seq = -1
        self.load()

    def _encode_new_file(self, state: SignState) -> bytes:
        # Both slots valid from the start (sequences 0 and 1), so the first save (sequence 2) overwrites slot 0.
        return _encode_header() + _encode_slot(state, 0, 0) + _encode_slot(state, 1, 1)

    def load(self) -> SignState:
        self._check_open()
        assert self._fd is not None
        try:
            data = self._ops.pread(self._fd, SLOTS_FILE_SIZE + 1, 0)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read the state file ({_reason(exc)})") from None
        if not data.startswith(SLOTS_MAGIC):
            try:
                fmt = detect_format(data, str(self.path))
            except StateCorrupt:
                fmt = None
            if fmt is not None:
                raise StateCorrupt(
                    f'{self.path}: this is a {fmt} JSON state file, not a slots file; set state_format = "json" '
                    "for this chain (or remove state_format: the file's own format is then used), "
                    "or convert it with `pykms state import …`"
                )
        seq, state = decode_slots_file(data, str(self.path))
        self._seq = seq
        return state

    def save(self, state: SignState) -> None:
        self._check_open()
        assert self._fd is not None
        seq = self._seq + 1
        block = _encode_slot(state, seq, seq % 2)
        try:
            _pwrite_all(self._ops, self._fd, block, BLOCK * (1 + seq % 2))
            self._ops.fdatasync(self._fd)
        except OSError as exc:
            # Sequence not advanced: the next save rewrites the same (non-current) slot. The current slot,
            # holding the last durable state, was not touched.
            raise PersistError(
                f"{self.path}: could not make the new state durable ({_reason(exc)}); the signature is withheld"
            ) from None
        self._seq = seq


def resolve_store_format(path: Path | str, fmt: str) -> str:
    """``auto`` made concrete: an existing file keeps its own format (slots if it starts with the slots magic,
    else JSON, CometBFT's or tmkms's), a file that does not exist yet is made as slots (one flush per signature).
    ``json`` and ``slots`` are returned as given: the store then refuses a file of the other format."""
    if fmt not in ("auto", "json", "slots"):
        raise StateError(f'{path}: unknown state format {fmt!r} (expected "auto", "json" or "slots")')
    if fmt != "auto":
        return fmt
    try:
        with open(path, "rb") as f:
            head = f.read(len(SLOTS_MAGIC))
    except FileNotFoundError:
        return "slots"
    except OSError as exc:
        raise StateError(f"{path}: cannot read the state file ({_reason(exc)})") from None
    return "slots" if head == SLOTS_MAGIC else "json"


def _store_class(path: Path | str, fmt: str) -> type[StateStore]:
    return SlotStateStore if resolve_store_format(path, fmt) == "slots" else JsonStateStore


def open_state_store(path: Path | str, fmt: str = "auto") -> StateStore:
    """Open the state at ``path`` in format ``auto``, ``json`` or ``slots`` (see ``resolve_store_format``)."""
    return _store_class(path, fmt)(path)


def create_state_file(path: Path | str, state: SignState, *, fmt: str = "json", overwrite: bool = False) -> Path | None:
    """Create (or, with ``overwrite``, atomically replace) a state file in format ``auto``, ``json`` or ``slots``
    (``auto``: a replaced file keeps its format, a new one is slots); returns where the replaced file was kept
    (None when there was none).

    Takes the file's lock, so it refuses (StateLocked) while a running pykms holds the state. With ``overwrite``
    it also replaces a corrupt file, which opening a store on it would refuse.
    """
    store = _store_class(path, fmt).create(path, state, overwrite=overwrite)
    store.close()
    return store.kept


#: What ``_mark_used`` writes into a state's lock file.
USED_MARK: Final = b"pykms state\n"


def state_was_here(path: Path | str) -> bool:
    """True when a pykms store was opened on ``path`` before (its lock file carries the mark), whether or not the
    state file is still there: a missing state with this mark was deleted or moved, not never created."""
    try:
        with open(f"{path}.lock", "rb") as f:
            return f.read(len(USED_MARK)) == USED_MARK
    except OSError:
        return False


def read_state_file(path: Path | str) -> tuple[StateFormat, SignState]:
    """Read any state file (cometbft JSON, tmkms JSON, slots) without locking it: for show and import.

    A snapshot read: a running pykms may be rewriting the file; the JSON store replaces it by rename and the
    slots file always keeps one valid slot, so what is read is a complete state, possibly already old.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateMissing(f"{path}: no such state file") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot read the state file ({_reason(exc)})") from None
    if data.startswith(SLOTS_MAGIC):
        return "slots", decode_slots_file(data, str(path))[1]
    return parse_json_state(data, str(path))
