"""Prometheus metrics, one `CollectorRegistry` per app (no process-global state).

Two kinds of metrics:

- pushed by the controller as things happen: `ControllerMetrics.observe_poll(switch, s)`
  feeds `hbmon_poll_duration_seconds`, `poll_failed(switch)` counts failed polls;
- read from the running service on every scrape by `ServiceCollector` (per-peer health,
  per-reason data-plane counters, switch connection state), so nothing is sampled twice
  and a peer that was removed disappears from the next scrape.

Names follow Prometheus conventions: seconds, `_total` for counters, state as a label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .model import Health
from .service import HbmonService

# Numeric code of each state for `hbmon_peer_health` (state-timeline panels, alerts on >=).
HEALTH_CODE: dict[Health, int] = {
    Health.UNKNOWN: 0, Health.UP: 1, Health.DEGRADED: 2, Health.DOWN: 3, Health.ADMIN_DOWN: 4,
}
# Heartbeat intervals are 10 ms .. 1 s; a poll reads the whole structure in a few batches.
POLL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ControllerMetrics:
    """The metrics registry of one controller process and the controller's own series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.poll_duration = Histogram(
            "hbmon_poll_duration_seconds",
            "Time to read the whole health-check structure of one switch",
            ["switch"], buckets=POLL_BUCKETS, registry=self.registry)
        self.poll_failures = Counter(
            "hbmon_poll_failures_total", "Polls of a switch that failed", ["switch"],
            registry=self.registry)
        self.digests = Counter(
            "hbmon_digests_total", "Digest messages received from a switch", ["switch"],
            registry=self.registry)
        self.api_requests = Histogram(
            "hbmon_api_request_duration_seconds", "REST API request latency",
            ["method", "route", "status"], buckets=API_BUCKETS, registry=self.registry)
        self.sse_clients = Gauge(
            "hbmon_sse_clients", "Connected Server-Sent Events streams", registry=self.registry)
        self._service_collector: ServiceCollector | None = None

    def observe_poll(self, switch: str, seconds: float) -> None:
        self.poll_duration.labels(switch=switch).observe(seconds)

    def poll_failed(self, switch: str) -> None:
        self.poll_failures.labels(switch=switch).inc()

    def digest_received(self, switch: str, count: int = 1) -> None:
        self.digests.labels(switch=switch).inc(count)

    def attach_service(
        self, service: HbmonService, extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        """Read `service` on every scrape (once per registry)."""
        if self._service_collector is None:
            self._service_collector = ServiceCollector(service, extra)
            self.registry.register(self._service_collector)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServiceCollector(Collector):
    """Reads the service on scrape: per-peer health, switches, data-plane counters."""

    def __init__(
        self, service: HbmonService, extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        self.service = service
        self.extra = extra

    def describe(self) -> Iterator[Metric]:
        # Families are dynamic (one series per peer): describe nothing so registration does
        # not call into a service that may not be started yet.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        groups = {p.name: p.group or "" for p in self.service.list_peers()}
        peer_labels = ["peer", "switch", "group"]
        state = GaugeMetricFamily(
            "hbmon_peer_state", "1 for the peer's current health state", labels=[*peer_labels,
                                                                                 "state"])
        code = GaugeMetricFamily(
            "hbmon_peer_health",
            "Peer health as a number: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN, 4 ADMIN_DOWN",
            labels=peer_labels)
        since = GaugeMetricFamily(
            "hbmon_peer_state_since_timestamp_seconds", "Wall-clock time of the last transition",
            labels=peer_labels)
        rtt_last = GaugeMetricFamily(
            "hbmon_peer_rtt_seconds", "Last heartbeat round-trip time", labels=peer_labels)
        rtt_avg = GaugeMetricFamily(
            "hbmon_peer_rtt_avg_seconds", "Round-trip time, data-plane EWMA", labels=peer_labels)
        rtt_min = GaugeMetricFamily(
            "hbmon_peer_rtt_min_seconds", "Smallest round-trip time seen", labels=peer_labels)
        rtt_max = GaugeMetricFamily(
            "hbmon_peer_rtt_max_seconds", "Largest round-trip time seen", labels=peer_labels)
        loss = GaugeMetricFamily(
            "hbmon_peer_loss_ratio", "Heartbeat loss over the health engine's window",
            labels=peer_labels)
        rx = CounterMetricFamily(
            "hbmon_peer_rx_heartbeats", "Responses recorded by the data plane", labels=peer_labels)
        tx = CounterMetricFamily(
            "hbmon_peer_tx_heartbeats", "Requests sent by the data plane", labels=peer_labels)
        dup = CounterMetricFamily(
            "hbmon_peer_duplicate_heartbeats", "Duplicate responses", labels=peer_labels)
        miss = CounterMetricFamily(
            "hbmon_peer_missed_heartbeats", "Requests that got no response", labels=peer_labels)
        status = GaugeMetricFamily(
            "hbmon_peer_reported_status",
            "Status the peer reports: 0 healthy, 1 degraded, 2 draining", labels=peer_labels)
        load = GaugeMetricFamily(
            "hbmon_peer_load", "Load (0-255) the peer reports", labels=peer_labels)

        health = self.service.all_health()
        for h in health:
            values = [h.name, h.switch, groups.get(h.name, "")]
            s = h.slot
            state.add_metric([*values, str(h.state)], 1)
            code.add_metric(values, HEALTH_CODE[h.state])
            since.add_metric(values, h.since)
            rtt_last.add_metric(values, s.rtt_last_us / 1e6)
            rtt_avg.add_metric(values, h.rtt_avg_us / 1e6)
            rtt_min.add_metric(values, s.rtt_min_us / 1e6)
            rtt_max.add_metric(values, s.rtt_max_us / 1e6)
            loss.add_metric(values, h.loss_ratio)
            rx.add_metric(values, s.rx_count)
            tx.add_metric(values, s.tx_count)
            dup.add_metric(values, s.dup_count)
            miss.add_metric(values, s.miss_count)
            status.add_metric(values, s.peer_status)
            load.add_metric(values, s.peer_load)
        yield from (state, code, since, rtt_last, rtt_avg, rtt_min, rtt_max, loss, rx, tx, dup,
                    miss, status, load)

        summary = GaugeMetricFamily(
            "hbmon_peers", "Peers per switch and state", labels=["switch", "state"])
        per_switch: dict[str, dict[Health, int]] = {}
        for h in health:
            per_switch.setdefault(h.switch, dict.fromkeys(Health, 0))[h.state] += 1
        for sw in self.service.switches():
            per_switch.setdefault(sw.name, dict.fromkeys(Health, 0))
        for sw_name, counts in sorted(per_switch.items()):
            for state_name, n in counts.items():
                summary.add_metric([sw_name, str(state_name)], n)
        yield summary

        connected = GaugeMetricFamily(
            "hbmon_switch_connected", "1 while the controller holds a P4Runtime session",
            labels=["switch", "kind"])
        primary = GaugeMetricFamily(
            "hbmon_switch_primary", "1 while this controller is the primary", labels=["switch"])
        last_poll = GaugeMetricFamily(
            "hbmon_switch_last_poll_timestamp_seconds", "Wall-clock time of the last good read",
            labels=["switch"])
        for sw in self.service.switches():
            connected.add_metric([sw.name, sw.kind], 1 if sw.connected else 0)
            primary.add_metric([sw.name], 1 if sw.primary else 0)
            last_poll.add_metric([sw.name], sw.last_poll)
        yield from (connected, primary, last_poll)

        packets = CounterMetricFamily(
            "hbmon_dataplane_packets", "Data-plane packets by outcome (hb_reason counter)",
            labels=["switch", "reason"])
        octets = CounterMetricFamily(
            "hbmon_dataplane_bytes", "Data-plane bytes by outcome (hb_reason counter)",
            labels=["switch", "reason"])
        for sw_name, reasons in sorted(self.service.dataplane_counters().items()):
            for reason, (n_packets, n_bytes) in sorted(reasons.items()):
                packets.add_metric([sw_name, reason], n_packets)
                octets.add_metric([sw_name, reason], n_bytes)
        yield from (packets, octets)

        ready = GaugeMetricFamily("hbmon_ready", "1 once every switch has been read")
        ready.add_metric([], 1 if self.service.ready() else 0)
        yield ready

        if self.extra is not None:
            yield from self.extra()

        scrape = GaugeMetricFamily(
            "hbmon_scrape_collect_seconds", "Time to collect the service's metrics")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape
