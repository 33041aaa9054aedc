"""The controller against real targets with real responder peers in network namespaces.

Parametrised over the kernel target (always) and bmv2 (skips, naming what is missing, when
simple_switch_grpc or the compiled P4 program is absent). One lab (4 peers in their own
namespaces, one monitor port) and one target per kind serve the whole module; each test
starts its own controller with its own store, so each also checks that a fresh controller
reconciles whatever the previous one left on the target.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hbmon.config import DEFAULT_BMV2_JSON, DEFAULT_P4INFO, FabricConfig, parse_config
from hbmon.controller.fabric import Fabric
from hbmon.dataplane import targets
from hbmon.model import Event, EventKind, Health, Peer
from hbmon.p4 import MulticastGroup, P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store
from hbmon_responder.responder import ControlClient
from hbmon_topo.model import Topology, star
from hbmon_topo.netns import NetnsLab

pytestmark = pytest.mark.netns

INTERVAL_MS = 50
DETECT = 3
POLL_MS = 100
N_PEERS = 4
# the committed p4c outputs unless overridden (e.g. to try a fresh compile before committing)
P4INFO = Path(os.environ.get("HBMON_P4INFO") or DEFAULT_P4INFO)
BMV2_JSON = Path(os.environ.get("HBMON_BMV2_JSON") or DEFAULT_BMV2_JSON)
HBMON = str(Path(sys.executable).with_name("hbmon"))


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `cond` until true; returns the seconds it took."""
    start = time.monotonic()
    tick = threading.Event()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        tick.wait(0.01)
    return time.monotonic() - start


@dataclass
class Target:
    kind: str
    lab: NetnsLab
    topology: Topology
    process: targets.TargetProcess
    grpc: str
    thrift_port: int | None

    def switch_config(self) -> dict[str, Any]:
        sw: dict[str, Any] = {"name": "s1", "kind": self.kind, "grpc": self.grpc,
                              "device_id": 1, "p4info": str(P4INFO),
                              "ports": {k: v for k, v in self.lab.port_map.items()}}
        if self.kind == "bmv2":
            sw["thrift_port"] = self.thrift_port
            sw["bmv2_json"] = str(BMV2_JSON)
        return sw

    def config(self, peers: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        chosen = [p for p in self.topology.peers if peers is None or p.name in peers]
        data: dict[str, Any] = {
            "interval_ms": INTERVAL_MS, "detect_mult": DETECT, "poll_interval_ms": POLL_MS,
            "monitor": {"mac": self.topology.port(1).mac, "ip": self.topology.monitor_address},
            "health": {"flap_count": 4, "flap_window_s": 20, "hold_down_s": 2,
                       "rtt_degraded_us": 500_000, "loss_degraded": 0.5,
                       "loss_recover": 0.2},
            "switches": [self.switch_config()],
            "peers": [p.to_peer_dict("s1") for p in chosen],
        }
        data.update(extra)
        return data

    def ctl(self, peer: str) -> ControlClient:
        return ControlClient(self.lab.ctl_path(peer))


@pytest.fixture(scope="module", params=["kernel", "bmv2"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    kind: str = request.param
    if kind == "bmv2":
        if targets.find_simple_switch_grpc() is None:
            pytest.skip("bmv2 simple_switch_grpc not found (PATH or $SIMPLE_SWITCH_GRPC)")
        if not BMV2_JSON.exists():
            pytest.skip(f"compiled P4 program {BMV2_JSON} missing (p4c: make p4-build)")
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    topology = star(N_PEERS, faults={})
    lab = NetnsLab(topology)
    lab.start()
    process = None
    try:
        lab.start_responders()
        grpc_addr = f"127.0.0.1:{free_tcp_port()}"
        thrift = free_tcp_port() if kind == "bmv2" else None
        process = targets.start_target(
            kind, lab.port_map, grpc_addr=grpc_addr, device_id=1,
            thrift_port=thrift or targets.DEFAULT_THRIFT_PORT,
            output_path=lab.workdir / f"{kind}-target.log", wait=60)
        yield Target(kind, lab, topology, process, grpc_addr, thrift)
    finally:
        if process is not None:
            process.stop()
        lab.stop()


@pytest.fixture(autouse=True)
def _healthy_peers(target: Target) -> None:
    for p in target.topology.peers:
        target.ctl(p.name).reset()


class Controller:
    """A Fabric with its own SQLite store, as `hbmon serve` builds it (minus the API)."""

    def __init__(self, config: FabricConfig, db: Path) -> None:
        self.store = open_store(f"sqlite:///{db}")
        self.bus = EventBus(self.store)
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.bus.add_listener(self._record)
        self.fabric = Fabric(config, self.store, self.bus)

    def _record(self, events: Any) -> None:
        with self._lock:
            self.events.extend(events)

    def transitions(self, peer: str) -> list[Event]:
        self.fabric.flush_events()  # health changes first, events are published after
        with self._lock:
            return [e for e in self.events
                    if e.kind == EventKind.TRANSITION and e.peer == peer]

    def state(self, peer: str) -> Health:
        return self.fabric.health(peer).state

    def wait_state(self, peer: str, state: Health, timeout: float = 15.0) -> float:
        return wait_for(lambda: self.state(peer) == state, timeout,
                        f"{peer} {state} (now {self.fabric.health(peer)})")

    def close(self) -> None:
        self.fabric.stop()
        self.store.close()


@pytest.fixture
def controller_factory(target: Target, tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    made: list[Controller] = []

    def make(peers: list[str] | None = None, db: str = "hb.db", **extra: Any) -> Controller:
        ctl = Controller(parse_config(target.config(peers, **extra)), tmp_path / db)
        made.append(ctl)
        ctl.fabric.start()
        assert ctl.fabric.wait_ready(60), ctl.fabric.switches()
        return ctl

    yield make
    for ctl in made:
        ctl.close()


def read_state(target: Target) -> tuple[list[TableEntry], list[MulticastGroup]]:
    """What the target holds, read by a separate backup client (does not disturb the
    controller's mastership)."""
    schema = P4Schema.load(P4INFO)
    with P4RuntimeClient(target.grpc, 1, election_id=1, schema=schema) as client:
        client.connect(timeout=10)
        tables = [TableEntry(t) for t in
                  ("HbIngress.peers", "HbIngress.peer_ids", "HbEgress.peer_requests")]
        entries = [TableEntry.decode(schema, e) for e in client.read(tables)]
        groups = [MulticastGroup.decode(schema, e) for e in client.read([MulticastGroup(0)])]
    return entries, groups


def assert_programmed(target: Target, peers: dict[str, int]) -> None:
    """Exactly these peers (name -> index) are programmed, once each."""
    entries, groups = read_state(target)
    by_table: dict[str, list[TableEntry]] = {}
    for e in entries:
        by_table.setdefault(e.table, []).append(e)
    specs = {p.name: p for p in target.topology.peers}
    want_ids = sorted(specs[n].peer_id for n in peers)
    assert sorted(e.match["peer_id"] for e in by_table.get("HbIngress.peer_ids", [])) == want_ids
    assert sorted(e.params["index"] for e in by_table.get("HbIngress.peers", [])) == \
        sorted(peers.values())
    assert sorted(e.match["index"] for e in by_table.get("HbEgress.peer_requests", [])) == \
        sorted(peers.values())
    fanout = [g for g in groups if g.id == 1]
    if peers:
        assert len(fanout) == 1
        assert sorted(r.instance for r in fanout[0].replicas) == sorted(peers.values())
    else:
        assert not fanout or not fanout[0].replicas


# ---------------------------------------------------------------------------------------------


def test_peers_come_up(target: Target, controller_factory: Callable[..., Controller]) -> None:
    ctl = controller_factory()
    for p in target.topology.peers:
        ctl.wait_state(p.name, Health.UP)
    # UP may come from a digest before the next poll has read the slot
    wait_for(lambda: ctl.fabric.health("peer01").slot.rx_count > 1, 10, "a poll with answers")
    h = ctl.fabric.health("peer01")
    assert h.slot.tx_count >= h.slot.rx_count > 0 and h.slot.miss_count <= DETECT
    assert h.slot.rtt_last_us > 0 and h.slot.rtt_min_us <= h.slot.rtt_max_us
    assert h.slot.state == 1 and h.slot.last_rx_us > 0
    counters = ctl.fabric.dataplane_counters()["s1"]
    assert counters["RESPONSE_RECORDED"][0] > 0 and counters["REQUEST_SENT"][0] > 0
    assert_programmed(target, {p.name: p.index for p in ctl.fabric.list_peers()
                               if p.index is not None})


def test_stopped_peer_goes_down_and_comes_back(
        target: Target, controller_factory: Callable[..., Controller]) -> None:
    ctl = controller_factory()
    for p in target.topology.peers:
        ctl.wait_state(p.name, Health.UP)
    stopped = time.monotonic()
    target.ctl("peer02").set(mute=True)
    took = ctl.wait_state("peer02", Health.DOWN)
    bound = (INTERVAL_MS * (DETECT + 1) + POLL_MS) / 1000
    # wall-clock slack for a shared 2-core CI machine; the tight number is in bench/
    assert took <= bound + 1.5, f"DOWN after {took:.3f}s, bound {bound:.3f}s"
    down = [e for e in ctl.transitions("peer02") if e.new_state == Health.DOWN]
    assert down and down[-1].reason
    # DOWN is due detect_mult periods after the LAST ANSWER (docs/dataplane.md, the deadline
    # sweeper), and that answer came up to one period before the mute: never sooner than
    # (detect_mult - 1) periods after it
    assert time.monotonic() - stopped >= (INTERVAL_MS * (DETECT - 1)) / 1000
    for other in ("peer01", "peer03", "peer04"):
        assert ctl.state(other) == Health.UP
    target.ctl("peer02").set(mute=False)
    ctl.wait_state("peer02", Health.UP)
    assert [e.new_state for e in ctl.transitions("peer02")][-2:] == [Health.DOWN, Health.UP]


def test_flapping_peer_is_damped(target: Target,
                                 controller_factory: Callable[..., Controller]) -> None:
    ctl = controller_factory(peers=["peer03"])
    ctl.wait_state("peer03", Health.UP)
    # answers for 0.5 s, silent for 0.5 s: each silence outlasts detection (3 x 50 ms)
    target.ctl("peer03").set(flap=0.5)
    ctl.wait_state("peer03", Health.DEGRADED, timeout=20)
    assert ctl.fabric.engine.damped("peer03")
    states = [e.new_state for e in ctl.transitions("peer03")]
    assert Health.DOWN in states
    damped_at = len(states) - 1 - states[::-1].index(Health.DEGRADED)
    target.ctl("peer03").set(flap=0)
    # stable for the hold-down (2 s): released to UP, with no DOWN/UP churn meanwhile
    ctl.wait_state("peer03", Health.UP, timeout=20)
    after = [e.new_state for e in ctl.transitions("peer03")[damped_at + 1:]]
    assert after == [Health.UP]


def test_add_and_remove_at_runtime(target: Target,
                                   controller_factory: Callable[..., Controller]) -> None:
    ctl = controller_factory(peers=["peer01"])
    ctl.wait_state("peer01", Health.UP)
    spec = target.topology.peer("peer04")
    [added] = ctl.fabric.add_peers([Peer.from_dict(spec.to_peer_dict("s1"))])
    assert added.index == 1
    ctl.wait_state("peer04", Health.UP)
    assert_programmed(target, {"peer01": 0, "peer04": 1})
    ctl.fabric.remove_peers(["peer04"])
    assert_programmed(target, {"peer01": 0})
    # no requests reach it any more: the responder's count stops growing
    before = target.ctl("peer04").get()["stats"]["received"]
    rx = ctl.fabric.health("peer01").slot.rx_count
    wait_for(lambda: ctl.fabric.health("peer01").slot.rx_count >= rx + 5, 10,
             "peer01 still answered")
    assert target.ctl("peer04").get()["stats"]["received"] <= before + 1
    # its index is reused, with a clean slot
    spec3 = target.topology.peer("peer03")
    [again] = ctl.fabric.add_peers([Peer.from_dict(spec3.to_peer_dict("s1"))])
    assert again.index == 1
    h = ctl.fabric.health("peer03")
    assert h.state == Health.UNKNOWN
    ctl.wait_state("peer03", Health.UP)


def _serve(target: Target, cfg_path: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    seen = len(re.findall(r"API: (http://\S+?)/api/v1", log.read_text(errors="replace"))) \
        if log.exists() else 0
    out = log.open("ab")
    proc = subprocess.Popen([HBMON, "serve", "-c", str(cfg_path)], stdout=out,
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, HBMON_API_TOKEN="integration-token"))
    out.close()

    def url() -> str | None:
        m = re.findall(r"API: (http://\S+?)/api/v1", log.read_text(errors="replace"))
        return m[-1] if len(m) > seen else None

    wait_for(lambda: url() is not None or proc.poll() is not None, 60, "hbmon serve API")
    assert proc.poll() is None, log.read_text()
    found = url()
    assert found is not None
    return proc, found


def _ready(http: httpx.Client) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_controller_kill_and_restart(target: Target, tmp_path: Path) -> None:
    cfg = target.config(peers=["peer01", "peer02"], store="sqlite:///ctl.db",
                        api={"port": free_tcp_port()})
    cfg_path = tmp_path / "hbmon.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "serve.log"
    auth = {"Authorization": "Bearer integration-token"}
    proc, url = _serve(target, cfg_path, log)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_for(lambda: _ready(http), 60, "ready")
            spec = target.topology.peer("peer03").to_peer_dict("s1")
            r = http.post("/api/v1/peers", json=spec, headers=auth)
            assert r.status_code == 201, r.text
            r = http.delete("/api/v1/peers/peer01", headers=auth)
            assert r.status_code == 204, r.text
            before = {p["name"]: p["index"] for p in http.get("/api/v1/peers").json()["peers"]}
        assert before == {"peer02": 1, "peer03": 2}
        proc.send_signal(signal.SIGKILL)  # no clean shutdown
        proc.wait(10)
        # the target keeps sending requests meanwhile: the data plane does not need us
        proc, url = _serve(target, cfg_path, log)
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_for(lambda: _ready(http), 60, "ready again")
            after = {p["name"]: p["index"] for p in http.get("/api/v1/peers").json()["peers"]}
            assert after == before
            assert_programmed(target, after)

            wait_for(lambda: all(
                http.get(f"/api/v1/peers/{n}/health").json()["state"] == "UP" for n in after),
                20, "peers UP after restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
