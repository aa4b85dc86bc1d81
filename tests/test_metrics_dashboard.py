"""config/grafana-dashboard.json: a Grafana dashboard whose every query names metrics pykms exposes, and which
covers every metric family pykms exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from test_metrics import METRIC_NAMES

from pykms.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def exprs(doc: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_every_queried_metric_exists() -> None:
    doc = load()
    used = {name for e in exprs(doc) for name in re.findall(r"\bpykms_[a-z_]+", e)}
    used |= set(re.findall(r"\bpykms_[a-z_]+", json.dumps(doc["templating"])))
    assert used, "no pykms metric queried"
    assert used <= METRIC_NAMES, used - METRIC_NAMES


def test_every_metric_family_has_a_panel() -> None:
    families = {f.name for f in Metrics().registry.collect()}  # counters without _total, histograms bare
    used = " ".join(exprs(load()))
    missing = {f for f in families if not re.search(rf"\b{f}(_total|_bucket|_sum|_count)?\b", used)}
    assert not missing


def test_dashboard_shape() -> None:
    doc = load()
    assert 36 <= doc["schemaVersion"] <= 41 and doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
    # every histogram quantile aggregates by le (else Grafana shows nothing)
    for e in exprs(doc):
        if "histogram_quantile" in e:
            assert "by (le" in e and "_bucket" in e
