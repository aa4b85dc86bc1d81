"""Secret files on disk: written 0600, refused when group- or world-readable.

Every key, identity and state file goes through here so the permission rule is enforced in one place. Errors
name the path and the chmod that fixes it, never the file's content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pykms.errors import KeyFileError

__all__ = ["fsync_dir", "read_secret_file", "write_secret_file"]


def read_secret_file(path: Path) -> bytes:
    """Read a secret file, refused when anyone but its owner can read or write it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot stat ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(mode):04o} let other users read the key (fix: chmod 600 {path})"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 and ``data``, durably (fsync of file and directory).

    The file is created with O_EXCL unless ``overwrite``; it is never world-readable, not even for an instant,
    because the mode is given to open(2) rather than applied afterwards.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, 0o600)  # O_TRUNC keeps the mode of a file that existed
        file.write(data)
        file.flush()
        os.fsync(fd)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable (the entry lives in the directory, not the file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
