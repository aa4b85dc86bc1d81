"""How ``pykms start`` runs the split: a supervisor that holds no key and parses no network input.

It starts the key holder (``pykms keyholder serve``: loads the keys and guards, listens, then says "ready" on a
pipe), then the front (``pykms start`` with ``PYKMS_KEYHOLDER_ADDR`` set, so that it builds a RemoteKeyHolder in
place of the keys). Both are started by exec in a fresh interpreter, so the front never holds a page of a process
that loaded a key. As root, the front runs as ``[keyholder] front_user`` (default "nobody"), which must not be able
to read the key files; otherwise both run as the invoking user and the key holder's non-dumpable flag keeps the
front from ptrace and /proc/PID/mem. A child that dies is restarted with backoff; SIGTERM stops both.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykms.errors import ConfigError

__all__ = [
    "ADDR_ENV",
    "Child",
    "Supervisor",
    "check_front_python",
    "die_with_supervisor",
    "front_identity",
    "run_split",
    "split_commands",
    "wants_split",
]

#: Set in the front's environment: the key holder's socket path (``unix:///...``); the front then holds no key.
ADDR_ENV = "PYKMS_KEYHOLDER_ADDR"

#: Set in both children's environment: the supervisor's pid. A child whose supervisor dies (even by SIGKILL) is
#: killed with it, so that no orphaned key holder or front outlives the ``pykms start`` an operator sees.
SUPERVISOR_ENV = "PYKMS_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: Restart backoff: doubles from the first to the last after each death within ``STABLE_S`` of its start.
BACKOFF_S = (0.1, 5.0)
STABLE_S = 10.0
#: How long the key holder may take to open its keys (a YubiHSM or a Ledger can be slow) before "ready".
READY_TIMEOUT_S = 120.0


def readable_by(path: Path, uid: int, gids: Iterable[int]) -> bool:
    """Whether a process of ``uid`` (in groups ``gids``, not root) could read ``path`` and reach it."""
    path = Path(path).absolute()
    for directory in path.parents:
        st = directory.stat()
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid in gids else 0o001
        if not st.st_mode & bit:
            return False
    st = path.stat()
    bit = 0o400 if st.st_uid == uid else 0o040 if st.st_gid in gids else 0o004
    return bool(st.st_mode & bit)


def _groups(entry: pwd.struct_passwd) -> set[int]:
    return {entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)}


def front_identity(user: str, key_files: Iterable[Path], config_path: Path) -> tuple[int, int, list[str]]:
    """(uid, gid, warnings) of the front user; ConfigError if it does not exist or is root."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"user {user!r} does not exist",
            file=str(config_path),
            key="keyholder.front_user",
            fix=f"create it (useradd --system {user}) or name another unprivileged user",
        ) from None
    if entry.pw_uid == 0:
        raise ConfigError(
            f"user {user!r} is root", file=str(config_path), key="keyholder.front_user", fix='use e.g. "nobody"'
        )
    gids = _groups(entry)
    warnings = [
        f"{path}: readable by the front user {user!r}: a compromised front could read this key "
        f"(fix: chown root {path} && chmod 600 {path}, or a directory it cannot enter)"
        for path in key_files
        if Path(path).exists() and readable_by(Path(path), entry.pw_uid, gids)
    ]
    return entry.pw_uid, entry.pw_gid, warnings


def check_front_python(user: str, config_path: Path, python: Path | None = None) -> None:
    """ConfigError unless ``user`` can reach and read the interpreter the front is exec'd with (a pyenv under
    /root, say, is out of its reach: better said at start than as a restart loop)."""
    entry = pwd.getpwnam(user)
    python = Path(os.path.realpath(python or sys.executable))
    if not readable_by(python, entry.pw_uid, _groups(entry)):
        raise ConfigError(
            f"the front user {user!r} cannot run this Python ({python})",
            file=str(config_path),
            key="keyholder.front_user",
            fix="install pykms with a Python every user can run (e.g. under /usr or /opt), or run pykms start as "
            "an unprivileged user",
        )


def die_with_supervisor() -> None:
    """In a supervised child: SIGKILL when the supervisor dies (PR_SET_PDEATHSIG), and exit now if it already has."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(pid):  # the supervisor died before the line above
        os._exit(1)


def split_commands(
    config_path: Path, socket_path: Path, front_uid: int | None, args: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The key holder's and the front's command lines (fresh interpreters of this Python); ``args`` (logging
    options) go to both."""
    base = [sys.executable, "-m", "pykms.cli.main"]
    holder = [*base, "keyholder", "serve", "-c", str(config_path), "--listen", f"unix://{socket_path}", *args]
    if front_uid is not None:
        holder += ["--allowed-uid", str(front_uid)]
    return holder, [*base, "start", "-c", str(config_path), *args]


def wants_split(config: Any) -> bool:
    """Whether ``pykms start`` supervises a key holder and a front: isolation "process", no external key holder,
    and not already the front (``PYKMS_KEYHOLDER_ADDR`` set)."""
    return config.keyholder.isolation == "process" and config.keyholder.addr is None and not os.environ.get(ADDR_ENV)


def config_key_files(config: Any) -> list[Path]:
    """The files that hold or unlock a consensus key (the front user must not read them)."""
    paths: list[Path] = []
    for entry in getattr(config.providers, "softsign", ()):
        paths += [p for p in (getattr(entry, "path", None), getattr(entry, "password_file", None)) if p]
    for entry in getattr(config.providers, "pkcs11", ()):
        paths += [p for p in (getattr(entry, "user_pin_file", None),) if p]
    for entry in getattr(config.providers, "yubihsm", ()):
        paths += [p for p in (getattr(entry.auth, "password_file", None),) if p]
    return paths


def check_front_reads(user: str, config: Any) -> None:
    """ConfigError unless ``user`` can read what the front needs: the config file and each validator's
    SecretConnection identity key (better said at start than as a restart loop of a front that cannot open them)."""
    entry = pwd.getpwnam(user)
    gids = _groups(entry)
    needed = [(Path(config.path), "")]
    needed += [
        (Path(v.secret_key), f"validator[{i}].secret_key")
        for i, v in enumerate(config.validators)
        if v.secret_key is not None and v.parsed_addr.scheme == "tcp"
    ]
    for path, key in needed:
        if readable_by(path.absolute(), entry.pw_uid, gids):
            continue
        if key:  # a secret file: pykms refuses it group-readable, so the front user must own it
            fix = f"chown {user} {path} (it stays 0600), and let {user!r} enter the directories above it"
        else:
            fix = f"chgrp {entry.pw_gid} {path} && chmod g+r {path}, and let {user!r} enter the directories above it"
        raise ConfigError(
            f"the front user {user!r} cannot read {path}, which the front needs",
            file=str(config.path),
            key=key or "keyholder.front_user",
            fix=fix + ", or name another front_user",
        )


@dataclass
class Child:
    """One supervised process: how to start it and when it may next be started."""

    name: str
    argv: list[str]
    env: dict[str, str]
    user: int | None = None
    group: int | None = None
    wait_ready: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_S[0]

    def start(self) -> None:
        """Exec the child; with ``wait_ready``, return only once it wrote "ready" on the pipe (or died)."""
        read_fd, write_fd = os.pipe() if self.wait_ready else (-1, -1)
        argv = [*self.argv, "--ready-fd", str(write_fd)] if self.wait_ready else self.argv
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user, "group": self.group, "extra_groups": []}
        try:
            self.proc = subprocess.Popen(
                argv, env=self.env, pass_fds=(write_fd,) if self.wait_ready else (), close_fds=True, **extra
            )
        finally:
            if self.wait_ready:
                os.close(write_fd)
        self.started = time.monotonic()
        if self.wait_ready:
            with os.fdopen(read_fd, "rb") as pipe:  # EOF without "ready": the child died loading its keys
                ready = _read_line(pipe, READY_TIMEOUT_S)
            if ready != b"ready\n" and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _read_line(pipe: Any, timeout: float) -> bytes:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(pipe.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


class Supervisor:
    """Keeps the key holder and the front running until ``stop`` (SIGTERM, SIGINT)."""

    def __init__(self, keyholder: Child, front: Child, *, log: Callable[..., Any] | None = None) -> None:
        self.keyholder = keyholder
        self.front = front
        self._log = log or (lambda event, **kw: print(event, kw, file=sys.stderr, flush=True))
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def _restart(self, child: Child) -> None:
        code = child.proc.returncode if child.proc is not None else None
        if time.monotonic() - child.started >= STABLE_S:
            child.backoff = BACKOFF_S[0]
        self._log("keyholder_child_restart", child=child.name, exit_code=code, after_s=child.backoff)
        if self._stop.wait(child.backoff):
            return
        child.backoff = min(child.backoff * 2, BACKOFF_S[1])
        child.start()

    def run(self) -> int:
        """Start the key holder, then the front; restart whichever dies; on stop, SIGTERM both (front first)."""
        self.keyholder.start()
        if not self.keyholder.alive():
            self._log("keyholder_start_failed", exit_code=self.keyholder.proc and self.keyholder.proc.returncode)
        try:
            self.front.start()  # inside: a front that cannot be started must not leave the key holder behind
            while not self._stop.wait(0.1):
                for child in (self.keyholder, self.front):
                    if not child.alive() and not self._stop.is_set():
                        self._restart(child)
        finally:
            for child in (self.front, self.keyholder):
                _terminate(child)
        return 0


def _terminate(child: Child, grace_s: float = 10.0) -> None:
    if child.proc is None or child.proc.poll() is not None:
        return
    child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()


def run_split(config: Any, *, args: Sequence[str] = ()) -> int:
    """``pykms start`` with ``[keyholder] isolation = "process"`` and no external ``addr``."""
    from pykms.logconfig import get_logger

    log = get_logger("pykms.supervisor").warning
    settings = config.keyholder
    front_uid = front_gid = None
    if os.getuid() == 0:
        front_uid, front_gid, warnings = front_identity(settings.front_user, config_key_files(config), config.path)
        check_front_python(settings.front_user, config.path)
        check_front_reads(settings.front_user, config)
        for warning in warnings:
            log("front_user_reads_key", warning=warning)
    run_dir = Path(tempfile.mkdtemp(prefix="pykms-keyholder-"))  # 0700, this process's
    socket_path = run_dir / "keyholder.sock"
    holder_argv, front_argv = split_commands(Path(config.path).absolute(), socket_path, front_uid, args)
    env = {k: v for k, v in os.environ.items() if k != ADDR_ENV}
    env[SUPERVISOR_ENV] = str(os.getpid())
    supervisor = Supervisor(
        Child("keyholder", holder_argv, env, wait_ready=True),
        Child("front", front_argv, {**env, ADDR_ENV: f"unix://{socket_path}"}, front_uid, front_gid),
        log=log,
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    try:
        return supervisor.run()
    finally:
        socket_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
