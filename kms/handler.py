"""One privval request in, one response out: the request handler of the signing path.

Sits between the codec and the guard (DESIGN §1): checks the chain id and max_height, builds the canonical sign
bytes, and runs the chain's critical section — decide, sign, verify, persist, record — under the chain's lock, so
every connection to one chain (several sentries) sees one ordered history and two sentries asking for the same
vote get the same signature. The reply itself is written after the lock is released: a peer that does not read
its replies can stall only its own connection (the runtime bounds the write), never its chain.

Order of side effects for a fresh signature: the provider signs and the signature is verified against the public
key; only then does the guard store it and make the state durable; only then is it written anywhere else (audit
log, metrics, log line) and sent. A signature read back from the state is verified before it leaves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from pykms.guard.backend import GuardBackend, GuardOutcome
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, step_of, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.signer import Signer, verify_or_raise

__all__ = ["ChainContext", "RequestHandler", "SignEvent"]

_STEP_NAMES = {1: "proposal", 2: "prevote", 3: "precommit"}


@dataclass(frozen=True, slots=True)
class SignEvent:
    """What happened to one signing request, for logs, metrics and the audit log."""

    chain_id: str
    kind: str  # proposal | prevote | precommit | sign_bytes
    height: int
    round: int
    step: int
    block_id: bytes  # block hash ("" for nil)
    sign_bytes: bytes
    signature: bytes | None
    outcome: str  # signed | reused | refused | error
    reason: str
    duration_s: float


@dataclass
class ChainContext:
    """Everything one chain's connections share: its key, its guard, and the lock over both."""

    chain_id: str
    signer: Signer
    guard: GuardBackend
    #: None: by dialect (v0.38 and v1.0 sign extensions on non-nil precommits); False: never (chains with
    #: extensions disabled, e.g. behind a Ledger); True: as None.
    sign_extensions: bool | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Observers called after each signing request, once the state is durable and before the reply: metrics.
    observers: list[Callable[[SignEvent], None]] = field(default_factory=list)
    #: Called under the lock once the state is durable and before the reply leaves, for records that must be
    #: durable first (audit log); an exception withholds the reply.
    durable_observers: list[Callable[[SignEvent], None]] = field(default_factory=list)

    #: The last reason the state could not be made durable ("" once a signature persisted again); /health.
    persist_error: str = ""
    #: pykms.metrics.Metrics when metrics are on.
    metrics: Any = None
    #: The last consensus signature this process has verified: a reused signature equal to it needs no second
    #: verification; any other (loaded from disk, written by another instance) is verified before it leaves.
    verified_signature: bytes = b""
    #: (sign bytes, signature) of the last vote extension signed: the twin sentry's identical precommit reuses it
    #: (Ed25519 is deterministic, so signing again would give the same bytes at the cost of a signature).
    last_extension: tuple[bytes, bytes] = (b"", b"")

    def sign(self, message: bytes) -> bytes:
        """Sign through the provider, timed and counted for the metrics. Every provider's ``sign`` verifies the
        signature against the public key before returning it (``Signer``), so the guard stores only verified
        signatures."""
        return self._timed(self.signer.sign, message)

    def extension_signature(self, message: bytes) -> bytes:
        """A verified signature over vote-extension sign bytes, reused when the same bytes were just signed."""
        last_message, last_signature = self.last_extension
        if message == last_message and last_signature:
            return last_signature
        signature = self.sign(message)
        self.last_extension = (message, signature)
        return signature

    def close(self) -> None:
        """Nothing to release: the guard and the signer are closed by their owner."""

    def _timed(self, sign: Callable[[bytes], bytes], message: bytes) -> bytes:
        if self.metrics is None:
            return sign(message)
        provider = self.signer.provider
        started = time.perf_counter()
        try:
            signature = sign(message)
        except Exception as exc:
            self.metrics.provider_errors.labels(provider, type(exc).__name__).inc()
            raise
        self.metrics.provider_latency.labels(provider).observe(time.perf_counter() - started)
        return signature


class RequestHandler:
    """Handles the requests of one validator connection for one chain."""

    def __init__(
        self,
        chain: ChainContext,
        dialect: Dialect,
        *,
        chain_id: str,
        max_height: int | None = None,
        log: Any = None,
    ) -> None:
        self.chain = chain
        self.dialect = dialect
        self.chain_id = chain_id
        self.max_height = max_height
        self.log = log

    # The entry point -----------------------------------------------------------------------------------

    def handle(self, body: bytes, reply: Callable[[bytes], None]) -> None:
        """Decode ``body``, act, and call ``reply`` with the encoded response.

        Raises ProtocolError (DecodeError) for a body that is not a request: the caller closes the connection.
        """
        request = codec.decode_request(self.dialect, body)
        if isinstance(request, codec.PingRequest):
            reply(codec.encode_ping_response())
        elif isinstance(request, codec.PubKeyRequest):
            reply(self._pubkey(request))
        elif isinstance(request, codec.SignVoteRequest | codec.SignProposalRequest):
            self._sign_consensus(request, reply)
        elif isinstance(request, codec.SignBytesRequest | codec.SignRawBytesRequest):
            self._sign_raw(request, reply)
        else:  # pragma: no cover - decode_request returns only the types above
            raise InvalidRequest(f"unsupported request {type(request).__name__}")

    # Requests ------------------------------------------------------------------------------------------

    def _pubkey(self, request: codec.PubKeyRequest) -> bytes:
        # CometBFT's node sends its own chain id; an empty one is accepted as tmkms does (older nodes).
        if request.chain_id and request.chain_id != self.chain_id:
            self._log_refusal("pubkey", ChainIdMismatch(f"unable to provide pubkey for chain {request.chain_id!r}"))
            return codec.encode_error(self.dialect, request, 0, "unable to provide pubkey")
        signer = self.chain.signer
        return codec.encode_pubkey_response(self.dialect, signer.public_key(), getattr(signer, "key_type", "ed25519"))

    def _sign_consensus(
        self, request: codec.SignVoteRequest | codec.SignProposalRequest, reply: Callable[[bytes], None]
    ) -> None:
        started = time.perf_counter()
        is_vote = isinstance(request, codec.SignVoteRequest)
        msg: Any = request.vote if isinstance(request, codec.SignVoteRequest) else request.proposal
        height, round_ = int(msg.height), int(msg.round)
        block_hash = bytes(msg.block_id.hash)
        kind = "vote" if is_vote else "proposal"
        step = 0
        sign_bytes = b""
        try:
            if request.chain_id != self.chain_id:
                raise ChainIdMismatch(f"request for chain {request.chain_id!r} on a connection for {self.chain_id!r}")
            step = step_of(request)
            kind = _STEP_NAMES[step]
            if self.max_height is not None and height > self.max_height:
                raise HeightAboveMax(f"height {height} is above max_height {self.max_height}")
            if isinstance(request, codec.SignVoteRequest):
                sign_bytes = vote_sign_bytes(self.chain_id, request.vote)
                extension_wanted = self._extension_wanted(request)
            else:
                sign_bytes = proposal_sign_bytes(self.chain_id, request.proposal)
                extension_wanted = False
            chain = self.chain
            with chain.lock:

                def sign(message: bytes) -> bytes:
                    signature = chain.sign(message)  # verified by the provider before the guard may store it
                    chain.verified_signature = signature
                    return signature

                # Returns only once the state covering a fresh signature is durable. Whatever it hands back is
                # checked against what was verified (_signed_response): a backend bug cannot leak another one.
                outcome = chain.guard.check_and_sign(height, round_, step, sign_bytes, sign)
                extension_signature = b""
                if extension_wanted:
                    extension_signature = chain.extension_signature(vote_extension_sign_bytes(self.chain_id, msg))
                response = self._signed_response(request, outcome, extension_signature)
                event = SignEvent(
                    self.chain_id, kind, height, round_, step, block_hash, sign_bytes, outcome.signature,
                    "signed" if outcome.fresh else "reused", "", time.perf_counter() - started,
                )  # fmt: skip
                for observer in chain.durable_observers:
                    observer(event)
                chain.persist_error = ""
                # Metrics before the reply, so a scrape never lags what the node has received.
                self._notify(event)
        except SigningRefused as exc:
            self._refuse(request, kind, height, round_, step, block_hash, sign_bytes, exc, started, reply)
            return
        except (StateError, ProviderError) as exc:
            # Not durable or not signed: withhold the signature, tell the node, keep the connection.
            if isinstance(exc, StateError):
                self.chain.persist_error = str(exc)
            self._refuse(request, kind, height, round_, step, block_hash, sign_bytes, exc, started, reply)
            return
        reply(response)  # outside the lock: a peer that does not read stalls only its own connection
        if self.log is not None:
            self.log.info(
                f"{kind}_signed" if outcome.fresh else f"{kind}_resigned",
                height=height, round=round_, step=step, block=block_hash[:6].hex() or "nil",
                ms=round(event.duration_s * 1000, 3), extension=bool(extension_signature),
            )  # fmt: skip

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

    # Helpers -------------------------------------------------------------------------------------------

    def _extension_wanted(self, request: codec.SignVoteRequest) -> bool:
        """FilePV's rules (docs/protocol.md §2.7): sign an extension on every non-nil precommit, never elsewhere."""
        vote = request.vote
        if self.dialect in (Dialect.V0_34, Dialect.V0_37):
            return False
        is_nil = not vote.block_id.hash and not vote.block_id.part_set_header.total
        non_nil_precommit = vote.type == 2 and not is_nil
        if not non_nil_precommit and vote.extension:
            raise InvalidRequest("unexpected vote extension: only non-nil precommits carry one")
        if self.chain.sign_extensions is False:
            return False
        if self.dialect is Dialect.V1_0 and request.skip_extension_signing:
            return False
        return non_nil_precommit

    def _signed_response(self, request: Any, outcome: GuardOutcome, extension_signature: bytes) -> bytes:
        if isinstance(request, codec.SignVoteRequest):
            vote = request.vote
            if outcome.timestamp is not None:
                vote.timestamp.seconds, vote.timestamp.nanos = outcome.timestamp
            self._ensure_verified(outcome.signature, lambda: vote_sign_bytes(self.chain_id, vote))
            vote.signature = outcome.signature
            if extension_signature:
                vote.extension_signature = extension_signature
            response = codec.encode_signed_vote(self.dialect, vote)
            if len(response) > codec.MAX_RESPONSE_BYTES:
                # Nodes up to v1.0.1 drop responses over 10,240 bytes; they copy back only the signature,
                # timestamp and extension signature, so a large extension need not be echoed.
                response = codec.encode_signed_vote(self.dialect, vote, echo_extension=False)
            return response
        proposal = request.proposal
        if outcome.timestamp is not None:
            proposal.timestamp.seconds, proposal.timestamp.nanos = outcome.timestamp
        self._ensure_verified(outcome.signature, lambda: proposal_sign_bytes(self.chain_id, proposal))
        proposal.signature = outcome.signature
        return codec.encode_signed_proposal(self.dialect, proposal)

    def _ensure_verified(self, signature: bytes, signed: Callable[[], bytes]) -> None:
        """Verify ``signature`` over the sign bytes of what the reply carries, unless it is the one this process
        verified last (just made, or just reused). Any other — read from disk, written by another instance, one
        whose verification failed — is checked here before it leaves."""
        chain = self.chain
        if signature != chain.verified_signature:
            verify_or_raise(chain.signer.public_key(), signed(), signature, chain.signer.provider)
            chain.verified_signature = signature

    def _refuse(
        self,
        request: Any,
        kind: str,
        height: int,
        round_: int,
        step: int,
        block_hash: bytes,
        sign_bytes: bytes,
        exc: KmsError,
        started: float,
        reply: Callable[[bytes], None],
    ) -> None:
        code = exc.code if isinstance(exc, SigningRefused) else 0
        prefix = "unable to sign vote" if isinstance(request, codec.SignVoteRequest) else "unable to sign proposal"
        # The node is the party the signer trusts least: it learns why in general terms (no file paths, no
        # database user@host); the log line below keeps the detail.
        if isinstance(exc, SigningRefused):
            told = str(exc)
        elif isinstance(exc, StateError):
            told = "the double-sign state could not be made durable; see the signer's log"
        else:
            told = "the signing backend failed; see the signer's log"
        outcome = "refused" if isinstance(exc, SigningRefused) else "error"
        event = SignEvent(
            self.chain_id, kind, height, round_, step, block_hash, sign_bytes, None, outcome,
            type(exc).__name__, time.perf_counter() - started,
        )  # fmt: skip
        try:
            for observer in self.chain.durable_observers:
                observer(event)
        finally:
            self._notify(event)
            reply(codec.encode_error(self.dialect, request, code, f"{prefix}: {told}"))
        self._log_refusal(kind, exc, height=height, round=round_, step=step, block=block_hash[:6].hex() or "nil")

    def _log_refusal(self, kind: str, exc: KmsError, **fields: Any) -> None:
        if self.log is None:
            return
        if isinstance(exc, DoubleSignError):
            name = "double_sign_refused"
        elif isinstance(exc, SigningRefused):
            name = "request_refused"
        elif isinstance(exc, StateError):
            name = "state_not_durable"
        else:
            name = "signer_failed"
        self.log.warning(name, kind=kind, error=type(exc).__name__, reason=str(exc), **fields)

    def _notify(self, event: SignEvent) -> None:
        for observer in self.chain.observers:
            try:
                observer(event)
            except Exception:
                if self.log is not None:
                    self.log.exception("observer_failed")
