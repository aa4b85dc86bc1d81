"""A validator simulator: the node side of privval, for the signer harness, the benchmark, the demo and tests.

It does what a CometBFT node does with its ``priv_validator_laddr``: listen (TCP with SecretConnection under a
fresh random identity, as the node does at every start, or a plaintext unix socket), accept the signer's
connection, send requests, read responses. It is blocking and single-threaded per link on purpose: the benchmark
measures the signer's round trip, and a loop of plain socket calls adds the least of its own.

Errors: everything a link can suffer (the signer hung up, reset, stalled, sent garbage) surfaces as a
``ProtocolError``; a stall is ``LinkTimeout`` and an accept that saw no signer is ``AcceptTimeout``, both also
``TimeoutError`` so callers can wait in a loop. A listener that cannot be created or that stops accepting is a
``ListenerError`` carrying tm-signer-harness's exit code (4 and 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey

from pykms.errors import ConnectionLost, HarnessError, ProtocolError
from pykms.errors import LinkTimeout as CoreLinkTimeout
from pykms.privval import codec
from pykms.privval.codec import Dialect, MessageReader
from pykms.proto.tendermint.types import types_pb2
from pykms.secretconn.sync import BlockingPlainStream, secret_connection_sync, set_kernel_timeouts

__all__ = [
    "PRECOMMIT",
    "PREVOTE",
    "AcceptTimeout",
    "LinkClosed",
    "LinkTimeout",
    "ListenerError",
    "SignerLink",
    "ValidatorSimulator",
    "make_proposal",
    "make_vote",
    "parse_listen_addr",
]

#: SignedMsgType values (cometbft proto/tendermint/types/types.proto).
PREVOTE, PRECOMMIT, PROPOSAL = 1, 2, 32

#: Responses the node reads are capped at 10,240 bytes in CometBFT (codec.MAX_RESPONSE_BYTES); the simulator
#: accepts more so a signer that echoes a large extension is reported rather than cut off.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: tm-signer-harness's exit codes for listener failures (internal/test_harness.go: ErrFailedToCreateListener,
#: ErrFailedToStartListener).
EXIT_CREATE_LISTENER = 4
EXIT_START_LISTENER = 5

#: tm-signer-harness's validator address: tmhash.SumTruncated("addr") = SHA-256("addr")[:20].
HARNESS_VALIDATOR_ADDRESS = hashlib.sha256(b"addr").digest()[:20]


class AcceptTimeout(ProtocolError, TimeoutError):
    """No signer connected within the accept timeout."""


class LinkClosed(ProtocolError):
    """The signer closed or reset the connection, or a read/write on it failed."""


class LinkTimeout(LinkClosed, TimeoutError):
    """The signer did not answer within the deadline."""


class ListenerError(HarnessError):
    """The listening socket could not be created (exit code 4) or failed while accepting (exit code 5)."""


def _block_id(seed: bytes | str, total: int = 1) -> Any:
    """A complete BlockID whose hash and part-set hash are SHA-256 of ``seed`` (empty seed: a nil BlockID)."""
    if not seed:
        return types_pb2.BlockID()
    digest = hashlib.sha256(seed.encode() if isinstance(seed, str) else seed).digest()
    return types_pb2.BlockID(hash=digest, part_set_header=types_pb2.PartSetHeader(total=total, hash=digest))


def _timestamp(given: tuple[int, int] | None) -> Timestamp:
    """``(seconds, nanos)``, or now."""
    stamp = Timestamp()
    if given is None:
        stamp.FromNanoseconds(time.time_ns())
    else:
        stamp.seconds, stamp.nanos = given
    return stamp


def make_vote(
    height: int,
    round_: int = 0,
    vote_type: int = PREVOTE,
    block: bytes | str = b"block",
    *,
    timestamp: tuple[int, int] | None = None,
    extension: bytes = b"",
    part_total: int = 1,
) -> Any:
    """A Vote as a node builds it before asking for a signature (no signature fields set)."""
    return types_pb2.Vote(
        type=vote_type,  # type: ignore[arg-type]
        height=height,
        round=round_,
        block_id=_block_id(block, part_total),
        timestamp=_timestamp(timestamp),
        validator_address=HARNESS_VALIDATOR_ADDRESS,
        validator_index=0,
        extension=extension,
    )


def make_proposal(
    height: int,
    round_: int = 0,
    block: bytes | str = b"block",
    *,
    pol_round: int = -1,
    timestamp: tuple[int, int] | None = None,
    part_total: int = 1,
) -> Any:
    """A Proposal as a node builds it before asking for a signature."""
    return types_pb2.Proposal(
        type=PROPOSAL,  # type: ignore[arg-type]
        height=height,
        round=round_,
        pol_round=pol_round,
        block_id=_block_id(block, part_total),
        timestamp=_timestamp(timestamp),
    )


def parse_listen_addr(addr: str) -> tuple[str, Any]:
    """``tcp://host:port`` (or bare ``host:port``, as CometBFT's ProtocolAndAddress reads it) or ``unix://path``.

    Returns ``("tcp", (host, port))`` or ``("unix", Path)``; ListenerError (exit code 4, as a failed net.Listen
    in tm-signer-harness) for anything else.
    """
    if addr.startswith("unix://"):
        path = addr[len("unix://") :]
        if not path:
            raise ListenerError(f"{addr!r}: no socket path", EXIT_CREATE_LISTENER)
        return "unix", Path(path)
    if "://" in addr and not addr.startswith("tcp://"):
        scheme = addr.split("://", 1)[0]
        raise ListenerError(f"{addr!r}: unsupported protocol {scheme!r} (use tcp:// or unix://)", EXIT_CREATE_LISTENER)
    rest = addr.removeprefix("tcp://")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenerError(f"{addr!r}: expected tcp://host:port or unix://path", EXIT_CREATE_LISTENER)
    # An empty host listens on every interface, as Go's net.Listen("tcp", ":port") does.
    return "tcp", (host or "0.0.0.0", int(port))


class SignerLink:
    """One accepted signer connection: send a request, wait for its response."""

    def __init__(self, stream: Any, dialect: Dialect, chain_id: str, *, timeout: float) -> None:
        self.stream = stream
        self.sock: socket.socket = stream.sock
        self.dialect = dialect
        self.chain_id = chain_id
        #: Seconds a response may take (tm-signer-harness: 3 s read/write deadline).
        self.timeout = timeout
        self.reader = MessageReader(MAX_RESPONSE_BYTES)
        self._pending: list[bytes] = []
        self._timeout_set = -1.0  # none set yet

    def send_raw(self, data: bytes) -> None:
        """Bytes on the stream as they are (for hostile-input tests)."""
        try:
            self.stream.send(data)
        except (OSError, ConnectionLost) as exc:
            raise LinkClosed(f"cannot write to the signer: {exc}") from None

    def recv_body(self, timeout: float | None = None) -> bytes:
        """The next complete message body from the signer."""
        wait = self.timeout if timeout is None else timeout
        while not self._pending:
            try:
                if wait != self._timeout_set:  # a syscall: only when the value changes
                    # The kernel's timeouts, not CPython's (which polls before every recv and send), so the
                    # simulated node adds no system calls of its own to the latency it measures.
                    set_kernel_timeouts(self.sock, wait)
                    self._timeout_set = wait
                data = self.stream.recv()
            except (TimeoutError, CoreLinkTimeout):
                raise LinkTimeout(f"the signer did not answer within {wait:g} s") from None
            except (OSError, ConnectionLost) as exc:
                raise LinkClosed(f"cannot read from the signer: {exc}") from None
            if not data:
                self.reader.eof()  # DecodeError if the signer hung up in the middle of a message
                raise LinkClosed("the signer closed the connection")
            self._pending.extend(self.reader.feed(data))
        return self._pending.pop(0)

    def request(self, req: Any, timeout: float | None = None) -> Any:
        """Send one request and return the decoded response (ProtocolError for anything that went wrong)."""
        self.send_raw(codec.delimit(codec.encode_request(self.dialect, req)))
        return codec.decode_response(self.dialect, self.recv_body(timeout))

    def pubkey(self) -> Any:
        return self.request(codec.PubKeyRequest(chain_id=self.chain_id))

    def ping(self) -> Any:
        return self.request(codec.PingRequest())

    def sign_vote(self, vote: Any, *, chain_id: str | None = None, skip_extension_signing: bool = False) -> Any:
        chain_id = self.chain_id if chain_id is None else chain_id
        return self.request(codec.SignVoteRequest(vote, chain_id, skip_extension_signing))

    def sign_proposal(self, proposal: Any) -> Any:
        return self.request(codec.SignProposalRequest(proposal, self.chain_id))

    def close(self) -> None:
        self.stream.close()  # closes the socket too


@dataclass
class ValidatorSimulator:
    """Listens like a node's privval listener; ``accept`` returns a ``SignerLink``."""

    addr: str = "tcp://127.0.0.1:0"
    chain_id: str = "test-chain"
    dialect: Dialect = Dialect.V0_38
    handshake_timeout: float = 5.0
    #: Response deadline given to each accepted link.
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        # A fresh identity per listener, as the node's privval listener does at every start (docs/protocol.md §1.7).
        self.identity = SigningKey.generate()
        self._sock: socket.socket | None = None
        self._unix_path: Path | None = None

    def listen(self) -> str:
        """Bind and listen; the address signers should dial (with the real port), or ListenerError (exit code 4)."""
        kind, where = parse_listen_addr(self.addr)
        try:
            if kind == "unix":
                _remove_stale_socket(where)
                self._sock = socket.create_server(str(where), family=socket.AF_UNIX, backlog=16)
                self._unix_path = where
                return f"unix://{where}"
            host, port = where
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self._sock = socket.create_server(sockaddr, family=family, backlog=16)  # SO_REUSEADDR set
        except OSError as exc:
            raise ListenerError(f"cannot listen on {self.addr}: {exc.strerror or exc}", EXIT_CREATE_LISTENER) from None
        bound_host, bound_port = self._sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"tcp://{shown}:{bound_port}"

    def accept(self, timeout: float = 10.0) -> SignerLink:
        """Wait for the signer to dial in, then run the handshake (TCP) and return the link.

        AcceptTimeout when nobody dialled in time; HandshakeError/LinkClosed when a connection came but failed
        the handshake (the caller may wait for the next one); ListenerError (exit code 5) if accepting failed.
        """
        assert self._sock is not None, "listen() first"
        try:
            self._sock.settimeout(timeout)
            conn, _ = self._sock.accept()
        except TimeoutError:
            raise AcceptTimeout(f"no signer connected within {timeout:g} s") from None
        except OSError as exc:
            raise ListenerError(f"accepting a connection failed: {exc.strerror or exc}", EXIT_START_LISTENER) from None
        if self._unix_path is not None:
            return SignerLink(BlockingPlainStream(conn), self.dialect, self.chain_id, timeout=self.request_timeout)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = secret_connection_sync(conn, self.identity, timeout=self.handshake_timeout)
        except OSError as exc:
            conn.close()
            raise LinkClosed(f"the connection failed during the handshake: {exc.strerror or exc}") from None
        except ProtocolError:
            conn.close()
            raise
        return SignerLink(stream, self.dialect, self.chain_id, timeout=self.request_timeout)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by an earlier run (tm-signer-harness removes whatever is there; we refuse to delete
    anything that is not a socket, so a typo in --addr cannot destroy a file)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{path} exists and is not a socket; refusing to replace it", EXIT_CREATE_LISTENER)
    path.unlink()
