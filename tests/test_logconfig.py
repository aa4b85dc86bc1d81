"""The daemon's log output: lines are queued by the signing threads and written in batches by one writer
thread, in order, with nothing lost on drain, and redaction still applied before a line is queued."""

from __future__ import annotations

import io
import json
import threading
import time

import structlog

from pykms.logconfig import BackgroundLineWriter, configure_logging, flush_logs, get_logger, info_line, redact_secrets


class CountingOut(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_from_many_threads_arrive_whole_and_in_order() -> None:
    out = CountingOut()
    writer = BackgroundLineWriter(out)

    def emit(thread: int) -> None:
        for i in range(300):
            writer.msg(f"t{thread} {i}")

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.drain()
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 * 300
    for t in range(8):
        mine = [int(line.split()[1]) for line in lines if line.startswith(f"t{t} ")]
        assert mine == list(range(300))
    # Batched: far fewer writes than lines.
    assert out.writes < len(lines) / 4


def test_drain_waits_for_what_was_queued_and_writer_survives_a_broken_output() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk gone")

    writer = BackgroundLineWriter(Broken())
    writer.msg("lost")
    writer.drain()  # returns: the failed write is swallowed, the thread lives on
    writer._out = out = io.StringIO()
    writer.msg("after")
    writer.write("stdlib record\n")
    writer.flush()  # file-like no-op
    writer.drain()
    assert out.getvalue() == "after\nstdlib record\n"


def test_structlog_through_the_background_writer_keeps_redaction() -> None:
    out = io.StringIO()
    try:
        configure_logging("json", stream=out, background=True)
        log = get_logger("pykms", chain_id="c")
        log.info("vote_signed", height=5, seed_hex="00" * 32, signature=b"\x01" * 64)
        flush_logs()
        record = json.loads(out.getvalue().splitlines()[-1])
        assert record["event"] == "vote_signed" and record["height"] == 5 and record["chain_id"] == "c"
        assert record["seed_hex"] == "[redacted]"
        assert record["signature"] == "01" * 8 + "…"
    finally:
        configure_logging("json", stream=io.StringIO())
        structlog.reset_defaults()


def test_redaction_by_field_name_words_and_bytes() -> None:
    event = {
        "event": "seed_loaded",  # the event name itself is never redacted
        "user_pin": "1234",
        "Private_Key": "k",
        "dsn": "postgres://u:p@h/db",
        "seed": b"\x00" * 32,
        "pinned": 1,  # a word of its own, not "pin"
        "signature": memoryview(b"\x01" * 64),
        "short": bytearray(b"\x02\x03"),
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["event"] == "seed_loaded"
    assert out["user_pin"] == out["Private_Key"] == out["dsn"] == out["seed"] == "[redacted]"
    assert out["pinned"] == 1
    assert out["signature"] == "01" * 8 + "…"
    assert out["short"] == "0203"
    assert redact_secrets(None, "info", dict(event)) == out  # the cached verdicts give the same answer


def test_a_stuck_output_drops_lines_beyond_the_bound_and_says_how_many() -> None:
    """A stalled log reader never blocks the signing threads nor grows memory without bound."""
    release = threading.Event()

    class Stuck(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(10)
            return super().write(text)

    out = Stuck()
    writer = BackgroundLineWriter(out, max_queued=50)
    writer.msg("first")  # the writer takes it and blocks in write()
    time.sleep(0.05)
    for i in range(200):
        writer.msg(f"line {i}")  # returns at once even though the output is stuck
    assert writer.dropped >= 150 - 1
    release.set()
    writer.drain()
    lines = out.getvalue().splitlines()
    assert lines[0] == "first"
    kept = [line for line in lines if line.startswith("line ")]
    assert kept == [f"line {i}" for i in range(len(kept))] and 49 <= len(kept) <= 51
    notice = json.loads(lines[-1])
    assert notice["event"] == "log_lines_dropped" and notice["count"] == 200 - len(kept)


def test_info_line_writes_the_line_structlog_would_with_redaction_and_falls_back_elsewhere() -> None:
    """The signing line's direct renderer: same keys in the same order, same values, secrets redacted; with the
    console format or context variables bound it goes through structlog (which knows them)."""
    out = io.StringIO()
    fields = {"height": 5, "round": 0, "step": 3, "block": "89a1a98e709f", "ms": 0.42, "extension": True}
    try:
        configure_logging("json", stream=out, background=True)
        log = get_logger("pykms.session", chain_id="c", validator="tcp://127.0.0.1:1")
        log.info("precommit_signed", **fields, seed_hex="00" * 32, sig=b"\x01" * 64, note="naïve")
        direct_only = log.bind()
        direct_only.info = _not_structlog  # the direct renderer must not take structlog's path here
        info_line(direct_only, "precommit_signed", **fields, seed_hex="00" * 32, sig=b"\x01" * 64, note="naïve")
        flush_logs()
        via_structlog, direct = (json.loads(line) for line in out.getvalue().splitlines()[-2:])
        assert direct.pop("timestamp").endswith("Z") and via_structlog.pop("timestamp").endswith("Z")
        assert list(direct.items()) == list(via_structlog.items())
        assert direct["seed_hex"] == "[redacted]" and direct["sig"] == "01" * 8 + "…" and direct["level"] == "info"
        assert out.getvalue().splitlines()[-1].count("\\u2026") == 1  # the same escaping as structlog's JSON

        with structlog.contextvars.bound_contextvars(request_id="r1"):
            info_line(log, "prevote_signed", height=6)
        flush_logs()
        assert json.loads(out.getvalue().splitlines()[-1])["request_id"] == "r1"

        console = io.StringIO()
        configure_logging("console", stream=console, background=True)
        info_line(get_logger("pykms.session", chain_id="c"), "prevote_signed", height=7)
        flush_logs()
        assert "prevote_signed" in console.getvalue() and not console.getvalue().lstrip().startswith("{")
    finally:
        configure_logging("json", stream=io.StringIO())
        structlog.reset_defaults()


def _not_structlog(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("info_line went through structlog's processor chain")
