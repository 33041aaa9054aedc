"""Mininet topologies (Debian's mininet): built from the same data, answering, removed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hbmon_responder.responder import ControlClient
from hbmon_topo.mn import MininetLab, load_mininet, mininet_available
from hbmon_topo.model import Faults, star
from hbmon_topo.probe import Probe

pytestmark = pytest.mark.netns


def root_links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def test_mininet_is_installed_and_loads_into_the_venv() -> None:
    assert mininet_available() is None
    mininet = load_mininet()
    from mininet.net import Mininet

    assert mininet.__file__ and "dist-packages" in mininet.__file__ and Mininet


def test_kernel_topology_peers_answer_through_mininet() -> None:
    # ports 1 and 2 carry two peers each (a Linux bridge), port 3 one peer (a direct link)
    topo = star(5, ports=3, faults={4: Faults(status="draining", load=9)})
    with MininetLab(topo, target="kernel") as lab:
        prefix = lab.prefix
        assert set(lab.port_map.values()) <= set(root_links(prefix))
        ctl = lab.start_responders()
        seen = {}
        for port in topo.ports:
            on_port = topo.peers_on(port.number)
            with Probe(lab.monitor_iface(port.number), monitor_mac=port.mac,
                       monitor_ip=topo.monitor_address) as probe:
                answers = probe.round(on_port, sequence=port.number)
            assert sorted(answers) == sorted(p.address for p in on_port)
            for peer in on_port:
                assert answers[peer.address].heartbeat.peer_id == peer.peer_id
            seen.update(answers)
        assert seen[topo.peer("peer05").address].heartbeat.status == 2
        assert ControlClient(ctl["peer05"]).get()["stats"]["answered"] == 1
        procs = list(lab._procs)
    assert root_links(prefix) == []
    assert all(p.poll() is not None for p in procs)


def test_mininet_lab_rejects_what_it_cannot_build() -> None:
    from hbmon_topo.model import multi

    with pytest.raises(ValueError, match="STAR"):
        MininetLab(multi(10))
    with pytest.raises(ValueError, match="kernel' or 'bmv2"):
        MininetLab(star(2), target="tofino")


@pytest.mark.bmv2
def test_bmv2_switch_node_starts_simple_switch_grpc_and_stops_it() -> None:
    from hbmon.dataplane import targets

    if targets.find_simple_switch_grpc() is None:
        pytest.skip("bmv2: simple_switch_grpc not found on PATH or $SIMPLE_SWITCH_GRPC")
    from hbmon_topo.stack import free_tcp_port

    topo = star(3, ports=3)
    grpc_addr = f"127.0.0.1:{free_tcp_port()}"
    with MininetLab(topo, target="bmv2", grpc_addr=grpc_addr,
                    thrift_port=free_tcp_port()) as lab:
        switch = lab.switch
        assert switch.port_map == lab.port_map == {
            1: f"{lab.prefix}s1", 2: f"{lab.prefix}s2", 3: f"{lab.prefix}s3"}
        pid = switch.pid_of_target
        assert pid is not None and switch.target.running()
        targets.wait_for_grpc(grpc_addr, 5.0)  # already ready: start() polled for it
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert f"1@{lab.prefix}s1".encode() in cmdline
        prefix, proc = lab.prefix, switch.target.process
    assert proc.poll() is not None
    assert root_links(prefix) == []
