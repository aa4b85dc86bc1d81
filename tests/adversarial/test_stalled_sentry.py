"""A sentry that never reads its replies must not stall the other sentries of its chain.

The stalled sentry shrinks its receive window, then replays the vote its twin just got signed thousands of
times (each answered from the stored signature) and never reads: the TCP buffers fill and pykms's write of a
reply to it blocks. The honest sentry of the same chain keeps signing new heights meanwhile and must be answered
within 1 s every time; the stalled connection is closed with one log line.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from pykms.harness.simulator import PRECOMMIT, PREVOTE, LinkTimeout, ValidatorSimulator, make_vote
from pykms.privval import codec
from pykms.privval.codec import Dialect
from tests.e2e import KmsProcess, accept, write_home

CHAIN = "test-chain"
REPLAYS = 6000
HONEST_SECONDS = 8.0
BOUND_S = 1.0


def test_a_stalled_sentry_does_not_delay_its_twin(tmp_path: Path) -> None:
    honest = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, request_timeout=60)
    stalled = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN)
    addrs = [honest.listen(), stalled.listen()]
    assert stalled._sock is not None
    stalled._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # inherited by the accepted connection
    config = write_home(tmp_path / "kms", addrs, chain_id=CHAIN)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    stop = threading.Event()
    try:
        good = accept(honest, kms)
        bad = accept(stalled, kms)
        vote = make_vote(1, 0, PREVOTE, b"twin")
        assert good.sign_vote(vote).error is None
        replay = codec.delimit(codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote=vote, chain_id=CHAIN)))
        sent = [0]

        def flood() -> None:
            bad.sock.settimeout(30)
            for _ in range(REPLAYS):
                if stop.is_set():
                    return
                try:
                    bad.send_raw(replay)
                except Exception:
                    return  # pykms closed the connection (or stopped reading for good)
                sent[0] += 1

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        time.sleep(1.0)  # let the buffers fill
        latencies: list[float] = []
        height = 2
        deadline = time.monotonic() + HONEST_SECONDS
        while time.monotonic() < deadline:
            for vote_type in (PREVOTE, PRECOMMIT):
                started = time.perf_counter()
                try:
                    resp = good.sign_vote(make_vote(height, 0, vote_type, b"h%d" % height))
                except LinkTimeout:
                    raise AssertionError("the honest sentry got no answer within 60 s") from None
                latencies.append(time.perf_counter() - started)
                assert resp.error is None, resp.error
            height += 1
        worst = max(latencies)
        print(f"honest sentry: {len(latencies)} requests, worst {worst * 1000:.1f} ms, stalled sent {sent[0]} replays")
        assert worst < BOUND_S, f"the honest sentry waited {worst:.2f} s behind the stalled one"
        # The stalled connection was closed for not taking its reply (one log line).
        end = time.monotonic() + 20
        while "did not take its reply" not in kms.log_text() and time.monotonic() < end:
            time.sleep(0.2)
        assert kms.log_text().count("did not take its reply") >= 1, kms.log_text()[-3000:]
        assert kms.proc is not None and kms.proc.poll() is None
    finally:
        stop.set()
        kms.stop()
        honest.close()
        stalled.close()
