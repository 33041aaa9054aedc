"""The health engine's rules, one scenario per rule, with explicit clocks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hbmon.config import HealthConfig
from hbmon.controller.health import HealthEngine, counter_delta
from hbmon.model import EventKind, Health, Slot, ValidationError
from hbmon.protocol import PeerStatus, PlaneState

CFG = HealthConfig(detect_mult=3, rtt_degraded_us=10_000, loss_degraded=0.3, loss_recover=0.1,
                   loss_window=5, loss_min_requests=4, flap_count=4, flap_window_s=20.0,
                   hold_down_s=5.0)


class Peer:
    """Simulates one peer's slot as the data plane would fill it, poll by poll."""

    def __init__(self, engine: HealthEngine, name: str = "p1") -> None:
        self.engine = engine
        self.name = name
        self.slot = Slot()
        self.now = 1000.0
        engine.add(name, "s1", now=self.now)

    def poll(self, *, sent: int = 1, answered: int = 1, rtt: int = 100, status: int = 0,
             dt: float = 1.0) -> list:
        s = self.slot
        miss = 0 if answered else s.miss_count + sent
        state = s.state
        if answered:
            state = PlaneState.UP
        elif miss > self.engine.config.detect_mult:
            state = PlaneState.DOWN
        self.slot = replace(
            s, rx_count=s.rx_count + answered, tx_count=s.tx_count + sent, miss_count=miss,
            rtt_ewma_us=rtt if answered else s.rtt_ewma_us, rtt_last_us=rtt,
            peer_status=status, state=state,
            last_rx_us=int(self.now * 1e6) if answered else s.last_rx_us,
        )
        self.now += dt
        return self.engine.observe(self.name, self.slot, self.now)

    @property
    def state(self) -> Health:
        return self.engine.state(self.name)


@pytest.fixture
def engine() -> HealthEngine:
    return HealthEngine(CFG)


def test_unknown_until_first_response(engine: HealthEngine) -> None:
    p = Peer(engine)
    assert p.state == Health.UNKNOWN
    assert p.poll(answered=0) == []
    assert p.state == Health.UNKNOWN
    events = p.poll()
    assert [(e.old_state, e.new_state) for e in events] == [(Health.UNKNOWN, Health.UP)]
    assert events[0].kind == EventKind.TRANSITION
    assert events[0].reason == "responses received"
    assert events[0].details["rx_delta"] == 1


def test_down_after_detect_mult_misses_and_back(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    for _ in range(3):  # miss_count 1, 2, 3: not yet (the last request may be in flight)
        assert p.poll(answered=0) == []
        assert p.state == Health.UP
    events = p.poll(answered=0)  # miss_count 4 > 3
    assert [e.new_state for e in events] == [Health.DOWN]
    assert "3 consecutive requests unanswered" in events[0].reason
    assert events[0].details["previous_since"] < events[0].time
    events = p.poll()
    assert [e.new_state for e in events] == [Health.UP]


def test_peer_detect_mult_overrides_default(engine: HealthEngine) -> None:
    engine.add("p2", "s1", now=0.0, detect_mult=1)
    slot = Slot(rx_count=1, tx_count=1, state=PlaneState.UP, last_rx_us=1)
    engine.observe("p2", slot, 1.0)
    engine.observe("p2", replace(slot, tx_count=3, miss_count=2), 2.0)
    assert engine.state("p2") == Health.DOWN


def test_rtt_threshold_with_hysteresis(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll(rtt=5_000)
    assert p.state == Health.UP
    events = p.poll(rtt=12_000)
    assert [e.new_state for e in events] == [Health.DEGRADED]
    assert "RTT 12000 us above 10000 us" in events[0].reason
    p.poll(rtt=9_000)  # below enter, above exit (8000): still degraded
    assert p.state == Health.DEGRADED
    p.poll(rtt=7_000)
    assert p.state == Health.UP


def test_rtt_metric_last() -> None:
    engine = HealthEngine(replace(CFG, rtt_metric="last"))
    engine.add("p", "s", now=0)
    engine.observe("p", Slot(rx_count=1, tx_count=1, rtt_last_us=20_000, rtt_ewma_us=1), 1)
    assert engine.state("p") == Health.DEGRADED


def test_loss_ratio_over_window(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    for _ in range(5):
        p.poll(sent=10, answered=10)
    assert p.state == Health.UP
    assert engine.health("p1").loss_ratio == 0.0
    # 5 of 10 answered per poll: 50 % loss; miss_count stays 0 since some answers arrive
    events: list = []
    for _ in range(3):  # window of 5 polls: 15 lost of 50 is not above 30 %
        events += p.poll(sent=10, answered=5)
    assert events == []
    events += p.poll(sent=10, answered=5)
    assert [e.new_state for e in events] == [Health.DEGRADED]
    assert "loss 40% above 30%" in events[0].reason
    assert engine.health("p1").loss_ratio == pytest.approx(20 / 50)
    for _ in range(5):
        p.poll(sent=10, answered=10)
    assert p.state == Health.UP


def test_peer_reported_status(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    events = p.poll(status=PeerStatus.DRAINING)
    assert [e.new_state for e in events] == [Health.DEGRADED]
    assert events[0].reason == "peer reports DRAINING"
    p.poll(status=PeerStatus.DEGRADED)
    assert p.state == Health.DEGRADED
    p.poll(status=PeerStatus.HEALTHY)
    assert p.state == Health.UP


def test_flap_damping_holds_degraded_until_stable(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    states = []
    for _ in range(2):  # UP->DOWN->UP->DOWN: the 4th change damps
        for _ in range(4):
            p.poll(answered=0)
        states.append(p.state)
        p.poll()
        states.append(p.state)
    assert states[:3] == [Health.DOWN, Health.UP, Health.DOWN]
    assert states[3] == Health.DEGRADED
    assert engine.damped("p1")
    assert "flapping" in engine.health("p1").reason
    # still flapping: stays DEGRADED, no events for the raw changes
    for _ in range(4):
        assert p.poll(answered=0) == [] or p.state == Health.DEGRADED
    assert p.state == Health.DEGRADED
    # stable alive for the hold-down time: released to UP
    events: list = []
    for _ in range(7):
        events += p.poll()
    assert [e.new_state for e in events] == [Health.UP]
    assert not engine.damped("p1")


def test_damped_peer_that_stays_dead_is_released_to_down(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    for _ in range(2):
        for _ in range(4):
            p.poll(answered=0)
        p.poll()
    for _ in range(4):
        p.poll(answered=0)
    assert p.state == Health.DEGRADED
    events = engine.tick(p.now + CFG.hold_down_s)
    assert [e.new_state for e in events] == [Health.DOWN]


def test_digests_update_between_polls(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    events = engine.plane_event("p1", PlaneState.DOWN, now=p.now, last_seq=7, time_us=5_000_000)
    assert [e.new_state for e in events] == [Health.DOWN]
    assert events[0].details["source"] == "digest"
    # a poll without fresh evidence keeps DOWN
    s = p.slot
    assert engine.observe("p1", s, p.now + 0.1) == []
    assert p.state == Health.DOWN
    events = engine.plane_event("p1", PlaneState.UP, now=p.now + 0.2, time_us=9_000_000)
    assert [e.new_state for e in events] == [Health.UP]
    # a stale poll (read before that response) does not undo the UP
    stale = replace(s, miss_count=9, state=PlaneState.DOWN, last_rx_us=1)
    assert engine.observe("p1", stale, p.now + 0.3) == []
    assert p.state == Health.UP
    # a DOWN older than the UP is ignored
    assert engine.plane_event("p1", PlaneState.DOWN, now=p.now, time_us=8_000_000) == []


def test_recovery_by_digest_does_not_count_the_outage_as_loss(engine: HealthEngine) -> None:
    p = Peer(engine)
    for _ in range(5):
        p.poll()
    for _ in range(4):
        p.poll(answered=0)
    assert p.state == Health.DOWN
    # still silent for 3 more requests after that poll; then an answer, announced by digest
    p.slot = replace(p.slot, tx_count=p.slot.tx_count + 3, miss_count=p.slot.miss_count + 3)
    events = engine.plane_event("p1", PlaneState.UP, now=p.now, time_us=int(p.now * 1e6))
    assert [e.new_state for e in events] == [Health.UP]
    # the next poll's deltas still span the end of the outage: not loss of a live peer
    assert p.poll() == [] and p.state == Health.UP
    assert engine.health("p1").loss_ratio == 0.0
    for _ in range(4):
        assert p.poll() == []
    # loss after the recovery still counts
    for answered in (0, 1, 0, 1):
        p.poll(answered=answered)
    assert p.state == Health.DEGRADED


def test_admin_down_overrides_and_resumes(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll()
    events = engine.set_admin_down("p1", True, p.now)
    assert [(e.old_state, e.new_state) for e in events] == [(Health.UP, Health.ADMIN_DOWN)]
    p.poll(answered=0)
    assert engine.plane_event("p1", PlaneState.DOWN, now=p.now) == []
    assert p.state == Health.ADMIN_DOWN
    events = engine.set_admin_down("p1", False, p.now)
    assert [e.new_state for e in events] == [Health.UNKNOWN]
    p.poll()
    assert p.state == Health.UP
    engine.add("p3", "s", now=0, admin_down=True)
    assert engine.state("p3") == Health.ADMIN_DOWN


def test_first_poll_after_controller_restart_uses_slot_state(engine: HealthEngine) -> None:
    engine.add("alive", "s", now=0)
    engine.add("dead", "s", now=0)
    engine.observe("alive", Slot(rx_count=50, tx_count=50, state=PlaneState.UP), 1)
    engine.observe("dead", Slot(rx_count=50, tx_count=60, miss_count=10,
                                state=PlaneState.DOWN), 1)
    assert engine.state("alive") == Health.UP
    assert engine.state("dead") == Health.DOWN


def test_counter_delta_wrap_and_reset() -> None:
    assert counter_delta(10, 4) == 6
    assert counter_delta(5, 0xFFFFFFFE) == 7
    assert counter_delta(3, 1000) == 3  # slot reset


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        HealthConfig(loss_recover=0.5, loss_degraded=0.2).validate()
    assert info.value.field == "loss_recover"
    with pytest.raises(ValidationError) as info:
        HealthEngine(HealthConfig(detect_mult=0))
    assert info.value.field == "detect_mult"


def test_health_snapshot(engine: HealthEngine) -> None:
    p = Peer(engine)
    p.poll(rtt=300)
    h = engine.health("p1")
    assert (h.name, h.switch, h.state, h.rtt_avg_us) == ("p1", "s1", Health.UP, 300)
    assert h.sampled_at == p.now
    with pytest.raises(ValueError):
        engine.add("p1", "s1", now=0)
    engine.remove("p1")
    assert "p1" not in engine
