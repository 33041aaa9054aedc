"""Frozen copy of the per-peer health engine as it was before the batch path (commit 036ec29).

The reference behaviour for tests/controller/test_health_batch.py: the batch engine
in hbmon.controller.health must give the same events and the same PeerHealth for the same
inputs. Do not "fix" this copy; a deliberate rule change goes into both, with a test of its
own.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from hbmon.model import Event, EventKind, Health, PeerHealth, Slot, ValidationError
from hbmon.protocol import PeerStatus, PlaneState

_U32 = 1 << 32


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of the health engine (see docs: every enter threshold has an exit one)."""

    detect_mult: int = 3  # default; a peer may carry its own
    rtt_degraded_us: int = 50_000  # RTT above this: DEGRADED
    rtt_recover_us: int | None = None  # back below this to recover (default 80 % of enter)
    rtt_metric: str = "ewma"  # "ewma" (data plane's EWMA) or "last"
    loss_degraded: float = 0.2  # loss ratio over the window above this: DEGRADED
    loss_recover: float = 0.05  # back to this or below to recover
    loss_window: int = 10  # polls in the sliding loss window
    loss_min_requests: int = 5  # fewer requests in the window: no loss verdict
    flap_count: int = 4  # alive<->dead changes within flap_window_s that start damping
    flap_window_s: float = 30.0
    hold_down_s: float = 10.0  # damped until no change for this long

    def validate(self) -> None:
        if not 1 <= self.detect_mult <= 255:
            raise ValidationError("detect_mult", "must be 1 .. 255")
        if self.rtt_degraded_us <= 0:
            raise ValidationError("rtt_degraded_us", "must be > 0")
        if self.rtt_recover_us is not None and not 0 < self.rtt_recover_us <= self.rtt_degraded_us:
            raise ValidationError("rtt_recover_us", "must be > 0 and <= rtt_degraded_us")
        if self.rtt_metric not in ("ewma", "last"):
            raise ValidationError("rtt_metric", "must be 'ewma' or 'last'")
        if not 0.0 < self.loss_degraded <= 1.0:
            raise ValidationError("loss_degraded", "must be in (0, 1]")
        if not 0.0 <= self.loss_recover <= self.loss_degraded:
            raise ValidationError("loss_recover", "must be in [0, loss_degraded]")
        if self.loss_window < 1:
            raise ValidationError("loss_window", "must be >= 1")
        if self.loss_min_requests < 1:
            raise ValidationError("loss_min_requests", "must be >= 1")
        if self.flap_count < 2:
            raise ValidationError("flap_count", "must be >= 2")
        if self.flap_window_s <= 0:
            raise ValidationError("flap_window_s", "must be > 0")
        if self.hold_down_s < 0:
            raise ValidationError("hold_down_s", "must be >= 0")

    @property
    def rtt_exit_us(self) -> int:
        if self.rtt_recover_us is not None:
            return self.rtt_recover_us
        return self.rtt_degraded_us * 4 // 5


def counter_delta(new: int, old: int) -> int:
    """Increase of a 32-bit counter; a decrease that is not a wrap is a reset (slot reuse,
    target restart) and counts from zero."""
    if new >= old:
        return new - old
    if old >= 0xF0000000 and new < 0x10000000:
        return new + _U32 - old
    return new


@dataclass(slots=True)
class _Tracker:
    name: str
    switch: str
    detect_mult: int
    admin_down: bool
    state: Health = Health.UNKNOWN
    since: float = 0.0
    reason: str = "added"
    alive: bool | None = None  # raw liveness; None = no evidence yet
    slot: Slot | None = None
    sampled_at: float = 0.0
    window: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    loss_ratio: float = 0.0
    slow: bool = False
    lossy: bool = False
    flaps: collections.deque[float] = field(default_factory=collections.deque)
    last_flip: float = 0.0
    damped: bool = False
    last_up_event_us: int = 0  # data-plane time of the newest UP digest (stale-read guard)
    last_down_event_us: int = 0  # ... of the DOWN digest applied since the last UP (0: none)
    # recovered by digest, between polls: the next fresh poll's deltas still span the end of
    # the outage, so that poll only sets the baseline of the loss window
    rebase: bool = False


class HealthEngine:
    """Per-peer health from polls and digests. Not thread-safe: one owner (the controller
    serialises calls per switch under its lock)."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self.config.validate()
        self._peers: dict[str, _Tracker] = {}

    # -- inventory --------------------------------------------------------------------------

    def add(self, name: str, switch: str, *, now: float, detect_mult: int | None = None,
            admin_down: bool = False) -> list[Event]:
        if name in self._peers:
            raise ValueError(f"peer {name!r} is already tracked")
        t = _Tracker(name, switch, detect_mult or self.config.detect_mult, admin_down,
                     since=now)
        self._peers[name] = t
        return self._evaluate(t, now, "admin down" if admin_down else "added")

    def remove(self, name: str) -> None:
        self._peers.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._peers

    def names(self) -> list[str]:
        return list(self._peers)

    def set_admin_down(self, name: str, admin_down: bool, now: float) -> list[Event]:
        t = self._peers[name]
        if t.admin_down == admin_down:
            return []
        t.admin_down = admin_down
        if not admin_down:
            # monitoring resumes from scratch: old evidence says nothing about now
            t.alive, t.window, t.flaps, t.damped = None, collections.deque(), \
                collections.deque(), False
            t.slow = t.lossy = False
            t.loss_ratio = 0.0
        return self._evaluate(t, now, "admin down" if admin_down else "admin up")

    def set_detect_mult(self, name: str, detect_mult: int | None) -> None:
        self._peers[name].detect_mult = detect_mult or self.config.detect_mult

    # -- inputs -----------------------------------------------------------------------------

    def observe(self, name: str, slot: Slot, now: float) -> list[Event]:
        """One poll's read of the peer's slot."""
        t = self._peers[name]
        cfg = self.config
        prev = t.slot
        t.slot, t.sampled_at = slot, now
        if t.admin_down:
            return self._evaluate(t, now, "admin down")
        if prev is None:
            rx_delta = slot.rx_count
            tx_delta = 0  # no baseline: the window starts with the next poll
        else:
            rx_delta = counter_delta(slot.rx_count, prev.rx_count)
            tx_delta = counter_delta(slot.tx_count, prev.tx_count)
        stale = slot.last_rx_us < t.last_up_event_us  # read taken before a newer UP digest
        if prev is not None and not t.rebase:
            t.window.append((tx_delta, rx_delta))
            while len(t.window) > cfg.loss_window:
                t.window.popleft()
        if not stale:
            t.rebase = False
        tx_sum = sum(w[0] for w in t.window)
        rx_sum = sum(w[1] for w in t.window)
        if tx_sum >= cfg.loss_min_requests:
            t.loss_ratio = max(0, tx_sum - rx_sum) / tx_sum
        else:
            t.loss_ratio = 0.0

        reason = ""
        if slot.miss_count > t.detect_mult and not stale:
            t_alive: bool | None
            t_alive, reason = False, (
                f"{slot.miss_count - 1} consecutive requests unanswered "
                f"(detect multiplier {t.detect_mult})")
        elif slot.state == PlaneState.DOWN and rx_delta == 0 and not stale:
            t_alive, reason = False, "data plane reports DOWN"
        elif rx_delta > 0 and slot.miss_count <= t.detect_mult \
                and (not t.last_down_event_us  # answers older than a DOWN digest: none
                     or slot.last_rx_us > t.last_down_event_us):
            t_alive, reason = True, "responses received"
        else:
            t_alive = t.alive  # no fresh evidence either way
        self._set_alive(t, t_alive, now)

        rtt = slot.rtt_ewma_us if cfg.rtt_metric == "ewma" else slot.rtt_last_us
        if t.slow:
            t.slow = rtt >= cfg.rtt_exit_us
        else:
            t.slow = rtt > cfg.rtt_degraded_us
        if t.lossy:
            t.lossy = t.loss_ratio > cfg.loss_recover
        else:
            t.lossy = t.loss_ratio > cfg.loss_degraded
        details = {"source": "poll", "rx_delta": rx_delta, "tx_delta": tx_delta,
                   "miss_count": slot.miss_count, "rtt_us": rtt,
                   "loss_ratio": round(t.loss_ratio, 4)}
        return self._evaluate(t, now, reason, details)

    def plane_event(self, name: str, state: int, *, now: float, last_seq: int = 0,
                    time_us: int = 0) -> list[Event]:
        """A data-plane notification (`peer_event_t`): UP or DOWN decided between polls."""
        t = self._peers[name]
        if t.admin_down:
            return []
        details: dict[str, Any] = {"source": "digest", "last_seq": last_seq,
                                   "time_us": time_us}
        if state == PlaneState.UP:
            t.last_up_event_us = max(t.last_up_event_us, time_us)
            t.last_down_event_us = 0
            why = "data plane: first response" if t.alive is None \
                else "data plane: response after silence"
            if not t.alive:
                t.rebase = True
            self._set_alive(t, True, now)
            return self._evaluate(t, now, why, details)
        if state == PlaneState.DOWN:
            if time_us and time_us < t.last_up_event_us:
                return []  # older than an UP we already applied (digests may reorder)
            t.last_down_event_us = max(t.last_down_event_us, time_us)
            self._set_alive(t, False, now)
            return self._evaluate(
                t, now, f"data plane: {t.detect_mult} intervals without a response", details)
        return []

    def tick(self, now: float) -> list[Event]:
        """Release flap damping whose hold-down has passed (call periodically)."""
        events: list[Event] = []
        for t in self._peers.values():
            if t.damped and now - t.last_flip >= self.config.hold_down_s:
                events.extend(self._evaluate(t, now, "stable for the hold-down time"))
        return events

    # -- outputs ----------------------------------------------------------------------------

    def health(self, name: str) -> PeerHealth:
        t = self._peers[name]
        slot = t.slot or Slot()
        return PeerHealth(
            name=t.name, switch=t.switch, state=t.state, since=t.since, reason=t.reason,
            slot=slot, loss_ratio=t.loss_ratio, rtt_avg_us=slot.rtt_ewma_us,
            sampled_at=t.sampled_at,
        )

    def state(self, name: str) -> Health:
        return self._peers[name].state

    def damped(self, name: str) -> bool:
        return self._peers[name].damped

    # -- internals --------------------------------------------------------------------------

    def _set_alive(self, t: _Tracker, alive: bool | None, now: float) -> None:
        if alive is None or alive == t.alive:
            return
        if t.alive is not None:  # a flip, not the first verdict
            t.flaps.append(now)
            t.last_flip = now
        if alive:
            # the silence before a recovery is an outage, not loss of a live peer
            t.window.clear()
            t.loss_ratio = 0.0
            t.lossy = False
        t.alive = alive
        cfg = self.config
        while t.flaps and now - t.flaps[0] > cfg.flap_window_s:
            t.flaps.popleft()
        if len(t.flaps) >= cfg.flap_count:
            t.damped = True

    def _verdict(self, t: _Tracker, now: float, why: str) -> tuple[Health, str]:
        cfg = self.config
        if t.admin_down:
            return Health.ADMIN_DOWN, "admin down"
        if t.damped:
            if now - t.last_flip >= cfg.hold_down_s:
                t.damped = False
                t.flaps.clear()
            else:
                return Health.DEGRADED, (
                    f"flapping: {len(t.flaps)} changes within {cfg.flap_window_s:g}s, held "
                    f"until stable for {cfg.hold_down_s:g}s")
        if t.alive is None:
            return Health.UNKNOWN, why or "no response yet"
        if not t.alive:
            return Health.DOWN, why or "no responses"
        reasons: list[str] = []
        slot = t.slot
        if slot is not None and slot.rx_count and slot.peer_status in (
                PeerStatus.DEGRADED, PeerStatus.DRAINING):
            reasons.append(f"peer reports {PeerStatus(slot.peer_status).name}")
        if t.slow and slot is not None:
            rtt = slot.rtt_ewma_us if cfg.rtt_metric == "ewma" else slot.rtt_last_us
            reasons.append(f"RTT {rtt} us above {cfg.rtt_degraded_us} us")
        if t.lossy:
            reasons.append(f"loss {t.loss_ratio:.0%} above {cfg.loss_degraded:.0%}")
        if reasons:
            return Health.DEGRADED, "; ".join(reasons)
        return Health.UP, why or "healthy"

    def _evaluate(self, t: _Tracker, now: float, why: str,
                  details: dict[str, Any] | None = None) -> list[Event]:
        new, reason = self._verdict(t, now, why)
        if new == t.state:
            return []
        old, old_since = t.state, t.since
        t.state, t.since, t.reason = new, now, reason
        info = dict(details or {})
        info["previous_since"] = old_since
        if t.damped:
            info["damped"] = True
        return [Event(kind=EventKind.TRANSITION, time=now, peer=t.name, switch=t.switch,
                      old_state=old, new_state=new, reason=reason, details=info)]
