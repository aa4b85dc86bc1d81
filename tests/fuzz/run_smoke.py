#!/usr/bin/env python3
"""Bounded fuzz smoke for CI: each atheris target for a share of the time, then the same kind of inputs fed to a
real pykms process over loopback (it must stay up, only the bad connection closes, and it must keep signing).

Usage: python tests/fuzz/run_smoke.py --seconds 60
Prints the inputs tried per target; exits non-zero only on a crash, a hang or a pykms that stopped serving.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["fuzz_codec.py", "fuzz_frames.py", "fuzz_handshake.py"]


def run_target(target: Path, seconds: int) -> int:
    """Run one atheris target; returns the number of inputs tried (libFuzzer's last '#N' line)."""
    proc = subprocess.run(
        [sys.executable, str(target), f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    runs = [int(m) for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)]
    if proc.returncode != 0:
        print(output[-4000:])
        raise SystemExit(f"fuzz target {target.name} failed (exit {proc.returncode})")
    return runs[-1] if runs else 0


def loopback_phase(seconds: float, seed: int) -> tuple[int, int]:
    """Random and mutated streams to a real pykms; between rounds a valid vote must still be signed."""
    sys.path.insert(0, str(ROOT))
    from nacl.signing import VerifyKey

    from pykms.harness.simulator import PREVOTE, make_vote
    from pykms.privval import codec
    from pykms.privval.codec import Dialect
    from pykms.privval.signbytes import vote_sign_bytes
    from tests.e2e import accept, running_kms
    from tests.secret_forms import harvest_key_files, scan

    rng = random.Random(seed)
    sent = signed = 0
    pub: VerifyKey | None = None
    with tempfile.TemporaryDirectory() as d:
        with running_kms(Path(d)) as (kms, (sim,)):
            deadline = time.monotonic() + seconds
            height = 1
            valid = codec.delimit(
                codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(make_vote(1, 0, PREVOTE), "x"))
            )
            while time.monotonic() < deadline:
                link = accept(sim, kms)
                if pub is None:
                    pub = VerifyKey(link.pubkey().pub_key)
                vote = make_vote(height, 0, PREVOTE, b"A")
                resp = link.sign_vote(vote)
                if resp.error is not None:
                    raise SystemExit(f"pykms refused a valid vote after hostile input: {resp.error}")
                pub.verify(vote_sign_bytes(sim.chain_id, vote), bytes(resp.vote.signature))
                signed += 1
                height += 1
                kind = rng.randrange(3)
                if kind == 0:
                    junk = rng.randbytes(rng.randrange(1, 3000))
                elif kind == 1:
                    mutated = bytearray(valid)
                    for _ in range(rng.randrange(1, 8)):
                        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                    junk = bytes(mutated)
                else:
                    junk = b"\xff\xff\xff\xff\x07" + rng.randbytes(64)  # an absurd length prefix
                link.send_raw(junk)
                sent += 1
                link.close()
                if kms.proc is not None and kms.proc.poll() is not None:
                    raise SystemExit(
                        f"pykms exited ({kms.proc.returncode}) after hostile input:\n{kms.log_text()[-3000:]}"
                    )
        # The hostile inputs produced error lines: none may carry key material.
        seeds = harvest_key_files(Path(d))
        if len(seeds) < 2:
            raise SystemExit("the consensus and identity keys were not found: the secrets scan would be vacuous")
        hits = scan(seeds, [("pykms log", kms.log_path.read_bytes())])
        if hits:
            raise SystemExit(f"key material in the pykms log: {hits}")
    return sent, signed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    try:
        import atheris  # noqa: F401

        have_atheris = True
    except ImportError:
        have_atheris = False
    share = max(5, args.seconds // (len(TARGETS) + 1))
    total = 0
    if have_atheris:
        for name in TARGETS:
            target = ROOT / "tests" / "fuzz" / name
            if not target.exists():
                continue
            runs = run_target(target, share)
            total += runs
            print(f"fuzz {name}: {runs} inputs in {share} s, no crash", flush=True)
    else:
        print("atheris is not installed: the in-process targets are covered by the hypothesis tests only")
    sent, signed = loopback_phase(share, args.seed)
    print(f"loopback: {sent} hostile streams to a real pykms (seed {args.seed}); it kept signing ({signed} "
          f"verified signatures between them) and never exited; 0 key material hits in its log")  # fmt: skip
    print(f"fuzz smoke: {total + sent} inputs in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
