"""Fabric + SwitchDriver over real gRPC against the kernel target's P4Runtime device over
its in-memory data plane (hbmon_kernel.memory; fixture `target` in conftest.py).

Nothing answers the requests there, so these tests drive the data-plane side with its hooks
(register values, UP/DOWN events that become digests, rounds of the schedule); the
integration tests run the same controller against the BPF data plane.
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
from hbmon.controller.driver import _with_round, next_sequence, request_template
from hbmon.controller.fabric import NONCE_SECRET_SETTING, Fabric
from hbmon.model import (
    ConflictError,
    DataPlaneError,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    ValidationError,
)
from hbmon.p4 import MulticastGroup, P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient
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
from hbmon.store.events import EventBus
from hbmon.store.sql import open_store
from hbmon_kernel.memory import MemoryTarget, serve_memory_target
from p4.v1 import p4runtime_pb2

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
def harness(target: MemoryTarget) -> Iterator[Harness]:
    h = Harness(make_config(target.port))
    h.fabric.start()
    assert h.fabric.wait_ready(15), h.fabric.switches()
    yield h
    h.fabric.stop()
    h.store.close()


def entries(target: MemoryTarget, schema: P4Schema, table: str) -> list[TableEntry]:
    """The table's entries as the device answers a Read of them."""
    return [TableEntry.decode(schema, p4runtime_pb2.Entity(table_entry=e))
            for e in target.table_entries(table)]


def group(target: MemoryTarget, schema: P4Schema) -> MulticastGroup | None:
    g = target.multicast_group(FANOUT_GROUP)
    if g is None:
        return None
    ent = p4runtime_pb2.Entity()
    ent.packet_replication_engine_entry.multicast_group_entry.CopyFrom(g)
    return MulticastGroup.decode(schema, ent)


def set_slot(target: MemoryTarget, index: int, **values: int) -> None:
    """Registers of one slot as the data plane would have left them (`rx_count=5`)."""
    target.datapath.set_cells(index, **values)


def as_another_tool(target: MemoryTarget, schema: P4Schema, entities: list[TableEntry]) -> None:
    """Entries written by another P4Runtime client (a tool, a crashed controller): it
    becomes primary (spec 5.3, taking over above the highest id seen) and leaves."""
    with P4RuntimeClient(target.address, 1, 1, schema=schema) as tool:
        assert tool.connect(timeout=10) and tool.primary
        tool.ensure_pipeline(schema)  # spec 7: no writes before a pipeline is set
        tool.insert(entities)


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


def test_setup_pushes_pipeline_and_programs_config_peers(target: MemoryTarget,
                                                         schema: P4Schema) -> None:
    config = make_config(target.port, peers=[
        {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1},
        {"name": "b", "address": "198.18.1.2", "peer_id": 2, "mac": "02:00:00:00:01:02",
         "port": 2, "admin_down": True}])
    h = Harness(config)
    with h.fabric:
        assert h.fabric.wait_ready(15)
        assert target.device.config is not None
        assert target.device.config.p4info == schema.p4info
        assert len(entries(target, schema, "HbIngress.peers")) == 2
        g = group(target, schema)
        assert g is not None and [(r.port, r.instance) for r in g.replicas] == [(1, 0)]
        assert [p.index for p in h.fabric.list_peers()] == [0, 1]
        pkt = target.datapath.wait_packet_outs(1)[0]
        assert (pkt.egress_port, pkt.mcast_grp) == (0, FANOUT_GROUP)
        assert Heartbeat.unpack(pkt.frame[42:]).type == MsgType.REQUEST
        # the kernel target keeps the rounds (docs/dataplane.md): one round ran at once
        assert target.datapath.register_read("hb_tx_count", 0) == 1
        assert h.fabric.summary()[Health.ADMIN_DOWN] == 1
        added = h.events(EventKind.PEER_ADDED)
        assert sorted(e.peer for e in added) == ["a", "b"]
        assert any(e.kind == EventKind.SWITCH and e.details.get("primary") for e in h.events())


def test_heartbeats_carry_increasing_sequences(harness: Harness,
                                               target: MemoryTarget) -> None:
    """The controller asks the target for a round every interval (one template with the
    period, docs/dataplane.md "Rounds kept by the target"); each round's requests carry the
    next sequence, starting from the controller's."""
    dp = target.datapath
    harness.fabric.add_peers([peer(1)])
    wait_for(lambda: dp.schedule is not None, what="the round schedule")
    assert dp.schedule is not None and dp.schedule.period_us == 20_000  # interval_ms 20
    template = next(p for p in dp.packet_outs if p.mcast_grp == FANOUT_GROUP)
    first = Heartbeat.unpack(template.frame[42:]).sequence
    wait_for(lambda: dp.register_read("hb_tx_count", 0) == 1, what="the first round")
    seqs = [dp.register_read("hb_last_tx_seq", 0)]
    for _ in range(4):
        dp.run_rounds(1)
        seqs.append(dp.register_read("hb_last_tx_seq", 0))
    assert seqs[0] == first
    assert all(seq_newer(b, a) for a, b in itertools.pairwise(seqs))
    assert dp.register_read("hb_tx_count", 0) == 5


def test_add_poll_up_digest_down_remove(harness: Harness, target: MemoryTarget,
                                        schema: P4Schema) -> None:
    fabric = harness.fabric
    [p1] = fabric.add_peers([peer(1)])
    assert p1.index == 0
    assert len(entries(target, schema, "HbEgress.peer_requests")) == 1
    assert fabric.health("p1").state == Health.UNKNOWN
    set_slot(target, 0, rx_count=5, tx_count=5, last_seq=9, rtt_ewma_us=120,
             state=PlaneState.UP)
    wait_for(lambda: fabric.health("p1").state == Health.UP, what="UP after poll")
    h = fabric.health("p1")
    assert (h.slot.rx_count, h.slot.rtt_ewma_us) == (5, 120)
    target.datapath.peer_event(0, PlaneState.DOWN, last_seq=9, time_us=10)
    wait_for(lambda: fabric.health("p1").state == Health.DOWN, what="DOWN from digest")
    wait_for(lambda: target.digest_lists_sent() == 1 and not target.digests_unacknowledged(),
             what="the digest acknowledged")
    down = [e for e in harness.events(EventKind.TRANSITION) if e.new_state == Health.DOWN]
    assert down and down[0].details["source"] == "digest"

    fabric.remove_peers(["p1"])
    assert entries(target, schema, "HbIngress.peers") == []
    assert group(target, schema) is None
    with pytest.raises(NotFoundError):
        fabric.health("p1")
    assert [e.peer for e in harness.events(EventKind.PEER_REMOVED)] == ["p1"]
    # the index is reused, and its slot was reset before the new peer was programmed
    [p2] = fabric.add_peers([peer(2)])
    assert p2.index == 0
    assert target.datapath.register_read("hb_rx_count", 0) == 0
    assert target.datapath.register_read("hb_state", 0) == PlaneState.UNKNOWN
    assert fabric.health("p2").state == Health.UNKNOWN


def test_a_poll_before_the_slot_reset_gives_the_new_peer_nothing(
        harness: Harness, target: MemoryTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-used index holds the previous peer's counts until program_add resets it. A poll
    that reads the slot in between (the new peer is already known to the engine, so its
    first responses count) must not take those counts as the new peer's answers: it was UP
    at once (test_integration's re-used index flaked 1 in ~25). The interleaving is forced:
    the poll runs inside program_add, before the reset."""
    fabric = harness.fabric
    [p1] = fabric.add_peers([peer(1)])
    set_slot(target, p1.index, rx_count=47, tx_count=47, last_seq=9, last_rx_us=10**9,
             state=PlaneState.UP)
    wait_for(lambda: fabric.health("p1").state == Health.UP, what="p1 UP")
    fabric.remove_peers(["p1"])
    driver = fabric.drivers["s1"]
    real_program_add = driver.program_add
    polled: list[bool] = []

    def program_add_after_a_poll(*args: Any, **kwargs: Any) -> Any:
        polled.append(driver.poll())  # reads the slot before its reset
        return real_program_add(*args, **kwargs)

    monkeypatch.setattr(driver, "program_add", program_add_after_a_poll)
    [p2] = fabric.add_peers([peer(2)])
    assert p2.index == p1.index and polled == [True]
    assert target.datapath.register_read("hb_rx_count", p2.index) == 0  # reset after the poll
    assert fabric.health("p2").state == Health.UNKNOWN
    assert Health.UP not in harness.transitions("p2")


def test_bulk_add_is_all_or_nothing(harness: Harness, target: MemoryTarget,
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
    assert len(entries(target, schema, "HbIngress.peers")) == 1
    # a data-plane refusal (the peer_ids map is full when peer 6 comes: RESOURCE_EXHAUSTED)
    # rolls everything back: store, memory, tables, indexes
    target.datapath.refusals["peer_ids_set"] = lambda peer_id: peer_id == 6
    with pytest.raises(DataPlaneError, match="RESOURCE_EXHAUSTED"):
        fabric.add_peers([peer(5), peer(6)])
    assert [p.name for p in fabric.list_peers()] == ["p1"]
    assert [p.name for p in harness.store.list_peers()] == ["p1"]
    assert len(entries(target, schema, "HbIngress.peers")) == 1
    assert [e.match["peer_id"] for e in entries(target, schema, "HbIngress.peer_ids")] == [1]
    del target.datapath.refusals["peer_ids_set"]
    [p7] = fabric.add_peers([peer(7)])
    assert p7.index == 1


def test_update_peer_reprograms(harness: Harness, target: MemoryTarget,
                                schema: P4Schema) -> None:
    fabric = harness.fabric
    fabric.add_peers([peer(1), peer(2)])
    updated = fabric.update_peer("p1", {"address": "198.18.1.50", "mac": "02:00:00:00:01:50"})
    assert updated.address == "198.18.1.50" and updated.index == 0
    srcs = sorted(e.match["src_addr"] for e in entries(target, schema, "HbIngress.peers"))
    assert srcs == [0xC6120102, 0xC6120132]
    fabric.update_peer("p2", {"admin_down": True})
    g = group(target, schema)
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


def test_controller_restart_keeps_indexes_and_no_duplicates(target: MemoryTarget,
                                                            schema: P4Schema,
                                                            tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    first = Harness(make_config(target.port), url)
    with first.fabric:
        assert first.fabric.wait_ready(15)
        first.fabric.add_peers([peer(i) for i in range(1, 6)])
        first.fabric.remove_peers(["p2"])
    first.store.close()
    # the target kept running; a stale entry appears meanwhile (another tool, a crash)
    as_another_tool(target, schema, [
        TableEntry("HbIngress.peer_ids", {"peer_id": 99}, "HbIngress.peer_id_known")])
    second = Harness(make_config(target.port), url)
    with second.fabric:
        assert second.fabric.wait_ready(15)
        assert {p.name: p.index for p in second.fabric.list_peers()} == {
            "p1": 0, "p3": 2, "p4": 3, "p5": 4}
        assert len(entries(target, schema, "HbIngress.peers")) == 4
        assert sorted(e.match["peer_id"] for e in entries(target, schema,
                                                          "HbIngress.peer_ids")) == [1, 3, 4, 5]
        g = group(target, schema)
        assert g is not None and sorted(r.instance for r in g.replicas) == [0, 2, 3, 4]
        [p6] = second.fabric.add_peers([peer(6)])
        assert p6.index == 1  # the freed slot, reset first
    second.store.close()


def nonce_params(target: MemoryTarget, schema: P4Schema) -> dict[Any, tuple[Any, ...]]:
    """index -> (peer_id, ingress nonce_key, egress nonce_key, min_ttl) as programmed."""
    ingress = {e.params["index"]: (e.match["peer_id"], e.params["nonce_key"], e.params["min_ttl"])
               for e in entries(target, schema, "HbIngress.peers")}
    egress = {e.match["index"]: e.params["nonce_key"]
              for e in entries(target, schema, "HbEgress.peer_requests")}
    assert ingress.keys() == egress.keys()
    return {i: (pid, key, egress[i], ttl) for i, (pid, key, ttl) in ingress.items()}


def test_nonce_keys_per_peer_stable_across_restart_and_controllers(schema: P4Schema,
                                                                   tmp_path: Path) -> None:
    """Protocol v2 (docs/protocol.md "Nonce"): each peer's key is programmed into its ingress
    and egress entries, differs per peer, and derives from the store's secret, so a restarted
    controller and a second controller on the same store program the very same keys (answers
    to requests in flight stay valid across a restart or a fail-over)."""
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    servers = [serve_memory_target() for _ in range(3)]
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


def test_other_store_other_keys_and_gtsm_min_ttl(target: MemoryTarget,
                                                 schema: P4Schema) -> None:
    """`gtsm: true` on a switch programs min_ttl 255 (RFC 5082 single hop) into every peer's
    ingress entry; a fresh store makes a fresh secret, so its keys are not another's."""
    data = {"switches": [{"name": "s1", "grpc": f"127.0.0.1:{target.port}",
                          "p4info": str(P4INFO), "gtsm": True}]}
    config = parse_config(data)
    assert config.switch("s1").min_ttl == 255
    h = Harness(config)
    with h.fabric:
        assert h.fabric.wait_ready(15)
        h.fabric.add_peers([peer(i) for i in range(1, 4)])
        programmed = nonce_params(target, schema)
        assert [ttl for *_, ttl in programmed.values()] == [255, 255, 255]
        secret = bytes.fromhex(str(h.store.get_setting(NONCE_SECRET_SETTING)))
    h.store.close()
    other = Harness(make_config(target.port))
    assert other.store.get_setting(NONCE_SECRET_SETTING) != secret.hex()
    other.store.close()


def test_switch_restart_is_reconciled(schema: P4Schema) -> None:
    server = serve_memory_target()
    port = server.port
    h = Harness(make_config(port))
    try:
        with h.fabric:
            assert h.fabric.wait_ready(15)
            h.fabric.add_peers([peer(1), peer(2)])
            server.stop()
            server = serve_memory_target(f"127.0.0.1:{port}")  # restarted: nothing set
            restarted = server
            # (a Read before the pipeline is pushed again is FAILED_PRECONDITION, spec 7)
            wait_for(lambda: restarted.device.pipeline_set
                     and len(entries(restarted, schema, "HbIngress.peers")) == 2, 20,
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


def test_entry_already_present_is_taken_over(target: MemoryTarget, schema: P4Schema) -> None:
    # what a concurrent reconcile (or a leftover) leaves: the entry exists, maybe differently
    as_another_tool(target, schema, [
        TableEntry("HbEgress.peer_requests", {"index": 0}, "HbEgress.rewrite_request",
                   {"dst_mac": 1, "dst_addr": 1, "peer_id": 1, "detect_mult": 9,
                    "nonce_key": 5})])
    harness = Harness(make_config(target.port))
    harness.fabric.start()
    try:
        assert harness.fabric.wait_ready(15), harness.fabric.switches()
        _taken_over(harness, target, schema)
    finally:
        harness.fabric.stop()
        harness.store.close()


def _taken_over(harness: Harness, target: MemoryTarget, schema: P4Schema) -> None:
    assert harness.fabric.add_peers([peer(1)])[0].index == 0
    [req] = entries(target, schema, "HbEgress.peer_requests")
    assert req.params["peer_id"] == 1 and req.params["detect_mult"] == 3
    assert req.params["nonce_key"] != 5  # the derived key replaced the leftover
    assert req.params["dst_mac"] == 0x020000000101


def test_config_peers_seed_the_inventory_once(target: MemoryTarget,
                                              tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    a = {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1}
    b = {"name": "b", "address": "198.18.1.2", "peer_id": 2, "mac": "02:00:00:00:01:02",
         "port": 1}
    first = Harness(make_config(target.port, peers=[a]), url)
    assert [p.name for p in first.fabric.list_peers()] == ["a"]
    first.fabric.remove_peers(["a"])
    first.store.close()
    # "a" was removed over the API: it stays removed; "b" is new in the file: it is added
    second = Harness(make_config(target.port, peers=[a, b]), url)
    assert [p.name for p in second.fabric.list_peers()] == ["b"]
    second.store.close()
