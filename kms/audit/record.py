"""The audit record format: canonical JSON, its hash, the timestamps, and the errors of the audit log.

Shared by the writer and the readers, so both agree on what a record's hash covers.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from pykms.errors import StateCorrupt, StateError

ZERO_HASH = "0" * 64
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
    """Complete lines, and the fragment after the last newline (b"" when the file ends cleanly); zero bytes at the
    end are preallocation padding, not content."""
    data = data.rstrip(b"\0")
    lines = data.split(b"\n")
    torn = lines.pop()
    return lines, torn
