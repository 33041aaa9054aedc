"""The Grafana dashboard only uses metrics (and labels) that /metrics really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from api_fakes import make_peers
from hbmon.model import Health
from hbmon.store.webhooks import WebhookConfig, WebhookDispatcher
from prometheus_client.parser import text_string_to_metric_families
from real_product import ProductFactory

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "hbmon-dashboard.json"
_METRIC = re.compile(r"\b(hbmon_[a-z_]+)(\{([^}]*)\})?")
_LABEL = re.compile(r"([a-z_]+)\s*(=~|!~|!=|=)")
_BY = re.compile(r"by \(([^)]*)\)")


def exprs(dashboard: dict[str, object]) -> list[str]:
    out = []
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for t in panel.get("targets", []):
            out.append(t["expr"])
    for var in dashboard["templating"]["list"]:  # type: ignore[index]
        if var["type"] == "query":
            out.append(var["query"]["query"])
    return out


def test_dashboard_structure() -> None:
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "switch", "group",
                                                           "peer"}


def test_dashboard_metrics_exist(make_server: ProductFactory) -> None:
    hooks = WebhookDispatcher(WebhookConfig(urls=("http://127.0.0.1:9/unused",))).start()
    run = make_server(webhooks=hooks)
    try:
        run.service.add_peers(make_peers(4))
        run.set_states({"peer-0000": Health.UP, "peer-0001": Health.DOWN})
        run.tick()
        run.metrics.observe_poll("default", 0.01)
        run.metrics.poll_failed("default")
        with run.client() as c:
            c.get("/api/v1/peers")
            text = c.get("/metrics").text
    finally:
        hooks.stop(1)
    labels: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    referenced = 0
    for expr in exprs(json.loads(DASHBOARD.read_text())):
        for name, _, matchers in _METRIC.findall(expr):
            referenced += 1
            assert name in labels, f"{name} (in {expr!r}) is not exposed"
            for label, _op in _LABEL.findall(matchers or ""):
                assert label in labels[name], f"{name} has no label {label!r}"
        for group in _BY.findall(expr):
            names = [n for n, _, _ in _METRIC.findall(expr)]
            for label in (x.strip() for x in group.split(",")):
                assert any(label in labels[n] for n in names), (label, expr)
    assert referenced >= 25
