"""PKCS#11 provider against a real SoftHSM2 token (one fresh token directory per test), plus its pure helpers."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from nacl.signing import SigningKey, VerifyKey
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from pykms.cli.main import main
from pykms.cli.pkcs11 import parse_priv_validator_key, parse_seed_file
from pykms.config import Pkcs11Config, Pkcs11Key
from pykms.errors import (
    ConfigError,
    FatalProviderError,
    KeyFileError,
    ProviderError,
    TransientProviderError,
)
from pykms.providers.pkcs11 import (
    Pkcs11Signer,
    Pkcs11Token,
    decode_ec_point,
    encode_ec_point,
    generate_key,
    import_key,
    list_keys,
    map_pkcs11_error,
    parse_key_id,
    read_pin,
)
from pykms.providers.signer import Signer
from tests.softhsm import SoftHsm, finalize_module, fresh_token

# tests/vectors/README.md V11, cometbft tools/tm-signer-harness/internal/test_harness_test.go (keyFileContents).
HARNESS_SEED = bytes.fromhex("f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add")
HARNESS_PUB_B64 = "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="
HARNESS_PRIV_B64 = "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt1kKy5ONpzMTKifvSeYrHC/C76Oqturk4ffJCNwrRIXFw=="
HARNESS_SOFTSIGN = "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt0="

# test vector D2: cometbft privval/msgs_test.go GenPrivKeyFromSecret("it's a secret") (seed = SHA-256 of it).
SECRET_SEED = hashlib.sha256(b"it's a secret").digest()
D2 = [
    (
        "770802110300000000000000190200000000000000224a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e54fe"
        "5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a2a0608f49a8ded"
        "05320d746573745f636861696e5f6964",
        "fd4a06bfe49eeef6ab1a1140d10745a0354aac97a7ecb69bb9e10fc6e772f5b2460f03940bee3d628fbb5befe356cd8bbc30f1f1"
        "28d7949c20d681ec4f2ca805",
    ),
    (
        "2c0a09657874656e73696f6e110300000000000000190200000000000000220d746573745f636861696e5f6964",
        "ff2836698dd7a45a47cd47aee3617c85349a8dde58e4df4d9b13ad0eb50859cac7f71a2d77ce05fc25595eced8d0cd782f4a639d"
        "553e18aab297cdc4026abd05",
    ),
    (
        "79082011030000000000000019020000000000000020022a4a0a208b01023386c371778ecb6368573e539afc3cc860ec3a2f614e"
        "54fe5652f4fc80122608c0843d122072db3d959635dff1bb567bedaa70573392c5159666a3f8caf11e413aac52207a320608f49a"
        "8ded053a0d746573745f636861696e5f6964",
        "4d5e01660273de102d1305a8aa4cc9eb08011e7d8370adb89867aef6b31bea8538cdfa2e100bd1636e5710d680cb97aff2578091"
        "cf8903642c8cc6581de6650e",
    ),
]


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token for this test only (skips with the reason when SoftHSM2 is not installed)."""
    with fresh_token(tmp_path, monkeypatch) as token:
        yield token


def _token(hsm: SoftHsm, pin: str | None = None) -> Pkcs11Token:
    return Pkcs11Token(hsm.module, pin or hsm.user_pin, token_label=hsm.label)


def _open(
    module: Path,
    pin: str,
    *,
    token_label: str | None = None,
    slot: int | None = None,
    label: str | None = None,
    key_id: bytes | None = None,
) -> Pkcs11Signer:
    """A signer with a token session of its own (closed with the signer)."""
    return Pkcs11Signer(Pkcs11Token(module, pin, token_label=token_label, slot=slot), label=label, key_id=key_id)


def _signer(hsm: SoftHsm, label: str = "val", key_id: bytes | None = None) -> Pkcs11Signer:
    return _open(hsm.module, hsm.user_pin, token_label=hsm.label, label=label, key_id=key_id)


def _priv_validator_key_json(seed: bytes) -> bytes:
    pub = bytes(SigningKey(seed).verify_key)
    doc = {
        "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(seed + pub).decode()},
    }
    import json

    return json.dumps(doc).encode()


# ------------------------------------------------------------------------------------------ pure helpers


def test_ec_point_round_trip_and_bare_form() -> None:
    pub = bytes(range(32))
    assert encode_ec_point(pub) == b"\x04\x20" + pub
    assert decode_ec_point(encode_ec_point(pub)) == pub
    assert decode_ec_point(pub) == pub  # tokens that return the bare point
    with pytest.raises(FatalProviderError):
        decode_ec_point(b"\x04\x21" + pub + b"\x00")
    with pytest.raises(ValueError):
        encode_ec_point(pub[:31])


def test_parse_key_id() -> None:
    assert parse_key_id(None) is None
    assert parse_key_id("01A2") == b"\x01\xa2"


def test_read_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("pin-8s7d6f\n")
    pin_file.chmod(0o600)
    assert read_pin(pin_file, None) == "pin-8s7d6f"
    pin_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_pin(pin_file, None)
    assert "pin-8s7d6f" not in str(info.value)
    monkeypatch.setenv("PYKMS_TEST_PIN", "9876")
    assert read_pin(None, "PYKMS_TEST_PIN") == "9876"
    monkeypatch.delenv("PYKMS_TEST_PIN")
    with pytest.raises(ConfigError, match="PYKMS_TEST_PIN is unset"):
        read_pin(None, "PYKMS_TEST_PIN")
    with pytest.raises(ConfigError, match="no user PIN source"):
        read_pin(None, None)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_pin(empty, None)


def test_map_pkcs11_error_classes() -> None:
    assert isinstance(map_pkcs11_error(p11e.PinIncorrect(), "login"), FatalProviderError)
    assert isinstance(map_pkcs11_error(p11e.PinLocked(), "login"), FatalProviderError)
    assert "unlock" in str(map_pkcs11_error(p11e.PinLocked(), "login"))
    assert isinstance(map_pkcs11_error(p11e.MechanismInvalid(), "signing"), FatalProviderError)
    for exc in (p11e.SessionHandleInvalid(), p11e.DeviceRemoved(), p11e.TokenNotPresent(), p11e.PKCS11Error("x")):
        mapped = map_pkcs11_error(exc, "signing")
        assert isinstance(mapped, TransientProviderError), exc
    assert isinstance(map_pkcs11_error(OSError("boom"), "signing"), TransientProviderError)


def test_parse_priv_validator_key_and_seed_file() -> None:
    doc = (
        '{"address":"D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",'
        f'"pub_key":{{"type":"tendermint/PubKeyEd25519","value":"{HARNESS_PUB_B64}"}},'
        f'"priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{HARNESS_PRIV_B64}"}}}}'
    ).encode()
    assert parse_priv_validator_key(doc, "k.json") == HARNESS_SEED
    assert parse_seed_file(HARNESS_SOFTSIGN.encode() + b"\n", "k") == HARNESS_SEED
    assert parse_seed_file(HARNESS_PRIV_B64.encode(), "k") == HARNESS_SEED
    tampered = doc.replace(HARNESS_PUB_B64.encode(), base64.b64encode(bytes(32)))
    with pytest.raises(KeyFileError, match="does not match"):
        parse_priv_validator_key(tampered, "k.json")
    with pytest.raises(KeyFileError, match="not a CometBFT"):
        parse_priv_validator_key(b"{}", "k.json")
    with pytest.raises(KeyFileError, match="PrivKeySecp256k1"):
        parse_priv_validator_key(doc.replace(b"PrivKeyEd25519", b"PrivKeySecp256k1"), "k.json")
    with pytest.raises(KeyFileError, match="expected a 32-byte"):
        parse_seed_file(base64.b64encode(bytes(31)), "k")
    with pytest.raises(KeyFileError, match="not base64"):
        parse_seed_file(b"not base64!!", "k")
    bad64 = base64.b64encode(HARNESS_SEED + bytes(32))
    with pytest.raises(KeyFileError, match="does not match"):
        parse_seed_file(bad64, "k")


def test_token_module_missing_or_unloadable(tmp_path: Path) -> None:
    module = tmp_path / "lib.so"
    module.write_bytes(b"")
    with pytest.raises(ConfigError, match="does not exist"):
        Pkcs11Token(tmp_path / "missing.so", "1234", token_label="x")
    module.write_bytes(b"not a shared object")
    with pytest.raises(FatalProviderError, match=r"cannot load module .*fix: give the vendor's PKCS#11 library"):
        _open(module, "1234", token_label="x", label="y")


# ---------------------------------------------------------------------------------------------- SoftHSM2


@pytest.mark.softhsm
def test_generate_is_non_extractable_and_signs(hsm: SoftHsm) -> None:
    with _token(hsm) as token:
        pub = generate_key(token, "val", b"\x01")
        with pytest.raises(FatalProviderError, match="already exists"):
            generate_key(token, "val", b"\x01")
    signer = _signer(hsm, key_id=b"\x01")
    try:
        assert isinstance(signer, Signer)
        assert signer.provider == "pkcs11"
        assert signer.public_key() == pub
        msg = b"a vote"
        sig = signer.sign(msg)
        VerifyKey(pub).verify(msg, sig)
        assert signer.sign(msg) == sig  # Ed25519 is deterministic
    finally:
        signer.close()
        signer.close()  # idempotent
    # Check the stored attributes from an independent session.
    lib = pkcs11.lib(str(hsm.module))
    with lib.get_token(token_label=hsm.label).open(user_pin=hsm.user_pin) as session:
        priv = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label="val")
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.EXTRACTABLE] is False
        assert priv[Attribute.NEVER_EXTRACTABLE] is True
        assert priv[Attribute.ALWAYS_SENSITIVE] is True
        assert priv[Attribute.TOKEN] is True
        assert priv[Attribute.PRIVATE] is True
        with pytest.raises(p11e.AttributeSensitive):
            priv[Attribute.VALUE]


@pytest.mark.softhsm
def test_import_priv_validator_key_signs_like_pynacl(hsm: SoftHsm) -> None:
    seed = parse_priv_validator_key(_priv_validator_key_json(HARNESS_SEED), "k.json")
    with _token(hsm) as token:
        assert import_key(token, seed, "val", None) == base64.b64decode(HARNESS_PUB_B64)
        listed = list_keys(token)
    assert [(k.label, k.public_key, k.has_private) for k in listed] == [
        ("val", base64.b64decode(HARNESS_PUB_B64), True)
    ]
    reference = SigningKey(HARNESS_SEED)
    signer = _signer(hsm)
    try:
        for msg in (b"", b"x", bytes(range(256)) * 40):
            assert signer.sign(msg) == reference.sign(msg).signature
    finally:
        signer.close()
    lib = pkcs11.lib(str(hsm.module))
    with lib.get_token(token_label=hsm.label).open(user_pin=hsm.user_pin) as session:
        priv = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label="val")
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.EXTRACTABLE] is False


@pytest.mark.softhsm
def test_import_seed_matches_d2_signatures(hsm: SoftHsm) -> None:
    seed = parse_seed_file(base64.b64encode(SECRET_SEED), "seed")
    with _token(hsm) as token:
        import_key(token, seed, None, b"\x07")
    signer = _signer(hsm, label=None, key_id=b"\x07")  # type: ignore[arg-type]
    try:
        for sign_bytes, signature in D2:
            assert signer.sign(bytes.fromhex(sign_bytes)).hex() == signature
    finally:
        signer.close()


@pytest.mark.softhsm
def test_wrong_pin_is_fatal_and_never_echoed(hsm: SoftHsm) -> None:
    wrong = "wrong-pin-531"
    with pytest.raises(FatalProviderError) as info:
        _open(hsm.module, wrong, token_label=hsm.label, label="val")
    text = str(info.value)
    assert "PIN" in text and "CKR_PIN_INCORRECT" in text
    full = "".join(traceback.format_exception(info.value))
    assert wrong not in full and hsm.user_pin not in full
    assert wrong not in repr(_token(hsm, wrong))


@pytest.mark.softhsm
def test_missing_key_and_missing_token(hsm: SoftHsm) -> None:
    with pytest.raises(FatalProviderError, match="no Ed25519 public key with label 'nope'") as info:
        _signer(hsm, label="nope")
    assert hsm.user_pin not in str(info.value)
    # A public key alone (private half absent) is refused at open.
    with _token(hsm) as token:
        pub = bytes(SigningKey(SECRET_SEED).verify_key)
        token.run(
            lambda s: s.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                    Attribute.EC_PARAMS: b"\x13\x0cedwards25519",
                    Attribute.EC_POINT: encode_ec_point(pub),
                    Attribute.LABEL: "half",
                    Attribute.TOKEN: True,
                }
            ),
            "test",
        )
        assert [k.has_private for k in list_keys(token)] == [False]
    with pytest.raises(FatalProviderError, match=r"no Ed25519 private key with label 'half'.*keys generate"):
        _signer(hsm, label="half")
    with pytest.raises(ProviderError, match="token not found"):
        _open(hsm.module, hsm.user_pin, token_label="absent", label="val")


@pytest.mark.softhsm
def test_mismatched_public_key_refused_at_open(hsm: SoftHsm) -> None:
    with _token(hsm) as token:
        import_key(token, SECRET_SEED, "a", None)
        import_key(token, HARNESS_SEED, "b", None)
        # Relabel b's public key as "a2" and a's as "b": the pair under "a" no longer matches... simpler: give
        # the private key of "a" a public object from "b" under a fresh label.
        pub_b = bytes(SigningKey(HARNESS_SEED).verify_key)

        def forge(session: object) -> None:
            priv = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label="a")  # type: ignore[attr-defined]
            priv.copy({Attribute.LABEL: "forged"})
            session.create_object(  # type: ignore[attr-defined]
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                    Attribute.EC_PARAMS: b"\x13\x0cedwards25519",
                    Attribute.EC_POINT: encode_ec_point(pub_b),
                    Attribute.LABEL: "forged",
                    Attribute.TOKEN: True,
                }
            )

        token.run(forge, "test")
    with pytest.raises(FatalProviderError, match="does not match its private key"):
        _signer(hsm, label="forged")


def _close_all_sessions(module: Path, slot: int) -> None:
    """C_CloseAllSessions through a second handle on the module: every session of this process ends."""
    lib = ctypes.CDLL(str(module))
    lib.C_CloseAllSessions.argtypes = [ctypes.c_ulong]
    lib.C_CloseAllSessions.restype = ctypes.c_ulong
    assert lib.C_CloseAllSessions(slot) == 0


@pytest.mark.softhsm
def test_recovers_from_lost_sessions_and_module(hsm: SoftHsm) -> None:
    with _token(hsm) as token:
        import_key(token, SECRET_SEED, "val", None)
    reference = SigningKey(SECRET_SEED)
    signer = _signer(hsm)
    try:
        assert signer.sign(b"1") == reference.sign(b"1").signature
        # 1. Sessions closed behind our back (CKR_SESSION_HANDLE_INVALID).
        _close_all_sessions(hsm.module, hsm.slot)
        assert signer.sign(b"2") == reference.sign(b"2").signature
        # 2. The library finalised under us (CKR_CRYPTOKI_NOT_INITIALIZED).
        pkcs11.lib(str(hsm.module)).finalize()
        assert signer.sign(b"3") == reference.sign(b"3").signature
        # 3. Finalised and re-initialised: the old handles are stale.
        pkcs11.lib(str(hsm.module)).reinitialize()
        assert signer.sign(b"4") == reference.sign(b"4").signature
    finally:
        signer.close()


@pytest.mark.softhsm
def test_token_gone_is_transient_and_recovers_when_back(hsm: SoftHsm, tmp_path: Path) -> None:
    with _token(hsm) as token:
        import_key(token, SECRET_SEED, "val", None)
    signer = _signer(hsm)
    try:
        # Move the token directory away and make the module forget it: the token is absent.
        aside = tmp_path / "aside"
        hsm.token_dir.rename(aside)
        hsm.token_dir.mkdir()
        pkcs11.lib(str(hsm.module)).finalize()
        with pytest.raises(TransientProviderError, match="token not found"):
            signer.sign(b"x")
        hsm.token_dir.rmdir()
        aside.rename(hsm.token_dir)
        assert signer.sign(b"x") == SigningKey(SECRET_SEED).sign(b"x").signature
    finally:
        signer.close()


@pytest.mark.softhsm
def test_concurrent_signing_from_threads(hsm: SoftHsm) -> None:
    with _token(hsm) as token:
        import_key(token, SECRET_SEED, "val", None)
        import_key(token, HARNESS_SEED, "other", None)
    a = _signer(hsm, "val")
    b = _signer(hsm, "other")
    refs = {id(a): SigningKey(SECRET_SEED), id(b): SigningKey(HARNESS_SEED)}
    errors: list[BaseException] = []

    def work(signer: Pkcs11Signer, n: int) -> None:
        try:
            for i in range(40):
                msg = f"{n}-{i}".encode()
                assert signer.sign(msg) == refs[id(signer)].sign(msg).signature
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()
    assert errors == []


@pytest.mark.softhsm
def test_from_config_shares_one_session_per_token(hsm: SoftHsm, tmp_path: Path) -> None:
    with _token(hsm) as token:
        import_key(token, SECRET_SEED, None, b"\x01")
        import_key(token, HARNESS_SEED, None, b"\x02")
    keys = [Pkcs11Key(chain_ids=("a-1",), id="01"), Pkcs11Key(chain_ids=("b-1",), id="02")]
    cfg = Pkcs11Config(hsm.module, None, hsm.slot, hsm.pin_file(tmp_path), None, keys)
    a = Pkcs11Signer.from_config(cfg, keys[0])
    b = Pkcs11Signer.from_config(cfg, keys[1])
    try:
        assert a._token is b._token
        assert a.public_key() == bytes(SigningKey(SECRET_SEED).verify_key)
        assert b.sign(b"m") == SigningKey(HARNESS_SEED).sign(b"m").signature
        a.close()
        assert b.sign(b"n") == SigningKey(HARNESS_SEED).sign(b"n").signature  # b still works
    finally:
        a.close()
        b.close()
    with pytest.raises(FatalProviderError, match="after close"):
        b.sign(b"o")


def _write_config(hsm: SoftHsm, home: Path, keys: str) -> Path:
    hsm.pin_file(home)
    config = home / "tmkms.toml"
    config.write_text(
        f"""
[[chain]]
id = "test-chain"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}

[[chain]]
id = "other-chain"
key_format = {{ type = "hex" }}

[[providers.pkcs11]]
module = "{hsm.module}"
token_label = "{hsm.label}"
user_pin_file = "pkcs11-pin"
keys = [{keys}]
"""
    )
    return config


@pytest.mark.softhsm
def test_cli_generate_import_list(hsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(
        hsm, tmp_path, '{ chain_ids = ["test-chain"], label = "val" }, { chain_ids = ["other-chain"], id = "0a" }'
    )
    assert main(["pkcs11", "keys", "generate", "-c", str(config), "--chain", "test-chain"]) == 0
    out = capsys.readouterr().out
    assert "test-chain: generated label='val'; consensus key cosmosvalconspub1" in out
    # Generating again for that chain is refused (exit 6, provider error); for all keys, it is skipped.
    assert main(["pkcs11", "keys", "generate", "-c", str(config), "--chain", "test-chain"]) == 6
    assert "already exists" in capsys.readouterr().err

    key_json = tmp_path / "priv_validator_key.json"
    key_json.write_bytes(_priv_validator_key_json(SECRET_SEED))
    key_json.chmod(0o600)
    assert (
        main(
            [
                "pkcs11",
                "keys",
                "import",
                "-c",
                str(config),
                "--chain",
                "other-chain",
                "--priv-validator-key",
                str(key_json),
            ]
        )
        == 0
    )
    secret_pub = bytes(SigningKey(SECRET_SEED).verify_key)
    assert secret_pub.hex().upper() in capsys.readouterr().out  # other-chain's key_format is hex

    assert main(["pkcs11", "keys", "generate", "-c", str(config)]) == 0
    assert capsys.readouterr().out.count("skipped") == 2

    assert main(["pkcs11", "keys", "list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "2 Ed25519 key(s)" in out
    assert f"chain other-chain: {secret_pub.hex().upper()}" in out
    assert "chain test-chain: cosmosvalconspub1" in out  # the chain's bech32 key_format
    assert hsm.user_pin not in out

    # The imported key signs exactly as softsign (PyNaCl) would with the same seed.
    keys = [Pkcs11Key(chain_ids=("other-chain",), id="0a")]
    signer = Pkcs11Signer.from_config(
        Pkcs11Config(hsm.module, hsm.label, None, tmp_path / "pkcs11-pin", None, keys), keys[0]
    )
    try:
        assert signer.sign(b"vote") == SigningKey(SECRET_SEED).sign(b"vote").signature
    finally:
        signer.close()


@pytest.mark.softhsm
def test_cli_import_seed_file_and_errors(hsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(
        hsm, tmp_path, '{ chain_ids = ["test-chain"], label = "val" }, { chain_ids = ["other-chain"], id = "0a" }'
    )
    seed_file = tmp_path / "consensus.key"
    seed_file.write_text(HARNESS_SOFTSIGN + "\n")
    seed_file.chmod(0o644)
    argv = ["pkcs11", "keys", "import", "-c", str(config), "--chain", "test-chain", "--seed-file", str(seed_file)]
    assert main(argv) == 4  # key file readable by others: refused
    assert "chmod 600" in capsys.readouterr().err
    seed_file.chmod(0o600)
    assert main(argv) == 0
    assert main(["pkcs11", "keys", "import", "-c", str(config), "--chain", "nope", "--seed-file", str(seed_file)]) == 3
    assert main(argv) == 6  # already there
    (tmp_path / "pkcs11-pin").write_text("000000\n")
    assert main(["pkcs11", "keys", "list", "-c", str(config)]) == 6
    err = capsys.readouterr().err
    assert "CKR_PIN_INCORRECT" in err and "000000" not in err


@pytest.mark.softhsm
def test_two_tokens_with_one_label_need_a_slot(hsm: SoftHsm, tmp_path: Path) -> None:
    from tests.softhsm import make_token

    twin = make_token(tmp_path / "softhsm", label=hsm.label)  # same directory and conf: a second token
    assert twin.slot != hsm.slot
    finalize_module(hsm.module)
    with pytest.raises(FatalProviderError, match=r"2 tokens are labelled 'pykms'.*slot"):
        _open(hsm.module, hsm.user_pin, token_label=hsm.label, label="val")
    with Pkcs11Token(hsm.module, hsm.user_pin, token_label=hsm.label, slot=twin.slot) as token:
        import_key(token, SECRET_SEED, "val", None)
    signer = _open(hsm.module, hsm.user_pin, token_label=hsm.label, slot=twin.slot, label="val")
    try:
        assert signer.sign(b"m") == SigningKey(SECRET_SEED).sign(b"m").signature
    finally:
        signer.close()
    with pytest.raises(FatalProviderError, match="no Ed25519 public key"):  # the first token has no key
        _open(hsm.module, hsm.user_pin, slot=hsm.slot, label="val")
