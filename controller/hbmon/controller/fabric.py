"""`Fabric`: the controller over every switch, the `HbmonService` the API and CLI use.

Each switch has its `SwitchDriver` (`hbmon.controller.driver`).

`Fabric` holds the drivers of every configured switch, the inventory (peer -> index per
switch, persisted in the `Store`), the health engine, and publishes every event through an
`EventSink` from one pump thread, so events keep their order whatever thread made them.
Events wait in a bounded outbox until the sink has taken them: a store error is retried
with backoff (the batch stays at the head, so order holds and nothing is published twice);
only a backlog beyond `outbox_limit` events drops the oldest, counted and logged.

Inventory changes commit to the store before the data plane changes (a removal: commit,
then unprogram; if unprogramming fails, the switch reconciles and the freed index is held
until it has). A slot a peer leaves is recorded in the store in the same transaction and
forgotten once its registers are zeroed, so a restart resets it before another peer uses it.

High availability (docs/ha.md): with a PostgreSQL store (`store.shared`) any number of
replicas run the same config. `hbmon.store.ha.Leadership` elects one leader per switch; only the
leader is primary on that switch (P4Runtime election id = `election_id` + its epoch, so a
new leader outranks the old one) and only it programs the switch and emits the transitions
of its peers. The others connect as backups without an election id and keep polling (their
health engines stay warm for a take-over). Inventory changes reach every replica through
LISTEN/NOTIFY; the leader programs them and records `programmed_at` in the store. With
SQLite there is one process, always the leader of every switch.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hbmon.bfd_packet import Diag, State
from hbmon.config import FabricConfig
from hbmon.controller.bfd import BfdSession, BfdTimers, RemoteView
from hbmon.controller.driver import SwitchDriver
from hbmon.controller.health import HealthEngine
from hbmon.dataplane.neighbours import NextHop, Resolver
from hbmon.interfaces import EventSink, Store
from hbmon.model import (
    BFD_DEFAULT_MULT,
    BFD_DEFAULT_RX_MS,
    BFD_DEFAULT_TX_MS,
    ConflictError,
    DataPlaneError,
    Event,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    PeerHealth,
    Slot,
    SwitchInfo,
    ValidationError,
)
from hbmon.p4 import (
    P4Schema,
)
from hbmon.protocol import REGISTERS, PlaneState
from hbmon.store.ha import Leadership, default_replica_id
from hbmon.store.sql import INVENTORY_CHANNEL, SlotTakenError

log = logging.getLogger(__name__)

_SLOT_FIELDS = tuple(f.name for f in dataclasses.fields(Slot))
# register name -> Slot field, in contract order ("hb_rx_count" -> "rx_count")
_REGISTER_FIELD = {name: name[3:] for name in REGISTERS}
assert set(_REGISTER_FIELD.values()) == set(_SLOT_FIELDS)
SEEDED_SETTING = "controller.config_peers_seeded"  # store setting: config peers already added
# store setting: hex of the 32-byte secret peers' nonce keys derive from (protocol v2)
NONCE_SECRET_SETTING = "controller.nonce_secret"
OUTBOX_LIMIT = 200_000  # events waiting for the store: 3 transitions per peer at 65,536 peers
_PUBLISH_BATCH = 10_000  # events per store transaction when a backlog drains
_BACKOFF_S = (0.05, 5.0)  # first and longest wait between publish attempts
# Test-only (tests/integration/test_durability.py): the process SIGKILLs itself at this
# named point, the worst moment for a crash; not a user option.
_CRASH_AT = os.environ.get("HBMON_TEST_CRASH_AT", "")
_SLOT_RETRIES = 8  # adds that lost a slot race to another replica try again this often


def _crash_point(name: str) -> None:
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def load_nonce_secret(store: Store) -> bytes:
    """The secret peers' nonce keys derive from: created once (32 random bytes) in the
    store, so every restart and every controller sharing the store programs the same keys,
    and requests in flight across a restart or a fail-over are still answered correctly."""
    value = store.setting_default(NONCE_SECRET_SETTING, secrets.token_bytes(32).hex())
    try:
        secret = bytes.fromhex(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store setting {NONCE_SECRET_SETTING} is not hex") from exc
    if len(secret) < 16:
        raise ValueError(f"store setting {NONCE_SECRET_SETTING} is shorter than 16 bytes")
    return secret


def bfd_timers(peer: Peer) -> BfdTimers:
    """A bfd peer's timers as the session state machine takes them (microseconds)."""
    return BfdTimers(desired_min_tx_us=(peer.desired_min_tx_ms or BFD_DEFAULT_TX_MS) * 1000,
                     required_min_rx_us=(peer.required_min_rx_ms or BFD_DEFAULT_RX_MS) * 1000,
                     detect_mult=peer.detect_mult or BFD_DEFAULT_MULT)


class PollMetrics(Protocol):
    """What the controller reports to `hbmon.api.metrics.ControllerMetrics` (optional)."""

    def observe_poll(self, switch: str, seconds: float) -> None: ...

    def poll_failed(self, switch: str) -> None: ...

    def digest_received(self, switch: str, count: int = 1) -> None: ...

    def watch_event_outbox(self, depth: Callable[[], int]) -> None: ...

    def event_publish_failed(self) -> None: ...

    def events_dropped(self, count: int) -> None: ...


# ---------------------------------------------------------------------------------------------
# the fabric


@dataclasses.dataclass(frozen=True, slots=True)
class _Members:
    """A switch's polled peers as of inventory `version`: names and indexes in index order,
    and the health engine's rows of the same peers."""

    version: int
    names: list[str]
    indexes: list[int]
    rows: npt.NDArray[np.intp]


class Fabric:
    """Every configured switch, the inventory and the health engine (`HbmonService`)."""

    def __init__(self, config: FabricConfig, store: Store, events: EventSink | None = None,
                 *, metrics: PollMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 outbox_limit: int = OUTBOX_LIMIT) -> None:
        self.config = config
        self.store = store
        self.sink = events
        self.metrics = metrics
        self.clock = clock
        self.engine = HealthEngine(config.health)
        # HA over a store other replicas share (docs/ha.md); else one process leads all
        self.ha = bool(getattr(store, "shared", False))
        self.replica_id = config.ha.replica_id or default_replica_id()
        if self.ha:
            store.origin = self.replica_id  # type: ignore[attr-defined]  # NOTIFY payloads
        self.leadership: Leadership | None = None
        self._leading: set[str] = set()  # HA: switches this replica leads now
        # HA: peer -> the state its last transition in the history has (led switches):
        # a take-over continues the history from there, never repeats or skips a state
        self._recorded: dict[str, Health] = {}
        self._listen_stop = threading.Event()
        self._listener: threading.Thread | None = None
        self.listening = threading.Event()  # HA: LISTEN is up and the inventory re-read
        self._state_lock = threading.RLock()  # peers, indexes, engine: short holds only
        self._admin_lock = threading.RLock()  # serialises inventory changes
        self._peers: dict[str, Peer] = {}
        self._by_index: dict[tuple[str, int], str] = {}
        # BFD peers' sessions (RFC 5880 section 6.8.6, `hbmon.controller.bfd`), by name,
        # and the sessions that have been Up since they were added (before that, a session
        # that is not Up is UNKNOWN, not DOWN: a session coming up is no outage)
        self._bfd: dict[str, BfdSession] = {}
        self._bfd_was_up: set[str] = set()
        self._inventory_version = 0  # bumped on every change of peers, indexes or rows
        self._members_cache: dict[str, _Members] = {}
        # switch -> slots the store records as left by a peer and not reset yet
        self._recorded_resets: dict[str, set[int]] = {}
        self._sorted_cache: tuple[int, list[str], npt.NDArray[np.intp]] | None = None
        self._labels_cache: tuple[int, list[str], list[str]] | None = None
        self.nonce_secret = load_nonce_secret(store)
        schemas: dict[Path, P4Schema] = {}
        self.drivers: dict[str, SwitchDriver] = {}
        for sw in config.switches:
            if sw.p4info not in schemas:
                schemas[sw.p4info] = P4Schema.load(sw.p4info)
            self.drivers[sw.name] = SwitchDriver(self, sw, schemas[sw.p4info])
        if not self.ha:
            self._leading = set(self.drivers)
        # the outbox: events not yet taken by the sink, oldest first; `_inflight` is the
        # batch being published (kept until the sink took it, retried on failure)
        self._outbox: collections.deque[Event] = collections.deque()
        self._inflight: list[Event] = []
        self._outbox_cond = threading.Condition()
        self.outbox_limit = outbox_limit
        self._emitted = 0  # events ever emitted
        self._settled = 0  # events published or dropped
        self.outbox_dropped = 0
        self.publish_failures = 0
        self._pump_stop = False
        self._pump_wake = threading.Event()  # cuts a retry backoff short at stop
        self._pump: threading.Thread | None = None
        self._started = False
        if metrics is not None:
            metrics.watch_event_outbox(self.outbox_depth)
        # next hops of peers without a MAC (hbmon.dataplane.neighbours); before the inventory loads
        self.resolver = Resolver(self._next_hops_changed)
        self._load_inventory()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Fabric:
        if self._started:
            return self
        self._started = True
        self._pump_stop = False
        self._pump_wake.clear()
        self._pump = threading.Thread(target=self._pump_events, name="hbmon-events",
                                      daemon=True)
        self._pump.start()
        self.resolver.start()
        if self.ha:
            self._listen_stop.clear()
            self._listener = threading.Thread(target=self._listen, name="hbmon-inventory",
                                              daemon=True)
            self._listener.start()
        for driver in self.drivers.values():
            driver.start()
        if self.ha:
            self.leadership = Leadership(
                self.store.url, list(self.drivers),  # type: ignore[attr-defined]
                replica_id=self.replica_id, on_elected=self._elected,
                on_deposed=self._deposed).start()
        return self

    def stop(self) -> None:
        if not self._started:
            return
        if self.leadership is not None:
            # first: the locks go at once, so another replica takes the switches over
            self.leadership.stop()
            self.leadership = None
        self._listen_stop.set()
        if self._listener is not None:
            self._listener.join(timeout=10)
            self._listener = None
        self.resolver.stop()
        for driver in self.drivers.values():
            driver.stop()
        with self._outbox_cond:
            self._pump_stop = True
            self._outbox_cond.notify_all()
        self._pump_wake.set()
        if self._pump is not None:
            self._pump.join(timeout=15)
        self._started = False

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        waiter = threading.Event()
        while not self.ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter.wait(min(0.02, remaining))  # readiness has no callback: poll the flag
        return True

    def flush_events(self, timeout: float = 10.0) -> bool:
        """Wait until every event emitted so far has been published (or dropped by an
        overflowing outbox); False after `timeout` (e.g. while the store is failing)."""
        if not self._started:
            return False
        with self._outbox_cond:
            target = self._emitted
            return self._outbox_cond.wait_for(lambda: self._settled >= target, timeout)

    # -- events -----------------------------------------------------------------------------

    def outbox_depth(self) -> int:
        """Events emitted and not yet taken by the sink (`hbmon_event_outbox_depth`)."""
        with self._outbox_cond:
            return len(self._outbox) + len(self._inflight)

    def _leads(self, switch: str) -> bool:
        """This replica speaks for `switch` (always, without HA)."""
        return switch in self._leading

    def _note_recorded(self, events: Iterable[Event]) -> None:
        """HA: transitions the history gets (or has) from this or another replica."""
        if self.ha:
            for e in events:
                if e.kind is EventKind.TRANSITION and e.peer and e.new_state is not None:
                    self._recorded[e.peer] = e.new_state

    def _emit_observed(self, events: list[Event]) -> None:
        """Transitions the engine saw in a poll, a digest or a tick (under the state lock).
        HA: only the leader of the peer's switch emits them, continuing the history from
        the state it last recorded: a state the history has already is not repeated (a new
        leader whose engine lagged) and the old state is the history's (no gap)."""
        if not self.ha:
            self._emit(events)
            return
        out: list[Event] = []
        for e in events:
            if e.switch is None or e.switch not in self._leading:
                continue
            if e.kind is EventKind.TRANSITION and e.peer:
                recorded = self._recorded.get(e.peer)
                if recorded is not None and e.new_state == recorded:
                    continue
                if recorded is not None and e.old_state != recorded:
                    e = dataclasses.replace(e, old_state=recorded)
            out.append(e)
        self._emit(out)

    def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        self._note_recorded(events)
        dropped, first = 0, False
        with self._outbox_cond:
            self._outbox.extend(events)
            self._emitted += len(events)
            over = len(self._outbox) + len(self._inflight) - self.outbox_limit
            if over > 0:
                # the store has been failing for a long time: the oldest events waiting
                # (never the batch being retried) give way, so memory stays bounded
                dropped = min(over, len(self._outbox))
                for _ in range(dropped):
                    self._outbox.popleft()
                self._settled += dropped
                first = self.outbox_dropped == 0
                self.outbox_dropped += dropped
            self._outbox_cond.notify_all()
        if dropped:
            if self.metrics is not None:
                self.metrics.events_dropped(dropped)
            if first or self.outbox_dropped % 10_000 < dropped:  # a line per 10K, not per event
                log.error("event outbox full (%d events): dropped the oldest %d "
                          "(%d so far); the store is not taking events",
                          self.outbox_limit, dropped, self.outbox_dropped)

    def _pump_events(self) -> None:
        """Publish the outbox in order, one store transaction per batch; a failed batch
        stays at the head and is retried with backoff until the sink takes it. At stop
        the pump drains what is left, retrying for at most 10 s."""
        backoff = _BACKOFF_S[0]
        give_up: float | None = None
        failing = 0
        while True:
            with self._outbox_cond:
                while not (self._outbox or self._inflight or self._pump_stop):
                    self._outbox_cond.wait()
                if not self._inflight:
                    n = min(len(self._outbox), _PUBLISH_BATCH)
                    self._inflight = [self._outbox.popleft() for _ in range(n)]
                batch = self._inflight
                if not batch:  # stopping, and everything is published
                    return
            try:
                if self.sink is not None:
                    self.sink.publish(batch)
            except Exception as exc:
                failing += 1
                self.publish_failures += 1
                if self.metrics is not None:
                    self.metrics.event_publish_failed()
                if failing == 1:
                    log.exception("publishing %d events failed; retrying", len(batch))
                else:
                    log.warning("publishing %d events failed (attempt %d): %s",
                                len(batch), failing, exc)
                if self._pump_stop:
                    give_up = give_up or time.monotonic() + 10.0
                    if time.monotonic() >= give_up:
                        log.error("stopping with %d events not published",
                                  self.outbox_depth())
                        return
                    # stop woke _pump_wake for good: pace the last attempts here
                    threading.Event().wait(min(backoff, 0.5))
                else:
                    self._pump_wake.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_S[1])
                continue
            if failing:
                log.warning("publishing events works again after %d failed attempts",
                            failing)
            failing, backoff = 0, _BACKOFF_S[0]
            with self._outbox_cond:
                self._inflight = []
                self._settled += len(batch)
                self._outbox_cond.notify_all()

    # -- inventory --------------------------------------------------------------------------

    def _load_inventory(self) -> None:
        """Peers from the store, plus config peers the store does not have; indexes are
        reserved as persisted, and assigned (and persisted) where missing or clashing."""
        now = self.clock()
        stored = {p.name: p for p in self.store.list_peers()}
        stored_index = {p.name: p.index for p in stored.values()}
        # the config file seeds the inventory once per peer name: a config peer removed
        # over the API stays removed after a restart
        seeded = set(self.store.get_setting(SEEDED_SETTING) or [])
        seeds = [dataclasses.replace(p) for p in self.config.peers
                 if p.name not in stored and p.name not in seeded]
        fixes: list[Peer] = []
        for peer in stored.values():
            driver = self.drivers.get(peer.switch)
            if driver is None:
                log.warning("peer %s: switch %r is not configured; not monitored",
                            peer.name, peer.switch)
            elif peer.index is not None and peer.index not in driver.allocator:
                driver.allocator.reserve(peer.index)
            else:
                peer.index = None
                fixes.append(peer)
        # slots a peer left before a crash cut off their reset: reset before they are used
        for switch, indexes in self.store.pending_slot_resets().items():
            if switch in self.drivers:
                self._recorded_resets[switch] = set(indexes)
                self.drivers[switch].allocator.needs_reset.update(indexes)
        for peer in [*fixes, *seeds]:
            allocator = self.drivers[peer.switch].allocator
            peer.index = allocator.allocate()
            allocator.needs_reset.add(peer.index)
        for peer in fixes:
            old = stored_index.get(peer.name)
            self.store.update_peer(peer)
            if old is not None:  # the store recorded the slot it left: reset it once
                self._slots_left(peer.switch, [old])
        if seeds:
            self.store.add_peers(seeds)
        names = seeded | {p.name for p in self.config.peers}
        if names != seeded:
            self.store.set_setting(SEEDED_SETTING, sorted(names))
        self._emit([self._inventory_event(EventKind.PEER_ADDED, p, now, "config")
                    for p in seeds])
        for peer in [*stored.values(), *seeds]:
            events = self._register(peer, now)
            if not self.ha:  # HA: the history has them; a new leader continues from it
                self._emit(events)

    def _slots_left(self, switch: str, indexes: Iterable[int | None]) -> None:
        """The store has recorded these slots of `switch` as left by a peer (removal,
        move, rollback): they need a reset, and the record goes once one is done."""
        driver = self.drivers.get(switch)
        if driver is None:
            return
        found = {i for i in indexes if i is not None}
        self._recorded_resets.setdefault(switch, set()).update(found)
        driver.allocator.needs_reset.update(found)

    def _slots_were_reset(self, driver: SwitchDriver, indexes: Sequence[int]) -> None:
        """Zeroed on the target: forget the store's records of them (one transaction, and
        only for slots a peer left: resetting a never-used slot writes nothing)."""
        recorded = self._recorded_resets.get(driver.name)
        done = [i for i in indexes if recorded and i in recorded]
        if not done:
            return
        try:
            self.store.slots_reset(driver.name, done)
        except Exception as exc:  # the record stays: the next start resets them again
            log.warning("%s: forgetting reset slots %s failed: %s", driver.name, done, exc)
            return
        if recorded is not None:
            recorded.difference_update(done)

    def _register(self, peer: Peer, now: float) -> list[Event]:
        with self._state_lock:
            self._inventory_changed()
            # a new life in the history: it starts UNKNOWN (whatever an earlier peer of
            # this name last recorded)
            self._recorded.pop(peer.name, None)
            self._watch_next_hop(peer)
            self._peers[peer.name] = peer
            if peer.index is not None:
                self._by_index[(peer.switch, peer.index)] = peer.name
            return self._track(peer, now)

    def _track(self, peer: Peer, now: float) -> list[Event]:
        """`peer` into the health engine (a BFD peer with a fresh session, judged by it)."""
        driver = self.drivers.get(peer.switch)
        if peer.is_bfd:
            self._bfd[peer.name] = BfdSession(bfd_timers(peer), admin_down=peer.admin_down)
            self._bfd[peer.name].transitions()  # its initial state is no transition
            self._bfd_was_up.discard(peer.name)
            return self.engine.add(peer.name, peer.switch, now=now, detect_mult=peer.detect_mult,
                                   admin_down=peer.admin_down, external=True)
        mult = peer.detect_mult or (driver.config.detect_mult if driver else None)
        return self.engine.add(peer.name, peer.switch, now=now, detect_mult=mult,
                               admin_down=peer.admin_down)

    def _untrack(self, name: str) -> None:
        self.engine.remove(name)
        self._bfd.pop(name, None)
        self._bfd_was_up.discard(name)

    def _retune(self, peer: Peer, now: float) -> list[Event]:
        """A peer changed in place (same switch and slot): its detect multiplier, admin
        state and, for BFD, its session's timers (a Poll Sequence if Up: RFC 5880 section
        6.8.3); returns the transitions."""
        name = peer.name
        events: list[Event] = []
        session = self._bfd.get(name)
        if session is not None:
            session.set_timers(bfd_timers(peer))
            session.set_admin_down(peer.admin_down)
            events.extend(self._bfd_transitions(name, now))
        else:
            self.engine.set_detect_mult(
                name, peer.detect_mult or self.drivers[peer.switch].config.detect_mult)
        events.extend(self.engine.set_admin_down(name, peer.admin_down, now))
        return events

    def _unregister(self, peer: Peer) -> None:
        with self._state_lock:
            self._inventory_changed()
            self._recorded.pop(peer.name, None)
            self._peers.pop(peer.name, None)
            self.resolver.forget(peer.name)
            if peer.index is not None:
                self._by_index.pop((peer.switch, peer.index), None)
            self._untrack(peer.name)

    @staticmethod
    def _inventory_event(kind: EventKind, peer: Peer, now: float, reason: str,
                         details: dict[str, Any] | None = None) -> Event:
        return Event(kind=kind, time=now, peer=peer.name, switch=peer.switch, reason=reason,
                     details=details if details is not None else peer.to_dict())

    def _peers_of(self, switch: str) -> list[Peer]:
        """Copies of the switch's peers as they are programmed: next hops resolved."""
        with self._state_lock:
            return [self._effective(p) for p in self._peers.values() if p.switch == switch]

    # -- next hops of peers without a MAC (hbmon.dataplane.neighbours) -----------------------------

    def _watch_next_hop(self, peer: Peer) -> None:
        """Resolve `peer`'s next hop from now on if it has no MAC (else stop): the lookup of
        what the host knows now is synchronous, so a known neighbour is programmed at once."""
        if peer.mac is not None:
            self.resolver.forget(peer.name)
            peer.next_hop = None
            return
        driver = self.drivers.get(peer.switch)
        interface = driver.config.ports.get(peer.port) if driver is not None else None
        peer.next_hop = self.resolver.watch(peer.name, peer.address, interface).to_dict()

    def _effective(self, peer: Peer) -> Peer:
        """A copy of `peer` with the MAC its requests are sent to: the declared one, else
        the resolved next hop's (None while unresolved: no request entry, no replica)."""
        if peer.mac is not None:
            return dataclasses.replace(peer)
        hop = self.resolver.get(peer.name)
        return dataclasses.replace(peer, mac=hop.mac if hop is not None else None)

    def _next_hops_changed(self, changes: dict[str, NextHop]) -> None:
        """The resolver's batch (its thread): the peers get their new next hop (a new Peer
        object, so cached JSON is redone), and the switches whose MACs changed reconcile:
        a first MAC inserts the request entry and the replica, a new one MODIFYs the entry."""
        switches: set[str] = set()
        with self._state_lock:
            for name, hop in changes.items():
                peer = self._peers.get(name)
                if peer is None or peer.mac is not None:
                    continue
                old = peer.next_hop or {}
                self._peers[name] = dataclasses.replace(peer, next_hop=hop.to_dict())
                if old.get("mac") != hop.mac:
                    switches.add(peer.switch)
                    log.info("peer %s: next hop %s is %s (%s)", name, hop.address,
                             hop.mac, hop.state)
            self._inventory_changed()
        for switch in sorted(switches):
            driver = self.drivers[switch]
            if not (self._leads(switch) and driver.programmable):
                continue  # its next setup reconciles with the MACs known then
            driver.reconcile_or_request_setup("programming new next hops")

    def _unresolved(self, name: str) -> str | None:
        """The reason a peer without MAC has no next hop yet, None if it has (state lock)."""
        peer = self._peers.get(name)
        if peer is None or peer.mac is not None:
            return None
        hop = peer.next_hop
        if hop is not None and hop.get("mac"):
            return None
        why = (hop or {}).get("reason") or "not looked up yet"
        return f"next hop unresolved: {why}"

    def unresolved_counts(self) -> dict[str, int]:
        """Peers per switch whose next hop is unresolved (`hbmon_peers_unresolved`)."""
        counts = dict.fromkeys(self.drivers, 0)
        with self._state_lock:
            for name, peer in self._peers.items():
                if peer.mac is None and self._unresolved(name) is not None:
                    counts[peer.switch] = counts.get(peer.switch, 0) + 1
        return counts

    def _with_next_hop_reason(self, health: PeerHealth) -> PeerHealth:
        """An unresolved peer is never asked (no requests): UNKNOWN, saying why."""
        if health.state is Health.UNKNOWN:
            why = self._unresolved(health.name)
            if why is not None:
                health.reason = why
        return health

    def _members_of(self, switch: str) -> list[tuple[str, int]]:
        with self._state_lock:
            return sorted(((p.name, p.index) for p in self._peers.values()
                           if p.switch == switch and p.index is not None),
                          key=lambda m: m[1])

    def _poll_members(self, switch: str) -> _Members:
        """The peers a poll of `switch` reads, in index order, with their engine rows:
        built once per inventory change, not per poll."""
        with self._state_lock:
            cached = self._members_cache.get(switch)
            if cached is None or cached.version != self._inventory_version:
                members = self._members_of(switch)
                names = [n for n, _ in members]
                cached = _Members(self._inventory_version, names, [i for _, i in members],
                                  self.engine.rows(names))
                self._members_cache[switch] = cached
            return cached

    def _inventory_changed(self) -> None:
        """Peers, indexes or engine rows changed (call under the state lock)."""
        self._inventory_version += 1

    def _observe(self, driver: SwitchDriver, members: _Members, fields: Sequence[str],
                 columns: npt.NDArray[np.uint64], unreset: Collection[int] = ()) -> None:
        """One poll's read: `columns[i]` is register field `fields[i]` of every member.
        `unreset`: slots that were waiting for their reset when the read began (their cells
        may be the previous peer's), dropped."""
        now = self.clock()
        with self._state_lock:
            rows = members.rows
            if members.version != self._inventory_version or unreset:
                # peers were removed or moved while the poll was reading: drop their cells
                keep = [pos for pos, (name, index) in enumerate(zip(
                    members.names, members.indexes, strict=True))
                    if self._by_index.get((driver.name, index)) == name
                    and index not in unreset]
                columns = columns[:, keep]
                rows = self.engine.rows([members.names[pos] for pos in keep])
            events = self.engine.observe_rows(rows, columns, now, fields)
            events.extend(self.engine.tick(now))
            self._emit_observed(events)

    def _new_target_clock(self, switch: str) -> None:
        with self._state_lock:
            self.engine.new_target_clock(switch)

    def _plane_events(self, driver: SwitchDriver, rows: Iterable[dict[str, int]]) -> None:
        now = self.clock()
        events: list[Event] = []
        changed: list[str] = []
        with self._state_lock:
            for row in rows:
                name = self._by_index.get((driver.name, row.get("index", -1)))
                if name is None:
                    continue
                session = self._bfd.get(name)
                if session is not None:
                    # a BFD slot's DOWN: its detection time expired in the data plane
                    # (docs/bfd.md "Transmit" 1); no UP is raised for one
                    if row.get("state") == PlaneState.DOWN and session.on_detect_expired():
                        changed.append(name)
                    events.extend(self._bfd_transitions(name, now, {
                        "source": "digest", "time_us": row.get("time_us", 0)}))
                    continue
                events.extend(self.engine.plane_event(
                    name, row.get("state", PlaneState.UNKNOWN), now=now,
                    last_seq=row.get("last_seq", 0), time_us=row.get("time_us", 0)))
            self._emit_observed(events)
        if changed:
            driver.push_bfd(changed)

    # -- BFD sessions (docs/bfd.md "Controller") ----------------------------------------------

    def _bfd_events(self, driver: SwitchDriver, rows: Iterable[dict[str, int]]) -> None:
        """`bfd_event_t` digests: what a session's remote said that changed (docs/bfd.md
        "Receive"); the state machine runs, and only sessions whose control packets must
        change get their `bfd_requests` entry rewritten (one MODIFY each)."""
        now = self.clock()
        events: list[Event] = []
        changed: list[str] = []
        with self._state_lock:
            for row in rows:
                name = self._by_index.get((driver.name, row.get("index", -1)))
                session = self._bfd.get(name) if name is not None else None
                if name is None or session is None:
                    continue
                view = RemoteView(
                    state=State(row.get("state", 0) & 0x3), diag=row.get("diag", 0),
                    flags=row.get("flags", 0), detect_mult=row.get("detect_mult", 0),
                    my_disc=row.get("my_disc", 0),
                    desired_min_tx_us=row.get("desired_min_tx_us", 0),
                    required_min_rx_us=row.get("required_min_rx_us", 0),
                    time_us=row.get("time_us", 0))
                if session.on_remote(view):
                    changed.append(name)
                events.extend(self._bfd_transitions(name, now, {
                    "source": "digest", "remote_state": view.state.name,
                    "remote_diag": view.diag, "time_us": view.time_us}))
            self._emit_observed(events)
        if changed:
            driver.push_bfd(changed)

    def _bfd_transitions(self, name: str, now: float,
                         details: dict[str, Any] | None = None) -> list[Event]:
        """The session's state changes since the last call, as the peer's health (state
        lock): Up is UP, AdminDown is ADMIN_DOWN, Down and Init are DOWN once the session
        has been Up (UNKNOWN before: coming up is no outage)."""
        session = self._bfd[name]
        events: list[Event] = []
        for t in session.transitions():
            if t.new == State.UP:
                self._bfd_was_up.add(name)
                health = Health.UP
            elif t.new == State.ADMIN_DOWN:
                health = Health.ADMIN_DOWN
            else:
                health = Health.DOWN if name in self._bfd_was_up else Health.UNKNOWN
            reason = f"BFD {t.new.name}"
            if t.diag != Diag.NONE:
                reason += f": {t.diag.name.lower().replace('_', ' ')}"
            info = {**(details or {}), "bfd_old_state": t.old.name, "bfd_state": t.new.name,
                    "diag": int(t.diag), "cause": t.cause}
            events.extend(self.engine.set_external(name, health, reason, now, info))
        return events

    def _bfd_fresh(self, name: str) -> bool:
        """A BFD session that has heard nothing since this process made it (Down)."""
        with self._state_lock:
            session = self._bfd.get(name)
            return session is not None and session.state == State.DOWN \
                and session.remote is None

    def _bfd_resume(self, name: str, view: RemoteView) -> None:
        """A fresh session the target runs Up with a remote heard Up (`driver._bfd_resume`)
        continues Up. The state machine is walked as the handshake's last step (section
        6.8.6: Down, the remote in Init -> Up) with what the slot recorded of the remote,
        so the timers follow its rules (Up starts a Poll Sequence to our configured
        interval, which the remote ends with F); the health says it was resumed."""
        now = self.clock()
        with self._state_lock:
            session = self._bfd.get(name)
            if session is None or not self._bfd_fresh(name):
                return
            session.on_remote(dataclasses.replace(view, state=State.INIT))
            session.on_remote(view)
            if session.state != State.UP:
                self._emit_observed(self._bfd_transitions(name, now))
                return
            session.transitions()
            self._bfd_was_up.add(name)
            self._emit_observed(self.engine.set_external(
                name, Health.UP, "BFD UP (resumed: the data plane has the session Up)", now,
                {"source": "reconcile", "bfd_state": "UP", "remote_state": "UP",
                 "remote_discriminator": view.my_disc}))

    def _bfd_sessions_lost(self, names: Sequence[str]) -> None:
        """The target lost these sessions' entries and slots (a restart): Init and Up go
        Down with diag 1 (section 6.8.4: the remote is not heard any more), the start of a
        new handshake (a driver's reconcile, which then programs them so)."""
        now = self.clock()
        with self._state_lock:
            events: list[Event] = []
            for name in names:
                session = self._bfd.get(name)
                if session is not None and session.on_detect_expired():
                    events.extend(self._bfd_transitions(name, now, {
                        "source": "reconcile",
                        "why": "the target lost the session's state (restart?)"}))
            self._emit_observed(events)

    def _bfd_farewell(self, peers: Sequence[Peer]) -> None:
        """BFD sessions about to be deleted say AdminDown (diag 7) first, so the remote
        goes Down at once, told why, rather than after its detection time (RFC 5880
        section 6.8.16); where this replica programs the switch."""
        by_switch: dict[str, list[Peer]] = {}
        with self._state_lock:
            for peer in peers:
                session = self._bfd.get(peer.name)
                if session is None or peer.index is None:
                    continue
                session.set_admin_down(True)
                session.transitions()  # the peer is going: its removal is the event
                by_switch.setdefault(peer.switch, []).append(peer)
        for switch, group in by_switch.items():
            driver = self.drivers.get(switch)
            if driver is not None and self._leads(switch):
                driver.bfd_farewell([p.name for p in group])

    def _bfd_control(self, name: str) -> dict[str, int] | None:
        """What the session's `bfd_requests` entry must hold now (None: not a BFD peer)."""
        with self._state_lock:
            session = self._bfd.get(name)
            return None if session is None else {
                k: int(v) for k, v in dataclasses.asdict(session.control()).items()}

    def _bfd_controls(self, switch: str) -> dict[str, dict[str, int]]:
        with self._state_lock:
            return {n: c for n, p in self._peers.items() if p.switch == switch and p.is_bfd
                    and (c := self._bfd_control(n)) is not None}

    def _bfd_tick_us(self, switch: str) -> int:
        """The BFD fan-out period of `switch` (config `bfd.tick_ms`, else a tenth of the
        fastest desired min TX; docs/bfd.md)."""
        with self._state_lock:
            peers = [p for p in self._peers.values() if p.switch == switch and p.is_bfd]
        return self.config.bfd.tick_us(peers)

    def bfd_sessions(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(peer, switch, `bfd_status`) of every BFD peer, by name (for /metrics)."""
        with self._state_lock:
            return [(n, self._peers[n].switch, st) for n in sorted(self._bfd)
                    if n in self._peers and (st := self.bfd_status(n)) is not None]

    def bfd_status(self, name: str) -> dict[str, Any] | None:
        """A BFD peer's session as the API shows it (None: not a BFD peer)."""
        with self._state_lock:
            session = self._bfd.get(name)
            peer = self._peers.get(name)
            if session is None or peer is None:
                return None
            control = session.control()
            remote = session.remote
            driver = self.drivers.get(peer.switch)
            return {
                "state": session.state.name, "diag": int(session.diag),
                "local_discriminator": driver.guard.discriminator(peer)
                if driver is not None and peer.index is not None else None,
                "remote_state": remote.state.name if remote else None,
                "remote_diag": int(remote.diag) if remote else None,
                "remote_discriminator": int(remote.my_disc) if remote else None,
                "remote_detect_mult": int(remote.detect_mult) if remote else None,
                "remote_desired_min_tx_us": int(remote.desired_min_tx_us) if remote else None,
                "remote_required_min_rx_us": int(remote.required_min_rx_us)
                if remote else None,
                "desired_min_tx_us": int(control.desired_min_tx_us),
                "required_min_rx_us": int(control.required_min_rx_us),
                "detect_mult": int(control.detect_mult),
                "tx_interval_us": int(control.tx_interval_us),
                "detect_time_us": int(control.detect_time_us),
                "poll": bool(control.flags & 0x20),
                # as the last poll read it (the target's clock: compare with the time_us
                # of the session's digest events, not with wall-clock time)
                "last_rx_us": int(self.engine.slot(name).last_rx_us),
            }

    # -- HbmonService: peers ----------------------------------------------------------------

    def list_peers(self) -> list[Peer]:
        with self._state_lock:
            return sorted((dataclasses.replace(p) for p in self._peers.values()),
                          key=lambda p: p.name)

    def get_peer(self, name: str) -> Peer:
        with self._state_lock:
            peer = self._peers.get(name)
            if peer is None:
                raise NotFoundError("peer", name)
            return dataclasses.replace(peer)

    def _check_new(self, peers: Sequence[Peer]) -> None:
        names: set[str] = set()
        keys: set[tuple[str, str]] = set()
        ids: set[tuple[str, int]] = set()
        with self._state_lock:
            for p in self._peers.values():
                keys.add((p.switch, p.address))
                if p.peer_id:  # 0: a bfd peer (none)
                    ids.add((p.switch, p.peer_id))
            for i, peer in enumerate(peers):
                where = f"peers[{i}]." if len(peers) > 1 else ""
                try:
                    peer.validate()
                except ValidationError as exc:
                    raise ValidationError(f"{where}{exc.field}", exc.message) from exc
                if peer.switch not in self.drivers:
                    raise ValidationError(
                        f"{where}switch", f"no switch named {peer.switch!r} "
                        f"(configured: {', '.join(self.drivers)})")
                if peer.name in self._peers or peer.name in names:
                    raise ConflictError(f"{where}name",
                                        f"a peer named {peer.name!r} already exists")
                if (peer.switch, peer.address) in keys:
                    raise ConflictError(f"{where}address", f"{peer.address} is already "
                                        f"monitored on switch {peer.switch!r}")
                if peer.peer_id and (peer.switch, peer.peer_id) in ids:
                    raise ConflictError(f"{where}peer_id", f"peer id {peer.peer_id} is "
                                        f"already used on switch {peer.switch!r}")
                names.add(peer.name)
                keys.add((peer.switch, peer.address))
                if peer.peer_id:
                    ids.add((peer.switch, peer.peer_id))

    def add_peers(self, peers: Sequence[Peer]) -> list[Peer]:
        peers = [dataclasses.replace(p, labels=dict(p.labels)) for p in peers]
        if not peers:
            return []
        if len(self.drivers) == 1 and "default" not in self.drivers:
            # one switch: the model's default switch name means "the switch"
            only = next(iter(self.drivers))
            for p in peers:
                if p.switch == "default":
                    p.switch = only
        with self._admin_lock:
            chosen = [p.index is not None for p in peers]
            for attempt in range(_SLOT_RETRIES):
                try:
                    self._commit_new(peers)
                    break
                except SlotTakenError:
                    # another replica gave one of these slots away first (UNIQUE (switch,
                    # idx)): catch up with the store, then pick again
                    if all(chosen) or attempt == _SLOT_RETRIES - 1:
                        raise
                    for peer, fixed in zip(peers, chosen, strict=True):
                        if not fixed:
                            peer.index = None
                    log.info("slot taken by another replica; re-reading the inventory")
                    self._sync(None)
            # known to the engine before programming, so the first responses count
            now = self.clock()
            initial: list[Event] = []
            for peer in peers:
                initial.extend(self._register(peer, now))
            by_switch: dict[str, list[Peer]] = {}
            for peer in peers:
                by_switch.setdefault(peer.switch, []).append(peer)
            done: list[str] = []
            try:
                for switch, group in by_switch.items():
                    if self.drivers[switch].program_add(group, self._peers_of(switch)):
                        self._programmed(switch, [p.name for p in group])
                    done.append(switch)
            except Exception:
                for peer in peers:
                    self._unregister(peer)
                for switch in done:
                    try:
                        self.drivers[switch].program_remove(by_switch[switch],
                                                            self._peers_of(switch))
                    except Exception:
                        log.exception("rollback of %s failed; reconcile will fix it", switch)
                self.store.remove_peers([p.name for p in peers])
                for switch, group in by_switch.items():
                    self._slots_left(switch, [p.index for p in group])
                for peer in peers:
                    if peer.index is not None:
                        self.drivers[peer.switch].allocator.release(peer.index)
                raise
            self._emit([self._inventory_event(EventKind.PEER_ADDED, p, now, "added")
                        for p in peers] + initial)
            return [dataclasses.replace(p) for p in peers]

    def _commit_new(self, peers: Sequence[Peer]) -> None:
        """Check, give each peer its slot and commit them (one transaction); on failure
        nothing is kept. SlotTakenError: another replica holds a slot picked here."""
        self._check_new(peers)
        allocated: list[Peer] = []
        try:
            for i, peer in enumerate(peers):
                allocator = self.drivers[peer.switch].allocator
                if peer.index is not None:
                    try:
                        allocator.reserve(peer.index)
                    except (ConflictError, ValidationError) as exc:
                        where = f"peers[{i}]." if len(peers) > 1 else ""
                        raise type(exc)(f"{where}index", exc.message) from exc
                    allocator.needs_reset.add(peer.index)
                else:
                    peer.index = allocator.allocate()
                    allocator.needs_reset.add(peer.index)
                allocated.append(peer)
            self.store.add_peers(peers)
            _crash_point("after_add_commit")
        except Exception:
            for peer in allocated:
                if peer.index is not None:
                    self.drivers[peer.switch].allocator.release(peer.index)
            raise

    def remove_peers(self, names: Sequence[str]) -> None:
        """Commit, then unprogram. A store error changes nothing (and reaches the caller);
        once committed the removal stands: if unprogramming fails, the switch reconciles
        (retried with backoff) and the peers' indexes are held until it has, so no new
        peer can share a slot with entries the target still holds."""
        names = list(dict.fromkeys(names))
        with self._admin_lock:
            peers = [self.get_peer(n) for n in names]  # NotFoundError before any change
            self.store.remove_peers(names)  # also records the slots as needing a reset
            _crash_point("after_remove_commit")
            now = self.clock()
            self._forget(peers)
            self._emit([self._inventory_event(EventKind.PEER_REMOVED, p, now, "removed")
                        for p in peers])

    def _forget(self, peers: Sequence[Peer]) -> None:
        """Removed peers (committed): out of the engine and the inventory, off the target
        (where this replica programs it), their slots released or held."""
        self._bfd_farewell(peers)
        by_switch: dict[str, list[Peer]] = {}
        for peer in peers:
            self._unregister(peer)  # no longer polled, reported or reconciled in
            by_switch.setdefault(peer.switch, []).append(peer)
        for switch, group in by_switch.items():
            self._slots_left(switch, [p.index for p in group])
            driver = self.drivers.get(switch)
            if driver is None:
                continue
            try:
                unprogrammed = driver.program_remove(group, self._peers_of(switch))
            except Exception as exc:
                unprogrammed = False
                log.warning("%s: unprogramming removed peers %s failed (%s); the "
                            "switch reconciles them away", switch,
                            [p.name for p in group], exc)
            if self.ha and not self._leads(switch):
                # the leader unprograms (and holds the slot if that fails); this
                # replica never wrote the entries, so its view just frees the slot
                unprogrammed = True
            for peer in group:
                if peer.index is None:
                    continue
                if unprogrammed:
                    driver.allocator.release(peer.index)
                else:
                    driver.allocator.hold(peer.index)

    _MUTABLE = {"address", "peer_id", "mac", "port", "group", "labels", "detect_mult",
                "admin_down", "switch", "index", "kind", "desired_min_tx_ms",
                "required_min_rx_ms"}

    def update_peer(self, name: str, changes: dict[str, Any]) -> Peer:
        with self._admin_lock:
            old = self.get_peer(name)
            unknown = set(changes) - self._MUTABLE - {"name"}
            if unknown:
                raise ValidationError(sorted(unknown)[0], "unknown field")
            if changes.get("name", name) != name:
                raise ValidationError("name", "cannot be changed (remove and add the peer)")
            if "index" in changes and changes["index"] != old.index:
                raise ValidationError("index", "assigned by the controller")
            if changes.get("kind", old.kind) != old.kind:
                raise ValidationError("kind", "cannot be changed (remove and add the peer)")
            new = dataclasses.replace(old, **{k: v for k, v in changes.items()
                                              if k not in ("name", "index")})
            new.validate()
            if new.switch not in self.drivers:
                raise ValidationError("switch", f"no switch named {new.switch!r}")
            with self._state_lock:
                for p in self._peers.values():
                    if p.name == name or p.switch != new.switch:
                        continue
                    if p.address == new.address:
                        raise ConflictError("address", f"{new.address} is already used by "
                                            f"peer {p.name!r} on switch {new.switch!r}")
                    if new.peer_id and p.peer_id == new.peer_id:
                        raise ConflictError("peer_id", f"peer id {new.peer_id} is already "
                                            f"used by peer {p.name!r}")
            if new.switch != old.switch:
                # a move: a fresh slot on the new switch, the old one freed
                new.index = self.drivers[new.switch].allocator.allocate()
                self.drivers[new.switch].allocator.needs_reset.add(new.index)
            self.store.update_peer(new)
            now = self.clock()
            # the update is recorded when it is committed, before the targets are changed:
            # a moved peer's first transition on its new switch can come from a poll while
            # the targets reconcile, and must follow the move in the history
            changed = {k: v for k, v in new.to_dict().items() if old.to_dict().get(k) != v}
            started = self._swap(old, new, now)  # the inventory first: the event follows it
            self._emit([self._inventory_event(EventKind.PEER_UPDATED, new, now, "updated",
                                              {"changes": changed, "peer": new.to_dict()}),
                        *started])
            try:
                for switch in {old.switch, new.switch}:
                    driver = self.drivers[switch]
                    if driver.programmable:
                        driver.reconcile()
            except Exception as exc:
                # put the old peer back everywhere, then make the targets match it again
                self.store.update_peer(old)
                with self._state_lock:
                    self._inventory_changed()
                    self._peers[name] = old
                    self._by_index.pop((new.switch, new.index or 0), None)
                    if old.index is not None:
                        self._by_index[(old.switch, old.index)] = name
                    if new.switch != old.switch:
                        self._untrack(name)
                        self._track(old, now)
                    else:
                        self._retune(old, now)
                if new.switch != old.switch and new.index is not None:
                    self.drivers[new.switch].allocator.release(new.index)
                    self._slots_left(new.switch, [new.index])
                for switch in {old.switch, new.switch}:
                    self.drivers[switch].reconcile_or_request_setup("reverting an update")
                back = {k: old.to_dict().get(k) for k in changed}
                self._emit([self._inventory_event(
                    EventKind.PEER_UPDATED, old, self.clock(), "reverted",
                    {"changes": back, "peer": old.to_dict(), "error": str(exc)})])
                raise DataPlaneError(f"update of {name!r} not applied: {exc}") from exc
            if new.switch != old.switch and old.index is not None:
                self.drivers[old.switch].allocator.release(old.index)
                self._slots_left(old.switch, [old.index])
            return dataclasses.replace(new)

    def _swap(self, old: Peer, new: Peer, now: float) -> list[Event]:
        """Replace peer `old` by `new` (same name) in the inventory and the engine; the
        engine's transitions (admin down, a move's fresh start) are returned."""
        name = new.name
        with self._state_lock:
            self._inventory_changed()
            self._watch_next_hop(new)
            self._peers[name] = new
            if old.index is not None:
                self._by_index.pop((old.switch, old.index), None)
            if new.index is not None:
                self._by_index[(new.switch, new.index)] = name
            if new.switch != old.switch:
                self._untrack(name)
                return self._track(new, now)
            return self._retune(new, now)

    # -- HA: inventory changes of other replicas, leadership, programming -------------------

    def _listen(self) -> None:
        """LISTEN on the inventory channel (its own connection) and apply what other
        replicas commit; after every (re)connection the whole inventory is re-read, so a
        notification missed while not listening changes nothing."""
        import psycopg

        url: str = self.store.url  # type: ignore[attr-defined]
        while not self._listen_stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {INVENTORY_CHANNEL}")
                    self._sync(None)
                    self.listening.set()
                    while not self._listen_stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._on_notify(note.payload)
                            if self._listen_stop.is_set():
                                break
            except Exception as exc:
                log.warning("inventory notifications: %s; re-reading after reconnect", exc)
            self.listening.clear()
            self._listen_stop.wait(0.5)

    def _on_notify(self, payload: str) -> None:
        try:
            note = json.loads(payload)
        except ValueError:
            log.warning("undecodable inventory notification %r", payload[:200])
            return
        if note.get("origin") == self.replica_id:
            return  # this replica's own change: applied when it was made
        self._sync(None if note.get("op") == "reload" else list(note.get("names") or []))

    def _sync(self, names: Sequence[str] | None) -> None:
        """Make this replica's view of `names` (None: every peer) what the store has: apply
        removals, changes and additions to the engine, allocators and caches, and where
        this replica leads the switch, program them. Inventory events are the handling
        replica's; transitions the engine makes here are only noted."""
        with self._admin_lock:
            if names is None:
                stored = {p.name: p for p in self.store.list_peers()}
                with self._state_lock:
                    names = sorted(set(stored) | set(self._peers))
            else:
                stored = {p.name: p for p in self.store.get_peers(  # type: ignore[attr-defined]
                    names)}
            now = self.clock()
            removed: list[Peer] = []
            added: list[Peer] = []
            changed: list[tuple[Peer, Peer]] = []
            with self._state_lock:
                for name in names:
                    old, new = self._peers.get(name), stored.get(name)
                    if old is not None and new is None:
                        removed.append(dataclasses.replace(old))
                    elif new is not None and new.switch not in self.drivers:
                        continue
                    elif old is None and new is not None:
                        added.append(new)
                    elif old is not None and new is not None and old != new:
                        changed.append((dataclasses.replace(old), new))
            if removed:
                self._forget(removed)
            moved: set[str] = set()
            for old, new in changed:
                if (old.switch, old.index) != (new.switch, new.index):
                    self._claim(new)
                self._note_recorded(self._swap(old, new, now))
                moved.update({old.switch, new.switch})
            for switch in moved:
                driver = self.drivers[switch]
                if self._leads(switch) and driver.programmable:
                    driver.reconcile_or_request_setup("reconcile after a change")
            for old, new in changed:
                if (old.switch, old.index) != (new.switch, new.index) \
                        and old.index is not None and old.switch in self.drivers:
                    self.drivers[old.switch].allocator.release(old.index)
                    self._slots_left(old.switch, [old.index])
            by_switch: dict[str, list[Peer]] = {}
            for peer in added:
                self._claim(peer)
                self._note_recorded(self._register(peer, now))
                by_switch.setdefault(peer.switch, []).append(peer)
            for switch, group in by_switch.items():
                if not self._leads(switch):
                    continue
                driver = self.drivers[switch]
                try:
                    if driver.program_add(group, self._peers_of(switch)):
                        self._programmed(switch, [p.name for p in group])
                except DataPlaneError as exc:
                    # committed by another replica: never rolled back here; reconcile
                    log.warning("%s: programming %d added peers failed (%s); reconciling",
                                switch, len(group), exc)
                    driver.request_setup()

    def _claim(self, peer: Peer) -> None:
        """Take the slot the store gave `peer` (another replica chose it) in this view."""
        if peer.index is None:
            return
        driver = self.drivers[peer.switch]
        allocator = driver.allocator
        if peer.index in allocator.held:
            # this leader could not unprogram the slot's previous peer: a full reconcile
            # (stale entries first) runs before the new peer counts on it
            allocator.release_held([peer.index])
            driver.request_setup()
        if peer.index not in allocator:
            allocator.reserve(peer.index)
        allocator.needs_reset.add(peer.index)

    def _elected(self, switch: str, epoch: int) -> None:
        """Leader of `switch` (leadership thread): continue its peers' history from what it
        records (a transition the old leader did not get to write is written now, from
        this replica's warm engine), then become primary on the target."""
        try:
            recorded = self.store.last_states(switch)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("%s: reading the last recorded states failed: %s", switch, exc)
            recorded = {}
        now = self.clock()
        with self._state_lock:
            events: list[Event] = []
            for name, peer in self._peers.items():
                if peer.switch != switch:
                    continue
                # no transition yet: the peer is UNKNOWN in the history (added, never
                # heard from), whatever the old leader's engine had not written yet
                last = recorded.get(name, Health.UNKNOWN)
                self._recorded[name] = last
                state = self.engine.state(name)
                if state != last and state is not Health.UNKNOWN:
                    events.append(Event(
                        kind=EventKind.TRANSITION, time=now, peer=name, switch=switch,
                        old_state=last, new_state=state,
                        reason=f"observed by {self.replica_id} while taking over"))
            self._leading.add(switch)
            self._emit(events)
        log.info("%s: leader (epoch %d, election id %d)", switch, epoch,
                 self.config.election_id + epoch)
        self.drivers[switch].elected(epoch)

    def _deposed(self, switch: str) -> None:
        with self._state_lock:
            self._leading.discard(switch)
        self.drivers[switch].deposed()

    def _programmed(self, switch: str, names: Sequence[str]) -> None:
        """HA: the leader has programmed these peers of `switch` as they are: record it
        (the replica that took the write answers with it)."""
        if not self.ha or not names:
            return
        try:
            self.store.mark_programmed(switch, names, self.clock())  # type: ignore[attr-defined]
        except Exception as exc:  # the handler answers 202; the next reconcile marks them
            log.warning("%s: recording programmed peers failed: %s", switch, exc)

    def wait_programmed(self, names: Sequence[str]) -> float | None:
        """When the peers `names` were programmed as they are now: single process, at
        once (the write programmed them, or the switch's next setup will); HA, when their
        leaders recorded it, waiting up to `ha.program_wait_s`; None if not by then."""
        if not self.ha:
            return self.clock()
        deadline = time.monotonic() + self.config.ha.program_wait_s
        waiter = threading.Event()
        while True:
            try:
                found = self.store.programmed_at(names)  # type: ignore[attr-defined]
            except Exception as exc:
                log.warning("reading programmed_at failed: %s", exc)
                found = {}
            times = [found.get(n) for n in names]
            if all(t is not None for t in times):
                return max(t for t in times if t is not None) if times else self.clock()
            if time.monotonic() >= deadline:
                return None
            waiter.wait(0.05)  # the store has no push to the handler: poll it

    # -- HbmonService: health ---------------------------------------------------------------

    def health(self, name: str) -> PeerHealth:
        """One peer's health, its informational registers read now (polls read them only
        every detail interval): what one client asks for is never older than a poll."""
        with self._state_lock:
            peer = self._peers.get(name)
            if peer is None:
                raise NotFoundError("peer", name)
            switch, index = peer.switch, peer.index
        driver = self.drivers.get(switch)
        if driver is not None and index is not None and driver.ready:
            try:
                details = driver.read_details(index)
            except Exception as exc:  # the poll reports read failures; keep the last read
                log.debug("%s: reading details of %s failed: %s", switch, name, exc)
            else:
                with self._state_lock:
                    if self._by_index.get((switch, index)) == name:
                        self.engine.set_details(name, details)
        with self._state_lock:
            if name not in self._peers:
                raise NotFoundError("peer", name)
            health = self._with_next_hop_reason(self.engine.health(name))
            health.bfd = self.bfd_status(name)
            return health

    def all_health(self) -> list[PeerHealth]:
        with self._state_lock:
            out = [self._with_next_hop_reason(h)
                   for h in self.engine.health_many(self._sorted_peers()[0])]
            if self._bfd:
                for h in out:
                    h.bfd = self.bfd_status(h.name)
            return out

    def peer_listing(self) -> list[tuple[Peer, Health | None, float | None, str | None]]:
        with self._state_lock:
            names = self._sorted_peers()[0]
            peers = self._peers
            # the Peer objects themselves: a change replaces them (update_peer), never
            # edits them, which lets the API cache each peer's JSON by identity
            return [(peers[n], st, since, self._unresolved(n) or reason
                     if st is Health.UNKNOWN else reason)
                    for n, (st, since, reason) in zip(names, self.engine.reported(names),
                                                      strict=True)]

    def rtt_sample(self) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Every peer by name, its last RTT and whether that is current (UP or DEGRADED
        and answered): what the dashboard's RTT history samples every second, as arrays."""
        with self._state_lock:
            names, rows = self._sorted_peers()
            rtt, answering = self.engine.rtt_sample(rows)
            return names, rtt, answering

    def peer_columns(self) -> tuple[list[str], list[str], list[str], dict[str, npt.NDArray[Any]]]:
        """Every peer sorted by name, its switch and group, and its health as arrays
        (`HealthEngine.columns`): what /metrics exports, without an object per peer. The
        lists are shared and stay the same objects until the inventory changes."""
        with self._state_lock:
            names, rows = self._sorted_peers()
            cached = self._labels_cache
            if cached is None or cached[0] != self._inventory_version:
                cached = (self._inventory_version, [self._peers[n].switch for n in names],
                          [self._peers[n].group or "" for n in names])
                self._labels_cache = cached
            return names, cached[1], cached[2], self.engine.columns(rows)

    def _sorted_peers(self) -> tuple[list[str], npt.NDArray[np.intp]]:
        """Peer names sorted, and their engine rows, once per inventory change."""
        cached = self._sorted_cache
        if cached is None or cached[0] != self._inventory_version:
            names = sorted(self._peers)
            cached = (self._inventory_version, names, self.engine.rows(names))
            self._sorted_cache = cached
        return cached[1], cached[2]

    def summary(self) -> dict[Health, int]:
        counts = dict.fromkeys(Health, 0)
        with self._state_lock:
            for name in self._peers:
                counts[self.engine.state(name)] += 1
        return counts

    def switches(self) -> list[SwitchInfo]:
        out = []
        with self._state_lock:
            per_switch: dict[str, int] = {}
            for p in self._peers.values():
                per_switch[p.switch] = per_switch.get(p.switch, 0) + 1
        for name, driver in self.drivers.items():
            info = dataclasses.replace(driver.info)
            info.connected = driver.client.connected
            info.primary = driver.client.primary
            info.peers = per_switch.get(name, 0)
            out.append(info)
        return out

    def dataplane_counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Each switch's `hb_reason` counters, read now where the switch is ready (polls
        read them only every detail interval), else as last read."""
        for driver in self.drivers.values():
            if driver.ready:
                try:
                    driver.counters = driver.read_counters()
                except Exception as exc:  # the poll reports read failures
                    log.debug("%s: reading counters failed: %s", driver.name, exc)
        return {name: dict(d.counters) for name, d in self.drivers.items()}

    def ready(self) -> bool:
        return all(d.ready for d in self.drivers.values())
