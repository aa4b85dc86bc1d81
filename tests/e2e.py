"""Helpers for end-to-end tests: a KMS home on disk, a real ``pykms start`` subprocess, the simulator."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from pykms.harness.simulator import SignerLink, ValidatorSimulator
from pykms.privval.codec import Dialect


@dataclass
class KmsProcess:
    """A running ``pykms start`` with its log file."""

    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    #: More subprocess.Popen arguments (cwd, preexec_fn) for tests that shape the process itself.
    popen_kwargs: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        LOGS.append(self.log_path)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        log = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "pykms.cli.main", "start", "-c", str(self.config), "--log-format", "json"]
        if os.getuid() == 0 and 'isolation = "process"' in self.config.read_text():
            # As root the front would run as an unprivileged user, and this machine's Python lives where no such
            # user can run it: an unprivileged user namespace makes the whole of pykms one ordinary user instead.
            argv = ["unshare", "--user", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            **self.popen_kwargs,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


#: Every consensus and identity seed the e2e helpers create, for the session-end secrets scan (tests/conftest.py).
SECRETS: list[bytes] = []
#: Every pykms log file a KmsProcess wrote, scanned for key material at session end (tests/conftest.py).
LOGS: list[Path] = []


def register_log(path: Path) -> None:
    """Add a log file written outside KmsProcess (a test's own subprocess) to the session-end secrets scan."""
    LOGS.append(path)


def _remember_secrets(home: Path) -> None:
    import base64

    for key in (home / "secrets").glob("*.key"):
        try:
            SECRETS.append(base64.b64decode(key.read_text().strip()))
        except ValueError:
            continue


#: ``PYKMS_TEST_ISOLATION=process`` (or ``none``): every home written here gets ``[keyholder] isolation`` set to it,
#: so the e2e suites run against the split key holder/front as well as the single process.
ISOLATION_ENV = "PYKMS_TEST_ISOLATION"


def isolation() -> str | None:
    """The isolation mode the e2e homes are written with (None: the configured default)."""
    return os.environ.get(ISOLATION_ENV) or None


def set_isolation(config: Path, mode: str | None = None) -> Path:
    """Append ``[keyholder] isolation = mode`` (default: $PYKMS_TEST_ISOLATION; nothing when unset) to ``config``."""
    mode = mode or isolation()
    if mode:
        with open(config, "a") as out:
            out.write(f'\n[keyholder]\nisolation = "{mode}"\n')
    return config


def write_multi_home(
    home: Path, chains: dict[str, list[str]], *, state_format: str = "slots", protocol_version: str = "v0.38"
) -> Path:
    """One config for several chains, each with its own key, state and one [[validator]] per sentry address."""
    from pykms.harness.demo import write_multichain_home

    config = write_multichain_home(home, chains, state_format=state_format, protocol_version=protocol_version)
    for chain_id in chains:
        _remember_secrets(home / chain_id)
    return set_isolation(config)


def write_home(
    home: Path,
    addrs: list[str],
    *,
    chain_id: str = "test-chain",
    protocol_version: str = "v0.38",
    state_format: str = "json",
    extra_chain: str = "",
    extra_validator: str = "",
) -> Path:
    """Like the demo's home, with one [[validator]] per address (several sentries for one chain)."""
    from pykms.harness.demo import add_sentries, write_demo_home

    config = write_demo_home(
        home, addrs[0], chain_id=chain_id, protocol_version=protocol_version, state_format=state_format
    )
    _remember_secrets(home)
    text = add_sentries(config.read_text(), addrs)
    if extra_chain:
        text = text.replace("[[providers.softsign]]", extra_chain + "\n[[providers.softsign]]", 1)
    if extra_validator:
        text = text.replace("reconnect = true\n", "reconnect = true\n" + extra_validator + "\n")
    config.write_text(text)
    return set_isolation(config)


@contextlib.contextmanager
def running_kms(
    tmp_path: Path,
    *,
    dialect: Dialect = Dialect.V0_38,
    sentries: int = 1,
    unix: bool = False,
    chain_id: str = "test-chain",
    state_format: str = "json",
) -> Iterator[tuple[KmsProcess, list[ValidatorSimulator]]]:
    sims = []
    addrs = []
    for i in range(sentries):
        addr = f"unix://{tmp_path}/node{i}.sock" if unix else "tcp://127.0.0.1:0"
        sim = ValidatorSimulator(addr, chain_id=chain_id, dialect=dialect)
        addrs.append(sim.listen())
        sims.append(sim)
    config = write_home(
        tmp_path / "kms", addrs, chain_id=chain_id, protocol_version=dialect.value, state_format=state_format
    )
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        yield kms, sims
    finally:
        kms.stop()
        for sim in sims:
            sim.close()


def verify(pub: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(pub).verify(message, signature)
        return True
    except Exception:
        return False


def accept(sim: ValidatorSimulator, kms: KmsProcess, timeout: float = 20) -> SignerLink:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sim.accept(timeout=1)
        except TimeoutError:
            if kms.proc is not None and kms.proc.poll() is not None:
                raise AssertionError(f"pykms exited with {kms.proc.returncode}:\n{kms.log_text()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"pykms did not connect:\n{kms.log_text()}") from None
