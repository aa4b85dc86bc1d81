"""Signer benchmark: sequential signing requests from the validator side, verified, with latency figures.

The floor is what no signer can beat on this machine with the same durability: one flush of a small file to
stable storage (fdatasync, in the directory given, default the current one) plus one Ed25519 signature,
measured in the same run, before and after the timed requests (the lower median of the two is kept).
``p50 / floor`` says how much a signer adds on top of that.

The floor leaves out what every networked signer also pays: the round trip between two processes, and the
wake-ups of a thread that slept while waiting (for the request, for the flush). Two reference signers, each in
its own process and measured in the same run as pykms, put numbers on that:

* the **ideal signer** (``ideal_signer``): one recv, one signature, one pwrite + fdatasync, one send of the bare
  signature over loopback TCP; no encryption, no protobuf, no guard logic. No signer can be faster on this
  machine, so its ratio to the floor is the best ratio this machine allows;
* the **smallest conforming signer** (``conforming_signer``): what the protocol and the safety rules oblige every
  signer to do, and nothing more: a real SecretConnection (handshake, every frame sealed and opened), protobuf
  decode of the request and encode of the response, canonical sign bytes, every signature verified before it
  leaves (a precommit's vote extension signed and verified too), one pwrite + fdatasync of the record. No guard
  logic beyond writing the record, no logging, no metrics, no threads. It is driven by ``run_sequence``, as pykms.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pykms.errors import HarnessError
from pykms.harness.simulator import PRECOMMIT, PREVOTE, SignerLink, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import (
    MAX_REQUEST_BYTES,
    Dialect,
    MessageReader,
    SignedProposalResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
    decode_request,
    delimit,
    encode_signed_proposal,
    encode_signed_vote,
)
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.signer import verify_or_raise
from pykms.secretconn.sync import secret_connection_sync, set_kernel_timeouts


@dataclass(frozen=True)
class BenchResult:
    requests: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    signatures_per_s: float
    floor_ms: float
    fsync_ms: float
    sign_ms: float
    p50_over_floor: float
    p99_over_floor: float
    #: The ideal signer of the same run (module doc), when measured.
    ideal_p50_ms: float | None = None
    ideal_p99_ms: float | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list: the smallest value with at least q% at or below it."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def measure_floor(directory: Path, samples: int = 300) -> tuple[float, float]:
    """Median seconds of one fdatasync of a small file in ``directory``, and of one Ed25519 signature."""
    fd, name = tempfile.mkstemp(prefix=".pykms-floor-", dir=directory)
    try:
        os.write(fd, b"\0" * 256)
        os.fsync(fd)
        flushes = []
        for i in range(samples):
            os.pwrite(fd, i.to_bytes(8, "little") * 16, 0)
            start = time.perf_counter()
            os.fdatasync(fd)
            flushes.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(name)
    key = SigningKey.generate()
    message = b"\x77" * 120  # the size of a vote's sign bytes
    signs = []
    for _ in range(samples):
        start = time.perf_counter()
        key.sign(message)
        signs.append(time.perf_counter() - start)
    return statistics.median(flushes), statistics.median(signs)


#: (user seconds, system seconds, context switches) of a process, all its threads included.
CpuUse = tuple[float, float, int]


def process_cpu(pid: int) -> CpuUse | None:
    """What process ``pid`` and its threads have used so far, from /proc (Linux); None where there is no /proc.

    Read from outside the process, so a benchmark can account for a signer it only talks to."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        switches = 0
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary and nonvoluntary
                    switches += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, switches


def cpu_per_request(before: CpuUse | None, after: CpuUse | None, requests: int) -> dict[str, float] | None:
    """Microseconds of user and system CPU, and context switches, per request between two ``process_cpu``."""
    if before is None or after is None or requests <= 0:
        return None
    return {
        "user_us": (after[0] - before[0]) / requests * 1e6,
        "sys_us": (after[1] - before[1]) / requests * 1e6,
        "switches": (after[2] - before[2]) / requests,
    }


def format_cpu(cpu: dict[str, float] | None) -> str:
    if cpu is None:
        return "CPU n/a (no /proc)"
    total = cpu["user_us"] + cpu["sys_us"]
    return (
        f"{total:.0f} µs CPU per request (user {cpu['user_us']:.0f}, system {cpu['sys_us']:.0f}), "
        f"{cpu['switches']:.1f} context switches"
    )


class IdealSlotFile:
    """A reference signer's state: a preallocated file whose two 4 KiB slots are overwritten in turn, as the slot
    store does, and flushed with one fdatasync; nothing else (no checksum, no encoding)."""

    BLOCK = 4096

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(self.fd, b"\0" * 3 * self.BLOCK)
        os.fsync(self.fd)
        self._count = 0

    def write(self, record: bytes) -> None:
        """Overwrite the older slot with ``record`` and flush it to stable storage."""
        self._count += 1
        os.pwrite(self.fd, record, self.BLOCK * (1 + self._count % 2))
        os.fdatasync(self.fd)


def ideal_signer(directory: str, chains: int, seed: bytes, port_q: Any) -> None:
    """Child process, until killed: the smallest signer of ``chains`` chains (module doc). A thread per connection,
    whose first byte names its chain; per request one signature, one pwrite + fdatasync into the chain's two-slot
    file under the chain's lock, one send of the bare signature."""
    key = SigningKey(seed)
    server = socket.create_server(("127.0.0.1", 0))
    port_q.put(server.getsockname()[1])
    locks = [threading.Lock() for _ in range(chains)]
    states = [IdealSlotFile(os.path.join(directory, f"chain-{c}")) for c in range(chains)]

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chain = conn.recv(1)[0]
        while message := conn.recv(4096):
            signature = key.sign(message).signature
            with locks[chain]:
                states[chain].write(signature + message)
            conn.sendall(signature)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def start_ideal_signer(directory: Path, chains: int, seed: bytes) -> tuple[BaseProcess, int]:
    """``ideal_signer`` in a fresh process with key ``seed``, state files in ``directory``; returns it and its
    port (kill it when done)."""
    ctx = multiprocessing.get_context("spawn")
    port_q = ctx.Queue()
    child = ctx.Process(target=ideal_signer, args=(str(directory), chains, seed, port_q), daemon=True)
    child.start()
    return child, port_q.get(timeout=30)


@dataclass(frozen=True)
class ReferenceRun:
    """Latencies (s) of a reference signer, and its CPU per request (``cpu_per_request``) over them."""

    latencies: list[float]
    cpu: dict[str, float] | None


def ideal_signer_run(directory: Path, n: int = 2000) -> ReferenceRun:
    """``n`` requests to the ideal signer (module doc) over one loopback TCP connection.

    Each 120-byte request (a vote's sign bytes) is answered by its signature, which is verified between
    requests as the benchmark verifies a real signer's: the client does the same work in the same rhythm.
    """
    seed = os.urandom(32)
    verify = SigningKey(seed).verify_key
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix=".pykms-ideal-", dir=directory) as home:
        child, port = start_ideal_signer(Path(home), 1, seed)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                set_kernel_timeouts(conn, 10)  # as the validator simulator's links: no poll before each call
                conn.sendall(b"\0")  # chain 0
                before = process_cpu(child.pid or 0)
                for i in range(n):
                    message = i.to_bytes(8, "little") * 15
                    start = time.perf_counter()
                    conn.sendall(message)
                    signature = conn.recv(64, socket.MSG_WAITALL)
                    latencies.append(time.perf_counter() - start)
                    verify.verify(message, signature)  # a short or wrong answer raises
                cpu = cpu_per_request(before, process_cpu(child.pid or 0), n)
        finally:
            child.kill()
            child.join()
    return ReferenceRun(latencies, cpu)


def measure_ideal_signer(directory: Path, n: int = 2000) -> list[float]:
    """The latencies of ``ideal_signer_run`` (what ``pykms-signer-harness bench --ideal`` prints beside a signer)."""
    return ideal_signer_run(directory, n).latencies


def _signed(key: SigningKey, message: bytes) -> bytes:
    signature = key.sign(message).signature
    verify_or_raise(key.verify_key.encode(), message, signature, "softsign")  # pykms's own check, before it is stored
    return signature


def _conforming_reply(key: SigningKey, state: IdealSlotFile, request: Any) -> bytes:
    """One request's mandatory work (v0.38): sign bytes, sign, verify (the extension too), persist, encode."""
    if isinstance(request, SignProposalRequest):
        sign_bytes = proposal_sign_bytes(request.chain_id, request.proposal)
        request.proposal.signature = _signed(key, sign_bytes)
        state.write(request.proposal.signature + sign_bytes)
        return encode_signed_proposal(Dialect.V0_38, request.proposal)
    if not isinstance(request, SignVoteRequest):
        raise HarnessError(f"the conforming signer does not answer a {type(request).__name__}", EXIT_OTHER)
    vote = request.vote
    sign_bytes = vote_sign_bytes(request.chain_id, vote)
    vote.signature = _signed(key, sign_bytes)
    if vote.type == PRECOMMIT and vote.block_id.hash:  # v0.38: every non-nil precommit, as FilePV
        vote.extension_signature = _signed(key, vote_extension_sign_bytes(request.chain_id, vote))
    state.write(vote.signature + sign_bytes)
    return encode_signed_vote(Dialect.V0_38, vote)


def conforming_signer(port: int, directory: str, seed: bytes) -> None:
    """Child process: the smallest conforming signer (module doc). Dials the validator simulator on ``port``
    as pykms does and answers until the connection closes."""
    key = SigningKey(seed)
    reader = MessageReader(MAX_REQUEST_BYTES)
    state = IdealSlotFile(os.path.join(directory, "state"))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = secret_connection_sync(sock, SigningKey.generate())
        while data := stream.recv():
            for body in reader.feed(data):
                stream.send(delimit(_conforming_reply(key, state, decode_request(Dialect.V0_38, body))))


def conforming_signer_run(directory: Path, n: int) -> ReferenceRun:
    """The smallest conforming signer driven as ``scripts/bench`` drives pykms in the targeted run: 200 warm-up
    requests, then ``n`` prevotes and precommits with extensions, every signature verified by ``run_sequence``."""
    seed = os.urandom(32)
    pub = bytes(SigningKey(seed).verify_key)
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="bench-conforming", dialect=Dialect.V0_38)
    port = int(sim.listen().rsplit(":", 1)[1])
    with tempfile.TemporaryDirectory(prefix=".pykms-conforming-", dir=directory) as home:
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=conforming_signer, args=(port, home, seed), daemon=True)
        child.start()
        try:
            link = sim.accept(timeout=30)
            run_sequence(link, 200, start_height=1, pubkey=pub)
            before = process_cpu(child.pid or 0)
            latencies = run_sequence(link, n, start_height=1000, extensions=True, pubkey=pub)
            cpu = cpu_per_request(before, process_cpu(child.pid or 0), n)
            link.close()
        finally:
            sim.close()
            child.join(10)
            child.kill()
    return ReferenceRun(latencies, cpu)


def lower_floor(*floors: tuple[float, float]) -> tuple[float, float]:
    """The lowest of floors measured before and after a run: the machine's cost, not a neighbour's burst of I/O
    that happened to coincide with one measurement (the floor is what no signer can beat)."""
    return min(f[0] for f in floors), min(f[1] for f in floors)


def run_sequence(
    link: SignerLink,
    n: int,
    *,
    start_height: int,
    proposal: bool = False,
    extensions: bool = False,
    pubkey: bytes | None = None,
) -> list[float]:
    """Send ``n`` signing requests at increasing heights; verify each signature; return latencies (s).

    Votes alternate prevote/precommit at each height (precommits carry an extension when ``extensions``);
    with ``proposal`` each height starts with a proposal. Each signature is verified over the sign bytes of the
    request sent (not of what the signer echoes); a refusal or a bad signature is a HarnessError (exit code 7),
    a broken link a ProtocolError.
    """
    if pubkey is None:
        pubkey = link.pubkey().pub_key
    verify = VerifyKey(pubkey)
    chain_id = link.chain_id
    latencies: list[float] = []
    height = start_height
    kinds = (["proposal"] if proposal else []) + ["prevote", "precommit"]
    while len(latencies) < n:
        for kind in kinds:
            if len(latencies) >= n:
                break
            if kind == "proposal":
                msg = make_proposal(height, 0, f"block-{height}")
                start = time.perf_counter()
                resp = link.sign_proposal(msg)
                latencies.append(time.perf_counter() - start)
                _check(resp, SignedProposalResponse, kind, height)
                verify_signature(
                    verify, proposal_sign_bytes(chain_id, msg), bytes(resp.proposal.signature), kind, height
                )
                continue
            vote_type = PREVOTE if kind == "prevote" else PRECOMMIT
            ext = f"ext-{height}".encode() if (extensions and vote_type == PRECOMMIT) else b""
            msg = make_vote(height, 0, vote_type, f"block-{height}", extension=ext)
            start = time.perf_counter()
            resp = link.sign_vote(msg)
            latencies.append(time.perf_counter() - start)
            _check(resp, SignedVoteResponse, kind, height)
            verify_signature(verify, vote_sign_bytes(chain_id, msg), bytes(resp.vote.signature), kind, height)
            if extensions and vote_type == PRECOMMIT:
                ext_sig = bytes(resp.vote.extension_signature)
                verify_signature(verify, vote_extension_sign_bytes(chain_id, msg), ext_sig, f"{kind} extension", height)
        height += 1
    return latencies


#: Exit code of a benchmark that met a refusal or a bad signature (tm-signer-harness's ErrOther).
EXIT_OTHER = 7


def _check(resp: Any, kind: type, what: str, height: int) -> None:
    if getattr(resp, "error", None) is not None:
        raise HarnessError(f"{what} at height {height} refused: {resp.error.description}", EXIT_OTHER)
    if not isinstance(resp, kind):
        raise HarnessError(f"{what} at height {height}: got a {type(resp).__name__}", EXIT_OTHER)


def verify_signature(key: VerifyKey, message: bytes, signature: bytes, what: str, height: int) -> None:
    """A signature that does not verify over the request's own sign bytes ends the run (exit code 7)."""
    try:
        key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise HarnessError(
            f"{what} at height {height}: the signature does not verify over the request's sign bytes", EXIT_OTHER
        ) from None


def summarize(
    latencies: list[float], fsync_s: float, sign_s: float, wall_s: float, ideal: list[float] | None = None
) -> BenchResult:
    """Latency percentiles (ms), throughput over the wall time of the run, and the ratios to the floor;
    with ``ideal`` (the ideal signer's latencies), the machine's best possible signer beside them."""
    if not latencies:
        raise HarnessError("no latencies to summarize", EXIT_OTHER)
    ordered = sorted(latencies)
    best = sorted(ideal) if ideal else None
    floor = fsync_s + sign_s
    p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
    return BenchResult(
        requests=len(ordered),
        min_ms=ordered[0] * 1e3,
        p50_ms=p50 * 1e3,
        p90_ms=percentile(ordered, 90) * 1e3,
        p99_ms=p99 * 1e3,
        max_ms=ordered[-1] * 1e3,
        signatures_per_s=len(ordered) / wall_s if wall_s > 0 else float("nan"),
        floor_ms=floor * 1e3,
        fsync_ms=fsync_s * 1e3,
        sign_ms=sign_s * 1e3,
        p50_over_floor=p50 / floor,
        p99_over_floor=p99 / floor,
        ideal_p50_ms=percentile(best, 50) * 1e3 if best else None,
        ideal_p99_ms=percentile(best, 99) * 1e3 if best else None,
    )


def format_result(result: BenchResult, *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(asdict(result), indent=2)
    r = result
    return (
        f"requests        {r.requests}\n"
        f"latency ms      min {r.min_ms:.3f}  p50 {r.p50_ms:.3f}  p90 {r.p90_ms:.3f}  p99 {r.p99_ms:.3f}"
        f"  max {r.max_ms:.3f}\n"
        f"throughput      {r.signatures_per_s:.0f} signatures/s\n"
        f"floor ms        {r.floor_ms:.3f}  (fdatasync {r.fsync_ms:.3f} + ed25519 sign {r.sign_ms:.3f})\n"
        f"ratio           p50/floor {r.p50_over_floor:.2f}  p99/floor {r.p99_over_floor:.2f}"
    ) + (
        ""
        if r.ideal_p50_ms is None or r.ideal_p99_ms is None
        else f"\nideal signer    p50 {r.ideal_p50_ms:.3f}  p99 {r.ideal_p99_ms:.3f} ms"
        f"  (p50/floor {r.ideal_p50_ms / r.floor_ms:.2f}  p99/floor {r.ideal_p99_ms / r.floor_ms:.2f}:"
        " the best this machine allows)"
    )


#: The signing path's targets, on the single-chain run of the default config with vote extensions: latency
#: against the ideal signer of the same run, CPU per request of the whole process.
TARGET_P50_RATIO = 1.5
TARGET_P99_RATIO = 2.0
TARGET_CPU_US = 250.0


def _verdict(value: float, bound: float, unit: str) -> str:
    if value <= bound:
        return f"met (target {bound:g}{unit})"
    missed = f"{value - bound:.2f}" if unit == "x" else f"{value - bound:.0f}"
    return f"MISSED by {missed}{unit} (target {bound:g}{unit})"


def format_targets(result: BenchResult, cpu: dict[str, float] | None) -> str:
    """The targets, plainly: each figure, its bound, and met or missed by how much."""
    lines = ["targets (default config, single chain, vote extensions):"]
    if result.ideal_p50_ms is None or result.ideal_p99_ms is None:
        lines.append("  latency: n/a (no ideal signer measured)")
    else:
        for name, ms, ideal_ms, bound in (
            ("p50", result.p50_ms, result.ideal_p50_ms, TARGET_P50_RATIO),
            ("p99", result.p99_ms, result.ideal_p99_ms, TARGET_P99_RATIO),
        ):
            ratio = ms / ideal_ms
            lines.append(
                f"  {name} {ms:.3f} ms / ideal {ideal_ms:.3f} ms = {ratio:.2f}x  {_verdict(ratio, bound, 'x')}"
            )
    if cpu is None:
        lines.append("  CPU per request: n/a (no /proc)")
    else:
        total = cpu["user_us"] + cpu["sys_us"]
        lines.append(f"  CPU per request {total:.0f} µs  {_verdict(total, TARGET_CPU_US, ' µs')}")
    return "\n".join(lines)


def format_references(rows: list[tuple[str, list[float], dict[str, float] | None]]) -> str:
    """(name, latencies, CPU per request) of signers measured in one run, the first being the ideal signer:
    p50 and p99 with their ratios to it, and CPU per request."""
    ideal = sorted(rows[0][1])
    lines = ["the same run's signers (p50 and p99 in ms, ratio to the ideal signer; CPU per request from /proc):"]
    for name, latencies, cpu in rows:
        ordered = sorted(latencies)
        p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
        ratios = f"{p50 / percentile(ideal, 50):.2f}x / {p99 / percentile(ideal, 99):.2f}x"
        lines.append(f"  {name:<28} {p50 * 1e3:.3f} / {p99 * 1e3:.3f}  {ratios}  {format_cpu(cpu)}")
    return "\n".join(lines)
