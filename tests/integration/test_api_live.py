"""The fabric-manager surface against the real product: `hbmon serve` (controller, REST API,
SSE, /metrics, dashboard) driving the kernel data-plane target, with `hbmon responder`
peers in their own network namespaces. httpx for the API, Chromium for the dashboard, a
backup P4Runtime client for what the data plane really holds.

One lab and one stack serve the whole module (starting them is most of the cost). Each test
starts with every lab peer answering and UP, and gives back what it changed, also when it
fails. The tests that stop and restart a peer use different peers, so none of them is
pushed into flap damping by another: peer01 (reported status/load), peer02 (SSE), peer03
(dashboard); peer04's namespace also answers for the peer added over the API.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_harness import SseReader
from controller.test_integration import Target, read_state, wait_for
from hbmon.protocol import PeerStatus, Reason
from hbmon_topo.model import peer_address, star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import Stack, StackOptions
from playwright.sync_api import Browser, Page
from test_api_dashboard import SCREENSHOTS, browser, open_page, tile_states
from test_api_grafana import DASHBOARD as GRAFANA
from test_api_metrics import pick, scrape, value

pytestmark = pytest.mark.netns

__all__ = ["browser"]  # the Chromium fixture of the dashboard tests, same launch settings

# 100 ms x 3: a responder starved of CPU for a moment (Chromium starting on a shared 2-core
# machine) must not look dead. Detection latency is measured in bench/, not asserted here.
INTERVAL_MS = 100
POLL_MS = 200
# how long a state change may take (~0.5 s normally), with slack for a loaded machine
SETTLE = 30.0
SWITCH = "s1"


@dataclass
class Live:
    stack: Stack
    target: Target  # the lab, its topology and the target's gRPC address
    http: httpx.Client  # carries the write token

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.target.topology.peers]

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def health(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/peers/{name}/health")
        assert r.status_code == 200, r.text
        row: dict[str, Any] = r.json()
        return row

    def peer_names(self) -> set[str]:
        return {p["name"] for p in self.http.get("/api/v1/peers").json()["peers"]}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    topology = star(4)
    lab = NetnsLab(topology)
    stack: Stack | None = None
    http: httpx.Client | None = None
    try:
        lab.start()
        lab.start_responders()
        stack = Stack(lab, StackOptions(api_port=0, interval_ms=INTERVAL_MS,
                                        poll_interval_ms=POLL_MS, switch_name=SWITCH))
        stack.start()
        http = httpx.Client(base_url=stack.url, timeout=10.0,
                            headers={"Authorization": f"Bearer {stack.token}"})
        target = Target("kernel", lab, topology, stack.target, stack.grpc_addr, None)
        yield Live(stack, target, http)
    finally:
        if http is not None:
            http.close()
        if stack is not None:
            stack.stop()
        lab.stop()


@pytest.fixture(autouse=True)
def _every_peer_answering(live: Live) -> Iterator[None]:
    for name in live.names:
        live.target.ctl(name).reset()
    live.stack.wait_for({name: {"UP"} for name in live.names}, timeout=SETTLE)
    yield
    for name in live.names:
        live.target.ctl(name).reset()


# ---- data plane, read back by a backup client -------------------------------------------

@dataclass(frozen=True)
class Programmed:
    """The heartbeat tables and the fan-out group as the target holds them."""

    peers: frozenset[tuple[int, int, int]]  # (src_addr, peer_id, index)
    peer_ids: frozenset[int]
    requests: frozenset[int]  # peer_requests indexes
    fanout: frozenset[int]  # replica instances of group 1


def programmed(live: Live) -> Programmed:
    # read_state connects with election id 1: a backup next to the controller's 10
    entries, groups = read_state(live.target)

    def of(table: str) -> list[Any]:
        return [e for e in entries if e.table == table]

    return Programmed(
        peers=frozenset((e.match["src_addr"], e.match["peer_id"], e.params["index"])
                        for e in of("HbIngress.peers")),
        peer_ids=frozenset(e.match["peer_id"] for e in of("HbIngress.peer_ids")),
        requests=frozenset(e.match["index"] for e in of("HbEgress.peer_requests")),
        fanout=frozenset(r.instance for g in groups if g.id == 1 for r in g.replicas),
    )


# ---- SSE ---------------------------------------------------------------------------------

@contextlib.contextmanager
def events(live: Live, *, last_event_id: int | None = None,
           **params: Any) -> Iterator[SseReader]:
    """An SSE stream that is subscribed (its first comment arrived) when this yields."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    reader = SseReader(live.url + "/api/v1/events", headers, params)
    try:
        assert reader.connected.wait(10), "no response to the SSE request"
        assert reader.status == 200
        assert reader.content_type.startswith("text/event-stream")
        reader.first_comment = reader.comments.get(timeout=10)
        yield reader
    finally:
        reader.close()


def next_event(reader: SseReader, what: str, match: Callable[[dict[str, Any]], bool],
               timeout: float = SETTLE) -> dict[str, Any]:
    """The next frame whose event matches; earlier frames are kept in `reader.seen`."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = getattr(reader, "seen", [])
    reader.seen = seen  # type: ignore[attr-defined]
    while True:
        left = deadline - time.monotonic()
        try:
            frame = reader.next(timeout=max(0.01, left))
        except queue.Empty:
            raise AssertionError(f"no SSE event {what} within {timeout:g}s; saw "
                                 f"{[f['json'] for f in seen]}") from None
        seen.append(frame)
        if match(frame["json"]):
            return frame


def transition_to(peer: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e["kind"] == "transition" and e["peer"] == peer
                      and e["new_state"] == state)


# ---- the tests ---------------------------------------------------------------------------


def test_peers_up_and_one_peers_structure_values(live: Live) -> None:
    listing = live.http.get("/api/v1/peers").json()
    assert listing["total"] == len(live.names)
    assert {p["name"]: p["state"] for p in listing["peers"]} == dict.fromkeys(live.names, "UP")
    assert sorted(p["index"] for p in listing["peers"]) == list(range(len(live.names)))
    summary = live.http.get("/api/v1/health").json()
    assert summary["ready"] is True
    assert summary["total"] == len(live.names) and summary["states"]["UP"] == len(live.names)
    assert summary["switches"][SWITCH]["UP"] == len(live.names)
    [switch] = live.http.get("/api/v1/switches").json()["switches"]
    assert switch["name"] == SWITCH and switch["connected"] and switch["primary"]
    assert switch["address"] == live.stack.grpc_addr and switch["peers"] == len(live.names)

    # told over the control socket, carried in every response, recorded by the data plane
    live.target.ctl("peer01").set(status="draining", load=42)
    wait_for(lambda: (live.health("peer01")["reported_status"],
                      live.health("peer01")["load"]) == (PeerStatus.DRAINING, 42),
             SETTLE, "peer01's reported status and load in its slot")
    first = live.health("peer01")
    wait_for(lambda: (lambda h: h["rx_count"] > first["rx_count"]
                      and h["tx_count"] > first["tx_count"])(live.health("peer01")),
             SETTLE, "peer01's rx/tx counts to grow")
    second = live.health("peer01")
    assert second["sampled_at"] > first["sampled_at"]
    assert second["tx_count"] >= second["rx_count"] > first["rx_count"] > 0
    assert 0 < second["rtt_min_us"] <= second["rtt_avg_us"] <= second["rtt_max_us"]
    assert second["rtt_min_us"] <= second["rtt_last_us"] <= second["rtt_max_us"]
    assert second["reported_status"] == PeerStatus.DRAINING and second["load"] == 42
    assert second["loss_ratio"] < 0.5 and second["plane_state"] == 1
    # draining: alive, not fully healthy, and the reason says why
    live.stack.wait_for({"peer01": {"DEGRADED"}}, timeout=SETTLE)
    assert "DRAINING" in live.health("peer01")["reason"]
    row = live.http.get("/api/v1/peers/peer01").json()
    assert row["state"] == "DEGRADED" and row["health"]["load"] == 42

    live.target.ctl("peer01").set(status="healthy", load=0)
    live.stack.wait_for({"peer01": {"UP"}}, timeout=SETTLE)
    h = live.health("peer01")
    assert (h["reported_status"], h["load"]) == (PeerStatus.HEALTHY, 0)


def test_add_remove_and_refused_writes(live: Live) -> None:
    host = "peer04"  # its namespace answers for the extra address too
    spec = live.target.topology.peer(host)
    address = peer_address(200 + os.getpid() % 1000)
    name = f"extra-{os.getpid()}"
    extra = {"name": name, "address": address, "peer_id": 60_000 + os.getpid() % 1000,
             "mac": spec.mac, "port": spec.port, "switch": SWITCH, "group": "runtime"}
    lab = live.target.lab
    lab.run(host, ["ip", "address", "add", f"{address}/16", "dev", "eth0"])
    try:
        before = programmed(live)
        assert len(before.peers) == len(live.names)

        # writes need the token
        with live.anonymous() as anon:
            r = anon.post("/api/v1/peers", json=extra)
            assert r.status_code == 401, r.text
            assert r.json()["detail"]["field"] == "authorization"
            r = anon.delete("/api/v1/peers/peer01")
            assert r.status_code == 401, r.text
        assert name not in live.peer_names() and "peer01" in live.peer_names()

        r = live.http.post("/api/v1/peers", json=extra)
        assert r.status_code == 201, r.text
        index = r.json()["index"]
        assert index not in {i for _, _, i in before.peers}
        after = programmed(live)
        src = int(ipaddress.IPv4Address(address))
        assert after.peers == before.peers | {(src, extra["peer_id"], index)}
        assert after.peer_ids == before.peer_ids | {extra["peer_id"]}
        assert after.requests == before.requests | {index}
        assert after.fanout == before.fanout | {index}
        live.stack.wait_for({name: {"UP"}}, timeout=SETTLE)
        # UP may come from a digest before the next poll has read the slot
        wait_for(lambda: live.health(name)["rx_count"] > 0, SETTLE, f"a poll of {name}")
        assert live.health(name)["rtt_min_us"] > 0

        # 409 on a duplicate name, and on a new name with a taken address
        r = live.http.post("/api/v1/peers", json=extra)
        assert r.status_code == 409, r.text
        assert r.json()["detail"]["field"] == "name"
        r = live.http.post("/api/v1/peers", json={**extra, "name": f"{name}-b",
                                                  "peer_id": extra["peer_id"] + 1})
        assert r.status_code == 409, r.text
        assert r.json()["detail"]["field"] == "address"

        # a bulk add with one bad item: 422 naming it, nothing applied anywhere
        listed = live.peer_names()
        good = {**extra, "name": f"{name}-c", "address": peer_address(1500),
                "peer_id": extra["peer_id"] + 2}
        bad = {**good, "name": f"{name}-d", "address": "198.18.300.1",
               "peer_id": extra["peer_id"] + 3}
        r = live.http.post("/api/v1/peers/bulk", json={"peers": [good, bad]})
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["field"] == "peers[1].address"
        # ... and one whose second item conflicts with a peer that exists
        r = live.http.post("/api/v1/peers/bulk", json={"peers": [
            good, {**good, "name": f"{name}-e", "address": address,
                   "peer_id": extra["peer_id"] + 4}]})
        assert r.status_code == 409, r.text
        assert r.json()["detail"]["field"] == "peers[1].address"
        assert live.peer_names() == listed
        assert programmed(live) == after

        r = live.http.delete(f"/api/v1/peers/{name}")
        assert r.status_code == 204, r.text
        assert programmed(live) == before
        assert live.http.get(f"/api/v1/peers/{name}").status_code == 404
        assert name not in live.peer_names()
    finally:
        with contextlib.suppress(httpx.HTTPError):
            live.http.delete(f"/api/v1/peers/{name}")
        lab.run(host, ["ip", "address", "del", f"{address}/16", "dev", "eth0"], check=False)


def test_stopped_peer_is_announced_over_sse_and_resumable(live: Live) -> None:
    peer = "peer02"
    ctl = live.target.ctl(peer)
    with events(live) as watch, events(live, peer=peer) as dropped:
        ctl.set(mute=True)  # the responder stops answering
        down = next_event(watch, f"{peer} DOWN", transition_to(peer, "DOWN"))
        assert down["event"] == "transition"
        # the loss rule may notice the silence a poll before the detection does
        assert down["json"]["old_state"] in ("UP", "DEGRADED") and down["json"]["reason"]
        assert down["json"]["switch"] == SWITCH
        assert int(down["id"]) == down["json"]["id"]
        # the filtered stream sees the same event, then its client goes away
        assert next_event(dropped, f"{peer} DOWN (filtered)",
                          transition_to(peer, "DOWN"))["id"] == down["id"]
    history = live.http.get(f"/api/v1/peers/{peer}/history",
                            params={"kind": "transition"}).json()["events"]
    assert all(e["peer"] == peer for e in history)
    assert history[0] == down["json"]  # newest first; it is still DOWN

    with events(live) as watch:
        ctl.set(mute=False)  # restarted
        up = next_event(watch, f"{peer} UP", transition_to(peer, "UP"))
        assert up["json"]["old_state"] == "DOWN" and up["json"]["reason"]
    # the client that left after DOWN resumes from there and gets what it missed
    with events(live, last_event_id=int(down["id"]), peer=peer) as resumed:
        again = next_event(resumed, f"{peer} UP (resumed)", transition_to(peer, "UP"))
        assert again["id"] == up["id"] and again["json"] == up["json"]
        missed = [f["json"]["id"] for f in resumed.seen]  # type: ignore[attr-defined]
        assert all(i > int(down["id"]) for i in missed)
    history = live.http.get(f"/api/v1/peers/{peer}/history",
                            params={"kind": "transition"}).json()["events"]
    ids = [e["id"] for e in history]
    assert up["json"] in history and down["json"] in history
    assert ids.index(up["json"]["id"]) < ids.index(down["json"]["id"])  # newest first


def test_metrics_show_peer_states_and_dataplane_reasons(live: Live) -> None:
    def every_peer_up(samples: list[Any]) -> bool:
        return {s.labels["peer"] for s in pick(samples, "hbmon_peer_state", state="UP")
                if s.value == 1} == set(live.names)

    scrapes: list[list[Any]] = []

    def scraped_all_up() -> bool:
        scrapes.append(scrape(live.http))
        return every_peer_up(scrapes[-1])

    # one scrape that shows them all UP (a peer may blink on a loaded machine)
    wait_for(scraped_all_up, SETTLE, "a scrape with every peer UP")
    first = scrapes[-1]
    for name in live.names:
        assert value(first, "hbmon_peer_state", peer=name, switch=SWITCH, state="UP") == 1
        assert pick(first, "hbmon_peer_state", peer=name, state="DOWN") == []
        assert value(first, "hbmon_peer_health", peer=name) == 1
        assert value(first, "hbmon_peer_rx_heartbeats_total", peer=name) > 0
    reasons = {s.labels["reason"] for s in pick(first, "hbmon_dataplane_packets_total",
                                                switch=SWITCH)}
    assert {r.name for r in Reason} <= reasons
    recorded = value(first, "hbmon_dataplane_packets_total", switch=SWITCH,
                     reason=Reason.RESPONSE_RECORDED.name)
    sent = value(first, "hbmon_dataplane_packets_total", switch=SWITCH,
                 reason=Reason.REQUEST_SENT.name)
    assert recorded > 0 and sent > 0
    assert value(first, "hbmon_dataplane_packets_total", switch=SWITCH,
                 reason=Reason.BAD_MAGIC.name) == 0
    assert value(first, "hbmon_switch_connected", switch=SWITCH, kind="kernel") == 1
    assert value(first, "hbmon_ready") == 1
    # counters of a live data plane move between scrapes
    wait_for(lambda: value(scrape(live.http), "hbmon_dataplane_packets_total",
                           switch=SWITCH, reason=Reason.RESPONSE_RECORDED.name) > recorded,
             SETTLE, "RESPONSE_RECORDED to grow")
    # the same numbers as the REST view of the counters
    counters = live.http.get("/api/v1/dataplane/counters").json()["switches"][SWITCH]
    assert counters[Reason.RESPONSE_RECORDED.name]["packets"] > recorded

    # the Grafana dashboard's drop panel leaves out exactly the reasons that are not drops,
    # by the label values a live controller exposes (PromQL regexes are fully anchored)
    dashboard = json.loads(GRAFANA.read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Drops by reason"]
    [not_drops] = re.findall(r'reason!~"([^"]*)"', panel["targets"][0]["expr"])
    hidden = {r for r in reasons if re.fullmatch(not_drops, r)}
    assert hidden == {Reason.RESPONSE_RECORDED.name, Reason.REQUEST_SENT.name,
                      Reason.PEER_DOWN_EVENT.name, Reason.PEER_UP_EVENT.name}


def tiles_up(page: Page, names: list[str]) -> None:
    page.wait_for_function(
        "names => names.every(n => document.querySelector("
        "`[data-name=\"${n}\"][data-state=\"UP\"]`))", arg=names, timeout=30_000)


def test_dashboard_follows_a_stopped_peer_live(live: Live, browser: Browser) -> None:
    peer = "peer03"
    w = open_page(browser, live)  # type: ignore[arg-type]  # only .url is used
    page = w.page
    try:
        tiles_up(page, live.names)
        assert tile_states(page) == dict.fromkeys(live.names, "UP")
        live.target.ctl(peer).set(mute=True)
        page.wait_for_selector(f'[data-name="{peer}"][data-state="DOWN"]', timeout=30_000)
        page.wait_for_selector(f'#event-log [data-peer="{peer}"]', timeout=30_000)
        # the others stay UP on the page (waited for: on a loaded machine one may blink)
        others = [n for n in live.names if n != peer]
        tiles_up(page, others)
        assert tile_states(page) == {**dict.fromkeys(others, "UP"), peer: "DOWN"}
        assert live.stack.states()[peer] == "DOWN"
        page.mouse.move(0, 0)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "dashboard-live.png"))
        live.target.ctl(peer).set(mute=False)
        page.wait_for_selector(f'[data-name="{peer}"][data-state="UP"]', timeout=30_000)
        assert w.foreign == [], "the dashboard must not load anything from elsewhere"
        assert w.errors == []
    finally:
        page.close()
