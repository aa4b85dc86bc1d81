"""The cosigner's network edge: a TCP listener, SecretConnection with pinned signers, one thread per connection.

Each accepted connection runs the handshake (bounded in time), is closed at once unless the peer's node ID is in
``allowed_signers``, then serves requests one at a time. A request the cosigner refuses is answered with
``ok: false`` and the connection stays; a malformed message closes that connection with one log line, and the
process keeps serving the others.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from nacl.signing import SigningKey

from pykms.errors import DecodeError, KmsError, ProtocolError
from pykms.logconfig import get_logger
from pykms.secretconn.sync import secret_connection_sync
from pykms.threshold import frost
from pykms.threshold.cosigner import Cosigner
from pykms.threshold.wire import MessageReader, send_message

__all__ = ["CosignerServer"]

#: Idle connections are kept (the coordinator reuses them); a silent one is dropped after this long.
IDLE_TIMEOUT_S = 300.0
HANDSHAKE_TIMEOUT_S = 5.0


def _hex(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected hex text")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise DecodeError(f"{what}: not hex") from None
    if size is not None and len(data) != size:
        raise DecodeError(f"{what}: expected {size} bytes")
    return data


def parse_commitments(value: object) -> list[frost.Commitment]:
    if not isinstance(value, list) or not 1 <= len(value) <= 255:
        raise DecodeError("commitments: expected a list of [identifier, hiding, binding]")
    out: list[frost.Commitment] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int and 1 <= item[0] <= 255):
            raise DecodeError("commitments: expected [identifier, hiding, binding]")
        out.append(frost.Commitment(item[0], _hex(item[1], "hiding", 32), _hex(item[2], "binding", 32)))
    return out


def _commitment_answer(cosigner: Cosigner) -> dict[str, Any]:
    session, commitment = cosigner.commit()
    return {
        "ok": True,
        "identifier": cosigner.identifier,
        "session": session,
        "hiding": commitment.hiding.hex(),
        "binding": commitment.binding.hex(),
    }


def handle_request(cosigner: Cosigner, request: dict[str, Any]) -> dict[str, Any]:
    """One request -> one answer. DecodeError (malformed) propagates: the caller closes the connection."""
    op = request.get("op")
    if op == "commit":
        return _commitment_answer(cosigner)
    if op == "sign":
        session = request.get("session")
        if not isinstance(session, str) or len(session) > 64:
            raise DecodeError("sign: session missing")
        message = _hex(request.get("message"), "message")
        commitments = parse_commitments(request.get("commitments"))
        try:
            share = cosigner.sign(session, message, commitments)
        except ProtocolError:
            raise
        except KmsError as exc:
            answer: dict[str, Any] = {"ok": False, "error": str(exc), "refused": type(exc).__name__}
        else:
            answer = {"ok": True, "share": share.hex()}
        # The next session's commitment rides along, so the coordinator's next round one needs no round trip.
        answer["next"] = _commitment_answer(cosigner)
        return answer
    if op == "status":
        chains = {
            chain: {"height": s.height, "round": s.round, "step": s.step} for chain, s in cosigner.status().items()
        }
        return {"ok": True, "identifier": cosigner.identifier, "chains": chains}
    raise DecodeError(f"unknown op {op!r}")


class CosignerServer:
    def __init__(
        self, cosigner: Cosigner, identity: SigningKey, allowed: tuple[str, ...], host: str, port: int
    ) -> None:
        self.cosigner = cosigner
        self.identity = identity
        self.allowed = frozenset(allowed)
        self.log = get_logger("pykms.cosigner", identifier=cosigner.identifier)
        self.listener = socket.create_server((host, port), reuse_port=False)
        self.address = self.listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def serve_forever(self) -> None:
        self.log.info("cosigner_listening", addr=f"{self.address[0]}:{self.address[1]}")
        while not self._stopping.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            threading.Thread(target=self._serve, args=(sock, peer), daemon=True, name="cosigner-conn").start()

    def stop(self) -> None:
        """Stop accepting (shutdown wakes the blocked accept) and close every open connection."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        with self._conns_lock:
            self._conns.add(sock)
        try:
            self._serve_connection(sock, f"{peer[0]}:{peer[1]}")
        finally:
            with self._conns_lock:
                self._conns.discard(sock)

    def _serve_connection(self, sock: socket.socket, where: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            stream = secret_connection_sync(sock, self.identity, timeout=HANDSHAKE_TIMEOUT_S)
        except KmsError as exc:
            self.log.warning("signer_handshake_failed", peer=where, reason=str(exc))
            sock.close()
            return
        if stream.remote_id not in self.allowed:
            self.log.warning("signer_refused", peer=where, peer_id=stream.remote_id, reason="not in allowed_signers")
            stream.close()
            return
        log = self.log.bind(peer=where, peer_id=stream.remote_id)
        log.info("signer_connected")
        sock.settimeout(IDLE_TIMEOUT_S)
        reader = MessageReader(stream)
        try:
            while True:
                request = reader.read()
                if request is None:
                    break
                answer = handle_request(self.cosigner, request)
                send_message(stream, answer)
                if request.get("op") == "sign":
                    if answer["ok"]:
                        log.debug("share_signed")
                    else:  # the reason a share was refused (a double-sign attempt shows up here)
                        log.warning("share_refused", reason=answer.get("error"), refused=answer.get("refused"))
        except (KmsError, OSError) as exc:
            log.warning("signer_connection_closed", reason=str(exc), error=type(exc).__name__)
        finally:
            stream.close()
