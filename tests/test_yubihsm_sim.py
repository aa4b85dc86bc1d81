"""The YubiHSM2 simulator, driven by the real python-yubihsm client.

Most tests go over HTTP on a loopback port (the connector API); the sans-IO tests drive ``Device.process``
through python-yubihsm with an in-process backend, so the session layer (SCP03, MAC chain, counters) is still
the library's own code against ours.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from yubihsm.backends import YhsmBackend
from yubihsm.core import YubiHsm
from yubihsm.defs import ALGORITHM, CAPABILITY, ERROR, OBJECT
from yubihsm.exceptions import YubiHsmAuthenticationError, YubiHsmConnectionError, YubiHsmDeviceError
from yubihsm.objects import AsymmetricKey, AuthenticationKey, Opaque, WrapKey

from pykms.harness.yubihsm_sim.device import Device
from pykms.harness.yubihsm_sim.server import SimServer, main


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class DirectBackend(YhsmBackend):
    """python-yubihsm backend that hands frames straight to a Device (no HTTP), optionally tampering."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.tamper = False

    def transceive(self, msg: bytes) -> bytes:
        if self.tamper:
            msg = msg[:-1] + bytes([msg[-1] ^ 1])
        return self.device.process(msg)[0]

    def close(self) -> None:
        return


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimServer]:
    server = SimServer(state_file=tmp_path / "hsm.json").start()
    yield server
    server.stop()


def _code(exc: pytest.ExceptionInfo[YubiHsmDeviceError]) -> ERROR:
    return ERROR(exc.value.code)


def test_status_endpoint_and_device_info(sim: SimServer) -> None:
    status = requests.get(sim.url + "/connector/status", timeout=5).text
    fields = dict(line.split("=", 1) for line in status.strip().splitlines())
    assert fields["status"] == "OK"
    assert fields["serial"] == "12345678"
    info = YubiHsm.connect(sim.url).get_device_info()
    assert info.serial == 12345678
    assert info.version == (2, 4, 0)
    assert ALGORITHM.EC_ED25519 in info.supported_algorithms


def test_session_commands_over_http(sim: SimServer) -> None:
    session = YubiHsm.connect(sim.url).create_session_derived(1, "password")
    assert session.send_secure_cmd(0x01, b"ping") == b"ping"  # ECHO inside the session
    assert len(session.get_pseudo_random(48)) == 48
    assert [o.id for o in session.list_objects()] == [1]
    key = AsymmetricKey.generate(session, 7, "k", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    signature = key.sign_eddsa(b"message")
    key.get_public_key().verify(signature, b"message")  # raises if the signature is wrong
    info = key.get_info()
    assert (info.id, info.domains, info.label, info.algorithm) == (7, 1, "k", ALGORITHM.EC_ED25519)
    session.close()
    assert sim.device.session_count == 0


def test_wrong_password_and_absent_auth_key(sim: SimServer) -> None:
    hsm = YubiHsm.connect(sim.url)
    with pytest.raises(YubiHsmAuthenticationError):
        hsm.create_session_derived(1, "not the password")
    with pytest.raises(YubiHsmDeviceError) as exc:
        hsm.create_session_derived(9, "password")
    assert _code(exc) == ERROR.OBJECT_NOT_FOUND


def test_sixteen_sessions_then_full() -> None:
    device = Device()
    hsm = YubiHsm(DirectBackend(device))
    sessions = [hsm.create_session_derived(1, "password") for _ in range(16)]
    with pytest.raises(YubiHsmDeviceError) as exc:
        hsm.create_session_derived(1, "password")
    assert _code(exc) == ERROR.SESSIONS_FULL
    sessions[3].close()
    hsm.create_session_derived(1, "password")  # a closed slot is reusable


def test_idle_timeout_with_injected_clock() -> None:
    clock = Clock()
    device = Device(now=clock)
    hsm = YubiHsm(DirectBackend(device))
    session = hsm.create_session_derived(1, "password")
    clock.t += 29.0
    assert len(session.get_pseudo_random(4)) == 4  # activity resets the idle timer
    clock.t += 29.0
    assert len(session.get_pseudo_random(4)) == 4
    clock.t += 30.5
    with pytest.raises(YubiHsmDeviceError) as exc:
        session.get_pseudo_random(4)
    assert _code(exc) == ERROR.INVALID_SESSION
    assert device.session_count == 0


def test_tampered_message_kills_the_session() -> None:
    device = Device()
    backend = DirectBackend(device)
    session = YubiHsm(backend).create_session_derived(1, "password")
    backend.tamper = True
    with pytest.raises(YubiHsmDeviceError) as exc:
        session.get_pseudo_random(4)
    assert _code(exc) == ERROR.SESSION_FAILED
    backend.tamper = False
    with pytest.raises(YubiHsmDeviceError) as exc:
        session.get_pseudo_random(4)
    assert _code(exc) == ERROR.INVALID_SESSION


def test_capabilities_domains_and_delegation() -> None:
    device = Device()
    hsm = YubiHsm(DirectBackend(device))
    admin = hsm.create_session_derived(1, "password")
    # A signer-only auth key in domain 1: may sign, may not create keys.
    AuthenticationKey.put_derived(admin, 4, "validator", 0x0001, CAPABILITY.SIGN_EDDSA, CAPABILITY.NONE, "v")
    AsymmetricKey.generate(admin, 10, "dom1", 0x0001, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    AsymmetricKey.generate(admin, 11, "dom2", 0x0002, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    AsymmetricKey.generate(admin, 12, "nosign", 0x0001, CAPABILITY.EXPORTABLE_UNDER_WRAP, ALGORITHM.EC_ED25519)
    validator = hsm.create_session_derived(4, "v")
    assert len(AsymmetricKey(validator, 10).sign_eddsa(b"x")) == 64
    with pytest.raises(YubiHsmDeviceError) as exc:
        AsymmetricKey(validator, 11).sign_eddsa(b"x")  # other domain: invisible
    assert _code(exc) == ERROR.OBJECT_NOT_FOUND
    with pytest.raises(YubiHsmDeviceError) as exc:
        AsymmetricKey(validator, 12).sign_eddsa(b"x")  # the key lacks sign-eddsa
    assert _code(exc) == ERROR.INSUFFICIENT_PERMISSIONS
    with pytest.raises(YubiHsmDeviceError) as exc:
        AsymmetricKey.generate(validator, 13, "x", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    assert _code(exc) == ERROR.INSUFFICIENT_PERMISSIONS
    assert [o.id for o in validator.list_objects()] == [1, 4, 10, 12]  # 11 is in domain 2 only
    # Delegation: an operator that may delegate only sign-eddsa cannot mint an exportable key.
    AuthenticationKey.put_derived(
        admin, 2, "op", 0xFFFF, CAPABILITY.GENERATE_ASYMMETRIC_KEY, CAPABILITY.SIGN_EDDSA, "o"
    )
    operator = hsm.create_session_derived(2, "o")
    AsymmetricKey.generate(operator, 20, "ok", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    with pytest.raises(YubiHsmDeviceError) as exc:
        AsymmetricKey.generate(
            operator, 21, "no", 1, CAPABILITY.SIGN_EDDSA | CAPABILITY.EXPORTABLE_UNDER_WRAP, ALGORITHM.EC_ED25519
        )
    assert _code(exc) == ERROR.INSUFFICIENT_PERMISSIONS
    with pytest.raises(YubiHsmDeviceError) as exc:
        AsymmetricKey.generate(admin, 10, "dup", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    assert _code(exc) == ERROR.OBJECT_EXISTS


def test_wrap_export_import_round_trip_and_refusals() -> None:
    device = Device()
    hsm = YubiHsm(DirectBackend(device))
    s = hsm.create_session_derived(1, "password")
    wrap = WrapKey.put(
        s, 1, "w", 0xFFFF, CAPABILITY.EXPORT_WRAPPED | CAPABILITY.IMPORT_WRAPPED, ALGORITHM.AES256_CCM_WRAP,
        CAPABILITY.ALL, os.urandom(32),
    )  # fmt: skip
    key = AsymmetricKey.generate(
        s, 5, "k", 1, CAPABILITY.SIGN_EDDSA | CAPABILITY.EXPORTABLE_UNDER_WRAP, ALGORITHM.EC_ED25519
    )
    pub = key.get_public_key()
    blob = wrap.export_wrapped(key)
    with pytest.raises(YubiHsmDeviceError) as exc:
        wrap.import_wrapped(blob)  # the original still exists
    assert _code(exc) == ERROR.OBJECT_EXISTS
    key.delete()
    restored = wrap.import_wrapped(blob)
    assert restored.id == 5 and restored.object_type == OBJECT.ASYMMETRIC_KEY
    assert restored.get_public_key() == pub
    assert restored.get_info().label == "k"
    tampered = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    restored.delete()
    with pytest.raises(YubiHsmDeviceError) as exc:
        wrap.import_wrapped(tampered)
    assert _code(exc) == ERROR.INVALID_DATA
    locked = AsymmetricKey.generate(s, 6, "locked", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
    with pytest.raises(YubiHsmDeviceError) as exc:
        wrap.export_wrapped(locked)  # not exportable under wrap
    assert _code(exc) == ERROR.INSUFFICIENT_PERMISSIONS


def test_reset_restores_factory_state() -> None:
    device = Device()
    hsm = YubiHsm(DirectBackend(device))
    s = hsm.create_session_derived(1, "password")
    Opaque.put(s, 3, "o", 1, CAPABILITY.GET_OPAQUE, ALGORITHM.OPAQUE_DATA, b"data")
    assert Opaque(s, 3).get() == b"data"
    s.get_object(1, OBJECT.AUTHENTICATION_KEY).delete()
    AuthenticationKey.put_derived(s, 9, "x", 0xFFFF, CAPABILITY.ALL, CAPABILITY.ALL, "new")
    s2 = hsm.create_session_derived(9, "new")
    s2.reset_device()
    s3 = YubiHsm(DirectBackend(device)).create_session_derived(1, "password")
    assert [(o.id, o.object_type) for o in s3.list_objects()] == [(1, OBJECT.AUTHENTICATION_KEY)]


def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = SimServer(state_file=state).start()
    try:
        s = YubiHsm.connect(first.url).create_session_derived(1, "password")
        pub = AsymmetricKey.generate(s, 3, "kept", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519).get_public_key()
    finally:
        first.stop()
    assert state.stat().st_mode & 0o077 == 0
    second = SimServer(state_file=state).start()
    try:
        s = YubiHsm.connect(second.url).create_session_derived(1, "password")
        assert AsymmetricKey(s, 3).get_public_key() == pub
    finally:
        second.stop()


def test_fault_switches(sim: SimServer) -> None:
    hsm = YubiHsm.connect(sim.url)
    session = hsm.create_session_derived(1, "password")
    sim.faults.http_500 = True
    with pytest.raises(YubiHsmConnectionError):
        session.get_pseudo_random(4)
    sim.faults.http_500 = False
    sim.faults.drop_connections = True
    with pytest.raises(YubiHsmConnectionError):
        YubiHsm.connect(sim.url)
    sim.faults.drop_connections = False
    assert len(session.get_pseudo_random(4)) == 4  # the session survived: faults never reached the device
    sim.expire_sessions()
    with pytest.raises(YubiHsmDeviceError) as exc:
        session.get_pseudo_random(4)
    assert _code(exc) == ERROR.INVALID_SESSION
    # The same switches over HTTP, for operators driving a subprocess.
    assert requests.post(sim.url + "/sim/faults", data=json.dumps({"http_500": True}), timeout=5).ok
    assert requests.post(sim.url + "/connector/api", data=b"\x01\x00\x00", timeout=5).status_code == 500
    assert requests.post(sim.url + "/sim/faults", data=b"{}", timeout=5).ok
    assert requests.post(sim.url + "/connector/api", data=b"\x01\x00\x01z", timeout=5).content == b"\x81\x00\x01z"


def test_malformed_frames_get_error_codes() -> None:
    device = Device()
    assert device.process(b"\x01\x00")[0] == b"\x7f\x00\x01" + bytes([ERROR.WRONG_LENGTH])
    assert device.process(b"\x01\x00\x05ab")[0] == b"\x7f\x00\x01" + bytes([ERROR.WRONG_LENGTH])
    assert device.process(b"\x99\x00\x00")[0] == b"\x7f\x00\x01" + bytes([ERROR.INVALID_COMMAND])
    assert device.process(struct.pack("!BHB", 0x05, 25, 3) + bytes(24))[0][3] == ERROR.INVALID_SESSION


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_get_a_well_formed_reply(frame: bytes) -> None:
    reply, changed = Device().process(frame)
    assert not changed
    cmd, length = struct.unpack("!BH", reply[:3])
    assert length == len(reply) - 3
    assert cmd == 0x7F or (frame and cmd == frame[0] | 0x80)


def test_cli_refuses_a_bad_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "bad.json"
    state.write_text('{"serial": 1}')
    state.chmod(0o600)
    assert main(["--port", "0", "--state", str(state)]) == 1
    assert "not valid" in capsys.readouterr().err
    assert main(["--port", "0", "--state", str(tmp_path / "missing" / "hsm.json")]) == 1
    assert "cannot write the state file" in capsys.readouterr().err
    # The state holds the device's keys: a state file others can read is refused, naming the fix, and stays as it was.
    state.write_text("{}")
    state.chmod(0o644)
    assert main(["--port", "0", "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert "cannot read the state file" in err and f"chmod 600 {state}" in err
    assert state.read_text() == "{}"


def test_console_script_runs_and_keeps_state(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "hsm.json"

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pykms.harness.yubihsm_sim.server", "--port", "0", "--state", str(state)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        return proc, line.rsplit(" ", 1)[-1].strip()

    proc, url = start()
    try:
        s = YubiHsm.connect(url).create_session_derived(1, "password")
        pub = AsymmetricKey.generate(s, 2, "p", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519).get_public_key()
    finally:
        proc.terminate()
        proc.wait(10)
    proc, url = start()
    try:
        s = YubiHsm.connect(url).create_session_derived(1, "password")
        assert AsymmetricKey(s, 2).get_public_key() == pub
    finally:
        proc.terminate()
        proc.wait(10)


class DeviceMachine(RuleBasedStateMachine):
    """Sessions x commands x time against a model: at most 16 sessions, idle ones expire after 30 s, closed or
    expired sessions refuse commands, keys exist exactly when the model says, and every signature verifies."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.device = Device(now=self.clock)
        self.hsm = YubiHsm(DirectBackend(self.device))
        self.sessions: dict[int, tuple[object, float]] = {}  # our handle -> (AuthSession, last use)
        self.next_handle = 0
        self.keys: dict[int, object] = {}  # key id -> public key

    def _live(self) -> dict[int, tuple[object, float]]:
        return {h: v for h, v in self.sessions.items() if self.clock.t - v[1] <= 30.0}

    @rule()
    def open_session(self) -> None:
        live = self._live()
        if len(live) >= 16:
            with pytest.raises(YubiHsmDeviceError) as exc:
                self.hsm.create_session_derived(1, "password")
            assert _code(exc) == ERROR.SESSIONS_FULL
            return
        self.sessions[self.next_handle] = (self.hsm.create_session_derived(1, "password"), self.clock.t)
        self.next_handle += 1

    @rule(seconds=st.sampled_from([1.0, 10.0, 29.0, 31.0]))
    def wait(self, seconds: float) -> None:
        self.clock.t += seconds

    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        live = self._live()
        if not live:
            return
        handle = data.draw(st.sampled_from(sorted(live)))
        session = live[handle][0]
        session.close()  # type: ignore[attr-defined]
        del self.sessions[handle]

    @rule(data=st.data(), key_id=st.integers(1, 4), op=st.sampled_from(["generate", "sign", "delete"]))
    def command(self, data: st.DataObject, key_id: int, op: str) -> None:
        if not self.sessions:
            return
        handle = data.draw(st.sampled_from(sorted(self.sessions)))
        session, _ = self.sessions[handle]
        if handle not in self._live():
            with pytest.raises(YubiHsmDeviceError) as exc:
                session.get_pseudo_random(1)  # type: ignore[attr-defined]
            del self.sessions[handle]
            if _code(exc) == ERROR.SESSION_FAILED:
                # Its id was given to a newer session, which the stale MAC has now ended, as on the device.
                stale_sid = session.sid  # type: ignore[attr-defined]
                for other, (live, _) in list(self._live().items()):
                    if live.sid == stale_sid:  # type: ignore[attr-defined]
                        del self.sessions[other]
            else:
                assert _code(exc) == ERROR.INVALID_SESSION
            return
        self.sessions[handle] = (session, self.clock.t)
        key = AsymmetricKey(session, key_id)
        if op == "generate":
            if key_id in self.keys:
                with pytest.raises(YubiHsmDeviceError) as exc:
                    AsymmetricKey.generate(session, key_id, "k", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
                assert _code(exc) == ERROR.OBJECT_EXISTS
            else:
                generated = AsymmetricKey.generate(session, key_id, "k", 1, CAPABILITY.SIGN_EDDSA, ALGORITHM.EC_ED25519)
                self.keys[key_id] = generated.get_public_key()
        elif key_id not in self.keys:
            with pytest.raises(YubiHsmDeviceError) as exc:
                key.sign_eddsa(b"m") if op == "sign" else key.delete()
            assert _code(exc) == ERROR.OBJECT_NOT_FOUND
        elif op == "sign":
            self.keys[key_id].verify(key.sign_eddsa(b"m %d" % key_id), b"m %d" % key_id)  # type: ignore[attr-defined]
        else:
            key.delete()
            del self.keys[key_id]

    @invariant()
    def sessions_match_the_model(self) -> None:
        assert self.device.session_count == len(self._live()) <= 16


TestDeviceMachine = DeviceMachine.TestCase
TestDeviceMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestDeviceMachine.pytestmark = [pytest.mark.slow]
