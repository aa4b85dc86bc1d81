"""``pykms state export``: the double-sign state in the format the next signer reads (the way back; the
operator's side is in docs/tmkms-migration.md).

- ``cometbft``: the node's own ``priv_validator_state.json`` (pykms.guard.state.to_cometbft_json): FilePV reads
  height, round, step, signature and sign bytes, and refuses at the same height/round/step when the sign bytes
  are absent ("no SignBytes found"), as after an import from tmkms.
- ``tmkms``: tmkms v0.15's ``state_file`` (src/chain/state.rs, cometbft-rs ``consensus::State``):
  ``{"height": "N", "round": "N", "step": N, "block_id": null | {"hash": HEX, "parts": {"total": N, "hash": HEX}}}``
  with tmkms's steps 0 proposal, 1 prevote, 2 precommit; height and round are strings, hashes UPPERCASE hex
  (cometbft-proto serde: BlockID.hash and PartSetHeader.hash hexstring, part_set_header renamed "parts", total a
  number). tmkms compares only block IDs, so the block ID of the last signature is taken from its sign bytes;
  when the last payload is unknown (a state imported without sign bytes) ``UNKNOWN_BLOCK`` is written, so tmkms
  refuses everything at that step and every block later in that round, as pykms does, rather than guess.

``write_export`` replaces the target atomically and 0600 (new file, fsync, rename, fsync of the folder); the
chain's own state file is never a target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pykms.errors import StateError
from pykms.guard.state import STEP_NONE, STEP_PROPOSAL, SignState, to_cometbft_json
from pykms.keyfiles import fsync_dir
from pykms.privval.signbytes import canonical_view
from pykms.proto.tendermint.types import canonical_pb2

__all__ = ["UNKNOWN_BLOCK", "export_state", "to_tmkms_json", "write_export"]

#: The block ID written for "signed something at this step, payload unknown": a 32-byte hash no block has in
#: practice (all zeros), one part. tmkms treats it as a block it must not contradict.
UNKNOWN_BLOCK: dict[str, Any] = {"hash": "00" * 32, "parts": {"total": 1, "hash": "00" * 32}}


def _tmkms_block_id(state: SignState) -> dict[str, Any] | None:
    if state.step == STEP_NONE:
        return None
    if not state.sign_bytes:
        return UNKNOWN_BLOCK
    raw = canonical_view(state.sign_bytes, state.step).block_id
    if raw is None:
        return None  # a nil vote
    block_id = canonical_pb2.CanonicalBlockID()
    block_id.ParseFromString(raw)
    return {
        "hash": block_id.hash.hex().upper(),
        "parts": {"total": block_id.part_set_header.total, "hash": block_id.part_set_header.hash.hex().upper()},
    }


def to_tmkms_json(state: SignState) -> bytes:
    """tmkms's state file for ``state`` (see the module docstring)."""
    # CometBFT steps 1/2/3 are tmkms's 0/1/2. Nothing signed at this height (step none) becomes tmkms's step 0
    # with no block: tmkms then refuses only a proposal at this height and round, which pykms never signed.
    tm_step = 0 if state.step in (STEP_NONE, STEP_PROPOSAL) else state.step - 1
    obj = {
        "height": str(state.height),
        "round": str(state.round),
        "step": tm_step,
        "block_id": _tmkms_block_id(state),
    }
    return json.dumps(obj).encode("ascii")


def export_state(state: SignState, fmt: Literal["tmkms", "cometbft"]) -> bytes:
    """The file contents for ``fmt``."""
    return to_tmkms_json(state) if fmt == "tmkms" else to_cometbft_json(state) + b"\n"


def write_export(path: Path, data: bytes, *, protect: Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically and 0600; refuse when ``path`` is ``protect`` (the live state)."""
    path = Path(path)
    if protect is not None and (path.absolute() == protect.absolute() or _same_file(path, protect)):
        raise StateError(f"{path}: this is the chain's own state file; export to another path")
    tmp = path.with_name(f".{path.name}.export-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
