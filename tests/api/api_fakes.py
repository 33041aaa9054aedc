"""An in-memory `HbmonService` for API unit tests: pure logic over a real store.

It behaves like the controller where the API can tell (inventory persisted in the store
first, all-or-nothing bulk calls, events for adds/removes/transitions through the sink,
indexes assigned per switch) but has no data plane: tests drive health with `set_state`
and `tick`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from hbmon.interfaces import EventSink, Store
from hbmon.model import (
    DataPlaneError,
    Event,
    EventKind,
    Health,
    NotFoundError,
    Peer,
    PeerHealth,
    SwitchInfo,
    ValidationError,
)
from hbmon.protocol import Reason

_LAB_BASE = int(ipaddress.IPv4Address("198.18.0.0"))


class FakeService:
    def __init__(
        self, store: Store, sink: EventSink, switches: Sequence[str] = ("default",),
    ) -> None:
        self.store = store
        self.sink = sink
        self._lock = threading.RLock()
        self.refuse_writes: str | None = None
        self._switches = {
            name: SwitchInfo(name=name, address=f"127.0.0.1:{9559 + i}", device_id=i + 1,
                             kind="kernel", connected=True, primary=True,
                             last_poll=time.time())
            for i, name in enumerate(switches)
        }
        self._peers: dict[str, Peer] = {p.name: p for p in store.list_peers()}
        now = time.time()
        self._health = {p.name: PeerHealth(p.name, p.switch, since=now, reason="restored")
                        for p in self._peers.values()}
        self.is_ready = True

    # ---- HbmonService ------------------------------------------------------------------

    def list_peers(self) -> list[Peer]:
        with self._lock:
            return sorted((dataclasses.replace(p) for p in self._peers.values()),
                          key=lambda p: p.name)

    def get_peer(self, name: str) -> Peer:
        with self._lock:
            if name not in self._peers:
                raise NotFoundError("peer", name)
            return dataclasses.replace(self._peers[name])

    def _free_indexes(self, switch: str) -> Iterator[int]:
        used = {p.index for p in self._peers.values() if p.switch == switch}
        return (i for i in range(65536) if i not in used)

    def add_peers(self, peers: Sequence[Peer]) -> list[Peer]:
        with self._lock:
            if self.refuse_writes is not None:  # a switch that cannot take the change
                raise DataPlaneError(self.refuse_writes)
            placed = []
            free: dict[str, Iterator[int]] = {}
            for i, peer in enumerate(peers):
                if peer.switch not in self._switches:
                    raise ValidationError(
                        "switch" if len(peers) == 1 else f"peers[{i}].switch",
                        f"unknown switch {peer.switch!r}")
                peer = dataclasses.replace(peer, labels=dict(peer.labels))
                if peer.index is None:
                    if peer.switch not in free:
                        free[peer.switch] = self._free_indexes(peer.switch)
                    peer.index = next(free[peer.switch])
                placed.append(peer)
            self.store.add_peers(placed)  # raises ConflictError; nothing applied then
            now = time.time()
            for peer in placed:
                self._peers[peer.name] = peer
                self._health[peer.name] = PeerHealth(
                    peer.name, peer.switch,
                    state=Health.ADMIN_DOWN if peer.admin_down else Health.UNKNOWN,
                    since=now, reason="added")
            self.sink.publish([
                Event(EventKind.PEER_ADDED, now, peer=p.name, switch=p.switch,
                      details={"index": p.index, "address": p.address}) for p in placed])
            return [dataclasses.replace(p) for p in placed]

    def update_peer(self, name: str, changes: dict[str, Any]) -> Peer:
        with self._lock:
            current = self.get_peer(name)
            merged = Peer(**{**current.to_dict(), **changes})
            if merged.switch not in self._switches:
                raise ValidationError("switch", f"unknown switch {merged.switch!r}")
            merged.validate()
            self.store.update_peer(merged)
            self._peers[name] = merged
            now = time.time()
            events = [Event(EventKind.PEER_UPDATED, now, peer=name, switch=merged.switch,
                            details={"changed": sorted(changes)})]
            if merged.admin_down != current.admin_down:
                new = Health.ADMIN_DOWN if merged.admin_down else Health.UNKNOWN
                events.append(self._transition(name, new, "admin", now))
            self.sink.publish(events)
            return dataclasses.replace(merged)

    def remove_peers(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                if name not in self._peers:
                    raise NotFoundError("peer", name)
            self.store.remove_peers(names)
            now = time.time()
            events = []
            for name in dict.fromkeys(names):
                peer = self._peers.pop(name)
                self._health.pop(name, None)
                events.append(Event(EventKind.PEER_REMOVED, now, peer=name, switch=peer.switch))
            self.sink.publish(events)

    def health(self, name: str) -> PeerHealth:
        with self._lock:
            if name not in self._health:
                raise NotFoundError("peer", name)
            return dataclasses.replace(self._health[name])

    def all_health(self) -> list[PeerHealth]:
        with self._lock:
            return [dataclasses.replace(h) for h in self._health.values()]

    def peer_listing(self) -> list[tuple[Peer, Health | None, float | None, str | None]]:
        with self._lock:
            out: list[tuple[Peer, Health | None, float | None, str | None]] = []
            for p in sorted(self._peers.values(), key=lambda p: p.name):
                h = self._health.get(p.name)
                out.append((dataclasses.replace(p), h.state, h.since, h.reason) if h
                           else (dataclasses.replace(p), None, None, None))
            return out

    def summary(self) -> dict[Health, int]:
        with self._lock:
            counts = dict.fromkeys(Health, 0)
            for h in self._health.values():
                counts[h.state] += 1
            return counts

    def switches(self) -> list[SwitchInfo]:
        with self._lock:
            out = []
            for sw in self._switches.values():
                n = sum(1 for p in self._peers.values() if p.switch == sw.name)
                out.append(dataclasses.replace(sw, peers=n))
            return out

    def dataplane_counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        with self._lock:
            out = {}
            for sw in self._switches:
                rx = sum(h.slot.rx_count for h in self._health.values() if h.switch == sw)
                tx = sum(h.slot.tx_count for h in self._health.values() if h.switch == sw)
                out[sw] = {r.name: (0, 0) for r in Reason}
                out[sw]["RESPONSE_RECORDED"] = (rx, rx * 74)
                out[sw]["REQUEST_SENT"] = (tx, tx * 74)
            return out

    def ready(self) -> bool:
        return self.is_ready

    # ---- test controls -----------------------------------------------------------------

    def _transition(self, name: str, new: Health, reason: str, now: float) -> Event:
        h = self._health[name]
        old = h.state
        h.state, h.since, h.reason = new, now, reason
        return Event(EventKind.TRANSITION, now, peer=name, switch=h.switch, old_state=old,
                     new_state=new, reason=reason)

    def set_state(self, name: str, state: Health, reason: str = "test") -> Event:
        with self._lock:
            if name not in self._health:
                raise NotFoundError("peer", name)
            event = self._transition(name, state, reason, time.time())
        return self.sink.publish([event])[0]

    def set_states(self, states: dict[str, Health], reason: str = "test") -> list[Event]:
        with self._lock:
            now = time.time()
            events = [self._transition(n, s, reason, now) for n, s in states.items()]
        return self.sink.publish(events)

    def tick(self, rtt_us: dict[str, int] | None = None, default_rtt_us: int = 250) -> None:
        """One heartbeat round: UP/DEGRADED peers answer, DOWN ones miss."""
        with self._lock:
            now = time.time()
            for h in self._health.values():
                s = h.slot
                answered = h.state in (Health.UP, Health.DEGRADED)
                rtt = (rtt_us or {}).get(h.name, default_rtt_us)
                if answered:
                    h.slot = dataclasses.replace(
                        s, rx_count=s.rx_count + 1, tx_count=s.tx_count + 1,
                        last_seq=s.last_seq + 1, rtt_last_us=rtt,
                        rtt_min_us=min(s.rtt_min_us or rtt, rtt), rtt_max_us=max(s.rtt_max_us,
                                                                                 rtt),
                        rtt_ewma_us=(s.rtt_ewma_us * 7 + rtt) // 8 if s.rtt_ewma_us else rtt)
                    h.rtt_avg_us = h.slot.rtt_ewma_us
                elif h.state != Health.ADMIN_DOWN:
                    h.slot = dataclasses.replace(s, tx_count=s.tx_count + 1,
                                                 miss_count=s.miss_count + 1)
                tx = h.slot.tx_count
                h.loss_ratio = h.slot.miss_count / tx if tx else 0.0
                h.sampled_at = now
            for sw in self._switches.values():
                sw.last_poll = now


def make_peers(n: int, *, switch: str = "default", groups: int = 4,
               prefix: str = "peer") -> list[Peer]:
    peers = []
    for i in range(n):
        peers.append(Peer(
            name=f"{prefix}-{i:04d}", address=str(ipaddress.IPv4Address(_LAB_BASE + i + 1)),
            peer_id=i + 1, mac=f"02:00:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            port=1 + i % 8, switch=switch, group=f"rack-{i % groups}" if groups else None,
        ))
    return peers
