"""BFD sessions in the controller (issue 13; docs/bfd.md "Controller", RFC 5880 section 6.8).

The controller's side of a session against the kernel target's real P4Runtime device:

- over its in-memory data plane (fixture `target`, tests/controller/conftest.py): control
  packets are recorded with the data plane's own hook (`MemoryDatapath.bfd_receive`, what
  hb_xdp.c does after the session lookup), so `bfd_event_t` digests, `peer_event_t` DOWNs
  (detection in the BFD rounds) and the entries the controller writes are the device's;
- live on the BPF data plane (`hbmon-kernel-target` on a veth into a namespace): real
  control packets built with `hbmon.bfd_packet` are sent from the namespace and ours are
  captured there.

Checked: the three-way handshake (remote Down -> our Init -> remote Up -> our Up, section
6.8.6), one `bfd_requests` MODIFY per change and none in steady state (counted as Write RPCs
the target received), detection-time expiry -> Down with diag 1 (6.8.4), AdminDown with
diag 7 sent (6.8.16), a Poll Sequence on a timer change ended by the remote's Final (6.8.3),
restart re-pushing the sessions' state, the REST/metrics surface (422s naming the field),
and the store's schema 3 -> 4 migration.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ha.test_replica_parts import _raw, url  # noqa: F401  (url: both backends)
from hbmon.bfd_packet import PORT, ControlPacket, Diag, Flag, State
from hbmon.config import DEFAULT_P4INFO, parse_config
from hbmon.controller.fabric import Fabric
from hbmon.model import EventKind, Health, Peer, ValidationError
from hbmon.protocol import PlaneState, Reason
from hbmon.store.events import EventBus
from hbmon.store.sql import SCHEMA_VERSION, open_store
from hbmon_kernel.memory import MemoryTarget, serve_memory_target

REMOTE_DISC = 0x5EED0001
MS = 1000
# Write RPCs per change of what a session sends: the MODIFY of its bfd_requests entry, and
# its hb_last_tx_us zeroed so the change goes out at the next tick (driver.push_bfd)
PER_CHANGE = 2


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.01)


def config(address: str, *peers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "interval_ms": 100, "poll_interval_ms": 30, "detail_interval_ms": 100,
        "monitor": {"mac": "02:48:42:ff:00:01", "ip": "198.18.0.254"},
        "switches": [{"name": "s1", "kind": "kernel", "grpc": address, "device_id": 1,
                      "p4info": str(DEFAULT_P4INFO)}],
        "peers": list(peers),
    }
    data.update(extra)
    return data


def bfd_peer(name: str = "r1", n: int = 2, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "bfd", "address": f"198.18.7.{n}", "port": 1,
            "mac": f"02:00:00:00:07:{n:02x}", "desired_min_tx_ms": 50,
            "required_min_rx_ms": 50, "detect_mult": 3, **kw}


class Session:
    """One controller (Fabric) over a memory target with its BFD peers, and the remote's
    side of each session: what it sends, through the data plane's receive hook."""

    def __init__(self, target: MemoryTarget | None, fabric: Fabric) -> None:
        self.target: Any = target
        self.dp: Any = target.datapath if target is not None else None  # None: live
        self.fabric = fabric

    def index(self, name: str) -> int:
        index = self.fabric.get_peer(name).index
        assert index is not None
        return index

    def disc(self, name: str) -> int:
        peer = self.fabric.get_peer(name)
        return self.fabric.drivers[peer.switch].guard.discriminator(peer)

    def request(self, name: str) -> dict[str, int]:
        """The session's `bfd_requests` entry as the data plane holds it."""
        got = self.dp.bfd_requests_get(self.index(name))
        assert got is not None, f"no bfd_requests entry for {name}"
        return got

    def send(self, name: str, state: State, *, your: bool = True, flags: int = 0,
             tx_us: int = 50 * MS, rx_us: int = 50 * MS, mult: int = 3,
             diag: int = 0) -> None:
        self.dp.bfd_receive(self.index(name), ControlPacket(
            state, REMOTE_DISC, self.disc(name) if your else 0, diag, flags, mult,
            tx_us, rx_us))

    def writes(self) -> int:
        return self.target.calls["Write"]

    def health(self, name: str) -> Health:
        return self.fabric.health(name).state

    def counter(self, reason: Reason) -> int:
        return self.dp.counter_read("hb_reason", reason)[0]

    def rounds_until(self, cond: Callable[[], bool], what: str) -> None:
        """BFD rounds of the schedule the controller armed (the device's timer, stepped
        here) until `cond`."""
        wait_for(lambda: self.dp.run_bfd_rounds(1) == 1 and cond(), what)

    def up(self, name: str) -> None:
        """The handshake of section 6.8.6 from the remote's side, to our Up."""
        self.send(name, State.DOWN, your=False)
        wait_for(lambda: self.request(name)["state"] == State.INIT, "our Init")
        self.send(name, State.UP)
        wait_for(lambda: self.request(name)["state"] == State.UP, "our Up")
        wait_for(lambda: self.health(name) == Health.UP, "health UP")


@contextmanager
def running(target: MemoryTarget | None, data: dict[str, Any],
            store_url: str = "sqlite://:memory:") -> Iterator[Session]:
    store = open_store(store_url)
    bus = EventBus(store)
    fabric = Fabric(parse_config(data), store, bus)
    try:
        fabric.start()
        assert fabric.wait_ready(15), fabric.switches()
        yield Session(target, fabric)
    finally:
        fabric.stop()
        bus.close()
        store.close()


# ---- the in-memory device ----------------------------------------------------------------


def test_programming_entries_and_group(target: MemoryTarget) -> None:
    """A session is one bfd_sessions, one bfd_peers and one bfd_requests entry and a replica
    in group 2 (docs/bfd.md "P4Info additions"); it starts Down, sending slowly (1 s,
    section 6.8.3), detecting nothing; the slot starts zeroed."""
    with running(target, config(target.address, bfd_peer())) as s:
        index, disc = s.index("r1"), s.disc("r1")
        assert disc & 0x1FFFF == index + 1 and disc != 0
        assert s.dp.bfd_sessions_get(disc) == index
        assert s.dp.bfd_peers_get(int.from_bytes(socket.inet_aton("198.18.7.2"), "big"),
                                  1) == index
        req = s.request("r1")
        assert req["state"] == State.DOWN and req["diag"] == 0 and req["flags"] == 0
        assert req["my_disc"] == disc and req["src_port"] == 49152 + index
        assert req["desired_min_tx_us"] == 1_000_000 and req["required_min_rx_us"] == 50 * MS
        assert req["detect_time_us"] == 0
        assert (1, index) in s.dp.mcast_group_get(2)
        assert s.health("r1") == Health.UNKNOWN
        # the fan-out runs: the template is armed (kernel target) and the session sends
        wait_for(lambda: s.counter(Reason.BFD_SENT) > 0, "a control packet sent")


def test_handshake_writes_only_on_changes(target: MemoryTarget) -> None:
    """Remote Down -> our Init -> remote Up -> our Up: one MODIFY of the session's
    bfd_requests per change of what we send, none for steady Up/Up traffic."""
    with running(target, config(target.address, bfd_peer())) as s:
        before = s.writes()
        s.send("r1", State.DOWN, your=False)
        wait_for(lambda: s.request("r1")["state"] == State.INIT, "our Init")
        wait_for(lambda: s.writes() >= before + PER_CHANGE, "the writes")
        assert s.writes() == before + PER_CHANGE
        assert s.health("r1") == Health.UNKNOWN  # coming up is no outage
        s.send("r1", State.UP)
        wait_for(lambda: s.request("r1")["state"] == State.UP, "our Up")
        wait_for(lambda: s.health("r1") == Health.UP, "health UP")
        assert s.writes() == before + 2 * PER_CHANGE
        req = s.request("r1")
        # section 6.8.3: the configured interval once Up; 6.8.2/6.8.4: negotiated
        assert req["desired_min_tx_us"] == 50 * MS
        assert req["tx_interval_us"] == 50 * MS and req["detect_time_us"] == 150 * MS
        events = s.counter(Reason.BFD_EVENT)
        rx = s.fabric.health("r1").slot.rx_count
        for _ in range(20):
            s.send("r1", State.UP)
        wait_for(lambda: s.fabric.health("r1").slot.rx_count >= rx + 20, "polls read rx")
        assert s.counter(Reason.BFD_EVENT) == events  # steady traffic raises nothing
        assert s.writes() == before + 2 * PER_CHANGE
        status = s.fabric.health("r1").bfd
        assert status is not None
        assert status["state"] == "UP" and status["remote_state"] == "UP"
        assert status["remote_discriminator"] == REMOTE_DISC
        assert status["local_discriminator"] == s.disc("r1")
        assert status["detect_time_us"] == 150 * MS


def test_detection_time_expiry_goes_down_with_diag_1(target: MemoryTarget) -> None:
    """Section 6.8.4: silence longer than the detection time; the data plane's BFD round
    raises DOWN for the slot and the session goes Down, diag 1, sent at once."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        index = s.index("r1")
        s.rounds_until(lambda: s.dp.register_read("hb_state", index) == PlaneState.DOWN,
                       "the data plane's DOWN")
        wait_for(lambda: s.request("r1")["state"] == State.DOWN, "our Down")
        assert s.request("r1")["diag"] == Diag.DETECTION_TIME_EXPIRED
        wait_for(lambda: s.health("r1") == Health.DOWN, "health DOWN")
        assert "detection time expired" in s.fabric.health("r1").reason
        # the session starts again: a Down from the remote brings Init
        s.send("r1", State.DOWN)
        wait_for(lambda: s.request("r1")["state"] == State.INIT, "our Init again")


def test_admin_down_sends_admin_down_diag_7(target: MemoryTarget) -> None:
    """Section 6.8.16: an operator's admin down sends AdminDown with diag 7 (the replica
    stays: the remote must hear it); admin up starts again from Down."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        s.fabric.update_peer("r1", {"admin_down": True})
        req = s.request("r1")
        assert (req["state"], req["diag"]) == (State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN)
        assert s.health("r1") == Health.ADMIN_DOWN
        assert (1, s.index("r1")) in s.dp.mcast_group_get(2)
        sent = s.counter(Reason.BFD_SENT)
        s.rounds_until(lambda: s.counter(Reason.BFD_SENT) > sent, "AdminDown sent")
        # the remote's packets change nothing while AdminDown
        s.send("r1", State.DOWN)
        wait_for(lambda: (s.fabric.health("r1").bfd or {}).get("remote_state") == "DOWN",
                 "the remote's Down seen")
        assert s.request("r1")["state"] == State.ADMIN_DOWN
        s.fabric.update_peer("r1", {"admin_down": False})
        req = s.request("r1")
        assert (req["state"], req["diag"]) == (State.DOWN, Diag.NONE)


def test_timer_change_runs_a_poll_sequence(target: MemoryTarget) -> None:
    """Section 6.8.3: a new desired min TX while Up is announced with P; the remote's F
    ends the Poll Sequence (one MODIFY for each) and the new interval applies."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        s.fabric.update_peer("r1", {"desired_min_tx_ms": 200})
        req = s.request("r1")
        assert req["flags"] & Flag.P and req["desired_min_tx_us"] == 200 * MS
        assert s.fabric.health("r1").bfd["poll"]  # type: ignore[index]
        before = s.writes()
        s.send("r1", State.UP, flags=Flag.F)
        wait_for(lambda: not s.request("r1")["flags"] & Flag.P, "the Poll Sequence ended")
        wait_for(lambda: s.writes() >= before + PER_CHANGE, "the writes")
        assert s.writes() == before + PER_CHANGE
        assert s.request("r1")["tx_interval_us"] == 200 * MS
        assert s.health("r1") == Health.UP  # no state change on the way


def test_remote_timer_change_is_followed(target: MemoryTarget) -> None:
    """The remote slows down (its desired min TX): the detection time follows at once
    (section 6.8.4), one MODIFY."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        before = s.writes()
        s.send("r1", State.UP, tx_us=300 * MS, mult=5, flags=Flag.P)
        wait_for(lambda: s.request("r1")["detect_time_us"] == 5 * 300 * MS, "detect time")
        wait_for(lambda: s.writes() >= before + PER_CHANGE, "the writes")
        assert s.writes() == before + PER_CHANGE
        # the data plane answers the Poll itself (F on our next packet)
        assert s.dp.register_read("bfd_final_due", s.index("r1")) in (0, 1)


def test_controller_restart_resumes_or_restarts_sessions(target: MemoryTarget,
                                                        tmp_path: Path) -> None:
    """A restarted controller (or a new leader) continues a session the target runs Up
    with a remote heard Up: its entry is never written Down, its health is UP at once
    (resumed; the Poll Sequence to our configured interval of any new Up follows). A
    session whose remote went Down meanwhile starts again from Down. A peer removed then
    leaves nothing."""
    db = f"sqlite:///{tmp_path / 'hbmon.db'}"
    data = config(target.address, bfd_peer(), bfd_peer("r2", 3))
    with running(target, data, db) as s:
        s.up("r1")
        s.up("r2")
        index, index2 = s.index("r1"), s.index("r2")
    # no controller: r2's remote detects our silence and says Down (your_disc 0)
    target.datapath.bfd_receive(index2, ControlPacket(State.DOWN, REMOTE_DISC, 0, 1))
    with running(target, data, db) as s:
        assert s.index("r1") == index
        assert s.request("r1")["state"] == State.UP
        assert s.health("r1") == Health.UP
        assert "resumed" in s.fabric.health("r1").reason
        status = s.fabric.health("r1").bfd
        assert status is not None and status["remote_discriminator"] == REMOTE_DISC
        assert s.request("r2")["state"] == State.DOWN
        assert s.health("r2") == Health.UNKNOWN
        s.up("r2")
        s.fabric.remove_peers(["r2"])
        assert [r for r in s.dp.mcast_group_get(2) if r[1] != index] == []
        assert s.dp.bfd_sessions_get(s.disc("r1")) == index


def test_target_restart_restarts_the_handshake(target: MemoryTarget) -> None:
    """A target that comes back without the session (restarted: entries and slot gone)
    must not be told to send Up with your discriminator 0 (RFC 5880 section 6.8.6 has the
    remote discard that): the session goes Down, diag 1, is programmed so, and comes Up
    again through the handshake."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        index = s.index("r1")
        target.stop()  # the process dies; a new one listens on the same port
        wait_for(lambda: not s.fabric.drivers["s1"].client.connected, "disconnected")
        fresh = serve_memory_target(target.address)
        try:
            s.target, s.dp = fresh, fresh.datapath
            wait_for(lambda: s.dp.bfd_requests_get(index) is not None, "the entry back", 30)
            req = s.request("r1")
            assert (req["state"], req["diag"]) == (State.DOWN, Diag.DETECTION_TIME_EXPIRED)
            wait_for(lambda: s.health("r1") == Health.DOWN, "health DOWN")
            s.up("r1")
        finally:
            fresh.stop()


def test_rest_metrics_and_validation(target: MemoryTarget) -> None:
    """REST: bfd peers in and out (kind, timers with their defaults), 422s naming the field;
    the session in a peer's health; /metrics: the session state and the BFD reasons."""
    from hbmon.api.app import create_app
    from hbmon.api.metrics import ControllerMetrics
    from hbmon.api.server import ApiServer
    from hbmon.api.settings import ApiSettings

    store = open_store("sqlite://:memory:")
    bus = EventBus(store)
    metrics = ControllerMetrics()
    fabric = Fabric(parse_config(config(target.address)), store, bus, metrics=metrics)
    fabric.start()
    server = None
    try:
        assert fabric.wait_ready(15)
        server = ApiServer(create_app(fabric, store, bus,
                                      ApiSettings(port=0, allow_anonymous_writes=True),
                                      metrics), "127.0.0.1", 0).start()
        api = httpx.Client(base_url=server.url, timeout=10)
        base = {"name": "r1", "kind": "bfd", "address": "198.18.7.2", "port": 1,
                "mac": "02:00:00:00:07:02"}
        for body, field in (
                ({**base, "desired_min_tx_ms": 0}, "desired_min_tx_ms"),
                ({**base, "required_min_rx_ms": 60_001}, "required_min_rx_ms"),
                ({**base, "detect_mult": 0}, "detect_mult"),
                ({**base, "peer_id": 7}, "peer_id"),
                ({**base, "kind": "ospf"}, "kind"),
                ({**base, "kind": "heartbeat"}, "peer_id"),
                ({**base, "kind": "heartbeat", "peer_id": 7, "desired_min_tx_ms": 50},
                 "desired_min_tx_ms")):
            r = api.post("/api/v1/peers", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"]["field"].endswith(field), (body, r.text)
        r = api.post("/api/v1/peers", json=base)
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["kind"] == "bfd" and got["peer_id"] == 0
        assert (got["desired_min_tx_ms"], got["required_min_rx_ms"], got["detect_mult"]) \
            == (300, 300, 3)
        # two bfd peers: no peer_id clash
        r = api.post("/api/v1/peers", json={**base, "name": "r2", "address": "198.18.7.3"})
        assert r.status_code == 201, r.text
        r = api.patch("/api/v1/peers/r1", json={"kind": "heartbeat"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "kind"
        r = api.patch("/api/v1/peers/r1", json={"desired_min_tx_ms": 100})
        assert r.status_code == 200 and r.json()["desired_min_tx_ms"] == 100
        health = api.get("/api/v1/peers/r1/health").json()
        assert health["bfd"]["state"] == "DOWN" and health["bfd"]["remote_state"] is None
        listing = api.get("/api/v1/peers?include=health").json()["peers"]
        assert {p["name"]: p["kind"] for p in listing} == {"r1": "bfd", "r2": "bfd"}
        text = api.get("/metrics").text
        assert 'hbmon_bfd_session_state{peer="r1",switch="s1"} 1' in text
        assert 'hbmon_bfd_session_remote_state{peer="r1",switch="s1"} -1' in text
        for reason in ("BFD_RECORDED", "BFD_SENT", "BFD_MALFORMED", "BFD_EVENT",
                       "BFD_UNKNOWN_DISCRIMINATOR"):
            assert f'reason="{reason}"' in text, reason
        api.close()
    finally:
        if server is not None:
            server.stop()
        fabric.stop()
        bus.close()
        store.close()


def test_events_record_bfd_transitions(target: MemoryTarget) -> None:
    """The session's transitions are the peer's transitions (history, SSE, webhooks), the
    BFD states in their details."""
    with running(target, config(target.address, bfd_peer())) as s:
        s.up("r1")
        s.fabric.flush_events()
        events = [e for e in s.fabric.store.events(peer="r1", limit=100)
                  if e.kind is EventKind.TRANSITION]
        assert [(e.old_state, e.new_state) for e in events] == [(Health.UNKNOWN, Health.UP)]
        assert events[0].details["bfd_state"] == "UP"
        assert events[0].reason == "BFD UP"


# ---- the config ----------------------------------------------------------------------


def test_config_bfd_peers_and_tick() -> None:
    """bfd peers in `hbmon serve`'s config (the RFC defaults filled in), errors naming the
    key; the BFD tick: `bfd.tick_ms`, else the fastest desired min TX / 10, >= 1 ms."""
    data = config("127.0.0.1:1", bfd_peer(), bfd_peer("r2", 3, desired_min_tx_ms=20))
    data["peers"].append({"name": "r3", "kind": "bfd", "address": "198.18.7.4", "port": 1})
    cfg = parse_config(data)
    r3 = cfg.peers[2]
    assert (r3.kind, r3.peer_id, r3.desired_min_tx_ms, r3.required_min_rx_ms,
            r3.detect_mult) == ("bfd", 0, 300, 300, 3)
    assert cfg.bfd.tick_us(cfg.peers) == 2_000
    assert cfg.bfd.tick_us([p for p in cfg.peers if p.name == "r3"]) == 30_000
    assert parse_config({**data, "bfd": {"tick_ms": 7}}).bfd.tick_us(cfg.peers) == 7_000
    for bad, where in (
            ({"bfd": {"tick_ms": 0}}, "bfd.tick_ms"),
            ({"bfd": {"tick": 5}}, "bfd.tick"),
            ({"peers": [bfd_peer(desired_min_tx_ms=0)]}, "peers[0].desired_min_tx_ms"),
            ({"peers": [bfd_peer(peer_id=4)]}, "peers[0].peer_id"),
            ({"peers": [bfd_peer(kind="bgp")]}, "peers[0].kind")):
        with pytest.raises(ValidationError) as err:
            parse_config({**data, **bad})
        assert err.value.field == where, (bad, err.value)


# ---- the store ------------------------------------------------------------------------


def test_schema_3_is_migrated(url: str) -> None:  # noqa: F811
    """Schema 4 adds kind and the BFD timers and lets peer_id be NULL (SQLite rebuilds the
    table, PostgreSQL alters it); a schema-3 database keeps its heartbeat peers and takes
    several peer_id-less BFD peers on one switch."""
    with open_store(url) as store:
        store.add_peers([Peer("a", "198.18.1.1", 1, "02:00:00:00:00:01", 1, "s1", index=0)])
        store.mark_programmed("s1", ["a"], 12.5)
    raw = _raw(url)
    try:  # back to schema 3: no kind or timers, peer_id NOT NULL
        if url.startswith("sqlite:"):
            raw.execute("ALTER TABLE peers RENAME TO old")
            raw.execute("CREATE TABLE peers (name TEXT PRIMARY KEY, switch TEXT NOT NULL, "
                        "address TEXT NOT NULL, peer_id INTEGER NOT NULL, mac TEXT, "
                        "port INTEGER NOT NULL, grp TEXT, labels TEXT NOT NULL DEFAULT '{}', "
                        "detect_mult INTEGER, admin_down INTEGER NOT NULL DEFAULT 0, "
                        "idx INTEGER, programmed_at REAL, "
                        "CONSTRAINT peers_switch_address UNIQUE (switch, address), "
                        "CONSTRAINT peers_switch_peer_id UNIQUE (switch, peer_id))")
            raw.execute("INSERT INTO peers SELECT name, switch, address, peer_id, mac, port, "
                        "grp, labels, detect_mult, admin_down, idx, programmed_at FROM old")
            raw.execute("DROP TABLE old")
            raw.execute("CREATE UNIQUE INDEX peers_switch_idx ON peers (switch, idx)")
        else:
            raw.execute("ALTER TABLE peers DROP COLUMN kind, DROP COLUMN desired_min_tx_ms, "
                        "DROP COLUMN required_min_rx_ms")
            raw.execute("ALTER TABLE peers ALTER COLUMN peer_id SET NOT NULL")
        raw.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        with pytest.raises(Exception, match=r"(?i)not.null"):  # schema 3 refuses NULL
            raw.execute("INSERT INTO peers (name, switch, address, peer_id, mac, port) "
                        "VALUES ('x', 's1', '198.18.9.9', NULL, NULL, 1)")
    finally:
        raw.close()
    bfd = [Peer.from_dict({**bfd_peer(f"r{n}", n), "switch": "s1"}) for n in (2, 3)]
    with open_store(url) as store:
        store.add_peers(bfd)  # two peer_id-less peers on one switch
        found = {p.name: p for p in store.list_peers()}
        assert store.programmed_at(["a"]) == {"a": 12.5}  # kept through the migration
    assert found["a"].kind == "heartbeat" and found["a"].peer_id == 1
    assert found["r2"].kind == "bfd" and found["r2"].peer_id == 0
    assert found["r3"].desired_min_tx_ms == 50 and found["r3"].detect_mult == 3
    raw = _raw(url)
    try:
        assert int(raw.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                   .fetchone()[0]) == SCHEMA_VERSION == 4
        assert raw.execute("SELECT peer_id FROM peers WHERE name = 'r2'").fetchone() == (None,)
    finally:
        raw.close()


# ---- live: the BPF data plane (hbmon-kernel-target) on a veth into a namespace ------------


MONITOR_MAC, MONITOR_IP = "02:48:42:ff:00:01", "198.18.0.254"


def _ours(frame: bytes) -> ControlPacket | None:
    """Our control packet in a captured frame (UDP to 3784, RFC 5881), else None."""
    if len(frame) < 14 + 20 + 8 + 24 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    if int.from_bytes(frame[36:38], "big") != PORT:
        return None
    return ControlPacket.unpack(frame[42:])


@pytest.mark.netns
def test_live_kernel_target(tmp_path: Path) -> None:
    """The whole session on the BPF data plane: our Down packets on the wire (TTL 255, the
    session's source port, your discriminator 0), the handshake with real control packets
    from the namespace, Up at the configured interval, silence -> Down diag 1 detected by
    the data plane, admin down -> AdminDown diag 7 on the wire."""
    from kernel.bpf_lab import Lab, heartbeat_frame, ip_int, mac_int
    from kernel.server_harness import KernelTarget

    with Lab(1) as lab, KernelTarget(lab.ports) as target:
        assert target.address is not None
        peer_mac = lab.peer_mac(1)
        mac_text = ":".join(f"{b:02x}" for b in peer_mac.to_bytes(6, "big"))
        data = config(target.address, bfd_peer(mac=mac_text))
        data["monitor"] = {"mac": MONITOR_MAC, "ip": MONITOR_IP}
        cap = lab.capture(1)
        out = lab.sender(1)
        stop = threading.Event()
        sending: dict[str, Any] = {}

        def send(pkt: ControlPacket) -> None:
            out.send(heartbeat_frame(
                src_mac=peer_mac, dst_mac=mac_int(MONITOR_MAC), src_ip=ip_int("198.18.7.2"),
                dst_ip=ip_int(MONITOR_IP), sport=49152, dport=PORT, payload=pkt.pack()))

        def keep_sending() -> None:  # the remote's periodic packets (every 20 ms)
            while not stop.wait(0.02):
                pkt = sending.get("pkt")
                if pkt is not None:
                    send(pkt)

        def next_ours(cond: Callable[[ControlPacket], bool], what: str) -> ControlPacket:
            got = cap.frames(lambda fs: any(p is not None and cond(p)
                                            for p in map(_ours, fs)),
                             lambda f: _ours(f) is not None, timeout_s=15)
            found = [p for p in map(_ours, got) if p is not None and cond(p)]
            assert found, f"no control packet {what}: {[_ours(f) for f in got][-5:]}"
            return found[0]

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        try:
            with running(None, data, f"sqlite:///{tmp_path / 'live.db'}") as s:
                disc, index = s.disc("r1"), s.index("r1")
                first = next_ours(lambda p: p.state == State.DOWN, "Down")
                assert first.my_disc == disc and first.your_disc == 0
                frame = cap.frames(lambda fs: len(fs) > 0, lambda f: _ours(f) is not None)[0]
                assert frame[22] == 255  # TTL (RFC 5881 section 5)
                assert int.from_bytes(frame[34:36], "big") == 49152 + index
                assert frame[0:6] == peer_mac.to_bytes(6, "big")
                down = ControlPacket(State.DOWN, REMOTE_DISC, 0, desired_min_tx_us=50 * MS,
                                     required_min_rx_us=50 * MS)
                sending["pkt"] = down
                init = next_ours(lambda p: p.state == State.INIT, "Init")
                assert init.your_disc == REMOTE_DISC
                sending["pkt"] = ControlPacket(State.UP, REMOTE_DISC, disc,
                                               desired_min_tx_us=50 * MS,
                                               required_min_rx_us=50 * MS)
                up = next_ours(lambda p: p.state == State.UP, "Up")
                assert up.desired_min_tx_us == 50 * MS and up.your_disc == REMOTE_DISC
                wait_for(lambda: s.health("r1") == Health.UP, "health UP")
                status = s.fabric.health("r1").bfd
                assert status is not None and status["detect_time_us"] == 150 * MS
                # silence: the data plane detects it, the session goes Down with diag 1
                sending.pop("pkt")
                gone = next_ours(lambda p: p.state == State.DOWN, "Down after silence")
                assert gone.diag == Diag.DETECTION_TIME_EXPIRED
                wait_for(lambda: s.health("r1") == Health.DOWN, "health DOWN")
                s.fabric.update_peer("r1", {"admin_down": True})
                admin = next_ours(lambda p: p.state == State.ADMIN_DOWN, "AdminDown")
                assert admin.diag == Diag.ADMINISTRATIVELY_DOWN
                s.fabric.update_peer("r1", {"admin_down": False})
                next_ours(lambda p: p.state == State.DOWN and p.diag == 0, "Down again")
                # a deleted session says AdminDown first (RFC 5880 section 6.8.16)
                cap.drain()
                s.fabric.remove_peers(["r1"])
                bye = next_ours(lambda p: p.state == State.ADMIN_DOWN, "AdminDown at delete")
                assert bye.diag == Diag.ADMINISTRATIVELY_DOWN
        finally:
            stop.set()
            sender.join(5)
