"""The last-signed state of one chain, and the file formats it travels in.

``SignState`` is exactly what CometBFT's FilePV keeps in ``priv_validator_state.json`` (height, round, step,
signature, sign bytes), so a state can move between pykms and a node without loss. This module holds only pure
conversions (bytes in, ``SignState`` out and back); files, locks and fsync live in ``pykms.guard.store``.

Formats (docs/protocol.md §3.2, §3.4):

- ``cometbft``: ``{"height": "N", "round": N, "step": N, "signature": base64, "signbytes": HEX}``; height is a
  JSON string (Amino JSON int64), round and step are numbers, ``signature`` and ``signbytes`` are omitted when
  empty, sign bytes are UPPERCASE hex. Parsed strictly: duplicate or unknown keys, wrong JSON types, out-of-range
  numbers, bad base64/hex or sign bytes without a signature (FilePV panics on that) make a ``StateCorrupt``.
- ``tmkms``: ``{"height": "N", "round": "N", "step": N, "block_id": {...} | null}`` with tmkms's step numbering
  0 = proposal, 1 = prevote, 2 = precommit (tmkms ``src/privval.rs`` ``consensus_state``), mapped to CometBFT's
  1/2/3 on import. tmkms stores no sign bytes and no signature, so an imported state has neither; the guard then
  refuses any request at the same height/round/step ("no SignBytes found", as FilePV does) and any request for a
  non-nil block at a later step of the same round (it cannot tell whether the block matches; see decide.py).
- ``slots``: the binary two-slot file of ``pykms.guard.store.SlotStateStore``, recognised by ``SLOTS_MAGIC``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pykms.errors import StateCorrupt

__all__ = [
    "INIT_FIX",
    "MAX_HEIGHT",
    "MAX_JSON_STATE_SIZE",
    "MAX_ROUND",
    "SLOTS_MAGIC",
    "STEP_NAMES",
    "STEP_NONE",
    "STEP_PRECOMMIT",
    "STEP_PREVOTE",
    "STEP_PROPOSAL",
    "SignState",
    "StateFormat",
    "corrupt",
    "detect_format",
    "from_cometbft_json",
    "from_tmkms_json",
    "parse_json_state",
    "state_to_json",
    "to_cometbft_json",
]

#: CometBFT step numbers (privval/file.go stepNone/stepPropose/stepPrevote/stepPrecommit), defined here once.
STEP_NONE = 0
STEP_PROPOSAL = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3
#: What each step signs, for logs, metrics and the audit log.
STEP_NAMES = {STEP_PROPOSAL: "proposal", STEP_PREVOTE: "prevote", STEP_PRECOMMIT: "precommit"}

#: Height is an int64 and round an int32 in CometBFT (FilePVLastSignState); we refuse negatives.
MAX_HEIGHT = 2**63 - 1
MAX_ROUND = 2**31 - 1

#: First bytes of a SlotStateStore file (its header block). Defined here so format detection needs no I/O module.
SLOTS_MAGIC = b"PYKMSST\x00"

#: What an operator can do about a missing or untrustworthy state file; appended to StateMissing/StateCorrupt.
INIT_FIX = (
    "fix: restore the file from a backup; or `pykms state import …` the node's or tmkms's state (the guard then "
    "refuses everything up to the imported height/round/step, so import a state at least as recent as anything "
    "this key signed); or, only for a key that has never signed on this chain, `pykms state init …` (it resets the "
    "guard to height 0: a key that has signed could then sign a conflicting vote). Both refuse to replace an "
    "existing state file, readable or not, unless --force, which keeps the old file beside the new one"
)

StateFormat = Literal["cometbft", "tmkms", "slots"]

#: Cap on a JSON state file we are willing to parse: a real one is under 1 KiB (sign bytes are < 300 bytes).
MAX_JSON_STATE_SIZE = 64 * 1024

_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\Z")


@dataclass(frozen=True, slots=True)
class SignState:
    """The last thing signed on one chain: FilePV's ``FilePVLastSignState`` minus its file path.

    ``step`` uses CometBFT numbering (0 none, 1 proposal, 2 prevote, 3 precommit). An empty ``sign_bytes`` means
    the payload of the last signature is unknown (fresh or imported state).
    """

    height: int
    round: int
    step: int
    signature: bytes = b""
    sign_bytes: bytes = b""

    def __post_init__(self) -> None:
        for name, limit in (("height", MAX_HEIGHT), ("round", MAX_ROUND), ("step", STEP_PRECOMMIT)):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"SignState.{name} must be int, not {type(value).__name__}")
            if not 0 <= value <= limit:
                raise ValueError(f"SignState.{name} out of range: {value}")
        if not isinstance(self.signature, bytes) or not isinstance(self.sign_bytes, bytes):
            raise TypeError("SignState.signature and sign_bytes must be bytes")
        if self.sign_bytes and not self.signature:
            # FilePV panics on this ("pv.LastSignState.Signature cannot be nil"): a payload without its signature.
            raise ValueError("SignState has sign bytes but no signature")

    @classmethod
    def initial(cls) -> SignState:
        """The state ``pykms state init`` writes: FilePV's fresh ``{"height": "0", "round": 0, "step": 0}``."""
        return cls(0, 0, STEP_NONE)

    def __repr__(self) -> str:
        # Nothing here is secret (signatures are public) but keep log lines short.
        sig = self.signature[:4].hex() + "…" if self.signature else "-"
        return (
            f"SignState(h={self.height}, r={self.round}, s={self.step}, sig={sig}, sign_bytes={len(self.sign_bytes)} B)"
        )


def corrupt(source: str, what: str) -> StateCorrupt:
    """A StateCorrupt naming the file, the defect and the fix."""
    return StateCorrupt(f"{source}: state file is not valid ({what}); {INIT_FIX}")


def to_cometbft_json(state: SignState) -> bytes:
    """CometBFT's ``priv_validator_state.json`` bytes (FilePV writes it indented by two spaces)."""
    obj: dict[str, Any] = {"height": str(state.height), "round": state.round, "step": state.step}
    if state.signature:
        obj["signature"] = base64.b64encode(state.signature).decode("ascii")
    if state.sign_bytes:
        obj["signbytes"] = state.sign_bytes.hex().upper()
    return json.dumps(obj, indent=2).encode("ascii")


def _load_object(data: bytes, source: str) -> dict[str, Any]:
    if len(data) > MAX_JSON_STATE_SIZE:
        raise corrupt(source, f"{len(data)} bytes, larger than any state file")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise corrupt(source, f"key {key!r} appears twice")
            out[key] = value
        return out

    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt(source, "not JSON") from None
    if not isinstance(obj, dict):
        raise corrupt(source, "not a JSON object")
    return obj


def _decimal(value: object, key: str, source: str, limit: int, *, allow_number: bool, allow_string: bool) -> int:
    if isinstance(value, str) and allow_string:
        if not _DECIMAL.match(value):
            raise corrupt(source, f"{key} {value!r} is not a non-negative decimal integer")
        number = int(value)
    elif type(value) is int and allow_number:
        number = value
    else:
        kinds = [k for k, ok in (("a decimal string", allow_string), ("an integer", allow_number)) if ok]
        raise corrupt(source, f"{key} must be {' or '.join(kinds)}")
    if not 0 <= number <= limit:
        raise corrupt(source, f"{key} {number} out of range")
    return number


def _check_keys(obj: dict[str, Any], required: set[str], optional: set[str], source: str) -> None:
    missing = required - obj.keys()
    if missing:
        raise corrupt(source, f"missing {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise corrupt(source, f"unknown key(s) {', '.join(sorted(unknown))}")


def from_cometbft_json(data: bytes, source: str) -> SignState:
    """Parse ``priv_validator_state.json`` strictly; ``source`` names the file in errors."""
    obj = _load_object(data, source)
    if _looks_like_tmkms(obj):
        raise StateCorrupt(
            f"{source}: this is a tmkms state file, not CometBFT's priv_validator_state.json; "
            "import it with `pykms state import …`"
        )
    _check_keys(obj, {"height", "round", "step"}, {"signature", "signbytes"}, source)
    height = _decimal(obj["height"], "height", source, MAX_HEIGHT, allow_number=False, allow_string=True)
    round_ = _decimal(obj["round"], "round", source, MAX_ROUND, allow_number=True, allow_string=False)
    step = _decimal(obj["step"], "step", source, STEP_PRECOMMIT, allow_number=True, allow_string=False)
    signature = b""
    raw_sig = obj.get("signature")
    if raw_sig is not None:
        if not isinstance(raw_sig, str):
            raise corrupt(source, "signature must be a base64 string")
        try:
            signature = base64.b64decode(raw_sig, validate=True)
        except binascii.Error:
            raise corrupt(source, "signature is not valid base64") from None
    sign_bytes = b""
    raw_sb = obj.get("signbytes")
    if raw_sb is not None:
        _check_hex(raw_sb, "signbytes", source)
        sign_bytes = bytes.fromhex(raw_sb)
    if sign_bytes and not signature:
        raise corrupt(source, "signbytes without a signature")
    return SignState(height, round_, step, signature, sign_bytes)


def _looks_like_tmkms(obj: dict[str, Any]) -> bool:
    # tmkms always serialises block_id (null when absent) and its round as a string; CometBFT never writes either.
    return "block_id" in obj or isinstance(obj.get("round"), str)


def _check_hex(value: object, what: str, source: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9A-Fa-f]{2})*", value):
        raise corrupt(source, f"{what} must be a hex string")


def from_tmkms_json(data: bytes, source: str) -> SignState:
    """Import a tmkms ``state_file``: steps 0/1/2 become 1/2/3; no signature, no sign bytes (see module doc).

    ``block_id`` is validated (null, or ``{"hash": HEX, "parts"|"part_set_header": {"total": N, "hash": HEX}}``,
    tendermint-rs ``block::Id`` serde) but not kept: FilePV's state has no place for it.
    """
    obj = _load_object(data, source)
    _check_keys(obj, {"height", "round", "step"}, {"block_id"}, source)
    # tendermint-rs has serialised height/round both as strings and (older releases) as numbers: accept both.
    height = _decimal(obj["height"], "height", source, MAX_HEIGHT, allow_number=True, allow_string=True)
    round_ = _decimal(obj["round"], "round", source, MAX_ROUND, allow_number=True, allow_string=True)
    tm_step = _decimal(obj["step"], "step", source, 2, allow_number=True, allow_string=False)
    block_id = obj.get("block_id")
    if block_id is not None:
        if not isinstance(block_id, dict):
            raise corrupt(source, "block_id must be an object or null")
        _check_hex(block_id.get("hash"), "block_id.hash", source)
        parts = block_id.get("parts", block_id.get("part_set_header"))
        if parts is not None:
            if not isinstance(parts, dict):
                raise corrupt(source, "block_id.parts must be an object")
            _check_hex(parts.get("hash", ""), "block_id.parts.hash", source)
    # A tmkms state at height 0 is its fresh state (step 0 there means "nothing", not "proposal").
    step = STEP_NONE if height == 0 else tm_step + 1
    return SignState(height, round_, step)


def detect_format(data: bytes, source: str) -> StateFormat:
    """Which format ``data`` (a whole state file) is in; StateCorrupt when none."""
    if data.startswith(SLOTS_MAGIC):
        return "slots"
    obj = _load_object(data, source)
    return "tmkms" if _looks_like_tmkms(obj) else "cometbft"


def parse_json_state(data: bytes, source: str) -> tuple[StateFormat, SignState]:
    """Parse a JSON state file of either kind, telling which it was (for ``pykms state import``/``show``)."""
    fmt = detect_format(data, source)
    if fmt == "tmkms":
        return fmt, from_tmkms_json(data, source)
    if fmt == "cometbft":
        return fmt, from_cometbft_json(data, source)
    raise corrupt(source, "a binary slots file, not JSON")


def state_to_json(state: SignState) -> str:
    """``to_cometbft_json`` as text with a final newline, for ``pykms state show``."""
    return to_cometbft_json(state).decode("ascii") + "\n"
