"""No consensus signature is written anywhere before the state that covers it is durable.

A real ``pykms start`` with ``audit_sync = "always"`` keeps its state on a tiny tmpfs. The disk fills up, so the
state of a fresh prevote cannot be saved: the signature must then exist nowhere (audit log, pykms's log, the
state file). After the disk is freed and pykms is killed and restarted, it signs another block at that
height/round/step; afterwards no two valid conflicting signatures may exist anywhere on disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import KmsProcess, accept, write_home

CHAIN = "test-chain"
TIMESTAMP = (1_700_000_000, 0)


@contextlib.contextmanager
def tiny_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a disk that fills up) needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(where)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def everything_on_disk(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file())


def test_no_signature_is_recorded_before_its_state_is_durable(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    seed = base64.b64decode(next((tmp_path / "kms" / "secrets").glob("*-consensus.key")).read_text().strip())
    key = SigningKey(seed)
    audit = tmp_path / "audit" / "audit.jsonl"
    with tiny_tmpfs(tmp_path / "statefs") as statefs:
        text = config.read_text()
        old_state = Path(text.split('state_file = "', 1)[1].split('"', 1)[0])
        state = statefs / old_state.name
        state.write_bytes(old_state.read_bytes())
        old_state.unlink()
        text = text.replace(str(old_state), str(state)).replace(
            "[[providers.softsign]]", f'audit_log = "{audit}"\naudit_sync = "always"\n\n[[providers.softsign]]', 1
        )
        config.write_text(text)

        kms = KmsProcess(config, tmp_path / "pykms.log")
        kms.start()
        try:
            link = accept(sim, kms)
            assert link.sign_vote(make_vote(1, 0, PREVOTE, b"one", timestamp=TIMESTAMP)).error is None
            filler = fill(statefs)
            vote_a = make_vote(2, 0, PREVOTE, b"A", timestamp=TIMESTAMP)
            withheld = key.sign(vote_sign_bytes(CHAIN, vote_a)).signature  # what pykms signed and must withhold
            failed = link.sign_vote(vote_a)
            assert failed.error is not None, "signed although the state could not be saved"
            assert str(statefs) not in failed.error.description  # the node learns no local path
        finally:
            kms.kill()  # kill -9 right after the failed save
        on_disk = everything_on_disk(tmp_path / "audit", statefs, tmp_path / "pykms.log")
        for form in (withheld, base64.b64encode(withheld), withheld.hex().encode(), withheld.hex().upper().encode()):
            assert form not in on_disk, "a signature that never left pykms is on disk"

        filler.unlink()
        kms = KmsProcess(config, tmp_path / "pykms2.log")
        kms.start()
        try:
            link = accept(sim, kms)
            vote_b = make_vote(2, 0, PREVOTE, b"B", timestamp=TIMESTAMP)
            signed = link.sign_vote(vote_b)
            assert signed.error is None, signed.error
        finally:
            kms.stop()
        sim.close()
        # After the restart: every signature for height 2 anywhere in the audit log verifies over one block only.
        records = [json.loads(line) for line in audit.read_bytes().splitlines() if line.strip(b"\0")]
        at_2 = {r["signature"] for r in records if r.get("height") == 2 and r.get("signature")}
        assert at_2 == {base64.b64encode(bytes(signed.vote.signature)).decode()}
        on_disk = everything_on_disk(tmp_path / "audit", statefs) + (tmp_path / "pykms2.log").read_bytes()
        assert base64.b64encode(withheld) not in on_disk and withheld not in on_disk
