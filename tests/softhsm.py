"""A fresh SoftHSM2 token per test: its own token directory, its own SOFTHSM2_CONF, initialised by softhsm2-util.

SoftHSM2 reads SOFTHSM2_CONF when the module is initialised (C_Initialize), and python-pkcs11 keeps one loaded
library per path for the whole process, so ``softhsm_token`` finalises that library before and after each test:
the next initialisation then sees only this test's token directory.

Use from a test module::

    from tests.softhsm import SoftHsm, fresh_token

    @pytest.fixture
    def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
        with fresh_token(tmp_path, monkeypatch) as token:
            yield token

    @pytest.mark.softhsm
    def test_x(hsm: SoftHsm) -> None: ...

A subprocess (``pykms start`` in an end-to-end test) needs ``env=hsm.env()``; ``hsm.pin_file(dir)`` writes the
0600 PIN file ``user_pin_file`` expects, and ``hsm.module`` / ``hsm.label`` / ``hsm.slot`` fill the rest of
``[[providers.pkcs11]]``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SoftHsm", "finalize_module", "find_module", "fresh_token", "make_token", "require_softhsm"]

#: Where Debian's softhsm2 package installs the module (libsofthsm2 2.6.1); PYKMS_SOFTHSM2_MODULE overrides.
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

USER_PIN = "246810"
SO_PIN = "13579111"


def find_module() -> Path | None:
    """The SoftHSM2 PKCS#11 module, or None when it is not installed."""
    override = os.environ.get("PYKMS_SOFTHSM2_MODULE")
    for candidate in ((override,) if override else ()) + _MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def require_softhsm() -> Path:
    """Skip the calling test, with the reason, unless softhsm2-util and the module are installed."""
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2-util not found: install the Debian package softhsm2 (.ci/run does)")
    module = find_module()
    if module is None:
        pytest.skip("libsofthsm2.so not found: install the Debian package softhsm2 or set PYKMS_SOFTHSM2_MODULE")
    return module


@dataclass(frozen=True)
class SoftHsm:
    """One initialised token: where its files are and how to reach it."""

    module: Path
    conf: Path
    token_dir: Path
    label: str
    user_pin: str
    so_pin: str
    slot: int

    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to see this token (and only it)."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def pin_file(self, directory: Path) -> Path:
        """A 0600 file holding the user PIN, as ``user_pin_file`` expects."""
        path = directory / "pkcs11-pin"
        path.write_text(self.user_pin + "\n")
        path.chmod(0o600)
        return path


def make_token(directory: Path, *, label: str = "pykms", user_pin: str = USER_PIN, so_pin: str = SO_PIN) -> SoftHsm:
    """Create ``directory``/tokens and a softhsm2.conf pointing at it, and initialise one token there.

    The caller must put ``SOFTHSM2_CONF`` in the environment (``softhsm_token`` does) before loading the module.
    """
    module = require_softhsm()
    token_dir = directory / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    # Keys of softhsm2.conf(5); removable=false keeps slot ids stable within one initialisation.
    conf.write_text(
        f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    result = subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", user_pin, "--so-pin", so_pin],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token failed: {result.stderr.strip()}")
    # "The token has been initialized and is reassigned to slot N" (softhsm2-util 2.6 output).
    slot = int(result.stdout.strip().split()[-1])
    return SoftHsm(module, conf, token_dir, label, user_pin, so_pin, slot)


def finalize_module(module: Path) -> None:
    """Finalise python-pkcs11's cached copy of the module so the next load re-reads SOFTHSM2_CONF."""
    import pkcs11

    lib = pkcs11.lib(str(module))  # returns the cached library, initialising it if needed
    if lib.initialized:
        lib.finalize()


@contextlib.contextmanager
def fresh_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, label: str = "pykms") -> Iterator[SoftHsm]:
    """A fresh token in this test's own directory, with SOFTHSM2_CONF set for the test's duration."""
    hsm = make_token(tmp_path / "softhsm", label=label)
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    finalize_module(hsm.module)
    try:
        yield hsm
    finally:
        finalize_module(hsm.module)
