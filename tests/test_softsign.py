"""softsign: every key format tmkms reads, V11 known-answer keys, D2 signatures, permissions, secrecy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from pykms.config import SoftsignConfig
from pykms.errors import FatalProviderError, KeyFileError, TransientProviderError
from pykms.keyring import consensus_address
from pykms.providers.signer import Signer
from pykms.providers.softsign import (
    SoftsignSigner,
    import_priv_validator_key,
    keygen,
    load_signing_key,
)

# test vector V11: (source, seed hex, pub base64, address, priv_key.value or None, tmkms base64 seed or None)
V11 = [
    pytest.param(
        "f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add",
        "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc=",
        "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",
        "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt1kKy5ONpzMTKifvSeYrHC/C76Oqturk4ffJCNwrRIXFw==",
        "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt0=",
        id="cometbft-tm-signer-harness-keyFileContents",
    ),
    pytest.param(
        "11592a24efe3217a77ae40125df87d627c93a185d15e106bea0f5c415c4f1674",
        "AT/+aaL1eB0477Mud9JMm8Sh8BIvOYlPGC9KkIUmFaE=",
        "A3258DCBF45DCA0DF052981870F2D1441A36D145",
        "EVkqJO/jIXp3rkASXfh9YnyToYXRXhBr6g9cQVxPFnQBP/5povV4HTjvsy530kybxKHwEi85iU8YL0qQhSYVoQ==",
        "EVkqJO/jIXp3rkASXfh9YnyToYXRXhBr6g9cQVxPFnQ=",
        id="cometbft-internal-test-testPrivValidatorKey",
    ),
    pytest.param(
        "9d834d3fcac4ee25536b70e15376febb697861ab573405d8b89290417fd16070",
        "VWpDbxIY0wlC7+eYQg9R3JtqMRuSnFeCV0V9BcX88jA=",
        "DC52D5CF8DFD1793D71038B342A29B01AD8A5D63",
        None,
        None,
        id="cometbft-privval-msgs_test-its-a-secret",
    ),
]

#: tests/vectors/README.md D2 (derived): sign bytes and signatures with the "it's a secret" key.
D2_KEY_SEED = hashlib.sha256(b"it's a secret").digest()
D2 = [
    (
        "770802110300000000000000190200000000000000224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe5652"
        "f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded05320d74"
        "6573745f636861696e5f6964",
        "fd4a06bfe49eeef6ab1a1140d10745a0354aac97a7ecb69bb9e10fc6e772f5b2460f03940bee3d628fbb5befe356cd8bbc30f1f128d7"
        "949c20d681ec4f2ca805",
    ),
    (
        "2c0a09657874656e73696f6e110300000000000000190200000000000000220d746573745f636861696e5f6964",
        "ff2836698dd7a45a47cd47aee3617c85349a8dde58e4df4d9b13ad0eb50859cac7f71a2d77ce05fc25595eced8d0cd782f4a639d553e"
        "18aab297cdc4026abd05",
    ),
]


def _from_file(path: Path, key_format: str | None = None) -> SoftsignSigner:
    return SoftsignSigner(load_signing_key(path, key_format), source=str(path))  # type: ignore[arg-type]


def secret(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def pv_key_json(seed: bytes) -> dict[str, object]:
    """A priv_validator_key.json as CometBFT writes it (docs/protocol.md §3.1)."""
    pub = bytes(SigningKey(seed).verify_key)
    return {
        "address": consensus_address(pub).hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(seed + pub).decode()},
    }


@pytest.mark.parametrize(("seed_hex", "pub_b64", "address", "priv_value", "tmkms_seed"), V11)
def test_v11_keys_in_every_format(
    tmp_path: Path, seed_hex: str, pub_b64: str, address: str, priv_value: str | None, tmkms_seed: str | None
) -> None:
    seed = bytes.fromhex(seed_hex)
    doc = pv_key_json(seed)
    if priv_value is not None:
        assert doc["priv_key"]["value"] == priv_value  # type: ignore[index]
        assert base64.b64encode(seed).decode() == tmkms_seed
    files = {
        "json": secret(tmp_path / "priv_validator_key.json", json.dumps(doc, indent=2)),
        "base64": secret(tmp_path / "seed.b64", base64.b64encode(seed) + b"\n"),  # trailing newline trimmed
        "raw": secret(tmp_path / "seed.raw", seed),
    }
    for fmt, path in files.items():
        for key_format in (fmt, None):  # explicit and autodetected
            signer = _from_file(path, key_format)  # type: ignore[arg-type]
            assert base64.b64encode(signer.public_key()).decode() == pub_b64, (fmt, key_format)
            assert consensus_address(signer.public_key()).hex().upper() == address


def test_d2_signatures() -> None:
    signer = SoftsignSigner(SigningKey(D2_KEY_SEED))
    assert isinstance(signer, Signer)
    assert signer.provider == "softsign"
    for sign_bytes, signature in D2:
        assert signer.sign(bytes.fromhex(sign_bytes)).hex() == signature


def expanded_of(seed: bytes) -> bytes:
    """ed25519-dalek ExpandedSecretKey bytes: clamped SHA-512(seed)[0:32] ‖ SHA-512(seed)[32:64]."""
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


@pytest.mark.parametrize("encoding", ["base64", "raw"])
def test_expanded_and_yubihsm_export_keys_sign_like_the_seed(tmp_path: Path, encoding: str) -> None:
    """64-byte expanded and 96-byte YubiHSM-export keys (tmkms signing_key.rs) give the seed's exact signatures."""
    seed = bytes.fromhex("f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add")
    reference = SigningKey(seed)
    pub = bytes(reference.verify_key)
    expanded = expanded_of(seed)
    yubihsm_export = expanded[:32][::-1] + expanded[32:] + pub
    unclamped = hashlib.sha512(seed).digest()  # dalek clamps on load, so an unclamped scalar works too
    for name, data in (("expanded", expanded), ("yubihsm", yubihsm_export), ("unclamped", unclamped)):
        encoded = base64.b64encode(data) if encoding == "base64" else data
        path = secret(tmp_path / name, encoded)
        signer = _from_file(path, encoding)  # type: ignore[arg-type]
        assert signer.public_key() == pub, name
        for message in (b"", b"vote", os.urandom(300)):
            assert signer.sign(message) == reference.sign(message).signature, name


def test_go_seed_and_pub_layout_is_read_as_seed(tmp_path: Path) -> None:
    """base64 of priv_key.value (seed ‖ pub) is the seed's key, not an expanded key (a deliberate tmkms difference)."""
    seed = D2_KEY_SEED
    pub = bytes(SigningKey(seed).verify_key)
    path = secret(tmp_path / "k", base64.b64encode(seed + pub))
    assert _from_file(path).public_key() == pub


def test_permissions_refused_with_chmod_fix(tmp_path: Path) -> None:
    path = secret(tmp_path / "k", base64.b64encode(D2_KEY_SEED), mode=0o644)
    with pytest.raises(KeyFileError, match=r"permissions 0644 .*fix: chmod 600 "):
        _from_file(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        _from_file(path)


@pytest.mark.parametrize(
    ("content", "key_format", "needle"),
    [
        (b"c2hvcnQ=", None, "found 5"),
        (b"not base64 at all!", "base64", "not valid base64"),
        (b"\x01" * 33, "raw", "found 33"),
        (b'{"priv_key": {"type": "tendermint/PrivKeySecp256k1", "value": "AA=="}}', None, "only tendermint/PrivKey"),
        (b"{not json", "json", "invalid JSON"),
        (b'{"pub_key": {}}', "json", "no priv_key.value"),
        (b'{"priv_key": {"type": "tendermint/PrivKeyEd25519", "value": "AAAA"}}', "json", "expected 64"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: bytes, key_format: str | None, needle: str) -> None:
    path = secret(tmp_path / "k", content)
    with pytest.raises(KeyFileError, match=needle):
        load_signing_key(path, key_format)  # type: ignore[arg-type]


def test_inconsistent_priv_validator_key_refused(tmp_path: Path) -> None:
    doc = pv_key_json(D2_KEY_SEED)
    other = pv_key_json(bytes(32))
    for field, value in (("pub_key", other["pub_key"]), ("address", other["address"])):
        bad = dict(doc, **{field: value})
        path = secret(tmp_path / f"bad-{field}.json", json.dumps(bad))
        with pytest.raises(KeyFileError, match=f"{field.split('_')[0]}.* does not match"):
            _from_file(path)
    seed_and_wrong_pub = base64.b64encode(D2_KEY_SEED + bytes(32)).decode()
    bad = dict(doc, priv_key={"type": "tendermint/PrivKeyEd25519", "value": seed_and_wrong_pub})
    path = secret(tmp_path / "bad-priv.json", json.dumps(bad))
    with pytest.raises(KeyFileError, match="public half does not match"):
        _from_file(path)


def test_errors_and_repr_never_show_key_bytes(tmp_path: Path) -> None:
    seed = D2_KEY_SEED
    texts = [seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode()]
    messages: list[str] = []
    for content in (base64.b64encode(seed) + b"!", seed + b"\x00", b"{" + base64.b64encode(seed)):
        path = secret(tmp_path / "k", content)
        with pytest.raises(KeyFileError) as info:
            _from_file(path)
        messages.append(str(info.value))
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__, "no chained foreign error"
    signer = SoftsignSigner(SigningKey(seed))
    messages.append(repr(signer))
    assert signer.public_key().hex().upper() in repr(signer)
    for message in messages:
        for text in texts:
            assert text not in message
    with pytest.raises(TypeError):
        pickle.dumps(signer)


def test_close_and_from_config(tmp_path: Path) -> None:
    path = secret(tmp_path / "k", base64.b64encode(D2_KEY_SEED))
    cfg = SoftsignConfig(chain_ids=("c",), key_type="consensus", key_format=None, path=path)
    signer = SoftsignSigner.from_config(cfg)
    assert signer.sign(b"m") == SigningKey(D2_KEY_SEED).sign(b"m").signature
    signer.close()
    signer.close()  # idempotent
    with pytest.raises(FatalProviderError, match="closed"):
        signer.sign(b"m")
    account = SoftsignConfig(chain_ids=("c",), key_type="account", key_format=None, path=path)
    with pytest.raises(FatalProviderError, match="account keys"):
        SoftsignSigner.from_config(account)


def test_a_bad_signature_never_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_or_raise sits on the signing path: a corrupted signature raises instead of being returned."""
    signer = SoftsignSigner(SigningKey(D2_KEY_SEED))

    class FaultyKey:  # a key whose signatures come back with one bit flipped (a faulty device or memory)
        def sign(self, message: bytes) -> bytes:
            good = SigningKey(D2_KEY_SEED).sign(message).signature
            return bytes([good[0] ^ 1]) + good[1:]

    monkeypatch.setattr(signer, "_key", FaultyKey())
    with pytest.raises(TransientProviderError, match="does not verify"):
        signer.sign(b"m")


def test_keygen(tmp_path: Path) -> None:
    path = tmp_path / "consensus.key"
    pub = keygen(path)
    data = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(data) == 44 and not data.endswith(b"\n"), "tmkms layout: base64 of a 32-byte seed, no newline"
    seed = base64.b64decode(data, validate=True)
    assert bytes(SigningKey(seed).verify_key) == pub
    assert _from_file(path, "base64").public_key() == pub
    with pytest.raises(KeyFileError, match="already exists"):
        keygen(path)
    assert path.read_bytes() == data, "an existing key is never overwritten"
    assert keygen(tmp_path / "other.key") != pub


def test_import_priv_validator_key(tmp_path: Path) -> None:
    seed = bytes.fromhex("f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add")
    src = secret(tmp_path / "priv_validator_key.json", json.dumps(pv_key_json(seed)))
    out = tmp_path / "consensus.key"
    pub = import_priv_validator_key(src, out)
    assert base64.b64encode(pub).decode() == "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="
    # V11: the tmkms softsign equivalent of the harness key.
    assert out.read_bytes() == b"8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt0="
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    VerifyKey(pub).verify(b"m", _from_file(out).sign(b"m"))
    with pytest.raises(KeyFileError, match="already exists"):
        import_priv_validator_key(src, out)
