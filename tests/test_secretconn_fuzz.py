"""The SecretConnection fuzz targets' properties under hypothesis (the atheris runs are in tests/fuzz/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _load(name: str) -> ModuleType:
    path = Path(__file__).parent / "fuzz" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRAMES = _load("fuzz_frames")
HANDSHAKE = _load("fuzz_handshake")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_fuzz_frames_property(data: bytes) -> None:
    FRAMES.TestOneInput(data)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_fuzz_handshake_property(data: bytes) -> None:
    HANDSHAKE.TestOneInput(data)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_fuzz_handshake_near_valid_auth_sig(mode_byte: int, tail: bytes) -> None:
    """Mode 2 with plaintexts that start like an AuthSigMessage, so the parser's deeper branches are reached."""
    head = bytes([0x66, 0x0A, 0x22, 0x0A, 0x20]) + bytes(32) + bytes([0x12, 0x40])
    HANDSHAKE.TestOneInput(bytes([(mode_byte & ~3) | 2]) + head + tail)
    secp = bytes([0x67, 0x0A, 0x23, 0x12, 0x21]) + bytes(33) + bytes([0x12, 0x40])
    HANDSHAKE.TestOneInput(bytes([(mode_byte & ~3) | 2]) + secp + tail)


def test_fuzz_seeds() -> None:
    """Fixed inputs that reach each mode of both targets."""
    for first in range(12):
        FRAMES.TestOneInput(bytes([first]) + bytes(range(256)) * 5)
        HANDSHAKE.TestOneInput(bytes([first]) + bytes(range(256)))
