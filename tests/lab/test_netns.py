"""The namespace lab: built as the topology says, answers through it, removed in every case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from hbmon.protocol import PeerStatus, request_nonce
from hbmon_responder.responder import ControlClient
from hbmon_topo.model import Faults, Layout, Topology, multi, star
from hbmon_topo.netns import NetnsLab, cleanup_stale
from hbmon_topo.probe import Probe

pytestmark = pytest.mark.netns

MakeLab = Callable[[Topology], NetnsLab]


def leftovers(prefix: str) -> list[str]:
    """Namespaces and root-namespace links whose name starts with `prefix`."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                        check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    found = [n for n in ns if n.startswith(prefix)]
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            found.append(name)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_star_lab_is_what_the_topology_says(netns_lab: MakeLab) -> None:
    topo = star(3, ports=2)
    lab = netns_lab(topo)
    assert lab.port_map == {1: f"{lab.prefix}m1", 2: f"{lab.prefix}m2"}
    for port, iface in lab.port_map.items():
        out = lab.run("root", ["ip", "-o", "addr", "show", "dev", iface]).stdout
        assert "inet " not in out  # the data plane owns the monitor port: no host address
        link = lab.run("root", ["ip", "-o", "link", "show", "dev", iface]).stdout
        assert topo.port(port).mac in link and "state UP" in link
    for peer in topo.peers:
        out = lab.run(peer.name, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"{peer.address}/16" in out
        link = lab.run(peer.name, ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
        assert peer.mac in link
        neigh = lab.run(peer.name, ["ip", "neigh", "show", topo.monitor_address]).stdout
        assert topo.port(peer.port).mac in neigh and "PERMANENT" in neigh
    # peers on the same monitor port share a bridge; peers on different ports do not
    same = lab.run("peer01", ["ping", "-c1", "-W2", topo.peer("peer03").address], check=False)
    other = lab.run("peer01", ["ping", "-c1", "-W1", topo.peer("peer02").address], check=False)
    assert same.returncode == 0, same.stdout
    assert other.returncode != 0
    prefix = lab.prefix
    assert len(leftovers(prefix)) == 1 + 3 + 2  # fabric + peers namespaces, 2 monitor links
    lab.stop()
    assert leftovers(prefix) == []


def test_responders_answer_through_the_lab(netns_lab: MakeLab) -> None:
    topo = star(4, faults={1: Faults(mute=True), 2: Faults(status="degraded", load=40)})
    lab = netns_lab(topo)
    ctl = lab.start_responders()
    port = topo.port(1)
    with Probe(lab.monitor_iface(1), monitor_mac=port.mac,
               monitor_ip=topo.monitor_address) as probe:
        answers = probe.round(list(topo.peers), sequence=1)
        assert sorted(answers) == sorted(p.address for p in topo.peers if p.name != "peer02")
        for peer in topo.peers:
            if peer.address in answers:
                a = answers[peer.address]
                assert a.heartbeat.peer_id == peer.peer_id
                assert (a.dst_ip, a.src_port, a.dst_port) == (topo.monitor_address, 9190, 9191)
                # protocol v2: the nonce of this round's request comes back, with TTL 255 (the
                # lab's fabric is a bridge: no router decrements it)
                assert a.heartbeat.nonce == request_nonce(probe.nonce_key, 1)
                assert a.ttl == 255
        assert answers[topo.peer("peer03").address].heartbeat.status == PeerStatus.DEGRADED
        assert answers[topo.peer("peer03").address].heartbeat.load == 40
        ControlClient(ctl["peer02"]).set(mute=False)
        answers = probe.round(list(topo.peers), sequence=2)
        assert len(answers) == 4
    stats = ControlClient(ctl["peer02"]).get()["stats"]
    assert stats["dropped_mute"] == 1 and stats["answered"] == 1


def test_multi_layout_answers_from_every_address(netns_lab: MakeLab) -> None:
    topo = multi(300)
    assert topo.layout is Layout.MULTI
    lab = netns_lab(topo)
    lab.start_responders()
    port = topo.port(1)
    with Probe(lab.monitor_iface(1), monitor_mac=port.mac,
               monitor_ip=topo.monitor_address) as probe:
        answers = probe.round(list(topo.peers), sequence=77, timeout=5.0)
    assert len(answers) == 300
    for peer in topo.peers:
        assert answers[peer.address].heartbeat.peer_id == peer.peer_id  # from the asked address


def test_exception_inside_the_lab_removes_everything() -> None:
    with pytest.raises(RuntimeError, match="boom"), NetnsLab(star(2)) as lab:
        proc = lab.popen("peer01", ["sleep", "600"])
        prefix = lab.prefix
        assert leftovers(prefix)
        raise RuntimeError("boom")
    assert leftovers(prefix) == []
    assert proc.poll() is not None


def test_a_failing_build_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = NetnsLab(star(3))

    def fail(*args: object) -> None:
        raise OSError("netlink says no")

    monkeypatch.setattr(lab, "_configure_peer_ns", fail)
    with pytest.raises(OSError, match="netlink says no"):
        lab.start()
    assert leftovers(lab.prefix) == []


_LAB_SCRIPT = """
import json, sys, threading
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
with NetnsLab(star(2)) as lab:
    child = lab.popen("peer02", ["sleep", "600"])
    print(json.dumps({"prefix": lab.prefix, "run_id": lab.run_id, "child": child.pid}),
          flush=True)
    threading.Event().wait()
"""


def _start_lab_process() -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([sys.executable, "-c", _LAB_SCRIPT], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"lab process died: exit {proc.returncode}")
    return proc, json.loads(line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_remove_everything(sig: signal.Signals) -> None:
    proc, info = _start_lab_process()
    try:
        prefix, child = str(info["prefix"]), int(info["child"])  # type: ignore[call-overload]
        assert leftovers(prefix) and pid_alive(child)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert leftovers(prefix) == []
        assert not pid_alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cleanup_stale_after_kill_9() -> None:
    proc, info = _start_lab_process()
    prefix, child = str(info["prefix"]), int(info["child"])  # type: ignore[call-overload]
    proc.kill()
    proc.wait()
    assert leftovers(prefix), "nothing left behind to clean?"
    removed = cleanup_stale()
    assert info["run_id"] in removed
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(child)
    assert leftovers(prefix) == []


def test_in_netns_runs_code_inside_a_peer(netns_lab: MakeLab) -> None:
    import socket

    topo = star(2)
    lab = netns_lab(topo)

    def addresses() -> list[str]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # a UDP connect sends nothing: it only asks the namespace's routing for a source
            s.connect((topo.peer("peer02").address, 9))
            return [s.getsockname()[0]]

    assert lab.in_netns("peer01", addresses) == [topo.peer("peer01").address]
    assert lab.in_netns("peer02", addresses) == [topo.peer("peer02").address]  # its own
