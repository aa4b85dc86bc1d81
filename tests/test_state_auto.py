"""state_format unset ("auto"): an existing state keeps its own format, new state is made as slots.

Real processes, files and sockets: a tmkms set-up with CometBFT JSON state signs and stays JSON; a chain whose
state is created by ``pykms state init`` gets slots, signs, and exports to CometBFT JSON; explicit formats still
refuse a file of the other kind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykms.config import load_config
from pykms.errors import StateCorrupt
from pykms.guard.factory import open_store
from pykms.guard.state import SLOTS_MAGIC, SignState, from_cometbft_json
from pykms.guard.store import (
    JsonStateStore,
    SlotStateStore,
    create_state_file,
    open_state_store,
    resolve_store_format,
)
from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from pykms.keyfiles import write_secret_file
from pykms.providers.softsign import keygen
from tests.e2e import KmsProcess, accept, write_home

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tmkms"


def _pykms(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pykms.cli.main", *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def _sign_prevotes(sim: ValidatorSimulator, kms: KmsProcess, heights: range) -> None:
    kms.start()
    try:
        link = accept(sim, kms)
        for height in heights:
            resp = link.sign_vote(make_vote(height, 0, PREVOTE, f"b{height}"))
            assert resp.error is None, resp.error
            assert len(bytes(resp.vote.signature)) == 64
        link.close()
    finally:
        assert kms.stop() == 0, kms.log_text()


def test_tmkms_setup_with_json_state_keeps_json_and_signs(tmp_path: Path) -> None:
    home = tmp_path / "kms-home"
    (home / "config").mkdir(parents=True)
    (home / "secrets").mkdir(mode=0o700)
    (home / "state").mkdir(mode=0o700)
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="relative-1")
    addr = sim.listen()
    text = (FIXTURES / "tmkms-relative.toml").read_text()
    assert "state_format" not in text
    (home / "config" / "tmkms.toml").write_text(text.replace('"tcp://127.0.0.1:26658"', f'"{addr}"'))
    keygen(home / "secrets" / "relative-1-consensus.key")
    write_secret_file(home / "secrets" / "kms-identity.key", base64.b64encode(os.urandom(32)))
    state = home / "state" / "relative-1-consensus.json"
    create_state_file(state, SignState(3, 0, 0), fmt="json")  # a node's priv_validator_state.json
    kms = KmsProcess(home / "config" / "tmkms.toml", tmp_path / "pykms.log", popen_kwargs={"cwd": home})
    try:
        _sign_prevotes(sim, kms, range(4, 7))
    finally:
        sim.close()
    data = state.read_bytes()
    assert not data.startswith(SLOTS_MAGIC), "an existing JSON state must stay JSON"
    assert json.loads(data)["height"] == "6"
    assert from_cometbft_json(data, str(state)).height == 6


def test_new_chain_gets_slots_signs_and_exports_json(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="auto-1")
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id="auto-1")
    config.write_text(config.read_text().replace('state_format = "json"\n', ""))
    chain = load_config(config).chains[0]
    assert chain.state_format == "auto" and chain.state_file is not None
    chain.state_file.unlink()  # a chain with no state yet (the demo home made one, and its lock file)
    Path(f"{chain.state_file}.lock").unlink(missing_ok=True)
    result = _pykms("state", "init", "-c", str(config), "--chain", "auto-1")
    assert result.returncode == 0, result.stderr
    assert chain.state_file.read_bytes().startswith(SLOTS_MAGIC), "new state is made as slots"
    kms = KmsProcess(config, tmp_path / "pykms.log")
    try:
        _sign_prevotes(sim, kms, range(1, 4))
    finally:
        sim.close()
    assert chain.state_file.read_bytes().startswith(SLOTS_MAGIC), "an existing slots state stays slots"
    out = tmp_path / "exported.json"
    result = _pykms("state", "export", "-c", str(config), "--chain", "auto-1", "--format", "cometbft", str(out))
    assert result.returncode == 0, result.stderr
    exported = from_cometbft_json(out.read_bytes(), str(out))
    assert (exported.height, exported.round, exported.step) == (3, 0, 2)


def test_state_import_keeps_the_format_of_the_file_it_replaces(tmp_path: Path) -> None:
    """``pykms state import --force`` over an existing JSON state: still JSON (auto never converts a file)."""
    config = write_home(tmp_path / "kms", ["tcp://127.0.0.1:1"], chain_id="auto-2")
    config.write_text(config.read_text().replace('state_format = "json"\n', ""))
    chain = load_config(config).chains[0]
    assert chain.state_file is not None
    node_state = tmp_path / "priv_validator_state.json"
    create_state_file(node_state, SignState(40, 0, 0), fmt="json")
    result = _pykms("state", "import", "-c", str(config), "--chain", "auto-2", str(node_state))
    assert result.returncode == 0, result.stderr
    assert json.loads(chain.state_file.read_bytes())["height"] == "40"


def test_auto_follows_the_file_and_explicit_formats_still_refuse_the_other(tmp_path: Path) -> None:
    json_path, slots_path, tmkms_path, new = (tmp_path / n for n in ("a.json", "b.slots", "c.json", "new"))
    create_state_file(json_path, SignState(5, 0, 0), fmt="json")
    create_state_file(slots_path, SignState(6, 0, 0), fmt="slots")
    tmkms_path.write_bytes(b'{"height":"7","round":"0","step":1,"block_id":null}')
    assert [resolve_store_format(p, "auto") for p in (json_path, slots_path, tmkms_path, new)] == [
        "json",
        "slots",
        "json",
        "slots",
    ]
    with open_state_store(json_path) as store:
        assert isinstance(store, JsonStateStore) and store.load().height == 5
    with open_state_store(slots_path) as store:
        assert isinstance(store, SlotStateStore) and store.load().height == 6
    # tmkms's own JSON is recognised as JSON, and the JSON store names the import that converts it.
    with open_state_store(tmkms_path) as store, pytest.raises(StateCorrupt, match="tmkms state file"):
        store.load()
    with pytest.raises(StateCorrupt, match='state_format = "json"'):
        open_state_store(json_path, "slots")
    with open_state_store(slots_path, "json") as store, pytest.raises(StateCorrupt, match='state_format = "slots"'):
        store.load()
    with pytest.raises(Exception, match="unknown state format"):
        resolve_store_format(json_path, "yaml")


def test_configured_chain_opens_its_file_in_the_files_format(tmp_path: Path) -> None:
    config_path = write_home(tmp_path / "kms", ["tcp://127.0.0.1:1"], chain_id="auto-3", state_format="slots")
    text = config_path.read_text()
    config_path.write_text(text.replace('state_format = "slots"\n', ""))
    config = load_config(config_path)
    with open_store(config, config.chains[0]) as store:
        assert isinstance(store, SlotStateStore) and store.load() == SignState(0, 0, 0, b"", b"")
    config_path.write_text(text.replace('state_format = "slots"', 'state_format = "json"'))
    config = load_config(config_path)
    with pytest.raises(StateCorrupt, match='set state_format = "slots"'):
        open_store(config, config.chains[0]).load()
    shutil.rmtree(tmp_path / "kms")


def test_cosigner_chains_default_to_auto(tmp_path: Path) -> None:
    """``pykms cosigner init``: a new chain's state is slots, an existing JSON one is kept; both then open."""
    from pykms.threshold.config import load_cosigner_config

    old, new = tmp_path / "old.json", tmp_path / "state" / "new"
    create_state_file(old, SignState(9, 0, 0), fmt="json")
    config_path = tmp_path / "cosigner.toml"
    config_path.write_text(
        'listen_addr = "tcp://127.0.0.1:27001"\nshare_file = "share.json"\nsecret_key = "id.key"\n'
        f'allowed_signers = ["{"ab" * 20}"]\n\n'
        f'[[chain]]\nid = "old-1"\nstate_file = "{old}"\n\n[[chain]]\nid = "new-1"\nstate_file = "{new}"\n'
    )
    result = _pykms("cosigner", "init", "-c", str(config_path), "--height", "5")
    assert result.returncode == 0, result.stderr
    assert new.read_bytes().startswith(SLOTS_MAGIC)
    assert json.loads(old.read_bytes())["height"] == "9"
    for chain in load_cosigner_config(config_path).chains:
        assert chain.state_format == "auto"
        with open_state_store(chain.state_file, chain.state_format) as store:
            assert store.load().height == (9 if chain.id == "old-1" else 5)


def test_pykms_init_then_state_init_makes_slots_and_state_show_prints_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _pykms("init", str(home), "--chain-id", "init-1").returncode == 0
    config = home / "tmkms.toml"
    assert "state_format" not in config.read_text()
    result = _pykms("state", "init", "-c", str(config), "--chain", "init-1")
    assert result.returncode == 0, result.stderr
    chain = load_config(config).chains[0]
    assert chain.state_file is not None and chain.state_file.read_bytes().startswith(SLOTS_MAGIC)
    shown = _pykms("state", "show", "-c", str(config), "--chain", "init-1")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["height"] == "0"
