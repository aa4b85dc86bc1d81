"""The config loader never echoes the value of a secret-bearing key, whatever the error.

Each case puts a secret (the digits below) where the loader refuses it, runs the real ``pykms start`` on that
file, and checks that neither stderr nor stdout carries the digits, while the error still names the key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import write_home

SECRET = "73915026"

YUBIHSM = '[[providers.yubihsm]]\nadapter = {{ type = "usb" }}\nauth = {{ key = 1, {entry} }}\n'
PKCS11 = '[[providers.pkcs11]]\nmodule = "/nonexistent/module.so"\ntoken_label = "t"\n{entry}\n'
GUARD = '[guard]\nbackend = "postgres"\n{entry}\n'

#: (section template, secret-bearing key): every key of the config that holds a secret or names where one is.
SECRET_KEYS = [
    (YUBIHSM, "password"),
    (YUBIHSM, "password_file"),
    (PKCS11, "user_pin"),
    (PKCS11, "pin"),
    (PKCS11, "user_pin_file"),
    (PKCS11, "user_pin_env"),
    (GUARD, "dsn"),
    (GUARD, "dsn_file"),
    (GUARD, "dsn_env"),
    ("", "secret_key"),  # the [[validator]]'s SecretConnection identity key
]
#: Wrong-typed values carrying the secret: each makes the loader refuse the key.
VALUES = [SECRET, f'["{SECRET}"]', f'{{ value = "{SECRET}" }}', f"{SECRET}.5"]


def _config(tmp_path: Path, template: str, key: str, value: str) -> Path:
    config = write_home(tmp_path / "kms", ["tcp://127.0.0.1:9"])
    text = config.read_text()
    entry = f"{key} = {value}"
    if template:
        text += "\n" + template.format(entry=entry)
    else:
        lines = [line for line in text.splitlines() if not line.startswith("secret_key")]
        text = "\n".join(lines).replace("[[validator]]", f"[[validator]]\n{entry}", 1) + "\n"
    config.write_text(text)
    return config


@pytest.mark.parametrize(("template", "key"), SECRET_KEYS, ids=[k for _, k in SECRET_KEYS])
def test_config_errors_never_echo_a_secret(tmp_path: Path, template: str, key: str) -> None:
    for number, value in enumerate(VALUES):
        config = _config(tmp_path / str(number), template, key, value)
        proc = subprocess.run(
            [sys.executable, "-m", "pykms.cli.main", "start", "-c", str(config), "--log-format", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 3, output  # a config error
        assert key in output, output  # the error still names the key
        assert SECRET not in output, f"{key} = {value}: the secret is echoed:\n{output}"
