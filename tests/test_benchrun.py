"""``scripts/bench``, the thin entry to ``pykms.harness.benchrun``: its start-up run against a real ``pykms start``.

The figures are printed, never asserted; this checks that the script still runs end to end from its new home and
that what it reports is consistent (a first signature comes after the connection).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scripts_bench_startup_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--only", "startup", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== start-up: connected after" in done.stdout
    figures = json.loads(done.stdout[done.stdout.index("{") :])["startup"]
    assert 0 < figures["connect_ms"] <= figures["first_signature_ms"] < 60_000
    assert list(tmp_path.iterdir()) == [], "the bench's temporary directory is removed"


def test_scripts_bench_rejects_an_unknown_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--only", "nothing"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_scripts_bench_target_run_is_the_default_config_against_the_targets(tmp_path: Path) -> None:
    """The targeted run: default config (no state_format in tmkms.toml, so a slot state), vote extensions, every
    signature verified by the bench, the verdicts printed plainly."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--only", "target", "-n", "60", "--json", "--dir",
         str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "default config (state format auto: slots), prevote+precommit with extensions, n=60" in out
    assert "targets (default config, single chain, vote extensions):" in out
    for line in ("p50 ", "p99 ", "CPU per request "):
        verdict = next(x for x in out.splitlines() if x.strip().startswith(line) and "target" in x)
        assert " met (target " in verdict or " MISSED by " in verdict, verdict
    figures = json.loads(out[out.index("{\n") :])["single_default_ext"]
    assert figures["requests"] == 60 and figures["ideal_p50_ms"] > 0
