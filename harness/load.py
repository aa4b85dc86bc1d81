"""Many chains, several sentries each, signing at once: the concurrent benchmark of any signer.

Each chain has ``sentries`` listeners (validator simulators); the signer dials all of them. Both sentries of a
chain ask for the same votes (prevote then precommit, height after height), as sentries relaying one consensus
state do, so a signer must give the twin the same signature or refuse a step its twin already passed. The load
runs closed-loop ("full speed": each sentry sends its next request as soon as it has the answer) or paced (one
height every ``block_ms``, chains out of phase).

The simulators live in ``workers`` forked processes, so that the load generator's own GIL is not what is
measured. Every signature is verified after the run, against the public key that every sentry of the chain got
from the signer: a signature that does not verify fails the run (HarnessError, exit code 7).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from nacl.signing import VerifyKey

from pykms.errors import HarnessError
from pykms.harness.bench import (
    EXIT_OTHER,
    CpuUse,
    cpu_per_request,
    format_cpu,
    percentile,
    process_cpu,
    verify_signature,
)
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes

__all__ = ["ConcurrentResult", "format_concurrent", "run_concurrent", "starved_chains"]


@dataclass(frozen=True)
class ConcurrentResult:
    chains: int
    sentries: int
    mode: str
    seconds: float
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    signed_per_s: float
    slowest_chain_per_s: float
    fastest_chain_per_s: float
    #: Requests the signer refused (a sentry asking for a step its twin already passed).
    refused: int
    per_chain: dict[str, int]
    #: CPU of the load processes per request (µs): they share the machine with the signer on loopback.
    load_cpu_us: float
    #: Chains that got less than half the median chain's rate of signatures (none, when no chain starves).
    starved: list[str]
    #: The signer's CPU per request (``cpu_per_request``), when its process id was given.
    signer_cpu: dict[str, float] | None = None


def _worker(
    chain_ids: list[str],
    listen: dict[str, list[str]],
    dialect: Dialect,
    addr_q: Any,
    go: Any,
    result_q: Any,
    seconds: float,
    block_ms: float | None,
    accept_timeout: float,
) -> None:
    """One load process: the simulators of some chains, one thread per sentry link. Reports ("ok", ...) or
    ("error", text) on ``result_q``."""
    try:
        sims = {cid: [ValidatorSimulator(a, chain_id=cid, dialect=dialect) for a in listen[cid]] for cid in chain_ids}
        addr_q.put(("ok", {cid: [s.listen() for s in ss] for cid, ss in sims.items()}))
    except Exception as exc:  # a port in use, a bad address: the parent says which
        addr_q.put(("error", f"cannot listen: {exc}"))
        return
    go.wait()
    try:
        result_q.put(("ok", *_drive(sims, seconds, block_ms, accept_timeout)))
    except Exception as exc:
        result_q.put(("error", str(exc) or type(exc).__name__))
    finally:
        for ss in sims.values():
            for s in ss:
                s.close()


def _drive(
    sims: dict[str, list[ValidatorSimulator]], seconds: float, block_ms: float | None, accept_timeout: float
) -> tuple[list[float], dict[str, int], int, tuple[float, float, float]]:
    links = {cid: [s.accept(timeout=accept_timeout) for s in ss] for cid, ss in sims.items()}
    keys: dict[str, VerifyKey] = {}
    for cid, ls in links.items():
        pubs = {bytes(link.pubkey().pub_key) for link in ls}
        if len(pubs) != 1:
            raise HarnessError(f"the sentries of chain {cid} got {len(pubs)} different public keys", EXIT_OTHER)
        keys[cid] = VerifyKey(pubs.pop())
    latencies: list[float] = []
    per_chain = dict.fromkeys(links, 0)
    signed_all: list[tuple[str, Any, bytes]] = []
    errors: list[str] = []
    refused = 0
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    deadline = start + seconds
    # Chains do not share a clock: each gets its own phase within the block time (both of its sentries the same).
    phase = {cid: (zlib.crc32(cid.encode()) % 1000) / 1000 * (block_ms or 0) / 1000 for cid in links}

    def drive(cid: str, index: int) -> None:
        nonlocal refused
        link = links[cid][index]
        local: list[float] = []
        signed: list[tuple[str, Any, bytes]] = []
        count = bad = 0
        height = 10
        try:
            while time.monotonic() < deadline:
                if block_ms is not None:  # paced: one height per block, as a chain with that block time
                    wait = start + phase[cid] + (height - 10) * block_ms / 1000 - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                for vote_type in (PREVOTE, PRECOMMIT):
                    vote = make_vote(height, 0, vote_type, f"b{height}", timestamp=(1_700_000_000 + height, 0))
                    t0 = time.perf_counter()
                    resp = link.sign_vote(vote)
                    local.append(time.perf_counter() - t0)
                    if resp.error is not None:
                        bad += 1
                        continue
                    signed.append((cid, vote, bytes(resp.vote.signature)))
                    count += 1
                height += 1
        except Exception as exc:  # the link failed: the run is void, and says why
            with lock:
                errors.append(f"chain {cid} sentry {index + 1}: {exc}")
        with lock:
            signed_all.extend(signed)
            latencies.extend(local)
            per_chain[cid] += count
            refused += bad

    threads = [threading.Thread(target=drive, args=(cid, i)) for cid in links for i in range(len(links[cid]))]
    began, cpu_began = time.monotonic(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = (began, time.monotonic(), time.process_time() - cpu_began)
    for link in (link for ls in links.values() for link in ls):
        link.close()
    if errors:
        raise HarnessError(errors[0], EXIT_OTHER)
    # Verified after the run: a node checks its votes on its own machine, not on the cores that these simulated
    # sentries share with the signer here.
    for cid, vote, signature in signed_all:
        verify_signature(keys[cid], vote_sign_bytes(cid, vote), signature, f"chain {cid}: vote", vote.height)
    return latencies, per_chain, refused, window


def starved_chains(signed: dict[str, int]) -> list[str]:
    """The chains that got less than half as many signatures as the median chain, in the order given."""
    counts = sorted(signed.values())
    median = counts[len(counts) // 2] if counts else 0
    return [cid for cid, count in signed.items() if count < median / 2]


def _get(q: Any, timeout: float, what: str) -> Any:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise HarnessError(f"{what} within {timeout:.0f} s", EXIT_OTHER) from None


def run_concurrent(
    listen: dict[str, list[str]],
    seconds: float,
    *,
    on_listening: Callable[[dict[str, list[str]]], int | None],
    dialect: Dialect = Dialect.V0_38,
    block_ms: float | None = None,
    workers: int = 4,
    accept_timeout: float = 60.0,
) -> ConcurrentResult:
    """Listen on ``listen`` (chain id -> one address per sentry), call ``on_listening`` with the bound addresses
    (it starts or points the signer there, and may return its process id for CPU figures), drive the load for
    ``seconds``, and return the figures. Raises HarnessError if a listener, a link or a signature fails."""
    ctx = multiprocessing.get_context("fork")
    ids = list(listen)
    groups = [ids[i::workers] for i in range(max(1, workers)) if ids[i::workers]]
    addr_q, result_q, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=_worker,
            args=(g, listen, dialect, addr_q, go, result_q, seconds, block_ms, accept_timeout),
            daemon=True,
        )
        for g in groups
    ]
    for p in procs:
        p.start()
    try:
        bound: dict[str, list[str]] = {}
        for _ in procs:
            status, payload = _get(addr_q, 30, "a load process did not start listening")
            if status != "ok":
                raise HarnessError(payload, EXIT_OTHER)
            bound.update(payload)
        signer_pid = on_listening({cid: bound[cid] for cid in ids})
        samples: list[tuple[float, CpuUse | None]] = []
        sampling = threading.Event()

        def sample(pid: int) -> None:  # the signer's CPU over time, to cut out the window in which the load ran
            while not sampling.wait(0.1):
                samples.append((time.monotonic(), process_cpu(pid)))

        sampler = threading.Thread(target=sample, args=(signer_pid,), daemon=True)
        if signer_pid is not None:
            sampler.start()
        go.set()
        latencies: list[float] = []
        per_chain: dict[str, int] = {}
        refused = 0
        windows = []
        for _ in procs:
            status, *payload = _get(result_q, seconds + accept_timeout + 60, "a load process did not report")
            if status != "ok":
                raise HarnessError(payload[0], EXIT_OTHER)
            lat, counts, bad, window = payload
            latencies.extend(lat)
            per_chain.update(counts)
            refused += bad
            windows.append(window)
        sampling.set()
        if sampler.is_alive():
            sampler.join()
    finally:
        go.set()  # a worker still waiting for the signer ends (its accept times out or its links close)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    if not latencies:
        raise HarnessError("no request was answered", EXIT_OTHER)
    # The signer's CPU per request over the window in which every load process was driving.
    begin, end = max(w[0] for w in windows), min(w[1] for w in windows)
    inside = [(t, c) for t, c in samples if begin <= t <= end]
    signer_cpu = None
    if len(inside) >= 2:
        span = inside[-1][0] - inside[0][0]
        signer_cpu = cpu_per_request(inside[0][1], inside[-1][1], round(len(latencies) * span / seconds))
    ordered = sorted(latencies)
    rates = sorted(per_chain[cid] / seconds for cid in ids)
    return ConcurrentResult(
        chains=len(ids),
        sentries=max(len(a) for a in listen.values()),
        mode=f"paced, one height every {block_ms:g} ms" if block_ms else "closed loop, full speed",
        seconds=seconds,
        requests=len(ordered),
        p50_ms=percentile(ordered, 50) * 1e3,
        p99_ms=percentile(ordered, 99) * 1e3,
        max_ms=ordered[-1] * 1e3,
        signed_per_s=sum(per_chain.values()) / seconds,
        slowest_chain_per_s=rates[0],
        fastest_chain_per_s=rates[-1],
        refused=refused,
        per_chain=per_chain,
        load_cpu_us=sum(w[2] for w in windows) / len(latencies) * 1e6,
        starved=starved_chains({cid: per_chain[cid] for cid in ids}),
        signer_cpu=signer_cpu,
    )


def format_concurrent(result: ConcurrentResult, *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(asdict(result), indent=2)
    lines = [
        f"{result.chains} chains x {result.sentries} sentries, {result.mode}, {result.seconds:g} s",
        f"requests {result.requests}  p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms  "
        f"max {result.max_ms:.3f} ms",
        f"signed/s {result.signed_per_s:.0f}  per chain: slowest {result.slowest_chain_per_s:.1f}/s, fastest "
        f"{result.fastest_chain_per_s:.1f}/s  refused {result.refused} (a sentry asking for a step its twin "
        "already passed)",
        "starved (under half the median chain's rate): " + (", ".join(result.starved) or "none"),
        f"load generators {result.load_cpu_us:.0f} µs CPU per request",
    ]
    if result.signer_cpu is not None:
        lines.append(f"signer {format_cpu(result.signer_cpu)}")
    return "\n".join(lines)
