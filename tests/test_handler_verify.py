"""The handler's order of side effects: a signature is verified before the guard stores it, every signature
handed out (fresh or read back from the state) verifies, and nothing conflicting leaves under faults.

Real parts throughout: PyNaCl keys, the real handler, FileGuard over the real slot store on disk; only the
signer (turned faulty on demand) and the store's flush (failing on demand) are wrapped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from pykms.guard.backend import FileGuard, GuardOutcome
from pykms.guard.state import SignState
from pykms.guard.store import FileOps, SlotStateStore
from pykms.handler import RequestHandler
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_vote
from pykms.keyholder.local import LocalKeyHolder
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import canonical_view, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.signer import verify_or_raise
from pykms.providers.softsign import SoftsignSigner

CHAIN = "verify-chain"
SEED = hashlib.sha256(b"verify").digest()
GENERIC_PROVIDER_ERROR = "the signing backend failed"


class CountingSigner(SoftsignSigner):
    """A softsign key that counts its signatures and can turn faulty (signs with another key, as a broken device
    would); like every provider it verifies before returning."""

    def __init__(self, seed: bytes) -> None:
        super().__init__(SigningKey(seed))
        self.calls = 0
        self.faulty = False

    def sign(self, message: bytes) -> bytes:
        self.calls += 1
        key = SigningKey(hashlib.sha256(b"not the key").digest()) if self.faulty else SigningKey(SEED)
        signature = key.sign(message).signature
        verify_or_raise(self.public_key(), message, signature, self.provider)
        return signature


class FlakyFlush(FileOps):
    """A flush that fails (EIO) while ``failing`` is set: the state is then not durable."""

    failing = False

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            raise OSError(5, "Input/output error")
        super().fdatasync(fd)


def setup(tmp_path: Path, state: SignState | None = None) -> tuple[RequestHandler, CountingSigner, FlakyFlush]:
    path = tmp_path / "state.slots"
    SlotStateStore.create(path, state or SignState.initial()).close()
    ops = FlakyFlush()
    signer = CountingSigner(SEED)
    return handler_over(FileGuard(CHAIN, SlotStateStore(path, ops=ops)), signer), signer, ops


def handler_over(guard: FileGuard, signer: CountingSigner) -> RequestHandler:
    keyholder = LocalKeyHolder()
    keyholder.add(CHAIN, signer, guard)
    return RequestHandler(keyholder, keyholder.chains()[CHAIN], Dialect.V0_38, chain_id=CHAIN)


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


def test_a_signature_that_does_not_verify_is_never_stored(tmp_path: Path) -> None:
    handler, signer, _ops = setup(tmp_path)
    assert ask(handler, vote_request(3, PREVOTE)).error is None
    signer.faulty = True
    bad = ask(handler, vote_request(4, PREVOTE))
    assert bad.error is not None and GENERIC_PROVIDER_ERROR in bad.error.description
    assert not bad.vote.signature
    guard = handler.keyholder.guard(CHAIN)
    assert isinstance(guard, FileGuard) and guard.state.height == 3  # verified before the guard could store it
    signer.faulty = False
    again = ask(handler, vote_request(4, PREVOTE))  # the retry signs afresh with the sound key
    assert again.error is None
    VerifyKey(signer.public_key()).verify(vote_sign_bytes(CHAIN, again.vote), bytes(again.vote.signature))


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
            assert response.error is not None and GENERIC_PROVIDER_ERROR in response.error.description
        assert signer.calls == 0  # nothing new was signed either way


def test_twin_precommit_reuses_the_extension_signature(tmp_path: Path) -> None:
    handler, signer, _ops = setup(tmp_path)
    request = vote_request(7, PRECOMMIT)
    first = ask(handler, request)
    twin = ask(handler, vote_request(7, PRECOMMIT))
    assert first.error is None and twin.error is None
    assert bytes(twin.vote.signature) == bytes(first.vote.signature)
    assert bytes(twin.vote.extension_signature) == bytes(first.vote.extension_signature)
    key = VerifyKey(signer.public_key())
    key.verify(vote_extension_sign_bytes(CHAIN, request.vote), bytes(first.vote.extension_signature))
    assert signer.calls == 2  # one consensus signature, one extension signature


def test_a_guard_returning_another_signature_is_caught(tmp_path: Path) -> None:
    """A backend that returns a signature other than the one it was given (a bug, a corrupted row) cannot get it
    past the handler."""
    handler, _signer, _ops = setup(tmp_path)
    guard = handler.keyholder.guard(CHAIN)
    real = guard.check_and_sign

    def corrupting(height: int, round_: int, step: int, sign_bytes: bytes, sign: Any) -> GuardOutcome:
        outcome = real(height, round_, step, sign_bytes, sign)
        return GuardOutcome(bytes([outcome.signature[0] ^ 1]) + outcome.signature[1:], None, fresh=outcome.fresh)

    guard.check_and_sign = corrupting  # type: ignore[method-assign]
    response = ask(handler, vote_request(8, PREVOTE))
    assert response.error is not None and GENERIC_PROVIDER_ERROR in response.error.description
    assert not response.vote.signature


_ACTION = st.one_of(
    st.tuples(
        st.just("vote"),
        st.integers(1, 4),  # height
        st.integers(0, 1),  # round
        st.sampled_from([PREVOTE, PRECOMMIT]),
        st.sampled_from(["A", "B", ""]),  # block ("" = nil)
        st.integers(0, 2),  # timestamp variant
    ),
    st.tuples(st.sampled_from(["faulty", "flush"]), st.booleans()),
    st.tuples(st.just("again"), st.integers(0, 2)),  # the node retries its last request (timestamp variant)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(_ACTION, min_size=1, max_size=40))
def test_nothing_unverified_or_conflicting_leaves_under_faults(tmp_path_factory: Any, actions: list[Any]) -> None:
    """Random requests, with the signer turning faulty and the flush failing between them: every signature released
    verifies over what the response carries, no height/round/step gets two released payloads that differ beyond
    the timestamp, the durable state never goes backwards, and it never holds a signature that does not verify."""
    home = tmp_path_factory.mktemp("fuzz")
    path = home / "state.slots"
    SlotStateStore.create(path, SignState.initial()).close()
    ops = FlakyFlush()
    signer = CountingSigner(SEED)
    guard = FileGuard(CHAIN, SlotStateStore(path, ops=ops))
    handler = handler_over(guard, signer)
    key = VerifyKey(signer.public_key())
    released: dict[tuple[int, int, int], bytes] = {}
    last_hrs = (0, 0, 0)
    last_request: tuple[Any, ...] | None = None
    try:
        for action in actions:
            if action[0] == "faulty":
                signer.faulty = action[1]
                continue
            if action[0] == "flush":
                ops.failing = action[1]
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
            state = guard.state
            assert (state.height, state.round, state.step) >= last_hrs
            last_hrs = (state.height, state.round, state.step)
            if state.signature:
                key.verify(state.sign_bytes, state.signature)  # nothing unverified is ever stored
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
        guard.close()
