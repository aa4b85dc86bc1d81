"""Threshold signing end to end: three real ``pykms cosigner start`` processes (2 of 3), a real ``pykms start``.

The coordinator in the last tests is the test itself holding the signer's identity key: a compromised signer
host, the threat the cosigners' own guards and single-use nonces exist for.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import VerifyKey

from pykms.cli.main import main as pykms_main
from pykms.errors import ConnectionLost, LinkTimeout, ThresholdError, TransientProviderError
from pykms.harness.signer_harness import EXIT
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.threshold import CosignerClient
from pykms.secretconn.identity import load_identity
from pykms.threshold import frost
from pykms.threshold.config import ThresholdCosignerAddr
from pykms.threshold.keys import load_group_file
from tests.broken_signers import FIXTURE_CHAIN_ID, HarnessProcess, write_tmhome
from tests.e2e import SECRETS, KmsProcess, accept, register_log, verify, write_home
from tests.threshold_cosigners import CosignerSet, start_cosigner, use_threshold, write_cosigner_set

CHAIN = "test-chain"


@dataclass
class Cosigners:
    set: CosignerSet
    logs: list[Path]
    procs: list[subprocess.Popen[bytes]]

    def start(self, index: int) -> None:
        offset = self.logs[index].stat().st_size if self.logs[index].exists() else 0
        self.procs[index] = start_cosigner(self.set.configs[index], self.logs[index])
        deadline = time.monotonic() + 30
        while "cosigner_listening" not in self.logs[index].read_text(errors="replace")[offset:]:
            if self.procs[index].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cosigner {index + 1} did not start:\n{self.logs[index].read_text()}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait()

    def alive(self, index: int) -> bool:
        return self.procs[index].poll() is None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)


@contextlib.contextmanager
def cosigners_for(tmp_path: Path, config: Path, key_file: Path, chain_id: str) -> Iterator[Cosigners]:
    """Split ``key_file`` 2 of 3, start the three cosigners, and point ``config`` at them."""
    identity = config.parent / "secrets" / "kms-identity.key"
    cset = write_cosigner_set(tmp_path / "threshold", key_file, identity, chain_id=chain_id)
    config.write_text(use_threshold(config.read_text(), cset))
    for cosigner_config in cset.configs:  # the session-end scan looks for the shares in every log
        share = json.loads((cosigner_config.parent / "share.json").read_text())
        SECRETS.append(bytes.fromhex(share["signing_share"]))
    logs = [tmp_path / f"cosigner{i + 1}.log" for i in range(3)]
    for log in logs:
        register_log(log)
    group = Cosigners(cset, logs, [subprocess.Popen(["true"]) for _ in range(3)])
    try:
        for i in range(3):
            group.start(i)
        yield group
    finally:
        group.stop()


# ---- the signer harness and the simulator through pykms start ---------------------------------------------------


def test_harness_full_suite_through_two_of_three_cosigners(tmp_path: Path) -> None:
    tmhome = write_tmhome(tmp_path / "tmhome")
    harness = HarnessProcess(["run", "--addr", "tcp://127.0.0.1:0", "--tmhome", str(tmhome), "--suite", "full",
                              "--protocol-version", "v0.38", "--accept-retries", "300"])  # fmt: skip
    addr = harness.wait_listening()
    config = write_home(tmp_path / "kms", [addr], chain_id=FIXTURE_CHAIN_ID, protocol_version="v0.38")
    key = tmp_path / "kms" / "secrets" / f"{FIXTURE_CHAIN_ID}-consensus.key"
    key.unlink()
    assert pykms_main(["softsign", "import", str(tmhome / "config" / "priv_validator_key.json"), str(key)]) == 0
    with cosigners_for(tmp_path, config, key, FIXTURE_CHAIN_ID):
        key.unlink()  # no whole key anywhere near the signer once the shares exist
        kms = KmsProcess(config, tmp_path / "pykms.log")
        kms.start()
        try:
            code = harness.wait(120)
            out = f"{harness.output}\n--- pykms log ---\n{kms.log_text()}"
        finally:
            assert kms.stop() == 0, kms.log_text()
    assert code == EXIT["ok"], out
    assert "[FAIL]" not in out and "SUCCESS" in out


def test_simulator_keeps_signing_while_a_cosigner_is_killed_at_random(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    key = tmp_path / "kms" / "secrets" / f"{CHAIN}-consensus.key"
    with cosigners_for(tmp_path, config, key, CHAIN) as group:
        kms = KmsProcess(config, tmp_path / "pykms.log")
        kms.start()
        stop = threading.Event()
        kills = [0]
        rng = random.Random(21)

        def chaos() -> None:
            while not stop.is_set():
                time.sleep(rng.uniform(0.05, 0.4))
                victim = rng.randrange(3)
                group.kill(victim)
                kills[0] += 1
                time.sleep(rng.uniform(0.05, 0.5))
                group.start(victim)

        try:
            link = accept(sim, kms)
            pub = bytes(link.pubkey().pub_key)
            assert pub == load_group_file(group.set.group_file).group_public_key
            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            deadline = time.monotonic() + 12
            height = 0
            while time.monotonic() < deadline:
                height += 1
                prop = make_proposal(height, 0, f"b{height}")
                resp = link.sign_proposal(prop)
                assert resp.error is None, (height, resp.error, kms.log_text()[-3000:])
                assert verify(pub, proposal_sign_bytes(CHAIN, prop), bytes(resp.proposal.signature))
                for vote_type in (PREVOTE, PRECOMMIT):
                    ext = b"ext" if vote_type == PRECOMMIT else b""
                    vote = make_vote(height, 0, vote_type, f"b{height}", extension=ext)
                    resp = link.sign_vote(vote)
                    assert resp.error is None, (height, resp.error)
                    assert verify(pub, vote_sign_bytes(CHAIN, vote), bytes(resp.vote.signature))
                    if ext:
                        ext_sig = bytes(resp.vote.extension_signature)
                        assert verify(pub, vote_extension_sign_bytes(CHAIN, vote), ext_sig)
            stop.set()
            killer.join()
            link.close()
        finally:
            stop.set()
            kms.stop()
            sim.close()
    print(f"signed {height} heights (3 signatures each) through {kills[0]} cosigner kills")
    assert height >= 5 and kills[0] >= 5


# ---- a compromised coordinator against real cosigner processes -------------------------------------------------


def _clients(group: Cosigners, identity: Path) -> list[CosignerClient]:
    key = load_identity(identity)
    out = []
    for addr in group.set.addrs:
        peer, hostport = addr.removeprefix("tcp://").split("@")
        host, port = hostport.rsplit(":", 1)
        out.append(CosignerClient(ThresholdCosignerAddr(addr, host, int(port), peer), key))
    return out


def _commitment(answer: dict[str, object]) -> frost.Commitment:
    return frost.Commitment(int(str(answer["identifier"])), bytes.fromhex(str(answer["hiding"])),
                            bytes.fromhex(str(answer["binding"])))  # fmt: skip


def _home(tmp_path: Path) -> tuple[Path, Path]:
    config = write_home(tmp_path / "kms", ["tcp://127.0.0.1:1"], chain_id=CHAIN)
    return config, tmp_path / "kms" / "secrets" / f"{CHAIN}-consensus.key"


def test_conflicting_votes_through_two_cosigner_pairs_get_at_most_one_signature(tmp_path: Path) -> None:
    config, key = _home(tmp_path)
    with cosigners_for(tmp_path, config, key, CHAIN) as group:
        clients = _clients(group, config.parent / "secrets" / "kms-identity.key")
        package = load_group_file(group.set.group_file)
        signatures = []
        for n, pair in enumerate(((0, 1), (1, 2), (0, 2)), start=1):
            message = vote_sign_bytes(CHAIN, make_vote(50, 0, PREVOTE, bytes([n]) * 8, timestamp=(1, 0)))
            deadline = time.monotonic() + 10
            answers = {i: clients[i].call({"op": "commit"}, deadline) for i in pair}
            commitments = [_commitment(a) for a in answers.values()]
            wire = [[c.identifier, c.hiding.hex(), c.binding.hex()] for c in commitments]
            shares = {}
            for i in pair:
                got = clients[i].call(
                    {"op": "sign", "session": answers[i]["session"], "message": message.hex(), "commitments": wire},
                    deadline,
                )
                if got["ok"]:
                    shares[int(str(answers[i]["identifier"]))] = bytes.fromhex(str(got["share"]))
                else:
                    assert "conflicting" in str(got["error"])
            with contextlib.suppress(ThresholdError):
                signatures.append(frost.aggregate(package, message, commitments, shares))
                VerifyKey(package.group_public_key).verify(message, signatures[-1])
        for client in clients:
            client.close()
    assert len(signatures) == 1


def test_kill_9_mid_round_never_reuses_a_nonce(tmp_path: Path) -> None:
    """Random SIGKILLs between and during the rounds; every share's commitment names one message, ever."""
    config, key = _home(tmp_path)
    with cosigners_for(tmp_path, config, key, CHAIN) as group:
        clients = _clients(group, config.parent / "secrets" / "kms-identity.key")
        rng = random.Random(9)
        committed: set[tuple[bytes, bytes]] = set()
        used: dict[tuple[bytes, bytes], bytes] = {}
        replays_refused = 0
        old_sessions: list[tuple[int, str, list[list[object]], frost.Commitment]] = []
        for height in range(1, 41):
            deadline = time.monotonic() + 10
            answers = {}
            for i in range(3):
                if not group.alive(i):
                    group.start(i)
                with contextlib.suppress(TransientProviderError):
                    answers[i] = clients[i].call({"op": "commit"}, deadline)
            for answer in answers.values():
                c = _commitment(answer)
                assert (c.hiding, c.binding) not in committed, "a commitment was handed out twice"
                committed.add((c.hiding, c.binding))
            if rng.random() < 0.5:  # SIGKILL between the rounds, possibly of a chosen cosigner
                group.kill(rng.randrange(3))
            chosen = list(answers)[:2]
            commitments = [_commitment(answers[i]) for i in chosen]
            wire: list[list[object]] = [[c.identifier, c.hiding.hex(), c.binding.hex()] for c in commitments]
            for m in range(2):  # the same session for two messages: the second must never get a share
                message = vote_sign_bytes(CHAIN, make_vote(height, 0, PREVOTE, f"h{height}m{m}", timestamp=(1, 0)))
                for i, c in zip(chosen, commitments, strict=True):
                    if not group.alive(i):
                        group.start(i)
                    try:
                        got = clients[i].call(
                            {"op": "sign", "session": answers[i]["session"], "message": message.hex(),
                             "commitments": wire}, deadline)  # fmt: skip
                    except TransientProviderError:
                        continue
                    if got["ok"]:
                        key_ = (c.hiding, c.binding)
                        assert used.setdefault(key_, message) == message, "a nonce signed two messages"
                    else:
                        replays_refused += 1
                old_sessions += [
                    (i, str(answers[i]["session"]), wire, c) for i, c in zip(chosen, commitments, strict=True)
                ]
        # Every old session, replayed after the kills and restarts, is refused.
        for i, session, wire, _c in old_sessions[-10:]:
            if not group.alive(i):
                group.start(i)
            message = vote_sign_bytes(CHAIN, make_vote(1000, 0, PREVOTE, b"late", timestamp=(1, 0)))
            got = clients[i].call(
                {"op": "sign", "session": session, "message": message.hex(), "commitments": wire},
                time.monotonic() + 10,
            )
            assert not got["ok"]
        for client in clients:
            client.close()
    print(f"{len(committed)} commitments, {len(used)} used once, {replays_refused} second uses refused")
    assert used and replays_refused >= 40


def test_status_reports_each_cosigner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    key = tmp_path / "kms" / "secrets" / f"{CHAIN}-consensus.key"
    try:
        with cosigners_for(tmp_path, config, key, CHAIN) as group:
            kms = KmsProcess(config, tmp_path / "pykms.log")
            kms.start()
            try:
                link = accept(sim, kms)
                assert link.sign_vote(make_vote(7, 1, PREVOTE, b"x")).error is None
                link.close()
            finally:
                kms.stop()
            capsys.readouterr()
            assert pykms_main(["threshold", "status", "-c", str(config)]) == 0
            out = capsys.readouterr().out.splitlines()
            assert len(out) == 3 and sum("test-chain 7/1/2" in line for line in out) == 2, out
            group.kill(2)
            assert pykms_main(["threshold", "status", "-c", str(config)]) == 6
            out = capsys.readouterr().out.splitlines()
            assert "UNREACHABLE" in out[2] and all(": ok, share" in line for line in out[:2]), out
    finally:
        sim.close()


def _closed_by_peer(stream: Any) -> bool:
    try:
        return bool(stream.recv() == b"")
    except ConnectionLost as exc:  # reset by the peer; a timeout is not a close
        return not isinstance(exc, LinkTimeout)


def test_cosigner_refuses_unpinned_signers_and_survives_garbage(tmp_path: Path) -> None:
    import socket

    from nacl.signing import SigningKey

    from pykms.secretconn.sync import secret_connection_sync

    config, key = _home(tmp_path)
    with cosigners_for(tmp_path, config, key, CHAIN) as group:
        good = _clients(group, config.parent / "secrets" / "kms-identity.key")[0]
        addr = good.addr
        # An identity the cosigner does not list: closed right after the handshake, nothing answered.
        sock = socket.create_connection((addr.host, addr.port), timeout=5)
        stranger = secret_connection_sync(sock, SigningKey.generate(), expected_peer_id=addr.peer_id)
        stranger.send(b"\x00\x00\x00\x10" + b'{"op":"commit"}\n')
        sock.settimeout(5)
        assert _closed_by_peer(stranger)
        stranger.close()
        # A pinned signer sending garbage loses its connection; the cosigner keeps serving the others.
        for garbage in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x03abc", b'\x00\x00\x00\x0c{"op":"zzz"}'):
            bad = _clients(group, config.parent / "secrets" / "kms-identity.key")[0]
            with bad._lock:
                stream, _reader = bad._connect(time.monotonic() + 5)
                stream.send(garbage)
                stream.sock.settimeout(5)
                assert _closed_by_peer(stream)
                bad.close_locked()
        assert good.call({"op": "status"}, time.monotonic() + 5)["ok"] is True
        assert group.alive(0)
        deadline = time.monotonic() + 5  # the log writer flushes in batches: give the last line a moment
        while True:
            log = group.logs[0].read_text()
            if log.count("signer_connection_closed") >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "signer_refused" in log and log.count("signer_connection_closed") >= 3
        good.close()
