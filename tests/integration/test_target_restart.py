"""A target restart under a running controller (issue 12), all parts real: a namespace lab
with responders, the data-plane target (`hbmon-kernel-target`; bmv2's `simple_switch_grpc`
when present) and `hbmon serve` (topo/stack.py's Stack).

The target is stopped (SIGTERM, and SIGKILL: no goodbye on the stream) and a new one is
started on the same gRPC address and ports. The new process knows nothing: no pipeline,
no entries, no group, no digest configuration, no rounds. Without any help, the controller

- reports the outage as the SWITCH's: a `switch` event "disconnected" in the history,
  `connected: false` in /api/v1/switches and `hbmon_switch_connected 0` in /metrics;
- does not report the peers as failed: no peer transition at all is recorded from the
  kill until the switch is back. What a network engineer expects: the switch is down, so
  nothing is known about the peers behind it; "every peer DOWN" would page for failures
  that did not happen. The peers keep their last verdict (the switch row says it is stale:
  `connected: false`, `last_poll` frozen);
- reconnects as primary (P4Runtime 1.4 section 5.3: a fresh target has no primary, the
  controller's election id wins), pushes the pipeline (section 9.1
  SetForwardingPipelineConfig), writes the entries and the fan-out group (section 9.1
  Write) and the digest configuration (section 9.6 DigestEntry), restarts the rounds, and
  every peer is UP again on the new target's registers (counters from 0).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from controller.test_integration import Target, read_state, wait_for
from hbmon.dataplane import targets
from hbmon.p4 import DigestEntry, P4Schema
from hbmon.p4.client import P4RuntimeClient
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import P4INFO, Stack, StackOptions, missing_for

pytestmark = pytest.mark.netns

N_PEERS = 3
SETTLE = 60.0
# how long the switch stays away: many DOWN deadlines (detect_mult x interval = 150 ms)
# and poll intervals, so a controller that turned the silence into peer verdicts would
OUTAGE_S = 2.0
MIN_RX = 40  # answers per peer the old target counts before it is stopped (2 s of rounds)


@dataclass
class Lab:
    kind: str
    lab: NetnsLab
    stack: Stack

    @property
    def url(self) -> str:
        return self.stack.url

    def get(self, path: str, **params: Any) -> Any:
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            r = http.get(path, params=params)
            r.raise_for_status()
            return r.json() if path.startswith("/api") else r.text

    def switch(self) -> dict[str, Any]:
        row: dict[str, Any] = self.get("/api/v1/switches/s1")
        return row

    def states(self) -> dict[str, str]:
        return self.stack.states()

    def events_after(self, after: int) -> list[dict[str, Any]]:
        """Persisted events with id > `after`, oldest first."""
        page = self.get("/api/v1/events/history", limit=1000)
        return sorted((e for e in page["events"] if e["id"] > after), key=lambda e: e["id"])

    def last_event_id(self) -> int:
        page = self.get("/api/v1/events/history", limit=1)
        return int(page["events"][0]["id"]) if page["events"] else 0

    def connected_metric(self) -> int:
        text = self.get("/metrics")
        m = re.search(r'^hbmon_switch_connected\{switch="s1",kind="[^"]*"\} (\S+)$', text,
                      re.MULTILINE)
        assert m is not None, text[-2000:]
        return int(float(m.group(1)))

    def start_target(self) -> None:
        """A new target process on the same gRPC address (and Thrift port) and ports."""
        st = self.stack
        st.target = targets.start_target(
            self.kind, self.lab.port_map, grpc_addr=st.grpc_addr,
            thrift_port=st.thrift_port or targets.DEFAULT_THRIFT_PORT,
            output_path=st.workdir / f"target-{time.monotonic_ns()}.log", wait=60.0)


@pytest.fixture(scope="module", params=["kernel", "bmv2"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    kind: str = request.param
    missing = missing_for(kind)
    if kind == "bmv2" and missing:
        pytest.skip("bmv2 missing: " + "; ".join(missing))
    assert not missing, missing
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    netns = NetnsLab(star(N_PEERS, name=f"tr{kind[0]}"))
    stack: Stack | None = None
    try:
        netns.start()
        netns.start_responders()
        stack = Stack(netns, StackOptions(target=kind, api_port=0, interval_ms=50,
                                          poll_interval_ms=100))
        stack.start()
        yield Lab(kind, netns, stack)
    finally:
        if stack is not None:
            stack.stop()
        netns.stop()


def _wait(lab: Lab, cond: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_for, with the end of the controller's log in the failure."""
    try:
        wait_for(cond, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- serve.log:\n{lab.stack.log_tail('serve.log', 40)}"
                             ) from None


def _digest_configured(grpc: str) -> bool:
    """Whether the target holds the controller's DigestEntry for peer_event_t, read by a
    client without an election id (a backup: it cannot disturb the controller)."""
    schema = P4Schema.load(P4INFO)
    with P4RuntimeClient(grpc, 1, election_id=None, take_over=False, schema=schema) as c:
        c.connect(timeout=10)
        return bool(c.read([DigestEntry("peer_event_t")]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_target_restart_is_the_switchs_outage_not_the_peers(lab: Lab, sig: int) -> None:
    names = sorted(p.name for p in lab.lab.topology.peers)
    _wait(lab, lambda: lab.states() == dict.fromkeys(names, "UP")
             and all(r["rx_count"] >= MIN_RX for r in lab.stack.health()), SETTLE,
             f"every peer UP with >= {MIN_RX} answers")
    assert lab.switch()["connected"] and lab.connected_metric() == 1
    before = lab.last_event_id()
    old = lab.stack.target
    old_rx = {row["name"]: row["rx_count"] for row in lab.stack.health()}

    # 1. the target goes away
    os.kill(old.pid, sig)
    assert old.process.wait(30) is not None
    old.stop()  # closes its log
    _wait(lab, lambda: not lab.switch()["connected"], SETTLE, "the switch reported down")
    down_at = time.monotonic()
    assert lab.connected_metric() == 0
    _wait(lab, lambda: time.monotonic() - down_at >= OUTAGE_S and not lab.switch()["connected"],
             OUTAGE_S + 5, "the outage to last")
    during = lab.events_after(before)
    assert [e for e in during if e["kind"] == "transition"] == [], during
    assert any(e["kind"] == "switch" and e["switch"] == "s1"
               and e["reason"].startswith("disconnected") for e in during), during
    # no verdict is made up while nothing can be read: the last ones stand
    assert set(lab.states().values()) == {"UP"}, lab.states()
    assert lab.get("/api/v1/health")["ready"] is False or not lab.switch()["connected"]

    # 2. a new target on the same address: the controller comes back by itself
    lab.start_target()
    _wait(lab, lambda: lab.switch()["connected"] and lab.switch()["primary"], SETTLE,
             "the controller reconnected as primary")
    # the polls read the new target's registers, which count from 0 (the old one had
    # counted >= MIN_RX answers per peer) ...
    _wait(lab, lambda: all(r["rx_count"] < old_rx[r["name"]] for r in lab.stack.health()),
             SETTLE, f"a poll of the new target's fresh slots (old counts {old_rx})")
    # ... and the new target's rounds are answered: counts grow, every peer UP
    _wait(lab, lambda: lab.states() == dict.fromkeys(names, "UP")
             and all(r["rx_count"] >= MIN_RX for r in lab.stack.health()), SETTLE,
             "every peer answering on the new target")
    assert lab.connected_metric() == 1

    # everything re-pushed: entries and group for exactly the inventory, digest config
    target = Target(lab.kind, lab.lab, lab.lab.topology, lab.stack.target,
                    lab.stack.grpc_addr, lab.stack.thrift_port)
    entries, groups = read_state(target)
    peers = {e.params["index"] for e in entries if e.table == "HbIngress.peers"}
    requests = {e.match["index"] for e in entries if e.table == "HbEgress.peer_requests"}
    fanout = {r.instance for g in groups if g.id == 1 for r in g.replicas}
    indexes = {int(p["index"]) for p in lab.get("/api/v1/peers")["peers"]}
    assert peers == requests == fanout == indexes, (peers, requests, fanout, indexes)
    assert _digest_configured(lab.stack.grpc_addr)

    # 3. the history: the switch went and came back; the peers never changed state
    after = lab.events_after(before)
    assert [e for e in after if e["kind"] == "transition"] == [], after
    switch_events = [e["reason"] for e in after if e["kind"] == "switch"]
    assert switch_events[0].startswith("disconnected"), switch_events
    assert switch_events[-1] == "connected as primary", switch_events
