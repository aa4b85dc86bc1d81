"""A validator simulator: the node side of privval, for the signer harness, the benchmark, the demo and tests.

It does what a CometBFT node does with its ``priv_validator_laddr``: listen (TCP with SecretConnection under a
fresh random identity, as the node does at every start, or a plaintext unix socket), accept the signer's
connection, send requests, read responses. It is blocking and single-threaded per link on purpose: the benchmark
measures the signer's round trip, and a loop of plain socket calls adds the least of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from pykms.errors import DecodeError, ProtocolError
from pykms.privval import codec
from pykms.privval.codec import Dialect, MessageReader
from pykms.proto.tendermint.types import types_pb2

__all__ = [
    "SignerLink",
    "ValidatorSimulator",
    "block_id",
    "make_proposal",
    "make_vote",
    "now_timestamp",
]

PREVOTE, PRECOMMIT, PROPOSAL = 1, 2, 32

#: Responses the node reads are capped at 10,240 bytes in CometBFT (maxRemoteSignerMsgSize); the simulator
#: accepts more so a signer that echoes a large extension is reported rather than cut off.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def now_timestamp() -> tuple[int, int]:
    t = time.time_ns()
    return t // 1_000_000_000, t % 1_000_000_000


def block_id(seed: bytes | str, total: int = 1) -> Any:
    """A complete BlockID whose hash and part-set hash are SHA-256 of ``seed`` (empty seed: a nil BlockID)."""
    bid = types_pb2.BlockID()
    if seed:
        raw = seed.encode() if isinstance(seed, str) else seed
        bid.hash = hashlib.sha256(raw).digest()
        bid.part_set_header.total = total
        bid.part_set_header.hash = hashlib.sha256(raw).digest()
    return bid


def make_vote(
    height: int,
    round_: int = 0,
    vote_type: int = PREVOTE,
    block: bytes | str = b"block",
    *,
    timestamp: tuple[int, int] | None = None,
    extension: bytes = b"",
    validator_address: bytes = hashlib.sha256(b"addr").digest()[:20],
    validator_index: int = 0,
) -> Any:
    vote = types_pb2.Vote()
    vote.type = vote_type  # type: ignore[assignment]
    vote.height = height
    vote.round = round_
    vote.block_id.CopyFrom(block_id(block))
    seconds, nanos = timestamp if timestamp is not None else now_timestamp()
    vote.timestamp.seconds, vote.timestamp.nanos = seconds, nanos
    vote.validator_address = validator_address
    vote.validator_index = validator_index
    if extension:
        vote.extension = extension
    return vote


def make_proposal(
    height: int,
    round_: int = 0,
    block: bytes | str = b"block",
    *,
    pol_round: int = -1,
    timestamp: tuple[int, int] | None = None,
) -> Any:
    proposal = types_pb2.Proposal()
    proposal.type = PROPOSAL  # type: ignore[assignment]
    proposal.height = height
    proposal.round = round_
    proposal.pol_round = pol_round
    proposal.block_id.CopyFrom(block_id(block))
    seconds, nanos = timestamp if timestamp is not None else now_timestamp()
    proposal.timestamp.seconds, proposal.timestamp.nanos = seconds, nanos
    return proposal


class _Plain:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class SignerLink:
    """One accepted signer connection: send a request, wait for its response."""

    def __init__(self, stream: Any, sock: socket.socket, dialect: Dialect, chain_id: str) -> None:
        self.stream = stream
        self.sock = sock
        self.dialect = dialect
        self.chain_id = chain_id
        self.reader = MessageReader(MAX_RESPONSE_BYTES)
        self._pending: list[bytes] = []
        self.remote_pubkey: bytes | None = getattr(stream, "remote_pubkey", None)

    def send_raw(self, data: bytes) -> None:
        """Bytes on the stream as they are (for hostile-input tests)."""
        self.stream.send(data)

    def recv_body(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        while not self._pending:
            data = self.stream.recv()
            if not data:
                raise ProtocolError("the signer closed the connection")
            self._pending.extend(self.reader.feed(data))
        return self._pending.pop(0)

    def request(self, req: Any, timeout: float = 10.0) -> Any:
        self.stream.send(codec.delimit(codec.encode_request(self.dialect, req)))
        return codec.decode_response(self.dialect, self.recv_body(timeout))

    def pubkey(self, chain_id: str | None = None) -> Any:
        return self.request(codec.PubKeyRequest(chain_id=self.chain_id if chain_id is None else chain_id))

    def ping(self) -> Any:
        return self.request(codec.PingRequest())

    def sign_vote(self, vote: Any, *, chain_id: str | None = None, skip_extension_signing: bool = False) -> Any:
        req = codec.SignVoteRequest(
            vote=vote,
            chain_id=self.chain_id if chain_id is None else chain_id,
            skip_extension_signing=skip_extension_signing,
        )
        return self.request(req)

    def sign_proposal(self, proposal: Any, *, chain_id: str | None = None) -> Any:
        req = codec.SignProposalRequest(proposal=proposal, chain_id=self.chain_id if chain_id is None else chain_id)
        return self.request(req)

    def close(self) -> None:
        self.stream.close()
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class ValidatorSimulator:
    """Listens like a node's privval listener; ``accept`` returns a ``SignerLink``."""

    addr: str = "tcp://127.0.0.1:0"
    chain_id: str = "test-chain"
    dialect: Dialect = Dialect.V0_38
    handshake_timeout: float = 5.0

    def __post_init__(self) -> None:
        # A fresh identity per listener, as the node's privval listener does at every start (PROTOCOL.md §1.7).
        self.identity = SigningKey.generate()
        self._sock: socket.socket | None = None
        self._unix_path: Path | None = None

    def listen(self) -> str:
        """Bind and listen; returns the address signers should dial (with the real port)."""
        if self.addr.startswith("unix://"):
            path = Path(self.addr[len("unix://") :])
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            self._unix_path = path
            sock.listen(16)
            self._sock = sock
            return f"unix://{path}"
        rest = self.addr[len("tcp://") :] if self.addr.startswith("tcp://") else self.addr
        host, _, port = rest.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "127.0.0.1", int(port or 0)))
        sock.listen(16)
        self._sock = sock
        bound_host, bound_port = sock.getsockname()[:2]
        return f"tcp://{bound_host}:{bound_port}"

    @property
    def node_id(self) -> str:
        return hashlib.sha256(bytes(self.identity.verify_key)).digest()[:20].hex()

    def accept(self, timeout: float = 10.0) -> SignerLink:
        """Wait for the signer to dial in, then run the handshake (TCP) and return the link."""
        if self._sock is None:
            self.listen()
        assert self._sock is not None
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        conn.settimeout(self.handshake_timeout)
        if self._unix_path is not None:
            return SignerLink(_Plain(conn), conn, self.dialect, self.chain_id)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        from pykms.secretconn.sync import secret_connection_sync

        try:
            stream = secret_connection_sync(conn, self.identity, timeout=self.handshake_timeout)
        except (ProtocolError, OSError):
            conn.close()
            raise
        return SignerLink(stream, conn, self.dialect, self.chain_id)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)


_ = DecodeError
