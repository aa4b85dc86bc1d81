"""The benchmark: percentiles, the floor, the request sequence, and ``pykms-signer-harness bench`` against pykms.

Figures are printed by the benchmark, never asserted here: these tests check that what it measures and reports
is computed right and that it refuses to time a signer whose signatures do not verify.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.errors import HarnessError
from pykms.harness.bench import (
    BenchResult,
    conforming_signer,
    conforming_signer_run,
    cpu_per_request,
    format_cpu,
    format_references,
    format_result,
    format_targets,
    lower_floor,
    measure_floor,
    measure_ideal_signer,
    percentile,
    process_cpu,
    run_sequence,
    summarize,
)
from pykms.harness.simulator import PRECOMMIT, PREVOTE, SignerLink, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_sign_bytes
from tests.broken_signers import FIXTURE_PUB, FIXTURE_SEED, TestSigner
from tests.e2e import KmsProcess, write_home, write_multi_home


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0, 1, 50, 90, 99, 100)] == [1, 1, 50, 90, 99, 100]
    # q * n an exact integer: the rank is that integer (round-half-even would pick the next one)
    assert percentile([1.0, 2.0, 3.0, 4.0], 75) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_summarize_and_format() -> None:
    latencies = [0.002, 0.001, 0.004, 0.003]
    result = summarize(latencies, fsync_s=0.0009, sign_s=0.0001, wall_s=0.02)
    assert (result.requests, result.min_ms, result.max_ms) == (4, 1.0, 4.0)
    assert result.p50_ms == pytest.approx(2.0) and result.p99_ms == pytest.approx(4.0)
    assert result.floor_ms == pytest.approx(1.0)
    assert result.p50_over_floor == pytest.approx(2.0) and result.p99_over_floor == pytest.approx(4.0)
    assert result.signatures_per_s == pytest.approx(200.0)
    text = format_result(result)
    assert "p50 2.000" in text and "200 signatures/s" in text and "p50/floor 2.00" in text
    assert BenchResult(**json.loads(format_result(result, as_json=True))) == result
    with pytest.raises(HarnessError):
        summarize([], 0.001, 0.0001, 1.0)


def test_format_targets_says_met_or_missed_by_how_much() -> None:
    """The targets' verdicts come from the figures: 1.5 x and 2 x the ideal signer, 250 µs of CPU."""
    result = summarize([0.0003] * 50 + [0.0006] * 50, 0.0001, 0.00002, 1.0, ideal=[0.0002] * 98 + [0.0004] * 2)
    text = format_targets(result, {"user_us": 200.0, "sys_us": 80.0, "switches": 3.0})
    assert "p50 0.300 ms / ideal 0.200 ms = 1.50x  met (target 1.5x)" in text
    assert "p99 0.600 ms / ideal 0.400 ms = 1.50x  met (target 2x)" in text
    assert "CPU per request 280 µs  MISSED by 30 µs (target 250 µs)" in text
    slow = summarize([0.0004] * 100, 0.0001, 0.00002, 1.0, ideal=[0.0002] * 100)
    text = format_targets(slow, {"user_us": 150.0, "sys_us": 50.0, "switches": 3.0})
    assert "= 2.00x  MISSED by 0.50x (target 1.5x)" in text and "= 2.00x  met (target 2x)" in text
    assert "CPU per request 200 µs  met (target 250 µs)" in text
    assert "n/a" in format_targets(summarize([0.001], 0.0001, 0.00002, 1.0), None)


def test_lower_floor_keeps_the_lower_median_of_each_part() -> None:
    assert lower_floor((0.003, 0.00002), (0.0002, 0.00003)) == (0.0002, 0.00002)


def test_measure_floor_cleans_up(tmp_path: Path) -> None:
    fsync_s, sign_s = measure_floor(tmp_path, samples=5)
    assert fsync_s > 0 and sign_s > 0
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def signer_link(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[SignerLink, TestSigner]]:
    kwargs = getattr(request, "param", {})
    sim = ValidatorSimulator(f"unix://{tmp_path}/b.sock", chain_id="bench-chain")
    signer = TestSigner(sim.listen(), FIXTURE_SEED, chain_id="bench-chain", **kwargs).start()
    link = sim.accept(timeout=5)
    try:
        yield link, signer
    finally:
        link.close()
        signer.stop()
        sim.close()


def test_run_sequence_sends_increasing_heights_and_verifies(signer_link: tuple[SignerLink, TestSigner]) -> None:
    link, signer = signer_link
    latencies = run_sequence(link, 7, start_height=50, proposal=True, extensions=True, pubkey=FIXTURE_PUB)
    assert len(latencies) == 7 and all(t > 0 for t in latencies)
    kinds = [
        (type(r).__name__, r.proposal.height if hasattr(r, "proposal") else (r.vote.height, r.vote.type))
        for r in signer.requests
    ]
    assert kinds == [
        ("SignProposalRequest", 50), ("SignVoteRequest", (50, PREVOTE)), ("SignVoteRequest", (50, PRECOMMIT)),
        ("SignProposalRequest", 51), ("SignVoteRequest", (51, PREVOTE)), ("SignVoteRequest", (51, PRECOMMIT)),
        ("SignProposalRequest", 52),
    ]  # fmt: skip
    precommits = [r.vote for r in signer.requests if hasattr(r, "vote") and r.vote.type == PRECOMMIT]
    assert all(v.extension == f"ext-{v.height}".encode() for v in precommits)


@pytest.mark.parametrize("signer_link", [{"alter_timestamp": True}], indirect=True)
def test_run_sequence_refuses_a_signer_that_signs_something_else(signer_link: tuple[SignerLink, TestSigner]) -> None:
    link, _ = signer_link
    with pytest.raises(HarnessError, match="does not verify over the request's sign bytes") as info:
        run_sequence(link, 3, start_height=1, pubkey=FIXTURE_PUB)
    assert info.value.exit_code == 7


def test_run_sequence_stops_at_a_refusal(signer_link: tuple[SignerLink, TestSigner]) -> None:
    link, _ = signer_link
    run_sequence(link, 2, start_height=10, pubkey=FIXTURE_PUB)
    with pytest.raises(HarnessError, match="refused"):
        run_sequence(link, 2, start_height=5, pubkey=FIXTURE_PUB)  # a regression for the signer's guard


@pytest.mark.slow
def test_bench_command_against_pykms(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "pykms.harness.signer_harness", "bench", "--addr", "tcp://127.0.0.1:0", "-n", "40",
         "--warmup", "5", "--chain-id", "bench-chain", "--proposal", "--extensions", "--json",
         "--start-height", "1000", "--floor-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert bench.stderr is not None
    line = bench.stderr.readline()
    assert line.startswith("listening on "), line
    stderr_rest: list[str] = []
    drain = threading.Thread(target=lambda: stderr_rest.extend(bench.stderr or []), daemon=True)
    drain.start()
    config = write_home(tmp_path / "kms", [line.split()[2]], chain_id="bench-chain")
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        bench.wait(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        assert kms.stop() == 0, kms.log_text()
    assert bench.returncode == 0, "".join(stderr_rest) + kms.log_text()
    assert bench.stdout is not None
    result = json.loads(bench.stdout.read())
    assert result["requests"] == 40
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["signatures_per_s"] > 0 and result["floor_ms"] > 0
    assert result["p50_over_floor"] == pytest.approx(result["p50_ms"] / result["floor_ms"])
    # pykms persisted the last request: 5 warm-up requests, then 40 from height 1005 at 3 per height
    # (proposal, prevote, precommit): 13 whole heights and the proposal of height 1018.
    state = json.loads((tmp_path / "kms" / "state" / "bench-chain_priv_validator_state.json").read_text())
    assert (state["height"], state["round"], state["step"]) == ("1018", 0, 1)


def test_ideal_signer_answers_verified_signatures_and_cleans_up(tmp_path: Path) -> None:
    """The machine's bound is measured against a real signer loop: every answer is verified (a wrong one raises)
    and its state file is gone afterwards."""
    latencies = measure_ideal_signer(tmp_path, 20)
    assert len(latencies) == 20 and all(x > 0 for x in latencies)
    assert list(tmp_path.iterdir()) == []
    result = summarize([0.002] * 4, 0.0009, 0.0001, 0.01, latencies)
    assert result.ideal_p50_ms is not None and "ideal signer" in format_result(result)


def test_conforming_signer_signs_over_secretconnection_persists_and_cleans_up(tmp_path: Path) -> None:
    """The smallest conforming signer is driven by the same ``run_sequence`` as pykms (a real handshake, every
    signature and extension signature verified by the bench: a wrong one raises), its CPU is read from /proc,
    and its state file is gone afterwards."""
    run = conforming_signer_run(tmp_path, 30)
    assert len(run.latencies) == 30 and all(x > 0 for x in run.latencies)
    assert run.cpu is not None and run.cpu["switches"] >= 1  # it sleeps on every request (CPU: 10 ms ticks)
    assert list(tmp_path.iterdir()) == []


def test_conforming_signer_persists_before_it_answers(tmp_path: Path) -> None:
    """Each answer leaves its signature and sign bytes in the state file before it is sent: after each request
    one of the two slots holds the signature just received."""
    seed = os.urandom(32)
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="c", dialect=Dialect.V0_38)
    port = int(sim.listen().rsplit(":", 1)[1])
    child = multiprocessing.get_context("spawn").Process(target=conforming_signer, args=(port, str(tmp_path), seed))
    child.start()
    try:
        link = sim.accept(timeout=30)
        for height in (5, 6):
            vote = make_vote(height, 0, PRECOMMIT, f"b{height}", extension=b"x")
            resp = link.sign_vote(vote)
            assert resp.vote.extension_signature, "a non-nil precommit's extension is signed"
            assert bytes(resp.vote.signature) + vote_sign_bytes("c", vote) in (tmp_path / "state").read_bytes()
        proposal = make_proposal(7, 0, "b7")
        signature = bytes(link.sign_proposal(proposal).proposal.signature)
        SigningKey(seed).verify_key.verify(proposal_sign_bytes("c", proposal), signature)
        assert signature + proposal_sign_bytes("c", proposal) in (tmp_path / "state").read_bytes()
        link.close()
    finally:
        sim.close()
        child.join(10)
        child.kill()


def test_format_references_gives_ratios_to_the_first_row() -> None:
    cpu = {"user_us": 150.0, "sys_us": 50.0, "switches": 3.0}
    text = format_references([("ideal", [0.0002] * 100, None), ("other", [0.0003] * 98 + [0.0008] * 2, cpu)])
    assert "ideal" in text and "0.200 / 0.200  1.00x / 1.00x  CPU n/a" in text
    assert "0.300 / 0.800  1.50x / 4.00x  200 µs CPU per request" in text


def test_process_cpu_sees_a_busy_thread_and_a_sleeping_one() -> None:
    before = process_cpu(os.getpid())
    assert before is not None, "Linux has /proc"
    slept, release = threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(30):
            time.sleep(0.001)  # each sleep is a voluntary context switch of this thread
        slept.set()
        release.wait(10)

    thread = threading.Thread(target=sleeper)
    thread.start()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # 0.2 s of CPU in this process
        pass
    assert slept.wait(10)
    after = process_cpu(os.getpid())
    release.set()
    thread.join()
    assert after is not None
    assert after[0] + after[1] - before[0] - before[1] >= 0.15
    assert after[2] - before[2] >= 30


def test_process_cpu_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_cpu(proc.pid) is None


def test_cpu_per_request_divides_the_difference() -> None:
    cpu = cpu_per_request((1.0, 0.5, 100), (1.5, 0.7, 300), 1000)
    assert cpu == pytest.approx({"user_us": 500.0, "sys_us": 200.0, "switches": 0.2})
    assert "700 µs CPU per request (user 500, system 200), 0.2 context switches" in format_cpu(cpu)
    assert cpu_per_request(None, (1.0, 0.0, 0), 10) is None
    assert cpu_per_request((1.0, 0.0, 0), (2.0, 0.0, 0), 0) is None
    assert format_cpu(None) == "CPU n/a (no /proc)"


def _start_bench(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pykms.harness.signer_harness", "bench", "--addr", "tcp://127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


def _finish(bench: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The bench's stdout and the rest of its stderr once it has exited (killed after ``timeout``)."""
    try:
        return bench.communicate(timeout=timeout)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def _bench_listeners(bench: subprocess.Popen[str], count: int) -> dict[str, list[str]]:
    """The addresses the concurrent bench prints on stderr, by chain (``listening on ADDR for chain ID ...``)."""
    assert bench.stderr is not None
    listen: dict[str, list[str]] = {}
    for _ in range(count):
        line = bench.stderr.readline()
        assert line.startswith("listening on "), line
        words = line.split()
        listen.setdefault(words[5], []).append(words[2])
    assert bench.stderr.readline().startswith(f"waiting for the signer ({count} connections)")
    return listen


@pytest.mark.slow
def test_concurrent_bench_command_against_pykms(tmp_path: Path) -> None:
    """2 chains x 2 sentries against a real pykms: every chain signs, every signature verified by the harness, the
    twins' refusals counted, pykms's CPU read through --signer-pid."""
    bench = _start_bench("--chains", "2", "--sentries", "2", "--seconds", "2", "--chain-id", "load", "--json")
    listen = _bench_listeners(bench, 4)
    assert sorted(listen) == ["load-0", "load-1"] and all(len(a) == 2 for a in listen.values())
    kms = KmsProcess(write_multi_home(tmp_path / "kms", listen), tmp_path / "pykms.log")
    kms.start()
    try:
        out, err = _finish(bench, 90)
    finally:
        assert kms.stop() == 0, kms.log_text()
    assert bench.returncode == 0, err + kms.log_text()
    result = json.loads(out)
    assert (result["chains"], result["sentries"], result["mode"]) == (2, 2, "closed loop, full speed")
    assert set(result["per_chain"]) == {"load-0", "load-1"} and min(result["per_chain"].values()) > 10
    signed = sum(result["per_chain"].values())
    assert result["requests"] == signed + result["refused"]
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["load_cpu_us"] > 0 and result["starved"] == []
    # Each chain's guard went at least as far as its signatures: from height 10, at most four per height (a
    # prevote and a precommit for each of the two sentries, the twin's answered by the same signature).
    from pykms.guard.store import decode_slots_file

    for cid, count in result["per_chain"].items():
        path = tmp_path / "kms" / cid / "state" / f"{cid}_priv_validator_state.json"
        _, state = decode_slots_file(path.read_bytes(), str(path))
        assert state.height >= 10 + count // 4 - 1 and state.step in (2, 3), (cid, count, state)


def test_concurrent_bench_fails_when_sentries_of_a_chain_get_different_keys(tmp_path: Path) -> None:
    """A chain whose two sentries are answered by different keys: the harness refuses to report figures."""
    bench = _start_bench("--chains", "1", "--sentries", "2", "--seconds", "1", "--chain-id", "two-keys")
    listen = _bench_listeners(bench, 2)
    signers = [
        TestSigner(addr, FIXTURE_SEED, chain_id="two-keys", wrong_key=True).start() for addr in listen["two-keys-0"]
    ]
    try:
        out, err = _finish(bench, 60)
    finally:
        for signer in signers:
            signer.stop()
    assert bench.returncode == 7, err
    assert "different public keys" in err and not out


def test_concurrent_bench_refuses_unix_addresses_and_single_chain_flags() -> None:
    for extra, message in (
        (["--addr", "unix:///tmp/x.sock"], "several listeners need tcp://HOST:PORT"),
        (["--addr", "tcp://127.0.0.1:0", "--extensions"], "--proposal and --extensions are for the single-chain"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "pykms.harness.signer_harness", "bench", "--chains", "3", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode != 0 and message in run.stderr, run.stderr


def test_concurrent_result_names_a_starved_chain() -> None:
    """A chain served at under half the median chain's rate is named; the text says "none" otherwise."""
    from pykms.harness import load

    assert load.starved_chains({"a": 50, "b": 40, "c": 19}) == ["c"]
    assert load.starved_chains({"a": 50, "b": 40, "c": 20}) == []  # exactly half of the median: not starved
    assert load.starved_chains({"a": 0, "b": 40, "c": 45, "d": 41}) == ["a"]
    assert load.starved_chains({"only": 7}) == [] and load.starved_chains({}) == []

    base = dict(chains=3, sentries=2, mode="closed loop, full speed", seconds=1.0, requests=10, p50_ms=1.0,
                p99_ms=2.0, max_ms=3.0, signed_per_s=10.0, slowest_chain_per_s=1.0, fastest_chain_per_s=5.0,
                refused=0, per_chain={"a": 5, "b": 4, "c": 1}, load_cpu_us=100.0)  # fmt: skip
    text = load.format_concurrent(load.ConcurrentResult(**base, starved=["c"]))  # type: ignore[arg-type]
    assert "starved (under half the median chain's rate): c" in text
    fine = load.format_concurrent(load.ConcurrentResult(**base, starved=[]))  # type: ignore[arg-type]
    assert "starved (under half the median chain's rate): none" in fine


@pytest.mark.slow
def test_run_concurrent_in_process_with_test_signers() -> None:
    """The library call behind ``bench --chains``: one chain, two sentries, each served by a signer with the same
    key; the signer's CPU is read from the process id that ``on_listening`` returns (here this process)."""
    from pykms.harness.load import format_concurrent, run_concurrent

    signers: list[TestSigner] = []

    def on_listening(bound: dict[str, list[str]]) -> int:
        assert list(bound) == ["inproc-0"] and len(bound["inproc-0"]) == 2
        signers.extend(TestSigner(a, FIXTURE_SEED, chain_id="inproc-0").start() for a in bound["inproc-0"])
        return os.getpid()

    try:
        result = run_concurrent(
            {"inproc-0": ["tcp://127.0.0.1:0"] * 2}, 1.0, on_listening=on_listening, workers=1, block_ms=20
        )
    finally:
        for signer in signers:
            signer.stop()
    assert result.mode == "paced, one height every 20 ms" and result.per_chain["inproc-0"] > 10
    assert result.requests == result.per_chain["inproc-0"] + result.refused
    assert result.signer_cpu is not None and result.signer_cpu["user_us"] + result.signer_cpu["sys_us"] > 0
    assert "signer " in format_concurrent(result) and json.loads(format_concurrent(result, as_json=True))["chains"] == 1
