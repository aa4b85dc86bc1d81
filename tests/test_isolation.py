"""Key isolation for real: the real LocalKeyHolder behind the real server, and a real ``pykms start`` split in two.

A compromised front is simulated by a raw socket that speaks the key holder's channel directly; it gets exactly
the refusals the in-process key holder gives, and the state and the audit log show it. The front's memory is read
through /proc and holds no form of the consensus seed (the key holder's, as a control, does). SIGKILL of either
process costs signatures, never safety, and both come back without an operator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pykms import errors
from pykms.config import load_config
from pykms.guard.store import read_state_file
from pykms.harness.demo import write_demo_home
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_vote
from pykms.keyholder import wire
from pykms.keyholder.api import Signed
from pykms.keyholder.local import LocalKeyHolder
from pykms.keyholder.server import KeyHolderServer, listen_unix, recv_frame, send_frame
from pykms.privval.signbytes import vote_extension_sign_bytes, vote_sign_bytes
from tests.e2e import KmsProcess, accept, register_log, set_isolation, verify
from tests.memscan import scan_process
from tests.secret_forms import harvest_key_files

CHAIN = "iso-chain"
TS = (1_700_000_000, 0)


def vote(height: int, step: int = PREVOTE, block: str = "b", chain: str = CHAIN) -> bytes:
    return vote_sign_bytes(chain, make_vote(height, 0, step, block, timestamp=TS))


def extension(height: int, round_: int = 0, chain: str = CHAIN) -> bytes:
    return vote_extension_sign_bytes(chain, make_vote(height, round_, PRECOMMIT, "b", extension=b"ext"))


def _home(root: Path) -> Path:
    config = write_demo_home(root, "tcp://127.0.0.1:1", chain_id=CHAIN)
    config.write_text(
        config.read_text().replace(
            "[[providers.softsign]]", f'audit_log = "{root / "audit.log"}"\n\n[[providers.softsign]]', 1
        )
    )
    return config


def _state(root: Path) -> bytes:
    return (root / "state" / f"{CHAIN}_priv_validator_state.json").read_bytes()


def _audit(root: Path) -> list[dict[str, object]]:
    path = root / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclass
class Forged:
    name: str
    chain_id: str
    sign_bytes: bytes
    extension_sign_bytes: bytes = b""


#: What a compromised front could send once height 10's precommit for block "b" is signed.
FORGED = [
    Forged("conflicting precommit", CHAIN, vote(10, PRECOMMIT, "other-block")),
    Forged("regression", CHAIN, vote(9, PRECOMMIT)),
    Forged("extension for another height", CHAIN, vote(11, PRECOMMIT), extension(12)),
    Forged("extension for another round", CHAIN, vote(11, PRECOMMIT), extension(11, round_=1)),
    Forged("extension of another chain", CHAIN, vote(11, PRECOMMIT), extension(11, chain="evil-chain")),
    Forged("extension with a prevote", CHAIN, vote(11, PREVOTE), extension(11)),
    Forged("sign bytes of another chain", CHAIN, vote(11, PRECOMMIT, chain="evil-chain")),
    Forged("a chain not served", "evil-chain", vote(11, PRECOMMIT, chain="evil-chain")),
    Forged("garbage sign bytes", CHAIN, b"\x00\xff" * 40),
    Forged("extension bytes as the vote", CHAIN, extension(11)),
]


class ServedHolder:
    """The real LocalKeyHolder of a real home, served by the real server on a real UNIX socket."""

    def __init__(self, root: Path) -> None:
        self.holder = LocalKeyHolder(load_config(_home(root)))
        self.path = root / "run" / "keyholder.sock"
        self.logs: list[tuple[str, dict[str, object]]] = []
        self.server = KeyHolderServer(self.holder, log=lambda event, **kw: self.logs.append((event, kw)))
        self.listener = listen_unix(self.path)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(self.listener,), daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.path))
        return sock

    def close(self) -> None:
        self.server.stop()
        self.thread.join(5)
        self.listener.close()
        self.holder.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedHolder]:
    s = ServedHolder(tmp_path / "remote")
    yield s
    s.close()


def _ask(sock: socket.socket, forged: Forged) -> wire.Message | None:
    send_frame(sock, wire.SignRequest(forged.chain_id, forged.sign_bytes, forged.extension_sign_bytes))
    return recv_frame(sock)


def test_a_compromised_front_is_refused_as_the_in_process_key_holder_refuses(
    served: ServedHolder, tmp_path: Path
) -> None:
    direct = LocalKeyHolder(load_config(_home(tmp_path / "direct")))
    try:
        sock = served.connect()
        first = _ask(sock, Forged("setup", CHAIN, vote(10, PRECOMMIT), extension(10)))
        assert isinstance(first, Signed)
        direct.sign(CHAIN, vote(10, PRECOMMIT), extension(10))
        state_before = _state(tmp_path / "remote")
        audited_before = len(_audit(tmp_path / "remote"))
        for forged in FORGED:
            reply = _ask(sock, forged)
            assert isinstance(reply, wire.ErrorReply), f"{forged.name}: {reply!r}"
            with pytest.raises(errors.KmsError) as expected:
                direct.sign(forged.chain_id, forged.sign_bytes, forged.extension_sign_bytes)
            want = wire.error_reply(expected.value)
            assert (reply.name, reply.code) == (want.name, want.code), forged.name
            assert isinstance(wire.raise_error(reply), errors.SigningRefused | errors.InvalidRequest), forged.name
        # A frame that is no message at all: that connection is closed, the key holder keeps serving.
        sock.sendall(b"\x00\x00\x00\x05\x7fjunk")
        assert sock.recv(1) == b""
        sock.close()
        assert [event for event, _ in served.logs] == ["keyholder_peer_dropped"]
        assert _state(tmp_path / "remote") == state_before  # not a byte of the state moved
        refused = [r for r in _audit(tmp_path / "remote")[audited_before:] if r.get("outcome") == "refused"]
        direct_refused = [r for r in _audit(tmp_path / "direct") if r.get("outcome") == "refused"]
        # Every refusal the key holder decided is on its audit log, the same as in one process.
        assert len(refused) == len(direct_refused) >= 6
        again = served.connect()
        ok = _ask(again, Forged("next height", CHAIN, vote(11, PREVOTE)))
        assert isinstance(ok, Signed) and ok.fresh
        again.close()
    finally:
        direct.close()


# A real ``pykms start`` with isolation = "process" ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _split_pids(kms: KmsProcess, timeout: float = 20.0) -> tuple[int, int]:
    """(key holder pid, front pid) under the supervisor."""
    assert kms.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = front = 0
        for child in _children(kms.proc.pid):
            argv = _cmdline(child)
            if "keyholder" in argv and "serve" in argv:
                holder = child
            elif "start" in argv:
                front = child
        if holder and front:
            return holder, front
        time.sleep(0.1)
    raise AssertionError(f"no key holder and front under the supervisor:\n{kms.log_text()}")


@pytest.fixture
def split(tmp_path: Path) -> Iterator[tuple[KmsProcess, ValidatorSimulator, Path]]:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    addr = sim.listen()
    home = tmp_path / "kms"
    config = write_demo_home(home, addr, chain_id=CHAIN)
    config.write_text(
        config.read_text().replace(
            "[[providers.softsign]]", f'audit_log = "{home / "audit.log"}"\n\n[[providers.softsign]]', 1
        )
    )
    set_isolation(config, "process")
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        yield kms, sim, home
    finally:
        kms.stop()
        sim.close()


def _consensus_seeds(home: Path) -> list[bytes]:
    secrets = home / "secrets"
    scratch = home / "consensus-only"
    scratch.mkdir()
    shutil.copy(secrets / f"{CHAIN}-consensus.key", scratch / "consensus.key")
    try:
        return harvest_key_files(scratch)
    finally:
        shutil.rmtree(scratch)


@pytest.mark.skipif(os.getuid() != 0, reason="reading the non-dumpable key holder's memory (the control) needs root")
def test_the_fronts_memory_holds_no_key(split: tuple[KmsProcess, ValidatorSimulator, Path]) -> None:
    kms, sim, home = split
    link = accept(sim, kms)
    pub = bytes(link.pubkey().pub_key)
    for height in range(1, 4):  # the front has served real signatures before it is read
        resp = link.sign_vote(make_vote(height, 0, PRECOMMIT, f"b{height}", extension=b"ext"))
        assert resp.error is None and verify(pub, vote_sign_bytes(CHAIN, resp.vote), bytes(resp.vote.signature))
    holder, front = _split_pids(kms)
    seeds = _consensus_seeds(home)
    assert len(seeds) == 1
    front_scan = scan_process(front, seeds)
    holder_scan = scan_process(holder, seeds)
    print(f"front: {front_scan.bytes_read} bytes read, key holder: {holder_scan.bytes_read} bytes read")
    assert front_scan.bytes_read > 1 << 20 and front_scan.hits == []
    assert holder_scan.hits, "the scan must find the seed where it is (the control)"
    assert Path(f"/proc/{holder}/status").read_text().count("TracerPid:\t0") == 1
    link.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_sigkill_of_either_process_costs_signatures_never_safety(
    split: tuple[KmsProcess, ValidatorSimulator, Path],
) -> None:
    kms, sim, home = split
    link = accept(sim, kms)
    pub = bytes(link.pubkey().pub_key)
    released: dict[int, bytes] = {}
    errors_seen = 0
    height = 0
    for _ in range(6):
        holder, front = _split_pids(kms)
        killer = threading.Timer(0.002, os.kill, (holder, signal.SIGKILL))
        killer.start()
        for _ in range(20):  # the kill lands in the middle of one of these
            height += 1
            started = time.monotonic()
            resp = link.sign_vote(make_vote(height, 0, PRECOMMIT, f"b{height}"))
            assert time.monotonic() - started < 8, "the node was left hanging"
            if resp.error is None:
                assert verify(pub, vote_sign_bytes(CHAIN, resp.vote), bytes(resp.vote.signature))
                released[height] = bytes(resp.vote.signature)
            else:
                errors_seen += 1
        killer.join()
        _wait_for(lambda holder=holder: _split_pids(kms)[0] != holder)  # restarted by the supervisor
    assert errors_seen, "no request met a dead key holder"
    # Signing resumes by itself once the key holder is back.
    _wait_for(lambda: link.sign_vote(make_vote(height + 1, 0, PRECOMMIT, "x")).error is None)
    height += 1
    # SIGKILL of the front: the supervisor starts a new one, which dials the node again.
    _holder, front = _split_pids(kms)
    os.kill(front, signal.SIGKILL)
    link = accept(sim, kms, timeout=30)
    height += 1
    resp = link.sign_vote(make_vote(height, 0, PRECOMMIT, f"b{height}"))
    assert resp.error is None, resp.error
    released[height] = bytes(resp.vote.signature)
    link.close()
    kms.stop()
    # Every signature the node got is durable: the audit log holds it, and the state is at or past it.
    records = {r["height"]: r for r in _audit(home) if r.get("outcome") == "signed"}
    for h in released:
        assert int(str(records[h]["height"])) == h, f"height {h} released without its durable record"
    _fmt, state = read_state_file(home / "state" / f"{CHAIN}_priv_validator_state.json")  # slots or JSON
    assert state.height >= max(released)
    assert max(int(str(h)) for h in records) == state.height  # state and audit log agree on the last one


def test_sigkill_of_the_supervisor_takes_both_children(split: tuple[KmsProcess, ValidatorSimulator, Path]) -> None:
    kms, sim, _home = split
    accept(sim, kms).close()
    holder, front = _split_pids(kms)
    kms.kill()  # no orphaned key holder may keep the keys, nor a front keep dialling
    _wait_for(lambda: not Path(f"/proc/{holder}").exists() and not Path(f"/proc/{front}").exists(), timeout=10)


def test_an_external_key_holder_serves_the_front_and_is_waited_for(tmp_path: Path) -> None:
    """``[keyholder] addr``: a key holder run on its own (``pykms keyholder serve``), down and up again."""
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    home = tmp_path / "kms"
    config = write_demo_home(home, sim.listen(), chain_id=CHAIN)
    sock = tmp_path / "kh" / "keyholder.sock"
    config.write_text(config.read_text() + f'\n[keyholder]\naddr = "unix://{sock}"\n')
    serve = [sys.executable, "-m", "pykms.cli.main", "keyholder", "serve", "-c", str(config)]
    serve += ["--listen", f"unix://{sock}"]
    register_log(tmp_path / "keyholder.log")
    log = open(tmp_path / "keyholder.log", "ab")
    holder = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms, timeout=40)
        pub = bytes(link.pubkey().pub_key)
        resp = link.sign_vote(make_vote(1, 0, PRECOMMIT, "b1"))
        assert resp.error is None and verify(pub, vote_sign_bytes(CHAIN, resp.vote), bytes(resp.vote.signature))
        holder.kill()
        holder.wait()
        started = time.monotonic()
        down = link.sign_vote(make_vote(2, 0, PRECOMMIT, "b2"))
        assert down.error is not None and time.monotonic() - started < 5  # "unable to sign", at once
        holder = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: link.sign_vote(make_vote(3, 0, PRECOMMIT, "b3")).error is None)
        link.close()
    finally:
        kms.stop()
        holder.terminate()
        holder.wait()
        log.close()
        sim.close()
