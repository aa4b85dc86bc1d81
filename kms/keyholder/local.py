"""The key holder in the front's own process (``isolation = "none"``): keys, double-sign guards, audit logs.

``LocalKeyHolder.sign`` is the critical section of a signature, top to bottom in one function. It trusts only the
sign bytes: height, round, step, block and chain id are decoded from them (``decode_sign_bytes``), and vote
extension sign bytes must belong to the same chain, height and round. Under the chain's lock it then decides,
signs (every provider verifies its signature inside ``sign``), makes the state durable, verifies a reused
signature, signs the extension and writes the durable audit record; only then does it return. Nothing holding a
signature is written anywhere before the state covering it is durable and the signature verified.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pykms.errors import (
    ChainIdMismatch,
    ConfigError,
    InvalidRequest,
    KmsError,
    ProviderError,
    SigningRefused,
    StateError,
    TransientProviderError,
)
from pykms.guard.backend import GuardBackend
from pykms.handler import SignEvent
from pykms.keyholder.api import ChainKey, Signed
from pykms.logconfig import get_logger
from pykms.privval.signbytes import DecodedSignBytes, decode_sign_bytes, with_timestamp_bytes
from pykms.providers.signer import Signer, verify_or_raise

if TYPE_CHECKING:
    from pykms.audit import AuditLog
    from pykms.config import KmsConfig

__all__ = ["LocalKeyHolder"]


@dataclass(eq=False)
class _Chain:
    """One chain's key, guard and audit log, and the lock that orders every signature of the chain."""

    chain_id: str
    signer: Signer
    guard: GuardBackend
    audit: AuditLog | None
    key: ChainKey
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The last consensus signature verified in this process: a reused signature equal to it needs no second
    #: verification; any other (read from disk, written by another instance) is verified before it is returned.
    verified: bytes = b""
    #: (sign bytes, signature) of the last vote extension: the twin sentry's identical precommit reuses it.
    last_extension: tuple[bytes, bytes] = (b"", b"")
    #: Why the last signature could not be made durable ("" once one was); reported by ``health``.
    persist_error: str = ""


class LocalKeyHolder:
    """``pykms.keyholder.api.KeyHolder`` in-process: built from the config, or from prebuilt signers (tests)."""

    def __init__(self, config: KmsConfig | None = None, signers: dict[str, Signer] | None = None) -> None:
        """Open every chain of ``config``: its key (from ``signers`` when given), guard and audit log."""
        self.log = get_logger("pykms.keyholder")
        self._chains: dict[str, _Chain] = {}
        #: chain id -> why it is stopped (its state or audit log cannot be trusted).
        self.stopped: dict[str, str] = {}
        self._signers: list[Signer] = []
        if config is None:
            return
        from pykms.guard.factory import open_guard
        from pykms.providers.registry import build_signers

        signers = signers if signers is not None else build_signers(config)
        self._signers = list(signers.values())
        try:
            for chain_cfg in config.chains:
                signer = signers.get(chain_cfg.id)
                if signer is None:
                    raise ConfigError(
                        f"no signing key for chain {chain_cfg.id!r}",
                        file=str(config.path),
                        key="providers",
                        fix=f'add chain_ids = ["{chain_cfg.id}"] to one [[providers.*]] entry',
                    )
                try:
                    guard = open_guard(config, chain_cfg)
                except StateError as exc:
                    self._stop(chain_cfg.id, exc)
                    continue
                audit = None
                if chain_cfg.audit_log is not None:
                    from pykms.audit import AuditLog

                    try:
                        audit = AuditLog(
                            chain_cfg.audit_log,
                            chain_cfg.id,
                            sync=chain_cfg.audit_sync,
                            rotate_bytes=chain_cfg.audit_rotate_bytes,
                        )
                    except StateError as exc:  # AuditError: like the state, no signature without its record
                        guard.close()
                        self._stop(chain_cfg.id, exc)
                        continue
                self.add(chain_cfg.id, signer, guard, audit)
        except BaseException:
            self.close()
            raise

    def add(self, chain_id: str, signer: Signer, guard: GuardBackend, audit: AuditLog | None = None) -> None:
        """Serve ``chain_id`` with these open parts (the key holder closes them); for tests and benchmarks."""
        key = ChainKey(
            signer.public_key(), getattr(signer, "key_type", "ed25519"), signs_extensions=signer.signs_extensions
        )
        if signer not in self._signers:
            self._signers.append(signer)
        self._chains[chain_id] = _Chain(chain_id, signer, guard, audit, key)

    def _stop(self, chain_id: str, exc: KmsError) -> None:
        self.stopped[chain_id] = str(exc)
        self.log.error("chain_stopped", chain_id=chain_id, reason=str(exc))

    def chains(self) -> dict[str, ChainKey]:
        return {chain_id: chain.key for chain_id, chain in self._chains.items()}

    def health(self) -> dict[str, str]:
        details = {chain_id: f"stopped: {why}" for chain_id, why in self.stopped.items()}
        for chain_id, chain in self._chains.items():
            details[chain_id] = "; ".join(_storage_problems(chain)) or "ok"
        return details

    def sign(self, chain_id: str, sign_bytes: bytes, extension_sign_bytes: bytes = b"") -> Signed:
        started = time.perf_counter()
        chain = self._chains.get(chain_id)
        if chain is None:
            raise ChainIdMismatch(f"chain {chain_id!r} is not served by this key holder")
        msg = decode_sign_bytes(sign_bytes)  # InvalidRequest for anything but canonical sign bytes
        sign_s = 0.0
        made = b""

        def provider_sign(message: bytes) -> bytes:  # the provider verifies its signature before returning it
            nonlocal sign_s, made
            t = time.perf_counter()
            made = chain.signer.sign(message)
            sign_s += time.perf_counter() - t
            return made

        with chain.lock:
            try:
                _check_request(chain, msg, extension_sign_bytes)  # chain id, kind, extension: refused and audited
                # Decide, sign, persist: returns only once the state covering a fresh signature is durable.
                t0 = time.perf_counter()
                outcome = chain.guard.check_and_sign(msg.height, msg.round, msg.step, sign_bytes, provider_sign)
                persist_s = time.perf_counter() - t0 - sign_s
                chain.persist_error = ""
                if made:
                    chain.verified = made
                if outcome.signature != chain.verified:  # read back from the state: verify before it leaves
                    signed = (
                        sign_bytes if outcome.timestamp is None else with_timestamp_bytes(sign_bytes, outcome.timestamp)
                    )
                    verify_or_raise(chain.key.public_key, signed, outcome.signature, chain.signer.provider)
                    chain.verified = outcome.signature
                extension_signature = b""
                if extension_sign_bytes:
                    last_bytes, last_signature = chain.last_extension
                    if extension_sign_bytes == last_bytes and last_signature:
                        extension_signature = last_signature
                    else:
                        extension_signature = provider_sign(extension_sign_bytes)
                        chain.last_extension = (extension_sign_bytes, extension_signature)
                outcome_name = "signed" if outcome.fresh else "reused"
                _record(chain, msg, sign_bytes, outcome.signature, outcome_name, "", started)  # durable audit
            except (SigningRefused, StateError, ProviderError) as exc:
                if isinstance(exc, StateError):
                    chain.persist_error = str(exc)
                outcome_name = "refused" if isinstance(exc, SigningRefused) else "error"
                with contextlib.suppress(StateError):  # the refusal stands even if its record cannot be written
                    _record(chain, msg, sign_bytes, None, outcome_name, type(exc).__name__, started)
                raise
            except Exception as exc:  # a bug in a backend: nothing signed leaves, and only project errors escape
                self.log.error("keyholder_bug", chain_id=chain_id, error=type(exc).__name__, exc_info=True)
                raise TransientProviderError(f"internal error while signing ({type(exc).__name__})") from None
        return Signed(outcome.signature, outcome.timestamp, extension_signature, outcome.fresh, sign_s, persist_s)

    def close(self) -> None:
        chains, self._chains = self._chains, {}
        for chain in chains.values():
            with contextlib.suppress(Exception):
                chain.guard.close()
            if chain.audit is not None:
                with contextlib.suppress(Exception):
                    chain.audit.close()
        signers, self._signers = self._signers, []
        for signer in signers:
            with contextlib.suppress(Exception):
                signer.close()

    # For the daemon's metrics and status (same process only).
    def guard(self, chain_id: str) -> GuardBackend:
        return self._chains[chain_id].guard

    def signer(self, chain_id: str) -> Signer:
        return self._chains[chain_id].signer

    def audit_log(self, chain_id: str) -> AuditLog | None:
        chain = self._chains.get(chain_id)
        return None if chain is None else chain.audit


def _check_request(chain: _Chain, msg: DecodedSignBytes, extension_sign_bytes: bytes) -> None:
    """What the sign bytes must say before the guard is asked: this chain, a vote or proposal, and an extension
    only of this chain, height and round on a non-nil precommit, from a signer that signs extensions."""
    if msg.kind == "extension":
        raise InvalidRequest("vote extension sign bytes given as the vote or proposal to sign")
    if msg.chain_id != chain.chain_id:
        raise ChainIdMismatch(f"sign bytes for chain {msg.chain_id[:64]!r} sent to chain {chain.chain_id!r}")
    if not extension_sign_bytes:
        return
    if msg.kind != "precommit" or not msg.block_hash:
        raise InvalidRequest(f"a vote extension may come only with a non-nil precommit, not a {msg.kind}")
    if not chain.key.signs_extensions:
        raise InvalidRequest(f"the key of chain {chain.chain_id!r} does not sign vote extensions")
    ext = decode_sign_bytes(extension_sign_bytes)
    if ext.kind != "extension":
        raise InvalidRequest(f"extension sign bytes hold a {ext.kind}, not a vote extension")
    if (ext.chain_id, ext.height, ext.round) != (msg.chain_id, msg.height, msg.round):
        raise InvalidRequest(
            f"vote extension for chain {ext.chain_id[:64]!r} height {ext.height} round {ext.round} sent with a "
            f"precommit for height {msg.height} round {msg.round}"
        )


def _record(
    chain: _Chain,
    msg: DecodedSignBytes,
    sign_bytes: bytes,
    signature: bytes | None,
    outcome: str,
    reason: str,
    started: float,
) -> None:
    """The durable audit record (AuditError, a StateError, when it cannot be written: no signature leaves)."""
    if chain.audit is None:
        return
    event = SignEvent(
        chain.chain_id, msg.kind, msg.height, msg.round, msg.step, msg.block_hash, sign_bytes, signature,
        outcome, reason, time.perf_counter() - started,
    )  # fmt: skip
    chain.audit.record(event)


def _storage_problems(chain: _Chain) -> list[str]:
    """What stops this chain from making a signature durable right now: the last save's failure, a state
    directory that cannot take the next atomic replace, an audit log that cannot take the next record."""
    problems = []
    if chain.persist_error:
        problems.append(f"state not writable: {chain.persist_error}")
    path = getattr(getattr(chain.guard, "store", None), "path", None)
    if isinstance(path, Path) and not os.access(path.parent, os.W_OK | os.X_OK):
        problems.append(f"state directory {path.parent} is not writable")
    if chain.audit is not None and (why := chain.audit.writable()):
        problems.append(why)
    return problems
