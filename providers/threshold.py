"""The threshold provider: each signature is made by t of n FROST cosigners; no process here holds the key.

``sign(message)`` runs RFC 9591's two rounds against the cosigners of one ``[[providers.threshold]]``:

1. take the commitments the cosigners handed out with their previous shares (FROST's preprocessing: a nonce
   pair may be committed to before the message is known); ask the others for one, in parallel, and keep the
   first t;
2. send those t the message and the t commitments, in parallel; check each share against its verifying key,
   sum them, and verify the result against the group key (the validator's public key) before it leaves.

A cosigner that fails (refused connection, timeout, refusal, bad share) is skipped for the rest of the request
and asked again only after ``retry_after_ms`` or when the others cannot make t; a failed round two starts over
with fresh commitments from the remaining cosigners, all within ``timeout_ms`` (below the node's 5 s deadline).
A slow cosigner's late answer is never read as the answer to a later request: its connection is closed on
timeout and re-opened on next use.

Several pykms signer instances may share the cosigners (HA). A cosigner answers identical sign bytes at its last
height/round/step again (with fresh nonces), so every instance that asks for the same vote gets a valid
signature of those same bytes; a conflicting vote at one height/round/step is refused by every cosigner that
signed the first, so with t > n/2 it can never gather t shares.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from pykms.errors import (
    ConnectionLost,
    FatalProviderError,
    KmsError,
    LinkTimeout,
    ThresholdError,
    TransientProviderError,
)
from pykms.secretconn.sync import BlockingSecretStream, secret_connection_sync
from pykms.threshold import frost
from pykms.threshold.wire import MessageReader, send_message

if TYPE_CHECKING:
    from pykms.threshold.config import ThresholdConfig, ThresholdCosignerAddr

__all__ = ["CosignerClient", "ThresholdSigner", "cosigner_status"]

#: A commitment received with a share is used within this long; the cosigner keeps its nonces for
#: ``SESSION_TTL_S`` (120 s), so an older one is not even tried.
READY_TTL_S = 60.0


class CosignerClient:
    """One pinned connection to one cosigner; one request at a time (its lock)."""

    def __init__(self, addr: ThresholdCosignerAddr, identity: SigningKey) -> None:
        self.addr = addr
        self._identity = identity
        self._lock = threading.Lock()
        self._stream: BlockingSecretStream | None = None
        self._reader: MessageReader | None = None
        self.down_until = 0.0
        #: A commitment the cosigner handed out with its last share: (session, commitment, when received).
        self._ready: tuple[str, frost.Commitment, float] | None = None

    def take_ready(self, not_before: float) -> tuple[str, frost.Commitment] | None:
        ready, self._ready = self._ready, None
        if ready is None or ready[2] < not_before:
            return None
        return ready[0], ready[1]

    def put_ready(self, session: str, commitment: frost.Commitment, when: float) -> None:
        self._ready = (session, commitment, when)

    def _connect(self, deadline: float) -> tuple[BlockingSecretStream, MessageReader]:
        if self._stream is None or self._reader is None:
            remaining = max(0.001, deadline - time.monotonic())
            sock = socket.create_connection((self.addr.host, self.addr.port), timeout=remaining)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                stream = secret_connection_sync(
                    sock, self._identity, expected_peer_id=self.addr.peer_id, timeout=remaining
                )
            except BaseException:
                sock.close()
                raise
            self._stream, self._reader = stream, MessageReader(stream)
        return self._stream, self._reader

    def call(self, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        """One request and its answer before ``deadline``; any failure closes the connection.

        A kept connection found closed or reset (the cosigner restarted since) is re-opened once and the request
        sent again: safe even for a sign request, since the cosigner, not the connection, makes nonces single-use.
        """
        with self._lock:
            for attempt in (1, 2):
                reused = self._stream is not None
                try:
                    if time.monotonic() >= deadline:
                        raise TimeoutError("deadline passed")
                    stream, reader = self._connect(deadline)
                    stream.sock.settimeout(max(0.001, deadline - time.monotonic()))
                    send_message(stream, request)
                    answer = reader.read()
                    if answer is None:
                        raise ConnectionError("the cosigner closed the connection")
                    return answer
                except (ConnectionError, ConnectionLost) as exc:
                    self.close_locked()
                    if isinstance(exc, LinkTimeout) or not (reused and attempt == 1):
                        raise TransientProviderError(f"cosigner {self.addr.addr}: {exc}") from None
                except (OSError, KmsError) as exc:
                    self.close_locked()
                    raise TransientProviderError(f"cosigner {self.addr.addr}: {exc or type(exc).__name__}") from None
            raise AssertionError("unreachable")

    def close_locked(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = self._reader = None
        self._ready = None  # the cosigner may have restarted: its sessions are gone

    def close(self) -> None:
        with self._lock:
            self.close_locked()


@dataclass
class _Round:
    """Answers of one round, gathered until ``wanted`` succeeded or nothing is left to wait for."""

    ok: dict[CosignerClient, dict[str, Any]] = field(default_factory=dict)
    failed: dict[CosignerClient, str] = field(default_factory=dict)
    #: Answers with ok false (their error is in ``failed`` too).
    refused: dict[CosignerClient, dict[str, Any]] = field(default_factory=dict)


class ThresholdSigner:
    provider = "threshold"
    signs_extensions = True

    def __init__(
        self,
        package: frost.PublicKeyPackage,
        identity: SigningKey,
        cosigners: list[ThresholdCosignerAddr],
        *,
        timeout_s: float,
        retry_after_s: float = 1.0,
    ) -> None:
        self.package = package
        self.clients = [CosignerClient(addr, identity) for addr in cosigners]
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # Two calls per cosigner may be in flight (a late one from an earlier round and a new one).
        self._pool = ThreadPoolExecutor(max_workers=2 * len(self.clients), thread_name_prefix="threshold")
        self._closed = False

    @classmethod
    def from_config(cls, cfg: ThresholdConfig) -> ThresholdSigner:
        from pykms.secretconn.identity import load_identity
        from pykms.threshold.keys import load_group_file

        package = load_group_file(cfg.group_file)
        if package.min_signers != cfg.threshold:
            raise FatalProviderError(
                f"{cfg.group_file}: the group's threshold is {package.min_signers}, the config says "
                f"{cfg.threshold} (fix: set threshold = {package.min_signers})"
            )
        return cls(
            package,
            load_identity(cfg.secret_key),
            list(cfg.cosigners),
            timeout_s=cfg.timeout_ms / 1000,
            retry_after_s=cfg.retry_after_ms / 1000,
        )

    def public_key(self) -> bytes:
        return self.package.group_public_key

    def _round(self, requests: dict[CosignerClient, dict[str, Any]], wanted: int, deadline: float) -> _Round:
        result = _Round()
        futures: dict[Future[dict[str, Any]], CosignerClient] = {
            self._pool.submit(client.call, request, deadline): client for client, request in requests.items()
        }
        pending = set(futures)
        while pending and len(result.ok) < wanted:
            done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                client = futures[future]
                try:
                    answer = future.result()
                except TransientProviderError as exc:
                    result.failed[client] = str(exc)
                    continue
                if answer.get("ok") is True:
                    result.ok[client] = answer
                else:
                    result.failed[client] = str(answer.get("error", "refused"))
                    result.refused[client] = answer
        if len(result.ok) < wanted:
            for future in pending:  # too late: their connections close on their own timeout
                result.failed.setdefault(futures[future], "no answer in time")
        # Otherwise the slower ones are not at fault: their answers (a commitment nobody will use) are dropped.
        return result

    def sign(self, message: bytes) -> bytes:
        if self._closed:
            raise FatalProviderError("threshold signer is closed")
        t = self.package.min_signers
        deadline = time.monotonic() + self.timeout_s
        excluded: set[CosignerClient] = set()
        stale_retried: set[CosignerClient] = set()
        reasons: dict[str, str] = {}
        while time.monotonic() < deadline:
            now = time.monotonic()
            usable = [c for c in self.clients if c not in excluded]
            up = [c for c in usable if c.down_until <= now]
            candidates = up if len(up) >= t else usable
            if len(candidates) < t:
                break
            # Round one: a commitment handed out with a cosigner's previous share costs no round trip.
            ready = {c: r for c in candidates if (r := c.take_ready(now - READY_TTL_S)) is not None}
            if len(ready) < t:
                ask = {c: {"op": "commit"} for c in candidates if c not in ready}
                first = self._round(ask, t - len(ready), self._round_deadline(deadline))
                self._mark(first, excluded, reasons)
                for client, answer in first.ok.items():
                    parsed = self._commitment(client, answer)
                    if parsed is not None:
                        ready[client] = parsed
                if len(ready) < t:
                    for client, (session, commitment) in ready.items():
                        client.put_ready(session, commitment, now)
                    continue  # the failed ones are excluded now: ask the rest (held back by the backoff too)
            chosen = list(ready.items())[:t]
            for client, (session, commitment) in list(ready.items())[t:]:
                client.put_ready(session, commitment, now)
            commitments = [commitment for _, (_, commitment) in chosen]
            wire_list = [[c.identifier, c.hiding.hex(), c.binding.hex()] for c in commitments]
            requests = {
                client: {"op": "sign", "session": session, "message": message.hex(), "commitments": wire_list}
                for client, (session, _) in chosen
            }
            second = self._round(requests, t, self._round_deadline(deadline))
            for client, answer in [*second.ok.items(), *second.refused.items()]:
                nxt = answer.get("next")
                if isinstance(nxt, dict) and (parsed := self._commitment(client, nxt)) is not None:
                    client.put_ready(*parsed, time.monotonic())
            for client, error in list(second.failed.items()):
                # A session the cosigner no longer knows (restart, eviction, expiry) is not a fault: once per
                # request and cosigner, ask it for a fresh commitment instead of leaving it out.
                if "commit again" in error and client not in stale_retried:
                    stale_retried.add(client)
                    del second.failed[client]
            self._mark(second, excluded, reasons)
            if len(second.ok) < t:
                continue
            ids = {client: commitment.identifier for client, (_, commitment) in chosen}
            try:
                shares = {ids[client]: bytes.fromhex(str(answer["share"])) for client, answer in second.ok.items()}
                signature = frost.aggregate(self.package, message, commitments, shares)
            except (ThresholdError, ValueError) as exc:
                # A share that does not verify names its participant: leave that cosigner out and start over.
                culprit = next((c for c, i in ids.items() if f"participant {i}'" in str(exc)), None)
                reasons["aggregate"] = str(exc)
                if culprit is None:
                    break
                excluded.add(culprit)
                culprit.down_until = time.monotonic() + self.retry_after_s
                continue
            return signature  # aggregate() returns it only once it verifies under the group (public) key
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no cosigner answered"
        raise TransientProviderError(f"threshold signature failed ({t} of {len(self.clients)} needed): {detail}")

    def _round_deadline(self, deadline: float) -> float:
        """A round may take a third of the budget: a stalled cosigner then leaves time to retry without it."""
        return min(deadline, time.monotonic() + self.timeout_s / 3)

    def _commitment(self, client: CosignerClient, answer: dict[str, Any]) -> tuple[str, frost.Commitment] | None:
        """(session, commitment) from an answer; its points are validated once, by aggregate(), not here."""
        try:
            session = answer["session"]
            identifier = int(answer["identifier"])
            commitment = frost.Commitment(
                identifier, bytes.fromhex(str(answer["hiding"])), bytes.fromhex(str(answer["binding"]))
            )
            if not isinstance(session, str) or len(commitment.hiding) != 32 or len(commitment.binding) != 32:
                raise ThresholdError("malformed commitment")
            if identifier not in self.package.verifying_shares:
                raise ThresholdError(f"unknown participant {identifier}")
        except (KeyError, TypeError, ValueError, ThresholdError):
            client.down_until = time.monotonic() + self.retry_after_s
            return None
        return session, commitment

    def _mark(self, result: _Round, excluded: set[CosignerClient], reasons: dict[str, str]) -> None:
        for client, reason in result.failed.items():
            excluded.add(client)
            reasons[client.addr.addr] = reason
            client.down_until = time.monotonic() + self.retry_after_s
        for client in result.ok:
            client.down_until = 0.0

    def close(self) -> None:
        self._closed = True
        for client in self.clients:
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"ThresholdSigner(group_key={self.package.group_public_key.hex().upper()}, n={len(self.clients)})"


def cosigner_status(cfg: ThresholdConfig, *, timeout_s: float = 3.0) -> Iterator[tuple[bool, str]]:
    """(reachable, line) for every cosigner of one ``[[providers.threshold]]`` (``pykms threshold status``)."""
    from pykms.secretconn.identity import load_identity

    identity = load_identity(cfg.secret_key)
    for addr in cfg.cosigners:
        client = CosignerClient(addr, identity)
        started = time.monotonic()
        try:
            answer = client.call({"op": "status"}, started + timeout_s)
            latency_ms = (time.monotonic() - started) * 1000
            signed = [
                f"{chain} {int(v['height'])}/{int(v['round'])}/{int(v['step'])}"
                for chain, v in sorted(dict(answer["chains"]).items())
            ]
            share = int(answer["identifier"])
        except (TransientProviderError, KeyError, TypeError, ValueError) as exc:
            yield False, f"{addr.addr}: UNREACHABLE ({exc})"
        else:
            chains = ", ".join(signed) or "no chains"
            yield True, f"{addr.addr}: ok, share {share}, {latency_ms:.1f} ms, last signed h/r/s: {chains}"
        finally:
            with contextlib.suppress(Exception):
                client.close()
