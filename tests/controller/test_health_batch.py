"""The batch health engine against the per-peer reference (tests/controller/health_reference.py).

Random slot sequences for many peers -- responses, losses, outages, counter wraps and resets,
RTT and peer-status swings, digests (also reordered and stale), admin changes, evidence
resets, detect multiplier changes, peers removed and added -- go through both engines: the
batch engine observes every poll as one `observe_rows` call over all peers, the reference
observes peer by peer. After every step both must have returned the same events, in the same
order, and report the same `PeerHealth` for every peer. Pure logic: no clock, no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hbmon.config import HealthConfig
from hbmon.controller.health import HealthEngine
from hbmon.model import HEALTHS, SLOT_FIELDS, Event, Health, Slot
from hbmon.protocol import PeerStatus, PlaneState

from . import health_reference

CONFIGS = {
    "small-window": HealthConfig(detect_mult=3, rtt_degraded_us=10_000, loss_degraded=0.3,
                                 loss_recover=0.1, loss_window=4, loss_min_requests=4,
                                 flap_count=3, flap_window_s=20.0, hold_down_s=4.0),
    "defaults-rtt-last": HealthConfig(rtt_metric="last", rtt_recover_us=30_000),
    "window-1": HealthConfig(detect_mult=1, loss_window=1, loss_min_requests=1,
                             loss_degraded=0.5, loss_recover=0.5, flap_count=2,
                             hold_down_s=0.0),
}


@dataclass
class SimPeer:
    """One peer's slot as a data plane would fill it, with a random behaviour per poll."""

    name: str
    slot: Slot
    loss: float  # probability a request goes unanswered
    rtt: int


def _step_slot(rng: random.Random, p: SimPeer, now: float, mult: int) -> Slot:
    s = p.slot
    roll = rng.random()
    if roll < 0.02:  # slot reset (target restart, slot reuse)
        return Slot()
    if roll < 0.04:  # counters about to wrap
        return replace(s, rx_count=0xFFFFFFF0 + rng.randrange(8),
                       tx_count=0xFFFFFFF0 + rng.randrange(8))
    sent = rng.choice((0, 1, 1, 2, 5, 10))
    answered = sum(rng.random() >= p.loss for _ in range(sent))
    if rng.random() < 0.05:
        answered = sent + 1  # a late response from an earlier round
    miss = 0 if answered else s.miss_count + sent
    state = PlaneState.UP if answered else (
        PlaneState.DOWN if miss > mult else s.state)
    rtt = max(0, int(rng.gauss(p.rtt, p.rtt / 3)))
    return replace(
        s, rx_count=(s.rx_count + answered) & 0xFFFFFFFF,
        tx_count=(s.tx_count + sent) & 0xFFFFFFFF, miss_count=miss,
        dup_count=s.dup_count + rng.randrange(2), last_seq=(s.last_seq + sent) & 0xFFFFFFFF,
        rtt_last_us=rtt, rtt_ewma_us=(s.rtt_ewma_us * 7 + rtt) // 8 if answered else
        s.rtt_ewma_us, rtt_min_us=min(s.rtt_min_us or rtt, rtt),
        rtt_max_us=max(s.rtt_max_us, rtt), last_tx_us=int(now * 1e6),
        last_rx_us=int(now * 1e6) - rng.randrange(0, 3_000_000) if answered else s.last_rx_us,
        peer_status=rng.choice((0,) * 12 + (PeerStatus.DEGRADED, PeerStatus.DRAINING))
        if rng.random() < 0.3 else s.peer_status,
        peer_load=rng.randrange(256), state=state)


def _event_key(e: Event) -> tuple:
    return (e.kind, e.time, e.peer, e.switch, e.old_state, e.new_state, e.reason, e.details)


class Twin:
    """The same inputs to the batch engine and to the reference; compares what comes out."""

    def __init__(self, config: HealthConfig) -> None:
        self.batch = HealthEngine(config)
        self.ref = health_reference.HealthEngine(config)  # type: ignore[arg-type]
        self.order: list[str] = []  # poll order: the order a switch's members are read in
        self.events = 0

    def same(self, got: list[Event], want: list[Event]) -> None:
        assert [_event_key(e) for e in got] == [_event_key(e) for e in want]
        self.events += len(got)
        want_health = [self.ref.health(name) for name in self.order]
        assert self.batch.health_many(self.order) == want_health
        for name, health in zip(self.order, want_health, strict=True):
            assert self.batch.health(name) == health, name
            assert self.batch.damped(name) == self.ref.damped(name), name
        # the sparkline rule (hbmon.api.rtt): the last RTT while UP/DEGRADED and answered
        rtt, answering = self.batch.rtt_sample(self.batch.rows(self.order))
        assert answering.tolist() == [
            h.state in (Health.UP, Health.DEGRADED) and h.slot.rx_count > 0
            for h in want_health]
        assert rtt.tolist() == [h.slot.rtt_last_us for h in want_health]
        columns = self.batch.columns(self.batch.rows(self.order))
        assert [HEALTHS[i] for i in columns["health"]] == [h.state for h in want_health]
        assert columns["since"].tolist() == [h.since for h in want_health]
        assert columns["loss_ratio"].tolist() == [h.loss_ratio for h in want_health]
        assert columns["peer_load"].tolist() == [h.slot.peer_load for h in want_health]

    def add(self, name: str, now: float, **kw: object) -> None:
        self.order.append(name)
        self.same(self.batch.add(name, "s1", now=now, **kw),  # type: ignore[arg-type]
                  self.ref.add(name, "s1", now=now, **kw))  # type: ignore[arg-type]

    def remove(self, name: str) -> None:
        self.order.remove(name)
        self.batch.remove(name)
        self.ref.remove(name)

    def poll(self, slots: dict[str, Slot], now: float) -> None:
        want: list[Event] = []
        for name in self.order:
            want += self.ref.observe(name, slots[name], now)
        want += self.ref.tick(now)
        columns = np.array([[getattr(slots[n], f) for n in self.order] for f in SLOT_FIELDS],
                           np.uint64)
        got = self.batch.observe_rows(self.batch.rows(self.order), columns, now)
        got += self.batch.tick(now)
        self.same(got, want)

    def call(self, method: str, *args: object, **kw: object) -> None:
        self.same(getattr(self.batch, method)(*args, **kw), getattr(self.ref, method)(*args, **kw))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_batch_matches_reference_on_random_sequences(config: str, seed: int) -> None:
    cfg = CONFIGS[config]
    rng = random.Random(f"{config}-{seed}")
    twin = Twin(cfg)
    now = 1000.0
    sims: dict[str, SimPeer] = {}
    serial = 0

    def new_peer() -> None:
        nonlocal serial
        name = f"p{serial}"
        serial += 1
        sims[name] = SimPeer(name, Slot(), loss=rng.choice((0.0, 0.0, 0.1, 0.4, 0.9, 1.0)),
                             rtt=rng.choice((200, 5_000, 9_000, 12_000, 40_000, 60_000)))
        twin.add(name, now, detect_mult=rng.choice((None, 1, 3, 5)),
                 admin_down=rng.random() < 0.05)

    for _ in range(40):
        new_peer()
    for _ in range(300):
        now += rng.choice((0.1, 0.5, 1.0, 1.0, 2.0))
        for sim in sims.values():  # behaviours change now and then
            if rng.random() < 0.03:
                sim.loss = rng.choice((0.0, 0.0, 0.2, 0.5, 1.0))
            if rng.random() < 0.03:
                sim.rtt = rng.choice((200, 9_000, 12_000, 45_000, 70_000))
        action = rng.random()
        if action < 0.08:  # digests between polls, some older than what was applied
            name = rng.choice(twin.order)
            state = rng.choice((PlaneState.UP, PlaneState.DOWN, PlaneState.UNKNOWN))
            time_us = int(now * 1e6) + rng.randrange(-2_000_000, 2_000_000)
            twin.call("plane_event", name, state, now=now, last_seq=rng.randrange(1 << 32),
                      time_us=rng.choice((0, time_us)))
        elif action < 0.10:
            twin.call("set_admin_down", rng.choice(twin.order), rng.random() < 0.5, now)
        elif action < 0.12:
            name, mult = rng.choice(twin.order), rng.choice((None, 1, 2, 4))
            twin.batch.set_detect_mult(name, mult)
            twin.ref.set_detect_mult(name, mult)
        elif action < 0.13:  # the inventory changes: a row is freed and reused
            gone = rng.choice(twin.order)
            twin.remove(gone)
            del sims[gone]
            new_peer()
        elif action < 0.15:
            twin.call("tick", now)
        mults = {n: twin.ref._peers[n].detect_mult for n in twin.order}
        slots = {}
        for name in twin.order:
            sim = sims[name]
            sim.slot = _step_slot(rng, sim, now, mults[name])
            slots[name] = sim.slot
        twin.poll(slots, now)
    # the sequences must have exercised the rules, not just agreed on silence
    assert twin.events > 100
    states = {twin.batch.state(n) for n in twin.order}
    assert len(states) >= 2


def test_partial_reads_keep_the_other_fields() -> None:
    """A poll that reads only the verdict fields keeps the last full read of the rest."""
    engine = HealthEngine(HealthConfig())
    engine.add("p", "s1", now=0.0)
    full = Slot(rx_count=5, tx_count=5, dup_count=2, last_seq=77, rtt_min_us=10,
                rtt_max_us=90, rtt_ewma_us=40, rtt_last_us=30, peer_load=9,
                state=PlaneState.UP, last_rx_us=1)
    engine.observe("p", full, 1.0)
    fields = HealthConfig().verdict_fields
    assert "dup_count" not in fields and "rx_count" in fields
    newer = replace(full, rx_count=6, tx_count=6, rtt_ewma_us=45, last_rx_us=2)
    engine.observe_rows(engine.rows(["p"]), [[getattr(newer, f)] for f in fields], 2.0, fields)
    h = engine.health("p")
    assert h.slot == replace(newer, dup_count=2, last_seq=77, peer_load=9)
    assert h.sampled_at == 2.0 and h.state == Health.UP


def test_steady_poll_evaluates_no_peer() -> None:
    """In a steady state no peer goes through the per-peer verdict: the cost of a poll is the
    array work. Checked by counting `_evaluate` calls (a spy; the engine is pure logic)."""
    engine = HealthEngine(HealthConfig())
    names = [f"p{i}" for i in range(500)]
    for n in names:
        engine.add(n, "s1", now=0.0)
    rows = engine.rows(names)
    calls = []
    original = engine._evaluate

    def spy(*args: object, **kw: object) -> list[Event]:
        calls.append(args)
        return original(*args, **kw)  # type: ignore[arg-type]

    engine._evaluate = spy  # type: ignore[method-assign]

    def poll(k: int) -> list[Event]:
        columns = np.zeros((len(SLOT_FIELDS), len(names)), np.uint64)
        columns[SLOT_FIELDS.index("rx_count")] = 10 * k
        columns[SLOT_FIELDS.index("tx_count")] = 10 * k
        columns[SLOT_FIELDS.index("state")] = PlaneState.UP
        columns[SLOT_FIELDS.index("rtt_ewma_us")] = 300
        return engine.observe_rows(rows, columns, float(k))

    first = poll(1)
    assert len(first) == len(names) and {e.new_state for e in first} == {Health.UP}
    calls.clear()
    for k in range(2, 6):
        assert poll(k) == []
    assert calls == []
