"""decide(): FilePV's rules (cometbft privval/file.go, docs/protocol.md §4) and tmkms's cross-step rule
(tmkms src/chain/state.rs and its tests), on real canonical sign bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_guard_support import CHAIN, TS, block_id, fake_signature, proposal_bytes, sign_bytes, vote_bytes

from pykms.errors import ConflictError, DoubleSignError, InvalidRequest, RegressionError, SigningRefused
from pykms.guard.decide import SIGN_FRESH, ReuseSignature, SignFresh, decide, refuse_older_import
from pykms.guard.state import SignState
from pykms.privval.signbytes import vote_sign_bytes
from pykms.proto.tendermint.types import types_pb2

PROP, PREVOTE, PRECOMMIT = 1, 2, 3


def signed(height: int, round_: int, step: int, block: int | None, ts: tuple[int, int] = TS) -> SignState:
    data = sign_bytes(height, round_, step, block, ts)
    return SignState(height, round_, step, fake_signature(data), data)


def test_fresh_state_signs_anything() -> None:
    for step in (PROP, PREVOTE, PRECOMMIT):
        assert decide(SignState.initial(), 1, 0, step, sign_bytes(1, 0, step, 5)) == SIGN_FRESH


@pytest.mark.parametrize(
    ("h", "r", "s", "block"),
    [(11, 0, PROP, 9), (10, 3, PROP, 9), (10, 2, PRECOMMIT, 1), (1000, 0, PREVOTE, None)],
)
def test_newer_hrs_signs_fresh(h: int, r: int, s: int, block: int | None) -> None:
    state = signed(10, 2, PREVOTE, 1)
    assert isinstance(decide(state, h, r, s, sign_bytes(h, r, s, block)), SignFresh)


def test_height_regression_message() -> None:
    with pytest.raises(RegressionError, match=r"^height regression\. Got 9, last height 10$"):
        decide(signed(10, 2, PREVOTE, 1), 9, 5, PRECOMMIT, sign_bytes(9, 5, PRECOMMIT, 1))


def test_round_regression_message() -> None:
    with pytest.raises(RegressionError, match=r"^round regression at height 10\. Got 1, last round 2$"):
        decide(signed(10, 2, PREVOTE, 1), 10, 1, PRECOMMIT, sign_bytes(10, 1, PRECOMMIT, 1))


def test_step_regression_message() -> None:
    # FilePV: after a prevote at (H, R) a proposal at (H, R) is a step regression.
    with pytest.raises(RegressionError, match=r"^step regression at height 10 round 2\. Got 1, last step 2$"):
        decide(signed(10, 2, PREVOTE, 1), 10, 2, PROP, proposal_bytes(10, 2, 1))


def test_regressions_are_double_sign_errors_with_code_2() -> None:
    with pytest.raises(DoubleSignError) as info:
        decide(signed(10, 0, PREVOTE, 1), 9, 0, PREVOTE, sign_bytes(9, 0, PREVOTE, 1))
    assert info.value.code == 2


@pytest.mark.parametrize("step", [PROP, PREVOTE, PRECOMMIT])
def test_identical_repeat_returns_stored_signature(step: int) -> None:
    state = signed(7, 1, step, 4)
    decision = decide(state, 7, 1, step, sign_bytes(7, 1, step, 4))
    assert decision == ReuseSignature(state.signature, None)


@pytest.mark.parametrize("step", [PROP, PREVOTE, PRECOMMIT])
def test_timestamp_only_difference_returns_stored_signature_and_timestamp(step: int) -> None:
    old_ts, new_ts = (1_700_000_000, 5), (1_700_000_099, 777)
    state = signed(7, 1, step, 4, old_ts)
    decision = decide(state, 7, 1, step, sign_bytes(7, 1, step, 4, new_ts))
    assert decision == ReuseSignature(state.signature, old_ts)


def test_timestamp_only_difference_on_a_nil_vote() -> None:
    state = signed(7, 1, PREVOTE, None, (1, 0))
    assert decide(state, 7, 1, PREVOTE, sign_bytes(7, 1, PREVOTE, None, (2, 0))) == ReuseSignature(
        state.signature, (1, 0)
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [(4, 5), (4, None), (None, 4)],
)
@pytest.mark.parametrize("step", [PROP, PREVOTE, PRECOMMIT])
def test_same_hrs_different_block_is_conflicting_data(step: int, old: int | None, new: int | None) -> None:
    state = signed(7, 1, step, old)
    with pytest.raises(ConflictError, match=r"^conflicting data$"):
        decide(state, 7, 1, step, sign_bytes(7, 1, step, new))


def test_same_hrs_other_field_differs_is_conflicting_data() -> None:
    # Same block, same timestamp, different pol_round: not a timestamp-only difference.
    state = SignState(7, 1, PROP, b"s" * 64, proposal_bytes(7, 1, 4, pol_round=-1))
    with pytest.raises(ConflictError, match="conflicting data"):
        decide(state, 7, 1, PROP, proposal_bytes(7, 1, 4, pol_round=0))


def test_same_hrs_without_sign_bytes_is_refused() -> None:
    # FilePV: "no SignBytes found"; this is what an imported tmkms state looks like.
    state = SignState(7, 1, PREVOTE)
    with pytest.raises(ConflictError, match=r"^no SignBytes found$"):
        decide(state, 7, 1, PREVOTE, sign_bytes(7, 1, PREVOTE, 4))


def test_same_hrs_with_undecodable_stored_bytes_is_conflicting() -> None:
    state = SignState(7, 1, PREVOTE, b"s" * 64, b"\x03abc")
    with pytest.raises(ConflictError, match="conflicting data"):
        decide(state, 7, 1, PREVOTE, sign_bytes(7, 1, PREVOTE, 4))
    # ... but the identical bytes are still recognised (byte equality comes first, as in FilePV).
    assert decide(state, 7, 1, PREVOTE, b"\x03abc") == ReuseSignature(b"s" * 64, None)


# ---- tmkms's cross-step rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old_step", "new_step"),
    [(PROP, PREVOTE), (PROP, PRECOMMIT), (PREVOTE, PRECOMMIT)],
)
def test_later_step_for_a_different_block_is_refused(old_step: int, new_step: int) -> None:
    # tmkms step_update_with_different_block_id_double_sign
    state = signed(7, 1, old_step, 4)
    with pytest.raises(ConflictError, match="cross-step conflict at height 7 round 1"):
        decide(state, 7, 1, new_step, sign_bytes(7, 1, new_step, 5))


@pytest.mark.parametrize(
    ("old_step", "new_step"),
    [(PROP, PREVOTE), (PROP, PRECOMMIT), (PREVOTE, PRECOMMIT)],
)
def test_later_step_for_the_same_block_is_signed(old_step: int, new_step: int) -> None:
    state = signed(7, 1, old_step, 4)
    assert decide(state, 7, 1, new_step, sign_bytes(7, 1, new_step, 4)) == SIGN_FRESH


@pytest.mark.parametrize(
    ("old_step", "new_step"),
    [(PROP, PREVOTE), (PROP, PRECOMMIT), (PREVOTE, PRECOMMIT)],
)
def test_later_nil_vote_after_a_block_is_signed(old_step: int, new_step: int) -> None:
    # tmkms step_update_with_block_id_and_nil_success
    assert decide(signed(7, 1, old_step, 4), 7, 1, new_step, sign_bytes(7, 1, new_step, None)) == SIGN_FRESH


def test_block_vote_after_a_nil_vote_is_signed() -> None:
    # tmkms step_update_with_nil_to_some_block_id_success
    assert decide(signed(7, 1, PREVOTE, None), 7, 1, PRECOMMIT, sign_bytes(7, 1, PRECOMMIT, 4)) == SIGN_FRESH


def test_different_block_in_a_later_round_is_signed() -> None:
    # tmkms round_update_with_different_block_id_success
    assert decide(signed(7, 1, PRECOMMIT, 4), 7, 2, PREVOTE, sign_bytes(7, 2, PREVOTE, 5)) == SIGN_FRESH


def test_block_differing_only_in_part_set_header_is_a_different_block() -> None:
    state = SignState(7, 1, PREVOTE, b"s" * 64, vote_bytes(7, 1, PREVOTE, 4))
    vote = types_pb2.Vote(type=2, height=7, round=1, block_id=block_id(4))
    vote.block_id.part_set_header.total += 1
    vote.timestamp.seconds, vote.timestamp.nanos = TS
    with pytest.raises(ConflictError, match="cross-step"):
        decide(state, 7, 1, PRECOMMIT, vote_sign_bytes(CHAIN, vote))


def test_imported_state_without_sign_bytes_refuses_a_later_block_vote_but_not_nil() -> None:
    state = SignState(7, 1, PREVOTE)  # what a tmkms import at prevote looks like
    with pytest.raises(ConflictError, match="no sign bytes"):
        decide(state, 7, 1, PRECOMMIT, sign_bytes(7, 1, PRECOMMIT, 4))
    assert decide(state, 7, 1, PRECOMMIT, sign_bytes(7, 1, PRECOMMIT, None)) == SIGN_FRESH
    assert decide(state, 7, 2, PREVOTE, sign_bytes(7, 2, PREVOTE, 4)) == SIGN_FRESH


def test_stored_step_zero_has_no_cross_step_check() -> None:
    assert decide(SignState(7, 1, 0), 7, 1, PROP, proposal_bytes(7, 1, 4)) == SIGN_FRESH


def test_undecodable_stored_bytes_refuse_a_later_block_vote() -> None:
    state = SignState(7, 1, PREVOTE, b"s" * 64, b"\x02\xff\xff")
    with pytest.raises(ConflictError, match="cannot be decoded"):
        decide(state, 7, 1, PRECOMMIT, sign_bytes(7, 1, PRECOMMIT, 4))


def test_conflict_message_names_both_blocks() -> None:
    with pytest.raises(ConflictError) as info:
        decide(signed(7, 1, PROP, 0xAB), 7, 1, PREVOTE, sign_bytes(7, 1, PREVOTE, 0xCD))
    text = str(info.value)
    assert "prevote for block CDCDCD" in text
    assert "proposal for block ABABAB" in text


# ---- invalid requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "r", "s"), [(1, 0, 0), (1, 0, 4), (-1, 0, 2), (1, -1, 2), (2**63, 0, 2)])
def test_out_of_range_request_is_invalid(h: int, r: int, s: int) -> None:
    with pytest.raises(InvalidRequest):
        decide(SignState.initial(), h, r, s, b"\x00")


def test_undecodable_request_bytes_at_same_hrs_are_invalid() -> None:
    state = signed(7, 1, PREVOTE, 4)
    with pytest.raises(InvalidRequest):
        decide(state, 7, 1, PREVOTE, b"\x05garbage")


def test_decisions_have_short_reprs() -> None:
    assert "…" in repr(ReuseSignature(b"\x01" * 64, None))
    assert len(repr(ReuseSignature(b"\x01" * 64, None))) < 60


_HRS = st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 3))


@given(current=_HRS, imported=_HRS)
def test_an_import_never_moves_the_guard_backwards(
    current: tuple[int, int, int], imported: tuple[int, int, int]
) -> None:
    """The rule every state import shares: refused exactly when (height, round, step) goes down."""
    args = ("where", SignState(*current), SignState(*imported), "--force would do it")
    if imported < current:
        with pytest.raises(SigningRefused, match=r"^where: the imported state .*--force would do it"):
            refuse_older_import(*args)
    else:
        refuse_older_import(*args)
