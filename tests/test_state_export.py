"""``pykms state export``: the file the other signer reads, parsed by its rules; export never touches pykms's state."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykms.guard.export import UNKNOWN_BLOCK, export_state, to_tmkms_json
from pykms.guard.state import SignState, from_cometbft_json, from_tmkms_json
from pykms.guard.store import create_state_file
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_proposal, make_vote
from pykms.privval.signbytes import proposal_sign_bytes, vote_sign_bytes

CHAIN = "export-chain"
HEX64 = re.compile(r"[0-9A-F]{64}\Z")


def parse_as_tmkms(data: bytes) -> dict[str, Any]:
    """tmkms's reading (cometbft-rs consensus::State serde): exactly these keys, decimal strings for height and
    round, step 0..2, block_id null or {hash: 32-byte UPPERCASE hex, parts: {total: number, hash: hex}}."""
    obj = json.loads(data)
    assert set(obj) == {"height", "round", "step", "block_id"}
    assert isinstance(obj["height"], str) and obj["height"].isdigit()
    assert isinstance(obj["round"], str) and obj["round"].isdigit()
    assert type(obj["step"]) is int and 0 <= obj["step"] <= 2
    block_id = obj["block_id"]
    if block_id is not None:
        assert set(block_id) == {"hash", "parts"} and HEX64.match(block_id["hash"])
        assert set(block_id["parts"]) == {"total", "hash"} and type(block_id["parts"]["total"]) is int
        assert HEX64.match(block_id["parts"]["hash"])
    return dict(obj)


def tmkms_allows(last: dict[str, Any], height: int, round_: int, tm_step: int, block: str | None) -> bool:
    """tmkms v0.15 src/chain/state.rs update_consensus_state, as a predicate (block = block hash or None)."""
    h, r, s = int(last["height"]), int(last["round"]), last["step"]
    old = last["block_id"]["hash"] if last["block_id"] else None
    if (height, round_) != (h, r):
        return (height, round_) > (h, r)
    if tm_step < s:
        return False
    return not (block != old and ((block is not None and old is not None) or tm_step == s))


def parse_as_filepv(data: bytes) -> dict[str, Any]:
    """CometBFT FilePVLastSignState JSON: height a string, round and step numbers, base64 signature, hex bytes."""
    obj = json.loads(data)
    assert set(obj) <= {"height", "round", "step", "signature", "signbytes"}
    assert isinstance(obj["height"], str) and type(obj["round"]) is int and type(obj["step"]) is int
    if "signbytes" in obj:
        assert re.fullmatch(r"(?:[0-9A-F]{2})+", obj["signbytes"]) and "signature" in obj
    return dict(obj)


def _signed_precommit(height: int = 7, block: str = "blk") -> tuple[SignState, str]:
    vote = make_vote(height, 1, PRECOMMIT, block)
    state = SignState(height, 1, 3, bytes(64), vote_sign_bytes(CHAIN, vote))
    return state, bytes(vote.block_id.hash).hex().upper()


def test_tmkms_export_carries_the_block_and_tmkms_refuses_what_pykms_would() -> None:
    state, block = _signed_precommit()
    last = parse_as_tmkms(to_tmkms_json(state))
    assert (last["height"], last["round"], last["step"]) == ("7", "1", 2)
    assert last["block_id"]["hash"] == block
    assert tmkms_allows(last, 7, 1, 2, block)  # the same block again (tmkms re-signs it)
    assert not tmkms_allows(last, 7, 1, 2, "AB" * 32)  # another block: a double sign
    assert not tmkms_allows(last, 7, 1, 2, None)  # nil after a block at the same step
    assert not tmkms_allows(last, 7, 1, 1, block)  # a step back
    assert tmkms_allows(last, 7, 2, 0, "AB" * 32) and tmkms_allows(last, 8, 0, 0, "AB" * 32)
    # And pykms's own import reads it back at the same height/round/step.
    assert from_tmkms_json(to_tmkms_json(state), "x") == SignState(7, 1, 3)


def test_tmkms_export_of_nil_proposal_and_unknown_payloads() -> None:
    nil = make_vote(5, 0, PREVOTE, b"")
    last = parse_as_tmkms(to_tmkms_json(SignState(5, 0, 2, bytes(64), vote_sign_bytes(CHAIN, nil))))
    assert last["block_id"] is None and last["step"] == 1
    proposal = make_proposal(6, 0, "p")
    last = parse_as_tmkms(to_tmkms_json(SignState(6, 0, 1, bytes(64), proposal_sign_bytes(CHAIN, proposal))))
    assert last["step"] == 0 and last["block_id"]["hash"] == bytes(proposal.block_id.hash).hex().upper()
    # Imported from tmkms (no sign bytes): the payload is unknown, so tmkms must refuse the whole step and every
    # block later in the round, exactly as pykms does; nil at a later step stays allowed.
    last = parse_as_tmkms(to_tmkms_json(SignState(9, 0, 2)))
    assert last["block_id"] == UNKNOWN_BLOCK
    assert not tmkms_allows(last, 9, 0, 1, None) and not tmkms_allows(last, 9, 0, 1, "CD" * 32)
    assert not tmkms_allows(last, 9, 0, 2, "CD" * 32) and tmkms_allows(last, 9, 0, 2, None)
    # A fresh state is tmkms's fresh state.
    assert parse_as_tmkms(to_tmkms_json(SignState.initial())) == {
        "height": "0",
        "round": "0",
        "step": 0,
        "block_id": None,
    }


@given(
    st.integers(0, 2**63 - 1), st.integers(0, 2**31 - 1), st.integers(0, 3), st.booleans(),
)  # fmt: skip
def test_round_trips(height: int, round_: int, step: int, with_payload: bool) -> None:
    if height == 0:
        step = 0
    payload = b""
    if with_payload and step:
        payload = (
            proposal_sign_bytes(CHAIN, make_proposal(height, round_, "b"))
            if step == 1
            else vote_sign_bytes(CHAIN, make_vote(height, round_, step - 1, "b"))
        )
    state = SignState(height, round_, step, bytes(64) if payload else b"", payload)
    filepv = export_state(state, "cometbft")
    parse_as_filepv(filepv)
    assert from_cometbft_json(filepv, "x") == state  # lossless
    back = from_tmkms_json(export_state(state, "tmkms"), "x")
    # Same height and round; the step is the same, or proposal where nothing was signed yet (never lower).
    assert (back.height, back.round) == (height, round_)
    assert back.step == step or (step == 0 and back.step == 1 and height > 0)


def _pykms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pykms.cli.main", *args], capture_output=True, text=True, check=False)


def _home(root: Path, state_format: str = "json") -> tuple[Path, Path]:
    root.mkdir()
    state = root / "state.json"
    config = root / "tmkms.toml"
    config.write_text(
        f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\nstate_file = "{state}"\n'
        f'state_format = "{state_format}"\n\n'
        f'[[providers.softsign]]\nchain_ids = ["{CHAIN}"]\npath = "{root / "k.key"}"\n\n'
        f'[[validator]]\nchain_id = "{CHAIN}"\naddr = "unix://{root / "n.sock"}"\n'
    )
    return config, state


@pytest.mark.parametrize(("fmt", "store"), [("tmkms", "json"), ("cometbft", "json"), ("tmkms", "slots")])
def test_export_then_import_through_the_cli(tmp_path: Path, fmt: str, store: str) -> None:
    config, state_path = _home(tmp_path / "a", store)
    signed, _block = _signed_precommit(height=42)
    create_state_file(state_path, signed, fmt=store)
    before = (state_path.read_bytes(), os.stat(state_path).st_mtime_ns, os.stat(state_path).st_ino)
    out = tmp_path / f"exported-{fmt}.json"
    result = _pykms("state", "export", "-c", str(config), "--chain", CHAIN, "--format", fmt, str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    after = (state_path.read_bytes(), os.stat(state_path).st_mtime_ns, os.stat(state_path).st_ino)
    assert after == before, "export must not move or rewrite pykms's own state"
    assert not [p for p in out.parent.iterdir() if ".export-" in p.name], "no temporary file left behind"
    (parse_as_tmkms if fmt == "tmkms" else parse_as_filepv)(out.read_bytes())
    # Exporting onto the live state file is refused, and leaves it as it was.
    refused = _pykms("state", "export", "-c", str(config), "--chain", CHAIN, "--format", fmt, str(state_path))
    assert refused.returncode == 5 and "own state file" in refused.stderr
    assert hashlib.sha256(state_path.read_bytes()).digest() == hashlib.sha256(before[0]).digest()
    # The round trip: another pykms imports what was exported.
    config_b, _state_b = _home(tmp_path / "b")
    result = _pykms("state", "import", "-c", str(config_b), "--chain", CHAIN, str(out))
    assert result.returncode == 0, result.stderr
    shown = json.loads(_pykms("state", "show", "-c", str(config_b), "--chain", CHAIN).stdout)
    assert (shown["height"], shown["round"], shown["step"]) == ("42", 1, 3)
    assert ("signbytes" in shown) == (fmt == "cometbft")


def test_a_failed_export_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pykms.guard import export

    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    target.chmod(0o600)

    def fail(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "replace", fail)
    with pytest.raises(OSError):
        export.write_export(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    monkeypatch.undo()
    export.write_export(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o600
