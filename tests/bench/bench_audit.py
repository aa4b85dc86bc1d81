"""Benchmark: what the audit log adds to signing latency, through a real pykms process and the validator simulator.

Usage: python tests/bench/bench_audit.py [-n 3000] [--rounds 3] [--dir DIR] [--state-format json|slots]

For each round, three signer processes in turn (so drift in the machine hits every variant alike): no audit log,
``audit_sync = "always"`` (a preallocated file, one fdatasync per record before the reply) and ``"batch"`` (write
before the reply, fdatasync every 100 ms). Each signs ``n`` prevote/precommit requests over TCP +
SecretConnection, every signature verified (``pykms.harness.bench.run_sequence``, the code behind
``pykms-signer-harness bench``). Prints p50/p99 per variant over all rounds and the p50 overhead against no audit.

The signer is ``pykms start``'s own code path (load_config, Runtime.build, run_forever) in a child process, the
audit sync mode written into its config (``audit_sync``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from pykms.harness.bench import measure_floor, percentile, run_sequence
from pykms.harness.demo import write_demo_home
from pykms.harness.simulator import ValidatorSimulator
from pykms.privval.codec import Dialect

CHAIN = "bench-audit"
VARIANTS = ("none", "always", "batch")


def serve(config: Path, sync: str) -> int:
    """The child: ``pykms start`` (the sync mode is in the config)."""
    from pykms.config import load_config
    from pykms.logconfig import configure_logging
    from pykms.runtime import Runtime

    configure_logging("json")
    runtime = Runtime(load_config(config))
    runtime.build()
    return runtime.run_forever()


def one_run(home: Path, variant: str, n: int, state_format: str) -> list[float]:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    config = write_demo_home(home, sim.listen(), chain_id=CHAIN, state_format=state_format)
    if variant != "none":
        text = config.read_text()
        text = text.replace(
            "[[providers.softsign]]",
            f'audit_log = "{home / "audit.log"}"\naudit_sync = "{variant}"\n\n[[providers.softsign]]',
        )
        config.write_text(text)
    with open(home / "pykms.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(config), "--sync", "always" if variant == "none" else variant],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        link = sim.accept(timeout=30)
        pub = link.pubkey().pub_key
        run_sequence(link, 200, start_height=1, pubkey=pub)  # warm-up
        latencies = run_sequence(link, n, start_height=1000, pubkey=pub)
        link.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        sim.close()
    if variant != "none":
        from pykms.audit import summarize, verify_files

        assert verify_files([home / "audit.log"]).ok
        assert sum(summarize([home / "audit.log"]).signatures.values()) == n + 200
    return latencies


def inproc(directory: Path, n: int, state_format: str) -> None:
    """The audit log's cost inside pykms, without the network: the real handler, guard and audit log in this
    process, one chain per variant, the variants interleaved request by request so a busy machine hits each alike.
    """
    import hashlib

    from pykms.audit import AuditLog
    from pykms.guard.backend import FileGuard
    from pykms.guard.state import SignState
    from pykms.guard.store import JsonStateStore, SlotStateStore
    from pykms.handler import RequestHandler
    from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_vote
    from pykms.keyholder.local import LocalKeyHolder
    from pykms.privval import codec
    from pykms.providers.softsign import SoftsignSigner

    store_cls = JsonStateStore if state_format == "json" else SlotStateStore
    handlers = {}
    keyholders = []
    for variant in VARIANTS:
        home = directory / f"inproc-{variant}"
        home.mkdir()
        store = store_cls.create(home / "state", SignState.initial())
        log = None
        if variant != "none":
            log = AuditLog(home / "audit.log", CHAIN, sync=variant)  # type: ignore[arg-type]
        keyholder = LocalKeyHolder()
        keyholders.append(keyholder)
        keyholder.add(CHAIN, SoftsignSigner(SigningKey(hashlib.sha256(b"b").digest())), FileGuard(CHAIN, store), log)
        handlers[variant] = RequestHandler(keyholder, keyholder.chains()[CHAIN], Dialect.V0_38, chain_id=CHAIN)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sink: list[bytes] = []
    for i in range(n + 100):
        height, vote_type = 1 + i // 2, (PREVOTE, PRECOMMIT)[i % 2]
        body = codec.encode_request(
            Dialect.V0_38, codec.SignVoteRequest(vote=make_vote(height, 0, vote_type, f"b{height}"), chain_id=CHAIN)
        )
        for variant in VARIANTS[i % 3 :] + VARIANTS[: i % 3]:  # rotate who goes first
            started = time.perf_counter()
            handlers[variant].handle(body, sink.append)
            if i >= 100:  # warm-up
                times[variant].append(time.perf_counter() - started)
        sink.clear()
    for keyholder in keyholders:
        keyholder.close()  # its guard, audit log and signer
    base = percentile(sorted(times["none"]), 50)
    print(f"in-process handler (decode, sign, state_format={state_format}, audit), {n} requests per variant:")
    for variant in VARIANTS:
        ordered = sorted(times[variant])
        p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
        extra = "" if variant == "none" else f"  p50 +{(p50 - base) * 1e3:.3f} ms"
        print(f"  audit={variant:<7} p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms{extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=".", help="where state and audit files go (the disk measured)")
    parser.add_argument("--state-format", choices=("json", "slots"), default="json")
    parser.add_argument("--inproc", action="store_true", help="also time the handler in-process, interleaved")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sync", default="always", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve, args.sync)
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix=".pykms-bench-audit-", dir=args.dir) as d:
        d = str(Path(d).resolve())  # the config wants absolute paths
        fsync_s, sign_s = measure_floor(Path(d))
        if args.inproc:
            inproc(Path(d), args.n, args.state_format)
            if args.rounds == 0:
                return 0
        for r in range(args.rounds):
            for variant in VARIANTS:
                results[variant] += one_run(Path(d) / f"{variant}-{r}", variant, args.n, args.state_format)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; state_format={args.state_format}; "
          f"{args.rounds} x {args.n} requests per variant; fdatasync floor {fsync_s * 1e3:.3f} ms, "
          f"Ed25519 sign {sign_s * 1e3:.3f} ms")  # fmt: skip
    base = percentile(sorted(results["none"]), 50)
    for variant in VARIANTS:
        ordered = sorted(results[variant])
        p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
        extra = "" if variant == "none" else f"  p50 {(p50 / base - 1) * 100:+.1f}% vs no audit"
        print(
            f"audit={variant:<7} p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms  max {ordered[-1] * 1e3:.3f} ms{extra}"
        )
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    sys.exit(code)
