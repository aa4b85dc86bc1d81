"""End to end: ``pykms start`` with ``[metrics]`` and an audit log, driven by the validator simulator over TCP +
SecretConnection. ``/metrics`` is scraped over HTTP during the run and its counters must equal what the simulator
got signed and refused; ``/health`` flips to 503 when the validator goes away and back to 200 when it returns;
``pykms audit summary`` must count exactly the signatures the simulator received and ``audit verify --state``
must pass against the chain's state file."""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pykms.cli.main import main
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import Dialect
from tests.e2e import KmsProcess, accept, write_home

CHAIN = "metrics-e2e"


def metrics_port(kms: KmsProcess, timeout: float = 20) -> int:
    """The port pykms bound for [metrics] addr = "127.0.0.1:0", from its JSON log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in kms.log_text().splitlines():
            if '"metrics_listening"' in line:
                return int(json.loads(line)["addr"].rsplit(":", 1)[1])
        time.sleep(0.05)
    raise AssertionError(f"pykms did not report its metrics address:\n{kms.log_text()}")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape_settled(
    base: str, requests: int, timeout: float = 5.0
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape until the request count reaches ``requests`` (or the timeout): the observers run after the reply."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(base)
        if total(m, "pykms_request_seconds_count") >= requests or time.monotonic() > deadline:
            return m
        time.sleep(0.02)


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def health_until(base: str, code: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(base + "/health")
        if status == code:
            doc: dict[str, Any] = json.loads(body)
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"/health stayed {status}: {body!r}")
        time.sleep(0.05)


@pytest.mark.slow
def test_metrics_health_and_audit_against_a_signing_run(tmp_path: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    addr = sim.listen()
    audit_path = tmp_path / "kms" / "audit" / "audit.log"
    config = write_home(
        tmp_path / "kms", [addr], chain_id=CHAIN,
        extra_chain=f'audit_log = "{audit_path}"\n\n[metrics]\naddr = "127.0.0.1:0"\n',
    )  # fmt: skip
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    received: Counter[str] = Counter()  # signatures the simulator got, by type
    refused: Counter[str] = Counter()
    try:
        link = accept(sim, kms)
        base = f"http://127.0.0.1:{metrics_port(kms)}"

        def sign(kind: str, height: int, block: str, **kw: Any) -> None:
            if kind == "proposal":
                resp = link.sign_proposal(make_proposal(height, 0, block, timestamp=(1_700_000_000, height)), **kw)
            else:
                vote_type = PREVOTE if kind == "prevote" else PRECOMMIT
                ext = b"ext" if vote_type == PRECOMMIT and block else b""
                vote = make_vote(height, 0, vote_type, block, extension=ext, timestamp=(1_700_000_000, height))
                resp = link.sign_vote(vote, **kw)
            if resp.error is None:
                received[kind] += 1
            else:
                refused[kind] += 1

        for height in range(1, 6):
            for kind in ("proposal", "prevote", "precommit"):
                sign(kind, height, f"b{height}")
        sign("precommit", 5, "b5")  # an identical repeat: the stored signature again
        sign("prevote", 5, "b5")  # a regression (prevote after precommit)
        sign("precommit", 5, "other")  # a double sign
        sign("prevote", 6, "b6", chain_id="someone-else")  # the wrong chain

        # Metrics are observed just after each reply, so a scrape may come a moment before the last observation.
        m = scrape_settled(base, requests=19)
        assert val(m, "pykms_signatures_total", chain_id=CHAIN, type="proposal", outcome="signed") == 5
        assert val(m, "pykms_signatures_total", chain_id=CHAIN, type="prevote", outcome="signed") == 5
        assert val(m, "pykms_signatures_total", chain_id=CHAIN, type="precommit", outcome="signed") == 5
        assert val(m, "pykms_signatures_total", chain_id=CHAIN, type="precommit", outcome="reused") == 1
        assert total(m, "pykms_signatures_total", chain_id=CHAIN) == sum(received.values()) == 16
        assert val(m, "pykms_refusals_total", chain_id=CHAIN, reason="RegressionError") == 1
        assert val(m, "pykms_refusals_total", chain_id=CHAIN, reason="ConflictError") == 1
        assert val(m, "pykms_refusals_total", chain_id=CHAIN, reason="ChainIdMismatch") == 1
        assert total(m, "pykms_refusals_total") == sum(refused.values()) == 3
        assert total(m, "pykms_request_seconds_count", chain_id=CHAIN) == 19
        assert val(m, "pykms_last_signed_height", chain_id=CHAIN) == 5
        assert val(m, "pykms_last_signed_step", chain_id=CHAIN) == 3
        assert val(m, "pykms_validator_connected", chain_id=CHAIN, validator=addr) == 1
        # 15 fresh signatures saved; 19 audit records; the provider was asked 15 times (each precommit's time
        # covers its consensus and extension signatures; the repeated precommit reuses both)
        assert val(m, "pykms_state_persist_seconds_count", chain_id=CHAIN, backend="file") == 15
        assert val(m, "pykms_state_persist_seconds_count", chain_id=CHAIN, backend="audit") == 19
        assert val(m, "pykms_provider_sign_seconds_count", provider="softsign") == 15
        assert total(m, "pykms_provider_errors_total") == 0
        assert health_until(base, 200) == {"healthy": True, "chains": {CHAIN: "ok"}}

        # the validator goes away: link and listener closed
        link.close()
        sim.close()
        doc = health_until(base, 503)
        assert doc["healthy"] is False and "no live validator connection" in doc["chains"][CHAIN]
        assert val(scrape(base), "pykms_validator_connected", chain_id=CHAIN, validator=addr) == 0

        # it comes back on the same address
        sim = ValidatorSimulator(addr, chain_id=CHAIN, dialect=Dialect.V0_38)
        sim.listen()
        link = accept(sim, kms)
        health_until(base, 200)
        sign("prevote", 6, "b6")
        sign("precommit", 6, "b6")
        m = scrape_settled(base, requests=21)
        assert val(m, "pykms_reconnects_total", chain_id=CHAIN, validator=addr) >= 1
        assert val(m, "pykms_validator_connected", chain_id=CHAIN, validator=addr) == 1
        assert total(m, "pykms_signatures_total", chain_id=CHAIN) == sum(received.values()) == 18
        assert val(m, "pykms_last_signed_height", chain_id=CHAIN) == 6
        link.close()
    finally:
        assert kms.stop() == 0
        sim.close()

    # the audit log counts exactly what the simulator received, and ends with the state's signature
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["audit", "summary", "--json", str(audit_path)]) == 0
    doc = json.loads(buf.getvalue())
    assert {s["type"]: s["count"] for s in doc["signatures"]} == dict(received)
    assert {s["type"]: s["reused"] for s in doc["signatures"]} == {"proposal": 0, "prevote": 0, "precommit": 1}
    assert {r["reason"]: r["count"] for r in doc["refusals"]} == {
        "RegressionError": 1,
        "ConflictError": 1,
        "ChainIdMismatch": 1,
    }
    assert doc["heights"] == {CHAIN: {"min": 1, "max": 6}}
    state_file = tmp_path / "kms" / "state" / f"{CHAIN}_priv_validator_state.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["audit", "verify", "--state", str(state_file), str(audit_path)]) == 0
