"""The signer's SecretConnection identity file (tmkms kms-identity.key: base64 of a 32-byte Ed25519 seed)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.errors import KeyFileError
from pykms.secretconn.identity import generate_identity, load_identity, node_id

# tests/vectors/README.md V11: tmkms softsign form of the cometbft harness fixture key (tools/tm-signer-harness
# internal/test_harness_test.go, commit 13c1ef3d42^): seed base64 and its public key / address.
HARNESS_SEED_B64 = "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt0="
HARNESS_PUB_B64 = "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="


def _write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_load_known_key_with_trailing_whitespace(tmp_path: Path) -> None:
    key = load_identity(_write(tmp_path / "kms-identity.key", HARNESS_SEED_B64.encode() + b"\n \t\n"))
    assert base64.b64encode(bytes(key.verify_key)).decode() == HARNESS_PUB_B64
    # address D08FCA3B... (V11) is the same SHA-256[:20] as the node ID, in upper case
    assert node_id(bytes(key.verify_key)) == "d08fca3ba74cf17cbfc15e64f9505302bb0e2748"


def test_generate_then_load(tmp_path: Path) -> None:
    path = tmp_path / "kms-identity.key"
    made = generate_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(load_identity(path).verify_key) == bytes(made.verify_key)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_identity(path)  # never overwrites a key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "kms-identity.key", HARNESS_SEED_B64.encode(), mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        load_identity(path)
    assert HARNESS_SEED_B64 not in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not base64 at all!", "not base64"),
        (base64.b64encode(bytes(31)), "31 bytes"),
        (base64.b64encode(bytes(64)), "64 bytes"),
    ],
)
def test_malformed_refused_without_echoing_content(tmp_path: Path, content: bytes, match: str) -> None:
    with pytest.raises(KeyFileError, match=match) as info:
        load_identity(_write(tmp_path / "kms-identity.key", content))
    assert content.decode() not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such file"):
        load_identity(tmp_path / "absent.key")


def test_identity_signs_like_the_seed(tmp_path: Path) -> None:
    seed = base64.b64decode(HARNESS_SEED_B64)
    key = load_identity(_write(tmp_path / "k", HARNESS_SEED_B64.encode()))
    assert key.sign(b"m").signature == SigningKey(seed).sign(b"m").signature
