"""Prometheus metrics, one `CollectorRegistry` per app (no process-global state).

Two kinds of metrics:

- pushed by the controller as things happen: `ControllerMetrics.observe_poll(switch, s)`
  feeds `hbmon_poll_duration_seconds`, `poll_failed(switch)` counts failed polls; the
  event outbox (events waiting for the store, `hbmon_event_outbox_depth`, read at scrape)
  counts failed publish attempts (`hbmon_event_publish_failures_total`, each retried)
  and events dropped by a full outbox (`hbmon_event_outbox_dropped_total`);
- read from the running service on every scrape by `ServiceMetrics` (per-peer health,
  per-reason data-plane counters, switch connection state), so nothing is sampled twice
  and a peer that was removed disappears from the next scrape. These are written straight
  in the text format (4,096 peers x 14 series) rather than through the registry. Nothing
  per peer is updated per poll: a scrape reads the health engine's arrays
  (`Fabric.peer_columns`) when the service has them, else one `PeerHealth` per peer.

Names follow Prometheus conventions: seconds, `_total` for counters, state as a label.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hbmon.api.service import HbmonService
from hbmon.model import HEALTHS, Health

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
        self.sse_clients_limit = Gauge(
            "hbmon_sse_clients_limit", "Event streams admitted at once (api.max_sse_clients)",
            registry=self.registry)
        self.event_outbox_depth = Gauge(
            "hbmon_event_outbox_depth",
            "Events emitted and not yet stored (waiting, or being retried after a store error)",
            registry=self.registry)
        self.event_publish_failures = Counter(
            "hbmon_event_publish_failures_total",
            "Attempts to store a batch of events that failed (the batch is retried)",
            registry=self.registry)
        self.event_outbox_dropped = Counter(
            "hbmon_event_outbox_dropped_total",
            "Events dropped, oldest first, because the outbox was full (store failing)",
            registry=self.registry)
        self._service: ServiceMetrics | None = None

    def watch_event_outbox(self, depth: Callable[[], int]) -> None:
        """`depth` is read on every scrape."""
        self.event_outbox_depth.set_function(depth)

    def event_publish_failed(self) -> None:
        self.event_publish_failures.inc()

    def events_dropped(self, count: int) -> None:
        self.event_outbox_dropped.inc(count)

    def observe_poll(self, switch: str, seconds: float) -> None:
        self.poll_duration.labels(switch=switch).observe(seconds)

    def poll_failed(self, switch: str) -> None:
        self.poll_failures.labels(switch=switch).inc()

    def digest_received(self, switch: str, count: int = 1) -> None:
        self.digests.labels(switch=switch).inc(count)

    def attach_service(
        self, service: HbmonService, extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        """Read `service` on every scrape (once); `extra` adds families of the caller's."""
        if self._service is None:
            self._service = ServiceMetrics(service)
            if extra is not None:
                self.registry.register(_Extra(extra))

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type: the registry, then the service."""
        body = generate_latest(self.registry)
        if self._service is not None:
            body += self._service.text().encode()
        return body, CONTENT_TYPE_LATEST


_BFD_STATE = {"ADMIN_DOWN": 0, "DOWN": 1, "INIT": 2, "UP": 3}


def _esc(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


class _Exposition:
    """Prometheus text format (0.0.4), written directly.

    prometheus_client's generic writer validates and escapes every label of every sample;
    with 4,096 peers x 14 series that is most of a second of the controller's CPU (and its
    GIL) per scrape. Here each peer's label set is escaped once and reused.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               rows: Iterable[tuple[str, float]]) -> None:
        sample = f"{name}_total" if kind == "counter" else name
        self.parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        self.parts.extend(f"{sample}{{{labels}}} {_num(value)}\n" for labels, value in rows)

    def columns(self, name: str, kind: str, help_text: str, labels: list[str],
                values: list[Any]) -> None:
        """A family from parallel lists; values are finite ints and floats (str() is then
        the text format's number)."""
        sample = f"{name}_total" if kind == "counter" else name
        self.parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        self.parts.extend(map((sample + "{{{}}} {}\n").format, labels, values))

    def text(self) -> str:
        return "".join(self.parts)


class ServiceMetrics:
    """Reads the service on every scrape: per-peer health, switches, data-plane counters."""

    def __init__(self, service: HbmonService) -> None:
        self.service = service
        # escaped label sets, kept while the service returns the same inventory lists
        self._labels: tuple[list[str], list[str], list[str], list[str]] | None = None

    def text(self) -> str:
        started = time.perf_counter()
        out = _Exposition()
        columns = getattr(self.service, "peer_columns", None)
        if columns is not None:
            per_switch = self._peers_from_columns(out, *columns())
        else:
            per_switch = self._peers_from_health(out)
        self._service_families(out, per_switch)
        out.parts.append("# HELP hbmon_scrape_collect_seconds Time to collect the service's "
                         "metrics\n# TYPE hbmon_scrape_collect_seconds gauge\n"
                         f"hbmon_scrape_collect_seconds {time.perf_counter() - started!r}\n")
        return out.text()

    def _peers_from_columns(self, out: _Exposition, names: list[str], switches: list[str],
                            groups: list[str], cols: dict[str, Any],
                            ) -> dict[str, dict[Health, int]]:
        """The per-peer families from the engine's arrays: a list per family, no object
        per peer (the same text as `_peers_from_health`)."""
        cached = self._labels
        if cached is None or not (cached[0] is names and cached[1] is switches
                                  and cached[2] is groups):
            labels = [f'peer="{_esc(n)}",switch="{_esc(s)}",group="{_esc(g)}"'
                      for n, s, g in zip(names, switches, groups, strict=True)]
            cached = self._labels = (names, switches, groups, labels)
        labels = cached[3]
        healths = [HEALTHS[i] for i in cols["health"].tolist()]
        codes = [HEALTH_CODE[h] for h in healths]
        out.parts.append("# HELP hbmon_peer_state 1 for the peer's current health state\n"
                         "# TYPE hbmon_peer_state gauge\n")
        out.parts.extend(map('hbmon_peer_state{{{},state="{}"}} 1\n'.format, labels, healths))
        out.columns("hbmon_peer_health", "gauge",
                    "Peer health as a number: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN, 4 ADMIN_DOWN",
                    labels, codes)
        out.columns("hbmon_peer_state_since_timestamp_seconds", "gauge",
                    "Wall-clock time of the last transition", labels, cols["since"].tolist())
        for name, help_text, field in (
                ("hbmon_peer_rtt_seconds", "Last heartbeat round-trip time", "rtt_last_us"),
                ("hbmon_peer_rtt_avg_seconds", "Round-trip time, data-plane EWMA",
                 "rtt_ewma_us"),
                ("hbmon_peer_rtt_min_seconds", "Smallest round-trip time seen", "rtt_min_us"),
                ("hbmon_peer_rtt_max_seconds", "Largest round-trip time seen", "rtt_max_us")):
            out.columns(name, "gauge", help_text, labels, (cols[field] / 1e6).tolist())
        out.columns("hbmon_peer_loss_ratio", "gauge",
                    "Heartbeat loss over the health engine's window", labels,
                    cols["loss_ratio"].tolist())
        for name, kind, help_text, field in (
                ("hbmon_peer_rx_heartbeats", "counter", "Responses recorded by the data plane",
                 "rx_count"),
                ("hbmon_peer_tx_heartbeats", "counter", "Requests sent by the data plane",
                 "tx_count"),
                ("hbmon_peer_duplicate_heartbeats", "counter", "Duplicate responses",
                 "dup_count"),
                ("hbmon_peer_missed_heartbeats", "counter", "Requests that got no response",
                 "miss_count"),
                ("hbmon_peer_reported_status", "gauge",
                 "Status the peer reports: 0 healthy, 1 degraded, 2 draining", "peer_status"),
                ("hbmon_peer_load", "gauge", "Load (0-255) the peer reports", "peer_load")):
            out.columns(name, kind, help_text, labels, cols[field].tolist())
        per_switch: dict[str, dict[Health, int]] = {}
        counts = collections.Counter(zip(switches, healths, strict=True))
        for (switch, health), n in counts.items():
            per_switch.setdefault(switch, dict.fromkeys(Health, 0))[health] += n
        return per_switch

    def _peers_from_health(self, out: _Exposition) -> dict[str, dict[Health, int]]:
        """The per-peer families from one `PeerHealth` per peer (any `HbmonService`)."""
        groups = {p.name: p.group or "" for p in self.service.list_peers()}
        health = self.service.all_health()
        labels = [f'peer="{_esc(h.name)}",switch="{_esc(h.switch)}",'
                  f'group="{_esc(groups.get(h.name, ""))}"' for h in health]
        pairs = list(zip(labels, health, strict=True))

        out.family("hbmon_peer_state", "gauge", "1 for the peer's current health state",
                   ((f'{lab},state="{h.state}"', 1) for lab, h in pairs))
        out.family("hbmon_peer_health", "gauge",
                   "Peer health as a number: 0 UNKNOWN, 1 UP, 2 DEGRADED, 3 DOWN, 4 ADMIN_DOWN",
                   ((lab, HEALTH_CODE[h.state]) for lab, h in pairs))
        out.family("hbmon_peer_state_since_timestamp_seconds", "gauge",
                   "Wall-clock time of the last transition", ((lab, h.since) for lab, h in pairs))
        out.family("hbmon_peer_rtt_seconds", "gauge", "Last heartbeat round-trip time",
                   ((lab, h.slot.rtt_last_us / 1e6) for lab, h in pairs))
        out.family("hbmon_peer_rtt_avg_seconds", "gauge", "Round-trip time, data-plane EWMA",
                   ((lab, h.rtt_avg_us / 1e6) for lab, h in pairs))
        out.family("hbmon_peer_rtt_min_seconds", "gauge", "Smallest round-trip time seen",
                   ((lab, h.slot.rtt_min_us / 1e6) for lab, h in pairs))
        out.family("hbmon_peer_rtt_max_seconds", "gauge", "Largest round-trip time seen",
                   ((lab, h.slot.rtt_max_us / 1e6) for lab, h in pairs))
        out.family("hbmon_peer_loss_ratio", "gauge",
                   "Heartbeat loss over the health engine's window",
                   ((lab, h.loss_ratio) for lab, h in pairs))
        out.family("hbmon_peer_rx_heartbeats", "counter", "Responses recorded by the data plane",
                   ((lab, h.slot.rx_count) for lab, h in pairs))
        out.family("hbmon_peer_tx_heartbeats", "counter", "Requests sent by the data plane",
                   ((lab, h.slot.tx_count) for lab, h in pairs))
        out.family("hbmon_peer_duplicate_heartbeats", "counter", "Duplicate responses",
                   ((lab, h.slot.dup_count) for lab, h in pairs))
        out.family("hbmon_peer_missed_heartbeats", "counter", "Requests that got no response",
                   ((lab, h.slot.miss_count) for lab, h in pairs))
        out.family("hbmon_peer_reported_status", "gauge",
                   "Status the peer reports: 0 healthy, 1 degraded, 2 draining",
                   ((lab, h.slot.peer_status) for lab, h in pairs))
        out.family("hbmon_peer_load", "gauge", "Load (0-255) the peer reports",
                   ((lab, h.slot.peer_load) for lab, h in pairs))
        per_switch: dict[str, dict[Health, int]] = {}
        for h in health:
            per_switch.setdefault(h.switch, dict.fromkeys(Health, 0))[h.state] += 1
        return per_switch

    def _service_families(self, out: _Exposition,
                          per_switch: dict[str, dict[Health, int]]) -> None:
        switches = self.service.switches()
        for sw in switches:
            per_switch.setdefault(sw.name, dict.fromkeys(Health, 0))
        out.family("hbmon_peers", "gauge", "Peers per switch and state",
                   ((f'switch="{_esc(name)}",state="{state}"', n)
                    for name, counts in sorted(per_switch.items())
                    for state, n in counts.items()))
        # peers without a MAC whose next hop is not resolved: no request is sent to them
        # (hbmon.dataplane.neighbours); a service without resolution has none
        unresolved = getattr(self.service, "unresolved_counts", None)
        counts = unresolved() if unresolved is not None else {}
        out.family("hbmon_peers_unresolved", "gauge",
                   "Peers whose next hop (MAC) is not resolved yet, per switch",
                   ((f'switch="{_esc(sw.name)}"', counts.get(sw.name, 0)) for sw in switches))
        # BFD sessions (docs/bfd.md): the RFC 5880 states, and the negotiated timers
        sessions = getattr(self.service, "bfd_sessions", None)
        bfd = [(f'peer="{_esc(peer)}",switch="{_esc(switch)}"', st)
               for peer, switch, st in (sessions() if sessions is not None else [])]
        out.family("hbmon_bfd_session_state", "gauge",
                   "BFD session state (RFC 5880): 0 AdminDown, 1 Down, 2 Init, 3 Up",
                   ((lab, _BFD_STATE[st["state"]]) for lab, st in bfd))
        out.family("hbmon_bfd_session_remote_state", "gauge",
                   "The remote's BFD state as last received (-1: nothing received yet)",
                   ((lab, _BFD_STATE.get(st["remote_state"], -1)) for lab, st in bfd))
        out.family("hbmon_bfd_session_diag", "gauge", "Our BFD diagnostic code",
                   ((lab, st["diag"]) for lab, st in bfd))
        out.family("hbmon_bfd_session_tx_interval_seconds", "gauge",
                   "Negotiated transmit interval", ((lab, st["tx_interval_us"] / 1e6)
                                                    for lab, st in bfd))
        out.family("hbmon_bfd_session_detect_time_seconds", "gauge",
                   "Negotiated detection time (0: none yet)",
                   ((lab, st["detect_time_us"] / 1e6) for lab, st in bfd))
        out.family("hbmon_switch_connected", "gauge",
                   "1 while the controller holds a P4Runtime session",
                   ((f'switch="{_esc(sw.name)}",kind="{_esc(sw.kind)}"', int(sw.connected))
                    for sw in switches))
        out.family("hbmon_switch_primary", "gauge", "1 while this controller is the primary",
                   ((f'switch="{_esc(sw.name)}"', int(sw.primary)) for sw in switches))
        out.family("hbmon_switch_last_poll_timestamp_seconds", "gauge",
                   "Wall-clock time of the last good read",
                   ((f'switch="{_esc(sw.name)}"', sw.last_poll) for sw in switches))

        counters = sorted(self.service.dataplane_counters().items())
        out.family("hbmon_dataplane_packets", "counter",
                   "Data-plane packets by outcome (hb_reason counter)",
                   ((f'switch="{_esc(sw)}",reason="{_esc(reason)}"', n_packets)
                    for sw, reasons in counters
                    for reason, (n_packets, _) in sorted(reasons.items())))
        out.family("hbmon_dataplane_bytes", "counter",
                   "Data-plane bytes by outcome (hb_reason counter)",
                   ((f'switch="{_esc(sw)}",reason="{_esc(reason)}"', n_bytes)
                    for sw, reasons in counters
                    for reason, (_, n_bytes) in sorted(reasons.items())))
        out.parts.append("# HELP hbmon_ready 1 once every switch has been read\n"
                         f"# TYPE hbmon_ready gauge\nhbmon_ready {int(self.service.ready())}\n")


class _Extra(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        return self._collect()
