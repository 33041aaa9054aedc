"""Lab topologies as data: the monitor's ports, the peers, their addresses.

A topology says *what* exists; the runners (`hbmon_topo.netns`, `hbmon_topo.mn`) make it
real. The same `Topology` also produces the controller's peer inventory
(`Topology.peer_dicts()`), so a lab and the controller config can never disagree.

Addresses come from the RFC 2544 benchmarking range 198.18.0.0/15: the monitor is
198.18.0.1, peers start at 198.18.1.1. MACs are locally administered (02:48:42:...).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any

LAB_SUBNET = ipaddress.IPv4Network("198.18.0.0/16")
MONITOR_ADDRESS = ipaddress.IPv4Address("198.18.0.1")
FIRST_PEER_ADDRESS = ipaddress.IPv4Address("198.18.1.1")
# 198.18.1.1 .. 198.18.255.255: the peers that fit in the /16 after the monitor's /24
MAX_PEERS_IN_SUBNET = int(LAB_SUBNET.broadcast_address) - int(FIRST_PEER_ADDRESS)


class Layout(enum.StrEnum):
    STAR = "star"  # one namespace per peer, all on a bridge per monitor port
    MULTI = "multi"  # one namespace holding every peer address (thousands of peers)


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults a peer's responder starts with (changeable at run time over its control socket)."""

    mute: bool = False  # does not answer at all
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    flap_s: float = 0.0  # answers for flap_s, then silent for flap_s, and so on
    status: str = "healthy"  # healthy | degraded | draining
    load: int = 0

    def responder_args(self) -> list[str]:
        args: list[str] = []
        if self.mute:
            args.append("--mute")
        if self.loss_pct:
            args += ["--loss", f"{self.loss_pct:g}"]
        if self.delay_ms:
            args += ["--delay-ms", f"{self.delay_ms:g}"]
        if self.flap_s:
            args += ["--flap", f"{self.flap_s:g}"]
        if self.status != "healthy":
            args += ["--status", self.status]
        if self.load:
            args += ["--load", str(self.load)]
        return args

    @property
    def healthy(self) -> bool:
        return self == Faults(load=self.load)


@dataclass(frozen=True, slots=True)
class BfdTimers:
    """A BFD session's timers (RFC 5880 section 6.8.1), as both ends are configured in a lab:
    FRR's `transmit-interval` / `receive-interval` / `detect-multiplier` and the controller's
    `desired_min_tx_ms` / `required_min_rx_ms` / `detect_mult` (docs/bfd.md "Controller")."""

    desired_min_tx_ms: int = 300
    required_min_rx_ms: int = 300
    detect_mult: int = 3

    @property
    def detect_time_ms(self) -> int:
        """Detection time at the side receiving from an identically configured remote
        (section 6.8.4): detect mult x max(required min RX, desired min TX)."""
        return self.detect_mult * max(self.required_min_rx_ms, self.desired_min_tx_ms)


@dataclass(frozen=True, slots=True)
class MonitorPort:
    """One data-plane port of the monitor (P4Runtime port number, as in `-i PORT@IFACE`)."""

    number: int
    mac: str


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A peer as both the lab and the controller see it."""

    name: str
    address: str
    mac: str
    peer_id: int
    port: int  # the monitor port it sits behind
    faults: Faults = field(default_factory=Faults)
    # a BFD session (FRR's bfdd runs in its namespace, no responder) instead of a heartbeat
    # peer; `faults` do not apply to it
    bfd: BfdTimers | None = None

    @property
    def kind(self) -> str:
        return "heartbeat" if self.bfd is None else "bfd"

    def to_peer_dict(self, switch: str = "default") -> dict[str, Any]:
        """The controller's `hbmon.model.Peer` fields for this peer (a BFD session's as
        docs/bfd.md "Controller" lists them)."""
        if self.bfd is not None:
            return {
                "kind": "bfd", "name": self.name, "address": self.address, "mac": self.mac,
                "port": self.port, "switch": switch,
                "desired_min_tx_ms": self.bfd.desired_min_tx_ms,
                "required_min_rx_ms": self.bfd.required_min_rx_ms,
                "detect_mult": self.bfd.detect_mult,
            }
        return {
            "name": self.name, "address": self.address, "peer_id": self.peer_id,
            "mac": self.mac, "port": self.port, "switch": switch,
        }


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    layout: Layout
    monitor_address: str
    ports: tuple[MonitorPort, ...]
    peers: tuple[PeerSpec, ...]
    prefixlen: int = LAB_SUBNET.prefixlen

    def __post_init__(self) -> None:
        numbers = [p.number for p in self.ports]
        if len(set(numbers)) != len(numbers) or not numbers:
            raise ValueError("ports: need at least one, numbers unique")
        for attr in ("name", "address", "peer_id", "mac"):
            values = [getattr(p, attr) for p in self.peers]
            if len(set(values)) != len(values) and not (
                attr == "mac" and self.layout is Layout.MULTI
            ):
                raise ValueError(f"peers: duplicate {attr}")
        for p in self.peers:
            if p.port not in numbers:
                raise ValueError(f"peer {p.name}: port {p.port} is not a monitor port")

    def port(self, number: int) -> MonitorPort:
        for p in self.ports:
            if p.number == number:
                return p
        raise KeyError(number)

    def peer(self, name: str) -> PeerSpec:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def heartbeat_peers(self) -> list[PeerSpec]:
        """The peers answered by `hbmon responder` (not BFD sessions)."""
        return [p for p in self.peers if p.bfd is None]

    @property
    def bfd_peers(self) -> list[PeerSpec]:
        """The BFD sessions: FRR's bfdd runs for them (`hbmon_topo.bfd`)."""
        return [p for p in self.peers if p.bfd is not None]

    def peers_on(self, port: int) -> list[PeerSpec]:
        return [p for p in self.peers if p.port == port]

    def peer_dicts(self, switch: str = "default") -> list[dict[str, Any]]:
        return [p.to_peer_dict(switch) for p in self.peers]


def monitor_mac(port: int) -> str:
    return f"02:48:42:ff:{(port >> 8) & 0xFF:02x}:{port & 0xFF:02x}"


def peer_mac(i: int) -> str:
    """MAC of the i-th peer (0-based); 02:48:42:00:xx:xx."""
    n = i + 1
    return f"02:48:42:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


def peer_address(i: int) -> str:
    if not 0 <= i < MAX_PEERS_IN_SUBNET:
        raise ValueError(f"peer number {i} does not fit in {LAB_SUBNET}")
    return str(FIRST_PEER_ADDRESS + i)


def star(
    n_peers: int, *, ports: int = 1, faults: dict[int, Faults] | None = None,
    name: str = "star", first_peer_id: int = 1001, bfd_peers: int = 0,
    bfd: BfdTimers | None = None,
) -> Topology:
    """`n_peers` peers, each in its own namespace, spread round-robin over `ports` ports.

    `faults` maps a peer's 0-based number to the faults its responder starts with.
    `bfd_peers` BFD sessions (`bfd01`, ...; timers `bfd`, default 300 ms x 3) follow the
    heartbeat peers, one namespace each, their addresses and MACs continuing the numbering.
    """
    if n_peers < 0 or n_peers + bfd_peers < 1:
        raise ValueError("need at least one peer")
    if n_peers + bfd_peers > 4096:
        raise ValueError("a star lab makes one namespace per peer: use multi() beyond 4096")
    faults = faults or {}
    monitor_ports = tuple(MonitorPort(n, monitor_mac(n)) for n in range(1, ports + 1))
    peers = tuple(
        PeerSpec(
            name=f"peer{i + 1:02d}", address=peer_address(i), mac=peer_mac(i),
            peer_id=first_peer_id + i, port=1 + i % ports, faults=faults.get(i, Faults()),
        )
        for i in range(n_peers)
    ) + tuple(
        PeerSpec(
            name=f"bfd{j + 1:02d}", address=peer_address(i), mac=peer_mac(i),
            peer_id=first_peer_id + i, port=1 + i % ports, bfd=bfd or BfdTimers(),
        )
        for j, i in enumerate(range(n_peers, n_peers + bfd_peers))
    )
    return Topology(name, Layout.STAR, str(MONITOR_ADDRESS), monitor_ports, peers)


def multi(n_peers: int, *, name: str = "multi", first_peer_id: int = 1001) -> Topology:
    """`n_peers` addresses in ONE namespace behind monitor port 1, answered by one responder.

    For benchmarks: thousands of peers without thousands of namespaces. Every peer shares
    the namespace's MAC (`peer_mac(0)`).
    """
    if not 1 <= n_peers <= MAX_PEERS_IN_SUBNET:
        raise ValueError(f"n_peers must be 1 .. {MAX_PEERS_IN_SUBNET}")
    mac = peer_mac(0)
    peers = tuple(
        PeerSpec(f"peer{i + 1:05d}", peer_address(i), mac, first_peer_id + i, 1)
        for i in range(n_peers)
    )
    return Topology(name, Layout.MULTI, str(MONITOR_ADDRESS), (MonitorPort(1, monitor_mac(1)),),
                    peers)


# The demo's peers: 16, a few of them faulty so the dashboard has something to show.
DEMO_FAULTS: dict[int, Faults] = {
    3: Faults(mute=True),  # peer04: stopped answering -> DOWN
    7: Faults(loss_pct=35.0),  # peer08: lossy -> DEGRADED
    11: Faults(flap_s=2.0),  # peer12: flapping -> damped DEGRADED / DOWN
    13: Faults(status="degraded", load=90),  # peer14: reports itself degraded
}


def demo(n_peers: int = 16, *, bfd_peers: int = 0, bfd: BfdTimers | None = None) -> Topology:
    """The demo's heartbeat peers, plus `bfd_peers` FRR BFD sessions (`hbmon demo --bfd`)."""
    return star(n_peers, faults={i: f for i, f in DEMO_FAULTS.items() if i < n_peers},
                name="demo", bfd_peers=bfd_peers, bfd=bfd)
