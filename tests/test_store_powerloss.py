"""Power-loss proof of the state stores (reliability issue, item 2).

For each store we run one scenario (create the file, open it, three saves) through a ``CrashOps`` that stops the
process at the k-th OS call, for every k, in three ways:

- ``process``: the process dies before call k; everything it already handed to the kernel survives.
- ``power``: the machine loses power before call k; what was not made durable is lost. The model: data written
  to a file since its last fsync/fdatasync reverts to its last synced content (never-synced files come back
  empty), and renames since the last fsync of the directory are undone.
- ``torn``: call k is a write that reaches the disk only in part (a prefix, or an arbitrary set of 512-byte
  sectors, as a disk may reorder them), then power is lost as above.

Then the store is reopened with the real OS functions and we check that it holds the old or the new state,
never a torn one, never one older than a state whose ``save`` returned (whose signature was released), and that
it accepts the next save. Negative controls show the checker catches a store that skips its syncs or writes over
its only good slot, so a pass means something.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_guard_support import fake_signature, sign_bytes

from pykms.errors import StateMissing
from pykms.guard.state import SignState
from pykms.guard.store import BLOCK, FileOps, JsonStateStore, SlotStateStore, _encode_slot

SECTOR = 512

#: Each tear keeps the parts of the buffer listed as (start, end) for a buffer of n bytes.
#: A slot's meaningful bytes (head, payload, checksum) are its first ~400; the rest is padding, so byte-level tears
#: inside that region matter most (a stricter model than a disk's sector-level tearing).
TEARS: dict[str, Callable[[int], list[tuple[int, int]]]] = {
    "first-byte": lambda n: [(0, 1)],
    "head-only": lambda n: [(0, min(n, 24))],
    "prefix-64": lambda n: [(0, min(n, 64))],
    "prefix-200": lambda n: [(0, min(n, 200))],
    "all-but-head": lambda n: [(min(n, 24), n)],
    "all-but-64": lambda n: [(min(n, 64), n)],
    "half": lambda n: [(0, n // 2)],
    "all-but-last-byte": lambda n: [(0, n - 1)],
    "last-sector": lambda n: [(max(0, n - SECTOR), n)],
    "odd-sectors": lambda n: [(s, min(n, s + SECTOR)) for s in range(SECTOR, n, 2 * SECTOR)],
    "all-but-first-sector": lambda n: [(min(SECTOR, n // 2), n)],
}

WRITE_CALLS = {"write", "pwrite"}


class Crash(Exception):
    """The simulated end of the process (or of the machine)."""


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _put(path: str, data: bytes | None) -> None:
    if data is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    with open(path, "wb") as fh:
        fh.write(data)


@dataclass
class CrashOps(FileOps):
    """Real OS calls plus a model of what is durable; stops at call ``crash_at`` in the given ``mode``."""

    crash_at: int = 0
    mode: str = "process"
    tear: str | None = None
    honour_syncs: bool = True  # False models a store that never syncs (negative control)
    calls: list[str] = field(default_factory=list)
    fds: dict[int, str] = field(default_factory=dict)
    dir_fds: set[int] = field(default_factory=set)
    durable: dict[str, bytes | None] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    renames: list[tuple[str, str, bytes | None]] = field(default_factory=list)
    crashed: bool = False

    def _tick(self, name: str) -> bool:
        self.calls.append(name)
        return len(self.calls) == self.crash_at

    def _crash(self) -> Crash:
        self.crashed = True
        return Crash(f"crash at call {self.crash_at} ({self.calls[-1]}, {self.mode}, {self.tear})")

    # -- the calls -------------------------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if self._tick("open"):
            raise self._crash()
        before = _read(path) if not os.path.isdir(path) else None
        fd = os.open(path, flags, mode)
        if os.path.isdir(path):
            self.dir_fds.add(fd)
        else:
            self.fds[fd] = path
            self.durable.setdefault(path, before)
            if flags & os.O_TRUNC:
                self.dirty.add(path)
        return fd

    def close(self, fd: int) -> None:
        if self._tick("close"):
            raise self._crash()
        os.close(fd)
        self.fds.pop(fd, None)
        self.dir_fds.discard(fd)

    def _torn_write(self, fd: int, data: bytes, offset: int | None) -> None:
        assert self.tear is not None
        base = os.lseek(fd, 0, os.SEEK_CUR) if offset is None else offset
        for start, end in TEARS[self.tear](len(data)):
            os.pwrite(fd, data[start:end], base + start)
        # What reached the platter is durable; the rest of the buffer never will be.
        path = self.fds[fd]
        self.durable[path] = _read(path)
        self.dirty.discard(path)

    def write(self, fd: int, data: bytes) -> int:
        if self._tick("write"):
            if self.mode == "torn":
                self._torn_write(fd, data, None)
            raise self._crash()
        self.dirty.add(self.fds[fd])
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self._tick("pwrite"):
            if self.mode == "torn":
                self._torn_write(fd, data, offset)
            raise self._crash()
        self.dirty.add(self.fds[fd])
        return os.pwrite(fd, data, offset)

    def _sync(self, name: str, fd: int) -> None:
        if self._tick(name):
            raise self._crash()
        os.fsync(fd)
        if not self.honour_syncs:
            return
        if fd in self.dir_fds:
            self.renames.clear()
        else:
            path = self.fds[fd]
            self.durable[path] = _read(path)
            self.dirty.discard(path)

    def fsync(self, fd: int) -> None:
        self._sync("fsync", fd)

    def fdatasync(self, fd: int) -> None:
        self._sync("fdatasync", fd)

    def rename(self, src: str, dst: str) -> None:
        if self._tick("rename"):
            raise self._crash()
        old_dst = self.durable.get(dst, _read(dst))
        os.rename(src, dst)
        self.renames.append((src, dst, old_dst))
        # The file's durability travels with it to its new name.
        self.durable[dst] = self.durable.pop(src, None)
        if src in self.dirty:
            self.dirty.discard(src)
            self.dirty.add(dst)
        for fd, path in self.fds.items():
            if path == src:
                self.fds[fd] = dst

    def fchmod(self, fd: int, mode: int) -> None:
        if self._tick("fchmod"):
            raise self._crash()
        os.fchmod(fd, mode)

    def read(self, fd: int, size: int) -> bytes:
        if self._tick("read"):
            raise self._crash()
        return os.read(fd, size)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if self._tick("pread"):
            raise self._crash()
        return os.pread(fd, size, offset)

    def flock(self, fd: int, operation: int) -> None:
        if self._tick("flock"):
            raise self._crash()
        super().flock(fd, operation)

    # -- after the crash ----------------------------------------------------------------------------------------

    def die(self) -> None:
        """The process is gone: the kernel closes its descriptors (releasing the lock)."""
        for fd in [*self.fds, *self.dir_fds]:
            os.close(fd)
        self.fds.clear()
        self.dir_fds.clear()

    def lose_power(self) -> None:
        """Drop whatever was not durable: unsynced data first, then unsynced renames, newest first."""
        for path in sorted(self.dirty):
            _put(path, self.durable.get(path) or b"")
        self.dirty.clear()
        for src, dst, old_dst in reversed(self.renames):
            moved = _read(dst)
            _put(src, moved)
            _put(dst, old_dst)
        self.renames.clear()


STATES = [SignState.initial()] + [
    SignState(
        h, h % 3, 1 + h % 3, fake_signature(sign_bytes(h, h % 3, 1 + h % 3, h)), sign_bytes(h, h % 3, 1 + h % 3, h)
    )
    for h in (1, 2, 3)
]
Store = type[JsonStateStore] | type[SlotStateStore]


@dataclass
class Outcome:
    released: SignState | None  # the newest state whose create()/save() returned
    in_flight: SignState | None  # the state being written when the crash came


def run_scenario(cls: Store, path: Path, ops: CrashOps) -> Outcome:
    """create(S0), close, reopen, save S1..S3, close; stop at the first Crash."""
    outcome = Outcome(None, None)
    try:
        outcome.in_flight = STATES[0]
        cls.create(path, STATES[0], ops=ops).close()
        outcome.released, outcome.in_flight = STATES[0], None
        store = cls(path, ops=ops)
        for new in STATES[1:]:
            outcome.in_flight = new
            store.save(new)
            outcome.released, outcome.in_flight = new, None
        store.close()
    except Crash:
        pass
    return outcome


def check_after_crash(cls: Store, path: Path, outcome: Outcome) -> str | None:
    """None if the reopened store is acceptable, else what is wrong."""
    try:
        store = cls(path)
    except StateMissing:
        if outcome.released is None:
            return None  # crashed inside create(): no state file yet is right
        return f"state missing although {outcome.released!r} was released"
    except Exception as exc:
        return f"reopen failed: {type(exc).__name__}: {exc}"
    with store:
        try:
            found = store.load()
        except Exception as exc:
            return f"load failed: {type(exc).__name__}: {exc}"
        allowed = [s for s in (outcome.released, outcome.in_flight) if s is not None]
        if found not in allowed:
            return f"found {found!r}, expected one of {allowed!r}"
        # Recovery: the store takes the next save and keeps it.
        nxt = SignState(99, 0, 2, b"n" * 64, sign_bytes(99, 0, 2, 9))
        store.save(nxt)
        if store.load() != nxt:
            return "the first save after recovery did not stick"
    with cls(path) as store:
        if store.load() != nxt:
            return "the first save after recovery was lost on reopen"
    return None


def crash_cases(cls: Store, tmp_path: Path) -> Iterator[tuple[int, str, str | None, str]]:
    """(k, mode, tear, call name) for every OS call k of the scenario."""
    dry = CrashOps()
    (tmp_path / "dry").mkdir(parents=True)
    run_scenario(cls, tmp_path / "dry" / "state", dry)
    for k, name in enumerate(dry.calls, start=1):
        yield k, "process", None, name
        yield k, "power", None, name
        if name in WRITE_CALLS:
            for tear in TEARS:
                yield k, "torn", tear, name


def sweep(cls: Store, tmp_path: Path, *, honour_syncs: bool = True) -> tuple[int, dict[str, int], list[str]]:
    """Run every crash case; return (cases, calls seen by kind, failures)."""
    failures: list[str] = []
    kinds: dict[str, int] = {}
    cases = 0
    for k, mode, tear, name in crash_cases(cls, tmp_path):
        cases += 1
        kinds[name] = kinds.get(name, 0) + 1
        directory = tmp_path / f"k{k}-{mode}-{tear}"
        directory.mkdir()
        ops = CrashOps(crash_at=k, mode=mode, tear=tear, honour_syncs=honour_syncs)
        outcome = run_scenario(cls, directory / "state", ops)
        assert ops.crashed, f"call {k} was never reached"
        ops.die()
        if mode != "process":
            ops.lose_power()
        problem = check_after_crash(cls, directory / "state", outcome)
        if problem:
            failures.append(f"k={k} ({name}) {mode} {tear or ''}: {problem}")
    return cases, kinds, failures


@pytest.mark.parametrize("cls", [JsonStateStore, SlotStateStore])
def test_power_loss_at_every_call(tmp_path: Path, cls: Store) -> None:
    cases, kinds, failures = sweep(cls, tmp_path)
    assert failures == []
    # The sweep really covered every kind of step the store takes.
    expected = {"write", "fsync", "rename"} if cls is JsonStateStore else {"pwrite", "fdatasync", "rename"}
    assert expected <= kinds.keys()
    print(f"{cls.__name__}: {cases} crash cases over {sorted(kinds)}: 0 failures")


def test_slot_store_save_is_one_pwrite_one_fdatasync(tmp_path: Path) -> None:
    ops = CrashOps()
    SlotStateStore.create(tmp_path / "s", STATES[0]).close()
    with SlotStateStore(tmp_path / "s", ops=ops) as store:
        ops.calls.clear()
        store.save(STATES[1])
        assert ops.calls == ["pwrite", "fdatasync"]


# ---- negative controls: the checker must catch broken stores ---------------------------------------------------


def test_checker_catches_a_store_that_does_not_sync(tmp_path: Path) -> None:
    for cls in (JsonStateStore, SlotStateStore):
        _, _, failures = sweep(cls, tmp_path / cls.__name__, honour_syncs=False)
        assert any("expected one of" in f or "missing" in f or "failed" in f for f in failures), cls


class OneSlotStore(SlotStateStore):
    """Broken on purpose: always overwrites the slot holding the newest state."""

    def save(self, state: SignState) -> None:
        assert self._fd is not None
        seq = self._seq + 2  # same parity: the slot that holds the newest state
        self._ops.pwrite(self._fd, _encode_slot(state, seq, seq % 2), BLOCK * (1 + seq % 2))
        self._ops.fdatasync(self._fd)
        self._seq = seq


def test_checker_catches_a_store_that_overwrites_its_only_good_slot(tmp_path: Path) -> None:
    _, _, failures = sweep(OneSlotStore, tmp_path)
    assert any("torn" in f for f in failures)


class NoDirSyncJsonStore(JsonStateStore):
    """Broken on purpose: FilePV's own sequence (temp, fsync, rename) without the directory fsync."""

    def _replace_file(self, data: bytes) -> None:
        ops = self._ops
        if self._dir_fd is None:
            self._dir_fd = self._open_dir()
        fd = ops.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            ops.write(fd, data)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.rename(self._tmp, str(self.path))


def test_checker_catches_a_json_store_without_directory_fsync(tmp_path: Path) -> None:
    _, _, failures = sweep(NoDirSyncJsonStore, tmp_path)
    # Only a power loss exposes it (the rename is undone: the released state is gone); a process crash does not.
    assert any(" power " in f and "although" in f for f in failures)
    assert not any(" process " in f for f in failures)
