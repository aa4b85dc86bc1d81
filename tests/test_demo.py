"""The demo (``python -m pykms.harness.demo``): a real pykms process signing over SecretConnection, figures
printed, everything cleaned up; and a failing pykms gives a non-zero exit with its log, still cleaned up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pykms.harness import demo


def test_demo_signs_prints_figures_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process, so coverage sees it; the pykms it drives is still a real `pykms start` subprocess.
    assert demo.main(["--votes", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"consensus public key: cosmosvalconspub1[02-9ac-hj-np-z]{50,}", out), out
    assert "signed and verified 20 proposals, prevotes and precommits" in out
    assert re.search(r"latency ms\s+min [\d.]+\s+p50 [\d.]+\s+p90 [\d.]+\s+p99 [\d.]+\s+max [\d.]+", out), out
    assert re.search(r"ratio\s+p50/floor [\d.]+", out), out
    assert "pykms stopped cleanly (exit code 0)" in out
    home = Path(re.search(r"demo home: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert not home.exists()


def test_demo_fails_non_zero_when_pykms_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    homes: list[Path] = []
    real_write = demo.write_demo_home

    def write_with_an_open_key(home: Path, addr: str, **kw: object) -> Path:
        config = real_write(home, addr, **kw)  # type: ignore[arg-type]
        homes.append(home)
        # A group-readable key: the real pykms refuses to start with it (and says which chmod fixes it).
        (home / "secrets" / f"{demo.CHAIN_ID}-consensus.key").chmod(0o644)
        return config

    monkeypatch.setattr(demo, "write_demo_home", write_with_an_open_key)
    assert demo.main(["--votes", "5"]) == 1
    err = capsys.readouterr().err
    assert "demo: FAILED: pykms exited with code" in err
    assert "chmod 600" in err  # the pykms log tail is shown
    assert homes and not homes[0].exists()


def test_demo_home_is_the_default_config_unless_a_state_format_is_asked(tmp_path: Path) -> None:
    """No state_format line by default (auto: the new state is a slot file, as an operator's default config
    makes it); an explicit format is written and honoured."""
    from pykms.config import load_config
    from pykms.guard.store import resolve_store_format

    default = demo.write_demo_home(tmp_path / "default", "tcp://127.0.0.1:1")
    assert "state_format" not in default.read_text()
    chain = load_config(default).chains[0]
    assert chain.state_format == "auto" and resolve_store_format(chain.state_file, "auto") == "slots"

    explicit = demo.write_demo_home(tmp_path / "json", "tcp://127.0.0.1:1", state_format="json")
    assert 'state_format = "json"' in explicit.read_text()
    chain = load_config(explicit).chains[0]
    assert chain.state_format == "json" and resolve_store_format(chain.state_file, "auto") == "json"
