"""pykms performance figures, measured on this machine with a real ``pykms start`` process (``scripts/bench``).

1. single chain: sequential signing requests through the validator simulator over TCP + SecretConnection,
   with CometBFT's JSON state file (temp + fsync + rename + dir fsync) and with the default config (a new
   state is slots: one fdatasync), then the default config with vote extensions: the run the targets are stated
   for, printed against the ideal signer of the same run (p50, p99) and the CPU budget per request, beside the
   smallest conforming signer of the same run (``pykms.harness.bench``);
2. 20 chains x 2 sentries signing concurrently at full speed: p50/p99 over all requests and the slowest
   chain's throughput (no chain may starve);
3. start-up to first signature: from spawning ``pykms start`` to the first verified signature.

Usage: scripts/bench [-n 3000] [--chains 20] [--sentries 2] [--seconds 10] [--only target] [--json]
(``--only target``: just the default config's single-chain run with extensions, against the targets)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from pykms.harness.bench import (
    conforming_signer_run,
    cpu_per_request,
    format_cpu,
    format_references,
    format_result,
    format_targets,
    ideal_signer_run,
    measure_floor,
    percentile,
    process_cpu,
    run_sequence,
    start_ideal_signer,
    summarize,
)
from pykms.harness.demo import start_pykms, stop_pykms, write_demo_home, write_multichain_home
from pykms.harness.load import format_concurrent, run_concurrent
from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes


def single(home: Path, n: int, state_format: str | None, extensions: bool) -> dict[str, Any]:
    """Sequential requests to one chain; ``state_format`` None is the default config (nothing about the state
    format in tmkms.toml), whose run with extensions is the one the targets are stated for: there the smallest
    conforming signer is measured too."""
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="bench-1", dialect=Dialect.V0_38)
    config = write_demo_home(home, sim.listen(), chain_id="bench-1", state_format=state_format)
    proc = start_pykms(config, home / "pykms.log")
    try:
        link = sim.accept(timeout=20)
        pub = link.pubkey().pub_key
        run_sequence(link, 200, start_height=1, pubkey=pub)  # warm-up
        fsync_s, sign_s = measure_floor(home)
        cpu_before = process_cpu(proc.pid)
        started = time.perf_counter()
        lat = run_sequence(link, n, start_height=1000, extensions=extensions, pubkey=pub)
        wall = time.perf_counter() - started
        cpu = cpu_per_request(cpu_before, process_cpu(proc.pid), n)
        link.close()
    finally:
        stop_pykms(proc)
        sim.close()
    ideal = ideal_signer_run(home, min(n, 3000))
    result = summarize(lat, fsync_s, sign_s, wall, ideal.latencies)
    config_name = (
        "default config (state format auto: slots)" if state_format is None else f"state_format={state_format}"
    )
    print(f"\n== single chain, {config_name}, prevote+precommit{' with extensions' if extensions else ''}, n={n}")
    print(format_result(result))
    print(f"pykms           {format_cpu(cpu)}")
    figures = {**result.__dict__, "pykms_cpu": cpu, "ideal_cpu": ideal.cpu}
    if state_format is None and extensions:
        print(format_targets(result, cpu))
        conforming = conforming_signer_run(home, n)
        rows = [
            ("ideal signer", ideal.latencies, ideal.cpu),
            ("smallest conforming signer", conforming.latencies, conforming.cpu),
            ("pykms", lat, cpu),
        ]
        print(format_references(rows))
        ordered = sorted(conforming.latencies)
        figures["conforming"] = {
            "p50_ms": percentile(ordered, 50) * 1e3,
            "p99_ms": percentile(ordered, 99) * 1e3,
            "cpu": conforming.cpu,
        }
    return figures


def concurrent(
    home: Path, chains: int, sentries: int, seconds: float, workers: int, block_ms: float | None
) -> dict[str, Any]:
    """M chains x N sentries against one pykms, through the harness's concurrent load (pykms.harness.load)."""
    procs: list[subprocess.Popen[bytes]] = []
    home.mkdir(parents=True, exist_ok=True)

    def start(bound: dict[str, list[str]]) -> int:
        config = write_multichain_home(home, bound)
        procs.append(start_pykms(config, home / "pykms.log"))
        return procs[0].pid

    listen = {f"bench-{c}": ["tcp://127.0.0.1:0"] * sentries for c in range(chains)}
    try:
        result = run_concurrent(listen, seconds, on_listening=start, block_ms=block_ms, workers=workers)
    finally:
        for proc in procs:
            stop_pykms(proc)
    print(f"\n== {format_concurrent(result)}")
    if result.signer_cpu is not None:
        per_request = result.signer_cpu["user_us"] + result.signer_cpu["sys_us"] + result.load_cpu_us
        print(
            f"machine: {per_request:.0f} µs CPU per request in all -> at most "
            f"{(os.cpu_count() or 1) / per_request * 1e6:.0f} requests/s on {os.cpu_count()} cores"
        )
    return asdict(result)


def _ideal_load(port: int, chains: list[int], sentries: int, seconds: float, result_q: Any) -> None:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def drive(chain: int) -> None:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(bytes([chain]))
        local, height = [], 0
        while time.monotonic() < deadline:
            message = height.to_bytes(8, "little") * 15  # a vote's sign bytes are ~120 bytes
            height += 1
            t0 = time.perf_counter()
            conn.sendall(message)
            conn.recv(64)
            local.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=drive, args=(c,)) for c in chains for _ in range(sentries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result_q.put(latencies)


def ideal_concurrent(home: Path, chains: int, sentries: int, seconds: float, workers: int) -> dict[str, Any]:
    """The closed loop of ``concurrent`` against the ideal signer (raw TCP, from as many load processes): what
    this machine can do for that load at all, the bound for pykms's closed-loop figures."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    home.mkdir(parents=True, exist_ok=True)
    result_q = ctx.Queue()
    server, port = start_ideal_signer(home, chains, os.urandom(32))
    groups = [list(range(chains))[i::workers] for i in range(workers) if list(range(chains))[i::workers]]
    procs = [ctx.Process(target=_ideal_load, args=(port, g, sentries, seconds, result_q)) for g in groups]
    for p in procs:
        p.start()
    # The signer's CPU while every connection is open (its threads' switch counts leave /proc with them).
    margin = min(1.0, seconds / 4)
    time.sleep(margin)
    cpu_before, t_before = process_cpu(server.pid or 0), time.monotonic()
    time.sleep(seconds - 2 * margin)
    cpu_after, t_after = process_cpu(server.pid or 0), time.monotonic()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(result_q.get(timeout=seconds + 60))
    for p in procs:
        p.join()
    cpu = cpu_per_request(cpu_before, cpu_after, round(len(latencies) * (t_after - t_before) / seconds))
    server.kill()
    ordered = sorted(latencies)
    out: dict[str, Any] = {
        "requests": len(ordered),
        "per_s": len(ordered) / seconds,
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }
    print(
        f"\n== ideal signer (a thread per connection), {chains} chains x {sentries} sentries, closed loop, "
        f"{seconds:.0f} s, {len(groups)} load processes (raw TCP: one signature + one fdatasync per request; "
        "the machine's bound)"
    )
    print(
        f"requests {out['requests']}  p50 {out['p50_ms']:.3f} ms  p99 {out['p99_ms']:.3f} ms  "
        f"max {out['max_ms']:.3f} ms  ({out['per_s']:.0f} requests/s)"
    )
    print(f"ideal signer {format_cpu(cpu)}")
    out["signer_cpu"] = cpu
    return out


def startup(home: Path) -> dict[str, float]:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="bench-start", dialect=Dialect.V0_38)
    config = write_demo_home(home, sim.listen(), chain_id="bench-start")
    t0 = time.perf_counter()
    proc = start_pykms(config, home / "pykms.log")
    try:
        link = sim.accept(timeout=20)
        t_connect = time.perf_counter() - t0
        pub = link.pubkey().pub_key
        vote = make_vote(1, 0, PREVOTE, b"x")
        resp = link.sign_vote(vote)
        VerifyKey(pub).verify(vote_sign_bytes("bench-start", vote), bytes(resp.vote.signature))
        t_first = time.perf_counter() - t0
        link.close()
    finally:
        stop_pykms(proc)
        sim.close()
    print(
        f"\n== start-up: connected after {t_connect * 1e3:.0f} ms, first verified signature after "
        f"{t_first * 1e3:.0f} ms"
    )
    return {"connect_ms": t_connect * 1e3, "first_signature_ms": t_first * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--sentries", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=4, help="load-generating processes")
    parser.add_argument(
        "--block-ms",
        type=float,
        nargs="+",
        default=[100.0, 50.0, 20.0],
        help="block times of the paced runs (default 100 50 20)",
    )
    parser.add_argument("--only", choices=("single", "target", "concurrent", "ideal", "startup"), default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=".", help="where the state files go (the disk measured)")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    results = {}
    with tempfile.TemporaryDirectory(prefix=".pykms-bench-", dir=args.dir) as d:
        base = Path(d)
        if args.only in (None, "single"):
            results["single_json"] = single(base / "json", args.n, "json", False)
            results["single_default"] = single(base / "default", args.n, None, False)
        if args.only in (None, "single", "target"):
            results["single_default_ext"] = single(base / "ext", args.n, None, True)
        if args.only in (None, "concurrent"):
            results["concurrent_full"] = concurrent(
                base / "multi", args.chains, args.sentries, args.seconds, args.workers, None
            )
            for block_ms in args.block_ms:
                results[f"concurrent_paced_{block_ms:g}ms"] = concurrent(
                    base / f"paced-{block_ms:g}", args.chains, args.sentries, args.seconds, args.workers, block_ms
                )
        if args.only in (None, "ideal"):
            results["ideal_concurrent"] = ideal_concurrent(
                base / "ideal", args.chains, args.sentries, args.seconds, args.workers
            )
        if args.only in (None, "startup"):
            results["startup"] = startup(base / "start")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
