"""Small remote signers for the harness tests: one honest, the others broken on purpose.

Each is a thread that dials the harness over a real socket (TCP with pykms's SecretConnection, or a unix socket),
reads privval requests with pykms's codec and answers them, re-dialling when the link drops, as a signer in
production does. What each one gets wrong is the only thing that differs from the honest one:

- ``wrong_key``: signs with a key other than the one in priv_validator_key.json (and reports that key);
- ``alter_timestamp``: signs, and returns, a timestamp one second later than the one requested;
- ``no_guard``: signs whatever it is asked, conflicting votes and SignBytes included (a double signer);
- ``refuse_pubkey``: answers the public-key request with a RemoteSignerError;
- ``stall_on``: never answers one kind of request;
- ``garbage_handshake``: connects but speaks no SecretConnection;
- a signer that never connects is simply none of these: the test starts no thread.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nacl.signing import SigningKey

from pykms.errors import KmsError, LinkTimeout
from pykms.privval import codec
from pykms.privval.codec import Dialect, MessageReader
from pykms.privval.signbytes import (
    canonical_view,
    proposal_sign_bytes,
    step_of,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from pykms.proto.cometbft.privval.v1 import types_pb2 as v1_privval
from pykms.proto.tendermint.types import types_pb2
from pykms.secretconn.sync import secret_connection_sync

__all__ = [
    "FIXTURE_CHAIN_ID",
    "FIXTURE_KEY_JSON",
    "FIXTURE_PUB",
    "FIXTURE_SEED",
    "HarnessProcess",
    "TestSigner",
    "run_harness_against",
    "wait_until",
    "write_tmhome",
]


@dataclass
class _Last:
    height: int = 0
    round: int = 0
    step: int = 0
    sign_bytes: bytes = b""
    signature: bytes = b""
    timestamp: tuple[int, int] = (0, 0)


@dataclass
class TestSigner:
    """A dialling signer; ``start()`` it, ``stop()`` it. The flags make it broken."""

    __test__ = False  # not a pytest test class

    addr: str
    seed: bytes
    dialect: Dialect = Dialect.V0_38
    #: The chain it serves; requests for another are refused (None: signs for any chain id it is given).
    chain_id: str | None = None
    wrong_key: bool = False
    alter_timestamp: bool = False
    no_guard: bool = False
    refuse_pubkey: bool = False
    stall_on: str | None = None  # "pubkey" | "proposal" | "vote"
    garbage_handshake: bool = False
    #: Stop dialling after this many connections (a signer that does not come back after a drop).
    max_connections: int | None = None
    #: On a timestamp-only repeat, sign the new timestamp as tmkms does instead of FilePV's stored signature.
    resign_new_timestamp: bool = False
    #: Answer PubKeyRequest in this dialect's shape (tmkms v0.15 sends the v0.34 shape to v1.0 nodes).
    pubkey_dialect: Dialect | None = None
    #: Refuse regressions and wrong chain ids by closing the link, as tmkms does (src/client.rs).
    drop_on_refusal: bool = False
    #: Every request received, in order (for tests that look at what the harness asked).
    requests: list[Any] = field(default_factory=list)
    connections: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = SigningKey(self.seed) if not self.wrong_key else SigningKey.generate()
        self.identity = SigningKey.generate()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="test-signer", daemon=True)
        self._last = _Last()

    @property
    def pub(self) -> bytes:
        return bytes(self.key.verify_key)

    def start(self) -> TestSigner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    # Connection ----------------------------------------------------------------------------------------------

    def _dial(self) -> tuple[socket.socket, Any]:
        if self.addr.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(self.addr[len("unix://") :])
            self._sock = sock
            return sock, _Plain(sock)
        host, _, port = self.addr.removeprefix("tcp://").rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=2)
        self._sock = sock
        if self.garbage_handshake:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 64)
            return sock, None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, secret_connection_sync(sock, self.identity, timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.max_connections is not None and self.connections >= self.max_connections:
                self._stop.wait(0.05)
                continue
            try:
                sock, stream = self._dial()
            except (OSError, KmsError):
                self._stop.wait(0.05)
                continue
            self.connections += 1
            try:
                if stream is None:  # garbage_handshake: hold the line until the harness gives up on it
                    sock.settimeout(0.5)
                    with contextlib.suppress(OSError):
                        while not self._stop.is_set() and sock.recv(4096):
                            pass
                else:
                    self._serve(sock, stream)
            except (OSError, KmsError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
                self._sock = None
            self._stop.wait(0.05)

    def _serve(self, sock: socket.socket, stream: Any) -> None:
        reader = MessageReader(codec.MAX_REQUEST_BYTES)
        sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = stream.recv()
            except LinkTimeout:
                continue
            if not data:
                return
            for body in reader.feed(data):
                request = codec.decode_request(self.dialect, body)
                self.requests.append(request)
                reply = self._answer(request)
                if reply is not None:
                    stream.send(codec.delimit(reply))

    # Answers ---------------------------------------------------------------------------------------------

    def _answer(self, request: Any) -> bytes | None:
        kind = {
            codec.PubKeyRequest: "pubkey",
            codec.SignProposalRequest: "proposal",
            codec.SignVoteRequest: "vote",
        }.get(type(request))
        if kind is not None and kind == self.stall_on:
            return None
        if isinstance(request, codec.PingRequest):
            return codec.PING_RESPONSE
        if isinstance(request, codec.PubKeyRequest):
            if self.refuse_pubkey:
                return codec.encode_error(self.dialect, request, 1, "no key for you")
            return codec.encode_pubkey_response(self.pubkey_dialect or self.dialect, self.pub)
        if isinstance(request, codec.SignBytesRequest):
            if not self.no_guard:
                return codec.encode_error(self.dialect, request, 0, "SignBytes refused")
            return sign_bytes_response(self.key.sign(request.value).signature)
        if isinstance(request, codec.SignVoteRequest | codec.SignProposalRequest):
            if self.chain_id is not None and request.chain_id != self.chain_id:
                if self.drop_on_refusal:
                    raise _Hangup("wrong chain id")
                return codec.encode_error(self.dialect, request, 0, f"wrong chain id {request.chain_id!r}")
            return self._sign(request)
        return None

    def _sign(self, request: codec.SignVoteRequest | codec.SignProposalRequest) -> bytes:
        is_vote = isinstance(request, codec.SignVoteRequest)
        msg: Any = request.vote if isinstance(request, codec.SignVoteRequest) else request.proposal
        if self.alter_timestamp:
            msg = with_timestamp(msg, (int(msg.timestamp.seconds) + 1, int(msg.timestamp.nanos)))
        sign_bytes = vote_sign_bytes(request.chain_id, msg) if is_vote else proposal_sign_bytes(request.chain_id, msg)
        height, round_, step = int(msg.height), int(msg.round), step_of(request)
        signature = self.key.sign(sign_bytes).signature
        reuse: bytes | None = None
        if not self.no_guard:
            refusal, reuse = self._guard(height, round_, step, sign_bytes)
            if refusal == "regression" and self.drop_on_refusal:
                raise _Hangup(refusal)
            if refusal:
                return codec.encode_error(self.dialect, request, 2, refusal)
        if reuse is not None:
            msg = with_timestamp(msg, self._last.timestamp)
            signature = reuse
        else:
            timestamp = (int(msg.timestamp.seconds), int(msg.timestamp.nanos))
            self._last = _Last(height, round_, step, sign_bytes, signature, timestamp)
        out = type(msg)()
        out.CopyFrom(msg)
        out.signature = signature
        if is_vote:
            assert isinstance(request, codec.SignVoteRequest)
            non_nil_precommit = out.type == 2 and bool(out.block_id.hash)
            if self.dialect.has_extensions and non_nil_precommit and not request.skip_extension_signing:
                out.extension_signature = self.key.sign(vote_extension_sign_bytes(request.chain_id, out)).signature
            return codec.encode_signed_vote(self.dialect, out)
        return codec.encode_signed_proposal(self.dialect, out)

    def _guard(self, height: int, round_: int, step: int, sign_bytes: bytes) -> tuple[str, bytes | None]:
        """FilePV's rules in a few lines: regressions refused, identical (or timestamp-only) repeats reuse."""
        last = self._last
        if (height, round_, step) < (last.height, last.round, last.step):
            return "regression", None
        if (height, round_, step) == (last.height, last.round, last.step) and last.sign_bytes:
            if sign_bytes == last.sign_bytes:
                return "", last.signature
            if (
                canonical_view(sign_bytes, step).without_timestamp
                == canonical_view(last.sign_bytes, step).without_timestamp
            ):
                return "", None if self.resign_new_timestamp else last.signature
            return "conflicting data", None
        return "", None


def sign_bytes_response(signature: bytes) -> bytes:
    """A CometBFT v1.0 SignBytesResponse carrying ``signature`` (pykms itself never answers one with a signature)."""
    msg = v1_privval.Message()
    msg.sign_bytes_response.signature = signature
    msg.sign_bytes_response.SetInParent()
    return msg.SerializeToString()


class _Hangup(KmsError):
    """Close the link instead of answering."""


class _Plain:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(65536)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# A TMHOME and a harness process for the tests ---------------------------------------------------------------

# cometbft tools/tm-signer-harness/internal/test_harness_test.go (commit 13c1ef3d42^): keyFileContents,
# stateFileContents and the chain id of genesisFileContents (tests/vectors/README.md V11 row 1).
FIXTURE_KEY_JSON = """{
	"address": "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",
	"pub_key": {
		"type": "tendermint/PubKeyEd25519",
		"value": "ZCsuTjaczEyon70nmKxwvwu+jqrbq5OH3yQjcK0SFxc="
		},
	"priv_key": {
		"type": "tendermint/PrivKeyEd25519",
		"value": "8O39AkQsoe1sBQwud/Kdul8lg8K9SFsql9aZvwXQSt1kKy5ONpzMTKifvSeYrHC/C76Oqturk4ffJCNwrRIXFw=="
	}
}"""
FIXTURE_STATE_JSON = '{\n\t"height": "0",\n\t"round": 0,\n\t"step": 0\n}'
FIXTURE_CHAIN_ID = "test-chain-0XwP5E"
FIXTURE_GENESIS_JSON = '{"genesis_time": "2019-01-15T11:56:34.8963Z", "chain_id": "test-chain-0XwP5E", "app_hash": ""}'
FIXTURE_PRIV = base64.b64decode(json.loads(FIXTURE_KEY_JSON)["priv_key"]["value"])
FIXTURE_SEED, FIXTURE_PUB = FIXTURE_PRIV[:32], FIXTURE_PRIV[32:]


def write_tmhome(
    home: Path,
    *,
    key: str | None = FIXTURE_KEY_JSON,
    state: str | None = FIXTURE_STATE_JSON,
    genesis: str | None = FIXTURE_GENESIS_JSON,
) -> Path:
    """$TMHOME as `cometbft init` lays it out; None leaves a file out."""
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "data").mkdir(parents=True, exist_ok=True)
    for rel, text in (
        ("config/priv_validator_key.json", key),
        ("data/priv_validator_state.json", state),
        ("config/genesis.json", genesis),
    ):
        if text is not None:
            (home / rel).write_text(text)
            (home / rel).chmod(0o600)
    return home


@dataclass
class HarnessProcess:
    """``python -m pykms.harness.signer_harness ARGS`` with its output; ``addr`` once it listens."""

    args: list[str]
    preexec_fn: Any = None
    listen_stream: str = "stdout"

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pykms.harness.signer_harness", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=self.preexec_fn,  # only to start the harness with SIGINT ignored
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.addr: str | None = None
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("listening on ") and self.addr is None:
                self.addr = line.split()[2]
                self._listening.set()
        self._listening.set()  # EOF: whoever waits learns that no address will come

    def wait_listening(self, timeout: float = 20.0) -> str:
        assert self._listening.wait(timeout), "the harness did not start listening"
        assert self.addr is not None, "\n".join(self.lines)
        return self.addr

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the harness did not exit:\n" + self.output) from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def run_harness_against(args: list[str], make_signer: Any = None, timeout: float = 60.0) -> tuple[int, str, Any]:
    """Start the harness, then the signer ``make_signer(addr)`` (if any) dialling it; (exit code, output, signer)."""
    harness = HarnessProcess(args)
    signer = None
    try:
        addr = harness.wait_listening()
        if make_signer is not None:
            signer = make_signer(addr).start()
        code = harness.wait(timeout)
    finally:
        if harness.proc.poll() is None:
            harness.proc.kill()
            harness.proc.wait()
        if signer is not None:
            signer.stop()
    return code, harness.output, signer


_M = TypeVar("_M", types_pb2.Vote, types_pb2.Proposal)


def with_timestamp(msg: _M, timestamp: tuple[int, int]) -> _M:
    """A copy of ``msg`` carrying ``timestamp`` (seconds, nanos)."""
    out = type(msg)()
    out.CopyFrom(msg)
    out.timestamp.seconds, out.timestamp.nanos = timestamp
    out.timestamp.SetInParent()
    return out
