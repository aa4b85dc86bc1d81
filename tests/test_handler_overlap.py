"""Issue 8: the work that may follow the signature (verifying it, signing and verifying the vote extension) runs on
the chain's side thread while the state is flushed, and nothing unverified ever reaches the node.

Real parts throughout: PyNaCl keys, the real handler, FileGuard over the real slot store on disk; only the store's
flush is wrapped, to observe what happens during it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from pykms.guard.backend import GuardOutcome
from pykms.guard.file_guard import FileGuard
from pykms.guard.state import SignState
from pykms.guard.store import FileOps, SlotStateStore
from pykms.handler import ChainContext, RequestHandler
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_vote
from pykms.overlap import SideWorker
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import canonical_view, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.signer import verify_or_raise
from pykms.providers.softsign import SoftsignSigner

CHAIN = "overlap-chain"
SEED = hashlib.sha256(b"overlap").digest()


class CountingSigner(SoftsignSigner):
    """A softsign key that counts its signatures and can be told to sign with the wrong key (a faulty device)."""

    def __init__(self, seed: bytes) -> None:
        super().__init__(SigningKey(seed))
        self.calls: list[tuple[str, str]] = []  # (method, thread name)
        self.faulty = False
        self.in_extension = threading.Event()

    def sign_unverified(self, message: bytes) -> bytes:
        self.calls.append(("sign_unverified", threading.current_thread().name))
        if self.faulty:
            return SigningKey(hashlib.sha256(b"not the key").digest()).sign(message).signature
        return super().sign_unverified(message)

    def sign(self, message: bytes) -> bytes:  # the verified path: vote extensions
        self.calls.append(("sign", threading.current_thread().name))
        self.in_extension.set()
        signature = SoftsignSigner.sign_unverified(self, message)  # not the counting override above
        verify_or_raise(self.public_key(), message, signature, self.provider)
        return signature


class WatchedFlush(FileOps):
    """Real file operations; the flush records the thread it ran on and waits (bounded) for ``wait_for``."""

    def __init__(self) -> None:
        self.flush_threads: list[str] = []
        self.wait_for: threading.Event | None = None
        self.saw_event: list[bool] = []

    def fdatasync(self, fd: int) -> None:
        self.flush_threads.append(threading.current_thread().name)
        if self.wait_for is not None:
            self.saw_event.append(self.wait_for.wait(5.0))
        super().fdatasync(fd)


def setup(tmp_path: Path, state: SignState | None = None) -> tuple[RequestHandler, CountingSigner, WatchedFlush]:
    path = tmp_path / "state.slots"
    SlotStateStore.create(path, state or SignState.initial()).close()
    ops = WatchedFlush()
    signer = CountingSigner(SEED)
    chain = ChainContext(CHAIN, signer, FileGuard(CHAIN, SlotStateStore(path, ops=ops)))
    return RequestHandler(chain, Dialect.V0_38, chain_id=CHAIN), signer, ops


def vote_request(height: int, vote_type: int, block: str = "b") -> codec.SignVoteRequest:
    vote = make_vote(height, 0, vote_type, f"{block}{height}", timestamp=(1_700_000_000 + height, 0))
    return codec.SignVoteRequest(vote=vote, chain_id=CHAIN)


def ask(handler: RequestHandler, request: codec.SignVoteRequest) -> codec.SignedVoteResponse:
    replies: list[bytes] = []
    handler.handle(codec.encode_request(Dialect.V0_38, request), replies.append)
    assert len(replies) == 1
    response = codec.decode_response(Dialect.V0_38, replies[0])
    assert isinstance(response, codec.SignedVoteResponse)
    return response


def test_extension_is_signed_while_the_state_flushes(tmp_path: Path) -> None:
    """The flush waits for the extension signing to start: sequential work would never set the event (the
    flush would report a 5 s timeout); overlapped work sets it from the side thread."""
    handler, signer, ops = setup(tmp_path)
    ops.wait_for = signer.in_extension
    request = vote_request(5, PRECOMMIT)
    response = ask(handler, request)
    assert response.error is None
    assert ops.saw_event == [True]
    main = threading.current_thread().name
    assert ops.flush_threads == [main]
    assert ("sign_unverified", main) in signer.calls
    assert [name for method, name in signer.calls if method == "sign"] == [f"pykms-side-{CHAIN}"]
    key = VerifyKey(signer.public_key())
    key.verify(vote_sign_bytes(CHAIN, request.vote), bytes(response.vote.signature))
    key.verify(vote_extension_sign_bytes(CHAIN, request.vote), bytes(response.vote.extension_signature))
    handler.chain.close()


def test_a_signature_that_does_not_verify_never_leaves(tmp_path: Path) -> None:
    handler, signer, _ops = setup(tmp_path)
    assert ask(handler, vote_request(3, PREVOTE)).error is None
    signer.faulty = True
    bad = ask(handler, vote_request(4, PREVOTE))
    assert bad.error is not None and "does not verify" in bad.error.description
    assert not bad.vote.signature
    # The state moved on durably (the bad signature is stored, never sent): the identical retry finds a stored
    # signature that does not verify and refuses it too, even with a sound key again.
    signer.faulty = False
    assert handler.chain.guard.current().height == 4
    again = ask(handler, vote_request(4, PREVOTE))
    assert again.error is not None and "does not verify" in again.error.description
    # The next step is signed normally.
    good = ask(handler, vote_request(4, PRECOMMIT))
    assert good.error is None
    handler.chain.close()


def test_stored_signatures_are_verified_before_reuse(tmp_path: Path) -> None:
    """A state from disk (restart, or another instance) is trusted for the guard's decision, but its signature is
    verified before it is handed out again."""
    request = vote_request(9, PREVOTE)
    sign_bytes = vote_sign_bytes(CHAIN, request.vote)
    good = SigningKey(SEED).sign(sign_bytes).signature
    tampered = bytes([good[0] ^ 1]) + good[1:]
    for stored, accepted in ((good, True), (tampered, False)):
        case = tmp_path / ("good" if accepted else "tampered")
        case.mkdir()
        state = SignState(height=9, round=0, step=2, signature=stored, sign_bytes=sign_bytes)
        handler, signer, _ops = setup(case, state)
        response = ask(handler, vote_request(9, PREVOTE))
        if accepted:
            assert response.error is None and bytes(response.vote.signature) == good
        else:
            assert response.error is not None and "does not verify" in response.error.description
        assert signer.calls == []  # nothing new was signed either way
        handler.chain.close()


def test_twin_precommit_reuses_the_extension_signature(tmp_path: Path) -> None:
    handler, signer, _ops = setup(tmp_path)
    first = ask(handler, vote_request(7, PRECOMMIT))
    twin = ask(handler, vote_request(7, PRECOMMIT))
    assert first.error is None and twin.error is None
    assert bytes(twin.vote.signature) == bytes(first.vote.signature)
    assert bytes(twin.vote.extension_signature) == bytes(first.vote.extension_signature)
    assert [method for method, _ in signer.calls] == ["sign_unverified", "sign"]
    handler.chain.close()


def test_guard_refusal_waits_for_nothing(tmp_path: Path) -> None:
    """A refused request never reaches the signer, so no side job is started."""
    handler, signer, _ops = setup(tmp_path)
    assert ask(handler, vote_request(10, PRECOMMIT)).error is None
    assert ask(handler, vote_request(9, PREVOTE)).error is not None  # height regression
    assert [method for method, _ in signer.calls] == ["sign_unverified", "sign"]
    handler.chain.close()


def test_side_worker_returns_results_and_errors_in_order() -> None:
    worker = SideWorker("t-side")
    seen: list[int] = []
    results = [worker.submit(lambda i=i: seen.append(i) or i * i) for i in range(50)]
    assert [p.result() for p in results] == [i * i for i in range(50)]
    assert seen == list(range(50))

    def boom() -> int:
        raise ValueError("from the side")

    failing = worker.submit(boom)
    with pytest.raises(ValueError, match="from the side"):
        failing.result()
    with pytest.raises(ValueError):  # a second look gives the same answer
        failing.result()
    assert worker.submit(lambda: 7).result() == 7  # still serving after a failure
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(lambda: 1)


def test_with_other_requests_in_flight_the_signature_is_verified_inline(tmp_path: Path) -> None:
    """Busy cores: the side thread would only add a hand-off, so everything runs on the request's thread."""
    handler, signer, ops = setup(tmp_path)
    handler.chain.activity.enter()  # another connection's request in progress
    try:
        response = ask(handler, vote_request(6, PRECOMMIT))
    finally:
        handler.chain.activity.leave()
    assert response.error is None
    main = threading.current_thread().name
    assert signer.calls == [("sign", main), ("sign", main)]  # the vote, then its extension; both verified
    assert ops.flush_threads == [main]
    assert handler.chain.activity.alone()
    # Alone again: back to the side thread.
    assert ask(handler, vote_request(7, PRECOMMIT)).error is None
    assert signer.calls[2:] == [("sign_unverified", main), ("sign", f"pykms-side-{CHAIN}")]
    handler.chain.close()


@pytest.mark.parametrize("busy", [False, True], ids=["side-thread", "inline"])
def test_a_guard_returning_another_signature_is_caught(tmp_path: Path, busy: bool) -> None:
    """Whatever the guard hands back is checked against what was verified: a backend that returns a signature other
    than the one it was given (a bug, a corrupted row) cannot get it past the handler."""
    handler, _signer, _ops = setup(tmp_path)
    guard = handler.chain.guard
    real = guard.check_and_sign

    def corrupting(height: int, round_: int, step: int, sign_bytes: bytes, sign: Any) -> GuardOutcome:
        outcome = real(height, round_, step, sign_bytes, sign)
        return GuardOutcome(bytes([outcome.signature[0] ^ 1]) + outcome.signature[1:], None, fresh=True)

    guard.check_and_sign = corrupting  # type: ignore[method-assign]
    if busy:
        handler.chain.activity.enter()
    try:
        response = ask(handler, vote_request(8, PREVOTE))
    finally:
        if busy:
            handler.chain.activity.leave()
    assert response.error is not None and "does not verify" in response.error.description
    assert not response.vote.signature
    handler.chain.close()


class FlakyFlush(WatchedFlush):
    """A flush that fails (EIO) while ``failing`` is set: the state is then not durable."""

    failing = False

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            raise OSError(5, "Input/output error")
        super().fdatasync(fd)


_ACTION = st.one_of(
    st.tuples(
        st.just("vote"),
        st.integers(1, 4),  # height
        st.integers(0, 1),  # round
        st.sampled_from([PREVOTE, PRECOMMIT]),
        st.sampled_from(["A", "B", ""]),  # block ("" = nil)
        st.integers(0, 2),  # timestamp variant
    ),
    st.tuples(st.sampled_from(["faulty", "flush", "busy"]), st.booleans()),
    st.tuples(st.just("again"), st.integers(0, 2)),  # the node retries its last request (timestamp variant)
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(_ACTION, min_size=1, max_size=40))
def test_nothing_unverified_or_conflicting_leaves_under_faults(tmp_path_factory: Any, actions: list[Any]) -> None:
    """Random requests, with the signer turning faulty, the flush failing and other requests in flight switched on
    and off between them: every signature released verifies over what the response carries, no height/round/step
    gets two released payloads that differ beyond the timestamp, and the durable state never goes backwards."""
    home = tmp_path_factory.mktemp("fuzz")
    path = home / "state.slots"
    SlotStateStore.create(path, SignState.initial()).close()
    ops = FlakyFlush()
    signer = CountingSigner(SEED)
    chain = ChainContext(CHAIN, signer, FileGuard(CHAIN, SlotStateStore(path, ops=ops)))
    handler = RequestHandler(chain, Dialect.V0_38, chain_id=CHAIN)
    key = VerifyKey(signer.public_key())
    released: dict[tuple[int, int, int], bytes] = {}
    last_hrs = (0, 0, 0)
    busy = False
    last_request: tuple[Any, ...] | None = None
    try:
        for action in actions:
            if action[0] == "faulty":
                signer.faulty = action[1]
                continue
            if action[0] == "flush":
                ops.failing = action[1]
                continue
            if action[0] == "busy":
                if action[1] and not busy:
                    chain.activity.enter()
                elif not action[1] and busy:
                    chain.activity.leave()
                busy = action[1]
                continue
            if action[0] == "again":
                if last_request is None:
                    continue
                action = (*last_request[:-1], action[1])
            last_request = action
            _, height, round_, vote_type, block, ts = action
            vote = make_vote(height, round_, vote_type, block or "nil", timestamp=(1_700_000_000 + ts, 0))
            if not block:
                vote.ClearField("block_id")  # a nil vote
            response = ask(handler, codec.SignVoteRequest(vote=vote, chain_id=CHAIN))
            state = chain.guard.current()
            assert (state.height, state.round, state.step) >= last_hrs
            last_hrs = (state.height, state.round, state.step)
            if response.error is not None:
                assert not response.vote.signature
                continue
            out = response.vote
            sign_bytes = vote_sign_bytes(CHAIN, out)
            key.verify(sign_bytes, bytes(out.signature))  # raises if anything unverified got out
            if out.extension_signature:
                key.verify(vote_extension_sign_bytes(CHAIN, out), bytes(out.extension_signature))
            step = 2 if vote_type == PREVOTE else 3
            payload = canonical_view(sign_bytes, step).without_timestamp
            assert released.setdefault((height, round_, step), payload) == payload, "double sign released"
    finally:
        if busy:
            chain.activity.leave()
        chain.close()
        chain.guard.close()
