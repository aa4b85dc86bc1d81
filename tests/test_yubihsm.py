"""YubihsmSigner and ``pykms yubihsm`` against the simulator, over HTTP, through the real python-yubihsm library."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from nacl.signing import SigningKey, VerifyKey
from yubihsm.core import YubiHsm
from yubihsm.defs import ALGORITHM, CAPABILITY, OBJECT
from yubihsm.exceptions import YubiHsmAuthenticationError
from yubihsm.objects import AsymmetricKey, AuthenticationKey

from pykms.cli.main import main as pykms_main
from pykms.config import (
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmConnectorServer,
    YubihsmKey,
)
from pykms.errors import ConfigError, FatalProviderError, TransientProviderError
from pykms.harness.yubihsm_sim.device import Device
from pykms.harness.yubihsm_sim.server import SimServer
from pykms.providers import yubihsm_setup as setup
from pykms.providers.signer import Signer
from pykms.providers.yubihsm import ConnectorServer, YubihsmSigner, adapter_url

# tmkms src/commands/yubihsm/setup.rs tests: TEST_KEY = bytes 0..31 and its BIP39 phrase.
TEST_ENTROPY = bytes(range(32))
TEST_PHRASE = (
    "abandon amount liar amount expire adjust cage candy arch gather drum bullet "
    "absurd math era live bid rhythm alien crouch range attend journey unaware"
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(tmp_path: Path, clock: Clock) -> Iterator[SimServer]:
    server = SimServer(state_file=tmp_path / "hsm.json", device=Device(now=clock)).start()
    yield server
    server.stop()


def _admin(sim: SimServer) -> object:
    return YubiHsm.connect(sim.url).create_session_derived(1, "password")


def _key(sim: SimServer, key_id: int = 1, caps: CAPABILITY = CAPABILITY.SIGN_EDDSA) -> bytes:
    session = _admin(sim)
    key = AsymmetricKey.generate(session, key_id, "k", 1, caps, ALGORITHM.EC_ED25519)
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = key.get_public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    session.close()
    return bytes(pub)


def _signer(sim: SimServer, key_id: int = 1, **kw: object) -> YubihsmSigner:
    return YubihsmSigner(sim.url, 1, "password", key_id, **kw)  # type: ignore[arg-type]


# ---- the provider ---------------------------------------------------------------------------------------------


def test_signs_and_verifies(sim: SimServer) -> None:
    pub = _key(sim)
    signer = _signer(sim)
    assert isinstance(signer, Signer)
    assert signer.public_key() == pub
    for i in range(5):
        msg = b"vote %d" % i
        VerifyKey(pub).verify(msg, signer.sign(msg))
    assert "password" not in repr(signer)
    signer.close()
    signer.close()


def test_wrong_password_is_fatal_and_says_what_to_fix(sim: SimServer) -> None:
    _key(sim)
    with pytest.raises(FatalProviderError, match="rejected the password of authentication key 0x0001") as exc:
        YubihsmSigner(sim.url, 1, "wrong", 1)
    assert "password_file" in str(exc.value) and "wrong" not in str(exc.value)


def test_absent_key_and_absent_auth_key(sim: SimServer) -> None:
    with pytest.raises(FatalProviderError, match=r"key 0x0007 is not on the YubiHSM.*keys list"):
        _signer(sim, 7)
    with pytest.raises(FatalProviderError, match="authentication key 0x0009 is not on the YubiHSM"):
        YubihsmSigner(sim.url, 9, "password", 1)


def test_key_without_sign_capability(sim: SimServer) -> None:
    _key(sim, 3, CAPABILITY.EXPORTABLE_UNDER_WRAP)
    with pytest.raises(FatalProviderError, match="0x0003 lacks the sign-eddsa capability"):
        _signer(sim, 3)


def test_auth_key_without_sign_capability(sim: SimServer) -> None:
    _key(sim)
    AuthenticationKey.put_derived(_admin(sim), 5, "ro", 1, CAPABILITY.GET_OPAQUE, CAPABILITY.NONE, "ro")
    signer = YubihsmSigner(sim.url, 5, "ro", 1)
    with pytest.raises(FatalProviderError, match="0x0005 lacks the capability"):
        signer.sign(b"x")


def test_serial_number_checked(sim: SimServer) -> None:
    _key(sim)
    with pytest.raises(FatalProviderError, match="serial 12345678, not 999"):
        _signer(sim, serial_number="999")
    assert _signer(sim, serial_number="12345678").public_key()


def test_lost_sessions_are_reestablished(sim: SimServer, clock: Clock) -> None:
    pub = _key(sim)
    signer = _signer(sim)
    sim.expire_sessions()
    VerifyKey(pub).verify(b"a", signer.sign(b"a"))
    clock.t += 31  # the device's idle timeout
    VerifyKey(pub).verify(b"b", signer.sign(b"b"))
    assert sim.device.session_count == 1  # each lost session replaced by one new one, none left open
    sim.device.factory_reset()  # the key is gone now: that is fatal, not retried forever
    with pytest.raises(FatalProviderError):
        signer.sign(b"c")


@pytest.mark.parametrize("fault", ["http_500", "drop_connections"])
def test_connector_outage_pauses_then_resumes(sim: SimServer, fault: str) -> None:
    pub = _key(sim)
    signer = _signer(sim, retry_seconds=10.0, retry_interval=0.01)
    results: list[bytes] = []
    errors: list[BaseException] = []
    setattr(sim.faults, fault, True)

    def sign() -> None:
        try:
            results.append(signer.sign(b"during outage"))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=sign)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive() and not results  # paused, not answered
    setattr(sim.faults, fault, False)
    worker.join(10)
    assert not errors
    VerifyKey(pub).verify(b"during outage", results[0])


@pytest.mark.slow
def test_lost_replies_never_yield_a_bad_signature(sim: SimServer, clock: Clock) -> None:
    """The device processed the request but the reply was lost: the MAC chain is out of step, sessions may
    be left half-open on the device. The signer resynchronises with a new session and, once the half-open
    sessions time out, signs again, and every signature it returns verifies."""
    pub = _key(sim)
    signer = _signer(sim, retry_seconds=30.0, retry_interval=0.01)
    sim.faults.drop_replies = True
    results: list[bytes] = []
    worker = threading.Thread(target=lambda: results.append(signer.sign(b"lost")))
    worker.start()
    time.sleep(0.3)
    assert not results
    sim.faults.drop_replies = False
    clock.t += 31  # the device frees the sessions whose replies were lost
    worker.join(20)
    VerifyKey(pub).verify(b"lost", results[0])
    for i in range(20):  # and the device's 16 sessions are not exhausted by reconnects
        sim.expire_sessions()
        VerifyKey(pub).verify(b"%d" % i, signer.sign(b"%d" % i))


def test_outage_longer_than_retry_window_is_transient(sim: SimServer) -> None:
    _key(sim)
    signer = _signer(sim, retry_seconds=0.2, retry_interval=0.01)
    sim.faults.http_500 = True
    with pytest.raises(TransientProviderError, match="connector"):
        signer.sign(b"x")
    sim.faults.http_500 = False
    assert len(signer.sign(b"x")) == 64


def test_adapter_urls() -> None:
    assert adapter_url("http", "tcp://127.0.0.1:12345") == "http://127.0.0.1:12345"
    assert adapter_url("http", "http://hsm.local:8080") == "http://hsm.local:8080"
    with pytest.raises(ConfigError, match="host:port"):
        adapter_url("http", "tcp://nowhere")


def test_usb_adapter_without_backend_is_a_clear_config_error() -> None:
    import importlib.util

    if importlib.util.find_spec("usb") is not None:
        pytest.skip("pyusb is installed here")
    with pytest.raises(ConfigError, match="pyusb"):
        adapter_url("usb", None)


def test_from_config_with_connector_server(sim: SimServer, tmp_path: Path) -> None:
    pub = _key(sim)
    password_file = tmp_path / "pw"
    password_file.write_text("password\n")
    password_file.chmod(0o600)
    cfg = YubihsmConfig(
        adapter=YubihsmAdapter(type="http", addr=f"tcp://127.0.0.1:{sim.port}"),
        auth=YubihsmAuth(key=1, password_file=password_file),
        keys=[YubihsmKey(chain_ids=["c"], key=1)],
        serial_number="12345678",
        connector_server=YubihsmConnectorServer(laddr="tcp://127.0.0.1:0"),
    )
    signer = YubihsmSigner.from_config(cfg, cfg.keys[0])
    server = ConnectorServer._running["tcp://127.0.0.1:0"]
    try:
        # yubihsm-shell's path: its own session through pykms's connector, while pykms keeps signing.
        other = YubiHsm.connect(f"http://127.0.0.1:{server.port}").create_session_derived(1, "password")
        assert [o.id for o in other.list_objects(object_type=OBJECT.ASYMMETRIC_KEY)] == [1]
        VerifyKey(pub).verify(b"m", signer.sign(b"m"))
        assert AsymmetricKey(other, 1).sign_eddsa(b"n")
    finally:
        server.close()
        signer.close()


# ---- the CLI: the whole operator flow -----------------------------------------------------------------------


def _write_config(tmp_path: Path, sim: SimServer, password: str, name: str = "tmkms") -> Path:
    auth_key = 1
    password_file = tmp_path / f"{name}-auth.pw"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f"""
[[chain]]
id = "test-chain"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{tmp_path / "state.json"}"

[[providers.yubihsm]]
adapter = {{ type = "http", addr = "tcp://127.0.0.1:{sim.port}" }}
auth = {{ key = {auth_key}, password_file = "{password_file}" }}
keys = [{{ chain_ids = ["test-chain"], key = 1 }}]
serial_number = "12345678"
"""
    )
    return config


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _priv_validator_key(tmp_path: Path) -> tuple[Path, bytes]:
    signing = SigningKey(bytes(range(100, 132)))
    pub = bytes(signing.verify_key)
    doc = {
        "address": "00" * 20,
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(bytes(signing) + pub).decode()},
    }
    return _secret(tmp_path / "priv_validator_key.json", json.dumps(doc)), pub


def _objects(sim: SimServer) -> list[tuple[int, int]]:
    return sorted((obj.obj_id, int(obj.obj_type)) for obj in sim.device.objects.values())


@pytest.mark.slow
def test_operator_flow(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, sim, "password")
    c = ["-c", str(config)]
    assert pykms_main(["yubihsm", "detect", *c]) == 0
    assert "serial 12345678" in capsys.readouterr().out

    # print-only with a fresh mnemonic changes nothing
    before = _objects(sim)
    assert pykms_main(["yubihsm", "setup", "--print-only", *c]) == 0
    out = capsys.readouterr().out
    assert "kms-validator-password-1" in out and _objects(sim) == before

    # a "no" at the prompt changes nothing
    monkeypatch.setattr("sys.stdin", io.StringIO(TEST_PHRASE + "\nn\n"))
    assert pykms_main(["yubihsm", "setup", "--restore", *c]) == 8
    assert _objects(sim) == before

    # restore from the known mnemonic, with a report
    report = tmp_path / "report.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(TEST_PHRASE + "\n"))
    assert pykms_main(["yubihsm", "setup", "--restore", "--yes", "--write-report", str(report), *c]) == 0
    plan = setup.plan_from_entropy(TEST_ENTROPY)
    assert plan.role("validator").password in capsys.readouterr().out
    assert json.loads(report.read_text())["serial_number"] == 12345678
    auth = {obj.obj_id: obj for obj in sim.device.objects.values() if obj.obj_type == OBJECT.AUTHENTICATION_KEY}
    assert sorted(auth) == [1, 2, 3, 4]  # the default and the setup key are gone
    assert auth[4].domains == 0x0001 and auth[4].capabilities & CAPABILITY.SIGN_EDDSA
    assert not auth[4].capabilities & CAPABILITY.EXPORT_WRAPPED
    with pytest.raises(YubiHsmAuthenticationError):  # the factory password is gone
        YubiHsm.connect(sim.url).create_session_derived(1, "password")

    # key management with the admin (the mnemonic) and the operator key
    admin_pw = _secret(tmp_path / "admin.pw", TEST_PHRASE + "\n")
    operator_pw = _secret(tmp_path / "operator.pw", plan.role("operator").password + "\n")
    op = [*c, "--auth-key", "2", "--password-file", str(operator_pw)]
    admin = [*c, "--auth-key", "1", "--password-file", str(admin_pw)]

    pv_path, pv_pub = _priv_validator_key(tmp_path)
    assert pykms_main(["yubihsm", "keys", "import", "-i", "1", str(pv_path), *op]) == 0
    assert pv_pub.hex().upper() in capsys.readouterr().out

    # signing with the validator role, as `pykms start` does
    signer = YubihsmSigner(sim.url, 4, plan.role("validator").password, 1, serial_number="12345678")
    assert signer.public_key() == pv_pub
    VerifyKey(pv_pub).verify(b"block", signer.sign(b"block"))
    signer.close()

    # generate with a backup, export, delete, re-import the backup: same public key
    backup = tmp_path / "key2.backup"
    assert pykms_main(["yubihsm", "keys", "generate", "2", "--label", "mykey", "-b", str(backup), *op]) == 0
    out = capsys.readouterr().out
    generated = next(word for word in out.split() if len(word) == 64)
    assert backup.stat().st_mode & 0o077 == 0
    exported = tmp_path / "key2.export"
    assert pykms_main(["yubihsm", "keys", "export", "-i", "2", str(exported), *op]) == 0
    assert pykms_main(["yubihsm", "keys", "delete", "-i", "2", *op]) == 6  # operator may not delete
    assert "lacks the capability" in capsys.readouterr().err
    assert pykms_main(["yubihsm", "keys", "delete", "-i", "2", *admin]) == 0
    assert (2, OBJECT.ASYMMETRIC_KEY) not in {(o.obj_id, o.obj_type) for o in sim.device.objects.values()}
    capsys.readouterr()
    assert pykms_main(["yubihsm", "keys", "import", "-t", "wrapped", str(backup), *op]) == 0
    assert f"Imported key 0x0002: {generated}" in capsys.readouterr().out
    assert pykms_main(["yubihsm", "keys", "delete", "-i", "2", *admin]) == 0
    assert pykms_main(["yubihsm", "keys", "import", str(exported), *op]) == 0
    assert generated in capsys.readouterr().out

    assert pykms_main(["yubihsm", "keys", "list", *op]) == 0
    listing = capsys.readouterr().out
    assert pv_pub.hex().upper() in listing and generated in listing and "mykey" in listing

    validator_pw = _secret(tmp_path / "validator.pw", plan.role("validator").password)
    assert (
        pykms_main(["yubihsm", "test", "2", "-n", "20", *c, "--auth-key", "4", "--password-file", str(validator_pw)])
        == 0
    )
    assert "signatures/s" in capsys.readouterr().out


def test_cli_errors(sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, sim, "password")
    c = ["-c", str(config)]
    before = _objects(sim)
    bad_json = _secret(tmp_path / "priv_validator_key.json", '{"priv_key": {"type": "tendermint/PrivKeyEd25519"}}')
    assert pykms_main(["yubihsm", "keys", "import", "-i", "1", str(bad_json), *c]) == 4
    assert "priv_key.type and priv_key.value" in capsys.readouterr().err
    pub_mismatch = json.dumps(
        {"priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(bytes(64)).decode()}}
    )
    assert pykms_main(["yubihsm", "keys", "import", "-i", "1", str(_secret(bad_json, pub_mismatch)), *c]) == 4
    assert "does not match the seed" in capsys.readouterr().err
    short = _secret(tmp_path / "seed.b64", base64.b64encode(bytes(31)).decode())
    assert pykms_main(["yubihsm", "keys", "import", "-t", "base64", "-i", "1", str(short), *c]) == 4
    assert "31 bytes" in capsys.readouterr().err
    garbage = _secret(tmp_path / "backup", "not base64 at all!")
    assert pykms_main(["yubihsm", "keys", "import", "-t", "wrapped", str(garbage), *c]) == 4
    assert _objects(sim) == before  # nothing reached the device

    seed = _secret(tmp_path / "ok.b64", base64.b64encode(bytes(range(32))).decode())
    assert pykms_main(["yubihsm", "keys", "import", "-t", "base64", "-i", "1", str(seed), *c]) == 0
    assert pykms_main(["yubihsm", "keys", "import", "-t", "base64", "-i", "1", str(seed), *c]) == 6  # exists
    capsys.readouterr()

    wrong = _write_config(tmp_path, sim, "nope", "wrong")
    assert pykms_main(["yubihsm", "keys", "list", "-c", str(wrong)]) == 6
    assert "rejected the password" in capsys.readouterr().err
    assert pykms_main(["yubihsm", "test", "9", "-n", "1", *c]) == 6
    assert "key 0x0009 is not on the YubiHSM" in capsys.readouterr().err
    sim.faults.drop_connections = True
    assert pykms_main(["yubihsm", "detect", *c]) == 6
    assert "cannot reach the YubiHSM connector" in capsys.readouterr().err


def test_setup_from_fresh_entropy_uses_device_randomness(sim: SimServer, tmp_path: Path) -> None:
    config = _write_config(tmp_path, sim, "password")
    assert pykms_main(["yubihsm", "setup", "--yes", "-c", str(config)]) == 0
    assert sorted(o.obj_id for o in sim.device.objects.values() if o.obj_type == OBJECT.AUTHENTICATION_KEY) == [
        1,
        2,
        3,
        4,
    ]


def test_cli_goes_through_the_connector_server_when_configured(
    sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _key(sim, 3)
    server = ConnectorServer("tcp://127.0.0.1:0", sim.url)
    try:
        config = _write_config(tmp_path, sim, "password")
        text = config.read_text().replace(f"tcp://127.0.0.1:{sim.port}", "tcp://127.0.0.1:1")  # device unreachable
        text += f'connector_server = {{ laddr = "tcp://127.0.0.1:{server.port}", cli = {{ auth_key = 1 }} }}\n'
        config.write_text(text)
        assert pykms_main(["yubihsm", "keys", "list", "-c", str(config)]) == 0
        assert "0x0003" in capsys.readouterr().out
        status = requests.get(f"http://127.0.0.1:{server.port}/connector/status", timeout=5).text
        assert "status=OK" in status
    finally:
        server.close()
