"""The memory scanner finds a key in a process that holds one, and nothing in one that never saw it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.memscan import scan_process

pytestmark = pytest.mark.skipif(os.getuid() != 0 or not sys.platform.startswith("linux"), reason="root on Linux")

#: The child reads its seed from stdin (not argv: then the seed would be in memory only as our own test input),
#: makes a PyNaCl key of it, drops every Python copy it can, signs once and waits.
HOLDER = """
import sys, nacl.signing
from pykms.hardening import make_undumpable
make_undumpable()
key = nacl.signing.SigningKey(bytes.fromhex(sys.stdin.readline().strip()))
key.sign(b"x")
print("ready", flush=True)
sys.stdin.readline()
"""
IDLE = """
import sys, nacl.signing
print("ready", flush=True)
sys.stdin.readline()
"""


def _run(code: str, seed: bytes | None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    if seed is not None:
        proc.stdin.write(seed.hex() + "\n")
        proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def test_finds_the_key_of_a_process_that_holds_one_even_undumpable() -> None:
    seed = os.urandom(32)
    proc = _run(HOLDER, seed)
    try:
        result = scan_process(proc.pid, [seed])
    finally:
        _stop(proc)
    print(f"read {result.bytes_read / 1e6:.1f} MB in {result.regions_read} regions, hits: {result.hits[:4]}")
    assert any(hit.endswith("seed raw") for hit in result.hits), result
    assert result.bytes_read > 1_000_000


def test_finds_nothing_in_a_process_that_never_saw_the_key() -> None:
    seed = os.urandom(32)
    proc = _run(IDLE, None)
    try:
        result = scan_process(proc.pid, [seed])
    finally:
        _stop(proc)
    assert result.hits == [] and result.regions_read > 5
