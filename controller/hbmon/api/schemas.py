"""Request and response shapes (pydantic) for validation and the OpenAPI document.

Requests are parsed with these models, then turned into `hbmon.model.Peer` and validated
by the domain rules (`Peer.validate`), which name the field. Responses are built from the
domain objects' `to_dict()`; the models here document them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hbmon.model import EventKind, Health


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_KIND = ("`heartbeat`: a heartbeat responder (docs/protocol.md); `bfd`: an RFC 5880 BFD "
         "neighbour (docs/bfd.md), which has no peer_id")
_TX = "BFD only: bfd.DesiredMinTxInterval in ms (default 300; 1 s while not Up)"
_RX = "BFD only: bfd.RequiredMinRxInterval in ms (default 300)"


class PeerIn(_Strict):
    name: str = Field(description="Unique name: letters, digits, '_', '.', ':', '-'")
    address: str = Field(description="IPv4 address the peer answers from")
    kind: Literal["heartbeat", "bfd"] = Field("heartbeat", description=_KIND)
    peer_id: int | None = Field(
        None, description="Identity in the heartbeat header, unique per switch; required "
        "for heartbeat peers, absent for bfd peers")
    mac: str | None = Field(
        None, description="Next-hop MAC address the requests are sent to; null or absent: "
        "resolved from the controller host's neighbour table through the port's interface")
    port: int = Field(description="Data-plane port the peer is reached through")
    switch: str = "default"
    group: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    detect_mult: int | None = Field(
        None, description="Misses before DOWN; null: switch default (BFD: bfd.DetectMult, "
        "default 3)")
    admin_down: bool = False
    index: int | None = Field(None, description="Data-plane slot; normally assigned")
    desired_min_tx_ms: int | None = Field(None, description=_TX)
    required_min_rx_ms: int | None = Field(None, description=_RX)


class PeerPatch(_Strict):
    """Fields to change; the name cannot change (remove and add instead)."""

    name: str | None = None
    address: str | None = None
    peer_id: int | None = None
    mac: str | None = None
    port: int | None = None
    switch: str | None = None
    group: str | None = None
    labels: dict[str, str] | None = None
    detect_mult: int | None = None
    admin_down: bool | None = None
    kind: Literal["heartbeat", "bfd"] | None = Field(None, description="Cannot change")
    desired_min_tx_ms: int | None = Field(None, description=_TX)
    required_min_rx_ms: int | None = Field(None, description=_RX)


class BulkAdd(_Strict):
    peers: list[PeerIn]


class BulkRemove(_Strict):
    names: list[str]


class NextHopOut(BaseModel):
    address: str | None = Field(description="The next hop: the gateway, or the peer itself")
    mac: str | None = Field(description="Its MAC; null while unresolved")
    state: str = Field(description="Neighbour entry state (REACHABLE, STALE, FAILED, ...), "
                       "or NONE / NO_ROUTE / NO_INTERFACE")
    interface: str | None
    reason: str | None = Field(description="Why it is unresolved")


class PeerOut(BaseModel):
    name: str
    address: str
    peer_id: int
    mac: str | None = Field(description="As declared; null: resolved (see next_hop)")
    port: int
    switch: str
    group: str | None
    labels: dict[str, str]
    detect_mult: int | None
    admin_down: bool
    index: int | None
    kind: Literal["heartbeat", "bfd"] = "heartbeat"
    desired_min_tx_ms: int | None = Field(None, description="BFD peers only")
    required_min_rx_ms: int | None = Field(None, description="BFD peers only")
    next_hop: NextHopOut | None = Field(
        None, description="Peers without a declared MAC: the resolved next hop")
    state: Health | None = None
    since: float | None = None
    reason: str | None = None
    health: dict[str, Any] | None = Field(None, description="With include=health")
    programmed_at: float | None = Field(
        None, description="Replies to an add: when the switch's leader programmed the peer "
        "(wall-clock seconds); null in a 202 (not programmed yet)")


class PeerList(BaseModel):
    total: int = Field(description="Peers matching the filters, before limit/offset")
    peers: list[PeerOut]


class AddedList(PeerList):
    programmed_at: float | None = Field(
        description="When the last of the peers was programmed by its switch's leader; "
        "null in a 202 (not all programmed yet)")


class BfdSessionOut(BaseModel):
    """A BFD peer's session (RFC 5880 section 6.8.1 variables; docs/bfd.md)."""

    state: Literal["ADMIN_DOWN", "DOWN", "INIT", "UP"] = Field(description="Ours")
    diag: int = Field(description="Our diagnostic (RFC 5880 section 4.1)")
    local_discriminator: int | None
    remote_state: Literal["ADMIN_DOWN", "DOWN", "INIT", "UP"] | None = Field(
        description="As last received; null before the first control packet")
    remote_diag: int | None
    remote_discriminator: int | None
    remote_detect_mult: int | None
    remote_desired_min_tx_us: int | None
    remote_required_min_rx_us: int | None
    desired_min_tx_us: int = Field(description="What we advertise (1 s while not Up)")
    required_min_rx_us: int
    detect_mult: int
    tx_interval_us: int = Field(description="Negotiated: max(ours, the remote's min RX)")
    detect_time_us: int = Field(
        description="Negotiated: remote mult x max(our min RX, its desired TX); 0: none")
    poll: bool = Field(description="A Poll Sequence is in progress")
    last_rx_us: int = Field(
        0, description="Target time of the last control packet recorded (microseconds of the "
        "target's clock, as the last poll read it; compare with the time_us of the session's "
        "events)")


class PeerHealthOut(BaseModel):
    name: str
    switch: str
    state: Health
    since: float
    reason: str
    rx_count: int
    tx_count: int
    dup_count: int
    miss_count: int
    last_seq: int
    rtt_last_us: int
    rtt_min_us: int
    rtt_max_us: int
    rtt_avg_us: int
    loss_ratio: float
    reported_status: int
    load: int
    plane_state: int
    sampled_at: float
    bfd: BfdSessionOut | None = Field(None, description="BFD peers: the session")


class HealthList(BaseModel):
    peers: list[PeerHealthOut]


class Summary(BaseModel):
    total: int
    states: dict[str, int]
    switches: dict[str, dict[str, int]]
    ready: bool


class SwitchOut(BaseModel):
    name: str
    address: str
    device_id: int
    kind: str
    connected: bool
    primary: bool
    last_error: str | None
    last_poll: float
    peers: int


class SwitchList(BaseModel):
    switches: list[SwitchOut]


class EventOut(BaseModel):
    id: int
    kind: EventKind
    time: float
    peer: str | None
    switch: str | None
    old_state: Health | None
    new_state: Health | None
    reason: str
    details: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut] = Field(description="Newest first")
    next_before: int | None = Field(None, description="Pass as `before` for the next page")


class RemovedOut(BaseModel):
    removed: list[str]


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    detail: ErrorDetail


class RttHistoryOut(BaseModel):
    interval: float = Field(description="Seconds between samples")
    peers: dict[str, list[int | None]] = Field(
        description="Oldest first; null where no response was recorded in the interval")

