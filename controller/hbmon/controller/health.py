"""The health engine: pure logic from slot reads and data-plane events to peer health.

No I/O and no clock of its own: callers pass `now` (wall-clock seconds), which makes every
rule unit-testable. Two kinds of input feed the same per-peer state machine:

- `observe_rows(rows, columns, now)`: one poll's read of the slots of many peers at once,
  one column per register in index order (what a poll of a switch returns). Deltas of
  `rx_count` / `tx_count` against the previous poll give fresh evidence of life and the
  loss ratio over a sliding window of polls; `observe(name, slot, now)` is a batch of one;
- `plane_event(name, state, ...)`: a `peer_event_t` digest (UP / DOWN decided by the data
  plane between polls).

Liveness ("raw": alive / dead / not yet known) comes from fresh responses and the data
plane's consecutive-miss counter against the detect multiplier. The reported state adds:
DEGRADED for slow (RTT), lossy (loss ratio), self-reported DEGRADED/DRAINING peers, each with
enter/exit hysteresis; flap damping (too many alive/dead changes within a window hold the
peer DEGRADED until it has been stable for the hold-down time); ADMIN_DOWN overrides all.
Every change of the reported state is returned as a `model.Event` (kind TRANSITION).

A peer added with `external=True` (a BFD session, whose state machine runs in
`hbmon.controller.bfd`) gets its verdict from `set_external`: polls still record its slot
(counts for the API) but never judge it, and the same transition events come out.

Cost: a poll of thousands of peers must cost about as much as a poll of one, so the
per-peer numbers (last read, loss window, hysteresis flags, raw liveness) live in numpy
arrays indexed by a row per peer, and `observe_rows` applies each rule to all rows at once.
Only peers whose verdict inputs (the `_inputs` bit set: admin, liveness, peer-reported
status, slow, lossy) differ from what their last verdict saw, or that are flap-damped (their
verdict depends on the clock), go through the per-peer Python verdict. In a steady state
that is none of them.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hbmon.config import HealthConfig
from hbmon.model import HEALTHS, SLOT_FIELDS, Event, EventKind, Health, PeerHealth, Slot
from hbmon.protocol import PeerStatus, PlaneState

_U32 = 1 << 32

# SLOT_FIELDS (hbmon.model): the rows of the engine's slot matrix.
_FIELD = {name: i for i, name in enumerate(SLOT_FIELDS)}
_RX, _TX, _MISS = _FIELD["rx_count"], _FIELD["tx_count"], _FIELD["miss_count"]
_LAST_RX, _STATUS, _STATE = _FIELD["last_rx_us"], _FIELD["peer_status"], _FIELD["state"]
_RTT = {"ewma": _FIELD["rtt_ewma_us"], "last": _FIELD["rtt_last_us"]}

# reported states by number (index in `model.HEALTHS`) in the engine's `_state` array
_HEALTH_INDEX = {h: i for i, h in enumerate(HEALTHS)}

# bits of a peer's verdict inputs (see `HealthEngine._inputs_of`)
_IN_ADMIN, _IN_ALIVE_SHIFT, _IN_STATUS, _IN_SLOW, _IN_LOSSY = 1, 1, 8, 16, 32


_Ints = npt.NDArray[np.int64]


def _deltas(new: _Ints, old: _Ints) -> _Ints:
    wrapped = (old >= 0xF0000000) & (new < 0x10000000)
    return np.where(new >= old, new - old, np.where(wrapped, new + _U32 - old, new))


def counter_delta(new: int, old: int) -> int:
    """Increase of a 32-bit counter; a decrease that is not a wrap is a reset (slot reuse,
    target restart) and counts from zero."""
    return int(_deltas(np.array([new], np.int64), np.array([old], np.int64))[0])


@dataclass(slots=True, eq=False)
class _Tracker:
    """What stays per peer in Python: the reported state and the flap history. The numbers
    behind the verdict are in the engine's arrays at `row`."""

    name: str
    switch: str
    row: int
    order: int  # when added: events of one call come in this order
    state: Health = Health.UNKNOWN
    since: float = 0.0
    reason: str = "added"
    flaps: collections.deque[float] = field(default_factory=collections.deque)
    last_flip: float = 0.0
    # an external verdict (state, reason) for peers judged elsewhere (BFD); None: ours
    external: tuple[Health, str] | None = None


class HealthEngine:
    """Per-peer health from polls and digests. Not thread-safe: one owner (the controller
    serialises calls per switch under its lock)."""

    # per-row arrays: name -> (dtype, per window position?)
    _ARRAYS: dict[str, Any] = {
        "_has_slot": np.bool_, "_sampled_at": np.float64, "_win_pos": np.int64,
        "_win_tx_sum": np.int64, "_win_rx_sum": np.int64, "_loss": np.float64,
        "_slow": np.bool_, "_lossy": np.bool_, "_rebase": np.bool_, "_admin": np.bool_,
        "_damped": np.bool_, "_alive": np.int8, "_mult": np.int64, "_up_us": np.uint64,
        "_down_us": np.uint64,
        "_inputs": np.int16, "_answering": np.bool_, "_state": np.int8, "_since": np.float64,
        "_external": np.bool_,
    }

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self.config.validate()
        self._peers: dict[str, _Tracker] = {}
        self._by_row: list[_Tracker | None] = []
        self._free: list[int] = []
        self._damped_peers: dict[str, _Tracker] = {}
        self._added = 0
        self._cap = 0
        self._rtt_field = _RTT[self.config.rtt_metric]
        # the newest read of every slot field (rows of SLOT_FIELDS x peer rows)
        self._slots = np.zeros((len(SLOT_FIELDS), 0), np.uint64)
        # loss window: the (tx, rx) deltas of the last loss_window polls, a ring per peer;
        # sums kept alongside so a poll costs O(peers), not O(peers x window)
        self._win_tx = np.zeros((self.config.loss_window, 0), np.int64)
        self._win_rx = np.zeros((self.config.loss_window, 0), np.int64)
        self._has_slot = np.zeros(0, np.bool_)  # slot read since add
        self._sampled_at = np.zeros(0, np.float64)
        self._win_pos = np.zeros(0, np.int64)
        self._win_tx_sum = np.zeros(0, np.int64)
        self._win_rx_sum = np.zeros(0, np.int64)
        self._loss = np.zeros(0, np.float64)
        self._slow = np.zeros(0, np.bool_)
        self._lossy = np.zeros(0, np.bool_)
        # recovered by digest, between polls: the next fresh poll's deltas still span the
        # end of the outage, so that poll only sets the baseline of the loss window
        self._rebase = np.zeros(0, np.bool_)
        self._admin = np.zeros(0, np.bool_)
        self._damped = np.zeros(0, np.bool_)
        self._alive = np.zeros(0, np.int8)  # raw liveness: -1 no evidence yet, 0 dead, 1 alive
        self._mult = np.zeros(0, np.int64)
        self._up_us = np.zeros(0, np.uint64)  # data-plane time of the newest UP digest
        # ... and of the DOWN digest applied since the last UP one (0: none)
        self._down_us = np.zeros(0, np.uint64)
        self._inputs = np.zeros(0, np.int16)  # verdict inputs as of the last verdict
        self._answering = np.zeros(0, np.bool_)  # reported state UP or DEGRADED
        self._state = np.zeros(0, np.int8)  # reported state (index in HEALTHS), for exports
        self._since = np.zeros(0, np.float64)  # ... and since when
        self._external = np.zeros(0, np.bool_)  # judged by `set_external` (BFD sessions)
        self._grow(64)

    def _grow(self, cap: int) -> None:
        extra = cap - self._cap
        self._slots = np.concatenate(
            [self._slots, np.zeros((len(SLOT_FIELDS), extra), np.uint64)], axis=1)
        for ring in ("_win_tx", "_win_rx"):
            old = getattr(self, ring)
            setattr(self, ring, np.concatenate(
                [old, np.zeros((old.shape[0], extra), np.int64)], axis=1))
        for name, dtype in self._ARRAYS.items():
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype)]))
        self._by_row.extend([None] * extra)
        self._free.extend(range(cap - 1, self._cap - 1, -1))  # lowest row first
        self._cap = cap

    # -- inventory --------------------------------------------------------------------------

    def add(self, name: str, switch: str, *, now: float, detect_mult: int | None = None,
            admin_down: bool = False, external: bool = False) -> list[Event]:
        if name in self._peers:
            raise ValueError(f"peer {name!r} is already tracked")
        if not self._free:
            self._grow(self._cap * 2)
        row = self._free.pop()
        self._slots[:, row] = 0
        self._win_tx[:, row] = 0
        self._win_rx[:, row] = 0
        for array in self._ARRAYS:
            getattr(self, array)[row] = 0
        self._alive[row] = -1
        self._inputs[row] = -1  # no verdict yet
        self._mult[row] = detect_mult or self.config.detect_mult
        self._admin[row] = admin_down
        self._since[row] = now
        t = _Tracker(name, switch, row, self._added, since=now)
        if external:
            self._external[row] = True
            t.external = (Health.UNKNOWN, "no control packet yet")
        self._added += 1
        self._peers[name] = t
        self._by_row[row] = t
        return self._evaluate(t, now, "admin down" if admin_down else "added")

    def remove(self, name: str) -> None:
        t = self._peers.pop(name, None)
        if t is not None:
            self._damped_peers.pop(name, None)
            self._by_row[t.row] = None
            self._free.append(t.row)

    def new_target_clock(self, switch: str) -> None:
        """The switch's target started afresh (its pipeline had to be pushed): the data-plane
        times kept from its digests belong to the old process's clock (bmv2 counts from its
        start), and kept, they would make every later read look older than a digest (no
        poll could judge the peer until the new clock passed them)."""
        for t in self._peers.values():
            if t.switch == switch:
                self._up_us[t.row] = 0
                self._down_us[t.row] = 0

    def __contains__(self, name: str) -> bool:
        return name in self._peers

    def names(self) -> list[str]:
        return list(self._peers)

    def rows(self, names: Sequence[str]) -> npt.NDArray[np.intp]:
        """The rows of `names` for `observe_rows` (valid until one of them is removed)."""
        peers = self._peers
        return np.fromiter((peers[n].row for n in names), np.intp, len(names))

    def set_admin_down(self, name: str, admin_down: bool, now: float) -> list[Event]:
        t = self._peers[name]
        row = t.row
        if bool(self._admin[row]) == admin_down:
            return []
        self._admin[row] = admin_down
        if not admin_down:
            # monitoring resumes from scratch: old evidence says nothing about now
            self._alive[row] = -1
            self._clear_window(row)
            t.flaps = collections.deque()
            self._set_damped(t, False)
            self._slow[row] = self._lossy[row] = False
            self._loss[row] = 0.0
        return self._evaluate(t, now, "admin down" if admin_down else "admin up")

    def set_external(self, name: str, state: Health, reason: str, now: float,
                     details: dict[str, Any] | None = None) -> list[Event]:
        """The verdict of a peer added with `external=True` (admin down still overrides
        it); a transition event if the reported state changes."""
        t = self._peers[name]
        t.external = (state, reason)
        return self._evaluate(t, now, reason, details)

    def set_detect_mult(self, name: str, detect_mult: int | None) -> None:
        self._mult[self._peers[name].row] = detect_mult or self.config.detect_mult

    # -- inputs -----------------------------------------------------------------------------

    def set_details(self, name: str, values: dict[str, int]) -> None:
        """A newer read of informational slot fields (`HealthConfig.detail_fields`) of one
        peer: shown in its health, no evidence for any verdict."""
        row = self._peers[name].row
        if not self._has_slot[row]:
            return  # not polled yet: the first poll reads every field
        for field_name, value in values.items():
            if field_name in self.config.verdict_fields:
                raise ValueError(f"{field_name} is a verdict field: only polls update it")
            self._slots[_FIELD[field_name], row] = value

    def observe(self, name: str, slot: Slot, now: float) -> list[Event]:
        """One poll's read of the peer's slot (a batch of one)."""
        column = np.array([[getattr(slot, f)] for f in SLOT_FIELDS], np.uint64)
        return self.observe_rows(np.array([self._peers[name].row], np.intp), column, now)

    def observe_rows(self, rows: npt.ArrayLike, columns: npt.ArrayLike, now: float,
                     fields: Sequence[str] = SLOT_FIELDS) -> list[Event]:
        """One poll's read of many peers: `columns[i][j]` is slot field `fields[i]` of the
        peer at `rows[j]` (see `rows`). Fields not in `fields` keep their previous read;
        `fields` must include `HealthConfig.verdict_fields`."""
        cfg = self.config
        rows = np.asarray(rows, np.intp)
        if rows.size == 0:
            return []
        slots = self._slots
        # a switch's peers usually hold consecutive rows: a slice then (a view) is several
        # times cheaper than gathering and scattering by index
        at: slice | npt.NDArray[np.intp] = rows
        first, n = int(rows[0]), int(rows.size)
        if int(rows[-1]) - first == n - 1 and (n == 1 or bool((np.diff(rows) == 1).all())):
            at = slice(first, first + n)
        prev_rx = slots[_RX, at].astype(np.int64)
        prev_tx = slots[_TX, at].astype(np.int64)
        had = self._has_slot[at].copy()  # a view when `at` is a slice
        if tuple(fields) == SLOT_FIELDS:
            slots[:, at] = columns
        else:
            for i, name in enumerate(fields):
                slots[_FIELD[name], at] = columns[i]  # type: ignore[index]
        self._has_slot[at] = True
        self._sampled_at[at] = now
        admin = self._admin[at]
        # an admin-down peer's read is kept, its evidence is not used; nor is an externally
        # judged one's (BFD: its counts are shown, its state is the session's)
        live = ~admin & ~self._external[at]

        rx = slots[_RX, at].astype(np.int64)
        tx = slots[_TX, at].astype(np.int64)
        miss = slots[_MISS, at].astype(np.int64)
        rx_delta = np.where(had, _deltas(rx, prev_rx), rx)
        tx_delta = np.where(had, _deltas(tx, prev_tx), 0)  # no baseline: window starts next
        stale = slots[_LAST_RX, at] < self._up_us[at]  # read before a newer UP digest
        rebase = self._rebase[at]
        append = live & had & ~rebase
        if append.all():
            self._window_append(at, rows, tx_delta, rx_delta)
        elif append.any():
            self._window_append(rows[append], rows[append], tx_delta[append], rx_delta[append])
        self._rebase[at] = rebase & (stale | admin)
        tx_sum = self._win_tx_sum[at]
        rx_sum = self._win_rx_sum[at]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(tx_sum >= cfg.loss_min_requests,
                             np.maximum(tx_sum - rx_sum, 0) / tx_sum, 0.0)
        self._loss[at] = np.where(live, ratio, self._loss[at])

        mult = self._mult[at]
        dead_miss = (miss > mult) & ~stale
        dead_plane = (slots[_STATE, at] == PlaneState.DOWN) & (rx_delta == 0) & ~stale
        # answers a read shows count only if one is newer than a DOWN digest applied since:
        # a poll's read can be older than a digest (a slow read; a digest between the read
        # and this call), and the answers it saw are the ones the DOWN came after
        down_us = self._down_us[at]
        answered = (rx_delta > 0) & (miss <= mult) & (
            (down_us == 0) | (slots[_LAST_RX, at] > down_us))
        # 1: misses beyond the multiplier, 2: the data plane says DOWN, 3: responses, 0: none
        why = np.select([dead_miss, dead_plane, answered], [1, 2, 3], 0)
        alive = np.select([dead_miss | dead_plane, answered], [0, 1], -1)
        flip = live & (alive >= 0) & (alive != self._alive[at])
        for j in np.flatnonzero(flip).tolist():
            t = self._by_row[rows[j]]
            assert t is not None
            self._set_alive(t, bool(alive[j]), now)

        rtt = slots[self._rtt_field, at].astype(np.int64)
        slow = self._slow[at]
        self._slow[at] = np.where(
            live, np.where(slow, rtt >= cfg.rtt_exit_us, rtt > cfg.rtt_degraded_us), slow)
        lossy, loss = self._lossy[at], self._loss[at]
        self._lossy[at] = np.where(
            live, np.where(lossy, loss > cfg.loss_recover, loss > cfg.loss_degraded), lossy)

        # the verdict is a function of these inputs (and of the clock while damped)
        inputs = self._inputs_of(at)
        changed = (inputs != self._inputs[at]) | self._damped[at]
        events: list[Event] = []
        for j in np.flatnonzero(changed).tolist():
            row = int(rows[j])
            t = self._by_row[row]
            assert t is not None
            if admin[j]:
                events.extend(self._evaluate(t, now, "admin down", None, int(inputs[j])))
                continue
            reason = ""
            if why[j] == 1:
                reason = (f"{int(miss[j]) - 1} consecutive requests unanswered "
                          f"(detect multiplier {int(mult[j])})")
            elif why[j] == 2:
                reason = "data plane reports DOWN"
            elif why[j] == 3:
                reason = "responses received"
            details = {"source": "poll", "rx_delta": int(rx_delta[j]),
                       "tx_delta": int(tx_delta[j]), "miss_count": int(miss[j]),
                       "rtt_us": int(rtt[j]), "loss_ratio": round(float(self._loss[row]), 4)}
            events.extend(self._evaluate(t, now, reason, details, int(inputs[j])))
        return events

    def plane_event(self, name: str, state: int, *, now: float, last_seq: int = 0,
                    time_us: int = 0) -> list[Event]:
        """A data-plane notification (`peer_event_t`): UP or DOWN decided between polls."""
        t = self._peers[name]
        row = t.row
        if self._admin[row] or t.external is not None:
            return []  # external: the data plane's UP/DOWN is the session's input
        details: dict[str, Any] = {"source": "digest", "last_seq": last_seq,
                                   "time_us": time_us}
        if state == PlaneState.UP:
            self._up_us[row] = max(int(self._up_us[row]), time_us)
            self._down_us[row] = 0  # alive again: polls judge from here (also a new clock)
            alive = int(self._alive[row])
            why = "data plane: first response" if alive < 0 \
                else "data plane: response after silence"
            if alive != 1:
                self._rebase[row] = True
            self._set_alive(t, True, now)
            return self._evaluate(t, now, why, details)
        if state == PlaneState.DOWN:
            if time_us and time_us < int(self._up_us[row]):
                return []  # older than an UP we already applied (digests may reorder)
            self._down_us[row] = max(int(self._down_us[row]), time_us)
            self._set_alive(t, False, now)
            return self._evaluate(
                t, now, f"data plane: {int(self._mult[row])} intervals without a response",
                details)
        return []

    def tick(self, now: float) -> list[Event]:
        """Release flap damping whose hold-down has passed (call periodically)."""
        events: list[Event] = []
        for t in sorted(self._damped_peers.values(), key=lambda t: t.order):
            if now - t.last_flip >= self.config.hold_down_s:
                events.extend(self._evaluate(t, now, "stable for the hold-down time"))
        return events

    # -- outputs ----------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        row = self._peers[name].row
        return Slot(*self._slots[:, row].tolist()) if self._has_slot[row] else Slot()

    def health(self, name: str) -> PeerHealth:
        t = self._peers[name]
        slot = self.slot(name)
        return PeerHealth(
            name=t.name, switch=t.switch, state=t.state, since=t.since, reason=t.reason,
            slot=slot, loss_ratio=float(self._loss[t.row]), rtt_avg_us=slot.rtt_ewma_us,
            sampled_at=float(self._sampled_at[t.row]),
        )

    def health_many(self, names: Sequence[str]) -> list[PeerHealth]:
        """`health` of each of `names`, with one array read for all of them."""
        peers = [self._peers[n] for n in names]
        rows = np.fromiter((t.row for t in peers), np.intp, len(peers))
        slots = np.where(self._has_slot[rows], self._slots[:, rows], 0).T.tolist()
        loss = self._loss[rows].tolist()
        sampled = self._sampled_at[rows].tolist()
        out = []
        for t, values, ratio, at in zip(peers, slots, loss, sampled, strict=True):
            slot = Slot(*values)
            out.append(PeerHealth(name=t.name, switch=t.switch, state=t.state, since=t.since,
                                  reason=t.reason, slot=slot, loss_ratio=ratio,
                                  rtt_avg_us=slot.rtt_ewma_us, sampled_at=at))
        return out

    def rtt_sample(self, rows: npt.ArrayLike) -> tuple[_Ints, npt.NDArray[np.bool_]]:
        """The last RTT of the peers at `rows`, and whether it is current (the peer is UP
        or DEGRADED and has answered): the dashboard's sparklines, without a `PeerHealth`
        per peer."""
        at = np.asarray(rows, np.intp)
        # an externally judged peer (BFD) has no RTT: never a sample
        answering = self._answering[at] & (self._slots[_RX, at] != 0) & self._has_slot[at] \
            & ~self._external[at]
        return self._slots[_FIELD["rtt_last_us"], at].astype(np.int64), answering

    def columns(self, rows: npt.ArrayLike) -> dict[str, npt.NDArray[Any]]:
        """The health of the peers at `rows` as arrays (for exports such as /metrics):
        `health` (index in HEALTHS), `since`, `loss_ratio`, `sampled_at`, and every slot
        field by name (zero before the first read, as in `health`)."""
        at = np.asarray(rows, np.intp)
        slots = np.where(self._has_slot[at], self._slots[:, at], 0)
        out: dict[str, npt.NDArray[Any]] = {
            "health": self._state[at], "since": self._since[at], "loss_ratio": self._loss[at],
            "sampled_at": self._sampled_at[at]}
        for i, name in enumerate(SLOT_FIELDS):
            out[name] = slots[i]
        return out

    def state(self, name: str) -> Health:
        return self._peers[name].state

    def reported(self, names: Sequence[str]) -> list[tuple[Health, float, str]]:
        """(state, since, reason) of each of `names`: a listing's columns, no slot read."""
        peers = self._peers
        return [(t.state, t.since, t.reason) for t in map(peers.__getitem__, names)]

    def damped(self, name: str) -> bool:
        return bool(self._damped[self._peers[name].row])

    # -- internals --------------------------------------------------------------------------

    def _window_append(self, at: slice | npt.NDArray[np.intp], rows: npt.NDArray[np.intp],
                       tx: _Ints, rx: _Ints) -> None:
        """Push one poll's deltas into the windows of `rows` (`at`: the same rows, maybe as
        a slice), evicting each window's oldest entry."""
        pos = self._win_pos[at]
        cell = pos * self._cap + rows  # flat index into the (window, row) rings
        ring_tx, ring_rx = self._win_tx.reshape(-1), self._win_rx.reshape(-1)  # views
        self._win_tx_sum[at] += tx - ring_tx[cell]
        self._win_rx_sum[at] += rx - ring_rx[cell]
        ring_tx[cell] = tx
        ring_rx[cell] = rx
        pos += 1
        pos[pos == self.config.loss_window] = 0
        self._win_pos[at] = pos

    def _clear_window(self, row: int) -> None:
        self._win_tx[:, row] = 0
        self._win_rx[:, row] = 0
        self._win_tx_sum[row] = self._win_rx_sum[row] = 0

    def _set_damped(self, t: _Tracker, damped: bool) -> None:
        self._damped[t.row] = damped
        if damped:
            self._damped_peers[t.name] = t
        else:
            self._damped_peers.pop(t.name, None)

    def _set_alive(self, t: _Tracker, alive: bool, now: float) -> None:
        row = t.row
        old = int(self._alive[row])
        if old == int(alive):
            return
        if old >= 0:  # a flip, not the first verdict
            t.flaps.append(now)
            t.last_flip = now
        if alive:
            # the silence before a recovery is an outage, not loss of a live peer
            self._clear_window(row)
            self._loss[row] = 0.0
            self._lossy[row] = False
        self._alive[row] = int(alive)
        cfg = self.config
        while t.flaps and now - t.flaps[0] > cfg.flap_window_s:
            t.flaps.popleft()
        if len(t.flaps) >= cfg.flap_count:
            self._set_damped(t, True)

    def _inputs_of(self, rows: slice | npt.NDArray[np.intp]) -> npt.NDArray[np.int16]:
        """Everything the verdict reads besides damping, one bit set per peer."""
        has = self._has_slot[rows]
        status = self._slots[_STATUS, rows]
        reports = has & (self._slots[_RX, rows] != 0) & (
            (status == PeerStatus.DEGRADED) | (status == PeerStatus.DRAINING))
        bits = (self._admin[rows].astype(np.int16) * _IN_ADMIN
                + ((self._alive[rows].astype(np.int16) + 1) << _IN_ALIVE_SHIFT)
                + reports * _IN_STATUS + (self._slow[rows] & has) * _IN_SLOW
                + self._lossy[rows] * _IN_LOSSY)
        return bits.astype(np.int16)

    def _verdict(self, t: _Tracker, now: float, why: str, inputs: int) -> tuple[Health, str]:
        cfg = self.config
        if inputs & _IN_ADMIN:
            return Health.ADMIN_DOWN, "admin down"
        if t.external is not None:
            return t.external
        if self._damped[t.row]:
            if now - t.last_flip >= cfg.hold_down_s:
                self._set_damped(t, False)
                t.flaps.clear()
            else:
                return Health.DEGRADED, (
                    f"flapping: {len(t.flaps)} changes within {cfg.flap_window_s:g}s, held "
                    f"until stable for {cfg.hold_down_s:g}s")
        alive = (inputs >> _IN_ALIVE_SHIFT) % 4 - 1
        if alive < 0:
            return Health.UNKNOWN, why or "no response yet"
        if not alive:
            return Health.DOWN, why or "no responses"
        reasons: list[str] = []
        if inputs & _IN_STATUS:
            status = int(self._slots[_STATUS, t.row])
            reasons.append(f"peer reports {PeerStatus(status).name}")
        if inputs & _IN_SLOW:
            rtt = int(self._slots[self._rtt_field, t.row])
            reasons.append(f"RTT {rtt} us above {cfg.rtt_degraded_us} us")
        if inputs & _IN_LOSSY:
            reasons.append(f"loss {float(self._loss[t.row]):.0%} above {cfg.loss_degraded:.0%}")
        if reasons:
            return Health.DEGRADED, "; ".join(reasons)
        return Health.UP, why or "healthy"

    def _evaluate(self, t: _Tracker, now: float, why: str,
                  details: dict[str, Any] | None = None, inputs: int | None = None,
                  ) -> list[Event]:
        """The verdict of `t` from its `inputs` (computed here unless the caller has them);
        an event if the reported state changes."""
        if inputs is None:
            inputs = int(self._inputs_of(np.array([t.row], np.intp))[0])
        self._inputs[t.row] = inputs
        new, reason = self._verdict(t, now, why, inputs)
        if new == t.state:
            return []
        old, old_since = t.state, t.since
        t.state, t.since, t.reason = new, now, reason
        self._answering[t.row] = new in (Health.UP, Health.DEGRADED)
        self._state[t.row] = _HEALTH_INDEX[new]
        self._since[t.row] = now
        info = dict(details or {})
        info["previous_since"] = old_since
        if self._damped[t.row]:
            info["damped"] = True
        return [Event(kind=EventKind.TRANSITION, time=now, peer=t.name, switch=t.switch,
                      old_state=old, new_state=new, reason=reason, details=info)]
