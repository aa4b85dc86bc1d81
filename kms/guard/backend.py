"""The seam between the runtime and a double-sign guard backend.

A backend holds the last signed state of one chain and performs the whole critical section of a signature in
one call: decide (pure ``pykms.guard.decide.decide``), sign, persist durably, and only then return. The key holder
(``pykms.keyholder.local``) calls it from the connection's thread while it holds the chain's lock, and the reply
is written only after it returns, so no signature ever leaves before the state that covers it is durable.

Backends: the local state file (``FileGuard`` below: CometBFT JSON or the two-slot store) and PostgreSQL
(``pykms.guard.postgres.PostgresGuard``: one row per chain, locked with SELECT ... FOR UPDATE across the decision,
shared by several pykms instances).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pykms.guard.decide import ReuseSignature, decide
from pykms.guard.state import SignState
from pykms.guard.store import StateStore

__all__ = ["FileGuard", "GuardBackend", "GuardOutcome", "SignFn"]

#: Signs sign bytes with the chain's consensus key; raises ProviderError on failure.
SignFn = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What the node gets: a signature, and the stored timestamp when an earlier signature is reused."""

    signature: bytes
    #: (seconds, nanos) to put back in the vote/proposal when the request differed only by timestamp.
    timestamp: tuple[int, int] | None
    #: False when the stored signature was returned (identical or timestamp-only repeat).
    fresh: bool


class GuardBackend(Protocol):
    """One chain's double-sign state and its durable storage."""

    #: What kind of storage this is, for the metrics' labels: "file" or "postgres".
    backend: str

    def check_and_sign(self, height: int, round_: int, step: int, sign_bytes: bytes, sign: SignFn) -> GuardOutcome:
        """Decide, sign, persist, return. Raises DoubleSignError (refused, nothing signed, state unchanged),
        PersistError / StateError (not durable: the signature is withheld), ProviderError (signing failed)."""
        ...

    def close(self) -> None:
        """Release files, locks and connections."""
        ...


class FileGuard:
    """One chain's guard over a local ``StateStore``. Callers serialise calls (the chain lock).

    The state is kept in memory and written through the store on every fresh signature. If the save fails the
    in-memory state is left as it was and the signature is dropped: it never left the process, so signing the
    same height/round/step again later cannot make a double sign.
    """

    backend = "file"

    def __init__(self, chain_id: str, store: StateStore) -> None:
        self.chain_id = chain_id
        self.store = store
        self.state = store.load()

    def check_and_sign(self, height: int, round_: int, step: int, sign_bytes: bytes, sign: SignFn) -> GuardOutcome:
        decision = decide(self.state, height, round_, step, sign_bytes)
        if isinstance(decision, ReuseSignature):
            return GuardOutcome(decision.signature, decision.timestamp, fresh=False)
        signature = sign(sign_bytes)
        new_state = SignState(height=height, round=round_, step=step, signature=signature, sign_bytes=sign_bytes)
        self.store.save(new_state)  # raises PersistError: the signature is dropped with the exception
        self.state = new_state
        return GuardOutcome(signature, None, fresh=True)

    def close(self) -> None:
        self.store.close()
