"""Nothing lost (issue 10): a store error never drops an event, a removal commits before it
unprograms, and a slot a peer left is reset before another peer uses it, also across a
restart.

The Fabric runs over real gRPC against the kernel target's device over its in-memory data
plane (as in test_fabric.py) with a real SQLite store and the real EventBus. Store failures
are injected by `FlakyStore`, a wrapper around the real `SqliteStore` whose chosen methods raise
`sqlite3.OperationalError` while told to: a fake of that one layer, because a real SQLite
file cannot be made to fail on demand here (tests run as root, so permissions do not stop
writes, and a lock held by another connection makes the store wait out its 30 s busy
timeout instead of failing). The live-product versions are in
tests/integration/test_durability.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hbmon.api.metrics import ControllerMetrics
from hbmon.controller.fabric import Fabric
from hbmon.model import Event, EventKind, Health, NotFoundError
from hbmon.p4 import P4Schema
from hbmon.protocol import PlaneState
from hbmon.store.events import EventBus
from hbmon.store.sql import SqliteStore, open_store
from hbmon_kernel.memory import MemoryTarget

from .test_fabric import P4INFO, entries, group, make_config, peer, set_slot, wait_for


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


class FlakyStore:
    """The real SQLite store; the methods named in `failing` raise while they are listed
    (see the module docstring for why this one layer is faked)."""

    def __init__(self, path: Path) -> None:
        self.real = SqliteStore(str(path))
        self.failing: set[str] = set()
        self.attempts: dict[str, int] = {}

    def _gate(self, name: str) -> None:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if name in self.failing:
            raise sqlite3.OperationalError(f"injected: {name} failed (disk I/O error)")

    def append_events(self, events: Sequence[Event]) -> list[Event]:
        self._gate("append_events")
        return self.real.append_events(events)

    def remove_peers(self, names: Sequence[str]) -> None:
        self._gate("remove_peers")
        self.real.remove_peers(names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Rig:
    """Fabric + EventBus + ControllerMetrics over a FlakyStore; records every event the
    Fabric emits, in emission order, to compare with what reaches the history."""

    def __init__(self, target: MemoryTarget, db: Path, **fabric_args: Any) -> None:
        self.store = FlakyStore(db)
        self.bus = EventBus(self.store)
        self.metrics = ControllerMetrics()
        self.fabric = Fabric(make_config(target.port), self.store,
                             self.bus, metrics=self.metrics, **fabric_args)
        self.emitted: list[Event] = []
        self._lock = threading.Lock()
        real_emit = self.fabric._emit

        def recording_emit(events: list[Event]) -> None:
            with self._lock:  # the record's order is the outbox's order
                self.emitted.extend(events)
                real_emit(events)

        self.fabric._emit = recording_emit  # type: ignore[method-assign]

    def metric(self, name: str) -> float:
        body, _ = self.metrics.render()
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def close(self) -> None:
        self.store.failing.clear()  # else stop() retries the outbox for 10 s
        self.fabric.stop()
        self.bus.close()
        self.store.real.close()


@pytest.fixture
def rig(target: MemoryTarget, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(target, tmp_path / "hb.db")
    r.fabric.start()
    assert r.fabric.wait_ready(15), r.fabric.switches()
    yield r
    r.close()


def _key(e: Event) -> tuple[Any, ...]:
    return (str(e.kind), e.peer, e.switch, e.new_state, round(e.time, 6), e.reason)


def test_store_outage_loses_no_event_and_keeps_order(rig: Rig, target: MemoryTarget,
                                                     schema: P4Schema) -> None:
    fabric, store = rig.fabric, rig.store
    assert fabric.flush_events(10)
    before = store.real.last_event_id()
    start = len(rig.emitted)
    tried = store.attempts.get("append_events", 0)
    store.failing.add("append_events")
    # inventory events, then transitions from polls and a digest, while nothing can be stored
    fabric.add_peers([peer(1), peer(2)])
    set_slot(target, 0, rx_count=5, tx_count=5, last_seq=9, state=PlaneState.UP)
    set_slot(target, 1, rx_count=5, tx_count=5, last_seq=9, state=PlaneState.UP)
    wait_for(lambda: fabric.health("p1").state == Health.UP
             and fabric.health("p2").state == Health.UP, what="UP while the store fails")
    fabric.remove_peers(["p2"])
    fabric.add_peers([peer(3)])
    wait_for(lambda: store.attempts.get("append_events", 0) >= tried + 3, what="retries")
    assert not fabric.flush_events(0.5)  # nothing got through
    assert store.real.last_event_id() == before
    assert rig.metric("hbmon_event_outbox_depth") >= len(rig.emitted) - start >= 6
    assert rig.metric("hbmon_event_publish_failures_total") >= 3
    assert fabric.publish_failures >= 3

    store.failing.clear()
    assert fabric.flush_events(30), "the outbox did not drain after the store recovered"
    history = store.real.events(after_id=before, limit=10_000)
    want = rig.emitted[start:]
    # every event once, in the order the controller emitted them, ids increasing
    assert [_key(e) for e in history] == [_key(e) for e in want]
    assert [e.id for e in history] == sorted({e.id for e in history})
    kinds = [(str(e.kind), e.peer, e.new_state) for e in history]
    assert ("peer_added", "p1", None) in kinds and ("peer_removed", "p2", None) in kinds
    assert ("transition", "p1", Health.UP) in kinds
    assert rig.metric("hbmon_event_outbox_depth") == 0
    assert rig.metric("hbmon_event_outbox_dropped_total") == 0


def test_full_outbox_drops_the_oldest_waiting_and_counts_them(
        target: MemoryTarget, tmp_path: Path) -> None:
    r = Rig(target, tmp_path / "hb.db", outbox_limit=5)
    try:
        r.fabric.start()
        assert r.fabric.wait_ready(15)
        assert r.fabric.flush_events(10)
        before = r.store.real.last_event_id()
        tried = r.store.attempts.get("append_events", 0)
        r.store.failing.add("append_events")

        def ev(i: int) -> Event:
            return Event(kind=EventKind.SWITCH, time=1000.0 + i, switch="s1", reason=f"e{i}")

        r.fabric._emit([ev(0)])
        # e0 is the batch being retried: it is never the one dropped
        wait_for(lambda: r.store.attempts.get("append_events", 0) > tried, what="first try")
        for i in range(1, 9):
            r.fabric._emit([ev(i)])
        assert r.fabric.outbox_depth() == 5
        assert r.fabric.outbox_dropped == 4  # e1..e4, the oldest waiting
        assert r.metric("hbmon_event_outbox_dropped_total") == 4
        r.store.failing.clear()
        assert r.fabric.flush_events(30)
        reasons = [e.reason for e in r.store.real.events(after_id=before, limit=100)
                   if e.reason.startswith("e")]
        assert reasons == ["e0", "e5", "e6", "e7", "e8"]
    finally:
        r.close()


def test_remove_store_failure_unprograms_nothing(rig: Rig, target: MemoryTarget,
                                                 schema: P4Schema) -> None:
    fabric = rig.fabric
    fabric.add_peers([peer(1), peer(2)])
    rig.store.failing.add("remove_peers")
    with pytest.raises(sqlite3.OperationalError):
        fabric.remove_peers(["p1"])
    # the caller got the error; inventory, store and data plane are as they were
    assert [p.name for p in fabric.list_peers()] == ["p1", "p2"]
    assert [p.name for p in rig.store.real.list_peers()] == ["p1", "p2"]
    assert len(entries(target, schema, "HbIngress.peers")) == 2
    g = group(target, schema)
    assert g is not None and sorted(r.instance for r in g.replicas) == [0, 1]
    rig.store.failing.clear()
    fabric.remove_peers(["p1"])
    assert [p.name for p in rig.store.real.list_peers()] == ["p2"]
    assert [e.params["index"] for e in entries(target, schema, "HbIngress.peers")] == [1]


def test_remove_unprogram_failure_keeps_removal_and_holds_the_index(
        rig: Rig, target: MemoryTarget, schema: P4Schema) -> None:
    fabric = rig.fabric
    fabric.add_peers([peer(1), peer(2)])
    set_slot(target, 0, rx_count=77, tx_count=80)
    driver = fabric.drivers["s1"]
    # the target is unreachable, so every write fails: the removal is committed anyway
    target.stop_serving()
    fabric.remove_peers(["p1"])
    assert [p.name for p in fabric.list_peers()] == ["p2"]
    assert [p.name for p in rig.store.real.list_peers()] == ["p2"]
    assert rig.store.real.pending_slot_resets() == {"s1": {0}}
    assert sorted(e.params["index"] for e in entries(target, schema, "HbIngress.peers")) \
        == [0, 1]  # leftovers, still pointing at slot 0
    assert driver.allocator.held == {0}
    # slot 0 is not handed out while the target may still send p1's answers to it
    [p3] = fabric.add_peers([peer(3)])
    assert p3.index == 2
    # the target is back (its state kept): the switch reconciles the leftovers away and
    # frees the index
    target.serve_again()
    wait_for(lambda: sorted(e.params["index"] for e in entries(
        target, schema, "HbIngress.peers")) == [1, 2], 30, "leftovers reconciled away")
    wait_for(lambda: not driver.allocator.held, 10, "index 0 released")
    [p4] = fabric.add_peers([peer(4)])
    assert p4.index == 0
    # reset before p4's entries point at it; the record is gone
    assert target.datapath.register_read("hb_rx_count", 0) == 0
    assert rig.store.real.pending_slot_resets() == {}
    assert [e.peer for e in rig.store.real.events(limit=1000)
            if e.kind == EventKind.PEER_REMOVED] == ["p1"]


def test_slot_left_before_a_crash_is_reset_after_restart(target: MemoryTarget,
                                                         schema: P4Schema,
                                                         tmp_path: Path) -> None:
    """A removal committed, then the process died before any reset; the next peer given
    that index was committed too, and it died again before programming it. The restarted
    controller resets the slot before the new peer's entries point at it."""
    db = tmp_path / "hb.db"
    store = SqliteStore(str(db))
    fabric = Fabric(make_config(target.port), store)
    fabric.start()
    assert fabric.wait_ready(15)
    fabric.add_peers([peer(1)])
    set_slot(target, 0, rx_count=500, tx_count=510, last_seq=42)
    fabric.stop()  # stands in for the crash: the writes below are what it committed
    store.remove_peers(["p1"])
    store.add_peers([peer(2, index=0)])
    store.close()
    assert SqliteStore(str(db)).pending_slot_resets() == {"s1": {0}}

    store = SqliteStore(str(db))
    fabric = Fabric(make_config(target.port), store)
    try:
        fabric.start()
        assert fabric.wait_ready(15)
        assert [(p.name, p.index) for p in fabric.list_peers()] == [("p2", 0)]
        for name in ("hb_rx_count", "hb_tx_count", "hb_last_seq"):
            # hb_tx_count: reset, then at most the round the re-armed schedule ran
            assert target.datapath.register_read(name, 0) <= (name == "hb_tx_count"), name
        assert store.pending_slot_resets() == {}
        assert [e.match["peer_id"] for e in entries(target, schema, "HbIngress.peer_ids")] \
            == [2]
    finally:
        fabric.stop()
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")  # tests/conftest.py: a real PostgreSQL
    return url


def test_store_records_left_slots_in_the_same_transaction(store_url: str) -> None:
    """Removal and move record the slot left behind; a failed removal records nothing;
    `slots_reset` forgets; the record survives reopening (both backends)."""
    store = open_store(store_url)
    try:
        store.add_peers([peer(1, index=0), peer(2, index=1), peer(3, index=2)])
        store.remove_peers(["p1"])
        moved = peer(2, index=5)
        store.update_peer(moved)
        store.update_peer(dataclasses.replace(moved, port=2))  # same slot: nothing left
        with pytest.raises(NotFoundError):
            store.remove_peers(["p3", "nope"])  # one transaction: p3 stays, no record
        assert [p.name for p in store.list_peers()] == ["p2", "p3"]
        assert store.pending_slot_resets() == {"s1": {0, 1}}
    finally:
        store.close()
    store = open_store(store_url)
    try:
        assert store.pending_slot_resets() == {"s1": {0, 1}}
        store.remove_peers(["p3"])
        store.slots_reset("s1", [0, 1])
        assert store.pending_slot_resets() == {"s1": {2}}
    finally:
        store.close()
