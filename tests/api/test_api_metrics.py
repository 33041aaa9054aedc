"""Prometheus /metrics of the real product (tests/api/real_product.py): per-peer series
from the controller and the data plane's registers, data-plane counters, no globals.

The poll histogram test injects its observations over FakeService: it is about the
exposition of the histogram alone (exact buckets), which real polls, running all the time,
cannot give."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from api_fakes import FakeService, make_peers
from api_harness import Running, ServerFactory
from hbmon.api.metrics import ControllerMetrics
from hbmon.model import Health
from hbmon.protocol import IPV4_TOTAL_LEN
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from real_product import Product, wait_until


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


def test_peer_series(api: Product, client: httpx.Client) -> None:
    api.service.add_peers(make_peers(3, groups=2))
    api.set_states({"peer-0000": Health.UP, "peer-0001": Health.UP})
    api.set_states({"peer-0001": Health.DOWN})
    api.tick({"peer-0000": 1500})
    api.tick({"peer-0000": 500})
    dp = api.targets["default"].datapath
    reg = {n: {f: dp.register_read(f"hb_{f}", i) for f in (
        "rx_count", "tx_count", "miss_count", "rtt_last_us", "rtt_min_us", "rtt_max_us")}
        for n, i in (("peer-0000", 0), ("peer-0001", 1), ("peer-0002", 2))}
    assert reg["peer-0000"]["rtt_last_us"] == 500 and reg["peer-0000"]["rtt_max_us"] == 1500
    # the hb_reason counters are read every detail interval
    sent = sum(r["tx_count"] for r in reg.values())
    answered = sum(r["rx_count"] for r in reg.values())

    def counted() -> bool:
        s = scrape(client)
        return bool(value(s, "hbmon_dataplane_packets_total", switch="default",
                          reason="REQUEST_SENT") == sent
                    and value(s, "hbmon_dataplane_packets_total", switch="default",
                              reason="RESPONSE_RECORDED") == answered)
    wait_until(counted, f"{sent} requests and {answered} answers counted")
    s = scrape(client)
    up = {"peer": "peer-0000", "switch": "default", "group": "rack-0"}
    assert value(s, "hbmon_peer_state", **up, state="UP") == 1
    assert pick(s, "hbmon_peer_state", peer="peer-0000", state="DOWN") == []
    assert value(s, "hbmon_peer_health", **up) == 1
    assert value(s, "hbmon_peer_health", peer="peer-0001") == 3
    assert value(s, "hbmon_peer_health", peer="peer-0002") == 0
    # the registers, in seconds
    assert value(s, "hbmon_peer_rtt_seconds", **up) == 0.0005
    assert value(s, "hbmon_peer_rtt_min_seconds", **up) == reg["peer-0000"]["rtt_min_us"] / 1e6
    assert value(s, "hbmon_peer_rtt_max_seconds", **up) == 0.0015
    assert value(s, "hbmon_peer_rx_heartbeats_total", **up) == reg["peer-0000"]["rx_count"]
    assert value(s, "hbmon_peer_tx_heartbeats_total", **up) == reg["peer-0000"]["tx_count"]
    assert value(s, "hbmon_peer_missed_heartbeats_total", peer="peer-0001") == \
        reg["peer-0001"]["miss_count"] >= 2
    assert value(s, "hbmon_peer_loss_ratio", peer="peer-0001") == \
        api.service.health("peer-0001").loss_ratio
    assert value(s, "hbmon_peers", switch="default", state="UP") == 1
    assert value(s, "hbmon_peers", switch="leaf-2", state="UP") == 0
    assert value(s, "hbmon_switch_connected", switch="default", kind="kernel") == 1
    # every request the data plane sent, one Ethernet frame each
    assert value(s, "hbmon_dataplane_bytes_total", switch="default",
                 reason="REQUEST_SENT") == sent * (14 + IPV4_TOTAL_LEN)
    assert value(s, "hbmon_ready") == 1
    assert value(s, "hbmon_events_total", kind="peer_added") == 3
    assert value(s, "hbmon_events_total", kind="transition") == 3  # UP, UP, DOWN
    # a removed peer disappears from the next scrape
    api.service.remove_peers(["peer-0001"])
    assert pick(scrape(client), "hbmon_peer_health", peer="peer-0001") == []


def test_poll_histogram_and_api_latency(make_fake_server: ServerFactory) -> None:
    """The histogram's exposition alone, with injected observations: FakeService (a real
    controller polls all the time, so no exact bucket could be asserted)."""
    api: Running = make_fake_server()
    client = api.client()
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
    """Two controllers in one process (tests, replicas): no duplicate-registration error.
    The registries alone, so the service under them is FakeService."""
    a, b = ControllerMetrics(), ControllerMetrics()
    for m in (a, b):
        store = open_store("sqlite://:memory:")
        m.attach_service(FakeService(store, EventBus(store)))
        m.attach_service(FakeService(store, EventBus(store)))  # idempotent
    a.observe_poll("s", 0.01)
    text_a, text_b = a.render()[0].decode(), b.render()[0].decode()
    assert 'hbmon_poll_duration_seconds_count{switch="s"} 1.0' in text_a
    assert 'switch="s"' not in text_b


def test_label_values_are_escaped(api: Product, client: httpx.Client) -> None:
    peer = make_peers(1)[0]
    peer.group = 'odd "rack"\\ with\nnewline'
    api.service.add_peers([peer])
    s = scrape(client)
    assert value(s, "hbmon_peer_health", peer=peer.name, group=peer.group) == 0
