"""Domain objects shared by the controller, the store, the REST API and the CLI.

Plain typed dataclasses: no I/O here. The controller (`hbmon.controller.fabric`) produces them,
the store (`hbmon.store.sql`) persists them, the API (`hbmon.api`) serialises them.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field, fields
from typing import Any

from hbmon.protocol import ValidationError


class Health(enum.StrEnum):
    UNKNOWN = "UNKNOWN"  # never heard from since it was added (or since the controller started)
    UP = "UP"
    DEGRADED = "DEGRADED"  # alive but slow, lossy, self-reported degraded/draining, or flapping
    DOWN = "DOWN"
    ADMIN_DOWN = "ADMIN_DOWN"  # an operator disabled monitoring of this peer


# the reported states by number (index in this tuple): the health engine's state column and
# the metrics' reading of it
HEALTHS: tuple[Health, ...] = tuple(Health)
assert HEALTHS[0] == Health.UNKNOWN  # a zeroed row


class EventKind(enum.StrEnum):
    TRANSITION = "transition"
    PEER_ADDED = "peer_added"
    PEER_UPDATED = "peer_updated"
    PEER_REMOVED = "peer_removed"
    SWITCH = "switch"  # a target connected / disconnected / became primary


class ConflictError(ValueError):
    """Input that clashes with existing state (API 409): duplicate name, address, id."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class NotFoundError(KeyError):
    """Unknown peer or switch (API 404)."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"{what} {name!r} not found")
        self.what = what
        self.name = name

    def __str__(self) -> str:
        return f"{self.what} {self.name!r} not found"


class DataPlaneError(RuntimeError):
    """A switch refused or could not take a change; nothing was left half applied (API 503)."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


PEER_KINDS = ("heartbeat", "bfd")
# RFC 5880 BFD sessions (kind "bfd", docs/bfd.md): defaults of the operator's timers
BFD_DEFAULT_TX_MS = 300
BFD_DEFAULT_RX_MS = 300
BFD_DEFAULT_MULT = 3
_BFD_MAX_MS = 60_000  # a minute: far beyond any BFD use, and the microseconds fit 32 bits
_BFD_ONLY = ("desired_min_tx_ms", "required_min_rx_ms")


@dataclass(slots=True)
class Peer:
    """A monitored peer as the operator declares it: a heartbeat responder (kind
    "heartbeat", docs/protocol.md) or an RFC 5880 BFD neighbour (kind "bfd", docs/bfd.md:
    no peer_id, which stays 0; BFD timers instead)."""

    name: str
    address: str  # IPv4 the peer answers from (and requests are sent to)
    peer_id: int  # identity carried in the heartbeat header, unique per switch; 0 for bfd
    # next-hop MAC the requests are sent to; None: the controller resolves it from the
    # host's neighbour table through the interface of `port` (hbmon.dataplane.neighbours)
    mac: str | None
    port: int  # data-plane port the peer is reached through
    switch: str = "default"  # which target (switch / host) monitors it
    group: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    detect_mult: int | None = None  # None: the switch's default
    admin_down: bool = False
    index: int | None = None  # slot in the data plane, assigned by the controller
    kind: str = "heartbeat"  # "heartbeat" | "bfd"
    # bfd only (None for heartbeat peers): RFC 5880 bfd.DesiredMinTxInterval and
    # bfd.RequiredMinRxInterval in milliseconds; detect_mult is bfd.DetectMult
    desired_min_tx_ms: int | None = None
    required_min_rx_ms: int | None = None
    # runtime only, never stored or accepted as input: the resolved next hop of a peer
    # without `mac` (`NextHop.to_dict()`), replaced with the Peer object when it changes
    next_hop: dict[str, Any] | None = field(default=None, compare=False)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ValidationError("name", "1-63 chars of letters, digits, '_', '.', ':', '-'")
        try:
            addr = ipaddress.IPv4Address(self.address)
        except ValueError as exc:
            raise ValidationError("address", f"not an IPv4 address: {self.address!r}") from exc
        if addr.is_multicast or addr.is_unspecified or int(addr) == 0xFFFFFFFF:
            raise ValidationError("address", f"not a unicast address: {self.address}")
        if self.kind not in PEER_KINDS:
            raise ValidationError("kind", f"must be one of {', '.join(PEER_KINDS)}")
        if self.kind == "bfd":
            if self.peer_id != 0:
                raise ValidationError("peer_id", "bfd peers have no peer_id (omit it)")
            for name in _BFD_ONLY:
                value = getattr(self, name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not 1 <= value <= _BFD_MAX_MS:
                    raise ValidationError(name, f"must be an integer 1 .. {_BFD_MAX_MS} (ms)")
        else:
            if isinstance(self.peer_id, bool) or not isinstance(self.peer_id, int) \
                    or not 0 < self.peer_id < 2**32:
                raise ValidationError("peer_id", "must be 1 .. 4294967295")
            for name in _BFD_ONLY:
                if getattr(self, name) is not None:
                    raise ValidationError(name, "only for peers of kind bfd")
        if self.mac is not None and not _MAC.match(self.mac):
            raise ValidationError("mac", f"not a MAC address: {self.mac!r}")
        if not 0 <= self.port < 511:
            raise ValidationError("port", "must be 0 .. 510")
        if self.detect_mult is not None and not 1 <= self.detect_mult <= 255:
            raise ValidationError("detect_mult", "must be 1 .. 255")
        if self.index is not None and not 0 <= self.index < 65536:
            raise ValidationError("index", "must be 0 .. 65535")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValidationError("labels", "keys and values must be strings")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "address": self.address, "peer_id": self.peer_id,
            "mac": self.mac.lower() if self.mac else None, "port": self.port,
            "switch": self.switch, "group": self.group, "labels": dict(self.labels),
            "detect_mult": self.detect_mult, "admin_down": self.admin_down, "index": self.index,
            "kind": self.kind,
        }
        if self.kind == "bfd":
            out["desired_min_tx_ms"] = self.desired_min_tx_ms
            out["required_min_rx_ms"] = self.required_min_rx_ms
        if self.mac is None:  # resolved by the controller: where the requests go (output only)
            out["next_hop"] = dict(self.next_hop) if self.next_hop else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Peer:
        known = {f for f in cls.__dataclass_fields__} - {"next_hop"}  # next_hop: output only
        unknown = set(data) - known
        if unknown:
            raise ValidationError(sorted(unknown)[0], "unknown field")
        data = {k: v for k, v in data.items() if k not in ("peer_id", *_BFD_ONLY)
                or v is not None}  # null: absent (the API's models send every field)
        if data.get("kind", "heartbeat") not in PEER_KINDS:  # before what depends on it
            raise ValidationError("kind", f"must be one of {', '.join(PEER_KINDS)}")
        bfd = data.get("kind") == "bfd"
        for required in ("name", "address", "port") if bfd else (
                "name", "address", "peer_id", "port"):
            if required not in data:
                raise ValidationError(required, "field required")
        if bfd:  # the defaults are filled in, so every reader sees the timers in force
            data = {"peer_id": 0, "desired_min_tx_ms": BFD_DEFAULT_TX_MS,
                    "required_min_rx_ms": BFD_DEFAULT_RX_MS, **data}
            if data.get("detect_mult") is None:
                data["detect_mult"] = BFD_DEFAULT_MULT
        peer = cls(**{"mac": None, **data})
        peer.validate()
        return peer

    @property
    def is_bfd(self) -> bool:
        return self.kind == "bfd"


@dataclass(frozen=True, slots=True)
class Slot:
    """One peer's slot of the health-check structure as read from the data plane."""

    rx_count: int = 0
    tx_count: int = 0
    dup_count: int = 0
    miss_count: int = 0
    last_seq: int = 0
    last_rx_us: int = 0
    last_tx_us: int = 0
    rtt_last_us: int = 0
    rtt_min_us: int = 0
    rtt_max_us: int = 0
    rtt_ewma_us: int = 0
    peer_status: int = 0
    peer_load: int = 0
    state: int = 0
    last_tx_seq: int = 0  # sequence of the last request sent (protocol v2's window end)


# Slot fields in contract (register) order: what a poll reads, the health engine's rows.
SLOT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Slot))


@dataclass(slots=True)
class PeerHealth:
    """What the controller concluded about a peer, with the numbers behind it."""

    name: str
    switch: str
    state: Health = Health.UNKNOWN
    since: float = 0.0  # wall-clock seconds of the last transition
    reason: str = "added"
    slot: Slot = field(default_factory=Slot)
    loss_ratio: float = 0.0  # over the health engine's window
    rtt_avg_us: int = 0  # the data plane's EWMA
    sampled_at: float = 0.0  # wall-clock seconds of the read that produced `slot`
    # BFD peers: the session (`hbmon.controller.bfd`) as `BfdStatus.to_dict()` gives it
    bfd: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.slot
        out: dict[str, Any] = {
            "name": self.name, "switch": self.switch, "state": str(self.state),
            "since": self.since, "reason": self.reason, "rx_count": s.rx_count,
            "tx_count": s.tx_count, "dup_count": s.dup_count, "miss_count": s.miss_count,
            "last_seq": s.last_seq, "rtt_last_us": s.rtt_last_us, "rtt_min_us": s.rtt_min_us,
            "rtt_max_us": s.rtt_max_us, "rtt_avg_us": self.rtt_avg_us,
            "loss_ratio": self.loss_ratio, "reported_status": s.peer_status,
            "load": s.peer_load, "plane_state": s.state, "sampled_at": self.sampled_at,
        }
        if self.bfd is not None:
            out["bfd"] = dict(self.bfd)
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A state transition or an inventory change. `id` is assigned by the store (0 = not yet)."""

    kind: EventKind
    time: float  # wall-clock seconds
    peer: str | None = None
    switch: str | None = None
    old_state: Health | None = None
    new_state: Health | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": str(self.kind), "time": self.time, "peer": self.peer,
            "switch": self.switch,
            "old_state": str(self.old_state) if self.old_state else None,
            "new_state": str(self.new_state) if self.new_state else None,
            "reason": self.reason, "details": dict(self.details),
        }


@dataclass(slots=True)
class SwitchInfo:
    """A data-plane target the controller drives and its connection state."""

    name: str
    address: str  # gRPC host:port
    device_id: int
    kind: str  # "kernel" | "bmv2"
    connected: bool = False
    primary: bool = False
    last_error: str | None = None
    last_poll: float = 0.0  # wall-clock seconds of the last successful read
    peers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "device_id": self.device_id,
            "kind": self.kind, "connected": self.connected, "primary": self.primary,
            "last_error": self.last_error, "last_poll": self.last_poll, "peers": self.peers,
        }
