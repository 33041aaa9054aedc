"""Mininet topologies (Debian's mininet): built from the same data, answering, removed."""

from __future__ import annotations

import subprocess

import pytest
from hbmon.responder import ControlClient
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
