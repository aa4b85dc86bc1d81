"""The audit log through real files: records, the hash chain, reopening, rotation, torn tails, and tampering that
``verify`` must find at the exact file and record; ``pykms audit verify|summary`` through the CLI entry point."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pykms import audit
from pykms.audit import (
    AuditCorrupt,
    AuditError,
    AuditLog,
    order_files,
    parse_time,
    summarize,
    verify_files,
)
from pykms.audit.record import ZERO_HASH
from pykms.audit.writer import PREALLOC_BYTES
from pykms.cli.main import main
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore
from pykms.handler import SignEvent

CHAIN = "audit-chain"
KINDS = {1: "proposal", 2: "prevote", 3: "precommit"}


def event(height: int, step: int = 2, *, outcome: str = "signed", round_: int = 0, chain: str = CHAIN) -> SignEvent:
    signed = outcome in ("signed", "reused")
    sig = hashlib.sha512(f"{chain}/{height}/{round_}/{step}".encode()).digest() if signed else None
    return SignEvent(
        chain, KINDS[step], height, round_, step, hashlib.sha256(str(height).encode()).digest(),
        f"sb-{height}-{step}".encode(), sig, outcome, "" if signed else "ConflictError", 0.001,
    )  # fmt: skip


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().rstrip(b"\0").splitlines()]


def write_log(path: Path, n: int, *, sync: audit.SyncMode = "batch", **kw: Any) -> list[SignEvent]:
    log = AuditLog(path, CHAIN, sync=sync, **kw)
    events = [event(h, step) for h in range(1, n // 2 + 2) for step in (2, 3)][:n]
    try:
        for e in events:
            log.record(e)
    finally:
        log.close()
    return events


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


# Records and the chain ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", ["always", "batch"])
def test_one_record_per_event_chained(tmp_path: Path, sync: audit.SyncMode) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, CHAIN, sync=sync)
    signed, reused, refused = event(5, 2), event(5, 2, outcome="reused"), event(4, 3, outcome="refused")
    for e in (signed, reused, refused):
        log.record(e)
    log.close()
    recs = records(path)
    assert [r["kind"] for r in recs] == ["open", "prevote", "prevote", "precommit"]
    assert [r["seq"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["prev"] == ZERO_HASH and recs[0]["previous_file"] is None
    for before, after in itertools.pairwise(recs):
        assert after["prev"] == before["hash"]
    for r in recs:
        body = {k: v for k, v in r.items() if k != "hash"}
        assert hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == r["hash"]
        parse_time(r["time"])  # RFC 3339
    first = recs[1]
    assert (first["chain_id"], first["height"], first["round"], first["step"]) == (CHAIN, 5, 0, 2)
    assert first["block_id"] == signed.block_id.hex()
    assert first["sign_bytes_sha256"] == hashlib.sha256(signed.sign_bytes).hexdigest()
    assert signed.signature is not None and base64.b64decode(first["signature"]) == signed.signature
    assert (first["outcome"], first["reason"]) == ("signed", "")
    assert recs[2]["outcome"] == "reused"
    assert (recs[3]["outcome"], recs[3]["reason"], recs[3]["signature"]) == ("refused", "ConflictError", None)
    report = verify_files([path])
    assert report.ok and report.records == 4 and report.last_hash == recs[-1]["hash"]
    assert report.last_signature == recs[2]["signature"]  # a refusal does not change the last signature
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 3)
    log = AuditLog(path, CHAIN, sync="always")
    log.record(event(10, 2))
    log.close()
    recs = records(path)
    assert [r["kind"] for r in recs].count("open") == 1  # the same file continues: no second open record
    assert [r["seq"] for r in recs] == list(range(5))
    assert recs[4]["prev"] == recs[3]["hash"]
    assert verify_files([path]).ok


def test_always_preallocates_and_close_trims(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, CHAIN, sync="always")
    log.record(event(1))
    assert path.stat().st_size >= PREALLOC_BYTES  # records overwrite zeros: no size change to flush
    crashed = tmp_path / "crashed.log"  # what a crash leaves: the records, then zero padding
    crashed.write_bytes(path.read_bytes())
    log.close()
    assert path.stat().st_size == len(b"".join(line + b"\n" for line in path.read_bytes().splitlines()))
    assert verify_files([crashed]).ok and verify_files([crashed]).records == 2
    # reopening the padded file finds the tail behind a megabyte of zeros and writes there
    log = AuditLog(crashed, CHAIN, sync="always")
    log.record(event(2))
    log.close()
    assert [r["seq"] for r in records(crashed)] == [0, 1, 2]
    assert verify_files([crashed]).ok


def test_padding_only_file_starts_a_new_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"\0" * 4096)  # a crash between preallocating and the open record
    write_log(path, 1)
    assert [r["kind"] for r in records(path)] == ["open", "prevote"]


def test_wrong_chain_and_damaged_tail_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 2)
    with pytest.raises(AuditError, match="belongs to chain"):
        AuditLog(path, "other-chain")
    lines = path.read_bytes().splitlines()
    rewrite(path, [*lines[:-1], b"{not json"])
    with pytest.raises(AuditError, match="audit verify"):
        AuditLog(path, CHAIN)


def test_write_failure_is_an_audit_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", CHAIN, sync="always")
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record(event(1))
    log = AuditLog(tmp_path / "audit.log", CHAIN, sync="always")
    os.close(log._fd)  # the disk goes away under the log
    log._fd = os.open(tmp_path / "audit.log", os.O_RDONLY)
    with pytest.raises(AuditError, match="cannot write the audit record"):
        log.record(event(2))
    log.close()


def test_on_write_reports_latency(tmp_path: Path) -> None:
    seen: list[float] = []
    log = AuditLog(tmp_path / "audit.log", CHAIN, sync="always")
    log.on_write = seen.append
    log.record(event(1))
    log.record(event(2))
    log.close()
    assert len(seen) == 2 and all(0 < s < 5 for s in seen)


# Rotation and torn tails ----------------------------------------------------------------------------------


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 20, rotate_bytes=1500, sync="always")
    rotated = sorted(tmp_path.glob("audit.log.*"))
    assert len(rotated) >= 3
    files = order_files([*reversed(rotated), path])  # the shell's order does not matter
    assert files == [*rotated, path]
    for older, newer in itertools.pairwise(files):
        opening = records(newer)[0]
        assert opening["kind"] == "open" and opening["previous_file"] == older.name
        assert opening["prev"] == records(older)[-1]["hash"]
        assert opening["seq"] == records(older)[-1]["seq"] + 1
        assert newer == path or int(newer.name.rsplit(".", 1)[1]) == opening["seq"]
    report = verify_files(files)
    assert report.ok and report.first_seq == 0 and report.records == sum(len(records(f)) for f in files)
    total = summarize(files)
    assert sum(total.signatures.values()) == 20
    # the live file alone, or the newest files only, verify as a chain that starts mid-history
    assert verify_files([path]).ok
    assert verify_files(files[1:]).ok


def test_missing_rotated_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 20, rotate_bytes=1500)
    files = order_files([*tmp_path.glob("audit.log*")])
    assert len(files) >= 3
    report = verify_files([files[0], *files[2:]])
    assert not report.ok and (report.file, report.line) == (str(files[2]), 1)
    assert "does not continue" in report.problem
    out_of_order = verify_files([files[1], files[0], *files[2:]])
    assert not out_of_order.ok and (out_of_order.file, out_of_order.line) == (str(files[0]), 1)


def test_torn_tail_recovered_into_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_log(path, 3)
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"block_id":"ab')  # a crash in the middle of a write
    log = AuditLog(path, CHAIN)
    log.record(event(9))
    log.close()
    old = tmp_path / "audit.log.000000000000"
    assert old.read_bytes() == intact + b'{"block_id":"ab'  # kept as evidence
    opening = records(path)[0]
    assert opening["torn_bytes"] == 15 and opening["previous_file"] == old.name
    assert opening["prev"] == json.loads(intact.splitlines()[-1])["hash"]
    assert verify_files([old, path]).ok
    alone = verify_files([old])
    assert not alone.ok and alone.line == 5 and "truncated" in alone.problem
    # a different fragment is not the one the new file names
    old.write_bytes(intact + b'{"block_id":"ac')
    assert not verify_files([old, path]).ok


# Tampering ------------------------------------------------------------------------------------------------


@pytest.fixture
def log8(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path = tmp_path / "audit.log"
    write_log(path, 8)
    return path, path.read_bytes().splitlines()  # 9 lines: open + 8


def test_truncated_last_line(log8: tuple[Path, list[bytes]]) -> None:
    path, _lines = log8
    path.write_bytes(path.read_bytes()[:-20])
    report = verify_files([path])
    assert not report.ok and report.line == 9 and "truncated" in report.problem and report.records == 8


def test_record_removed_from_the_middle(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    rewrite(path, lines[:4] + lines[5:])
    report = verify_files([path])
    assert not report.ok and report.line == 5 and "removed" in report.problem and report.records == 4


def test_edited_field(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    record = json.loads(lines[6])
    record["height"] += 1
    rewrite(path, [*lines[:6], json.dumps(record, sort_keys=True, separators=(",", ":")).encode(), *lines[7:]])
    report = verify_files([path])
    assert not report.ok and report.line == 7 and "edited" in report.problem


def test_edited_and_rehashed_record_breaks_the_next_link(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    record = json.loads(lines[3])
    record["signature"] = base64.b64encode(b"\1" * 64).decode()
    del record["hash"]
    record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    rewrite(path, [*lines[:3], json.dumps(record, sort_keys=True, separators=(",", ":")).encode(), *lines[4:]])
    report = verify_files([path])
    assert not report.ok and report.line == 5


def test_two_records_swapped(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    rewrite(path, [*lines[:2], lines[3], lines[2], *lines[4:]])
    report = verify_files([path])
    assert not report.ok and report.line == 3


def test_open_record_removed(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    rewrite(path, lines[1:])
    report = verify_files([path])
    assert not report.ok and report.line == 1 and "open record" in report.problem


def test_record_removed_from_the_end_caught_by_the_state(log8: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    path, lines = log8
    last = json.loads(lines[-1])
    state_path = tmp_path / "state.json"
    JsonStateStore.create(
        state_path, SignState(last["height"], 0, last["step"], base64.b64decode(last["signature"]), b"x")
    ).close()
    assert main(["audit", "verify", str(path), "--state", str(state_path)]) == 0
    rewrite(path, lines[:-1])
    assert verify_files([path]).ok  # a prefix of a chain is a chain: only the state can tell
    assert not verify_files([path], state_signature=base64.b64decode(last["signature"])).ok
    assert main(["audit", "verify", str(path), "--state", str(state_path)]) == 8


# CLI ------------------------------------------------------------------------------------------------------


def test_cli_verify_exit_codes(log8: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]) -> None:
    path, lines = log8
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok: 9 records" in capsys.readouterr().out
    rewrite(path, [*lines[:2], lines[3], lines[2], *lines[4:]])
    assert main(["audit", "verify", str(path)]) == 8
    err = capsys.readouterr().err
    assert f"{path} record 3" in err and "after 2 good records" in err
    assert main(["audit", "verify", str(path.with_name("absent.log"))]) == 5
    assert main(["audit", "verify", "--json", str(path)]) == 8
    assert json.loads(capsys.readouterr().out)["line"] == 3


def test_cli_summary_counts_and_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, CHAIN)
    expected: dict[str, list[int]] = {"proposal": [], "prevote": [], "precommit": []}
    for height in range(3, 9):
        for step in (1, 2, 3):
            log.record(event(height, step))
            expected[KINDS[step]].append(height)
        time.sleep(0.002)
    log.record(event(8, 3, outcome="reused"))
    log.record(event(7, 2, outcome="refused"))
    log.record(event(7, 2, outcome="refused"))
    log.close()
    assert main(["audit", "summary", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_kind = {s["type"]: s for s in doc["signatures"]}
    assert by_kind["precommit"]["count"] == 7 and by_kind["precommit"]["reused"] == 1
    assert by_kind["prevote"]["count"] == 6 and (
        by_kind["prevote"]["min_height"],
        by_kind["prevote"]["max_height"],
    ) == (3, 8)
    assert doc["refusals"] == [{"chain_id": CHAIN, "reason": "ConflictError", "count": 2}]
    assert doc["heights"] == {CHAIN: {"min": 3, "max": 8}}
    # --since: the exact time of the first height-6 record keeps heights 6..8
    cut = next(r["time"] for r in records(path) if r.get("height") == 6)
    assert main(["audit", "summary", "--json", "--since", cut, str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {s["type"]: s["count"] for s in doc["signatures"]} == {"proposal": 3, "prevote": 3, "precommit": 4}
    # a whole-second --since compares by time, not as text (".123Z" sorts before "Z")
    whole = cut[:19] + "Z"
    assert parse_time(whole) <= parse_time(cut)
    s = summarize([path], since=parse_time(whole))
    assert s.signatures[(CHAIN, "prevote")] >= 3
    assert main(["audit", "summary", "--since", "2999-01-01T00:00:00+01:00", str(path)]) == 0
    assert "no signing records" in capsys.readouterr().out
    assert main(["audit", "summary", "--since", "yesterday", str(path)]) == 2
    assert main(["audit", "summary", str(path)]) == 0
    assert "precommit" in capsys.readouterr().out


def test_summary_damage_is_an_error(log8: tuple[Path, list[bytes]]) -> None:
    path, lines = log8
    path.write_bytes(path.read_bytes()[:-20])  # a torn tail is skipped: a crash artifact, never replied to
    assert sum(summarize([path]).signatures.values()) == 7
    rewrite(path, [lines[0], b"garbage", *lines[2:]])
    with pytest.raises(AuditCorrupt, match="record 2"):
        summarize([path])
    assert main(["audit", "summary", str(path)]) == 5


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("1970-01-02") == 86_400 * 10**9
    assert parse_time("2026-11-22T19:00:00.123456789Z") % 10**9 == 123456789
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("tomorrow")


def test_order_files_sorts_each_log_by_sequence_whatever_the_given_order() -> None:
    a = [Path(f"a.log.{seq:012d}") for seq in (0, 7, 40)] + [Path("a.log")]
    b = [Path("d/b.log.000000000003"), Path("d/b.log")]
    other = Path("notes.txt")
    for shuffled in ([*reversed(a), other, *reversed(b)], [b[1], a[2], other, a[0], b[0], a[3], a[1]]):
        ordered = order_files(shuffled)
        assert sorted(ordered) == sorted(shuffled)  # nothing lost or added
        assert [p for p in ordered if p.name.startswith("a.log")] == a
        assert [p for p in ordered if p.name.startswith("b.log")] == b
