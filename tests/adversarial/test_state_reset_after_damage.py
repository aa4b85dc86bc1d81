"""A tired operator follows the error message after the state file was damaged: no command it suggests may
reset the double-sign guard without --force, and --force never loses the damaged file.

The path, on a real ``pykms start`` and the real CLI: sign a prevote at height 5, damage the state file, read
why pykms stops the chain, run each suggested command as written (with this home's -c/--chain), then start
pykms again and ask it for a conflicting prevote at height 5.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from pykms.harness.simulator import PREVOTE, AcceptTimeout, ValidatorSimulator, make_vote
from tests.adversarial.common import pykms
from tests.e2e import KmsProcess, accept, write_home

CHAIN = "test-chain"


def follow(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command as an error message wrote it (``pykms state init``), with this home's arguments."""
    return pykms(*command.split()[1:], *args)


def _stop_reason(log: str) -> str:
    for line in log.splitlines():
        if '"chain_stopped"' in line:
            return str(json.loads(line)["reason"])
    raise AssertionError(f"pykms did not stop the chain:\n{log}")


def test_suggested_commands_do_not_reset_a_damaged_state(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    state_file = next((tmp_path / "kms" / "state").glob("*.json"))
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        first = link.sign_vote(make_vote(5, 0, PREVOTE, b"A"))
        assert first.error is None
    finally:
        kms.stop()
    # An older state the operator might find lying around (the node's file from before the migration).
    old_state = tmp_path / "node_priv_validator_state.json"
    old_state.write_text('{"height": "2", "round": 0, "step": 2}')

    state_file.write_bytes(state_file.read_bytes()[:20])  # damaged: torn JSON
    damaged = state_file.read_bytes()

    second = KmsProcess(config, tmp_path / "pykms2.log")
    second.start()
    assert second.proc is not None and second.proc.wait(timeout=60) != 0  # nothing to serve: the chain stopped
    reason = _stop_reason(second.log_text())
    suggested = re.findall(r"`(pykms state \w+) …`", reason)
    assert "pykms state init" in suggested and "pykms state import" in suggested, reason
    init_cmd, import_cmd = "pykms state init", "pykms state import"

    # As the message writes them, with this home's config and chain.
    init = follow(init_cmd, "-c", str(config), "--chain", CHAIN)
    assert init.returncode != 0, f"state init reset a damaged state without --force:\n{init.stdout}"
    assert state_file.read_bytes() == damaged
    assert "--force" in init.stderr and "height 0" in init.stderr, init.stderr
    imported = follow(import_cmd, "-c", str(config), "--chain", CHAIN, str(old_state))
    assert imported.returncode != 0, f"state import replaced an unreadable state without --force:\n{imported.stdout}"
    assert state_file.read_bytes() == damaged
    assert "height 0" in reason  # the message says what init does to the guard

    # pykms still refuses to sign at height 5 with block B.
    third = KmsProcess(config, tmp_path / "pykms3.log")
    third.start()
    try:
        link = None
        while third.proc is not None and third.proc.poll() is None:  # exits: the chain stays stopped
            try:
                link = sim.accept(timeout=0.5)
                break
            except AcceptTimeout:
                continue
        if link is not None:
            conflicting = link.sign_vote(make_vote(5, 0, PREVOTE, b"B"))
            assert conflicting.error is not None, "a conflicting prevote at height 5 was signed"
    finally:
        third.stop()
        sim.close()

    # --force replaces it, and keeps the damaged bytes beside it.
    forced = follow(init_cmd, "-c", str(config), "--chain", CHAIN, "--force")
    assert forced.returncode == 0, forced.stderr
    kept = list(state_file.parent.glob(state_file.name + ".replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged, forced.stdout
    assert str(kept[0]) in forced.stdout
    again = follow(init_cmd, "-c", str(config), "--chain", CHAIN, "--force")
    assert again.returncode == 0, again.stderr
    assert len(list(state_file.parent.glob(state_file.name + ".replaced-*"))) == 2  # never overwritten
    assert kept[0].read_bytes() == damaged


def test_state_init_refuses_a_readable_state_and_import_an_older_one(tmp_path: Path) -> None:
    config = write_home(tmp_path / "kms", ["tcp://127.0.0.1:9"], chain_id=CHAIN)
    set_to = pykms("state", "init", "-c", str(config), "--chain", CHAIN, "--height", "7", "--force")
    assert set_to.returncode == 0, set_to.stderr
    init = pykms("state", "init", "-c", str(config), "--chain", CHAIN)
    assert init.returncode != 0 and "height 7" in init.stderr and "--force" in init.stderr
    older = tmp_path / "older.json"
    older.write_text('{"height": "3", "round": 0, "step": 1}')
    imported = pykms("state", "import", "-c", str(config), "--chain", CHAIN, str(older))
    assert imported.returncode == 8 and "older" in imported.stderr, imported.stderr
    shown = pykms("state", "show", "-c", str(config), "--chain", CHAIN)
    assert json.loads(shown.stdout)["height"] == "7"


def test_a_deleted_state_is_not_recreated_at_height_0(tmp_path: Path) -> None:
    """The state file was deleted after signing (a clean-up gone wrong); pykms's message suggests ``state
    init``: run as written it must refuse, since the lock file shows a state was there."""
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    state_file = next((tmp_path / "kms" / "state").glob("*.json"))
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        assert accept(sim, kms).sign_vote(make_vote(5, 0, PREVOTE, b"A")).error is None
    finally:
        kms.stop()
        sim.close()
    state_file.unlink()
    init = pykms("state", "init", "-c", str(config), "--chain", CHAIN)
    assert init.returncode != 0, f"state init recreated a deleted state at height 0:\n{init.stdout}"
    assert not state_file.exists() and "--force" in init.stderr
    forced = pykms("state", "init", "-c", str(config), "--chain", CHAIN, "--force")
    assert forced.returncode == 0, forced.stderr
