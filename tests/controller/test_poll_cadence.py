"""What a poll reads and when, and the batch path from a poll's columns to health.

- over real gRPC (the kernel target's device over its in-memory data plane, as in
  test_fabric.py): the verdict
  registers are read every poll, so a new RTT verdict reaches the API by the next poll, while
  the informational registers (dup_count, ...) are polled every `detail_interval_ms` and
  read at once when a client asks for one peer;
- pure logic (a `Fabric` that is never started: no switch is needed to feed it a poll's
  columns): a peer removed while a poll was reading is dropped from that poll, and the RTT
  history samples the engine's arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from hbmon.api.rtt import RttHistory
from hbmon.config import parse_config
from hbmon.controller.fabric import Fabric
from hbmon.model import SLOT_FIELDS, Health, Peer
from hbmon.protocol import PlaneState, Reason
from hbmon.store.sql import open_store
from hbmon_kernel.memory import MemoryTarget

from .test_fabric import Harness, make_config, peer, set_slot, wait_for


def test_verdict_registers_every_poll_details_every_detail_interval(
        target: MemoryTarget) -> None:
    config = make_config(target.port, detail_interval_ms=3_600_000, peers=[
        {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1}])
    h = Harness(config)
    h.fabric.start()
    try:
        assert h.fabric.wait_ready(15), h.fabric.switches()
        index = h.fabric.get_peer("a").index
        assert index is not None
        set_slot(target, index, rx_count=5, tx_count=5, rtt_ewma_us=300,
                 state=PlaneState.UP, dup_count=7, last_seq=99)
        wait_for(lambda: h.fabric.all_health()[0].state == Health.UP, what="UP")
        # a slow peer: the RTT is a verdict register, read every poll
        set_slot(target, index, rx_count=6, tx_count=6, rtt_ewma_us=900_000)
        wait_for(lambda: h.fabric.all_health()[0].state == Health.DEGRADED, what="DEGRADED")
        listed = h.fabric.all_health()[0].slot
        assert (listed.rx_count, listed.rtt_ewma_us) == (6, 900_000)
        # the first poll read everything (all zero then); dup_count and last_seq are
        # informational, next polled an hour later: a listing shows that read ...
        assert (listed.dup_count, listed.last_seq) == (0, 0)
        # ... while a client asking for this one peer gets them read now
        slot = h.fabric.health("a").slot
        assert (slot.dup_count, slot.last_seq, slot.rx_count) == (7, 99, 6)
        assert h.fabric.all_health()[0].slot.dup_count == 7
        # the hb_reason counters too: polled with the details, read at once when asked
        target.datapath.counter_write("hb_reason", Reason.RESPONSE_RECORDED, 3, 90)
        assert h.fabric.drivers["s1"].counters.get("RESPONSE_RECORDED", (0, 0)) == (0, 0)
        assert h.fabric.dataplane_counters()["s1"]["RESPONSE_RECORDED"] == (3, 90)
    finally:
        h.fabric.stop()
        h.store.close()


def test_details_follow_the_detail_interval(target: MemoryTarget) -> None:
    config = make_config(target.port, detail_interval_ms=1, peers=[
        {"name": "a", "address": "198.18.1.1", "peer_id": 1, "mac": "02:00:00:00:01:01",
         "port": 1}])
    h = Harness(config)
    h.fabric.start()
    try:
        assert h.fabric.wait_ready(15), h.fabric.switches()
        index = h.fabric.get_peer("a").index
        assert index is not None
        set_slot(target, index, rx_count=5, tx_count=5, dup_count=7, last_seq=99,
                 peer_load=42, state=PlaneState.UP)
        # polls (a listing shows what they read) read everything again and again
        wait_for(lambda: h.fabric.all_health()[0].slot.dup_count == 7, what="dup_count polled")
        slot = h.fabric.all_health()[0].slot
        assert (slot.last_seq, slot.peer_load, slot.rx_count) == (99, 42, 5)
        assert h.fabric.dataplane_counters()["s1"] is not None
    finally:
        h.fabric.stop()
        h.store.close()


def _offline_fabric(*peers: Peer) -> Fabric:
    """A Fabric whose switch is never connected: its health engine is fed by hand."""
    fabric = Fabric(make_config(1), open_store("sqlite://:memory:"), None)
    fabric.add_peers(list(peers))
    return fabric


def _columns(n: int, k: int, **values: int) -> np.ndarray:
    cols = np.zeros((len(SLOT_FIELDS), n), np.uint64)
    cols[SLOT_FIELDS.index("rx_count")] = cols[SLOT_FIELDS.index("tx_count")] = 5 * k
    cols[SLOT_FIELDS.index("state")] = PlaneState.UP
    for name, value in values.items():
        cols[SLOT_FIELDS.index(name)] = value
    return cols


def test_peer_removed_while_a_poll_reads_is_dropped_from_that_poll() -> None:
    fabric = _offline_fabric(peer(1), peer(2), peer(3))
    driver = fabric.drivers["s1"]
    members = fabric._poll_members("s1")
    assert members.names == ["p1", "p2", "p3"]
    assert fabric._poll_members("s1") is members  # cached until the inventory changes
    fabric.remove_peers(["p2"])
    fabric.add_peers([peer(4)])  # may reuse p2's engine row: must not get p2's cells
    fabric._observe(driver, members, SLOT_FIELDS, _columns(3, 1, rtt_ewma_us=7))
    assert fabric.health("p1").state == Health.UP
    assert fabric.health("p3").state == Health.UP
    assert fabric.health("p4").state == Health.UNKNOWN
    assert fabric.health("p4").slot.rx_count == 0
    fresh = fabric._poll_members("s1")
    # the switch never connected, so p2's entries could not be removed: its index 1 is held
    # until a reconcile (nothing lost, issue 10) and p4 takes the next one
    assert fresh.names == ["p1", "p3", "p4"] and fresh is not members


def test_rtt_history_samples_the_engine_arrays() -> None:
    fabric = _offline_fabric(peer(1), peer(2))
    driver = fabric.drivers["s1"]
    history = RttHistory(fabric, interval=1.0, samples=3)
    history.sample()  # nothing answered yet: gaps
    for k, rtt in enumerate((100, 200, 300, 400), start=1):
        fabric._observe(driver, fabric._poll_members("s1"), SLOT_FIELDS,
                        _columns(2, k, rtt_last_us=rtt))
        history.sample()
    assert history.snapshot() == {"p1": [200, 300, 400], "p2": [200, 300, 400]}
    fabric.update_peer("p2", {"admin_down": True})
    fabric.add_peers([peer(3)])
    history.sample()
    # p1 keeps its history, p2 is not answering (admin down), p3 has one sample
    assert history.snapshot() == {"p1": [300, 400, 400], "p2": [300, 400, None],
                                  "p3": [None]}
    assert history.snapshot({"p3", "nobody"}) == {"p3": [None]}


def test_default_poll_keeps_verdicts_within_a_second() -> None:
    """The documented default: a loss/RTT verdict within 1 s needs a poll period below it."""
    switch = parse_config({"switches": [{"name": "s", "grpc": "h:1"}]}).switches[0]
    assert switch.poll_interval_s < 1.0
    assert switch.detail_interval_s >= switch.poll_interval_s


def test_details_never_overwrite_verdict_fields() -> None:
    fabric = _offline_fabric(peer(1))
    fabric._observe(fabric.drivers["s1"], fabric._poll_members("s1"), SLOT_FIELDS,
                    _columns(1, 1))
    fabric.engine.set_details("p1", {"dup_count": 3})
    assert fabric.engine.health("p1").slot.dup_count == 3
    with pytest.raises(ValueError):
        fabric.engine.set_details("p1", {"rx_count": 0})
    assert fabric.engine.health("p1").slot.rx_count == 5
