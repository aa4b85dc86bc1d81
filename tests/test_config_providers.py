"""The provider table: one place drives config loading and signer building; heavy libraries wait for the build."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pykms.config import ProvidersConfig, load_config
from pykms.config.providers import PROVIDERS
from pykms.errors import ConfigError
from pykms.providers.registry import build_signers
from pykms.providers.softsign import keygen

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tmkms"

PKCS11 = """
[[providers.pkcs11]]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "pykms"
user_pin_env = "PYKMS_PIN"
keys = [{ chain_ids = ["c-2"], label = "k2" }, { chain_ids = ["c-1"], label = "k1" }]
"""


def _config(tmp_path: Path, providers: str, chains: tuple[str, ...] = ("c-1", "c-2")) -> Path:
    text = "".join(f'[[chain]]\nid = "{c}"\nkey_format = {{ type = "hex" }}\n\n' for c in chains)
    path = tmp_path / "tmkms.toml"
    path.write_text(text + providers)
    return path


def test_loading_imports_no_provider_library() -> None:
    """yubihsm, ledgerblue and PKCS#11 bindings are imported when signers are built, never at config load."""
    code = (
        "import sys; from pathlib import Path; from pykms.config import load_config\n"
        f"for name in ('tmkms-yubihsm.toml', 'tmkms-ledgertm.toml'):\n"
        f"    load_config(Path({str(FIXTURES)!r}) / name, log=lambda *a, **k: None)\n"
        "heavy = ('yubihsm', 'ledgerblue', 'pkcs11', 'pykms.providers.yubihsm', 'pykms.providers.ledger')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=FIXTURES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_one_key_per_chain_is_refused_at_load_naming_file_both_entries_and_fix(tmp_path: Path) -> None:
    path = _config(tmp_path, f'[[providers.softsign]]\nchain_ids = ["c-1"]\npath = "{tmp_path / "k"}"\n' + PKCS11)
    with pytest.raises(ConfigError) as info:
        load_config(path, log=lambda *_a, **_k: None)
    text = str(info.value)
    assert str(path) in text
    assert "providers.softsign[0]" in text and "providers.pkcs11[0].keys[1]" in text
    assert "remove 'c-1' from the chain_ids of all but one" in text
    # Two keys of one PKCS#11 token for two chains: fine, each named by its own entry.
    load_config(_config(tmp_path, PKCS11), log=lambda *_a, **_k: None)


def test_the_table_covers_every_provider_field_and_refuses_an_unknown_section(tmp_path: Path) -> None:
    fields = {f.name for f in dataclasses.fields(ProvidersConfig)}
    assert {section.field for section in PROVIDERS.values()} == fields
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, '[[providers.softsig]]\nchain_ids = ["c-1"]\n'), log=lambda *_a, **_k: None)
    assert info.value.key == "providers.softsig"
    assert "did you mean `softsign`" in str(info.value)
    for name in PROVIDERS:
        assert name in str(info.value), "the known sections come from the table"


def test_build_signers_maps_every_chain_of_an_entry_to_its_signer(tmp_path: Path) -> None:
    keygen(tmp_path / "a.key")
    keygen(tmp_path / "b.key")
    providers = (
        f'[[providers.softsign]]\nchain_ids = ["c-1", "c-2"]\npath = "{tmp_path / "a.key"}"\n\n'
        f'[[providers.softsign]]\nchain_ids = ["c-3"]\npath = "{tmp_path / "b.key"}"\n'
    )
    config = load_config(_config(tmp_path, providers, ("c-1", "c-2", "c-3")), log=lambda *_a, **_k: None)
    signers = build_signers(config)
    try:
        assert sorted(signers) == ["c-1", "c-2", "c-3"]
        assert signers["c-1"] is signers["c-2"] and signers["c-3"] is not signers["c-1"]
        assert signers["c-1"].public_key() != signers["c-3"].public_key()
    finally:
        for signer in {id(s): s for s in signers.values()}.values():
            signer.close()
