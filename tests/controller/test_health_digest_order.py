"""A poll's read older than a DOWN digest does not undo it (a rule of the health engine).

A poll reads the registers, then hands the read to the engine; a `peer_event_t` DOWN can be
applied in between (a long read, such as many cells over bmv2's Thrift; on any target a
digest arriving between the read and `observe_rows`). That read still shows the answers the
DOWN came after (rx_count grown, miss_count within the multiplier): they are no evidence of
life after the DOWN. Only an answer newer than the digest is: `hb_last_rx_us` and the
digest's `time_us` are the same target clock (docs/dataplane.md, "Miss detection and
notifications"). Seen on bmv2: a stopped peer went DOWN (digest), UP (the older read), DOWN
again, and was flap-damped after a single outage. Pure logic: the engine has no I/O. The
reference engine (health_reference.py) has the same rule, so test_health_batch compares it.
"""

from __future__ import annotations

from dataclasses import replace

from hbmon.controller.health import HealthEngine
from hbmon.model import Health
from hbmon.protocol import PlaneState

from .test_health import CFG, Peer


def test_a_read_older_than_a_down_digest_does_not_undo_it() -> None:
    engine = HealthEngine(CFG)
    p = Peer(engine)
    p.poll()
    p.poll()
    assert p.state == Health.UP
    # what a slow poll read: one more answer since the previous poll, no misses ...
    answered_us = int(p.now * 1e6)
    read = replace(p.slot, rx_count=p.slot.rx_count + 1, tx_count=p.slot.tx_count + 1,
                   miss_count=0, last_rx_us=answered_us)
    # ... while the peer went silent and the data plane declared it DOWN detect_mult
    # requests later, before that read reached the engine
    down_us = answered_us + (CFG.detect_mult + 1) * 50_000
    events = engine.plane_event("p1", PlaneState.DOWN, now=p.now, time_us=down_us)
    assert [e.new_state for e in events] == [Health.DOWN]
    assert engine.observe("p1", read, p.now + 0.1) == []
    assert p.state == Health.DOWN
    assert engine.health("p1").slot.rx_count == read.rx_count  # the read is kept, shown
    # an answer after the DOWN is evidence of life (the UP digest may come later)
    fresh = replace(read, rx_count=read.rx_count + 1, tx_count=read.tx_count + 5,
                    miss_count=0, last_rx_us=down_us + 50_000)
    events = engine.observe("p1", fresh, p.now + 0.2)
    assert [(e.new_state, e.reason) for e in events] == [(Health.UP, "responses received")]


def test_an_up_digest_ends_the_rule() -> None:
    """After an UP digest, polls judge by themselves again, even on a new target clock (a
    restarted target counts its time from 0: its answers are older than the old DOWN)."""
    engine = HealthEngine(replace(CFG, flap_count=10))  # four flips here, none damped
    p = Peer(engine)
    p.poll()
    engine.plane_event("p1", PlaneState.DOWN, now=p.now, time_us=900_000_000)
    assert p.state == Health.DOWN
    events = engine.plane_event("p1", PlaneState.UP, now=p.now, time_us=2_000_000)
    assert [e.new_state for e in events] == [Health.UP]
    # silent: the poll sees the misses and says DOWN, then answers again: the poll says UP
    p.slot = replace(p.slot, last_rx_us=2_000_000)
    for _ in range(CFG.detect_mult + 1):
        p.poll(answered=0)
    assert p.state == Health.DOWN
    answered = replace(p.slot, rx_count=p.slot.rx_count + 1, tx_count=p.slot.tx_count + 1,
                       miss_count=0, state=PlaneState.UP, last_rx_us=3_000_000)
    events = engine.observe("p1", answered, p.now + 1)
    assert [(e.new_state, e.reason) for e in events] == [(Health.UP, "responses received")]


def test_a_restarted_target_starts_a_new_clock() -> None:
    """An UP digest's time is remembered to tell stale reads (older than it) apart. A target
    that started afresh (bmv2 counts microseconds from its start) writes times below it, so
    without `new_target_clock` (the driver calls it when it had to push the pipeline) every
    later read would be 'stale' and the polls could never say DOWN."""
    for restart_known in (True, False):
        engine = HealthEngine(CFG)
        p = Peer(engine)
        p.poll()
        engine.plane_event("p1", PlaneState.UP, now=p.now, time_us=900_000_000)
        assert p.state == Health.UP
        if restart_known:
            engine.new_target_clock("s1")
        # the new process: the peer answers once on the new clock (no UP digest: the slot
        # is already UP in the engine's eyes), then falls silent
        p.slot = replace(p.slot, last_rx_us=5_000)
        for _ in range(CFG.detect_mult + 1):
            p.poll(answered=0)
        # unknown restart: the misses are never believed (at most the loss shows)
        assert (p.state == Health.DOWN) == restart_known
