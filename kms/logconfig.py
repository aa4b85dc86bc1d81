"""structlog, configured once: console lines on a TTY, JSON lines otherwise, secrets redacted.

Event names are stable snake_case (``vote_signed``, ``double_sign_refused``, ``validator_connected``) so that
operators can alert on them. Context (chain id, validator address) is bound per connection.

``pykms start`` writes through a ``BackgroundLineWriter`` (``background=True``): a signing thread renders its line
and queues it; one writer thread writes what has gathered every ~10 ms in one write(2). With a lock and
a write per line (structlog's PrintLogger), 40 sentries signing at once queued on the log's lock. Lines
reach the output within ~10 ms and in order; on exit the queue is drained; a SIGKILL can lose the last ~10 ms of
lines (the audit log, written before each reply, is the durable record). The line of every signing request is
rendered by ``info_line``, without structlog's processor chain.

Redaction is a last line of defence: no code path logs key material on purpose, but any event field whose name
suggests a secret is replaced, and any bytes value longer than a signature is shortened, so a mistake cannot
print a key.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["BackgroundLineWriter", "configure_logging", "flush_logs", "get_logger", "info_line", "redact_secrets"]

LogFormat = Literal["console", "json", "auto"]

_SECRET_WORDS = ("secret", "seed", "password", "passwd", "pin", "priv", "mnemonic", "dsn", "private")


@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    """Whether a field name looks secret. Field names are few and fixed, so each is judged once (per line the
    check was the costliest step of rendering, 6 µs of ~17); the cache is bounded, whatever callers pass."""
    return any(word in _SECRET_WORDS for word in key.lower().split("_"))


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop values of secret-looking fields; show bytes as short hex prefixes.

    Values are replaced in place (the keys do not change while iterating); the common value types skip the
    isinstance check, which made this the costliest step of a signing line."""
    for key, value in event.items():
        if _secret_name(key):
            event[key] = "[redacted]"
        elif type(value) not in _PLAIN_TYPES and isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            event[key] = raw[:8].hex() + ("…" if len(raw) > 8 else "")
    return event


#: Value types that are never binary: no isinstance check for them.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


class BackgroundLineWriter:
    """A structlog logger (and a file-like ``write``) whose lines a daemon thread writes in batches.

    The writer blocks until a line arrives, then lets ``BATCH_S`` pass so that the lines of several signatures
    share one write(2) and one wake-up; a caller never waits for the output (one queue put, no lock).
    """

    BATCH_S = 0.01
    #: Lines held at most while the output is stuck (a stalled journald, a full pipe): beyond, new lines are
    #: dropped and counted — signing never waits for the log, and memory stays bounded (~30 MB).
    MAX_QUEUED = 100_000

    def __init__(self, out: Any, *, max_queued: int = MAX_QUEUED) -> None:
        self._out = out
        self._items: queue.SimpleQueue[str | threading.Event] = queue.SimpleQueue()
        self._max_queued = max_queued
        #: Lines dropped since the last notice (approximate under races: a count for the operator, not a ledger).
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="pykms-log", daemon=True)
        self._thread.start()
        atexit.register(self.drain)

    def msg(self, message: str) -> None:
        self.write(message + "\n")

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg

    def write(self, text: str) -> int:
        """File-like, for the stdlib logging handler: its records join the same ordered stream."""
        if self._items.qsize() >= self._max_queued:
            self.dropped += 1
        else:
            self._items.put(text)
        return len(text)

    def flush(self) -> None:
        """File-like no-op: the writer flushes after every batch (the stdlib handler calls this per record)."""

    def drain(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) until everything queued before this call has been written."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return
        done = threading.Event()
        self._items.put(done)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if isinstance(item, str):
                time.sleep(self.BATCH_S)
            lines: list[str] = []
            waiting: list[threading.Event] = []
            while True:
                if isinstance(item, str):
                    lines.append(item)
                else:
                    waiting.append(item)
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    break
            dropped, self.dropped = self.dropped, 0
            if dropped:
                lines.append(json.dumps({"event": "log_lines_dropped", "count": dropped, "level": "warning"}) + "\n")
            if lines:
                try:
                    self._out.write("".join(lines))
                    self._out.flush()
                except (OSError, ValueError):  # a closed or broken output: nothing useful left to do
                    pass
            for done in waiting:
                done.set()


_writer: BackgroundLineWriter | None = None
#: The JSON lines go through the background writer: ``info_line`` may render them itself.
_direct_json = False


def configure_logging(
    fmt: LogFormat = "auto", *, verbose: bool = False, stream: Any = None, background: bool = False
) -> None:
    """Set up structlog and the stdlib root logger (libraries log through it) to one output stream.

    ``background``: write through a ``BackgroundLineWriter`` (the daemon; see the module doc)."""
    global _writer, _direct_json
    out = stream if stream is not None else sys.stderr
    writer: BackgroundLineWriter | None = None
    if background:
        if _writer is not None:
            _writer.drain()  # a second configuration: what the old writer holds goes out first
        _writer = writer = BackgroundLineWriter(out)
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    level = logging.DEBUG if verbose else logging.INFO
    renderer: Any = (
        # plain_traceback: never a formatter that prints local variables (they may hold key material).
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    _direct_json = fmt == "json" and writer is not None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out) if writer is None else lambda *_args: writer,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=logging.WARNING, stream=writer or out, format="%(levelname)s %(name)s: %(message)s", force=True
    )


def flush_logs() -> None:
    """Write out what the background writer holds (before exiting, or when a test reads the output)."""
    if _writer is not None:
        _writer.drain()


def get_logger(name: str = "pykms", **context: Any) -> Any:
    """A bound structlog logger with ``context`` attached to every event."""
    return structlog.get_logger(name).bind(**context)


def info_line(log: Any, event: str, **fields: Any) -> None:
    """``log.info(event, **fields)`` for the one line of every signing request: the same JSON line as the
    processor chain above (bound context, fields, event, level, UTC timestamp; secrets redacted), rendered
    directly. structlog's chain cost ~30 µs of CPU per line, a tenth of a request's; this costs a third of it.
    Anything else (console format, a foreground writer, context variables bound) takes structlog's path."""
    writer = _writer
    if not _direct_json or writer is None or structlog.contextvars.get_contextvars():
        log.info(event, **fields)
        return
    line = dict(structlog.get_context(log))
    line.update(fields)
    line["event"] = event
    line["level"] = "info"
    line["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    writer.msg(json.dumps(redact_secrets(None, "info", line)))
