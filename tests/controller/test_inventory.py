"""Index allocation and reconcile planning (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hbmon.dataplane.inventory import (
    IndexAllocator,
    PeerGuard,
    desired_state,
    fanout_group,
    peer_entities,
    plan_reconcile,
)
from hbmon.model import ConflictError, Peer, ValidationError
from hbmon.p4 import MulticastGroup, P4Schema, Replica, TableEntry
from hbmon.protocol import GTSM_MIN_TTL, derive_nonce_key

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"
SECRET = bytes(range(32))
GUARD = PeerGuard(SECRET, "s1")


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


def _peer(i: int, **kw: object) -> Peer:
    base: dict = dict(name=f"p{i}", address=f"198.18.1.{i}", peer_id=100 + i,
                      mac=f"02:00:00:00:01:{i:02x}", port=1, switch="s1", index=i)
    base.update(kw)
    return Peer(**base)


def test_allocates_lowest_free_and_reuses_after_release() -> None:
    alloc = IndexAllocator(size=8)
    assert [alloc.allocate() for _ in range(3)] == [0, 1, 2]
    alloc.release(1)
    assert alloc.needs_reset == {1}
    assert alloc.allocate() == 1
    assert alloc.allocate() == 3
    assert len(alloc) == 4
    assert alloc.high_water == 4


def test_reserve_persisted_indexes_then_fill_gaps() -> None:
    alloc = IndexAllocator(size=8)
    alloc.reserve(5)
    alloc.reserve(2)
    assert [alloc.allocate() for _ in range(4)] == [0, 1, 3, 4]
    assert alloc.allocate() == 6
    with pytest.raises(ConflictError):
        alloc.reserve(6)
    with pytest.raises(ValidationError):
        alloc.reserve(8)
    assert alloc.allocate() == 7
    with pytest.raises(ConflictError, match="all 8 peer slots"):
        alloc.allocate()
    alloc.release(4)
    alloc.release(4)  # twice is harmless
    assert alloc.allocate() == 4
    assert 4 in alloc and alloc.used == frozenset(range(8))


def test_peer_entities(schema: P4Schema) -> None:
    peer = _peer(3, detect_mult=None)
    peers, ids, requests = peer_entities(peer, 5, GUARD)
    key = derive_nonce_key(SECRET, "s1", 3, 103)
    assert peers.match == {"src_addr": "198.18.1.3", "peer_id": 103}
    # docs/protocol.md version 2: the same key checks answers (ingress) and stamps requests
    assert peers.params == {"index": 3, "nonce_key": key, "min_ttl": 0}
    assert ids.match == {"peer_id": 103}
    assert requests.params["detect_mult"] == 5
    assert requests.params["nonce_key"] == key
    assert peer_entities(_peer(3, detect_mult=2), 5, GUARD)[2].params["detect_mult"] == 2
    for e in (peers, ids, requests):
        e.encode(schema)  # valid against the P4Info
    with pytest.raises(ValueError):
        peer_entities(_peer(1, index=None), 3, GUARD)


def test_nonce_keys_differ_per_peer_and_gtsm_sets_min_ttl() -> None:
    keys = {peer_entities(_peer(i), 3, GUARD)[0].params["nonce_key"] for i in range(1, 60)}
    assert len(keys) == 59 and 0 not in keys
    # another slot, another switch or another secret: another key
    base = GUARD.nonce_key(_peer(1))
    assert GUARD.nonce_key(_peer(1, index=7)) != base
    assert PeerGuard(SECRET, "s2").nonce_key(_peer(1)) != base
    assert PeerGuard(bytes(32), "s1").nonce_key(_peer(1)) != base
    gtsm = PeerGuard(SECRET, "s1", GTSM_MIN_TTL)
    assert peer_entities(_peer(1), 3, gtsm)[0].params["min_ttl"] == 255


def test_fanout_group_skips_admin_down() -> None:
    group = fanout_group([_peer(2, port=7), _peer(1), _peer(3, admin_down=True)])
    assert group == MulticastGroup(1, (Replica(1, 1), Replica(7, 2)))


def test_reconcile_from_empty(schema: P4Schema) -> None:
    desired = desired_state(schema, [_peer(1), _peer(2)], 3, GUARD)
    plan = plan_reconcile(schema, desired, [], [])
    assert len(plan.insert) == 6 and not plan.modify and not plan.delete
    assert plan.group_action == "insert"
    assert plan.group is not None and len(plan.group.replicas) == 2


def test_reconcile_in_sync_is_empty(schema: P4Schema) -> None:
    peers = [_peer(1), _peer(2)]
    desired = desired_state(schema, peers, 3, GUARD)
    actual = [TableEntry.decode(schema, e.encode(schema))
              for p in peers for e in peer_entities(p, 3, GUARD)]
    plan = plan_reconcile(schema, desired, actual, [fanout_group(reversed(peers))])
    assert plan.empty, plan.summary()


def test_reconcile_adds_missing_removes_stale_fixes_changed(schema: P4Schema) -> None:
    peers = [_peer(1), _peer(2)]
    desired = desired_state(schema, peers, 3, GUARD)
    moved = _peer(1, mac="02:00:00:00:09:09")
    actual = [e.normalized(schema) for e in peer_entities(moved, 3, GUARD)]
    actual += [e.normalized(schema) for e in peer_entities(_peer(9), 3, GUARD)]  # stale peer
    actual.append(TableEntry("HbIngress.l2_forward", {"dst_addr": 1}, "HbIngress.drop")
                  .normalized(schema))  # not ours: left alone
    plan = plan_reconcile(schema, desired, actual,
                          [MulticastGroup(1, (Replica(1, 1), Replica(1, 9))),
                           MulticastGroup(5, ())])
    assert {e.table for e in plan.insert} == {"HbIngress.peers", "HbIngress.peer_ids",
                                              "HbEgress.peer_requests"}
    assert len(plan.insert) == 3  # peer 2
    assert [e.params["dst_mac"] for e in plan.modify] == [0x020000000101]
    assert len(plan.delete) == 3  # peer 9
    assert all(e.table != "HbIngress.l2_forward" for e in plan.delete)
    assert plan.group_action == "modify"


def test_reconcile_duplicates_are_deleted(schema: P4Schema) -> None:
    peers = [_peer(1)]
    desired = desired_state(schema, peers, 3, GUARD)
    actual = [e.normalized(schema) for e in peer_entities(_peer(1), 3, GUARD)] * 2
    plan = plan_reconcile(schema, desired, actual, [fanout_group(peers)])
    assert len(plan.delete) == 3 and not plan.insert


def test_reconcile_without_peers_deletes_group(schema: P4Schema) -> None:
    desired = desired_state(schema, [], 3, GUARD)
    plan = plan_reconcile(schema, desired, [], [MulticastGroup(1, (Replica(1, 4),))])
    assert plan.group_action == "delete"
    assert plan_reconcile(schema, desired, [], []).empty
