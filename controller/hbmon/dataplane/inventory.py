"""Peer inventory -> data-plane state: index allocation and the entries a peer needs.

Pure logic (no I/O): the controller asks `IndexAllocator` for a slot, programs the
entities `peer_entities` describes, and diffs what it reads back from a target against
`desired_state` to reconcile (`plan_reconcile`).

A peer owns one index per switch: the same index addresses its slot in every register,
its `peer_requests` entry and its replica (instance = index) of the fan-out group
(docs/dataplane.md). A BFD session (a peer of kind bfd, docs/bfd.md) takes its index from
the same allocator and owns `bfd_sessions`, `bfd_peers` and `bfd_requests` entries and a
replica in the BFD fan-out group 2 instead.

Freed indexes are reused lowest first; the caller resets a slot before a new peer's
entries point at it (`needs_reset`), so a new peer never inherits counters. An index
whose old entries may still be on the target (unprogramming failed) is `hold`-ed out of
the free pool until a reconcile has removed them (`release_held`).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hbmon import bfd_packet
from hbmon.model import ConflictError, Peer, ValidationError
from hbmon.p4 import MulticastGroup, P4Schema, Replica, TableEntry
from hbmon.protocol import FANOUT_GROUP, MAX_PEERS, derive_nonce_key

PEERS_TABLE = "HbIngress.peers"
PEER_IDS_TABLE = "HbIngress.peer_ids"
REQUESTS_TABLE = "HbEgress.peer_requests"
PEER_TABLES = (PEERS_TABLE, PEER_IDS_TABLE, REQUESTS_TABLE)
BFD_SESSIONS_TABLE = "HbIngress.bfd_sessions"
BFD_PEERS_TABLE = "HbIngress.bfd_peers"
BFD_REQUESTS_TABLE = "HbEgress.bfd_requests"
BFD_TABLES = (BFD_SESSIONS_TABLE, BFD_PEERS_TABLE, BFD_REQUESTS_TABLE)
# the bfd_control params the session state machine decides (the rest is addressing)
BFD_CONTROL_PARAMS = ("state", "diag", "flags", "detect_mult", "desired_min_tx_us",
                      "required_min_rx_us", "tx_interval_us", "detect_time_us")


def has_bfd(schema: P4Schema) -> bool:
    """The P4Info has the BFD tables (docs/bfd.md "P4Info additions")."""
    try:
        schema.table(BFD_REQUESTS_TABLE)
    except KeyError:
        return False
    return True


def tables_of(schema: P4Schema) -> tuple[str, ...]:
    """The tables the controller owns on a target running `schema`."""
    return PEER_TABLES + BFD_TABLES if has_bfd(schema) else PEER_TABLES


class IndexAllocator:
    """Slots 0 .. size-1 of one switch. Lowest free first, so reads of a dense prefix
    cover every peer. Thread-safe: API threads allocate while a switch's thread
    reconciles and releases held indexes."""

    def __init__(self, size: int = MAX_PEERS) -> None:
        self.size = size
        self._lock = threading.RLock()
        self._used: set[int] = set()
        self._free_heap: list[int] = []  # released indexes (below _next)
        self._next = 0  # every index >= _next is free and was never handed out
        self._held: set[int] = set()  # freed, but the target may still point at them
        # slots whose registers may hold a previous occupant's values (set operations are
        # atomic under the GIL; the controller persists the ones a removal left behind)
        self.needs_reset: set[int] = set()

    def __len__(self) -> int:
        return len(self._used)

    def __contains__(self, index: int) -> bool:
        return index in self._used

    @property
    def used(self) -> frozenset[int]:
        return frozenset(self._used)

    def reserve(self, index: int) -> None:
        """Claim a known index (a persisted peer's)."""
        if not 0 <= index < self.size:
            raise ValidationError("index", f"must be 0 .. {self.size - 1}")
        with self._lock:
            if index in self._used:
                raise ConflictError("index", f"index {index} is already used")
            if index in self._held:
                raise ConflictError("index", f"index {index} is being cleaned up on the "
                                    "target; try again after the next reconcile")
            self._used.add(index)
            if index >= self._next:
                for free in range(self._next, index):
                    heapq.heappush(self._free_heap, free)
                self._next = index + 1
            # a reserved index below _next may still sit in the heap; allocate() skips it

    def allocate(self) -> int:
        with self._lock:
            while self._free_heap:
                index = heapq.heappop(self._free_heap)
                if index not in self._used and index not in self._held:
                    self._used.add(index)
                    return index
            if self._next >= self.size:
                raise ConflictError("index", f"all {self.size} peer slots are in use")
            index = self._next
            self._next += 1
            self._used.add(index)
            return index

    def release(self, index: int) -> None:
        with self._lock:
            if index not in self._used:
                return
            self._used.discard(index)
            self.needs_reset.add(index)
            heapq.heappush(self._free_heap, index)

    def hold(self, index: int) -> None:
        """Free `index` but keep it out of the pool: the target may still hold entries
        that send another peer's answers to it (a removal whose unprogramming failed)."""
        with self._lock:
            self._used.discard(index)
            self._held.add(index)
            self.needs_reset.add(index)

    @property
    def held(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._held)

    def release_held(self, indexes: Iterable[int]) -> None:
        """A reconcile that started after these were held has removed their entries."""
        with self._lock:
            for index in indexes:
                if index in self._held:
                    self._held.discard(index)
                    heapq.heappush(self._free_heap, index)

    def mark_reset(self, index: int) -> None:
        self.needs_reset.discard(index)

    @property
    def high_water(self) -> int:
        """One past the largest index in use (0 when empty)."""
        return max(self._used) + 1 if self._used else 0


@dataclass(frozen=True, slots=True)
class PeerGuard:
    """A switch's anti-forgery parameters of peer entries (docs/protocol.md, version 2).

    `secret`: the controller's nonce secret (from the store, the same for every replica and
    restart); `min_ttl`: 255 with GTSM on for the switch, else 0 (no TTL check)."""

    secret: bytes
    switch: str
    min_ttl: int = 0

    def nonce_key(self, peer: Peer) -> int:
        """Derived from where the peer sits (switch, index, peer id): a peer that moves to
        another slot gets another key, so a late answer to the old slot's requests fails."""
        if peer.index is None:
            raise ValueError(f"peer {peer.name!r} has no index")
        return derive_nonce_key(self.secret, self.switch, peer.index, peer.peer_id)


    def discriminator(self, peer: Peer) -> int:
        """A BFD session's local discriminator (docs/bfd.md): unique per switch by its
        index, not guessable by the high bits from the same keyed HMAC as nonce keys."""
        return bfd_packet.local_discriminator(self.nonce_key(peer), peer.index or 0)


def peer_entities(peer: Peer, default_detect_mult: int, guard: PeerGuard,
                  bfd_control: Mapping[str, int] | None = None) -> list[TableEntry]:
    """The three table entries that make `peer` known to the data plane. The nonce key goes
    into both the ingress entry (to check answers) and the egress one (to stamp requests).
    A peer whose next hop is unresolved (`mac` None) gets no request entry (and no replica:
    `fanout_group`), so no request is sent to it; its ingress entries stay. A bfd peer's
    are `bfd_entities` (`bfd_control`: its session's `BFD_CONTROL_PARAMS`)."""
    if peer.index is None:
        raise ValueError(f"peer {peer.name!r} has no index")
    if peer.is_bfd:
        return bfd_entities(peer, guard, bfd_control)
    detect = peer.detect_mult or default_detect_mult
    key = guard.nonce_key(peer)
    entries = [
        TableEntry(PEERS_TABLE, {"src_addr": peer.address, "peer_id": peer.peer_id},
                   "HbIngress.set_peer_index",
                   {"index": peer.index, "nonce_key": key, "min_ttl": guard.min_ttl}),
        TableEntry(PEER_IDS_TABLE, {"peer_id": peer.peer_id}, "HbIngress.peer_id_known"),
    ]
    if peer.mac is not None:
        entries.append(TableEntry(
            REQUESTS_TABLE, {"index": peer.index}, "HbEgress.rewrite_request",
            {"dst_mac": peer.mac, "dst_addr": peer.address, "peer_id": peer.peer_id,
             "detect_mult": detect, "nonce_key": key}))
    return entries


# a bfd_control of a session not known to the state machine (yet): Down, slow (RFC 5880
# section 6.8.3: at least 1 s while not Up), no detection
_BFD_DOWN = {"state": 1, "diag": 0, "flags": 0, "detect_mult": 3,
             "desired_min_tx_us": bfd_packet.SLOW_TX_US,
             "required_min_rx_us": bfd_packet.SLOW_TX_US,
             "tx_interval_us": bfd_packet.SLOW_TX_US, "detect_time_us": 0}


def bfd_request_entry(peer: Peer, guard: PeerGuard,
                      control: Mapping[str, int] | None) -> TableEntry:
    """`bfd_requests[index]`: where and what the session's control packets say
    (docs/bfd.md "Transmit"); the peer must have its MAC (resolved)."""
    assert peer.index is not None and peer.mac is not None
    params: dict[str, Any] = {
        "dst_mac": peer.mac, "dst_addr": peer.address,
        "src_port": bfd_packet.source_port(peer.index),
        "my_disc": guard.discriminator(peer)}
    params.update({k: int(v) for k, v in (control or _BFD_DOWN).items()
                   if k in BFD_CONTROL_PARAMS})
    return TableEntry(BFD_REQUESTS_TABLE, {"index": peer.index}, "HbEgress.bfd_control",
                      params)


def bfd_entities(peer: Peer, guard: PeerGuard,
                 control: Mapping[str, int] | None) -> list[TableEntry]:
    """A BFD session's entries: our discriminator and (remote address, port) to its index
    (the receive lookups, docs/bfd.md checks 5-6), and its `bfd_requests` entry unless its
    next hop is unresolved."""
    assert peer.index is not None
    session = {"index": peer.index}
    entries = [
        TableEntry(BFD_SESSIONS_TABLE, {"your_disc": guard.discriminator(peer)},
                   "HbIngress.set_bfd_session", session),
        TableEntry(BFD_PEERS_TABLE, {"src_addr": peer.address, "port": peer.port},
                   "HbIngress.set_bfd_session", session),
    ]
    if peer.mac is not None:
        entries.append(bfd_request_entry(peer, guard, control))
    return entries


def fanout_group(peers: Iterable[Peer]) -> MulticastGroup:
    """Group 1 with one replica per monitored heartbeat peer (admin-down peers and peers
    whose next hop is unresolved get no requests)."""
    replicas = sorted(
        (Replica(p.port, p.index) for p in peers
         if p.index is not None and not p.admin_down and p.mac is not None and not p.is_bfd),
        key=lambda r: (r.instance, r.port),
    )
    return MulticastGroup(FANOUT_GROUP, tuple(replicas))


def bfd_group(peers: Iterable[Peer]) -> MulticastGroup:
    """Group 2 with one replica per BFD session whose next hop is known. Admin-down
    sessions keep theirs: they send AdminDown (RFC 5880 section 6.8.16)."""
    replicas = sorted(
        (Replica(p.port, p.index) for p in peers
         if p.index is not None and p.mac is not None and p.is_bfd),
        key=lambda r: (r.instance, r.port),
    )
    return MulticastGroup(bfd_packet.FANOUT_GROUP, tuple(replicas))


@dataclass(slots=True)
class DesiredState:
    entries: dict[tuple[Any, ...], TableEntry]  # key -> normalized entry
    group: MulticastGroup
    bfd_group: MulticastGroup | None = None  # None: the P4Info has no BFD


def desired_state(schema: P4Schema, peers: Sequence[Peer], default_detect_mult: int,
                  guard: PeerGuard,
                  bfd_controls: Mapping[str, Mapping[str, int]] | None = None) -> DesiredState:
    """`bfd_controls`: peer name -> its session's bfd_control params (see `peer_entities`)."""
    entries: dict[tuple[Any, ...], TableEntry] = {}
    bfd = has_bfd(schema)
    for peer in peers:
        if peer.is_bfd and not bfd:
            continue  # a pipeline without BFD: the session cannot be programmed
        control = (bfd_controls or {}).get(peer.name)
        for entry in peer_entities(peer, default_detect_mult, guard, control):
            norm = entry.normalized(schema)
            entries[norm.key(schema)] = norm
    return DesiredState(entries, fanout_group(peers), bfd_group(peers) if bfd else None)


@dataclass(slots=True)
class ReconcilePlan:
    """What to write so a target holds exactly the desired state."""

    insert: list[TableEntry] = field(default_factory=list)
    modify: list[TableEntry] = field(default_factory=list)
    delete: list[TableEntry] = field(default_factory=list)
    # group id -> ("insert" | "modify" | "delete", the group to write)
    groups: dict[int, tuple[str, MulticastGroup]] = field(default_factory=dict)

    @property
    def group_action(self) -> str | None:
        """What happens to the heartbeat fan-out group 1."""
        change = self.groups.get(FANOUT_GROUP)
        return change[0] if change else None

    @property
    def group(self) -> MulticastGroup | None:
        change = self.groups.get(FANOUT_GROUP)
        return change[1] if change else None

    @property
    def empty(self) -> bool:
        return not (self.insert or self.modify or self.delete or self.groups)

    def summary(self) -> dict[str, int | str | None]:
        bfd = self.groups.get(bfd_packet.FANOUT_GROUP)
        return {"insert": len(self.insert), "modify": len(self.modify),
                "delete": len(self.delete), "group": self.group_action,
                "bfd_group": bfd[0] if bfd else None}


def plan_reconcile(schema: P4Schema, desired: DesiredState, actual_entries: Iterable[TableEntry],
                   actual_groups: Iterable[MulticastGroup]) -> ReconcilePlan:
    """Diff read-back state against the desired one. Only the peer and BFD tables and the
    fan-out groups are ours; other tables (l2_forward) and groups are left alone."""
    plan = ReconcilePlan()
    seen: set[tuple[Any, ...]] = set()
    ours = {schema.table(t).name for t in tables_of(schema)}
    for entry in actual_entries:
        if entry.table not in ours or entry.is_default:
            continue
        key = entry.key(schema)
        want = desired.entries.get(key)
        if want is None or key in seen:
            plan.delete.append(entry)
            continue
        seen.add(key)
        if (want.action, dict(want.params)) != (entry.action, dict(entry.params)):
            plan.modify.append(want)
    plan.insert = [e for k, e in desired.entries.items() if k not in seen]

    actual = {g.id: g for g in actual_groups}
    for wanted in (desired.group, desired.bfd_group):
        if wanted is None:
            continue
        group = actual.get(wanted.id)
        want_replicas = sorted(wanted.replicas, key=lambda r: (r.instance, r.port))
        if not want_replicas:
            if group is not None:
                plan.groups[wanted.id] = ("delete", MulticastGroup(wanted.id))
        elif group is None:
            plan.groups[wanted.id] = ("insert", wanted)
        elif sorted(group.replicas, key=lambda r: (r.instance, r.port)) != want_replicas:
            plan.groups[wanted.id] = ("modify", wanted)
    return plan
