"""What the key holder split costs: ``isolation = "none"`` against ``"process"``, side by side in one run.

1. single chain: sequential prevote/precommit requests through the validator simulator (TCP + SecretConnection)
   to a real ``pykms start``, each mode in turn, ``--runs`` times, alternating which goes first; p50/p99 per run
   and the p50 difference (the extra hop);
2. ``--chains`` x ``--sentries`` signing concurrently at full speed (pykms.harness.load), both ways.

The pykms CPU figure sums every process of the ``pykms start`` tree (the supervisor, the key holder and the front
when split), from after start-up (the front's ``pykms_started`` log line) to the end of the load.

Usage: python -m pykms.harness.bench_isolation [-n 3000] [--runs 3] [--chains 20] [--sentries 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pykms.harness.bench import percentile, process_cpu, run_sequence
from pykms.harness.demo import start_pykms, stop_pykms, write_demo_home, write_multichain_home
from pykms.harness.load import format_concurrent, run_concurrent
from pykms.harness.simulator import ValidatorSimulator
from pykms.privval.codec import Dialect

MODES = ("none", "process")


def set_mode(config: Path, mode: str) -> Path:
    """Append the ``[keyholder]`` table that chooses ``mode`` to a demo home's config."""
    with open(config, "a") as out:
        out.write(f'\n[keyholder]\nisolation = "{mode}"\n')
    return config


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and every process under it (/proc/PID/task/*/children)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        use = process_cpu(current)
        if use is not None:
            total += use[0] + use[1]
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(x) for x in task.read_text().split()]
    return total


def wait_started(log: Path, since: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until the front logs ``pykms_started`` after byte ``since`` of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pykms exited with {proc.returncode}; see {log}")
        with open(log, "rb") as f:
            f.seek(since)
            if b"pykms_started" in f.read():
                return
        time.sleep(0.02)
    raise RuntimeError(f"pykms did not start within {timeout:g} s; see {log}")


def single(home: Path, mode: str, n: int) -> dict[str, float]:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="bench-1", dialect=Dialect.V0_38)
    config = set_mode(write_demo_home(home, sim.listen(), chain_id="bench-1", state_format="slots"), mode)
    log = home / "pykms.log"
    proc = start_pykms(config, log, user_namespace=True)
    try:
        link = sim.accept(timeout=30)
        pub = link.pubkey().pub_key
        run_sequence(link, 200, start_height=1, pubkey=pub)  # warm-up
        cpu_before = tree_cpu(proc.pid)
        lat = sorted(run_sequence(link, n, start_height=1000, pubkey=pub))
        cpu = (tree_cpu(proc.pid) - cpu_before) / n * 1e6
        link.close()
    finally:
        stop_pykms(proc)
        sim.close()
    return {"p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6, "cpu_us": cpu}


def concurrent(home: Path, mode: str, chains: int, sentries: int, seconds: float) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    baseline: list[float] = []
    log = home / "pykms.log"

    def start(bound: dict[str, list[str]]) -> None:
        config = set_mode(write_multichain_home(home, bound, state_format="slots"), mode)
        since = log.stat().st_size if log.exists() else 0
        procs.append(start_pykms(config, log, user_namespace=True))
        wait_started(log, since, procs[0])
        baseline.append(tree_cpu(procs[0].pid))

    listen = {f"bench-{c}": ["tcp://127.0.0.1:0"] * sentries for c in range(chains)}
    try:
        result = run_concurrent(listen, seconds, on_listening=start)
        cpu_s = tree_cpu(procs[0].pid) - baseline[0]
    finally:
        for proc in procs:
            stop_pykms(proc)
    print(f"\n== isolation = {mode!r}: {format_concurrent(result)}")
    rate = result.requests / result.seconds
    cpu_us = cpu_s / max(result.requests, 1) * 1e6
    print(f"pykms (all its processes): {cpu_us:.0f} µs CPU per request, {cpu_s / result.seconds:.2f} cores busy")
    return {
        "requests_per_s": rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_us": cpu_us,
        "cores": cpu_s / result.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykms.harness.bench_isolation", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="requests per single-chain run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--sentries", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-concurrent", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"single": {m: [] for m in MODES}, "concurrent": {}}
    with tempfile.TemporaryDirectory(prefix="pykms-bench-iso-") as tmp:
        root = Path(tmp)
        print(f"== single chain, slots, prevote+precommit, n={args.n}, {args.runs} runs (µs)")
        for run in range(args.runs):
            order = MODES if run % 2 == 0 else MODES[::-1]
            row = {m: single(root / f"single-{run}-{m}", m, args.n) for m in order}
            for m in MODES:
                figures["single"][m].append(row[m])
            delta = row["process"]["p50_us"] - row["none"]["p50_us"]
            cells = [
                f"{m}: p50 {row[m]['p50_us']:.0f} p99 {row[m]['p99_us']:.0f} cpu {row[m]['cpu_us']:.0f}" for m in MODES
            ]
            print(" | ".join(cells) + f" | extra hop p50 {delta:+.0f}")
        deltas = [p["p50_us"] - n["p50_us"] for n, p in zip(*figures["single"].values(), strict=True)]
        figures["single_extra_p50_us"] = statistics.median(deltas)
        print(f"extra hop at p50, median of {args.runs} runs: {figures['single_extra_p50_us']:+.0f} µs (budget +80)")
        if not args.skip_concurrent:
            for m in MODES:
                figures["concurrent"][m] = concurrent(root / f"conc-{m}", m, args.chains, args.sentries, args.seconds)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
