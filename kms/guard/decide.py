"""The double-sign decision: may this request be signed, given the last signed state? Pure; no I/O.

Theory of operation
-------------------
The caller (a guard backend, under the chain's lock) passes the last durable ``SignState`` and the request's
height H, round R, step S (CometBFT numbering: 1 proposal, 2 prevote, 3 precommit) and canonical sign bytes.
``decide`` answers one of

- ``SignFresh``: sign, persist (H, R, S, signature, sign bytes) durably, then reply;
- ``ReuseSignature(signature, timestamp)``: reply with the stored signature, persist nothing. ``timestamp`` is
  None when the sign bytes are identical, else the stored (seconds, nanos) the reply must carry;

or raises ``RegressionError`` / ``ConflictError`` (nothing signed, state unchanged).

The request's (H, R, S) is compared with the stored (h, r, s), most significant first, and the comparison picks
a row of ``_TRANSITIONS``:

====================  ============================================================================================
H > h, or H = h and   SignFresh.
R > r
H < h                 RegressionError "height regression. Got H, last height h" (FilePV ``CheckHRS``)
H = h, R < r          RegressionError "round regression at height H. Got R, last round r"
H = h, R = r, S < s   RegressionError "step regression at height H round R. Got S, last step s"
H = h, R = r, S = s   FilePV's same-HRS path: no stored sign bytes -> ConflictError "no SignBytes found";
                      identical bytes -> reuse; bytes equal once both timestamps are ignored -> reuse with the
                      stored timestamp; else ConflictError "conflicting data". (privval/file.go ``signVote``,
                      ``checkVotesOnlyDifferByTimestamp``; docs/protocol.md §4.)
H = h, R = r, S > s   tmkms's cross-step rule, then SignFresh (below).
====================  ============================================================================================

Cross-step rule (tmkms ``src/chain/state.rs`` ``update_consensus_state``): within one height and round, tmkms
refuses a later step whose block ID differs from the last signed one when both are non-nil. So with B != C
(non-nil): proposal B then prevote C, proposal B then precommit C, prevote B then precommit C are refused; a nil
vote after anything, and a block vote after a nil vote, are allowed (tmkms tests
``step_update_with_block_id_and_nil_success``, ``step_update_with_nil_to_some_block_id_success``,
``step_update_with_different_block_id_double_sign``). The block IDs compared are those of
``canonical_view`` (hash and part-set header together, as tmkms compares ``block::Id``).
What we do differently, and why:

- tmkms's "nil vs block at the same step" clause is subsumed by FilePV's same-HRS path, which is stricter
  (any payload difference other than the timestamp is refused).
- We compare only with the last signed message (FilePV keeps one), as tmkms does (it too keeps one state).
- When the stored state has no sign bytes (imported from tmkms, which keeps none) and step > 0, the last block
  is unknown: a later-step request for a non-nil block is refused, since tmkms might have refused it; a nil
  vote is allowed, since tmkms allows it whatever the last block was.
- Stored step 0 means nothing was signed at that height/round (fresh state): no cross-step check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pykms.errors import ConflictError, DecodeError, InvalidRequest, KmsError, RegressionError, SigningRefused
from pykms.guard.state import MAX_HEIGHT, MAX_ROUND, STEP_NAMES, STEP_NONE, STEP_PRECOMMIT, STEP_PROPOSAL, SignState
from pykms.privval.signbytes import CanonicalView, canonical_view

__all__ = ["SIGN_FRESH", "Decision", "ReuseSignature", "SignFresh", "decide", "refuse_older_import"]


@dataclass(frozen=True, slots=True)
class SignFresh:
    """Sign the request, persist the new state durably, then reply."""


@dataclass(frozen=True, slots=True)
class ReuseSignature:
    """Reply with the stored signature (and, when not None, the stored timestamp); persist nothing."""

    signature: bytes
    timestamp: tuple[int, int] | None

    def __repr__(self) -> str:
        return f"ReuseSignature(sig={self.signature[:4].hex()}…, timestamp={self.timestamp})"


Decision = SignFresh | ReuseSignature

SIGN_FRESH: Final = SignFresh()


# Comparison outcomes of one coordinate (request vs stored). ANY marks a coordinate that does not matter.
_LT, _EQ, _GT, _ANY = "<", "=", ">", "*"

_Rule = Callable[[SignState, int, int, int, bytes], "Decision"]


def _cmp(new: int, old: int) -> str:
    return _LT if new < old else _GT if new > old else _EQ


def _fresh(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    return SIGN_FRESH


def _height_regression(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    raise RegressionError(f"height regression. Got {height}, last height {state.height}")


def _round_regression(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    raise RegressionError(f"round regression at height {height}. Got {round_}, last round {state.round}")


def _step_regression(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    raise RegressionError(f"step regression at height {height} round {round_}. Got {step}, last step {state.step}")


def _request_view(sign_bytes: bytes, step: int) -> CanonicalView:
    """The request's view; sign bytes that do not decode for their step are an invalid request."""
    try:
        return canonical_view(sign_bytes, step)
    except DecodeError as exc:
        raise InvalidRequest(f"sign bytes do not decode as a {STEP_NAMES[step]}: {exc}") from None


def _same_hrs(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    if not state.sign_bytes:
        raise ConflictError("no SignBytes found")
    if sign_bytes == state.sign_bytes:
        return ReuseSignature(state.signature, None)
    new = _request_view(sign_bytes, step)
    try:
        old = canonical_view(state.sign_bytes, state.step)
    except KmsError:
        # Stored bytes we cannot decode cannot be shown to differ only by timestamp: refuse.
        raise ConflictError("conflicting data") from None
    if new.without_timestamp == old.without_timestamp:
        return ReuseSignature(state.signature, old.timestamp)
    raise ConflictError("conflicting data")


def _block_text(block_id: bytes) -> str:
    """A short block hash prefix for messages; block_id is a serialized CanonicalBlockID (hash is field 1)."""
    if block_id[:2] == b"\x0a\x20":  # field 1, length 32: the block hash
        return block_id[2:8].hex().upper()
    return block_id[:8].hex().upper()


def _later_step(state: SignState, height: int, round_: int, step: int, sign_bytes: bytes) -> Decision:
    if state.step == STEP_NONE:
        return SIGN_FRESH
    new_block = _request_view(sign_bytes, step).block_id
    if new_block is None:
        return SIGN_FRESH
    where = f"at height {height} round {round_}"
    new_name = STEP_NAMES[step]
    if not state.sign_bytes:
        raise ConflictError(
            f"cross-step conflict {where}: the state has no sign bytes for the last {STEP_NAMES[state.step]} "
            f"(imported state), so a {new_name} for block {_block_text(new_block)} cannot be shown to match it"
        )
    try:
        old_block = canonical_view(state.sign_bytes, state.step).block_id
    except KmsError:
        # An unreadable stored payload is treated as conflicting with any block.
        raise ConflictError(
            f"cross-step conflict {where}: the stored {STEP_NAMES[state.step]} payload cannot be decoded, "
            f"so a {new_name} for block {_block_text(new_block)} cannot be shown to match it"
        ) from None
    if old_block is not None and old_block != new_block:
        raise ConflictError(
            f"cross-step conflict {where}: {new_name} for block {_block_text(new_block)} after a "
            f"{STEP_NAMES[state.step]} for block {_block_text(old_block)}"
        )
    return SIGN_FRESH


#: (height cmp, round cmp, step cmp) -> rule. Round is compared only when heights are equal, step only when
#: rounds are too; otherwise that coordinate is _ANY.
_TRANSITIONS: Final[dict[tuple[str, str, str], _Rule]] = {
    (_GT, _ANY, _ANY): _fresh,
    (_LT, _ANY, _ANY): _height_regression,
    (_EQ, _GT, _ANY): _fresh,
    (_EQ, _LT, _ANY): _round_regression,
    (_EQ, _EQ, _GT): _later_step,
    (_EQ, _EQ, _LT): _step_regression,
    (_EQ, _EQ, _EQ): _same_hrs,
}


def decide(state: SignState, height: int, round: int, step: int, sign_bytes: bytes) -> Decision:
    """Decide whether (height, round, step, sign_bytes) may be signed after ``state``. See the module doc.

    Raises RegressionError or ConflictError (refused), InvalidRequest (step not 1-3, negative or oversized
    height/round, sign bytes that do not decode for that step).
    """
    if type(step) is not int or not STEP_PROPOSAL <= step <= STEP_PRECOMMIT:
        raise InvalidRequest(f"step {step!r} is not 1 (proposal), 2 (prevote) or 3 (precommit)")
    if type(height) is not int or not 0 <= height <= MAX_HEIGHT:
        raise InvalidRequest(f"height {height!r} out of range")
    if type(round) is not int or not 0 <= round <= MAX_ROUND:
        raise InvalidRequest(f"round {round!r} out of range")
    ch = _cmp(height, state.height)
    cr = _cmp(round, state.round) if ch == _EQ else _ANY
    cs = _cmp(step, state.step) if cr == _EQ else _ANY
    return _TRANSITIONS[(ch, cr, cs)](state, height, round, step, sign_bytes)


def refuse_older_import(where: str, current: SignState, imported: SignState, force_does: str) -> None:
    """The rule of every state import: never move the guard backwards (SigningRefused), unless forced.

    A state older than the current one would let the key sign again what it has signed; ``force_does`` tells the
    operator what ``--force`` would do instead.
    """
    if (imported.height, imported.round, imported.step) < (current.height, current.round, current.step):
        raise SigningRefused(
            f"{where}: the imported state (height {imported.height} round {imported.round} step {imported.step}) "
            f"is older than the current one (height {current.height} round {current.round} step {current.step}); "
            f"refusing to weaken the double-sign guard ({force_does}, and lowers the guard to the imported state)"
        )
