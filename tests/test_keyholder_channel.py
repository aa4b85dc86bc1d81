"""Server and client of the key holder channel over real sockets and real processes.

The far side is tests/keyholder_peer.DictKeyHolder (a real PyNaCl key, a dict for state); under test are the
server (pykms.keyholder.server) and the client (pykms.keyholder.client.RemoteKeyHolder).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from pykms import errors
from pykms.keyholder import wire
from pykms.keyholder.client import RemoteKeyHolder
from pykms.keyholder.server import KeyHolderServer, listen_unix, peer_uid
from tests.keyholder_peer import DictKeyHolder

SEED = bytes(range(1, 33))
VERIFY = nacl.signing.SigningKey(SEED).verify_key


def height(h: int, tail: bytes = b"vote") -> bytes:
    return h.to_bytes(8, "big") + tail


class Served:
    def __init__(self, path: Path, allowed: set[int] | None = None) -> None:
        self.holder = DictKeyHolder(SEED)
        self.logs: list[tuple[str, dict[str, object]]] = []
        self.server = KeyHolderServer(self.holder, allowed_uids=allowed, log=lambda e, **k: self.logs.append((e, k)))
        self.listener = listen_unix(path, allowed_uids=allowed or ())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(self.listener,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    path = tmp_path / "kh" / "keyholder.sock"
    s = Served(path)
    yield s, path
    s.stop()


def test_round_trip_and_errors(served: tuple[Served, Path]) -> None:
    client = RemoteKeyHolder(served[1])
    assert client.chains()["chain-a"].public_key == bytes(VERIFY)
    assert client.health() == {"chain-a": "ok", "chain-b": "ok"}
    signed = client.sign("chain-a", height(5), b"ext")
    VERIFY.verify(height(5), signed.signature)
    VERIFY.verify(b"ext", signed.extension_signature)
    assert signed.fresh and signed.sign_s == 0.001
    assert client.sign("chain-a", height(5)).fresh is False
    with pytest.raises(errors.ConflictError) as conflict:
        client.sign("chain-a", height(5, b"other"))
    assert conflict.value.code == 2
    with pytest.raises(errors.RegressionError):
        client.sign("chain-a", height(4))
    with pytest.raises(errors.ChainIdMismatch):
        client.sign("chain-z", height(9))
    with pytest.raises(errors.ProviderError, match="see its log") as bug:
        client.sign("chain-a", b"BUG")
    assert "secret" not in str(bug.value)
    assert client.sign("chain-b", height(1)).fresh  # the link survived every refusal
    client.close()


def test_unix_socket_is_private_and_serves_threads_in_parallel(served: tuple[Served, Path]) -> None:
    _s, path = served
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    client = RemoteKeyHolder(path)
    results: dict[int, bytes] = {}

    def work(i: int) -> None:  # four threads per chain, all asking for the same height: one fresh, three reused
        results[i] = client.sign("chain-a" if i % 2 else "chain-b", height(100)).signature

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len({results[i] for i in range(1, 8, 2)}) == 1 and len({results[i] for i in range(0, 8, 2)}) == 1
    assert len(client._all) >= 2  # one connection per calling thread
    t0 = time.monotonic()  # a thread's second request reuses its open connection without waiting on it
    for h in range(200, 220):
        client.sign("chain-a", height(h))
    assert time.monotonic() - t0 < 5
    client.close()


def test_garbage_and_a_stalled_peer_do_not_stop_the_server(served: tuple[Served, Path]) -> None:
    s, path = served
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(str(path))
    stalled.sendall(struct.pack(">I", 100) + b"half")  # announces 100 bytes, sends 4, then never reads
    oversize = socket.socket(socket.AF_UNIX)
    oversize.connect(str(path))
    oversize.sendall(struct.pack(">I", wire.MAX_FRAME + 1))
    assert oversize.recv(10) == b""  # closed by the server
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(str(path))
    garbage.sendall(struct.pack(">I", 3) + b"\x42ab")
    assert garbage.recv(10) == b""
    answer_is_a_request = socket.socket(socket.AF_UNIX)
    answer_is_a_request.connect(str(path))
    answer_is_a_request.sendall(wire.frame(wire.HealthReply({})))
    assert answer_is_a_request.recv(10) == b""
    # a flood the peer never reads: the server's send blocks on that thread only
    flood = socket.socket(socket.AF_UNIX)
    flood.connect(str(path))
    for _ in range(50):
        flood.sendall(wire.frame(wire.ChainsRequest()))
    client = RemoteKeyHolder(path)
    started = time.monotonic()
    assert client.sign("chain-a", height(1)).fresh
    assert time.monotonic() - started < 5
    dropped = [k["reason"] for e, k in s.logs if e == "keyholder_peer_dropped"]
    assert len(dropped) == 3 and any("declares" in str(r) for r in dropped), s.logs
    for sock in (stalled, oversize, garbage, answer_is_a_request, flood):
        sock.close()
    client.close()


def test_listen_refuses_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.ConfigError, match="not a socket"):
        listen_unix(tmp_path / "file")


@pytest.mark.skipif(os.getuid() != 0, reason="setuid to another uid needs root")
def test_peer_of_another_uid_is_refused() -> None:
    top = Path(tempfile.mkdtemp())  # pytest's tmp_path is 0700 up the tree: nobody could not even try
    path = top / "kh" / "keyholder.sock"
    s = Served(path)
    os.chmod(path.parent, 0o755)  # let uid 65534 reach the socket file: SO_PEERCRED alone must refuse it
    os.chmod(path, 0o666)
    os.chmod(top, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, connect, report what happened
        os.close(read)
        code = b"?"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            sock.sendall(wire.frame(wire.SignRequest("chain-a", height(1))))
            code = b"closed" if sock.recv(100) == b"" else b"answered"
        except OSError as exc:
            code = type(exc).__name__.encode()
        finally:
            os.write(write, code)
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    outcome = os.read(read, 100)
    os.close(read)
    # The server closes the refused connection at once: before or after the child's write, whichever comes first.
    assert outcome in (b"closed", b"ConnectionResetError", b"BrokenPipeError"), outcome
    assert any(e == "keyholder_peer_refused" and k["uid"] == 65534 for e, k in s.logs)
    assert "chain-a" not in s.holder.state  # nothing signed
    # a server that allows that uid answers it
    s.server.allowed_uids = frozenset({0, 65534})
    client = RemoteKeyHolder(path)
    assert client.sign("chain-a", height(1)).fresh
    client.close()
    s.stop()
    shutil.rmtree(top)


def test_peer_uid_is_the_kernels_word() -> None:
    a, b = socket.socketpair()
    assert peer_uid(a) == os.getuid()
    a.close()
    b.close()


def _start_peer(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("keyholder_peer.py")), str(path), SEED.hex()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_server_killed_mid_request_gives_an_error_then_reconnects(tmp_path: Path) -> None:
    path = tmp_path / "kh" / "keyholder.sock"
    proc = _start_peer(path)
    client = RemoteKeyHolder(path, reconnect_s=20.0)
    assert client.sign("chain-a", height(1)).fresh
    outcome: list[object] = []

    def slow() -> None:
        try:
            outcome.append(client.sign("chain-a", b"SLOW" + height(2)))
        except BaseException as exc:  # the test inspects exactly what escaped
            outcome.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.TransientProviderError), outcome
    assert "mid-request" in str(outcome[0])
    # the next request (another thread, then this one) waits for a restarted key holder and is served
    restarted: list[subprocess.Popen[str]] = []
    threading.Timer(0.5, lambda: restarted.append(_start_peer(path))).start()
    t0 = time.monotonic()
    try:
        signed = client.sign("chain-b", height(7))
        print(f"reconnected after {time.monotonic() - t0:.2f} s")
        VERIFY.verify(height(7), signed.signature)
    finally:
        client.close()
        time.sleep(0.1 if restarted else 1.0)  # the timer may still be starting it
        for p in restarted:
            p.kill()
            p.wait()


def test_no_key_holder_is_a_project_error_within_the_bound(tmp_path: Path) -> None:
    client = RemoteKeyHolder(tmp_path / "absent.sock", reconnect_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(errors.TransientProviderError, match="unreachable"):
        client.sign("chain-a", height(1))
    assert time.monotonic() - t0 < 3
