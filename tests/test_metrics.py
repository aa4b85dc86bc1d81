"""Metrics: what ``Metrics.observe`` counts, what it times behind the real front and key holder (provider, state
save, audit write), and the HTTP server (``/metrics``, ``/health``) scraped over a real socket."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from pykms.audit import AuditLog
from pykms.errors import ConfigError, TransientProviderError
from pykms.guard.backend import FileGuard
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore
from pykms.handler import RequestHandler, SignEvent
from pykms.harness.simulator import PREVOTE, make_vote
from pykms.keyholder.local import LocalKeyHolder
from pykms.metrics import Metrics, MetricsServer
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.providers.softsign import SoftsignSigner

CHAIN = "metrics-chain"

#: Every metric family the registry exposes, as queried (counters with ``_total``): renaming one breaks
#: dashboards, so the list is pinned here; the dashboard test checks its queries against it.
METRIC_NAMES = frozenset(
    {
        "pykms_signatures_total",
        "pykms_refusals_total",
        "pykms_request_seconds_bucket",
        "pykms_request_seconds_sum",
        "pykms_request_seconds_count",
        "pykms_last_signed_height",
        "pykms_last_signed_round",
        "pykms_last_signed_step",
        "pykms_validator_connected",
        "pykms_reconnects_total",
        "pykms_provider_errors_total",
        "pykms_provider_sign_seconds_bucket",
        "pykms_provider_sign_seconds_sum",
        "pykms_provider_sign_seconds_count",
        "pykms_state_persist_seconds_bucket",
        "pykms_state_persist_seconds_sum",
        "pykms_state_persist_seconds_count",
        "pykms_state_persist_failures_total",
    }
)


def event(height: int, kind: str, step: int, outcome: str = "signed", reason: str = "") -> SignEvent:
    signed = outcome in ("signed", "reused")
    return SignEvent(
        CHAIN, kind, height, 0, step, b"\xab" * 32, b"sb", b"s" * 64 if signed else None, outcome, reason, 0.0003,
        failure={"refused": "refused", "error": "state"}.get(outcome, ""),
    )  # fmt: skip


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def test_observe_counts_signatures_refusals_and_latency() -> None:
    m = Metrics()
    for h in range(1, 4):
        m.observe(event(h, "prevote", 2))
        m.observe(event(h, "precommit", 3))
    m.observe(event(3, "precommit", 3, "reused"))
    m.observe(event(2, "prevote", 2, "refused", "RegressionError"))
    m.observe(event(4, "prevote", 2, "error", "PersistError"))
    text = m.render().decode()
    assert value(text, "pykms_signatures_total", chain_id=CHAIN, type="prevote", outcome="signed") == 3
    assert value(text, "pykms_signatures_total", chain_id=CHAIN, type="precommit", outcome="signed") == 3
    assert value(text, "pykms_signatures_total", chain_id=CHAIN, type="precommit", outcome="reused") == 1
    assert value(text, "pykms_refusals_total", chain_id=CHAIN, reason="RegressionError") == 1
    assert value(text, "pykms_refusals_total", chain_id=CHAIN, reason="PersistError") == 1
    assert value(text, "pykms_state_persist_failures_total", chain_id=CHAIN) == 1
    assert value(text, "pykms_request_seconds_count", chain_id=CHAIN, type="prevote") == 5
    assert value(text, "pykms_request_seconds_bucket", chain_id=CHAIN, type="prevote", le="0.0005") == 5
    assert value(text, "pykms_request_seconds_bucket", chain_id=CHAIN, type="prevote", le="0.00025") == 0
    # the last signed position follows signatures only, not the refused height 2 or the failed height 4
    assert value(text, "pykms_last_signed_height", chain_id=CHAIN) == 3
    assert value(text, "pykms_last_signed_step", chain_id=CHAIN) == 3


def test_metric_names_match_the_registry() -> None:
    m = Metrics()
    m.observe(event(1, "prevote", 2))
    m.observe(event(1, "prevote", 2, "refused", "ConflictError"))
    m.connected.labels(CHAIN, "tcp://x").set(1)
    m.reconnects.labels(CHAIN, "tcp://x").inc()
    m.provider_errors.labels("softsign", "X").inc()
    m.provider_latency.labels("softsign").observe(0.001)
    m.persist_latency.labels(CHAIN, "file").observe(0.001)
    m.persist_failures.labels(CHAIN).inc()
    exposed = {name for name, _ in samples(m.render().decode())}
    assert exposed - {n for n in exposed if n.endswith("_created")} == METRIC_NAMES


class Flaky(SoftsignSigner):
    """A real softsign key whose device can go away."""

    broken = False

    def sign(self, message: bytes) -> bytes:
        if self.broken:
            raise TransientProviderError("device gone")
        return super().sign(message)


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[RequestHandler, Metrics, Flaky, AuditLog]]:
    store = JsonStateStore.create(tmp_path / "state.json", SignState.initial())
    signer = Flaky(SigningKey(hashlib.sha256(b"metrics").digest()))
    audit = AuditLog(tmp_path / "audit.log", CHAIN)
    keyholder = LocalKeyHolder()
    keyholder.add(CHAIN, signer, FileGuard(CHAIN, store), audit)
    m = Metrics()
    m.attach_chain(CHAIN, provider=signer.provider, backend=keyholder.guard(CHAIN).backend, audit=audit)
    handler = RequestHandler(keyholder, keyholder.chains()[CHAIN], Dialect.V0_38, chain_id=CHAIN, observers=[m])
    yield handler, m, signer, audit
    keyholder.close()


def sign_prevote(handler: RequestHandler, height: int) -> None:
    vote = make_vote(height, 0, PREVOTE, "b", timestamp=(1_700_000_000, 0))
    request = codec.encode_request(Dialect.V0_38, codec.SignVoteRequest(vote=vote, chain_id=CHAIN))
    handler.handle(request, lambda _reply: None)


def test_front_events_time_provider_state_and_audit(front: tuple[RequestHandler, Metrics, Flaky, AuditLog]) -> None:
    handler, m, signer, _audit = front
    for h in (1, 2):
        sign_prevote(handler, h)
    sign_prevote(handler, 2)  # a repeat: no sign, no save
    signer.broken = True
    sign_prevote(handler, 3)
    text = m.render().decode()
    assert value(text, "pykms_state_persist_seconds_count", chain_id=CHAIN, backend="file") == 2
    assert value(text, "pykms_state_persist_seconds_count", chain_id=CHAIN, backend="audit") == 4
    assert value(text, "pykms_provider_sign_seconds_count", provider="softsign") == 2
    assert value(text, "pykms_provider_errors_total", provider="softsign", error="TransientProviderError") == 1
    assert value(text, "pykms_signatures_total", chain_id=CHAIN, type="prevote", outcome="reused") == 1


def test_health_reports_storage_problems(front: tuple[RequestHandler, Metrics, Flaky, AuditLog]) -> None:
    handler, _m, _signer, audit = front
    keyholder = handler.keyholder
    assert keyholder.health() == {CHAIN: "ok"}
    audit.close()
    sign_prevote(handler, 1)  # the record cannot be written: the signature is withheld
    assert keyholder.health()[CHAIN].startswith("state not writable: ")
    assert keyholder.health()[CHAIN].endswith("; audit log closed")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_server_metrics_and_health_over_http() -> None:
    m = Metrics()
    state: dict[str, Any] = {"ok": True, "details": {CHAIN: "ok"}}
    server = MetricsServer("127.0.0.1", 0, m, lambda: (state["ok"], state["details"]))
    server.start()
    host, port = server.address
    base = f"http://{host}:{port}"
    try:
        m.observe(event(7, "proposal", 1))
        status, ctype, body = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert value(body.decode(), "pykms_signatures_total", chain_id=CHAIN, type="proposal", outcome="signed") == 1
        status, ctype, body = get(base + "/health")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"healthy": True, "chains": {CHAIN: "ok"}}
        state.update(ok=False, details={CHAIN: "no live validator connection"})
        status, _, body = get(base + "/health?verbose=1")
        assert status == 503 and json.loads(body)["chains"][CHAIN] == "no live validator connection"
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_server_bind_failure_is_a_config_error() -> None:
    first = MetricsServer("127.0.0.1", 0, Metrics(), lambda: (True, {}))
    try:
        with pytest.raises(ConfigError, match=r"metrics\.addr.*cannot listen"):
            MetricsServer("127.0.0.1", first.address[1], Metrics(), lambda: (True, {}))
    finally:
        first.stop()


def test_server_on_ipv6_loopback() -> None:
    try:
        server = MetricsServer("[::1]", 0, Metrics(), lambda: (True, {"c": "ok"}))
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    server.start()
    try:
        status, _, body = get(f"http://[::1]:{server.address[1]}/health")
        assert status == 200 and json.loads(body)["healthy"] is True
    finally:
        server.stop()
