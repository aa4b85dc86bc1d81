"""The conformance checks of ``pykms-signer-harness`` (its command line: ``pykms.harness.signer_harness``).

A :class:`Harness` accepts the signer on a :class:`ValidatorSimulator` listener and reports one ``[pass]`` or
``[FAIL]`` line per check; a failed check raises :class:`HarnessError` carrying tm-signer-harness's exit code
(``EXIT``). ``run_basic`` is tm-signer-harness's run (docs/protocol.md §5); ``run_full`` adds the checks a signer
must pass to be trusted with a validator key. Every signature is verified over the sign bytes of the harness's
own request, so a signer that alters what it signs fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from pykms.errors import HarnessError, ProtocolError
from pykms.harness.simulator import (
    PRECOMMIT,
    PREVOTE,
    AcceptTimeout,
    SignerLink,
    ValidatorSimulator,
    make_proposal,
    make_vote,
)
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.proto.tendermint.types import types_pb2

__all__ = [
    "ACCEPT_ATTEMPT_S",
    "EXIT",
    "Harness",
    "fail",
    "refusal_reason",
    "run_basic",
    "run_full",
]

#: tm-signer-harness's exit codes (internal/test_harness.go, the iota block from NoError to ErrTestSignVoteFailed).
EXIT = {
    "ok": 0,
    "params": 1,
    "no_signer": 2,
    "genesis": 3,
    "create_listener": 4,
    "start_listener": 5,
    "interrupted": 6,
    "other": 7,
    "pubkey": 8,
    "proposal": 9,
    "vote": 10,
}

#: tm-signer-harness's fixed request contents (tests/vectors/README.md V12): block hash = part-set hash =
#: SHA-256("hash"), part-set total 1,000,000, proposal at height 100, votes at height 101.
HARNESS_BLOCK_SEED = b"hash"
HARNESS_PART_TOTAL = 1_000_000
PROPOSAL_HEIGHT = 100
VOTE_HEIGHT = 101
#: Each accept attempt waits this long (tm-signer-harness: 10 ms; see the module docstring for why 100 ms).
ACCEPT_ATTEMPT_S = 0.1


def fail(message: str, code: str) -> HarnessError:
    """The error to raise for a failure with tm-signer-harness's exit code named ``code`` (a key of ``EXIT``)."""
    return HarnessError(message, EXIT[code])


# The harness -------------------------------------------------------------------------------------------------


class Harness:
    """Listener plus the checks; prints one ``[pass]``/``[FAIL]`` line per check with the reason."""

    def __init__(
        self, sim: ValidatorSimulator, expected_pub: bytes, accept_retries: int, out: TextIO | None = None
    ) -> None:
        self.sim = sim
        self.chain_id = sim.chain_id
        self.expected_pub = expected_pub
        self.accept_retries = accept_retries
        self.out: TextIO = out if out is not None else sys.stdout
        self.link: SignerLink | None = None
        #: (check name, exit code) of every failed check, in order.
        self.failures: list[tuple[str, int]] = []
        self.passes = 0

    def say(self, status: str, name: str, detail: str = "") -> None:
        print(f"[{status}] {name}{': ' + detail if detail else ''}", file=self.out, flush=True)

    def accept(self) -> SignerLink:
        """Up to ``accept_retries`` attempts (none if it is 0 or less, as tm-signer-harness), then exit code 2.

        A connection that fails the handshake does not end the run: tm-signer-harness's listener goroutine
        drops it and keeps accepting.
        """
        for _attempt in range(self.accept_retries):
            try:
                self.link = self.sim.accept(timeout=ACCEPT_ATTEMPT_S)
                return self.link
            except AcceptTimeout:
                continue
            except ProtocolError as exc:
                self.say("info", "accept", f"a connection failed the handshake: {exc}")
        raise fail(f"no signer connected after {self.accept_retries} accept attempts", "no_signer")

    def passed(self, name: str, detail: str = "") -> None:
        self.passes += 1
        self.say("pass", name, detail)

    def failed(self, name: str, detail: str, code: str, *, fatal: bool = True) -> None:
        """Report a failed check; end the run now (fatal) or go on. Either way the run's exit code is that of
        its first failure."""
        self.failures.append((name, EXIT[code]))
        self.say("FAIL", name, detail)
        if fatal:
            first_name, first_code = self.failures[0]
            also = ""
            if len(self.failures) > 1:
                also = f" (after {len(self.failures) - 1} earlier failure(s), the first: {first_name})"
            raise HarnessError(f"{name}: {detail}{also}", first_code)

    def expect(self, ok: bool, name: str, detail: str, code: str, *, fatal: bool = True) -> None:
        if ok:
            self.passed(name, detail)
        else:
            self.failed(name, detail, code, fatal=fatal)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        self.sim.close()

    def call(self, name: str, code: str, fn: Callable[[], Any]) -> Any:
        """Run one request; a broken link (hang-up, stall, garbage) fails the check and ends the run."""
        try:
            return fn()
        except ProtocolError as exc:
            self.failed(name, f"the link failed: {exc}", code)
            raise AssertionError("unreachable") from None  # pragma: no cover - failed() raised


def _verify(pub: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(pub).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):  # ValueError: PyNaCl wants exactly 64 signature bytes
        return False


def refusal_reason(resp: Any) -> str | None:
    """The signer's RemoteSignerError as one line, or None when the response carries none."""
    err = getattr(resp, "error", None)
    return None if err is None else f"RemoteSignerError(code {err.code}): {err.description}"


def _request(h: Harness, msg: Any, chain_id: str | None = None, skip_extension_signing: bool = False) -> Any:
    """The request a node sends to have ``msg``, a Vote or a Proposal, signed."""
    chain_id = h.chain_id if chain_id is None else chain_id
    if isinstance(msg, types_pb2.Proposal):
        return codec.SignProposalRequest(msg, chain_id)
    return codec.SignVoteRequest(msg, chain_id, skip_extension_signing)


#: A response that did not come because the signer closed the link (or let it time out) instead of answering.
_DROPPED: Any = None


def _check_signed(
    h: Harness, name: str, resp: Any, msg: Any, *, fatal: bool = False, refetch: SignerLink | None = None
) -> bytes:
    """``msg`` must be signed: the signature of ``resp``, verified over the sign bytes of the harness's own
    request (never of what the signer echoes), or b"" after a failure: exit code 9 for a proposal, 10 for a vote.

    ``refetch``: ask for the public key again before verifying, as tm-signer-harness's tests 2 and 3 do (so a
    signer sees the same sequence of requests); a failed request is exit code 7 there too.
    """
    is_proposal = isinstance(msg, types_pb2.Proposal)
    code = "proposal" if is_proposal else "vote"
    kind: type[Any] = codec.SignedProposalResponse if is_proposal else codec.SignedVoteResponse
    if resp is _DROPPED:
        h.failed(name, "the signer dropped the link instead of answering", code, fatal=fatal)
        return b""
    if not isinstance(resp, kind):
        h.failed(name, f"expected a {kind.__name__}, got {type(resp).__name__}", code, fatal=fatal)
        return b""
    refusal = refusal_reason(resp)
    if refusal is not None:
        h.failed(name, f"the signer refused: {refusal}", code, fatal=fatal)
        return b""
    sig = bytes(resp.proposal.signature if is_proposal else resp.vote.signature)
    if refetch is not None:
        again = h.call("public key", "other", refetch.pubkey)
        if not isinstance(again, codec.PubKeyResponse) or again.error is not None:
            why = refusal_reason(again) or type(again).__name__
            h.failed("public key", f"asked again after the {name}: {why}", "other")
    expected = proposal_sign_bytes(h.chain_id, msg) if is_proposal else vote_sign_bytes(h.chain_id, msg)
    if _verify(h.expected_pub, expected, sig):
        h.passed(name, "signature verifies over the sign bytes of the request")
    else:
        h.failed(
            name,
            f"the {len(sig)}-byte signature does not verify over the sign bytes of the request "
            "(the signer signed something else, or with another key)",
            code,
            fatal=fatal,
        )
    return sig


# The basic suite: tm-signer-harness's three tests ---------------------------------------------------------------


def check_pubkey(h: Harness, link: SignerLink, *, name: str = "public key") -> None:
    """Test 1. A failed or refused request is exit code 7 (TestPublicKey returns the client's error as is); a
    different key is 8."""
    resp = h.call(name, "other", link.pubkey)
    if not isinstance(resp, codec.PubKeyResponse):
        h.failed(name, f"expected a PubKeyResponse, got {type(resp).__name__}", "other")
        return
    refusal = refusal_reason(resp)
    if refusal is not None:
        h.failed(name, f"the signer refused: {refusal}", "other")
        return
    got = bytes(resp.pub_key)
    if not got:
        # A v1.0 PubKeyResponse carries pub_key_bytes/pub_key_type (fields 3/4); a signer answering with the
        # v0.34-v0.38 PublicKey (field 1, as tmkms v0.15 does) leaves both empty for a v1.0 node.
        detail = "the signer sent no key" + (" (a pre-v1.0 PubKeyResponse?)" if h.sim.dialect.is_v1 else "")
    else:
        detail = f"{resp.key_type} {got.hex()}" + (
            "" if got == h.expected_pub else f", expected {h.expected_pub.hex()}"
        )
    ok = resp.key_type == "ed25519" and got == h.expected_pub
    h.expect(ok, f"{name} matches priv_validator_key.json", detail, "pubkey")


def check_signed(h: Harness, link: SignerLink, msg: Any) -> None:
    """Tests 2 and 3: a proposal (exit code 9 on any failure), a prevote or a precommit (exit code 10)."""
    if isinstance(msg, types_pb2.Proposal):
        name, code = f"proposal at height {msg.height}", "proposal"
    else:
        name, code = f"{'prevote' if msg.type == PREVOTE else 'precommit'} at height {msg.height}", "vote"
    resp = h.call(name, code, lambda: link.request(_request(h, msg)))
    _check_signed(h, name, resp, msg, fatal=True, refetch=link)


def run_basic(h: Harness) -> None:
    """tm-signer-harness's run: public key, proposal at height 100 (round 0, POL round -1, timestamp now),
    prevote and precommit at height 101, all for the harness block; stops at the first failure."""
    link = h.link or h.accept()
    check_pubkey(h, link)
    check_signed(h, link, make_proposal(PROPOSAL_HEIGHT, 0, HARNESS_BLOCK_SEED, part_total=HARNESS_PART_TOTAL))
    for vote_type in (PREVOTE, PRECOMMIT):
        check_signed(h, link, make_vote(VOTE_HEIGHT, 0, vote_type, HARNESS_BLOCK_SEED, part_total=HARNESS_PART_TOTAL))


# The full suite ---------------------------------------------------------------------------------------------

#: A fixed timestamp for the repeat and conflict checks, so "identical" means byte-identical.
_FIXED_TS = (1_700_000_000, 0)


def run_full(h: Harness, dialect: Dialect) -> None:
    """The basic run, then the checks a signer must pass to be trusted with a validator key.

    A failed check is reported and the run goes on (so one run shows every problem); the exit code is that of
    the first failure. A signer may refuse by answering RemoteSignerError or by closing the link (tmkms does so
    for regressions and wrong chain ids): the harness then waits for it to dial in again and goes on.
    """
    run_basic(h)
    # Above anything the basic run signed, and above any earlier full run against the same signer state.
    base = 1000 + int(time.time())

    for i in range(3):
        resp = _send(h, f"ping {i + 1}", codec.PingRequest())
        h.expect(isinstance(resp, codec.PingResponse), f"ping {i + 1}", type(resp).__name__, "other", fatal=False)
    _full_repeat_and_conflict(h, base)
    _full_proposals(h, base + 5)
    _full_regressions(h, base + 7)
    if dialect.has_extensions:
        _full_extensions(h, dialect, base + 10)
    if dialect.is_v1:
        _full_v1(h, base + 15)
    wrong_chain = _ask(h, make_vote(base + 20, 0, PREVOTE, b"G"), chain_id=h.chain_id + "-other")
    _refused(h, "a vote for another chain id is refused", wrong_chain, "vote")
    _full_reconnect(h, base + 30)
    if h.failures:
        first_name, first_code = h.failures[0]
        raise HarnessError(f"{len(h.failures)} check(s) failed, the first: {first_name}", first_code)


def _send(h: Harness, name: str, request: codec.Request) -> Any:
    """One request on the current link; ``_DROPPED`` if the signer closed the link or let it time out, after
    waiting for it to dial in again (exit code 2 if it does not)."""
    link = h.link or h.accept()
    try:
        return link.request(request)
    except ProtocolError as exc:
        h.say("info", name, f"no answer ({exc}); waiting for the signer to dial in again")
    link.close()
    h.link = None
    try:
        h.accept()
    except HarnessError:
        h.failed(name, "the signer dropped the link and did not dial in again", "no_signer")
    return _DROPPED


def _ask(h: Harness, msg: Any, *, chain_id: str | None = None, skip_extension_signing: bool = False) -> Any:
    """Ask for ``msg``, a Vote or a Proposal, to be signed (``_send``)."""
    what = "proposal" if isinstance(msg, types_pb2.Proposal) else "vote"
    return _send(h, f"{what} at height {msg.height}", _request(h, msg, chain_id, skip_extension_signing))


def _refused(h: Harness, name: str, resp: Any, code: str) -> None:
    """A request that must not be signed: a RemoteSignerError or a closed link, never a signature."""
    if resp is _DROPPED:
        h.passed(name, "refused by closing the connection")
        return
    refusal = refusal_reason(resp)
    if refusal is not None:
        h.passed(name, refusal)
        return
    signed = getattr(resp, "vote", None) or getattr(resp, "proposal", None)
    sig = bytes(signed.signature) if signed is not None else bytes(getattr(resp, "signature", b""))
    h.failed(name, f"SIGNED ({len(sig)}-byte signature): a double sign", code, fatal=False)


def _same_signature(h: Harness, name: str, resp: Any, first: bytes, code: str) -> None:
    signed = getattr(resp, "vote", None) or getattr(resp, "proposal", None)
    sig = bytes(signed.signature) if signed is not None and refusal_reason(resp) is None else b""
    if resp is _DROPPED:
        detail = "the signer dropped the link"
    else:
        detail = refusal_reason(resp) or ("same signature" if sig == first else "a different signature")
    h.expect(bool(first) and sig == first, name, detail, code, fatal=False)


def _no_extension_signature(h: Harness, name: str, resp: Any) -> None:
    ext_sig = bytes(resp.vote.extension_signature)
    detail = "an extension signature (the node would panic)" if ext_sig else "none"
    h.expect(not ext_sig, name, detail, "vote", fatal=False)


def _full_repeat_and_conflict(h: Harness, height: int) -> None:
    vote = make_vote(height, 0, PREVOTE, b"A", timestamp=_FIXED_TS)
    first = _check_signed(h, "prevote for block A", _ask(h, vote), vote)
    _same_signature(h, "identical repeat returns the same signature", _ask(h, vote), first, "vote")
    # Same block, later timestamp: not a double sign (evidence needs different block ids). FilePV returns the
    # stored signature with the stored timestamp; tmkms signs the new timestamp. Either way the signature must
    # verify over what is returned, and only the timestamp may differ from the request.
    later_ts = (_FIXED_TS[0] + 9, 0)
    later = make_vote(height, 0, PREVOTE, b"A", timestamp=later_ts)
    resp = _ask(h, later)
    name = "timestamp-only difference: a valid signature for the same block"
    if not isinstance(resp, codec.SignedVoteResponse) or refusal_reason(resp) is not None:
        h.failed(name, refusal_reason(resp) or "no signature", "vote", fatal=False)
    else:
        returned_ts, sig = (resp.vote.timestamp.seconds, resp.vote.timestamp.nanos), bytes(resp.vote.signature)
        if returned_ts == later_ts:
            ok, how = _verify(h.expected_pub, vote_sign_bytes(h.chain_id, later), sig), "new"
        elif returned_ts == _FIXED_TS:
            ok, how = bool(first) and sig == first, "stored (FilePV)"
        else:
            ok, how = False, f"an unrelated timestamp {returned_ts}"
        h.expect(ok, name, f"{how} timestamp" + ("" if ok else ", signature does not match"), "vote", fatal=False)
    conflict = make_vote(height, 0, PREVOTE, b"B", timestamp=_FIXED_TS)
    _refused(h, "conflicting prevote (block B) at the same height/round/step is refused", _ask(h, conflict), "vote")
    nil = make_vote(height, 0, PREVOTE, b"", timestamp=_FIXED_TS)
    _refused(h, "conflicting nil prevote at the same height/round/step is refused", _ask(h, nil), "vote")


def _full_proposals(h: Harness, height: int) -> None:
    proposal = make_proposal(height, 0, b"P", timestamp=_FIXED_TS)
    first = _check_signed(h, f"proposal at height {height}", _ask(h, proposal), proposal)
    again = _ask(h, proposal)
    _same_signature(h, "identical proposal repeat returns the same signature", again, first, "proposal")
    conflict = make_proposal(height, 0, b"Q", timestamp=_FIXED_TS)
    _refused(h, "conflicting proposal (block Q) at the same height/round is refused", _ask(h, conflict), "proposal")


def _full_regressions(h: Harness, height: int) -> None:
    vote = make_vote(height, 1, PRECOMMIT, b"C")
    _check_signed(h, f"precommit at height {height} round 1", _ask(h, vote), vote)
    _refused(h, "height regression is refused", _ask(h, make_vote(height - 1, 5, PRECOMMIT, b"C")), "vote")
    _refused(h, "round regression is refused", _ask(h, make_vote(height, 0, PRECOMMIT, b"C")), "vote")
    _refused(
        h, "step regression (prevote after precommit) is refused", _ask(h, make_vote(height, 1, PREVOTE, b"C")), "vote"
    )
    _refused(h, "proposal regression is refused", _ask(h, make_proposal(height, 1, b"C")), "proposal")


def _full_extensions(h: Harness, dialect: Dialect, height: int) -> None:
    """Vote extensions (docs/protocol.md §2.7): signed on every non-nil precommit, never on anything else."""
    pre = make_vote(height, 0, PREVOTE, b"D")
    resp = _ask(h, pre)
    if _check_signed(h, f"prevote at height {height} ({dialect.value})", resp, pre):
        _no_extension_signature(h, "no extension signature on a prevote", resp)
    for round_, ext in ((0, b"ext-data"), (1, b"")):
        vote = make_vote(height, round_, PRECOMMIT, b"D", extension=ext)
        resp = _ask(h, vote)
        what = f"a {len(ext)}-byte extension" if ext else "an empty extension"
        if _check_signed(h, f"non-nil precommit with {what}", resp, vote):
            ext_sig = bytes(resp.vote.extension_signature)
            ok = _verify(h.expected_pub, vote_extension_sign_bytes(h.chain_id, vote), ext_sig)
            detail = "verifies over CanonicalVoteExtension" if ext_sig else "missing (the node would panic)"
            h.expect(ok, f"extension signature on a non-nil precommit with {what}", detail, "vote", fatal=False)
    nil = make_vote(height, 2, PRECOMMIT, b"")
    resp = _ask(h, nil)
    if _check_signed(h, "nil precommit", resp, nil):
        _no_extension_signature(h, "no extension signature on a nil precommit", resp)


def _full_v1(h: Harness, height: int) -> None:
    """v1.0 shapes: skip_extension_signing, and SignBytes must not bypass the double-sign guard."""
    vote = make_vote(height, 0, PRECOMMIT, b"E", extension=b"ext")
    resp = _ask(h, vote, skip_extension_signing=True)
    if _check_signed(h, "v1.0 precommit with skip_extension_signing", resp, vote):
        _no_extension_signature(h, "v1.0 skip_extension_signing is obeyed", resp)
    # The sign bytes of a precommit for another block at the same height/round: signing them verbatim would be a
    # double sign that no guard saw (CometBFT's FilePV signs any bytes; a remote signer must not).
    conflicting = vote_sign_bytes(h.chain_id, make_vote(height, 0, PRECOMMIT, b"F"))
    name = "v1.0 SignBytes with a conflicting vote's sign bytes is refused"
    resp = _send(h, name, codec.SignBytesRequest(value=conflicting))
    if isinstance(resp, codec.SignBytesResponse) and resp.error is None:
        signed = _verify(h.expected_pub, conflicting, bytes(resp.signature))
        detail = "SIGNED: a double sign that bypasses the guard" if signed else "answered without an error"
        h.failed(name, detail, "vote", fatal=False)
    else:
        why = "refused by closing the connection" if resp is _DROPPED else refusal_reason(resp) or "no signature"
        h.passed(name, why)


def _full_reconnect(h: Harness, height: int) -> None:
    """The validator drops the link; the signer must dial again and keep its double-sign state."""
    vote = make_vote(height, 0, PREVOTE, b"H", timestamp=_FIXED_TS)
    signed = _check_signed(h, f"prevote at height {height} before the drop", _ask(h, vote), vote)
    if h.link is not None:
        h.link.close()
        h.link = None
    name = "signer reconnects after the validator dropped the link"
    started = time.monotonic()
    try:
        link = h.accept()
    except HarnessError:
        h.failed(name, "it did not dial in again", "no_signer")
    h.passed(name, f"after {time.monotonic() - started:.2f} s")
    check_pubkey(h, link, name="public key after the reconnect")
    again = _ask(h, vote)
    _same_signature(h, "identical repeat after the reconnect returns the same signature", again, signed, "vote")
    conflict = make_vote(height, 0, PREVOTE, b"I", timestamp=_FIXED_TS)
    _refused(h, "double-sign state kept across the reconnect (conflicting prevote refused)", _ask(h, conflict), "vote")
