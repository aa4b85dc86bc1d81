"""One privval request in, one response out: the front of the signing path.

The front trusts nothing it reads. For a vote or proposal it decodes the request, checks it (max_height, the vote
extension FilePV's rules want), builds the canonical sign bytes and asks the key holder (``pykms.keyholder``,
which returns only once the state is durable) to sign them. The front holds no lock: it puts the signature (and a
reused timestamp, and the extension signature) into the response, replies, and only then tells its observers
(metrics, the log line). A peer that does not read its replies can stall only its own connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pykms.errors import (
    ChainIdMismatch,
    DoubleSignError,
    HeightAboveMax,
    InvalidRequest,
    KmsError,
    ProviderError,
    SigningRefused,
    StateError,
)
from pykms.guard.state import STEP_NAMES
from pykms.keyholder.api import ChainKey, KeyHolder, Signed
from pykms.logconfig import info_line
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, step_of, vote_extension_sign_bytes, vote_sign_bytes

__all__ = ["LogObserver", "Observer", "RequestHandler", "SignEvent"]


@dataclass(slots=True)  # not frozen: 16 frozen fields cost ~1.6 µs more to build, on every request
class SignEvent:
    """What happened to one signing request, for logs, metrics and the audit log."""

    chain_id: str
    kind: str  # proposal | prevote | precommit | vote (undecodable vote type)
    height: int
    round: int
    step: int
    block_id: bytes  # block hash (b"" for nil)
    sign_bytes: bytes
    signature: bytes | None
    outcome: str  # signed | reused | refused | error
    reason: str  # the error's class name, "" when signed
    duration_s: float  # request decoded to state durable (the key holder's answer)
    #: "" when signed; else double_sign | refused | state | provider.
    failure: str = ""
    #: The error's message (for the log line only: the node is told less).
    detail: str = ""
    sign_s: float = 0.0
    persist_s: float = 0.0
    extension: bool = False


class Observer(Protocol):
    """Told of every signing request once its reply has been written (or has failed)."""

    def observe(self, event: SignEvent) -> None: ...


class LogObserver:
    """One log line per signing request, rendered after the reply."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def observe(self, event: SignEvent) -> None:
        block = event.block_id[:6].hex() or "nil"
        if not event.failure:
            info_line(
                self.log, f"{event.kind}_signed" if event.outcome == "signed" else f"{event.kind}_resigned",
                height=event.height, round=event.round, step=event.step, block=block,
                ms=round(event.duration_s * 1000, 3), extension=event.extension,
            )  # fmt: skip
            return
        self.log.warning(
            _LOG_NAMES[event.failure], kind=event.kind, error=event.reason, reason=event.detail,
            height=event.height, round=event.round, step=event.step, block=block,
        )  # fmt: skip


_LOG_NAMES = {
    "double_sign": "double_sign_refused",
    "refused": "request_refused",
    "state": "state_not_durable",
    "provider": "signer_failed",
}


def _failure(exc: KmsError) -> str:
    if isinstance(exc, DoubleSignError):
        return "double_sign"
    if isinstance(exc, SigningRefused):
        return "refused"
    return "state" if isinstance(exc, StateError) else "provider"


class RequestHandler:
    """Handles the requests of one validator connection for one chain."""

    def __init__(
        self,
        keyholder: KeyHolder,
        key: ChainKey,
        dialect: Dialect,
        *,
        chain_id: str,
        max_height: int | None = None,
        sign_extensions: bool | None = None,
        observers: Sequence[Observer] = (),
        log: Any = None,
    ) -> None:
        self.keyholder = keyholder
        self.key = key
        self.dialect = dialect
        self.chain_id = chain_id
        self.max_height = max_height
        #: None or True: by dialect (v0.38 and v1.0 sign extensions on non-nil precommits); False: never.
        self.sign_extensions = sign_extensions
        self.observers = list(observers)
        self.log = log

    def handle(self, body: bytes, reply: Callable[[bytes], None]) -> None:
        """Decode ``body``, act, and call ``reply`` with the encoded response.

        Raises ProtocolError (DecodeError) for a body that is not a request: the caller closes the connection.
        """
        request = codec.decode_request(self.dialect, body)
        if isinstance(request, codec.PingRequest):
            reply(codec.PING_RESPONSE)
        elif isinstance(request, codec.PubKeyRequest):
            reply(self._pubkey(request))
        elif isinstance(request, codec.SignVoteRequest | codec.SignProposalRequest):
            self.sign_consensus(request, reply)
        else:
            self._sign_raw(request, reply)

    def sign_consensus(
        self, request: codec.SignVoteRequest | codec.SignProposalRequest, reply: Callable[[bytes], None]
    ) -> None:
        """Decode, check, have the key holder sign (it checks the chain id and returns once the state is durable),
        reply, observe."""
        started = time.perf_counter()
        msg: Any = request.vote if isinstance(request, codec.SignVoteRequest) else request.proposal
        height, round_, block_hash = int(msg.height), int(msg.round), bytes(msg.block_id.hash)
        kind, step, sign_bytes = ("vote" if isinstance(request, codec.SignVoteRequest) else "proposal"), 0, b""
        try:
            step = step_of(request)
            kind = STEP_NAMES[step]
            if self.max_height is not None and height > self.max_height:
                raise HeightAboveMax(f"height {height} is above max_height {self.max_height}")
            # The sign bytes carry the chain id the node asked for: the key holder refuses (and audits) any other.
            extension_bytes = b""
            if isinstance(request, codec.SignVoteRequest):
                sign_bytes = vote_sign_bytes(request.chain_id, msg)
                if self._extension_wanted(request):
                    extension_bytes = vote_extension_sign_bytes(request.chain_id, msg)
            else:
                sign_bytes = proposal_sign_bytes(request.chain_id, msg)
            signed = self.keyholder.sign(self.chain_id, sign_bytes, extension_bytes)
            response = self._signed_response(request, signed)
        except (SigningRefused, StateError, ProviderError) as exc:
            answered = time.perf_counter()
            try:
                reply(self._error_response(request, exc))
            finally:  # the event (for the log line, metrics) is made after the reply: nothing waits for it
                self._observe(SignEvent(
                    self.chain_id, kind, height, round_, step, block_hash, sign_bytes, None,
                    "refused" if isinstance(exc, SigningRefused) else "error", type(exc).__name__,
                    answered - started, _failure(exc), str(exc),
                ))  # fmt: skip
            return
        answered = time.perf_counter()
        try:
            reply(response)
        finally:
            self._observe(SignEvent(
                self.chain_id, kind, height, round_, step, block_hash, sign_bytes, signed.signature,
                "signed" if signed.fresh else "reused", "", answered - started,
                sign_s=signed.sign_s, persist_s=signed.persist_s, extension=bool(signed.extension_signature),
            ))  # fmt: skip

    def _pubkey(self, request: codec.PubKeyRequest) -> bytes:
        # CometBFT's node sends its own chain id; an empty one is accepted as tmkms does (older nodes).
        if request.chain_id and request.chain_id != self.chain_id:
            self._log_refusal("pubkey", ChainIdMismatch(f"unable to provide pubkey for chain {request.chain_id!r}"))
            return codec.encode_error(self.dialect, request, 0, "unable to provide pubkey")
        return codec.encode_pubkey_response(self.dialect, self.key.public_key, self.key.key_type)

    def _sign_raw(
        self, request: codec.SignBytesRequest | codec.SignRawBytesRequest, reply: Callable[[bytes], None]
    ) -> None:
        # v1.0 SignBytes: arbitrary bytes signed verbatim (FilePV does so); Celestia's SignRawBytes: bytes signed
        # behind a prefix (tmkms signs them). Neither carries a height, so the guard cannot protect them; pykms
        # answers an error (the connection stays up) unless a future config opts in.
        if isinstance(request, codec.SignRawBytesRequest):
            exc = InvalidRequest(
                "SignRawBytes requests (Celestia) are refused: pykms signs only consensus messages, which its "
                "double-sign guard covers"
            )
            self._log_refusal(
                "sign_raw_bytes", exc, unique_id=request.unique_id[:64], requested_chain_id=request.chain_id[:64]
            )
        else:
            exc = InvalidRequest("SignBytes requests are refused: arbitrary bytes bypass the double-sign guard")
            self._log_refusal("sign_bytes", exc)
        reply(codec.encode_error(self.dialect, request, 0, str(exc)))

    def _extension_wanted(self, request: codec.SignVoteRequest) -> bool:
        """FilePV's rules: sign an extension on every non-nil precommit, never elsewhere."""
        vote = request.vote
        if self.dialect in (Dialect.V0_34, Dialect.V0_37):
            return False
        is_nil = not vote.block_id.hash and not vote.block_id.part_set_header.total
        non_nil_precommit = vote.type == 2 and not is_nil
        if not non_nil_precommit and vote.extension:
            raise InvalidRequest("unexpected vote extension: only non-nil precommits carry one")
        if self.sign_extensions is False or not self.key.signs_extensions:
            return False
        if self.dialect is Dialect.V1_0 and request.skip_extension_signing:
            return False
        return non_nil_precommit

    def _signed_response(self, request: codec.SignVoteRequest | codec.SignProposalRequest, signed: Signed) -> bytes:
        if isinstance(request, codec.SignVoteRequest):
            vote = request.vote
            if signed.timestamp is not None:
                vote.timestamp.seconds, vote.timestamp.nanos = signed.timestamp
            vote.signature = signed.signature
            if signed.extension_signature:
                vote.extension_signature = signed.extension_signature
            response = codec.encode_signed_vote(self.dialect, vote)
            if len(response) > codec.MAX_RESPONSE_BYTES:
                # Nodes up to v1.0.1 drop responses over 10,240 bytes; they copy back only the signature,
                # timestamp and extension signature, so a large extension need not be echoed.
                response = codec.encode_signed_vote(self.dialect, vote, echo_extension=False)
            return response
        proposal = request.proposal
        if signed.timestamp is not None:
            proposal.timestamp.seconds, proposal.timestamp.nanos = signed.timestamp
        proposal.signature = signed.signature
        return codec.encode_signed_proposal(self.dialect, proposal)

    def _error_response(self, request: codec.SignVoteRequest | codec.SignProposalRequest, exc: KmsError) -> bytes:
        code = exc.code if isinstance(exc, SigningRefused) else 0
        prefix = "unable to sign vote" if isinstance(request, codec.SignVoteRequest) else "unable to sign proposal"
        # The node is the party the signer trusts least: it learns why in general terms (no file paths, no
        # database user@host); the log line keeps the detail.
        if isinstance(exc, SigningRefused):
            told = str(exc)
        elif isinstance(exc, StateError):
            told = "the double-sign state could not be made durable; see the signer's log"
        else:
            told = "the signing backend failed; see the signer's log"
        return codec.encode_error(self.dialect, request, code, f"{prefix}: {told}")

    def _log_refusal(self, kind: str, exc: KmsError, **fields: Any) -> None:
        if self.log is not None:
            self.log.warning(_LOG_NAMES[_failure(exc)], kind=kind, error=type(exc).__name__, reason=str(exc), **fields)

    def _observe(self, event: SignEvent) -> None:
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:
                if self.log is not None:
                    self.log.exception("observer_failed")
