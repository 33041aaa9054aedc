"""BfdSession against RFC 5880 section 6.8: pure logic, so no target is involved (the driver
tests and the FRR interop lab run it on real parts).

The remote is described the way the data plane reports it (a `bfd_event_t` per packet that
changed something); `exchange()` lets two sessions talk through real encoded control packets,
so the handshake is checked against the wire format too.
"""

from __future__ import annotations

import itertools

import pytest
from hbmon.bfd_packet import SLOW_TX_US, ControlPacket, Diag, Flag, State, classify
from hbmon.controller.bfd import NO_TRANSMIT_US, BfdSession, BfdTimers, RemoteView

FAST = BfdTimers(desired_min_tx_us=50_000, required_min_rx_us=50_000, detect_mult=3)


def view(state: State, *, flags: int = 0, mult: int = 3, disc: int = 0x77,
         tx: int = SLOW_TX_US, rx: int = SLOW_TX_US, diag: int = 0) -> RemoteView:
    return RemoteView(state, diag, flags, mult, disc, tx, rx)


# ---- section 6.8.6: the state table (received state x local state) ----

# (local before, received) -> local after, diag after; AdminDown discards everything.
TABLE = {
    (State.DOWN, State.ADMIN_DOWN): (State.DOWN, Diag.NONE),
    (State.DOWN, State.DOWN): (State.INIT, Diag.NONE),
    (State.DOWN, State.INIT): (State.UP, Diag.NONE),
    (State.DOWN, State.UP): (State.DOWN, Diag.NONE),
    (State.INIT, State.ADMIN_DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN),
    (State.INIT, State.DOWN): (State.INIT, Diag.NONE),
    (State.INIT, State.INIT): (State.UP, Diag.NONE),
    (State.INIT, State.UP): (State.UP, Diag.NONE),
    (State.UP, State.ADMIN_DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN),
    (State.UP, State.DOWN): (State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN),
    (State.UP, State.INIT): (State.UP, Diag.NONE),
    (State.UP, State.UP): (State.UP, Diag.NONE),
}


def session_in(state: State) -> BfdSession:
    s = BfdSession(FAST)
    if state in (State.INIT, State.UP):
        s.on_remote(view(State.DOWN))
    if state == State.UP:
        s.on_remote(view(State.UP, disc=0x77))
    assert s.state == state
    s.transitions()
    return s


@pytest.mark.parametrize(("local", "received"), sorted(TABLE, key=lambda k: (k[0], k[1])))
def test_state_table(local: State, received: State) -> None:
    s = session_in(local)
    s.on_remote(view(received))
    assert (s.state, s.diag) == TABLE[(local, received)]
    moved = s.transitions()
    assert [(t.old, t.new) for t in moved] == (
        [] if s.state == local else [(local, s.state)])


def test_admin_down_ignores_the_remote_and_tells_it() -> None:
    s = session_in(State.UP)
    assert s.set_admin_down(True)
    assert (s.state, s.diag) == (State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN)
    for received in State:
        assert not s.on_remote(view(received)) or s.state == State.ADMIN_DOWN
        assert s.state == State.ADMIN_DOWN
    c = s.control()
    assert (c.state, c.diag) == (State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN)
    assert c.desired_min_tx_us >= SLOW_TX_US  # section 6.8.3: not Up, not faster than 1 s
    assert s.set_admin_down(False)
    assert (s.state, s.diag) == (State.DOWN, Diag.NONE)


def test_detection_time_expiry() -> None:
    for state, after, diag in ((State.UP, State.DOWN, Diag.DETECTION_TIME_EXPIRED),
                               (State.INIT, State.DOWN, Diag.DETECTION_TIME_EXPIRED),
                               (State.DOWN, State.DOWN, Diag.NONE)):
        s = session_in(state)
        changed = s.on_detect_expired()
        assert (s.state, s.diag) == (after, diag)
        assert changed == (state != after)
        # section 6.8.1: bfd.RemoteDiscr is zeroed; the remote's timers are kept
        assert s.remote is None or (s.remote.my_disc == 0 and s.remote.detect_mult == 3)


# ---- sections 6.8.2-6.8.4: timers ----

def test_slow_until_up_then_poll_to_fast() -> None:
    s = BfdSession(FAST)
    c = s.control()
    assert c.desired_min_tx_us == SLOW_TX_US and c.tx_interval_us == SLOW_TX_US
    assert c.detect_time_us == 0 and c.flags == 0  # nothing heard yet
    s.on_remote(view(State.DOWN))
    s.on_remote(view(State.UP, tx=SLOW_TX_US, rx=10_000))
    assert s.state == State.UP
    c = s.control()
    # Up: the configured 50 ms is advertised with a Poll; sending faster applies at once
    assert c.desired_min_tx_us == 50_000 and c.flags == Flag.P
    assert c.tx_interval_us == 50_000
    assert c.detect_time_us == 3 * SLOW_TX_US  # the remote still sends every second
    # the remote answers the Poll with F and speeds up itself
    assert s.on_remote(view(State.UP, flags=Flag.F, tx=20_000, rx=10_000))
    c = s.control()
    assert c.flags == 0
    assert c.detect_time_us == 3 * max(50_000, 20_000)


def test_negotiation_takes_the_slower_side() -> None:
    s = session_in(State.UP)
    s.on_remote(view(State.UP, flags=Flag.F, tx=30_000, rx=200_000, mult=5))
    c = s.control()
    assert c.tx_interval_us == 200_000  # max(our 50 ms, their required 200 ms)
    assert c.detect_time_us == 5 * 50_000  # their mult x max(our rx 50 ms, their tx 30 ms)
    assert c.detect_mult == 3  # ours


def test_remote_wanting_no_packets() -> None:
    s = session_in(State.UP)
    s.on_remote(view(State.UP, flags=Flag.F, rx=0))
    assert s.control().tx_interval_us == NO_TRANSMIT_US


def test_slower_tx_waits_for_the_final() -> None:
    s = session_in(State.UP)
    s.on_remote(view(State.UP, flags=Flag.F, tx=50_000, rx=50_000))
    assert s.control().flags == 0
    assert s.set_timers(BfdTimers(500_000, 50_000, 3))
    c = s.control()
    assert c.flags == Flag.P and c.desired_min_tx_us == 500_000
    assert c.tx_interval_us == 50_000  # section 6.8.3: unchanged until the Poll ends
    s.on_remote(view(State.UP, flags=Flag.F, tx=50_000, rx=50_000))
    c = s.control()
    assert c.flags == 0 and c.tx_interval_us == 500_000


def test_shorter_rx_wait_waits_for_the_final() -> None:
    s = session_in(State.UP)
    s.on_remote(view(State.UP, flags=Flag.F, tx=10_000, rx=50_000))
    s.set_timers(BfdTimers(50_000, 400_000, 3))  # wait longer: applies at once
    assert s.control().detect_time_us == 3 * 400_000
    s.on_remote(view(State.UP, flags=Flag.F, tx=10_000, rx=50_000))
    s.set_timers(BfdTimers(50_000, 20_000, 3))  # wait less: only after the Final
    assert s.control().detect_time_us == 3 * 400_000
    s.on_remote(view(State.UP, flags=Flag.F, tx=10_000, rx=50_000))
    assert s.control().detect_time_us == 3 * 20_000


def test_steady_traffic_changes_nothing() -> None:
    s = session_in(State.UP)
    s.on_remote(view(State.UP, flags=Flag.F, tx=50_000, rx=50_000))
    for _ in range(5):
        assert not s.on_remote(view(State.UP, tx=50_000, rx=50_000))
    assert s.transitions() == []


def test_timers_validate_naming_the_field() -> None:
    from hbmon.protocol import ValidationError

    for timers, field_name in ((BfdTimers(0, 1000, 3), "desired_min_tx_ms"),
                               (BfdTimers(1000, -1, 3), "required_min_rx_ms"),
                               (BfdTimers(1000, 1000, 0), "detect_mult")):
        with pytest.raises(ValidationError) as err:
            timers.validate()
        assert err.value.field == field_name


# ---- two sessions over the wire format ----

def packet_of(s: BfdSession, my_disc: int, your_disc: int, final: bool) -> bytes:
    c = s.control()
    return ControlPacket(State(c.state), my_disc, your_disc, c.diag,
                         c.flags | (Flag.F if final else 0), c.detect_mult,
                         c.desired_min_tx_us, c.required_min_rx_us).pack()


class Link:
    """Two sessions sending to each other in turn, as their data planes would: the receiver
    keeps the sender's discriminator (bfd_remote_disc), answers a Poll with F on its next
    packet (bfd_final_due), and reports a packet to its session only when something changed
    (the digest rule of docs/bfd.md)."""

    def __init__(self, a: BfdSession, b: BfdSession) -> None:
        self.a, self.b = a, b
        self.disc = {id(a): 0x1001, id(b): 0x2002}
        self.learned = {id(a): 0, id(b): 0}
        self.last: dict[int, tuple[object, ...]] = {}
        self.final_due = {id(a): False, id(b): False}

    def exchange(self, rounds: int) -> None:
        pairs = itertools.cycle(((self.a, self.b), (self.b, self.a)))
        for sender, receiver in itertools.islice(pairs, rounds):
            wire = packet_of(sender, self.disc[id(sender)], self.learned[id(sender)],
                             self.final_due[id(sender)])
            self.final_due[id(sender)] = False
            pkt = classify(wire)
            self.learned[id(receiver)] = pkt.my_disc
            if pkt.flags & Flag.P:
                self.final_due[id(receiver)] = True
            seen = (pkt.state, pkt.diag, pkt.detect_mult, pkt.my_disc, pkt.desired_min_tx_us,
                    pkt.required_min_rx_us)
            if seen != self.last.get(id(receiver)) or pkt.flags & Flag.F:
                receiver.on_remote(RemoteView(pkt.state, pkt.diag, pkt.flags, pkt.detect_mult,
                                              pkt.my_disc, pkt.desired_min_tx_us,
                                              pkt.required_min_rx_us))
            self.last[id(receiver)] = seen


def test_two_sessions_come_up_and_settle_on_fast_timers() -> None:
    a, b = BfdSession(FAST), BfdSession(BfdTimers(100_000, 100_000, 4))
    link = Link(a, b)
    link.exchange(12)
    assert a.state == b.state == State.UP
    assert [t.new for t in a.transitions()] in ([State.INIT, State.UP], [State.UP])
    assert not a.poll and not b.poll  # both Poll Sequences ended with a Final
    ca, cb = a.control(), b.control()
    assert ca.tx_interval_us == cb.tx_interval_us == 100_000
    assert ca.detect_time_us == 4 * 100_000 and cb.detect_time_us == 3 * 100_000
    b.set_admin_down(True)
    link.exchange(2)
    assert (a.state, a.diag) == (State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN)
