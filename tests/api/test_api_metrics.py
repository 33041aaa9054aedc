"""Prometheus /metrics: per-peer series from the service, poll histogram, no globals."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from api_fakes import FakeService, make_peers
from api_harness import Running
from hbmon.events import EventBus
from hbmon.metrics import ControllerMetrics
from hbmon.model import Health
from hbmon.store import open_store
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(client: httpx.Client) -> list[Sample]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return [s for fam in text_string_to_metric_families(r.text) for s in fam.samples]


def pick(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name
            and all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0].value


def test_peer_series(api: Running, client: httpx.Client) -> None:
    api.service.add_peers(make_peers(3, groups=2))
    api.service.set_states({"peer-0000": Health.UP, "peer-0001": Health.DOWN})
    api.service.tick({"peer-0000": 1500})
    api.service.tick({"peer-0000": 500})
    s = scrape(client)
    up = {"peer": "peer-0000", "switch": "default", "group": "rack-0"}
    assert value(s, "hbmon_peer_state", **up, state="UP") == 1
    assert pick(s, "hbmon_peer_state", peer="peer-0000", state="DOWN") == []
    assert value(s, "hbmon_peer_health", **up) == 1
    assert value(s, "hbmon_peer_health", peer="peer-0001") == 3
    assert value(s, "hbmon_peer_health", peer="peer-0002") == 0
    assert value(s, "hbmon_peer_rtt_seconds", **up) == 0.0005
    assert value(s, "hbmon_peer_rtt_min_seconds", **up) == 0.0005
    assert value(s, "hbmon_peer_rtt_max_seconds", **up) == 0.0015
    assert value(s, "hbmon_peer_rx_heartbeats_total", **up) == 2
    assert value(s, "hbmon_peer_tx_heartbeats_total", **up) == 2
    assert value(s, "hbmon_peer_missed_heartbeats_total", peer="peer-0001") == 2
    assert value(s, "hbmon_peer_loss_ratio", peer="peer-0001") == 1.0
    assert value(s, "hbmon_peers", switch="default", state="UP") == 1
    assert value(s, "hbmon_peers", switch="leaf-2", state="UP") == 0
    assert value(s, "hbmon_switch_connected", switch="default", kind="kernel") == 1
    assert value(s, "hbmon_dataplane_packets_total", switch="default",
                 reason="RESPONSE_RECORDED") == 2
    # two rounds, a request to each of the three monitored peers, 74 bytes each
    assert value(s, "hbmon_dataplane_bytes_total", switch="default",
                 reason="REQUEST_SENT") == 2 * 3 * 74
    assert value(s, "hbmon_ready") == 1
    assert value(s, "hbmon_events_total", kind="peer_added") == 3
    assert value(s, "hbmon_events_total", kind="transition") == 2
    # a removed peer disappears from the next scrape
    api.service.remove_peers(["peer-0001"])
    assert pick(scrape(client), "hbmon_peer_health", peer="peer-0001") == []


def test_poll_histogram_and_api_latency(api: Running, client: httpx.Client) -> None:
    api.metrics.observe_poll("default", 0.003)
    api.metrics.observe_poll("default", 0.020)
    api.metrics.observe_poll("leaf-2", 0.7)
    api.metrics.poll_failed("leaf-2")
    client.get("/api/v1/peers")
    s = scrape(client)
    assert value(s, "hbmon_poll_duration_seconds_count", switch="default") == 2
    assert abs(value(s, "hbmon_poll_duration_seconds_sum", switch="default") - 0.023) < 1e-9
    assert value(s, "hbmon_poll_duration_seconds_bucket", switch="default", le="0.005") == 1
    assert value(s, "hbmon_poll_duration_seconds_bucket", switch="default", le="0.025") == 2
    assert value(s, "hbmon_poll_duration_seconds_bucket", switch="leaf-2", le="0.5") == 0
    assert value(s, "hbmon_poll_failures_total", switch="leaf-2") == 1
    assert value(s, "hbmon_api_request_duration_seconds_count", method="GET",
                 route="/api/v1/peers", status="200") >= 1


def test_registries_are_independent(tmp_path: object) -> None:
    """Two controllers in one process (tests, replicas): no duplicate-registration error."""
    a, b = ControllerMetrics(), ControllerMetrics()
    for m in (a, b):
        store = open_store("sqlite://:memory:")
        m.attach_service(FakeService(store, EventBus(store)))
        m.attach_service(FakeService(store, EventBus(store)))  # idempotent
    a.observe_poll("s", 0.01)
    text_a, text_b = a.render()[0].decode(), b.render()[0].decode()
    assert 'hbmon_poll_duration_seconds_count{switch="s"} 1.0' in text_a
    assert 'switch="s"' not in text_b


def test_label_values_are_escaped(api: Running, client: httpx.Client) -> None:
    peer = make_peers(1)[0]
    peer.group = 'odd "rack"\\ with\nnewline'
    api.service.add_peers([peer])
    s = scrape(client)
    assert value(s, "hbmon_peer_health", peer=peer.name, group=peer.group) == 0
