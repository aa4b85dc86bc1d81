"""Prometheus metrics and the ``/health`` endpoint, off unless ``[metrics] addr = "host:port"`` is set.

One HTTP server thread serves ``/metrics`` (Prometheus text format, from a registry of our own so tests and
several runtimes in one process do not collide) and ``/health`` (200 while every configured chain has a live
validator connection and a writable state, 503 otherwise, with a JSON body saying which one is not).

The metrics are declared in ``Metrics`` (counters get ``_total`` on the wire; docs/observability.md has the table
and example queries). ``pykms_request_seconds`` runs from decode to durable state, excluding the audit write and
the reply; the ``backend`` of ``pykms_state_persist_seconds`` is ``file``, ``postgres`` or ``audit``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pykms.errors import ConfigError
from pykms.handler import SignEvent
from pykms.httpreply import send_reply

if TYPE_CHECKING:
    from pykms.audit import AuditLog

__all__ = ["Metrics", "MetricsServer"]

#: Latency buckets (seconds) around the expected range: a flush (~0.1 ms) to a slow HSM (~100 ms).
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Metrics:
    """All pykms metrics in one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.signatures = Counter(
            "pykms_signatures", "Signatures released, by chain and type", ["chain_id", "type", "outcome"], registry=r
        )
        self.refusals = Counter("pykms_refusals", "Requests refused, by reason", ["chain_id", "reason"], registry=r)
        self.request_latency = Histogram(
            "pykms_request_seconds", "Signing request latency inside pykms", ["chain_id", "type"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_height = Gauge("pykms_last_signed_height", "Last signed height", ["chain_id"], registry=r)
        self.last_round = Gauge("pykms_last_signed_round", "Last signed round", ["chain_id"], registry=r)
        self.last_step = Gauge("pykms_last_signed_step", "Last signed step (1/2/3)", ["chain_id"], registry=r)
        self.connected = Gauge(
            "pykms_validator_connected", "1 while the validator connection is up", ["chain_id", "validator"], registry=r
        )
        self.reconnects = Counter("pykms_reconnects", "Validator reconnections", ["chain_id", "validator"], registry=r)
        self.provider_errors = Counter(
            "pykms_provider_errors", "Signing backend errors", ["provider", "error"], registry=r
        )
        self.provider_latency = Histogram(
            "pykms_provider_sign_seconds", "Signing backend latency", ["provider"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.persist_latency = Histogram(
            "pykms_state_persist_seconds", "Durable state write latency", ["chain_id", "backend"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.persist_failures = Counter(
            "pykms_state_persist_failures", "State writes that failed (nothing was signed)", ["chain_id"], registry=r
        )
        #: chain id -> (provider, state backend), the labels of its events.
        self._labels: dict[str, tuple[str, str]] = {}

    def attach_chain(self, chain_id: str, *, provider: str, backend: str, audit: AuditLog | None = None) -> None:
        """Label a chain's events with its provider and state backend; time its audit writes."""
        self._labels[chain_id] = (provider, backend)
        if audit is not None:
            audit.on_write = self.persist_latency.labels(chain_id, "audit").observe

    def observe(self, event: SignEvent) -> None:
        """The front's observer (after the reply): count the event, time its provider and its state save."""
        provider, backend = self._labels.get(event.chain_id, ("unknown", "unknown"))
        if not event.failure:
            self.signatures.labels(event.chain_id, event.kind, event.outcome).inc()
            self.last_height.labels(event.chain_id).set(event.height)
            self.last_round.labels(event.chain_id).set(event.round)
            self.last_step.labels(event.chain_id).set(event.step)
            if event.sign_s:
                self.provider_latency.labels(provider).observe(event.sign_s)
            if event.outcome == "signed":
                self.persist_latency.labels(event.chain_id, backend).observe(event.persist_s)
        else:
            self.refusals.labels(event.chain_id, event.reason).inc()
            if event.failure == "provider":
                self.provider_errors.labels(provider, event.reason).inc()
            if event.reason == "PersistError":
                self.persist_failures.labels(event.chain_id).inc()
        self.request_latency.labels(event.chain_id, event.kind).observe(event.duration_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: A scrape client that sends no complete request for this long is disconnected, and at most this many are served
#: at once (others are closed at once): an idle or slow client must not pile up threads in the signer's process.
METRICS_CLIENT_TIMEOUT_S = 5.0
METRICS_MAX_CLIENTS = 64


class MetricsServer:
    """A small threaded HTTP server for /metrics and /health; ``health`` returns (healthy, details), where details
    maps each chain to what is wrong ("" when fine)."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, health: Callable[[], tuple[bool, dict[str, Any]]]
    ) -> None:
        class _Handler(BaseHTTPRequestHandler):
            timeout = METRICS_CLIENT_TIMEOUT_S  # applied to each connection (StreamRequestHandler)

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    send_reply(self, 200, metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] == "/health":
                    ok, details = health()
                    body = json.dumps({"healthy": ok, "chains": details}, sort_keys=True).encode()
                    send_reply(self, 200 if ok else 503, body, "application/json")
                else:
                    send_reply(self, 404, b"not found\n", "text/plain")

            def log_message(self, format: str, *args: Any) -> None:
                return

        host = host.strip("[]")  # "[::1]" as written in addr = "[::1]:9464"

        slots = threading.BoundedSemaphore(METRICS_MAX_CLIENTS)

        class _Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        try:
            self.httpd = _Server((host, port), _Handler)
        except OSError as exc:  # port taken, address not local: a configuration problem, said as one
            raise ConfigError(
                f"cannot listen on {host}:{port} for metrics ({exc.strerror or exc})",
                key="metrics.addr",
                fix="choose a free port on an address of this host, or remove [metrics]",
            ) from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever: only when it runs
            self.httpd.shutdown()
        self.httpd.server_close()
