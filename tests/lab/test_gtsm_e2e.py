"""Protocol v2 end to end on the kernel target (issue 11): `hbmon serve` programs nonce keys
and GTSM, `hbmon responder`s echo the nonce with TTL 255, and the data plane tells a directly
attached peer from one whose answers crossed a router.

Lab: `star(2)`; peer02's namespace is turned into a router: its address moves to a namespace
behind it (`<prefix>-far`, a /30 transit link), so requests to peer02 and its answers are
forwarded once each way and arrive with TTL 254 (RFC 5082). peer01 sits on the lab's bridge
(TTL 255 on arrival).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hbmon.protocol import request_nonce
from hbmon_responder.responder import ControlClient
from hbmon_topo.model import Topology, star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.probe import Probe
from hbmon_topo.stack import Stack, StackOptions

pytestmark = pytest.mark.netns

HBMON = str(Path(sys.executable).with_name("hbmon"))
TRANSIT = ("10.77.0.1", "10.77.0.2")  # router side, far side of the /30


def route_peer_through_router(lab: NetnsLab, peer: str) -> str:
    """Move `peer`'s address into a new namespace behind the peer's own (now a router);
    returns the new namespace (the lab removes it with the others)."""
    topo = lab.topology
    spec = topo.peer(peer)
    router = lab.peer_ns(peer)
    far = f"{lab.prefix}-far"
    lab._add_ns(far)  # tracked by the lab: removed at stop, also when the test fails
    subprocess.run(["ip", "-n", router, "link", "add", "tr0", "type", "veth", "peer", "name",
                    "eth0", "netns", far], check=True)
    batch = [
        # router: keeps the peer MAC (the controller's entry), gets another lab address for
        # the route back to the monitor, forwards the peer's address to the far side
        # (in this order: deleting a primary address deletes its secondaries)
        f"address del {spec.address}/{topo.prefixlen} dev eth0",
        f"address add 198.18.255.250/{topo.prefixlen} dev eth0",
        f"address add {TRANSIT[0]}/30 dev tr0", "link set tr0 up",
        f"route add {spec.address}/32 via {TRANSIT[1]} dev tr0",
        # the lab's static entry for the monitor address (nobody answers ARP for it) goes
        # with the address change: put it back
        f"neigh replace {topo.monitor_address} lladdr {topo.port(spec.port).mac} dev eth0 "
        "nud permanent",
    ]
    subprocess.run(["ip", "-n", router, "-batch", "-"], input="\n".join(batch), text=True,
                   check=True)
    for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter",
                "net/ipv4/conf/default/rp_filter"):
        subprocess.run(["ip", "netns", "exec", router, "sysctl", "-qw",
                        f"{key.replace('/', '.')}={'1' if 'forward' in key else '0'}"],
                       check=True)
    batch = ["link set lo up", f"address add {spec.address}/32 dev lo",
             f"address add {TRANSIT[1]}/30 dev eth0", "link set eth0 up",
             f"route add default via {TRANSIT[0]} src {spec.address}"]
    subprocess.run(["ip", "-n", far, "-batch", "-"], input="\n".join(batch), text=True,
                   check=True)
    return far


def poll(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def reasons(st: Stack) -> dict[str, int]:
    """hb_reason packets of the lab's switch (GET /api/v1/dataplane/counters)."""
    r = httpx.get(f"{st.url}/api/v1/dataplane/counters", timeout=5)
    r.raise_for_status()
    return {k: v["packets"] for k, v in r.json()["switches"]["s1"].items()}


def test_gtsm_counts_routed_answers_bad_ttl_while_a_direct_peer_is_up(
        netns_lab: Callable[[Topology], NetnsLab]) -> None:
    topo = star(2)
    lab = netns_lab(topo)
    direct, routed = topo.peers
    far = route_peer_through_router(lab, routed.name)
    lab.start_responders(log=False)  # peer01's is the one that answers; peer02's sees nothing
    ctl = str(lab.workdir / "far.sock")
    far_proc = subprocess.Popen(["ip", "netns", "exec", far, HBMON, "responder", "--ctl", ctl],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ControlClient(ctl).wait_ready(timeout=20)
        # the lab before any monitor: both answer a v2 request, echoing its nonce; the routed
        # one's answer crossed the router (TTL 254), the direct one's did not
        port = topo.port(1)
        with Probe(lab.monitor_iface(1), monitor_mac=port.mac,
                   monitor_ip=topo.monitor_address) as probe:
            answers = probe.round(list(topo.peers), sequence=5, timeout=5.0)
        assert set(answers) == {direct.address, routed.address}
        assert answers[direct.address].ttl == 255 and answers[routed.address].ttl == 254
        assert {a.heartbeat.nonce for a in answers.values()} == {
            request_nonce(probe.nonce_key, 5)}

        # GTSM off: the router does not matter, both peers are UP (nonces check out)
        with Stack(lab, StackOptions(api_port=0, interval_ms=50, poll_interval_ms=100)) as st:
            st.wait_for({direct.name: {"UP"}, routed.name: {"UP"}}, timeout=60)
            counts = reasons(st)
            assert counts.get("BAD_NONCE", 0) == counts.get("BAD_TTL", 0) == 0, counts
            assert counts.get("FUTURE_SEQUENCE", 0) == 0, counts

        # GTSM on (same store, so the same nonce keys): the routed peer's answers are BAD_TTL
        # and change nothing, so it goes DOWN; the direct peer stays UP
        options = StackOptions(api_port=0, interval_ms=50, poll_interval_ms=100, gtsm=True)
        with Stack(lab, options) as st:
            st.wait_for({direct.name: {"UP"}, routed.name: {"DOWN"}}, timeout=60)
            first = reasons(st)
            poll(lambda: reasons(st).get("BAD_TTL", 0) >= first.get("BAD_TTL", 0) + 20, 30,
                 "BAD_TTL to keep counting the routed peer's answers")
            rows = {r["name"]: r for r in st.health()}
            assert rows[routed.name]["rx_count"] == 0, rows[routed.name]
            assert rows[direct.name]["rx_count"] > 0
            assert st.states()[routed.name] == "DOWN"
            counts = reasons(st)
            assert counts.get("BAD_NONCE", 0) == 0, counts
            assert counts["RESPONSE_RECORDED"] > 0
        stats = ControlClient(ctl).get()["stats"]
        assert stats["answered"] > 0 and not stats["invalid"], stats
    finally:
        lab.stop_process(far_proc)
