"""The default guard backend: the chain's state in a local file (CometBFT JSON or the two-slot store).

The state is kept in memory and written through the store on every fresh signature; ``save`` returns only once
the state is on stable storage, and only then does ``check_and_sign`` return the signature. If the save fails the
in-memory state is left as it was and the signature is dropped: it never left the process, so signing the same
height/round/step again later cannot make a double sign.
"""

from __future__ import annotations

from pykms.guard.backend import GuardOutcome, SignFn
from pykms.guard.decide import ReuseSignature, decide
from pykms.guard.state import SignState
from pykms.guard.store import StateStore

__all__ = ["FileGuard"]


class FileGuard:
    """One chain's guard over a local ``StateStore``. Callers serialise calls (the chain lock)."""

    #: The metrics' label for this kind of state storage.
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
