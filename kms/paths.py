"""Relative paths in tmkms.toml: tmkms's rule (the working directory) and pykms's (the config file's folder).

tmkms hands paths to the OS as written, so ``secrets/x.key`` is found under the directory tmkms was started
from; pykms has resolved them against the config file's folder so that ``pykms start -c /etc/kms/tmkms.toml``
works from anywhere. Both must work for a tmkms layout started from its usual directory, so a relative path
is looked up at both places:

- one place (both the same folder, or the same file seen twice): that one;
- it exists at only one of them: that one;
- it exists at both, with the same bytes: the config file's folder (nothing to tell apart);
- it exists at both, differently: refused, naming both (which one the operator means cannot be guessed, and a
  wrong key or state file is the mistake that costs most);
- at neither (a file pykms will create: a state file, an audit log): the config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["AmbiguousPath", "resolve_relative"]


class AmbiguousPath(Exception):
    """The same relative path names two different files; the message names both."""

    def __init__(self, value: str, cwd_path: Path, base_path: Path) -> None:
        self.cwd_path = cwd_path
        super().__init__(
            f"{value!r} exists both under the working directory ({cwd_path}) and beside the config file "
            f"({base_path}), with different contents"
        )


def _same_contents(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if a.is_dir() or b.is_dir():
            return False
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def resolve_relative(value: str, base: Path) -> Path:
    """The path ``value`` names (see the module docstring); AmbiguousPath when it names two different files."""
    path = Path(value)
    if path.is_absolute():
        return path
    at_base = base / path
    try:
        at_cwd = Path.cwd() / path
    except OSError:  # the working directory was removed: only the config's folder is left
        return at_base
    if at_base.absolute() == at_cwd.absolute():
        return at_base
    in_base, in_cwd = at_base.exists(), at_cwd.exists()
    if in_cwd and not in_base:
        return at_cwd.absolute()
    if in_cwd and in_base and not _same_contents(at_cwd, at_base):
        raise AmbiguousPath(value, at_cwd.absolute(), at_base)
    return at_base
