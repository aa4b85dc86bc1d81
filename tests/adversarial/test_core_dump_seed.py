"""A crash of pykms with core dumps enabled must not put the consensus seed on disk.

Started outside the systemd unit (LimitCORE=0) with ``ulimit -c unlimited``, a pykms that aborts after loading
its key would leave a core file holding the seed. The control shows the same setup does write a core with the seed
for a process that loaded the key without protecting itself, so the pykms case proves something.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from tests.e2e import KmsProcess, accept, write_home

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


@contextlib.contextmanager
def plain_core_files() -> Iterator[None]:
    """Cores written as ./core in the crashing process's directory; the previous pattern is restored after."""
    try:
        old = CORE_PATTERN.read_text().strip()
    except OSError:
        pytest.skip("no /proc/sys/kernel/core_pattern: not Linux")
    if old != "core":
        if os.geteuid() != 0:
            pytest.skip(f"core_pattern is {old!r} (not a plain file) and changing it needs root")
        CORE_PATTERN.write_text("core")
    try:
        yield
    finally:
        if old != "core":
            CORE_PATTERN.write_text(old)


def _cores_allowed() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def _cores(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name == "core" or p.name.startswith("core.")]


def _seed(config: Path) -> bytes:
    key = next((config.parent / "secrets").glob("*-consensus.key"))
    return base64.b64decode(key.read_text().strip())


def _check_limits() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard != resource.RLIM_INFINITY and hard < 64 * 1024 * 1024:
        pytest.skip(f"the hard core-size limit ({hard}) is too small for a Python core")


def test_control_an_unprotected_process_dumps_its_seed(tmp_path: Path) -> None:
    _check_limits()
    sim = ValidatorSimulator("tcp://127.0.0.1:0")
    config = write_home(tmp_path / "kms", [sim.listen()])
    sim.close()
    seed = _seed(config)
    crash_dir = tmp_path / "control"
    crash_dir.mkdir()
    loader = (
        "import base64, os, sys\n"
        "from nacl.signing import SigningKey\n"
        "key = SigningKey(base64.b64decode(open(sys.argv[1]).read().strip()))\n"
        "os.abort()\n"
    )
    key_path = next((config.parent / "secrets").glob("*-consensus.key"))
    with plain_core_files():
        proc = subprocess.run(
            [sys.executable, "-c", loader, str(key_path)], cwd=crash_dir, preexec_fn=_cores_allowed, check=False
        )
    assert proc.returncode == -signal.SIGABRT
    cores = _cores(crash_dir)
    assert cores, "the test setup writes no core at all: the pykms test below would prove nothing"
    assert any(seed in core.read_bytes() for core in cores)


def test_aborted_pykms_leaves_no_core_with_the_seed(tmp_path: Path) -> None:
    _check_limits()
    sim = ValidatorSimulator("tcp://127.0.0.1:0")
    config = write_home(tmp_path / "kms", [sim.listen()])
    seed = _seed(config)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    with plain_core_files():
        kms = KmsProcess(config, tmp_path / "pykms.log", popen_kwargs={"cwd": crash_dir, "preexec_fn": _cores_allowed})
        kms.start()
        proc = kms.proc
        assert proc is not None
        try:
            link = accept(sim, kms)
            resp = link.sign_vote(make_vote(1, 0, PREVOTE, b"core"))  # the key is loaded and has signed
            assert resp.error is None
            proc.send_signal(signal.SIGABRT)
            assert proc.wait(timeout=30) == -signal.SIGABRT
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sim.close()
        time.sleep(0.5)  # a core is written by the kernel as the process dies; give a pipe handler a moment
    for core in _cores(crash_dir):
        assert seed not in core.read_bytes(), f"{core} holds the consensus seed"
    assert not _cores(crash_dir), "pykms wrote a core file"
