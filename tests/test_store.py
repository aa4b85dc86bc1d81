"""The durable state stores on real files: formats on disk, fail-closed opening, locking, write failures."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_guard_support import fake_signature, sign_bytes

from pykms.errors import PersistError, StateCorrupt, StateError, StateLocked, StateMissing
from pykms.guard.state import SignState, from_cometbft_json
from pykms.guard.store import (
    BLOCK,
    SLOTS_FILE_SIZE,
    FileOps,
    JsonStateStore,
    SlotStateStore,
    create_state_file,
    decode_slots_file,
    read_state_file,
)

STORES = [JsonStateStore, SlotStateStore]
Store = type[JsonStateStore] | type[SlotStateStore]


def state(height: int, round_: int = 0, step: int = 2, block: int | None = 1) -> SignState:
    data = sign_bytes(height, round_, step, block)
    return SignState(height, round_, step, fake_signature(data), data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("cls", STORES)
def test_create_save_reload(tmp_path: Path, cls: Store) -> None:
    path = tmp_path / "state"
    with cls.create(path, SignState.initial()) as store:
        assert store.load() == SignState.initial()
        for h in (1, 2, 3):
            store.save(state(h))
            assert store.load() == state(h)
    with cls(path) as store:
        assert store.load() == state(3)
    assert mode(path) == 0o600
    assert mode(Path(str(path) + ".lock")) == 0o600


def test_json_store_writes_cometbft_file(tmp_path: Path) -> None:
    path = tmp_path / "priv_validator_state.json"
    with JsonStateStore.create(path, SignState.initial()) as store:
        store.save(state(42, 1, 3, 7))
    assert from_cometbft_json(path.read_bytes(), "x") == state(42, 1, 3, 7)
    obj = json.loads(path.read_bytes())
    assert obj["height"] == "42"
    assert obj["signbytes"] == state(42, 1, 3, 7).sign_bytes.hex().upper()


def test_json_store_reads_a_node_file(tmp_path: Path) -> None:
    # A file as CometBFT writes it (privval/file_test.go TestUnmarshalValidatorState).
    path = tmp_path / "priv_validator_state.json"
    path.write_bytes(b'{\n  "height": "1",\n  "round": 1,\n  "step": 1\n}')
    with JsonStateStore(path) as store:
        assert store.load() == SignState(1, 1, 1)


def test_slots_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "state.slots"
    with SlotStateStore.create(path, SignState.initial()) as store:
        before = path.read_bytes()
        store.save(state(1))
        after1 = path.read_bytes()
        store.save(state(2))
        after2 = path.read_bytes()
    assert len(before) == len(after1) == len(after2) == SLOTS_FILE_SIZE
    # Saves alternate between the two slots and never touch the header block.
    assert before[:BLOCK] == after1[:BLOCK] == after2[:BLOCK]
    assert after1[2 * BLOCK :] == before[2 * BLOCK :]
    assert after1[BLOCK : 2 * BLOCK] != before[BLOCK : 2 * BLOCK]
    assert after2[BLOCK : 2 * BLOCK] == after1[BLOCK : 2 * BLOCK]
    assert after2[2 * BLOCK :] != after1[2 * BLOCK :]
    assert decode_slots_file(after2, "x") == (3, state(2))


def test_slot_store_keeps_its_descriptor_and_uses_one_write_one_sync(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting(FileOps):
        def __getattribute__(self, name: str) -> object:
            if not name.startswith("_"):
                calls.append(name)
            return object.__getattribute__(self, name)

    path = tmp_path / "s"
    create_state_file(path, SignState.initial(), fmt="slots")
    with SlotStateStore(path, ops=Counting()) as store:
        calls.clear()
        store.save(state(1))
        assert calls == ["pwrite", "fdatasync"]


def test_slot_store_falls_back_to_the_other_slot(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SlotStateStore.create(path, SignState.initial()) as store:
        store.save(state(1))  # sequence 2, slot 0
        store.save(state(2))  # sequence 3, slot 1
    data = bytearray(path.read_bytes())
    data[2 * BLOCK + 100] ^= 0x01  # damage slot 1 (the newest)
    path.write_bytes(bytes(data))
    with SlotStateStore(path) as store:
        assert store.load() == state(1)
        store.save(state(3))  # goes to slot 1 again (sequence 3), repairing it
    assert decode_slots_file(path.read_bytes(), "x") == (3, state(3))


def test_slot_store_both_slots_bad_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s"
    create_state_file(path, state(5), fmt="slots")
    data = bytearray(path.read_bytes())
    data[BLOCK + 30] ^= 0xFF
    data[2 * BLOCK + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StateCorrupt, match=r"both slots fail their checksum.*pykms state import"):
        SlotStateStore(path)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: d[:-1], "expected 12288"),
        (lambda d: d + b"\0", "expected 12288"),
        (lambda d: d[:8] + b"\x09" + d[9:], "header is damaged"),
    ],
)
def test_slot_store_rejects_damaged_files(tmp_path: Path, damage: object, why: str) -> None:
    path = tmp_path / "s"
    create_state_file(path, state(5), fmt="slots")
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(StateCorrupt, match=why):
        SlotStateStore(path)


@pytest.mark.parametrize("cls", STORES)
def test_missing_file_fails_closed(tmp_path: Path, cls: Store) -> None:
    with pytest.raises(StateMissing, match=r"no state file.*pykms state import.*pykms state init"):
        cls(tmp_path / "absent")
    with pytest.raises(StateMissing, match="does not exist"):
        cls(tmp_path / "no-dir" / "absent")


def test_corrupt_json_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b'{"height": "1", "round": 0')
    with JsonStateStore(path) as store, pytest.raises(StateCorrupt, match=str(path)):
        store.load()


def test_stores_name_the_other_format(tmp_path: Path) -> None:
    json_path, slots_path, tmkms_path = tmp_path / "a.json", tmp_path / "b.slots", tmp_path / "c.json"
    create_state_file(json_path, state(1))
    create_state_file(slots_path, state(1), fmt="slots")
    tmkms_path.write_bytes(b'{"height":"5","round":"0","step":1,"block_id":null}')
    with pytest.raises(StateCorrupt, match='state_format = "json"'):
        SlotStateStore(json_path)
    with pytest.raises(StateCorrupt, match=r"tmkms.*pykms state import"):
        SlotStateStore(tmkms_path)
    with JsonStateStore(slots_path) as store, pytest.raises(StateCorrupt, match='state_format = "slots"'):
        store.load()
    with JsonStateStore(tmkms_path) as store, pytest.raises(StateCorrupt, match="tmkms state file"):
        store.load()


@pytest.mark.parametrize("cls", STORES)
def test_create_refuses_an_existing_file_unless_overwrite(tmp_path: Path, cls: Store) -> None:
    path = tmp_path / "s"
    cls.create(path, state(9)).close()
    with pytest.raises(StateError, match="already exists"):
        cls.create(path, SignState.initial())
    path.write_bytes(b"garbage")  # even a corrupt file can be replaced by an explicit import
    cls.create(path, state(3), overwrite=True).close()
    with cls(path) as store:
        assert store.load() == state(3)


@pytest.mark.parametrize("fmt", ["json", "slots"])
def test_read_state_file_and_create_state_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "s"
    create_state_file(path, state(4), fmt=fmt)
    expected_fmt = "cometbft" if fmt == "json" else "slots"
    assert read_state_file(path) == (expected_fmt, state(4))
    tm = tmp_path / "tm.json"
    tm.write_bytes(b'{"height":"8","round":"1","step":2,"block_id":null}')
    assert read_state_file(tm) == ("tmkms", SignState(8, 1, 3))
    with pytest.raises(StateMissing):
        read_state_file(tmp_path / "nope")
    with pytest.raises(StateError, match="unknown state format"):
        create_state_file(tmp_path / "x", state(1), fmt="yaml")


@pytest.mark.parametrize("cls", STORES)
def test_lock_excludes_a_second_store_in_this_process(tmp_path: Path, cls: Store) -> None:
    path = tmp_path / "s"
    with cls.create(path, SignState.initial()):
        with pytest.raises(StateLocked, match=str(path)):
            cls(path)
        with pytest.raises(StateLocked):
            cls.create(path, state(1), overwrite=True)
    cls(path).close()  # released on close


@pytest.mark.parametrize("cls", STORES)
def test_lock_excludes_another_process(tmp_path: Path, cls: Store) -> None:
    path = tmp_path / "s"
    cls.create(path, SignState.initial()).close()
    holder = textwrap.dedent(
        f"""
        import sys
        from pykms.guard.store import {cls.__name__} as S
        s = S(sys.argv[1])
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StateLocked, match="another pykms"):
            cls(path)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    cls(path).close()  # the lock died with the process


class FailingOps(FileOps):
    """Real file operations, except that one named call fails with ``err`` (ENOSPC, EIO, EROFS...)."""

    def __init__(self, fail: str, err: int) -> None:
        self.fail: str | None = fail
        self.err = err

    def __getattribute__(self, name: str) -> object:
        if name == object.__getattribute__(self, "fail"):
            err = object.__getattribute__(self, "err")

            def boom(*args: object) -> object:
                raise OSError(err, os.strerror(err))

            return boom
        return object.__getattribute__(self, name)


@pytest.mark.parametrize(
    ("cls", "fail"),
    [
        (JsonStateStore, "open"),
        (JsonStateStore, "write"),
        (JsonStateStore, "fsync"),
        (JsonStateStore, "rename"),
        (SlotStateStore, "pwrite"),
        (SlotStateStore, "fdatasync"),
    ],
)
def test_write_failure_is_persist_error_and_keeps_the_old_state(tmp_path: Path, cls: Store, fail: str) -> None:
    path = tmp_path / "s"
    cls.create(path, state(1)).close()
    ops = FailingOps("none", errno.ENOSPC)
    with cls(path, ops=ops) as store:
        ops.fail = fail
        with pytest.raises(PersistError, match=r"No space left on device.*withheld"):
            store.save(state(2))
        ops.fail = None
        if fail not in ("fsync", "fdatasync"):  # a failed sync may still have written: either state is fine
            assert store.load() == state(1)
        store.save(state(3))  # the store recovers once the disk does
        assert store.load() == state(3)
    with cls(path) as store:
        assert store.load() == state(3)


def test_json_store_replaces_a_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    create_state_file(path, SignState.initial())
    tmp = tmp_path / ".s.json.tmp"
    tmp.write_bytes(b"x" * 1000)
    tmp.chmod(0o644)
    with JsonStateStore(path) as store:
        store.save(state(2))
    assert mode(path) == 0o600
    assert from_cometbft_json(path.read_bytes(), "x") == state(2)
    assert not tmp.exists()


def test_slot_payload_too_large_is_persist_error(tmp_path: Path) -> None:
    with SlotStateStore.create(tmp_path / "s", SignState.initial()) as store:
        with pytest.raises(PersistError, match="too large"):
            store.save(SignState(1, 0, 2, b"s" * 64, b"x" * 5000))
        assert store.load() == SignState.initial()


@pytest.mark.parametrize("cls", STORES)
def test_closed_store_refuses(tmp_path: Path, cls: Store) -> None:
    store = cls.create(tmp_path / "s", SignState.initial())
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        store.save(state(1))
    with pytest.raises(StateError, match="closed"):
        store.load()
    assert repr(store) == f"{cls.__name__}({str(tmp_path / 's')!r})"


@pytest.mark.parametrize("cls", STORES)
def test_create_failure_is_persist_error_and_leaves_no_state(tmp_path: Path, cls: Store) -> None:
    with pytest.raises(PersistError, match=r"could not create.*Input/output error"):
        cls.create(tmp_path / "s", SignState.initial(), ops=FailingOps("fsync", errno.EIO))
    with pytest.raises(StateMissing):
        cls(tmp_path / "s")


@pytest.mark.parametrize("fail", ["open", "flock"])
@pytest.mark.parametrize("cls", STORES)
def test_unusable_lock_file_is_a_state_error(tmp_path: Path, cls: Store, fail: str) -> None:
    cls.create(tmp_path / "s", SignState.initial()).close()
    with pytest.raises(StateError, match=r"lock.*Permission denied"):
        cls(tmp_path / "s", ops=FailingOps(fail, errno.EACCES))


def test_json_file_removed_under_a_running_store_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    with JsonStateStore.create(path, SignState.initial()) as store:
        path.unlink()
        with pytest.raises(StateMissing, match="pykms state init"):
            store.load()


def test_slot_store_on_garbage_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"\x00" * SLOTS_FILE_SIZE)
    with pytest.raises(StateCorrupt, match="header is damaged"):
        SlotStateStore(path)


def test_slots_file_decoding_refuses_unknown_version_and_ambiguous_slots(tmp_path: Path) -> None:
    from pykms.guard.store import _encode_header, _encode_slot

    header = bytearray(_encode_header())
    good = bytes(header) + _encode_slot(state(1), 0, 0) + _encode_slot(state(1), 1, 1)
    assert decode_slots_file(good, "x") == (1, state(1))
    ambiguous = bytes(header) + _encode_slot(state(1), 4, 0) + _encode_slot(state(2), 4, 1)
    with pytest.raises(StateCorrupt, match="same sequence number"):
        decode_slots_file(ambiguous, "x")
    # A slot copied into the other position is not accepted there (the slot index is checksummed).
    swapped = bytes(header) + _encode_slot(state(1), 1, 1) + _encode_slot(state(1), 1, 1)
    assert decode_slots_file(swapped, "x") == (1, state(1))
    both_wrong = bytes(header) + _encode_slot(state(1), 1, 1) + _encode_slot(state(1), 0, 0)
    with pytest.raises(StateCorrupt, match="both slots"):
        decode_slots_file(both_wrong, "x")


def test_read_state_file_reads_slots(tmp_path: Path) -> None:
    create_state_file(tmp_path / "s", state(12), fmt="slots")
    assert read_state_file(tmp_path / "s") == ("slots", state(12))
