"""The HA test stack's cleanup (tests/patroni_stack.py): what a dead run left behind is swept, a live run's not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.patroni_stack import PREFIX, sweep_leftovers

#: A process naming the stack directory on its command line, with a child in a session of its own (as every
#: PostgreSQL backend is) whose command line does not name it.
_PARENT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)']); time.sleep(600)"
)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _leftover(base: Path, owner: dict[str, object]) -> tuple[Path, subprocess.Popen[bytes], int]:
    """A stack directory, a frozen process naming it, and that process's child."""
    root = base / (PREFIX + "test")
    root.mkdir()
    (root / "owner.json").write_text(json.dumps(owner))
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(root)], start_new_session=True)
    deadline = time.monotonic() + 20
    children: list[int] = []
    while not children and time.monotonic() < deadline:
        time.sleep(0.1)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if _ppid(int(stat.parent.name)) == parent.pid:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
    assert children, "the child process did not start"
    os.kill(parent.pid, signal.SIGSTOP)  # a frozen process must be swept too
    return root, parent, children[0]


def test_sweep_removes_a_dead_runs_stack(tmp_path: Path) -> None:
    root, parent, child = _leftover(tmp_path, {"pid": 2**22 + 1, "start": "0"})  # an owner that cannot exist
    sweep_leftovers(tmp_path)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the child of a swept process survived"
    assert not root.exists()


def test_sweep_keeps_a_live_runs_stack(tmp_path: Path) -> None:
    start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    root, parent, child = _leftover(tmp_path, {"pid": os.getpid(), "start": start})
    try:
        sweep_leftovers(tmp_path)
        assert root.exists() and parent.poll() is None and _alive(child)
    finally:
        for pid in (parent.pid, child):
            os.kill(pid, signal.SIGKILL)
        os.kill(parent.pid, signal.SIGCONT)
        parent.wait(10)
