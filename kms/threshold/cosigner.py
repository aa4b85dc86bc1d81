"""One cosigner's decisions: hand out nonce commitments, and a signature share only for what its own guard allows.

Theory of operation
-------------------
A cosigner holds one FROST share and, per chain, its own double-sign state (the same ``decide()`` and the same
durable ``JsonStateStore`` as the signer). It trusts no coordinator: the sign bytes are decoded here
(``pykms.privval.signbytes.decode_sign_bytes``), and a share is computed only when ``decide`` allows them.

``commit()`` draws a nonce pair and keeps it **in memory only**, keyed by a random session id. ``sign()`` pops
that pair under the lock before anything else, so a pair is used for at most one message: a second request for
the session, a request after a restart (the memory is gone) or after eviction is refused. Nonces are never
written to disk, so no crash can bring one back; the price of a crash between the rounds is one refused session,
which the coordinator retries with fresh commitments.

Guard outcomes for consensus messages, in the order of side effects
(pop nonce -> decide -> compute share -> persist state -> reply):

- ``SignFresh``: the share is computed, the new state (h, r, s, R ‖ z_i, sign bytes) is made durable, then the
  share is returned. ``R ‖ z_i`` fills the state's 64-byte signature slot; it is not a signature.
- identical sign bytes at the stored h/r/s (another coordinator, or a retry): a share over the same bytes with
  this session's fresh nonces. Same message, fresh nonce: safe; the state does not change.
- bytes that differ from the stored ones only in the timestamp: refused. FilePV would answer the stored
  signature with the stored timestamp, and the coordinator's own guard does exactly that; a cosigner cannot
  re-issue an old share (its nonces are gone) and must not sign the new timestamp (a second payload at one h/r/s).
- anything else ``decide`` refuses (regression, conflict) is refused with its message.

Vote extensions (v0.38+) are not slashable and carry no step: a cosigner signs a canonical vote extension for a
chain it serves only at or above its last signed height.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from pykms.errors import ConflictError, RegressionError, ThresholdError
from pykms.guard.decide import ReuseSignature, decide
from pykms.guard.state import SignState
from pykms.guard.store import StateStore
from pykms.privval.signbytes import decode_sign_bytes
from pykms.threshold import frost

__all__ = ["Cosigner"]

#: Nonce pairs kept between the rounds: a coordinator opens at most a few at a time (one per request, several
#: signers in HA); beyond this the oldest is destroyed, so a peer cannot grow our memory.
MAX_PENDING = 256
#: A session older than this is refused. Commitments are handed out ahead of use (with each share), so a quiet
#: chain's next request may come a block time later; the coordinator uses them within 60 s.
SESSION_TTL_S = 120.0


class Cosigner:
    """Thread-safe: one lock over the pending nonces and every chain's state."""

    def __init__(self, share: frost.SecretShare, package: frost.PublicKeyPackage, stores: Mapping[str, StateStore]):
        self.share = share
        self.identifier = share.identifier
        self.package = package
        self._stores = dict(stores)
        self._states = {chain: store.load() for chain, store in self._stores.items()}
        self._pending: OrderedDict[str, tuple[frost.Nonces, frost.Commitment, float]] = OrderedDict()
        self._lock = threading.Lock()

    def commit(self) -> tuple[str, frost.Commitment]:
        nonces, commitment = frost.commit(self.share)
        session = os.urandom(16).hex()
        with self._lock:
            self._pending[session] = (nonces, commitment, time.monotonic())
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return session, commitment

    def sign(self, session: str, message: bytes, commitments: Sequence[frost.Commitment]) -> bytes:
        """This participant's signature share z_i, once the state that covers it is durable."""
        payload = decode_sign_bytes(message)
        with self._lock:
            # The nonce pair leaves memory first, whatever happens next: it can never sign a second message.
            pending = self._pending.pop(session, None)
            if pending is None:
                raise ThresholdError("unknown or already used session (restart, eviction or replay): commit again")
            nonces, commitment, opened = pending
            state = self._states.get(payload.chain_id)
            store = self._stores.get(payload.chain_id)
            if state is None or store is None:
                raise ThresholdError(f"chain {payload.chain_id!r} is not served by this cosigner")
            fresh = False
            if payload.kind == "extension":
                if payload.height < state.height:
                    raise RegressionError(
                        f"vote extension at height {payload.height} below the last signed height {state.height}"
                    )
            else:
                decision = decide(state, payload.height, payload.round, payload.step, message)
                if isinstance(decision, ReuseSignature) and decision.timestamp is not None:
                    raise ConflictError(
                        f"timestamp-only difference at height {payload.height} round {payload.round} step "
                        f"{payload.step}: the signer must answer its stored signature; a cosigner signs one "
                        "payload per height/round/step"
                    )
                fresh = not isinstance(decision, ReuseSignature)
            if time.monotonic() - opened > SESSION_TTL_S:
                raise ThresholdError("session expired: commit again")
            if commitment not in commitments:
                raise ThresholdError("the commitment list does not carry this session's commitment")
            z, big_r = frost.sign_share_and_commitment(
                self.share, nonces, message, commitments, self.package.group_public_key
            )
            if fresh:
                new_state = SignState(payload.height, payload.round, payload.step, big_r + z, message)
                store.save(new_state)  # PersistError: the share is dropped with the exception
                self._states[payload.chain_id] = new_state
            return z

    def status(self) -> dict[str, SignState]:
        with self._lock:
            return dict(self._states)

    def close(self) -> None:
        with self._lock:
            self._pending.clear()
            for store in self._stores.values():
                store.close()
