"""Fabric + SwitchDriver over real gRPC against the in-memory P4Runtime test server.

The test server only stores what is written (no packet processing), so these tests drive the
data-plane side by hand (register values, digests); the integration tests run the same
controller against the real targets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hbmon.config import FabricConfig, parse_config
from hbmon.controller import (
    NONCE_SECRET_SETTING,
    DataPlaneError,
    Fabric,
    _with_round,
    next_sequence,
    request_template,
)
from hbmon.events import EventBus
from hbmon.model import ConflictError, EventKind, Health, NotFoundError, Peer, ValidationError
from hbmon.p4info import MulticastGroup, P4Schema, TableEntry, encode_digest_list, encode_int
from hbmon.protocol import (
    FANOUT_GROUP,
    IPV4_TOTAL_LEN,
    SEND_TTL,
    Heartbeat,
    MsgType,
    PlaneState,
    derive_nonce_key,
    seq_newer,
)
from hbmon.store import open_store
from p4.v1 import p4runtime_pb2

from .p4rt_testserver import TestP4RuntimeServer, _key

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.01)


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture
def server() -> Iterator[TestP4RuntimeServer]:
    srv = TestP4RuntimeServer()
    srv.start()
    yield srv
    srv.stop()


def make_config(port: int, **extra: object) -> FabricConfig:
    data: dict = {
        "interval_ms": 20, "poll_interval_ms": 30, "detect_mult": 3,
        "health": {"hold_down_s": 1, "flap_window_s": 5},
        "switches": [{"name": "s1", "grpc": f"127.0.0.1:{port}", "p4info": str(P4INFO)}],
    }
    data.update(extra)
    return parse_config(data)


def peer(i: int, **kw: object) -> Peer:
    base: dict = dict(name=f"p{i}", address=f"198.18.1.{i}", peer_id=i,
                      mac=f"02:00:00:00:01:{i:02x}", port=1, switch="s1")
    base.update(kw)
    return Peer(**base)


class Harness:
    def __init__(self, config: FabricConfig, store_url: str = "sqlite://:memory:") -> None:
        self.store = open_store(store_url)
        self.bus = EventBus(self.store)
        self.fabric = Fabric(config, self.store, self.bus)

    def events(self, kind: EventKind | None = None) -> list:
        self.fabric.flush_events()
        return [e for e in self.store.events(limit=10_000) if kind is None or e.kind == kind]

    def transitions(self, name: str) -> list[Health | None]:
        return [e.new_state for e in self.events(EventKind.TRANSITION) if e.peer == name]


@pytest.fixture
def harness(server: TestP4RuntimeServer) -> Iterator[Harness]:
    h = Harness(make_config(server.port))
    h.fabric.start()
    assert h.fabric.wait_ready(15), h.fabric.switches()
    yield h
    h.fabric.stop()
    h.store.close()


def entries(server: TestP4RuntimeServer, schema: P4Schema, table: str) -> list[TableEntry]:
    tid = schema.table(table).id
    with server.lock:
        return [TableEntry.decode(schema, p4runtime_pb2.Entity(table_entry=e))
                for e in server.tables.values() if e.table_id == tid]


def group(server: TestP4RuntimeServer, schema: P4Schema) -> MulticastGroup | None:
    with server.lock:
        g = server.groups.get(FANOUT_GROUP)
        if g is None:
            return None
        ent = p4runtime_pb2.Entity()
        ent.packet_replication_engine_entry.multicast_group_entry.CopyFrom(g)
    return MulticastGroup.decode(schema, ent)


def set_slot(server: TestP4RuntimeServer, schema: P4Schema, index: int, **values: int) -> None:
    with server.lock:
        for name, value in values.items():
            server.registers[(schema.register(f"hb_{name}").id, index)] = encode_int(value)


def test_request_template_is_a_valid_request() -> None:
    frame = request_template("02:00:00:00:00:01", "198.18.0.1", 77)
    assert len(frame) == 14 + 56 == 14 + IPV4_TOTAL_LEN
    assert frame[12:14] == b"\x08\x00"
    assert frame[22] == SEND_TTL == 255  # RFC 5082: requests leave with TTL 255 too
    hb = Heartbeat.unpack(frame[42:], expect=MsgType.REQUEST)
    assert hb.version == 2
    # the nonce stays 0: the data plane writes nonce_key ^ sequence per replica
    assert (hb.sequence, hb.peer_id, hb.nonce, hb.tx_timestamp_us) == (77, 0, 0, 0)
    # a round's copy changes only the sequence and the period in tx_timestamp_us
    rnd = _with_round(frame, 0xFFFF_FFFE, 10_000)
    hb = Heartbeat.unpack(rnd[42:], expect=MsgType.REQUEST)
    assert (hb.sequence, hb.nonce, hb.tx_timestamp_us) == (0xFFFF_FFFE, 0, 10_000)
    assert rnd[:50] == frame[:50] and rnd[54:58] == frame[54:58] and rnd[66:] == frame[66:]
    ip = frame[14:34]
    total = sum(int.from_bytes(ip[i:i + 2], "big") for i in range(0, 20, 2))
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # checksum verifies
    assert frame[34:38] == bytes.fromhex("23e723e6")  # 9191 -> 9190


def test_next_sequence_is_monotonic_across_restarts() -> None:
    assert next_sequence(5, 1_000.0) == 1_000_000
    assert next_sequence(1_000_000, 1_000.0) == 1_000_001  # same millisecond
    high = 0xFFFFFFF0
    assert seq_newer(next_sequence(high, 0.001), high)  # wraps forward


def test_setup_pushes_pipeline_and_programs_config_peers(server: TestP4RuntimeServer,
                                                         schema: P4Schema) -> None:
    config = make_config(server.port, peers=[
        {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1},
        {"name": "b", "address": "198.18.1.2", "peer_id": 2, "mac": "02:00:00:00:01:02",
         "port": 2, "admin_down": True}])
    h = Harness(config)
    with h.fabric:
        assert h.fabric.wait_ready(15)
        assert server.config is not None and server.config.p4info == schema.p4info
        assert len(entries(server, schema, "HbIngress.peers")) == 2
        g = group(server, schema)
        assert g is not None and [(r.port, r.instance) for r in g.replicas] == [(1, 0)]
        assert [p.index for p in h.fabric.list_peers()] == [0, 1]
        pkt = server.packets_out.get(timeout=10)
        meta = {m.metadata_id: m.value for m in pkt.metadata}
        assert meta[3] == b"\x01"  # mcast_grp 1
        assert Heartbeat.unpack(pkt.payload[42:]).type == MsgType.REQUEST
        assert h.fabric.summary()[Health.ADMIN_DOWN] == 1
        added = h.events(EventKind.PEER_ADDED)
        assert sorted(e.peer for e in added) == ["a", "b"]
        assert any(e.kind == EventKind.SWITCH and e.details.get("primary") for e in h.events())


def test_heartbeats_carry_increasing_sequences(harness: Harness,
                                               server: TestP4RuntimeServer) -> None:
    harness.fabric.add_peers([peer(1)])
    seqs = []
    while len(seqs) < 5:
        pkt = server.packets_out.get(timeout=10)
        seqs.append(Heartbeat.unpack(pkt.payload[42:]).sequence)
    assert all(seq_newer(b, a) for a, b in itertools.pairwise(seqs))


def test_add_poll_up_digest_down_remove(harness: Harness, server: TestP4RuntimeServer,
                                        schema: P4Schema) -> None:
    fabric = harness.fabric
    [p1] = fabric.add_peers([peer(1)])
    assert p1.index == 0
    assert len(entries(server, schema, "HbEgress.peer_requests")) == 1
    assert fabric.health("p1").state == Health.UNKNOWN
    set_slot(server, schema, 0, rx_count=5, tx_count=5, last_seq=9, rtt_ewma_us=120,
             state=PlaneState.UP)
    wait_for(lambda: fabric.health("p1").state == Health.UP, what="UP after poll")
    h = fabric.health("p1")
    assert (h.slot.rx_count, h.slot.rtt_ewma_us) == (5, 120)
    rows = [{"index": 0, "state": PlaneState.DOWN, "last_seq": 9, "time_us": 10}]
    server.send_digest(encode_digest_list(schema, "peer_event_t", 1, rows))
    wait_for(lambda: fabric.health("p1").state == Health.DOWN, what="DOWN from digest")
    assert server.digest_acks.get(timeout=10).list_id == 1
    down = [e for e in harness.events(EventKind.TRANSITION) if e.new_state == Health.DOWN]
    assert down and down[0].details["source"] == "digest"

    fabric.remove_peers(["p1"])
    assert entries(server, schema, "HbIngress.peers") == []
    assert group(server, schema) is None
    with pytest.raises(NotFoundError):
        fabric.health("p1")
    assert [e.peer for e in harness.events(EventKind.PEER_REMOVED)] == ["p1"]
    # the index is reused, and its slot was reset before the new peer was programmed
    [p2] = fabric.add_peers([peer(2)])
    assert p2.index == 0
    with server.lock:
        assert server.registers[(schema.register("hb_rx_count").id, 0)] == b"\x00"
    assert fabric.health("p2").state == Health.UNKNOWN


def test_bulk_add_is_all_or_nothing(harness: Harness, server: TestP4RuntimeServer,
                                    schema: P4Schema) -> None:
    fabric = harness.fabric
    fabric.add_peers([peer(1)])
    with pytest.raises(ConflictError) as info:
        fabric.add_peers([peer(2), peer(3, address="198.18.1.1")])
    assert info.value.field == "peers[1].address"
    with pytest.raises(ValidationError) as vinfo:
        fabric.add_peers([peer(4, switch="nope")])
    assert vinfo.value.field == "switch"
    assert [p.name for p in fabric.list_peers()] == ["p1"]
    assert len(entries(server, schema, "HbIngress.peers")) == 1
    # a data-plane refusal rolls everything back: store, memory, tables, indexes
    refused = TableEntry("HbIngress.peer_ids", {"peer_id": 6}, "HbIngress.peer_id_known") \
        .encode(schema).table_entry

    def reject(update: p4runtime_pb2.Update) -> str | None:
        te = update.entity.table_entry
        return "table full" if update.entity.HasField("table_entry") and \
            te.table_id == refused.table_id and te.match == refused.match else None

    server.reject = reject
    with pytest.raises(DataPlaneError):
        fabric.add_peers([peer(5), peer(6)])
    assert [p.name for p in fabric.list_peers()] == ["p1"]
    assert [p.name for p in harness.store.list_peers()] == ["p1"]
    assert len(entries(server, schema, "HbIngress.peers")) == 1
    server.reject = None
    [p7] = fabric.add_peers([peer(7)])
    assert p7.index == 1


def test_update_peer_reprograms(harness: Harness, server: TestP4RuntimeServer,
                                schema: P4Schema) -> None:
    fabric = harness.fabric
    fabric.add_peers([peer(1), peer(2)])
    updated = fabric.update_peer("p1", {"address": "198.18.1.50", "mac": "02:00:00:00:01:50"})
    assert updated.address == "198.18.1.50" and updated.index == 0
    srcs = sorted(e.match["src_addr"] for e in entries(server, schema, "HbIngress.peers"))
    assert srcs == [0xC6120102, 0xC6120132]
    fabric.update_peer("p2", {"admin_down": True})
    g = group(server, schema)
    assert g is not None and [r.instance for r in g.replicas] == [0]
    assert fabric.health("p2").state == Health.ADMIN_DOWN
    with pytest.raises(ConflictError):
        fabric.update_peer("p2", {"peer_id": 1})
    with pytest.raises(ValidationError):
        fabric.update_peer("p2", {"index": 9})
    with pytest.raises(NotFoundError):
        fabric.update_peer("nope", {"port": 2})
    assert harness.store.get_peer("p1").address == "198.18.1.50"
    kinds = [e.kind for e in harness.events() if e.peer in ("p1", "p2")]
    assert kinds.count(EventKind.PEER_UPDATED) == 2


def test_controller_restart_keeps_indexes_and_no_duplicates(server: TestP4RuntimeServer,
                                                            schema: P4Schema,
                                                            tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    first = Harness(make_config(server.port), url)
    with first.fabric:
        assert first.fabric.wait_ready(15)
        first.fabric.add_peers([peer(i) for i in range(1, 6)])
        first.fabric.remove_peers(["p2"])
    first.store.close()
    # the target kept running; a stale entry appears meanwhile (another tool, a crash)
    with server.lock:
        stale = TableEntry("HbIngress.peer_ids", {"peer_id": 99}, "HbIngress.peer_id_known")
        te = stale.encode(schema).table_entry
        server.tables[_key(te)] = te
    second = Harness(make_config(server.port), url)
    with second.fabric:
        assert second.fabric.wait_ready(15)
        assert {p.name: p.index for p in second.fabric.list_peers()} == {
            "p1": 0, "p3": 2, "p4": 3, "p5": 4}
        assert len(entries(server, schema, "HbIngress.peers")) == 4
        assert sorted(e.match["peer_id"] for e in entries(server, schema,
                                                          "HbIngress.peer_ids")) == [1, 3, 4, 5]
        g = group(server, schema)
        assert g is not None and sorted(r.instance for r in g.replicas) == [0, 2, 3, 4]
        [p6] = second.fabric.add_peers([peer(6)])
        assert p6.index == 1  # the freed slot, reset first
    second.store.close()


def nonce_params(server: TestP4RuntimeServer, schema: P4Schema) -> dict[Any, tuple[Any, ...]]:
    """index -> (peer_id, ingress nonce_key, egress nonce_key, min_ttl) as programmed."""
    ingress = {e.params["index"]: (e.match["peer_id"], e.params["nonce_key"], e.params["min_ttl"])
               for e in entries(server, schema, "HbIngress.peers")}
    egress = {e.match["index"]: e.params["nonce_key"]
              for e in entries(server, schema, "HbEgress.peer_requests")}
    assert ingress.keys() == egress.keys()
    return {i: (pid, key, egress[i], ttl) for i, (pid, key, ttl) in ingress.items()}


def test_nonce_keys_per_peer_stable_across_restart_and_controllers(schema: P4Schema,
                                                                   tmp_path: Path) -> None:
    """Protocol v2 (docs/protocol.md "Nonce"): each peer's key is programmed into its ingress
    and egress entries, differs per peer, and derives from the store's secret, so a restarted
    controller and a second controller on the same store program the very same keys (answers
    to requests in flight stay valid across a restart or a fail-over)."""
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    servers = [TestP4RuntimeServer() for _ in range(3)]
    for srv in servers:
        srv.start()
    try:
        first = Harness(make_config(servers[0].port), url)
        with first.fabric:
            assert first.fabric.wait_ready(15)
            first.fabric.add_peers([peer(i) for i in range(1, 9)])
            programmed = nonce_params(servers[0], schema)
            # a second controller sharing the store, on another target, at the same time
            second = Harness(make_config(servers[1].port), url)
            with second.fabric:
                assert second.fabric.wait_ready(15)
                assert nonce_params(servers[1], schema) == programmed
            second.store.close()
        secret = bytes.fromhex(str(first.store.get_setting(NONCE_SECRET_SETTING)))
        first.store.close()
        assert len(secret) == 32
        assert len(programmed) == 8
        keys = {key for _, key, _, _ in programmed.values()}
        assert len(keys) == 8 and 0 not in keys  # one key per peer
        for index, (peer_id, key, egress_key, min_ttl) in programmed.items():
            assert key == egress_key == derive_nonce_key(secret, "s1", index, peer_id)
            assert min_ttl == 0  # gtsm off by default
        # a restart on the same store, against a target that lost everything
        third = Harness(make_config(servers[2].port), url)
        with third.fabric:
            assert third.fabric.wait_ready(15)
            assert nonce_params(servers[2], schema) == programmed
        third.store.close()
    finally:
        for srv in servers:
            srv.stop()


def test_other_store_other_keys_and_gtsm_min_ttl(server: TestP4RuntimeServer,
                                                 schema: P4Schema) -> None:
    """`gtsm: true` on a switch programs min_ttl 255 (RFC 5082 single hop) into every peer's
    ingress entry; a fresh store makes a fresh secret, so its keys are not another's."""
    data = {"switches": [{"name": "s1", "grpc": f"127.0.0.1:{server.port}",
                          "p4info": str(P4INFO), "gtsm": True}]}
    config = parse_config(data)
    assert config.switch("s1").min_ttl == 255
    h = Harness(config)
    with h.fabric:
        assert h.fabric.wait_ready(15)
        h.fabric.add_peers([peer(i) for i in range(1, 4)])
        programmed = nonce_params(server, schema)
        assert [ttl for *_, ttl in programmed.values()] == [255, 255, 255]
        secret = bytes.fromhex(str(h.store.get_setting(NONCE_SECRET_SETTING)))
    h.store.close()
    other = Harness(make_config(server.port))
    assert other.store.get_setting(NONCE_SECRET_SETTING) != secret.hex()
    other.store.close()


def test_switch_restart_is_reconciled(schema: P4Schema) -> None:
    server = TestP4RuntimeServer()
    server.start()
    port = server.port
    h = Harness(make_config(port))
    try:
        with h.fabric:
            assert h.fabric.wait_ready(15)
            h.fabric.add_peers([peer(1), peer(2)])
            server.stop()
            server = TestP4RuntimeServer()
            server.start(port)
            wait_for(lambda: len(entries(server, schema, "HbIngress.peers")) == 2, 20,
                     "re-programming after the switch restart")
            wait_for(h.fabric.ready, 20, "ready again")
            g = group(server, schema)
            assert g is not None and len(g.replicas) == 2
            switch_events = [e for e in h.events(EventKind.SWITCH)]
            assert any(not e.details["connected"] for e in switch_events)
            assert h.fabric.switches()[0].connected
    finally:
        server.stop()
        h.store.close()


def test_service_views(harness: Harness) -> None:
    fabric = harness.fabric
    fabric.add_peers([peer(1), peer(2)])
    summary = fabric.summary()
    assert set(summary) == set(Health) and summary[Health.UNKNOWN] == 2
    [sw] = fabric.switches()
    assert (sw.name, sw.kind, sw.peers, sw.primary) == ("s1", "kernel", 2, True)
    wait_for(lambda: "RESPONSE_RECORDED" in fabric.dataplane_counters()["s1"], what="counters")
    assert [h.name for h in fabric.all_health()] == ["p1", "p2"]
    assert fabric.ready()


def test_entry_already_present_is_taken_over(harness: Harness, server: TestP4RuntimeServer,
                                             schema: P4Schema) -> None:
    # what a concurrent reconcile (or a leftover) leaves: the entry exists, maybe differently
    te = TableEntry("HbEgress.peer_requests", {"index": 0}, "HbEgress.rewrite_request",
                    {"dst_mac": 1, "dst_addr": 1, "peer_id": 1, "detect_mult": 9,
                     "nonce_key": 5}).encode(schema).table_entry
    with server.lock:
        server.tables[_key(te)] = te
    assert harness.fabric.add_peers([peer(1)])[0].index == 0
    [req] = entries(server, schema, "HbEgress.peer_requests")
    assert req.params["peer_id"] == 1 and req.params["detect_mult"] == 3
    assert req.params["nonce_key"] != 5  # the derived key replaced the leftover
    assert req.params["dst_mac"] == 0x020000000101


def test_config_peers_seed_the_inventory_once(server: TestP4RuntimeServer,
                                              tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    a = {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1}
    b = {"name": "b", "address": "198.18.1.2", "peer_id": 2, "mac": "02:00:00:00:01:02",
         "port": 1}
    first = Harness(make_config(server.port, peers=[a]), url)
    assert [p.name for p in first.fabric.list_peers()] == ["a"]
    first.fabric.remove_peers(["a"])
    first.store.close()
    # "a" was removed over the API: it stays removed; "b" is new in the file: it is added
    second = Harness(make_config(server.port, peers=[a, b]), url)
    assert [p.name for p in second.fabric.list_peers()] == ["b"]
    second.store.close()
