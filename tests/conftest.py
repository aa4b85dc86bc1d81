"""Session-wide secrets scan: no key material in any log line or error text the suite produced.

Collected while the suite runs: every captured stdout/stderr/log section and failure text of every test report.
Collected at the end: every pykms log a ``tests.e2e.KmsProcess`` wrote (``tests.e2e.LOGS``), and every *.log /
*.jsonl / *.out / *.err file under the session's temporary directory. Searched for: every seed the e2e helpers
created (``tests.e2e.SECRETS``) and every key file found under the temporary directory, in the forms of
tests/secret_forms.py. A hit fails the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.secret_forms import harvest_key_files, scan

_TEXTS: list[tuple[str, bytes]] = []
_RESULT: dict[str, object] = {}
_LOG_SUFFIXES = (".log", ".jsonl", ".out", ".err")
_MAX_LOG_BYTES = 64 * 1024 * 1024  # a log bigger than this is read only up to here: keeps the scan bounded


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, content in report.sections:
        _TEXTS.append((f"{report.nodeid} [{name}]", content.encode(errors="replace")))
    if report.longrepr is not None:
        _TEXTS.append((f"{report.nodeid} [{report.when} error text]", report.longreprtext.encode(errors="replace")))


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(_MAX_LOG_BYTES)
    except OSError:
        return b""


def _basetemp(session: pytest.Session) -> Path | None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return None
    try:
        return Path(factory.getbasetemp())
    except (OSError, ValueError):
        return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        from tests import e2e
    except ImportError:  # pragma: no cover - e2e imports the product; without it nothing ran
        return
    seeds = list(e2e.SECRETS)
    logs = {Path(p) for p in e2e.LOGS}
    base = _basetemp(session)
    if base is not None and base.exists():
        seeds += harvest_key_files(base)
        logs |= {p for p in base.rglob("*") if p.suffix in _LOG_SUFFIXES and p.is_file()}
    blobs = list(_TEXTS) + [(str(p), _read(p)) for p in sorted(logs) if p.exists()]
    hits = scan(set(seeds), blobs)
    _RESULT.update(seeds=len(set(seeds)), logs=len(logs), texts=len(_TEXTS), hits=hits)
    if hits and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULT:
        return
    hits = _RESULT["hits"]
    assert isinstance(hits, list)
    terminalreporter.write_line(
        f"secrets scan: {_RESULT['seeds']} keys x {_RESULT['logs']} log files + {_RESULT['texts']} captured texts: "
        f"{len(hits)} hits"
    )
    for hit in hits[:50]:
        terminalreporter.write_line(f"  KEY MATERIAL IN {hit}", red=True)


@pytest.fixture
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``[keyholder] isolation`` for the e2e homes of this test (parametrize with indirect=True; default "none")."""
    from tests.e2e import ISOLATION_ENV

    mode: str = getattr(request, "param", "none")
    monkeypatch.setenv(ISOLATION_ENV, mode)
    return mode
