"""Model-based test of the guard (DESIGN §5): random request sequences through decide() and a real store.

Properties, whatever the sequence of heights, rounds, steps, blocks and timestamps:
- never two different payloads signed for one height/round/step (a reused signature counts with the payload it
  really covers: the request with the returned timestamp put back);
- fresh signatures go strictly forward in (height, round, step);
- within one height and round, a fresh signature never names a non-nil block other than the last signed one's
  (tmkms's cross-step rule, which like FilePV remembers only the last signed message);
- an identical repeat returns the stored signature; a timestamp-only repeat returns it with the stored timestamp;
- decide() agrees with an independent oracle written as tuple comparisons, so it also signs when it should;
- the state survives a reload from each store at any point.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_guard_support import fake_signature, sign_bytes

from pykms.errors import ConflictError, RegressionError
from pykms.guard.decide import ReuseSignature, SignFresh, decide
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore, SlotStateStore

TIMESTAMPS = [(1_700_000_000, 0), (1_700_000_000, 5), (1_700_000_900, 0)]

Request = tuple[int, int, int, int | None, int]  # height, round, step, block, timestamp index
requests = st.tuples(
    st.integers(1, 3), st.integers(0, 2), st.integers(1, 3), st.sampled_from([None, 1, 2]), st.integers(0, 2)
)
_COUNTER = itertools.count()


def near(state: SignState) -> st.SearchStrategy[Request]:
    """Requests at the current height and round, or just after it: where the interesting rules live."""
    h = max(state.height, 1)
    return st.tuples(
        st.sampled_from([h, h, h + 1]),
        st.sampled_from([state.round, state.round, state.round + 1]),
        st.integers(max(state.step, 1), 3),
        st.sampled_from([None, 1, 2]),
        st.integers(0, 2),
    )


def oracle(state: SignState, last_block: int | str | None, req: Request) -> str:
    """'fresh', 'reuse' or 'refuse', from the rules as an operator would state them. last_block: 'unknown' if
    the state carries no sign bytes."""
    h, r, s, block, _ = req
    new, old = (h, r, s), (state.height, state.round, state.step)
    if new < old:
        return "refuse"
    if new == old:
        return "refuse" if last_block == "unknown" else "reuse-or-refuse"
    same_round = (h, r) == (state.height, state.round) and state.step != 0
    last_differs = last_block == "unknown" or (last_block is not None and last_block != block)
    if same_round and block is not None and last_differs:
        return "refuse"
    return "fresh"


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["memory", "json", "slots"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), start_unknown=st.booleans())
def test_guard_model(tmp_path: Path, store_kind: str, data: st.DataObject, start_unknown: bool) -> None:
    path = tmp_path / f"{store_kind}-{next(_COUNTER)}"
    # Either a fresh state, or what a tmkms import looks like (an HRS without sign bytes).
    state = SignState(1, 1, 2) if start_unknown else SignState.initial()
    last_block: int | str | None = "unknown" if start_unknown else None
    store = None
    if store_kind != "memory":
        cls = JsonStateStore if store_kind == "json" else SlotStateStore
        store = cls.create(path, state)

    signed: dict[tuple[int, int, int], tuple[bytes, bytes, int | None]] = {}  # HRS -> (payload, sig, block)
    last_fresh: tuple[int, int, int] | None = None
    try:
        for _ in range(data.draw(st.integers(1, 40), label="length")):
            item = data.draw(st.one_of(requests, near(state), near(state), st.just("reload")))
            if item == "reload":
                if store is not None:
                    store.close()
                    store = type(store)(path)
                    assert store.load() == state
                continue
            assert not isinstance(item, str)
            h, r, s, block, ts_index = item
            payload = sign_bytes(h, r, s, block, TIMESTAMPS[ts_index])
            expected = oracle(state, last_block, item)
            try:
                decision = decide(state, h, r, s, payload)
            except (RegressionError, ConflictError) as exc:
                event(f"refused: {str(exc).split('.')[0][:24]}")
                assert expected in ("refuse", "reuse-or-refuse"), (item, state)
                continue
            hrs = (h, r, s)
            event(f"decision: {type(decision).__name__}{'+ts' if getattr(decision, 'timestamp', None) else ''}")
            if isinstance(decision, SignFresh):
                assert expected == "fresh", (item, state)
                assert hrs not in signed, f"second fresh signature at {hrs}"
                assert last_fresh is None or hrs > last_fresh
                # tmkms's cross-step rule compares with the last signed message only (as FilePV and tmkms keep
                # just that one): a later step in the same round never names another non-nil block than it.
                if last_fresh is not None and last_fresh[:2] == (h, r) and block is not None:
                    assert last_block is None or last_block == block
                sig = fake_signature(payload)
                new_state = SignState(h, r, s, sig, payload)
                if store is not None:
                    store.save(new_state)
                state, last_block, last_fresh = new_state, block, hrs
                signed[hrs] = (payload, sig, block)
                # An identical repeat returns the stored signature and nothing else.
                assert decide(state, h, r, s, payload) == ReuseSignature(sig, None)
            else:
                assert isinstance(decision, ReuseSignature)
                assert expected == "reuse-or-refuse", (item, state)
                signed_payload, sig, stored_block = signed[hrs]
                ts = TIMESTAMPS[ts_index] if decision.timestamp is None else decision.timestamp
                # The payload the reused signature covers is exactly the one signed at this HRS.
                assert sign_bytes(h, r, s, block, ts) == signed_payload
                assert decision.signature == sig
                assert block == stored_block
        if store is not None:
            store.close()
            store = type(store)(path)
            assert store.load() == state
    finally:
        if store is not None:
            store.close()
