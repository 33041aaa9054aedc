"""Failover of `hbmon serve` replicas sharing PostgreSQL (issue 10, docs/ha.md), all parts
real: PostgreSQL (tests/conftest.py), TWO `hbmon-kernel-target`s (switches s1 and s2, each
in its own namespace lab with responders), three `hbmon serve` replicas with one config
(only the API port and `ha.replica_id` differ), an SSE subscriber on a survivor and a local
webhook receiver.

Replica A starts first and leads both switches; B and C follow as backups. A client posts
peers to the replicas in turn (half of them answered by a responder, so transitions happen
during the failover) and A is killed with SIGKILL mid-load. The test prints and checks:

- another replica is primary on every target within 2 s (kill -> a survivor's
  /api/v1/switches says primary; P4Runtime 1.4 section 5.3: the new leader's election id,
  `election_id` + epoch, is above every id the target has seen, so it wins at once);
- no acknowledged write (201 or 202) is lost: in the store and, after settling, programmed
  on its target (read back by a backup client WITHOUT an election id, which cannot disturb
  the arbitration: spec 5.3 / 15.3.1);
- no slot is given to two peers (per switch, per index);
- no transition is lost or duplicated: per peer the history is a chain (each old state is
  the previous new state, never the same state twice in a row) and every peer answered is UP
  in it; the SSE stream of a survivor and the webhook receiver got exactly the history's
  transitions (by id, once each; the receiver's ids are a subset as webhooks only carry
  what the surviving replicas and A before its death delivered).

`HBMON_FAILOVER_ROUNDS` (default 1; `make soak` sets 20) repeats kill and restart.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_harness import SseReader
from controller.test_integration import wait_for
from hbmon.config import DEFAULT_P4INFO
from hbmon.dataplane import targets
from hbmon.p4 import MulticastGroup, P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import free_tcp_port

pytestmark = pytest.mark.netns

HBMON = str(Path(sys.executable).with_name("hbmon"))
SETTLE = 60.0
ROUNDS = int(os.environ.get("HBMON_FAILOVER_ROUNDS", "1"))
SWITCHES = ("s1", "s2")
SEEDED = 3  # peers per switch in the config; the rest of each lab is added under load
LAB_PEERS = 6
TOKEN = "failover-token"


class Receiver:
    """A local webhook receiver: every delivered event, as delivered."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        lock = threading.Lock()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    events.extend(json.loads(body)["events"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Replica:
    name: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout,
                            headers={"Authorization": f"Bearer {TOKEN}"})

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([HBMON, "serve", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> Any:
        with self.client(5.0) as http:
            r = http.get(path)
            r.raise_for_status()
            return r.json()

    def primary_of(self) -> set[str]:
        """The switches this replica is primary on, as it reports them."""
        try:
            rows = self.get("/api/v1/switches")["switches"]
        except httpx.HTTPError:
            return set()
        return {s["name"] for s in rows if s["primary"]}

    def ready(self) -> bool:
        assert self.alive(), self.log.read_text(errors="replace")[-3000:]
        try:
            with self.client(5.0) as http:
                return http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            targets.stop_process(self.proc, timeout=10.0)
            self.proc = None


@dataclass
class Fleet:
    labs: dict[str, NetnsLab]
    grpc: dict[str, str]
    replicas: list[Replica]
    receiver: Receiver
    pg_url: str
    answered: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _switch_peers(lab: NetnsLab, switch: str) -> list[dict[str, Any]]:
    """The lab's peers as controller peers of `switch` (names made unique per switch)."""
    out = []
    for d in lab.topology.peer_dicts(switch):
        out.append({**d, "name": f"{switch}-{d['name']}"})
    return out


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    labs: dict[str, NetnsLab] = {}
    procs: list[targets.TargetProcess] = []
    replicas: list[Replica] = []
    receiver = Receiver()
    try:
        grpc: dict[str, str] = {}
        switches, seeds, answered = [], [], {}
        for sw in SWITCHES:
            lab = NetnsLab(star(LAB_PEERS, name=f"fo{sw}"))
            labs[sw] = lab
            lab.start()
            lab.start_responders()
            grpc[sw] = f"127.0.0.1:{free_tcp_port()}"
            procs.append(targets.start_target("kernel", lab.port_map, grpc_addr=grpc[sw],
                                              output_path=tmp_path / f"target-{sw}.log",
                                              wait=60.0))
            peers = _switch_peers(lab, sw)
            seeds += peers[:SEEDED]
            answered[sw] = peers[SEEDED:]
            switches.append({"name": sw, "kind": "kernel", "grpc": grpc[sw], "device_id": 1,
                             "p4info": str(DEFAULT_P4INFO),
                             "ports": {int(k): v for k, v in lab.port_map.items()},
                             "monitor": {"mac": lab.topology.ports[0].mac,
                                         "ip": lab.topology.monitor_address}})
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        os.chmod(token, 0o600)
        for name in ("a", "b", "c"):
            port = free_tcp_port()
            config = {
                "interval_ms": 50, "poll_interval_ms": 100, "store": pg_url,
                "api": {"host": "127.0.0.1", "port": port, "token_file": str(token)},
                "webhooks": {"urls": [receiver.url]},
                "ha": {"replica_id": name, "program_wait_s": 3},
                "switches": switches, "peers": seeds,
            }
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            replicas.append(Replica(name, port, path, tmp_path / f"serve-{name}.log"))
        yield Fleet(labs, grpc, replicas, receiver, pg_url, answered)
    finally:
        for replica in replicas:
            replica.stop()
        for proc in procs:
            proc.stop()
        receiver.close()
        for lab in labs.values():
            lab.stop()


def _silent(switch: str, i: int) -> dict[str, Any]:
    """A peer no responder answers (hosts >= 100 of the lab's subnet)."""
    host = 100 + i
    return {"name": f"{switch}-w{i:03d}",
            "address": str(ipaddress.IPv4Address("198.18.1.0") + host),
            "peer_id": 5000 + i, "mac": f"02:48:42:00:{host >> 8:02x}:{host & 0xFF:02x}",
            "port": 1, "switch": switch}


def programmed(grpc: str) -> tuple[set[tuple[int, int, int]], set[int], set[int]]:
    """(src_addr, peer_id, index) of HbIngress.peers, the peer_requests indexes and the
    fan-out group's instances, read by a backup without an election id."""
    schema = P4Schema.load(DEFAULT_P4INFO)
    with P4RuntimeClient(grpc, 1, election_id=None, take_over=False, schema=schema) as c:
        c.connect(timeout=10)
        assert not c.primary
        tables = [TableEntry(t) for t in
                  ("HbIngress.peers", "HbIngress.peer_ids", "HbEgress.peer_requests")]
        entries = [TableEntry.decode(schema, e) for e in c.read(tables)]
        groups = [MulticastGroup.decode(schema, e) for e in c.read([MulticastGroup(0)])]
    peers = {(int(e.match["src_addr"]), int(e.match["peer_id"]),  # type: ignore[arg-type]
              int(e.params["index"])) for e in entries if e.table == "HbIngress.peers"}
    requests = {int(e.match["index"]) for e in entries  # type: ignore[arg-type]
                if e.table == "HbEgress.peer_requests"}
    fanout = {r.instance for g in groups if g.id == 1 for r in g.replicas}
    return peers, requests, fanout


def _history(replica: Replica) -> list[dict[str, Any]]:
    """The whole event history, oldest first (the API pages back from the newest)."""
    events: list[dict[str, Any]] = []
    path = "/api/v1/events/history?limit=1000"
    while True:
        page = replica.get(path)
        events += page["events"]
        if page["next_before"] is None:
            return events[::-1]
        path = f"/api/v1/events/history?limit=1000&before={page['next_before']}"


def test_kill_9_of_the_leader_of_both_switches(fleet: Fleet) -> None:
    a, b, c = fleet.replicas
    a.start()
    wait_for(a.ready, SETTLE, "replica a ready")
    wait_for(lambda: a.primary_of() == set(SWITCHES), SETTLE, "a primary on both switches")
    for r in (b, c):
        r.start()
    for r in (b, c):
        wait_for(r.ready, SETTLE, f"replica {r.name} ready")
    pending = {sw: list(peers) for sw, peers in fleet.answered.items()}
    figures: list[str] = []
    leader = a
    for round_ in range(ROUNDS):
        figures += _kill_round(fleet, leader, round_, pending)
        # the killed replica comes back as a backup
        leader.start()
        wait_for(leader.ready, SETTLE, f"replica {leader.name} back")
        if round_ + 1 < ROUNDS:
            leader = _one_leader(fleet)
    print("\nfailover figures:\n  " + "\n  ".join(figures))


def _one_leader(fleet: Fleet) -> Replica:
    """Make one replica lead both switches (the others stop, give their locks up and come
    back as backups); returns it."""
    holder = next(r for r in fleet.replicas if r.primary_of())
    others = [r for r in fleet.replicas if r is not holder]
    for r in others:
        r.stop()
    wait_for(lambda: holder.primary_of() == set(SWITCHES), SETTLE,
             "one replica leads both switches")
    for r in others:
        r.start()
    for r in others:
        wait_for(r.ready, SETTLE, f"replica {r.name} back")
    return holder


def _kill_round(fleet: Fleet, leader: Replica, round_: int,
                pending: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Write load on every replica, SIGKILL `leader` (it leads both switches), check the
    survivors; returns the round's figures."""
    serial = round_ * 1000
    figures: list[str] = []
    survivors = [r for r in fleet.replicas if r is not leader]
    reader = SseReader(survivors[0].url + "/api/v1/events",
                       {"Authorization": f"Bearer {TOKEN}",
                        "Accept": "text/event-stream"}, {})
    assert reader.connected.wait(10) and reader.status == 200
    reader.comments.get(timeout=10)  # subscribed: every later event reaches it
    acked: dict[str, int] = {}
    refused: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def writer(serial0: int, turn: int) -> None:
        n = serial0
        clients = {r.name: r.client() for r in fleet.replicas}
        try:
            while not stop.is_set() and n - serial0 < 400:  # a bounded load
                replica = fleet.replicas[turn % len(fleet.replicas)]
                turn += 1
                sw = SWITCHES[n % 2]
                spec = _silent(sw, n)
                if n % 3 == 0:
                    with contextlib.suppress(IndexError):  # the other writer took it
                        spec = pending[sw].pop(0)
                n += 1
                try:
                    r = clients[replica.name].post("/api/v1/peers", json=spec)
                except httpx.TransportError:
                    continue  # that replica is dead: not acknowledged, try the next
                if r.status_code in (201, 202):
                    acked[spec["name"]] = r.status_code
                else:
                    refused.append((spec["name"], r.status_code, r.text[:200]))
        finally:
            for cl in clients.values():
                cl.close()

    # two writers at once, each on another replica: their slot choices race (a
    # replica that loses re-reads the inventory and picks again)
    threads = [threading.Thread(target=writer, args=(serial + k * 500, k), name=f"writer{k}")
               for k in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acked) >= 20, SETTLE, "20 acknowledged writes")
        assert leader.proc is not None
        killed = time.monotonic()
        os.kill(leader.proc.pid, signal.SIGKILL)
        took: dict[str, float] = {}

        def primaries() -> bool:
            for r in survivors:
                for sw in r.primary_of():
                    took.setdefault(sw, time.monotonic() - killed)
            return set(took) == set(SWITCHES)
        wait_for(primaries, 10, "a survivor primary on every switch")
        assert leader.proc.wait(10) == -signal.SIGKILL
        # the killed replica commits nothing more: later ids are the survivors'
        boundary = max([e["id"] for e in _history(survivors[0])] or [0])
        wait_for(lambda: len(acked) >= 40, SETTLE, "20 more writes after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not refused, refused
    figures.append("new primary after kill -9: " + ", ".join(
        f"{sw} {took[sw]:.3f} s" for sw in SWITCHES))
    for sw in SWITCHES:
        assert took[sw] < 2.0, f"{sw}: new primary after {took[sw]:.2f} s"

    # settle: every acknowledged peer programmed by its leader, answered ones UP
    observer = survivors[0]

    def inventory() -> dict[str, dict[str, Any]]:
        rows = observer.get("/api/v1/peers?limit=10000")["peers"]
        return {p["name"]: p for p in rows}

    inv = inventory()
    lost = set(acked) - set(inv)
    assert not lost, f"acknowledged writes lost: {sorted(lost)}"
    for sw in SWITCHES:
        def matches(sw: str = sw) -> bool:
            want = {(int(ipaddress.IPv4Address(p["address"])), p["peer_id"], p["index"])
                    for p in inventory().values() if p["switch"] == sw}
            peers, requests, fanout = programmed(fleet.grpc[sw])
            return peers == want and requests == fanout == {i for _, _, i in want}
        wait_for(matches, SETTLE, f"{sw} programmed exactly as the inventory")
    inv = inventory()
    for sw in SWITCHES:
        indexes = [p["index"] for p in inv.values() if p["switch"] == sw]
        assert len(indexes) == len(set(indexes)), f"{sw}: a slot given twice"
    # the lab's peers (seeded or added under load) have responders; w* peers do not
    expected = {n: {"UP"} for n in inv if "-peer" in n}

    def all_up() -> bool:
        states = {h["name"]: h["state"] for h in observer.get("/api/v1/health/peers")
                  ["peers"]}
        return all(states.get(n) in ok for n, ok in expected.items())
    wait_for(all_up, SETTLE, "answered peers UP")

    # transitions: one chain per peer in the history, the same on SSE and webhooks
    missing: dict[str, str | None] = {}

    def chains_complete() -> bool:
        last: dict[str, str] = {}
        for e in _history(observer):
            if e["kind"] == "transition":
                last[e["peer"]] = e["new_state"]
        missing.clear()
        missing.update({n: last.get(n) for n in expected if last.get(n) != "UP"})
        return not missing
    try:
        wait_for(chains_complete, SETTLE, "the history has every answered peer UP")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: last recorded states {missing}") from None
    everything = _history(observer)
    history = [e for e in everything if e["kind"] == "transition"]
    # per peer and life (a peer removed and added again starts over from UNKNOWN; the
    # removal bounds a life: the handler's peer_added may follow the leader's first
    # transition)
    state: dict[str, str] = {}
    for e in everything:
        if e["kind"] == "peer_removed":
            state[e["peer"]] = "UNKNOWN"
        elif e["kind"] == "transition":
            prev = state.get(e["peer"], "UNKNOWN")
            life = [(x["id"], x["kind"], x.get("old_state"), x.get("new_state"), x["reason"])
                    for x in everything if x["peer"] == e["peer"]]
            assert e["old_state"] == prev, f"a transition lost: {prev} then {e} in {life}"
            assert e["new_state"] != prev, f"a transition twice: {prev} then {e} in {life}"
            state[e["peer"]] = e["new_state"]
    ids = [e["id"] for e in history]
    assert len(ids) == len(set(ids))
    streamed: list[int] = []
    tail = max(ids)

    def stream_caught_up() -> bool:
        while not reader.frames.empty():
            frame = reader.next(1)
            if frame["json"].get("kind") == "transition":
                streamed.append(int(frame["json"]["id"]))
        return bool(streamed) and streamed[-1] >= tail
    wait_for(stream_caught_up, SETTLE, "the survivor's SSE stream reached the history")
    reader.close()
    assert len(streamed) == len(set(streamed)), "an event twice on SSE"
    first = streamed[0]
    assert streamed == [i for i in ids if i >= first], "SSE differs from the history"
    # webhooks: the survivors deliver every transition they write, once; what the
    # killed replica had queued in memory dies with it (delivery is not durable)
    wait_for(lambda: {int(e["id"]) for e in fleet.receiver.events
                      if e["kind"] == "transition"} >= {i for i in ids if i > boundary},
             SETTLE, "webhooks of the survivors' transitions")
    hooked = [int(e["id"]) for e in fleet.receiver.events if e["kind"] == "transition"]
    assert len(hooked) == len(set(hooked)), "a transition delivered twice by webhook"
    assert set(hooked) <= set(ids), "a webhook for a transition not in the history"
    # the lab's peers added under load go again, so the next round adds them again
    again = [n for n in acked if "-peer" in n]
    if again:
        with observer.client() as http:
            r = http.post("/api/v1/peers/bulk-delete", json={"names": again})
            assert r.status_code == 200, r.text
    for sw in SWITCHES:
        pending[sw] = [d for d in fleet.answered[sw] if d["name"] in again
                       or d["name"] not in inv]
    races = sum(r.log.read_text(errors="replace").count("slot taken by another replica")
                for r in fleet.replicas)
    figures.append(f"round {round_ + 1}: slot races lost and retried so far: {races}")
    figures.append(f"round {round_ + 1}: {len(acked)} writes acknowledged "
                   f"({sum(1 for v in acked.values() if v == 202)} as 202), none lost; "
                   f"{len(inv)} peers, no slot twice; {len(history)} transitions, "
                   f"chains whole; SSE {len(streamed)}, webhooks {len(hooked)}")
    return figures
