"""tmkms v0.15 set-ups, as fixtures (tests/fixtures/tmkms): each loads and starts unchanged, or is refused at
start-up with the file, the key and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pykms.config import KmsConfig, load_config
from pykms.errors import ConfigError
from pykms.extensions import plan_extensions
from pykms.guard.factory import default_state_path
from pykms.harness.simulator import ValidatorSimulator
from tests.e2e import KmsProcess, accept, write_home

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tmkms"

#: Fixtures pykms refuses at start-up, with the words the refusal must contain (the key and the fix).
REFUSED_AT_START = {
    # tmkms's ledgertm template leaves protocol_version at v0.38 and sign_extensions unset: pykms would sign
    # extensions there (see pykms.extensions), which a Ledger cannot; the fix is tmkms's own key.
    "tmkms-ledgertm.toml": ("chain.sign_extensions", "sign_extensions = false"),
}


#: Fixtures refused when loading, with the words the refusal must contain.
REFUSED_AT_LOAD = {
    "tmkms-init-fortanixdsm.toml": ("providers.fortanixdsm", "softsign, yubihsm, ledgertm or pkcs11"),
}


def _load(path: Path) -> KmsConfig:
    return load_config(path, log=lambda *_a, **_k: None)


def _start_checks(config: KmsConfig) -> None:
    """What `pykms start` decides from the config alone before it dials: the extension plan of every validator."""
    for validator in config.validators:
        chain = next(c for c in config.chains if c.id == validator.chain_id)
        ledger = any(chain.id in p.chain_ids for p in config.providers.ledger)
        plan_extensions(
            validator.protocol_version,
            chain.sign_extensions,
            signs_extensions=not ledger,
            chain_id=chain.id,
            file=str(config.path),
        )


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.toml") if p.name != "commands.toml"))
def test_every_tmkms_fixture_loads_or_is_refused_with_the_fix(name: str) -> None:
    if name in REFUSED_AT_LOAD:
        with pytest.raises(ConfigError) as refused:
            _load(FIXTURES / name)
        text = str(refused.value)
        assert str(FIXTURES / name) in text and all(w in text for w in REFUSED_AT_LOAD[name]), text
        assert "placeholder-not-a-real-api-key" not in text
        return
    config = _load(FIXTURES / name)
    assert config.chains and config.validators
    if name in REFUSED_AT_START:
        with pytest.raises(ConfigError) as info:
            _start_checks(config)
        text = str(info.value)
        assert str(FIXTURES / name) in text
        assert all(word in text for word in REFUSED_AT_START[name]), text
    else:
        _start_checks(config)


def test_cosmos_json_with_prefixes_timeout_and_state_hook() -> None:
    warnings: list[str] = []
    config = load_config(FIXTURES / "neutron-cosmos-json.toml", log=lambda msg, **_k: warnings.append(str(msg)))
    (chain,) = config.chains
    assert chain.key_format.type == "cosmos-json"
    assert chain.sign_extensions is True
    assert config.validators[0].timeout == 7
    (hook,) = [w for w in config.warnings if "state_hook" in w]
    assert "pykms state import" in hook and "pykms state init" in hook, "the warning says what to do instead"
    plan = plan_extensions(config.validators[0].protocol_version, chain.sign_extensions)
    assert plan.dialect == "v0.38" and plan.sign_extensions is True


def test_an_unknown_key_in_cosmos_json_is_still_refused(tmp_path: Path) -> None:
    text = (
        (FIXTURES / "neutron-cosmos-json.toml")
        .read_text()
        .replace('type = "cosmos-json"', 'type = "cosmos-json", acount = 1')
    )
    (tmp_path / "tmkms.toml").write_text(text)
    with pytest.raises(ConfigError, match="acount"):
        _load(tmp_path / "tmkms.toml")


def _tmkms_home(tmp_path: Path) -> Path:
    """A tmkms home with the config one folder down and the files relative to the home."""
    home = tmp_path / "kms-home"
    (home / "config").mkdir(parents=True)
    (home / "secrets").mkdir()
    shutil.copy(FIXTURES / "tmkms-relative.toml", home / "config" / "tmkms.toml")
    (home / "secrets" / "relative-1-consensus.key").write_text("key-at-home\n")
    return home


def test_relative_paths_of_a_tmkms_layout_started_from_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _tmkms_home(tmp_path)
    monkeypatch.chdir(home)
    config = _load(home / "config" / "tmkms.toml")
    assert config.providers.softsign[0].path == home / "secrets" / "relative-1-consensus.key"
    # Files that exist nowhere yet (to be created) resolve beside the config, as pykms always did.
    assert config.chains[0].state_file == home / "config" / "state" / "relative-1-consensus.json"
    # The same file beside the config, byte for byte: nothing to tell apart, accepted.
    (home / "config" / "secrets").mkdir()
    shutil.copy(home / "secrets" / "relative-1-consensus.key", home / "config" / "secrets")
    _load(home / "config" / "tmkms.toml")
    # A different file of the same name beside the config: refused, both named.
    (home / "config" / "secrets" / "relative-1-consensus.key").write_text("another key\n")
    with pytest.raises(ConfigError) as info:
        _load(home / "config" / "tmkms.toml")
    text = str(info.value)
    assert "providers.softsign[0].path" in text
    assert str(home / "secrets" / "relative-1-consensus.key") in text
    assert str(home / "config" / "secrets" / "relative-1-consensus.key") in text
    # Started from elsewhere, only the config's folder is a candidate: pykms's rule, unchanged.
    monkeypatch.chdir(tmp_path)
    assert _load(home / "config" / "tmkms.toml").providers.softsign[0].path.read_text() == "another key\n"


def test_unset_state_file_defaults_to_tmkms_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _tmkms_home(tmp_path)
    config_path = home / "config" / "tmkms.toml"
    config_path.write_text(config_path.read_text().replace('state_file = "state/relative-1-consensus.json"\n', ""))
    monkeypatch.chdir(home)
    config = _load(config_path)
    assert config.chains[0].state_file is None
    name = "relative-1_priv_validator_state.json"  # tmkms src/chain.rs: "{chain_id}_priv_validator_state.json"
    assert default_state_path(config, config.chains[0]) == home / "config" / name
    (home / name).write_text("{}")  # tmkms's place, relative to where it runs
    assert default_state_path(config, config.chains[0]) == home / name
    (home / "config" / name).write_text('{"height": "1"}')
    with pytest.raises(ConfigError, match="different contents"):
        default_state_path(config, config.chains[0])
    (home / name).unlink()
    (home / "config" / name).unlink()
    (home / "config" / "state").mkdir()
    (home / "config" / "state" / name).write_text("{}")  # where earlier pykms releases put it
    assert default_state_path(config, config.chains[0]) == home / "config" / "state" / name


def test_validator_timeout_closes_an_idle_link_as_tmkms_does(tmp_path: Path) -> None:
    """tmkms: timeout = N is the TCP link's read timeout (src/connection/tcp.rs); pykms's idle default is 20 s."""
    import time

    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="t-chain")
    addr = sim.listen()
    config = write_home(tmp_path / "kms", [addr], chain_id="t-chain", extra_validator="timeout = 2")
    assert "timeout = 2" in config.read_text()
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        assert link.ping() is not None
        started = time.monotonic()
        with pytest.raises(Exception):
            link.recv_body(timeout=15)
        waited = time.monotonic() - started
        print(f"idle link closed after {waited:.2f} s with timeout = 2")
        assert 1.5 < waited < 10, waited
    finally:
        kms.stop()
        sim.close()
    assert "no request for 2 s" in kms.log_text()


def test_account_key_alone_is_the_chains_key_and_init_networks_get_one_hsm_key_each() -> None:
    (soft,) = _load(FIXTURES / "softsign-account-secp256k1.toml").providers.softsign
    assert soft.key_type == "account" and soft.chain_ids == ("secp-chain-1",)
    config = _load(FIXTURES / "tmkms-init-yubihsm-networks.toml")
    assert [(k.key, k.chain_ids) for k in config.providers.yubihsm[0].keys] == [
        (1, ["cosmoshub-3"]), (2, ["irishub"]), (3, ["osmosis-1"]),
    ]  # fmt: skip
    assert [v.protocol_version for v in config.validators] == ["v0.34"] * 3
