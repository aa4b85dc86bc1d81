"""``[keyholder]`` settings and the supervisor of the split, with real child processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pykms.config import parse_config
from pykms.errors import ConfigError
from pykms.keyholder import process
from pykms.keyholder.client import RemoteKeyHolder
from pykms.keyholder.settings import KeyholderSettings, parse_keyholder

PEER = Path(__file__).with_name("keyholder_peer.py")
SEED = bytes(range(1, 33))
TOML = Path("/etc/pykms/tmkms.toml")


def test_settings_defaults_and_values() -> None:
    assert parse_keyholder(None, TOML) == KeyholderSettings()
    s = parse_keyholder({"addr": "unix:///run/kh.sock", "allowed_uids": [1000], "front_user": "pykms"}, TOML)
    assert s == KeyholderSettings("process", Path("/run/kh.sock"), "pykms", (1000,))
    assert parse_keyholder({"isolation": "none"}, TOML).isolation == "none"


@pytest.mark.parametrize(
    ("raw", "key", "fix"),
    [
        ({"isolation": "vm"}, "keyholder.isolation", 'isolation = "process"'),
        ({"addr": "tcp://1.2.3.4:5"}, "keyholder.addr", "unix:///absolute"),
        ({"addr": "unix://relative.sock"}, "keyholder.addr", "unix:///absolute"),
        ({"addr": "unix:///a.sock", "isolation": "none"}, "keyholder.addr", "remove addr"),
        ({"front_user": "root"}, "keyholder.front_user", "nobody"),
        ({"allowed_uids": [-1]}, "keyholder.allowed_uids", "allowed_uids = [1000]"),
        ({"allowed_uids": [True]}, "keyholder.allowed_uids", "allowed_uids = [1000]"),
        ({"isloation": "none"}, "keyholder.isloation", "isolation"),
        ("process", "keyholder", "[keyholder]"),
    ],
)
def test_settings_errors_name_file_key_and_fix(raw: object, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_keyholder(raw, TOML)
    assert err.value.file == str(TOML) and err.value.key == key and fix in str(err.value)


def test_tmkms_toml_hands_the_table_over(tmp_path: Path) -> None:
    config = parse_config({"keyholder": {"isolation": "process", "front_user": "pykms"}}, tmp_path / "tmkms.toml")
    assert config.keyholder.isolation == "process" and config.keyholder.front_user == "pykms"
    assert parse_config({}, tmp_path / "tmkms.toml").keyholder == KeyholderSettings()


def test_split_commands_start_fresh_interpreters() -> None:
    holder, front = process.split_commands(Path("/c/tmkms.toml"), Path("/r/kh.sock"), 65534)
    assert holder[:3] == [sys.executable, "-m", "pykms.cli.main"] and front[:3] == holder[:3]
    assert holder[3:] == [
        "keyholder",
        "serve",
        "-c",
        "/c/tmkms.toml",
        "--listen",
        "unix:///r/kh.sock",
        "--allowed-uid",
        "65534",
    ]
    assert front[3:] == ["start", "-c", "/c/tmkms.toml"]


@pytest.mark.skipif(os.getuid() != 0, reason="needs a second user (nobody) and files of root")
def test_front_user_must_not_read_the_key_files() -> None:
    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o755)
        private, shared = top / "private.key", top / "shared.key"
        private.write_text("k")
        shared.write_text("k")
        os.chmod(private, 0o600)
        os.chmod(shared, 0o644)
        uid, _gid, warnings = process.front_identity("nobody", [private, shared], TOML)
        assert uid == 65534
        assert len(warnings) == 1 and str(shared) in warnings[0] and "chmod 600" in warnings[0]
        os.chmod(top, 0o700)  # a directory it cannot enter hides even a 0644 file
        assert process.front_identity("nobody", [shared], TOML)[2] == []
        with pytest.raises(ConfigError, match="does not exist") as err:
            process.front_identity("no-such-user-pykms", [], TOML)
        assert err.value.key == "keyholder.front_user"
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.getuid() != 0, reason="needs a second user (nobody) and files of root")
def test_front_user_must_read_the_config_and_the_identity_key_and_the_fixes_work() -> None:
    from pykms.config import load_config
    from pykms.harness.demo import write_demo_home
    from pykms.secretconn.identity import load_identity

    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o755)
        path = write_demo_home(top / "home", "tcp://127.0.0.1:26659")
        for directory in (top / "home", top / "home" / "secrets"):
            os.chmod(directory, 0o755)  # reachable, so that each refusal is about the file itself
        os.chmod(path, 0o600)
        config = load_config(path)
        identity = config.validators[0].secret_key
        assert identity is not None and identity.stat().st_mode & 0o777 == 0o600
        with pytest.raises(ConfigError, match="cannot read") as err:
            process.check_front_reads("nobody", config)
        assert err.value.key == "keyholder.front_user" and str(path) in str(err.value)
        # The fix it names, word for word: the config becomes group-readable by the front user's group.
        fix = str(err.value.fix)
        assert fix.startswith(f"chgrp 65534 {path} && chmod g+r {path}")
        os.chown(path, 0, 65534)
        os.chmod(path, 0o640)
        with pytest.raises(ConfigError, match="cannot read") as err:
            process.check_front_reads("nobody", config)
        assert err.value.key == "validator[0].secret_key" and str(identity) in str(err.value)
        assert str(err.value.fix).startswith(f"chown nobody {identity} (it stays 0600)")
        os.chown(identity, 65534, -1)
        process.check_front_reads("nobody", config)  # now the front can start
        load_identity(identity)  # and the key file still passes pykms's own permission check
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.getuid() != 0, reason="needs a second user (nobody) and files of root")
def test_front_user_must_reach_the_python_it_runs(tmp_path: Path) -> None:
    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o755)
        python = top / "python3"
        python.write_bytes(b"#!")
        os.chmod(python, 0o755)
        process.check_front_python("nobody", TOML, python)  # reachable: no error
        os.chmod(top, 0o700)  # like a pyenv under /root
        with pytest.raises(ConfigError, match="cannot run this Python") as err:
            process.check_front_python("nobody", TOML, python)
        assert err.value.key == "keyholder.front_user" and err.value.file == str(TOML)
    finally:
        shutil.rmtree(top)


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_supervisor_restarts_either_child_and_stops_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "BACKOFF_S", (0.05, 0.5))
    sock = tmp_path / "run" / "kh.sock"
    env = {**os.environ, "PYTHONPATH": str(PEER.parent.parent)}
    holder = process.Child("keyholder", [sys.executable, str(PEER), str(sock), SEED.hex()], env, wait_ready=True)
    front = process.Child("front", [sys.executable, "-c", "import time; time.sleep(600)"], env)
    events: list[tuple[str, dict[str, object]]] = []
    sup = process.Supervisor(holder, front, log=lambda e, **k: events.append((e, k)))
    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        _wait(lambda: front.alive())
        client = RemoteKeyHolder(sock, reconnect_s=20.0)
        assert client.sign("chain-a", (1).to_bytes(8, "big")).fresh  # served as soon as the front is up
        assert holder.proc is not None and front.proc is not None
        first_holder, first_front = holder.proc.pid, front.proc.pid
        holder.proc.kill()
        _wait(lambda: holder.alive() and holder.proc.pid != first_holder)  # type: ignore[union-attr]
        assert client.sign("chain-a", (2).to_bytes(8, "big")).fresh  # the restarted key holder answers
        front.proc.kill()
        _wait(lambda: front.alive() and front.proc.pid != first_front)  # type: ignore[union-attr]
        assert [k["child"] for e, k in events if e == "keyholder_child_restart"] == ["keyholder", "front"]
        client.close()
    finally:
        sup.stop()
        runner.join(30)
    assert not runner.is_alive() and not holder.alive() and not front.alive()
    assert front.proc is not None and front.proc.returncode == -15  # SIGTERM, not a kill


def test_a_front_that_cannot_start_does_not_leave_the_key_holder_behind(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "kh.sock"
    env = {**os.environ, "PYTHONPATH": str(PEER.parent.parent)}
    holder = process.Child("keyholder", [sys.executable, str(PEER), str(sock), SEED.hex()], env, wait_ready=True)
    front = process.Child("front", [str(tmp_path / "no-such-interpreter")], env)
    with pytest.raises(FileNotFoundError):
        process.Supervisor(holder, front, log=lambda e, **k: None).run()
    assert holder.proc is not None and not holder.alive() and holder.proc.returncode == -15
