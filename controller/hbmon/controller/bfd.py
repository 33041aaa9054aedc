"""The BFD session in the controller: RFC 5880 section 6.8 for one session, pure logic.

The data plane records every control packet in the session's slot and sends ours from the
fan-out; it tells the controller only when something changed (a `bfd_event_t` digest: the
remote's state, diag, timers or discriminator moved, a Final arrived, the slot was not UP) or
when the detection time passed (a `peer_event_t` DOWN on the slot). `BfdSession` turns those
into the session state (section 6.8.6), the negotiated intervals (sections 6.8.2-6.8.4) and the
Poll Sequence (section 6.5, 6.8.3), and says what the session's `bfd_requests` entry must hold
(`control()`): the driver writes that entry only when it changed, so steady Up/Up traffic costs
user space nothing.

What the data plane does on its own (docs/bfd.md): the receive checks of section 6.8.6 that
discard a packet, answering a Poll with F on the next packet, the transmit jitter of section
6.8.7, and detecting expiry. Not implemented: Demand mode, the Echo function, authentication
(packets with A are discarded as malformed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hbmon.bfd_packet import SLOW_TX_US, Diag, Flag, State

# A remote that asks for no packets at all (Required Min RX Interval 0, section 6.8.3) gets
# none after the first: the longest interval the 32-bit entry can hold (about 71 minutes).
NO_TRANSMIT_US = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class BfdTimers:
    """The operator's wish for one session (microseconds)."""

    desired_min_tx_us: int = 300_000
    required_min_rx_us: int = 300_000
    detect_mult: int = 3

    def validate(self) -> None:
        from hbmon.protocol import ValidationError

        if not 1_000 <= self.desired_min_tx_us <= 60_000_000:
            raise ValidationError("desired_min_tx_ms", "must be 1 .. 60000")
        if not 0 <= self.required_min_rx_us <= 60_000_000:
            raise ValidationError("required_min_rx_ms", "must be 0 .. 60000")
        if not 1 <= self.detect_mult <= 255:
            raise ValidationError("detect_mult", "must be 1 .. 255")


@dataclass(frozen=True, slots=True)
class RemoteView:
    """What the remote last said: one `bfd_event_t` digest (docs/bfd.md)."""

    state: State
    diag: int
    flags: int
    detect_mult: int
    my_disc: int
    desired_min_tx_us: int
    required_min_rx_us: int
    time_us: int = 0


@dataclass(frozen=True, slots=True)
class Control:
    """What the session's `HbEgress.bfd_requests` entry holds besides addresses: the
    `bfd_control` action's parameters of the same names."""

    state: int
    diag: int
    flags: int
    detect_mult: int
    desired_min_tx_us: int
    required_min_rx_us: int
    tx_interval_us: int
    detect_time_us: int


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    diag: Diag
    cause: str  # "remote" (a control packet), "detect" (detection time), "admin"


class BfdSession:
    """One session's state (section 6.8.1 variables) and the rules that move it."""

    def __init__(self, timers: BfdTimers, admin_down: bool = False) -> None:
        self.timers = timers
        self.state = State.ADMIN_DOWN if admin_down else State.DOWN
        self.diag = Diag.ADMINISTRATIVELY_DOWN if admin_down else Diag.NONE
        self.remote: RemoteView | None = None
        self.poll = False  # a Poll Sequence is in progress: P in what we send
        # bfd.DesiredMinTxInterval / bfd.RequiredMinRxInterval as advertised ...
        self._adv_tx = max(timers.desired_min_tx_us, SLOW_TX_US)
        self._adv_rx = timers.required_min_rx_us
        # ... and as in effect, which lags the advertised value during a Poll Sequence where
        # section 6.8.3 says so (a slower TX, a shorter RX wait only after the Final)
        self._eff_tx = self._adv_tx
        self._eff_rx = self._adv_rx
        self._transitions: list[Transition] = []

    # ---- inputs ----

    def on_remote(self, view: RemoteView) -> bool:
        """A `bfd_event_t`: the remote's packet that changed something (section 6.8.6, after
        the discard checks the data plane made). True when `control()` changed."""
        before = self.control()
        self.remote = view
        if view.flags & Flag.F and self.poll:
            self.poll = False  # the Poll Sequence ends: what was advertised now applies
            self._eff_tx, self._eff_rx = self._adv_tx, self._adv_rx
        if self.state != State.ADMIN_DOWN:
            if view.state == State.ADMIN_DOWN:
                if self.state != State.DOWN:
                    self._move(State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, "remote")
            elif self.state == State.DOWN:
                if view.state == State.DOWN:
                    self._move(State.INIT, Diag.NONE, "remote")
                elif view.state == State.INIT:
                    self._move(State.UP, Diag.NONE, "remote")
            elif self.state == State.INIT:
                if view.state in (State.INIT, State.UP):
                    self._move(State.UP, Diag.NONE, "remote")
            elif view.state == State.DOWN:  # Up
                self._move(State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, "remote")
        return self.control() != before

    def on_detect_expired(self) -> bool:
        """The data plane found the detection time passed (section 6.8.4): Init or Up goes
        Down with diag 1; Down and AdminDown stay."""
        before = self.control()
        if self.state in (State.INIT, State.UP):
            self._move(State.DOWN, Diag.DETECTION_TIME_EXPIRED, "detect")
        if self.remote is not None:
            # section 6.8.1: bfd.RemoteDiscr is zeroed when a detection time passes (the
            # data plane zeroed bfd_remote_disc with the same DOWN)
            self.remote = replace(self.remote, my_disc=0)
        return self.control() != before

    def set_admin_down(self, down: bool) -> bool:
        """Section 6.8.16: AdminDown (diag 7) is sent to the remote, which goes Down; leaving
        it starts again from Down."""
        before = self.control()
        if down and self.state != State.ADMIN_DOWN:
            self._move(State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN, "admin")
        elif not down and self.state == State.ADMIN_DOWN:
            self._move(State.DOWN, Diag.NONE, "admin")
        return self.control() != before

    def set_timers(self, timers: BfdTimers) -> bool:
        """New operator timers; while Up a change of the advertised intervals runs a Poll
        Sequence (section 6.8.3)."""
        before = self.control()
        self.timers = timers
        self._advertise()
        return self.control() != before

    # ---- outputs ----

    def control(self) -> Control:
        """The `bfd_control` parameters for the session as it stands (sections 6.8.2, 6.8.4,
        6.8.7)."""
        remote = self.remote
        if remote is None:
            tx = self._eff_tx
            detect = 0  # nothing heard: nothing to detect
        else:
            tx = (max(self._eff_tx, remote.required_min_rx_us)
                  if remote.required_min_rx_us else NO_TRANSMIT_US)
            detect = remote.detect_mult * max(self._eff_rx, remote.desired_min_tx_us)
        return Control(
            state=int(self.state), diag=int(self.diag),
            flags=int(Flag.P) if self.poll else 0,
            detect_mult=self.timers.detect_mult,
            desired_min_tx_us=self._adv_tx, required_min_rx_us=self._adv_rx,
            tx_interval_us=min(tx, NO_TRANSMIT_US), detect_time_us=min(detect, 0xFFFFFFFF),
        )

    def transitions(self) -> list[Transition]:
        """The state changes since the last call (drained)."""
        out, self._transitions = self._transitions, []
        return out

    # ---- internals ----

    def _move(self, new: State, diag: Diag, cause: str) -> None:
        self._transitions.append(Transition(self.state, new, diag, cause))
        self.state, self.diag = new, diag
        self._advertise()

    def _advertise(self) -> None:
        """Section 6.8.3: at least one second between packets while not Up; while Up, a
        change of what we advertise is announced by a Poll Sequence, and a slower TX or a
        shorter RX wait takes effect only when it ends."""
        tx = self.timers.desired_min_tx_us
        if self.state != State.UP:
            tx = max(tx, SLOW_TX_US)
        rx = self.timers.required_min_rx_us
        if (tx, rx) == (self._adv_tx, self._adv_rx):
            return
        self._adv_tx, self._adv_rx = tx, rx
        if self.state == State.UP and self.remote is not None:
            self.poll = True
            self._eff_tx = min(self._eff_tx, tx)  # sending faster is safe at once
            self._eff_rx = max(self._eff_rx, rx)  # waiting longer is safe at once
        else:
            self.poll = False
            self._eff_tx, self._eff_rx = tx, rx
