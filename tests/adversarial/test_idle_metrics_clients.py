"""Idle clients of the metrics endpoint cannot pile up threads in the signer's process.

A real ``pykms start`` with ``[metrics]`` gets 300 connections to its metrics port that never send a request.
Its thread count must stay bounded, signing must go on, the idle connections must be closed after the client
timeout, and /health must answer again afterwards.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from pykms.metrics import METRICS_CLIENT_TIMEOUT_S, METRICS_MAX_CLIENTS
from tests.e2e import KmsProcess, accept, write_home
from tests.test_metrics_e2e import metrics_port

CHAIN = "test-chain"
IDLE = 300


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_idle_metrics_clients_are_bounded_and_dropped(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN)
    config.write_text(config.read_text() + '\n[metrics]\naddr = "127.0.0.1:0"\n')
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    idle: list[socket.socket] = []
    try:
        link = accept(sim, kms)
        assert kms.proc is not None
        port = metrics_port(kms)
        assert link.sign_vote(make_vote(1, 0, PREVOTE, b"one")).error is None
        before = threads(kms.proc.pid)
        for _ in range(IDLE):  # non-blocking connects: the kernel retries those the backlog drops
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        # The kernel lets them in as the accept backlog drains; sample pykms's threads meanwhile, signing on.
        peak, height = 0, 2
        end = time.monotonic() + 15
        while time.monotonic() < end:
            peak = max(peak, threads(kms.proc.pid))
            assert link.sign_vote(make_vote(height, 0, PREVOTE, b"h%d" % height)).error is None
            height += 1
            time.sleep(0.2)
        print(f"pykms threads: {before} before, at most {peak} with {IDLE} idle metrics clients")
        assert peak <= before + METRICS_MAX_CLIENTS + 2
        # Every idle client is dropped after the client timeout: the threads go back to what they were.
        end = time.monotonic() + 60
        while threads(kms.proc.pid) > before + 2 and time.monotonic() < end:
            assert link.sign_vote(make_vote(height, 0, PREVOTE, b"h%d" % height)).error is None
            height += 1
            time.sleep(METRICS_CLIENT_TIMEOUT_S / 5)
        assert threads(kms.proc.pid) <= before + 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        for sock in idle:
            sock.close()
        kms.stop()
        sim.close()
