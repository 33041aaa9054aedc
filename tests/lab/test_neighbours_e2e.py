"""Peers without a MAC (issue 14, "Neighbour resolution"), end to end on real parts: the
kernel target (or bmv2) on a namespace lab's monitor port, `hbmon serve`, `hbmon responder`s.

Lab: `star(3)`. peer02's namespace becomes a router with the peer's address behind it (the
GTSM test's `route_peer_through_router`); the host routes that address via the router's
lab address (a /32 route on the monitor interface, removed with it). Over REST, without
`mac`:
- peer01 (on-link): next hop = its own address, MAC = its MAC from ARP -> UP;
- peer02 (routed): next hop = the router, MAC = the router's -> UP (answers cross it);
- a ghost on-link address nobody answers ARP for: UNKNOWN "next hop unresolved", counted in
  `hbmon_peers_unresolved`, never sent a request (tx_count 0);
peer03 keeps its configured MAC and stays UP throughout.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hbmon_responder.responder import ControlClient
from hbmon_topo.model import Topology, star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import Stack, StackOptions, missing_for

from lab.test_gtsm_e2e import poll, route_peer_through_router

pytestmark = pytest.mark.netns

HBMON = str(Path(sys.executable).with_name("hbmon"))
ROUTER = "198.18.255.250"  # the router's lab address (route_peer_through_router)
GHOST = "198.18.1.200"  # on-link, no host has it: ARP never answered


def _api(st: Stack) -> httpx.Client:
    return httpx.Client(base_url=st.url, timeout=10,
                        headers={"Authorization": f"Bearer {st.token}"})


def _peer(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/peers/{name}")
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _unresolved_metric(api: httpx.Client) -> float:
    text = api.get("/metrics").text
    lines = [ln for ln in text.splitlines()
             if ln.startswith('hbmon_peers_unresolved{switch="s1"}')]
    assert len(lines) == 1, text[-2000:]
    return float(lines[0].split()[-1])


@pytest.mark.parametrize("target", ["kernel", "bmv2"])
def test_peers_without_mac_resolve_direct_and_routed_next_hops(
        netns_lab: Callable[[Topology], NetnsLab], target: str) -> None:
    if target == "bmv2" and missing_for("bmv2"):
        pytest.skip(f"bmv2 (simple_switch_grpc) not installed: {missing_for('bmv2')}")
    topo = star(3)
    lab = netns_lab(topo)
    direct, routed, fixed = topo.peers
    far = route_peer_through_router(lab, routed.name)
    iface = lab.monitor_iface(1)
    metric = 1000 + int(lab.run_id, 16) % 50_000  # no clash with another lab's route
    subprocess.run(["ip", "route", "add", f"{routed.address}/32", "via", ROUTER, "dev", iface,
                    "onlink", "metric", str(metric)], check=True)
    lab.start_responders(log=False)
    ctl = str(lab.workdir / "far.sock")
    far_proc = subprocess.Popen(["ip", "netns", "exec", far, HBMON, "responder", "--ctl", ctl],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ControlClient(ctl).wait_ready(timeout=20)
        options = StackOptions(target=target, api_port=0, interval_ms=50,
                               poll_interval_ms=100)
        with Stack(lab, options) as st, _api(st) as api:
            st.wait_for({p.name: {"UP"} for p in topo.peers}, timeout=60)
            # the configured peers go; the same ones come back over REST without a MAC
            for p in (direct, routed):
                assert api.delete(f"/api/v1/peers/{p.name}").status_code == 204
            added = {}
            for name, spec in (("direct", direct), ("routed", routed)):
                r = api.post("/api/v1/peers", json={
                    "name": name, "address": spec.address, "peer_id": spec.peer_id,
                    "port": spec.port, "switch": "s1"})
                assert r.status_code == 201, r.text
                added[name] = r.json()
                assert added[name]["mac"] is None
            r = api.post("/api/v1/peers", json={"name": "ghost", "address": GHOST,
                                                "peer_id": 4242, "port": 1, "switch": "s1"})
            assert r.status_code == 201, r.text

            st.wait_for({"direct": {"UP"}, "routed": {"UP"}, fixed.name: {"UP"}}, timeout=60)
            hop = _peer(api, "direct")["next_hop"]
            assert hop["address"] == direct.address and hop["mac"] == direct.mac.lower()
            assert hop["interface"] == iface
            # the router's MAC: the lab gave the router the routed peer's old MAC
            hop = _peer(api, "routed")["next_hop"]
            assert hop["address"] == ROUTER and hop["mac"] == routed.mac.lower(), hop
            assert _peer(api, "routed")["mac"] is None

            # the ghost: ARP fails; shown, counted, never sent a request
            poll(lambda: (_peer(api, "ghost")["next_hop"] or {}).get("state")
                 in ("FAILED", "INCOMPLETE"), 30, "the ghost's next hop to be tried")
            ghost = _peer(api, "ghost")
            assert ghost["mac"] is None and ghost["next_hop"]["mac"] is None
            assert ghost["state"] == "UNKNOWN"
            assert ghost["reason"].startswith("next hop unresolved"), ghost
            assert _unresolved_metric(api) == 1
            rows = {row["name"]: row for row in st.health()}
            assert rows["ghost"]["tx_count"] == 0, rows["ghost"]
            assert rows["ghost"]["reason"].startswith("next hop unresolved")
            assert rows["direct"]["tx_count"] > 0 and rows["routed"]["rx_count"] > 0
            # the others are unaffected by the unresolved one
            assert {n: st.states()[n] for n in ("direct", "routed", fixed.name)} == \
                {"direct": "UP", "routed": "UP", fixed.name: "UP"}

            # the ghost's address comes alive on the lab: its next hop resolves (retries
            # with backoff) and it goes UP; nothing is unresolved any more
            subprocess.run(["ip", "-n", lab.peer_ns(direct), "address", "add",
                            f"{GHOST}/{topo.prefixlen}", "dev", "eth0"], check=True)
            st.wait_for({"ghost": {"UP"}}, timeout=60)
            assert _peer(api, "ghost")["next_hop"]["mac"] == direct.mac.lower()
            assert _unresolved_metric(api) == 0
        stats = ControlClient(ctl).get()["stats"]
        assert stats["answered"] > 0 and not stats["invalid"], stats
    finally:
        lab.stop_process(far_proc)
        subprocess.run(["ip", "route", "del", f"{routed.address}/32", "dev", iface, "metric",
                        str(metric)], capture_output=True)
