"""Hostile validators: pykms stays up with bounded memory and the other chain keeps signing.

One pykms serves two chains; the "victim" chain's validator connection misbehaves in every way below while the
"good" chain signs (and is verified) after each attack. Peak RSS of the pykms process is reported.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from pykms.harness.simulator import PREVOTE, SignerLink, ValidatorSimulator, make_vote
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import KmsProcess, write_multi_home

CYCLES = int(os.environ.get("PYKMS_SOAK_CYCLES", "100"))
PINGS = int(os.environ.get("PYKMS_SOAK_PINGS", "3000"))


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["none", "process"], indirect=True)
def test_hostile_validator_does_not_hurt_the_other_chain(tmp_path: Path, isolation: str) -> None:
    victim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="victim")
    good = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="good")
    config = write_multi_home(tmp_path / "kms", {"victim": [victim.listen()], "good": [good.listen()]})
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    state = {"height": 1}
    figures: dict[str, object] = {}
    try:
        good_link = good.accept(timeout=30)
        good_pub = VerifyKey(good_link.pubkey().pub_key)

        def good_still_signs() -> None:
            h = state["height"]
            vote = make_vote(h, 0, PREVOTE, b"G")
            resp = good_link.sign_vote(vote)
            assert resp.error is None, resp.error
            good_pub.verify(vote_sign_bytes("good", vote), bytes(resp.vote.signature))
            state["height"] = h + 1
            assert kms.proc is not None and kms.proc.poll() is None, kms.log_text()

        def victim_link() -> SignerLink:
            return victim.accept(timeout=30)

        # 1. a 2 GiB length prefix: the connection is closed, nothing allocated
        link = victim_link()
        link.send_raw(b"\x80\x80\x80\x80\x08")  # uvarint 2^31
        link.send_raw(b"\x00" * 1024)
        try:
            link.recv_body(timeout=5)
            closed = False
        except Exception:
            closed = True
        assert closed
        link.close()
        good_still_signs()

        # 2. one byte per second (slow loris) while the good chain signs
        link = victim_link()
        body = codec.delimit(codec.encode_request(Dialect.V0_38, codec.PingRequest()))
        stop = threading.Event()

        def drip() -> None:
            for byte in body * 10:
                if stop.wait(1.0):
                    return
                try:
                    link.send_raw(bytes([byte]))
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        dripper.start()
        for _ in range(5):
            good_still_signs()
            time.sleep(0.5)
        stop.set()
        dripper.join()
        link.close()

        # 3. a flood of pings: every one answered, on its own connection
        link = victim_link()
        started = time.perf_counter()
        for _ in range(PINGS):
            assert isinstance(link.ping(), codec.PingResponse)
        figures["pings_per_s"] = round(PINGS / (time.perf_counter() - started))
        link.close()
        good_still_signs()

        # 4. connect/disconnect cycles, every other one handshake garbage instead of a handshake. A completed
        #    handshake resets pykms's reconnect backoff, so the cycles run at reconnect speed.
        started = time.perf_counter()
        for cycle in range(CYCLES):
            if cycle % 2:
                assert victim._sock is not None
                victim._sock.settimeout(30)
                conn, _ = victim._sock.accept()
                conn.sendall(os.urandom(64))  # handshake garbage
                conn.close()
            else:
                victim_link().close()
            if cycle % 20 == 19:
                good_still_signs()  # also keeps the good link from idling out (20 s)
        figures["cycles_per_s"] = round(CYCLES / (time.perf_counter() - started), 1)
        good_still_signs()

        # 5. a replayed frame: the connection is poisoned and closed
        link = victim_link()
        frame = link.stream.codec.seal(codec.delimit(codec.encode_request(Dialect.V0_38, codec.PingRequest())))
        link.sock.sendall(frame)
        link.recv_body(timeout=5)
        link.sock.sendall(frame)  # the same sealed frame again
        try:
            link.recv_body(timeout=5)
            replay_closed = False
        except Exception:
            replay_closed = True
        assert replay_closed
        link.close()
        good_still_signs()

        # 6. a valid request for another chain on the victim's connection: refused, connection kept
        link = victim_link()
        resp = link.sign_vote(make_vote(5, 0, PREVOTE, b"X"), chain_id="good")
        assert resp.error is not None
        assert isinstance(link.ping(), codec.PingResponse)
        link.close()
        good_still_signs()

        assert kms.proc is not None
        figures["peak_rss_mib"] = round(_peak_rss_kib(kms.proc.pid) / 1024, 1)
        good_link.close()
    finally:
        code = kms.stop()
        victim.close()
        good.close()
    print(f"\n[hostile validators] cycles={CYCLES} pings={PINGS} {figures} good_chain_signatures={state['height'] - 1}")
    assert code == 0
    assert isinstance(figures["peak_rss_mib"], float) and figures["peak_rss_mib"] < 200  # bounded memory


@pytest.mark.slow
def test_unresponsive_listener_does_not_block_shutdown(tmp_path: Path) -> None:
    """A node address that accepts TCP but never speaks: pykms times the handshake out and still stops on SIGTERM."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    addr = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    config = write_multi_home(tmp_path / "kms", {"silent": [addr]})
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        time.sleep(6.5)  # past the 5 s handshake deadline
        assert "handshake timed out" in kms.log_text()
    finally:
        assert kms.stop() == 0
        silent.close()
