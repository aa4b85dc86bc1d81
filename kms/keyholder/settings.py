"""``[keyholder]`` in tmkms.toml: whether the keys live in a process of their own, and who may reach it.

    [keyholder]
    isolation = "process"                  # "process": key holder and front in two processes; "none": one process
    addr = "unix:///run/pykms/kh.sock"     # optional: a key holder run separately (pykms keyholder serve)
    front_user = "nobody"                  # when started as root: the unprivileged user the front runs as
    allowed_uids = [1000]                  # optional: uids the key holder answers (default: its own, and the front's)

Parsed here from the raw table, so that tmkms.toml's reader only hands the table over; errors name the file,
the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykms.errors import ConfigError

__all__ = ["KeyholderSettings", "parse_keyholder"]

ISOLATION_MODES = ("process", "none")
_KEYS = ("isolation", "addr", "front_user", "allowed_uids")
#: "none": the split's extra hop measured above its 80 µs p50 budget (docs/threat-model.md, "What it costs").
DEFAULT_ISOLATION = "none"
DEFAULT_FRONT_USER = "nobody"


@dataclass(frozen=True, slots=True)
class KeyholderSettings:
    isolation: str = DEFAULT_ISOLATION
    #: Path of an external key holder's socket (from ``unix:///...``); None: ``pykms start`` runs its own.
    addr: Path | None = None
    front_user: str = DEFAULT_FRONT_USER
    #: Extra uids the key holder answers; empty: its own uid and, when root, the front user's.
    allowed_uids: tuple[int, ...] = ()


def parse_keyholder(raw: object, path: Path) -> KeyholderSettings:
    """Validate the ``[keyholder]`` table (``raw`` None when absent)."""
    if raw is None:
        return KeyholderSettings()
    file = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table", file=file, key="keyholder", fix='write [keyholder] isolation = "process"')
    table: Mapping[str, Any] = raw
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}",
            file=file,
            key=f"keyholder.{unknown[0]}",
            fix=f"use one of {', '.join(_KEYS)}",
        )
    addr: Path | None = None
    if "addr" in table:
        value = table["addr"]
        rest = value[len("unix://") :] if isinstance(value, str) and value.startswith("unix://") else ""
        if not rest.startswith("/"):
            raise ConfigError(
                f"{value!r} is not a UNIX socket address",
                file=file,
                key="keyholder.addr",
                fix='write addr = "unix:///absolute/path/keyholder.sock" (the key holder opens no network socket)',
            )
        addr = Path(rest)
    isolation = table.get("isolation", "process" if addr is not None else DEFAULT_ISOLATION)
    if isolation not in ISOLATION_MODES:
        raise ConfigError(
            f"{isolation!r} is not an isolation mode",
            file=file,
            key="keyholder.isolation",
            fix='write isolation = "process" (keys in a process of their own) or "none" (one process)',
        )
    if addr is not None and isolation == "none":
        raise ConfigError(
            'an external key holder (addr) cannot be used with isolation = "none"',
            file=file,
            key="keyholder.addr",
            fix='remove addr, or set isolation = "process"',
        )
    front_user = table.get("front_user", DEFAULT_FRONT_USER)
    if not isinstance(front_user, str) or not front_user or front_user == "root":
        raise ConfigError(
            f"{front_user!r} is not an unprivileged user name",
            file=file,
            key="keyholder.front_user",
            fix='name a user that cannot read the key files, e.g. front_user = "nobody"',
        )
    uids = table.get("allowed_uids", [])
    if not isinstance(uids, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in uids):
        raise ConfigError(
            f"{uids!r} is not a list of uids",
            file=file,
            key="keyholder.allowed_uids",
            fix="write allowed_uids = [1000] (numeric uids allowed to ask the key holder to sign)",
        )
    return KeyholderSettings(isolation=isolation, addr=addr, front_user=front_user, allowed_uids=tuple(uids))
