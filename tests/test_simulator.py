"""The validator simulator: listening, accepting, and every way a link can fail, mapped into the pykms tree."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from pykms.errors import DecodeError, HandshakeError, ProtocolError
from pykms.harness.simulator import (
    AcceptTimeout,
    LinkClosed,
    LinkTimeout,
    ListenerError,
    ValidatorSimulator,
    make_proposal,
    make_vote,
    parse_listen_addr,
)
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.broken_signers import FIXTURE_PUB, FIXTURE_SEED, TestSigner


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("tcp://127.0.0.1:26659", ("tcp", ("127.0.0.1", 26659))),
        ("127.0.0.1:0", ("tcp", ("127.0.0.1", 0))),  # no scheme is tcp, as CometBFT's ProtocolAndAddress
        ("tcp://[::1]:5", ("tcp", ("::1", 5))),
        ("tcp://:7", ("tcp", ("0.0.0.0", 7))),
        ("unix:///run/pv.sock", ("unix", Path("/run/pv.sock"))),
    ],
)
def test_parse_listen_addr(addr: str, expected: tuple[str, object]) -> None:
    assert parse_listen_addr(addr) == expected


@pytest.mark.parametrize("addr", ["udp://1.2.3.4:5", "tcp://host", "tcp://h:99999", "unix://", "tcp://h:x"])
def test_parse_listen_addr_refuses(addr: str) -> None:
    with pytest.raises(ListenerError) as info:
        parse_listen_addr(addr)
    assert info.value.exit_code == 4


def test_listen_reports_the_real_port_and_accept_times_out() -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0")
    try:
        addr = sim.listen()
        assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0")
        with pytest.raises(AcceptTimeout) as info:
            sim.accept(timeout=0.05)
        # callers may wait in a loop on TimeoutError, or treat it as a ProtocolError
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, ProtocolError)
    finally:
        sim.close()


def test_stale_unix_socket_is_replaced_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "pv.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    sim = ValidatorSimulator(f"unix://{path}")
    assert sim.listen() == f"unix://{path}"
    sim.close()
    assert not path.exists()


def test_round_trip_over_secret_connection_and_unix(tmp_path: Path) -> None:
    for addr in ("tcp://127.0.0.1:0", f"unix://{tmp_path}/s.sock"):
        sim = ValidatorSimulator(addr, chain_id="c1", dialect=Dialect.V1_0)
        signer = TestSigner(sim.listen(), FIXTURE_SEED, dialect=Dialect.V1_0).start()
        try:
            link = sim.accept(timeout=5)
            if addr.startswith("tcp"):
                assert link.stream.remote_pubkey == bytes(signer.identity.verify_key)  # the SecretConnection peer
            assert link.pubkey().pub_key == FIXTURE_PUB
            assert isinstance(link.ping(), codec.PingResponse)
            vote = make_vote(5, 0, 2, b"x", extension=b"e")
            resp = link.sign_vote(vote)
            assert resp.error is None and len(resp.vote.signature) == 64
            assert signer.requests[-1].vote == vote and signer.requests[-1].chain_id == "c1"
            link.close()
        finally:
            signer.stop()
            sim.close()


def test_handshake_garbage_is_a_handshake_error() -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0")
    signer = TestSigner(sim.listen(), FIXTURE_SEED, garbage_handshake=True).start()
    try:
        with pytest.raises(HandshakeError):
            sim.accept(timeout=5)
    finally:
        signer.stop()
        sim.close()


def _raw_peer(tmp_path: Path, behaviour: object) -> tuple[ValidatorSimulator, threading.Thread]:
    """A unix-socket 'signer' that runs ``behaviour(sock)`` after connecting."""
    sim = ValidatorSimulator(f"unix://{tmp_path}/raw.sock")
    addr = sim.listen()

    def run() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(addr[len("unix://") :])
            behaviour(sock)  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sim, thread


def test_silent_signer_is_a_link_timeout(tmp_path: Path) -> None:
    done = threading.Event()
    sim, thread = _raw_peer(tmp_path, lambda sock: done.wait(5))
    try:
        link = sim.accept(timeout=5)
        link.timeout = 0.1
        with pytest.raises(LinkTimeout) as info:
            link.ping()
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, LinkClosed)
    finally:
        done.set()
        thread.join()
        sim.close()


def test_hang_up_is_link_closed_and_a_cut_message_a_decode_error(tmp_path: Path) -> None:
    def answer_then_cut(sock: socket.socket) -> None:
        sock.recv(100)
        sock.sendall(codec.delimit(codec.PING_RESPONSE))
        sock.recv(100)
        sock.sendall(b"\x20\x01")  # a 32-byte body announced, one byte sent, then the peer is gone

    sim, thread = _raw_peer(tmp_path, answer_then_cut)
    try:
        link = sim.accept(timeout=5)
        assert isinstance(link.ping(), codec.PingResponse)
        with pytest.raises(DecodeError):
            link.ping()
    finally:
        thread.join()
        sim.close()

    sim, thread = _raw_peer(tmp_path, lambda sock: sock.recv(100))
    try:
        link = sim.accept(timeout=5)
        with pytest.raises(LinkClosed, match="closed the connection"):
            link.ping()
    finally:
        thread.join()
        sim.close()


def test_made_messages_are_complete_and_carry_what_was_asked() -> None:
    vote = make_vote(7, 2, 1, b"blk", timestamp=(10, 20), part_total=3)
    assert (vote.height, vote.round, vote.type) == (7, 2, 1)
    assert (vote.timestamp.seconds, vote.timestamp.nanos) == (10, 20)
    assert len(vote.block_id.hash) == 32 and vote.block_id.part_set_header.total == 3
    nil = make_vote(7, 2, 2, b"")
    assert not nil.block_id.hash and not nil.block_id.part_set_header.total
    assert vote_sign_bytes("c", vote) != vote_sign_bytes("c", make_vote(7, 2, 1, b"blk", timestamp=(10, 21)))
    prop = make_proposal(9, 1, b"p", pol_round=0)
    assert (prop.height, prop.round, prop.pol_round, prop.type) == (9, 1, 0, 32)


def test_a_closed_link_raises_link_closed_not_oserror(tmp_path: Path) -> None:
    done = threading.Event()
    sim, thread = _raw_peer(tmp_path, lambda sock: done.wait(5))
    try:
        link = sim.accept(timeout=5)
        link.close()
        with pytest.raises(LinkClosed):
            link.ping()
        with pytest.raises(LinkClosed):
            link.recv_body()
    finally:
        done.set()
        thread.join()
        sim.close()
