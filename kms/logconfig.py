"""structlog, configured once: console lines on a TTY, JSON lines otherwise, secrets redacted.

Event names are stable snake_case (``vote_signed``, ``double_sign_refused``, ``validator_connected``) so that
operators can alert on them. Context (chain id, validator address) is bound per connection.

Redaction is a last line of defence: no code path logs key material on purpose, but any event field whose name
suggests a secret is replaced, and any bytes value longer than a signature is shortened, so a mistake cannot
print a key.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["LogFormat", "configure_logging", "get_logger", "redact_secrets"]

LogFormat = Literal["console", "json", "auto"]

_SECRET_WORDS = ("secret", "seed", "password", "passwd", "pin", "priv", "mnemonic", "dsn", "private")


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop values of secret-looking fields; show bytes as short hex prefixes."""
    for key in list(event):
        if key != "event" and any(word in _SECRET_WORDS for word in key.lower().split("_")):
            event[key] = "[redacted]"
            continue
        value = event[key]
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            event[key] = raw[:8].hex() + ("…" if len(raw) > 8 else "")
    return event


def configure_logging(fmt: LogFormat = "auto", *, verbose: bool = False, stream: Any = None) -> None:
    """Set up structlog and the stdlib root logger (libraries log through it) to one output stream."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    level = logging.DEBUG if verbose else logging.INFO
    renderer: Any = (
        # plain_traceback: never a formatter that prints local variables (they may hold key material).
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
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
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s", force=True)


def get_logger(name: str = "pykms", **context: Any) -> Any:
    """A bound structlog logger with ``context`` attached to every event."""
    return structlog.get_logger(name).bind(**context)
