"""The Linux-kernel data plane: loads kernel/bpf's objects, attaches them, and exposes the
pipeline of docs/dataplane.md (tables, packet replication, registers, counter, packet-out,
notifications) as plain Python calls. The P4Runtime server (server.py) sits on top.

Layout on the host:

* every monitored port: XDP `hb_xdp_rx` (heartbeat responses) and tc ingress `hb_tc_l2`
  (l2_forward for everything the XDP program passes);
* the CPU port: a veth pair this class creates (`hbc<pid>x<n>a` / `...b`). packet_out()
  writes a frame plus a `struct hb_cpu_trailer` into end a with an AF_PACKET socket; the tc
  ingress program `hb_tc_cpu` on end b delivers it (mcast_grp 0) or fans it out to every
  replica of the group with bpf_loop + bpf_clone_redirect, in bursts of 256.
* the pacers: between the bursts of a round, and between the rounds of a template that asks
  for a period, the program sends the template (the "carrier") back into the CPU port through
  a tbf qdisc: end a's tbf lets one carrier pass per lap of the heartbeat round period, a
  third pair (`...e` / `...f`, tc ingress `hb_tc_cpu` on f) does the same for the BFD
  schedule (one schedule per kind of template, each with its own period), and a second
  veth pair (`...c` / `...d`, tc ingress `hb_tc_cpu` on d) has a tbf that spaces bursts. A
  token bucket that lets one 90-byte carrier through every P seconds is a timer kept by the
  kernel: rounds go on without waking this process (docs/dataplane.md "Rounds kept by the
  target").
* BFD (docs/bfd.md): `bfd_sessions`, `bfd_peers`, `bfd_requests`, the seven `bfd_*`
  registers; the XDP program records control packets and raises `BfdEvent`s (bfd_event_t)
  in the same ring as `PeerEvent`s; a BFD template (UDP 3784, the tick period in its
  required min echo RX field) to a group runs the BFD schedule.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import mmap
import os
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hbmon import assets, bfd_packet, protocol
from hbmon.protocol import BFD_REGISTERS
from hbmon.protocol import REGISTERS as HB_REGISTERS

from . import libbpf as lb
from .maps import PerCpuCounter, RegisterArray

__all__ = ["REGISTERS", "BfdEvent", "Datapath", "DatapathError", "PeerEvent", "TableFullError"]

# Every register of the data plane: the heartbeat slot's and the BFD session's (P4Info order)
REGISTERS: dict[str, int] = {**HB_REGISTERS, **BFD_REGISTERS}

MAX_PORT = (1 << 9) - 1  # P4 ports are 9 bits
FRAME_LEN = 14 + protocol.IPV4_TOTAL_LEN  # HB_FRAME_LEN: a request template, 70 bytes
MAX_GROUP = (1 << 16) - 1
# Replicas of one fan-out burst (HB_BURST in kernel/bpf/hb_consts.h): each clone lands in
# the receiving CPU's backlog (net.core.netdev_max_backlog, 1000 by default), a NIC's TX
# ring or a veth's 256-entry XDP ring (which frees its slots in batches, so a 256 burst
# already loses some); the kernel program runs a round as bursts of this size.
REPLICAS_PER_BURST = 128
BFD_FRAME_LEN = 14 + bfd_packet.IPV4_TOTAL_LEN  # HB_BFD_FRAME_LEN: a BFD template, 66 bytes
# The carrier on the wire of a pacer: the 70-byte template (a BFD one padded to 70) plus its
# 20-byte trailer.
_CARRIER_BYTES = FRAME_LEN + 20
# A lap of the round pacer is at most this long: longer periods take several laps (a token
# bucket's rate is whole bytes per second, too coarse for one 90-byte lap of minutes).
_MAX_LAP_NS = 100_000_000
# A burst leaves about this long after the previous one ended, so receivers drain it first.
# Measured on this project's lab (a veth whose far end runs an XDP peer farm, 2 cores):
# 128 replicas 80 us apart delivered every request of 1,024, 4,096 (10 and 100 Hz) and
# 65,000 peers (10 Hz: 512 bursts in ~60 ms); 256 at once overflow the far end's ring.
BURST_GAP_NS = 80_000
PERIOD_MIN_US = 100  # HB_PERIOD_MIN_US / HB_PERIOD_MAX_US in kernel/bpf/hb_consts.h
PERIOD_MAX_US = 3_600_000_000
# struct hb_round: period_ns, round_ns, laps, sequence, generation, group, frame[70], pad
_ROUND = struct.Struct(f"=QQIIHH{FRAME_LEN}s6x")  # 104 bytes: 8-byte aligned
_ROUND_FRAME_AT = 28
_SEQ_AT = 14 + 20 + 8 + 8  # Ethernet, IPv4, UDP, then magic..peer_id
_TX_AT = _SEQ_AT + 8  # after the sequence and the nonce
_BFD_ECHO_AT = 14 + 20 + 8 + 20  # the BFD template's tick period (required min echo RX)
# hb_rounds entries (HB_SCHEDULE_*): one schedule per kind of fan-out template
SCHEDULE_REQUEST, SCHEDULE_BFD = 0, 1
_SOL_PACKET = 263  # linux/socket.h (the socket module does not export it)
_PACKET_QDISC_BYPASS = 20  # linux/if_packet.h
CPU_PORT_MTU = 9000
# struct hb_cpu_trailer: magic, egress_port, mcast_grp, start, generation, lap, schedule
_CPU_TRAILER = struct.Struct("=IHHIHHI")
# struct hb_config: round_ifindex[2], burst_ifindex, index_limit, sweep_ns
_CONFIG = struct.Struct("=IIIIQ")
# The DOWN-deadline sweeper runs every period/16 (at least every 250 us), and no more often
# than keeps its cost near 5 % of a core (about 15 ns per peer slot swept).
_SWEEP_MIN_NS = 250_000
_SWEEP_NS_PER_SLOT = 15 * 20
_CPU_TRAILER_MAGIC = 0x48424350
_EVENT = struct.Struct("=QIHBx")  # struct hb_event
# struct hb_bfd_event: time_us, my_disc, index, state, kind, desired_min_tx_us,
# required_min_rx_us, diag, flags, detect_mult
_BFD_EVENT = struct.Struct("=QIHBxIIBBB5x")
_EVENT_KIND_AT = 15  # HB_EVENT_PEER 0 / HB_EVENT_BFD 1
_EVENT_BFD = 1
_BFD_PEER_KEY = struct.Struct("=II")  # src_addr, port
# struct bfd_request: dst_mac, valid, state, diag, flags, detect_mult, src_port, dst_addr,
# my_disc, desired_min_tx_us, required_min_rx_us, tx_interval_us, detect_time_us
_BFD_REQUEST = struct.Struct("=6sBBBBBxH2xIIIIII")
_PEER_KEY = struct.Struct("=II")
_PEER_ENTRY = struct.Struct("=IIB3x")  # struct peer_entry: index, nonce_key, min_ttl
_U32 = struct.Struct("=I")
_L2_VALUE = struct.Struct("=II")
_PEER_REQUEST = struct.Struct("=6sBBIII")  # dst_mac, detect_mult, valid, dst_addr, peer_id,
#                                            nonce_key
_MCAST_KEY = struct.Struct("=II")
_MCAST_REPLICA = struct.Struct("=II")
L2_FORWARD, L2_DROP = 0, 1

XDP_PROGRAM = "hb_xdp_rx"
TC_L2_PROGRAM = "hb_tc_l2"
TC_CPU_PROGRAM = "hb_tc_cpu"
SWEEPER_PROGRAM = "hb_sweeper_start"
_PER_PEER_MAPS = ("peers", "peer_ids", "peer_requests", "bfd_sessions", "bfd_peers",
                  "bfd_requests", *REGISTERS)
_BACKLOG_SYSCTL = Path("/proc/sys/net/core/netdev_max_backlog")
_names = itertools.count()
_CPU_PORT_NAME = re.compile(r"hbc(\d+)x\d+[ace]")


class DatapathError(RuntimeError):
    """The data plane cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class TableFullError(DatapathError):
    """A table (map) has no room for another entry."""


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """docs/dataplane.md peer_event_t: hb_state of `index` became `state`."""

    DIGEST = "peer_event_t"  # the P4Runtime digest it becomes

    index: int
    state: int
    last_seq: int
    time_us: int


@dataclass(frozen=True, slots=True)
class BfdEvent:
    """docs/bfd.md bfd_event_t: the BFD session at `index` received a control packet that
    changed what the controller acts on (fields are the remote's, as received)."""

    DIGEST = "bfd_event_t"

    index: int
    state: int
    diag: int
    flags: int
    detect_mult: int
    my_disc: int
    desired_min_tx_us: int
    required_min_rx_us: int
    time_us: int


def is_bfd_template(frame: bytes) -> bool:
    """A BFD fan-out template as docs/bfd.md "Transmit" defines it (hb_tc.c
    bfd_template_ok): only such a frame's required min echo RX is a tick period."""
    return (len(frame) >= BFD_FRAME_LEN and frame[12:14] == b"\x08\x00" and frame[14] == 0x45
            and frame[23] == 17
            and int.from_bytes(frame[16:18], "big") == bfd_packet.IPV4_TOTAL_LEN
            and int.from_bytes(frame[20:22], "big") & 0x3FFF == 0
            and frame[36:40] == struct.pack("!HH", bfd_packet.PORT, bfd_packet.UDP_LEN)
            and frame[42] >> 5 == bfd_packet.VERSION and frame[45] == bfd_packet.LENGTH)


def template_period_us(frame: bytes) -> tuple[int, int] | None:
    """(schedule, period in us) a fan-out template asks for, None if it is no template
    (the kernel counts it BAD_TEMPLATE): a request's tx_timestamp_us, a BFD template's
    required min echo RX interval."""
    if is_bfd_template(frame):
        return SCHEDULE_BFD, int.from_bytes(frame[_BFD_ECHO_AT:_BFD_ECHO_AT + 4], "big")
    if is_request_template(frame):
        return SCHEDULE_REQUEST, int.from_bytes(frame[_TX_AT:_TX_AT + 8], "big")
    return None


def is_request_template(frame: bytes) -> bool:
    """A fan-out template as docs/dataplane.md "Templates" defines it (hb_tc.c template_ok):
    only such a frame's tx_timestamp_us is a round period."""
    return (len(frame) >= FRAME_LEN and frame[12:14] == b"\x08\x00" and frame[14] == 0x45
            and frame[23] == 17
            and int.from_bytes(frame[16:18], "big") == protocol.IPV4_TOTAL_LEN
            and int.from_bytes(frame[20:22], "big") & 0x3FFF == 0
            and frame[34:40] == struct.pack("!HHH", protocol.RESPONSE_PORT,
                                            protocol.REQUEST_PORT, protocol.UDP_LEN)
            and frame[42:46] == struct.pack("!HBB", protocol.MAGIC, protocol.VERSION,
                                            protocol.MsgType.REQUEST))


# HbEgress.bfd_control's params with their widths (docs/bfd.md), in P4Info order
BFD_CONTROL_PARAMS: dict[str, int] = {
    "dst_mac": 48, "dst_addr": 32, "src_port": 16, "my_disc": 32, "state": 8, "diag": 8,
    "flags": 8, "detect_mult": 8, "desired_min_tx_us": 32, "required_min_rx_us": 32,
    "tx_interval_us": 32, "detect_time_us": 32,
}


def check_bfd_control(**params: int) -> tuple[Any, ...]:
    """bfd_control's params checked (Datapath's range checks) and in struct bfd_request's
    order, valid = 1."""
    for name, bits in BFD_CONTROL_PARAMS.items():
        _check_range(name, params[name], bits)
    if params["state"] > 3:
        raise ValueError(f"state = {params['state']} outside 0..3 (AdminDown .. Up)")
    if params["diag"] > 0x1F or params["flags"] > 0x3F:
        raise ValueError(f"diag {params['diag']} or flags {params['flags']:#x} do not fit "
                         "their 5 / 6 bits")
    p = params
    return (p["dst_mac"].to_bytes(6, "big"), 1, p["state"], p["diag"], p["flags"],
            p["detect_mult"], p["src_port"], p["dst_addr"], p["my_disc"],
            p["desired_min_tx_us"], p["required_min_rx_us"], p["tx_interval_us"],
            p["detect_time_us"])


def unpack_bfd_request(raw: bytes) -> dict[str, int] | None:
    (mac, valid, state, diag, flags, mult, src_port, dst_addr, my_disc, tx_us, rx_us,
     interval, detect) = _BFD_REQUEST.unpack(raw)
    if not valid:
        return None
    return {"dst_mac": int.from_bytes(mac, "big"), "dst_addr": dst_addr, "src_port": src_port,
            "my_disc": my_disc, "state": state, "diag": diag, "flags": flags,
            "detect_mult": mult, "desired_min_tx_us": tx_us, "required_min_rx_us": rx_us,
            "tx_interval_us": interval, "detect_time_us": detect}


def default_bpf_dir() -> Path:
    return assets.bpf_dir()


def _check_range(field: str, value: int, bits: int, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field} must be an int, not {type(value).__name__}")
    if not low <= value < (1 << bits):
        raise ValueError(f"{field} = {value} outside {low}..{(1 << bits) - 1}")


def _kernel_error(exc: lb.LibbpfError, what: str) -> DatapathError:
    if exc.errno == errno.E2BIG or exc.errno == errno.ENOSPC:
        return TableFullError(f"{what}: table full", exc.errno)
    return DatapathError(f"{what}: {exc}", exc.errno)


def _prog_in_use(prog_id: int) -> bool:
    """Does any live process hold an fd to BPF program `prog_id`? (/proc/*/fdinfo)"""
    needle = f"prog_id:\t{prog_id}\n"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for info in (proc / "fdinfo").iterdir():
                try:
                    if needle in info.read_text():
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False


def _remove_dead_cpu_ports(ipr: Any) -> None:
    """Delete CPU-port veths (hbc<pid>x<n>a) whose creating process no longer exists."""
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        m = _CPU_PORT_NAME.fullmatch(name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive (or not ours to judge)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(Exception):
            ipr.link("del", index=link["index"])


class GroupShadow:
    """Reads of the multicast groups from the copy each back end keeps of what it was told
    (the BPF maps hold a group position by position; the memory back end holds only this)."""

    _lock: threading.RLock
    _groups: dict[int, list[tuple[int, int]]]

    def mcast_group_get(self, group_id: int) -> list[tuple[int, int]] | None:
        with self._lock:
            group = self._groups.get(group_id)
            return None if group is None else list(group)

    def mcast_groups(self) -> dict[int, list[tuple[int, int]]]:
        with self._lock:
            return {g: list(r) for g, r in self._groups.items()}


class Datapath(GroupShadow):
    """The kernel data plane on `ports` (P4 port number -> interface name)."""

    REGISTERS: dict[str, int] = REGISTERS

    def __init__(
        self,
        ports: dict[int, str],
        cpu_port: int = 255,
        bpf_dir: Path | None = None,
        max_peers: int = 65536,
        burst_gap_ns: int = BURST_GAP_NS,
    ) -> None:
        _check_range("cpu_port", cpu_port, 9)
        for port, name in ports.items():
            _check_range("port", port, 9)
            if port == cpu_port:
                raise ValueError(f"port {port} ({name}) is the CPU port")
            if not isinstance(name, str) or not name:
                raise ValueError(f"port {port}: interface name must be a non-empty string")
        if len(set(ports.values())) != len(ports):
            raise ValueError("an interface appears under two port numbers")
        if not 1_000 <= burst_gap_ns <= 100_000_000:
            raise ValueError(f"burst_gap_ns = {burst_gap_ns} outside 1 us .. 100 ms")
        self.burst_gap_ns = burst_gap_ns
        if not 1 <= max_peers <= 65536:
            raise ValueError(f"max_peers = {max_peers} outside 1..65536 (indexes are 16 bits)")
        self.ports = dict(ports)
        self.cpu_port = cpu_port
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        self.max_peers = max_peers
        n = next(_names) % 1000
        # (a, b): PacketOut and the heartbeat round pacer; (c, d): the burst pacer;
        # (e, f): the BFD round pacer
        self.cpu_ifnames = tuple(f"hbc{os.getpid()}x{n}{end}" for end in "abcdef")

        self._lock = threading.RLock()  # table shadow state + lifecycle
        self._events_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._objects: list[lb.BpfObject] = []
        self._maps: dict[str, lb.BpfMap] = {}
        self._registers: dict[str, RegisterArray] = {}
        self._counter: PerCpuCounter | None = None
        self._ifindex: dict[int, int] = {}
        self._xdp_attached: list[tuple[int, int]] = []  # (ifindex, prog fd)
        self._tc_hooks: list[lb.TcHook] = []
        self._cpu_veth_made = False
        self._sock: socket.socket | None = None  # PacketOut: bypasses the pacers
        # a carrier of each schedule: through that schedule's round pacer
        self._carrier_socks: list[socket.socket | None] = [None, None]
        # per schedule: its round pacer's current lap, and the period of the schedule last
        # started (0: none; the shortest sets the sweeper's pace)
        self._lap_ns = [0, 0]
        self._periods_ns = [0, 0]
        self._index_limit = 0  # 1 + the highest index given a peer_requests entry
        self._ring: lb.RingBuffer | None = None
        self._pending: list[PeerEvent | BfdEvent] = []
        self._groups: dict[int, list[tuple[int, int]]] = {}  # group -> replica by position
        self._backlog_restore: tuple[int, int] | None = None  # (old value, value we set)
        # (netns path or None, interface, ethtool knob) of each VLAN offload we turned off
        self._vlan_restore: list[tuple[str | None, str, str]] = []
        self._prog_fds: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Datapath:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise DatapathError("this Datapath was closed; make a new one")
            if self._started:
                return
            self._preflight()
            self._started = True
            atexit.register(self.close)
            try:
                self._load()
                self._make_cpu_port()
                self._attach()
                self._raise_backlog()
            except DatapathError:
                self.close()
                raise
            except (lb.LibbpfError, OSError) as exc:
                self.close()
                raise DatapathError(f"starting the kernel data plane failed: {exc}") from exc

    def _preflight(self) -> None:
        try:
            lb.libbpf()
        except lb.LibbpfError as exc:
            raise DatapathError(str(exc)) from exc
        try:
            lb.probe_bpf()
        except lb.LibbpfError as exc:
            who = (
                "root without the needed capabilities" if os.geteuid() == 0
                else f"uid {os.geteuid()} (not root)"
            )
            raise DatapathError(
                f"BPF is not permitted for {who}: {exc.strerror}. The kernel target needs "
                "root with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN); in a "
                "container, run it privileged (seccomp and capability policies block bpf()).",
                exc.errno,
            ) from exc
        missing = [
            str(self.bpf_dir / f) for f in ("hb_xdp.o", "hb_tc.o")
            if not (self.bpf_dir / f).is_file()
        ]
        if missing:
            raise DatapathError(
                f"BPF objects missing: {', '.join(missing)}. Build them with "
                "`make -C kernel/bpf` (or `make setup`), or point $HBMON_BPF_DIR at them."
            )
        for port, name in sorted(self.ports.items()):
            try:
                self._ifindex[port] = socket.if_nametoindex(name)
            except OSError:
                raise DatapathError(
                    f"interface {name!r} (port {port}) does not exist"
                ) from None

    def _load(self) -> None:
        xdp = lb.BpfObject(self.bpf_dir / "hb_xdp.o")
        self._objects.append(xdp)
        for name in _PER_PEER_MAPS:
            xdp.set_max_entries(name, self.max_peers)
        xdp.set_max_entries("mcast_replicas", 2 * self.max_peers)
        xdp.load()
        tc = lb.BpfObject(self.bpf_dir / "hb_tc.o")
        self._objects.append(tc)
        shared = set(xdp.map_names())
        for name in tc.map_names():
            if name in shared:
                tc.reuse_map_fd(name, xdp.map(name).fd)
        tc.load()
        for name in xdp.map_names():
            if not name.startswith("."):
                self._maps[name] = xdp.map(name)
        for name, width in REGISTERS.items():
            self._registers[name] = RegisterArray(self._maps[name], width)
        self._counter = PerCpuCounter(self._maps["hb_reason"])
        self._prog_fds = {
            XDP_PROGRAM: xdp.program_fd(XDP_PROGRAM),
            TC_L2_PROGRAM: tc.program_fd(TC_L2_PROGRAM),
            TC_CPU_PROGRAM: tc.program_fd(TC_CPU_PROGRAM),
            SWEEPER_PROGRAM: tc.program_fd(SWEEPER_PROGRAM),
        }
        self._ring = lb.RingBuffer(self._maps["hb_events"].fd, self._on_event)

    def _make_cpu_port(self) -> None:
        from pyroute2 import IPRoute  # heavy import, only when starting

        a, b, c, d, e, f = self.cpu_ifnames
        with IPRoute() as ipr:
            _remove_dead_cpu_ports(ipr)
            if any(ipr.link_lookup(ifname=name) for name in self.cpu_ifnames):
                raise DatapathError(f"a CPU-port interface {a} .. {f} already exists")
            self._cpu_veth_made = True
            for x, y in ((a, b), (c, d), (e, f)):
                ipr.link("add", ifname=x, kind="veth", peer={"ifname": y})
            for name in self.cpu_ifnames:
                # the host must not chatter (IPv6 DAD, router solicitations) into the CPU port
                knob = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
                if knob.exists():
                    knob.write_text("1\n")
                idx = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, mtu=CPU_PORT_MTU, state="up")
        self._ifindex_cpu_a = socket.if_nametoindex(a)
        self._ifindex_cpu_b = socket.if_nametoindex(b)
        self._ifindex_cpu_c = socket.if_nametoindex(c)
        self._ifindex_cpu_d = socket.if_nametoindex(d)
        self._ifindex_cpu_e = socket.if_nametoindex(e)
        self._ifindex_cpu_f = socket.if_nametoindex(f)
        self._set_pacer(a, _MAX_LAP_NS)
        self._set_pacer(e, _MAX_LAP_NS)
        self._set_pacer(c, self.burst_gap_ns)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        # PacketOuts go straight to the veth: the round pacer is only for carriers
        sock.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
        sock.bind((a, 0))
        self._sock = sock
        for schedule, end in ((SCHEDULE_REQUEST, a), (SCHEDULE_BFD, e)):
            carrier = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            carrier.bind((end, 0))
            self._carrier_socks[schedule] = carrier

    @staticmethod
    def _set_pacer(ifname: str, lap_ns: int) -> None:
        """A tbf qdisc that lets one carrier through every `lap_ns`: rate = carrier bytes per
        lap; the bucket holds one carrier (+1 byte: tc rounds the bucket to 64 ns ticks, and
        a bucket a hair smaller than the carrier would drop it)."""
        rate = max(1, round(_CARRIER_BYTES * 1_000_000_000 / lap_ns))
        cmd = ["tc", "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", f"{rate}bps",
               "burst", str(_CARRIER_BYTES + 1), "limit", str(16 * _CARRIER_BYTES)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise DatapathError(
                f"cannot set the pacer on the CPU port {ifname} ({str(detail).strip()}): the "
                "kernel target's round timer needs the tbf qdisc (CONFIG_NET_SCH_TBF) and tc "
                "(iproute2)"
            ) from exc

    def _attach(self) -> None:
        self._write_config()
        ports_map = self._maps["ports"]
        numbers_map = self._maps["port_numbers"]
        for port, ifindex in self._ifindex.items():
            ports_map.update(_U32.pack(port), _U32.pack(ifindex))
            numbers_map.update(_U32.pack(ifindex), _U32.pack(port))
        xdp_fd = self._prog_fds[XDP_PROGRAM]
        for port, ifindex in sorted(self._ifindex.items()):
            self._remove_orphans(port, ifindex)
            self._keep_vlan_tags(port, self.ports[port])
            try:
                lb.xdp_attach(ifindex, xdp_fd)
            except lb.LibbpfError as exc:
                if exc.errno in (errno.EBUSY, errno.EEXIST):
                    raise DatapathError(
                        f"interface {self.ports[port]!r} (port {port}) already has an XDP "
                        "program attached (by someone else); detach it first", exc.errno,
                    ) from exc
                raise
            self._xdp_attached.append((ifindex, xdp_fd))
            hook = lb.TcHook(ifindex)
            self._tc_hooks.append(hook)
            hook.create()
            hook.attach(self._prog_fds[TC_L2_PROGRAM])
        for ifindex in (self._ifindex_cpu_b, self._ifindex_cpu_d, self._ifindex_cpu_f):
            hook = lb.TcHook(ifindex)
            self._tc_hooks.append(hook)
            hook.create()
            hook.attach(self._prog_fds[TC_CPU_PROGRAM])

    # VLAN offloads (as `ethtool -k` shows them, the `ethtool -K` knob) that carry a tag in
    # skb metadata, out of the frame XDP sees: a port's rx offloads (a NIC strips the tag),
    # and for a veth port its far end's tx offloads (the veth hands the skb over as it is)
    _VLAN_RX_OFFLOADS = (("rx-vlan-offload", "rxvlan"),
                         ("rx-vlan-stag-hw-parse", "rx-vlan-stag-hw-parse"))
    _VLAN_TX_OFFLOADS = (("tx-vlan-offload", "txvlan"),
                         ("tx-vlan-stag-hw-insert", "tx-vlan-stag-hw-insert"))
    _ETHTOOL = "ethtool"

    @staticmethod
    def _in_netns(netns: str | None, cmd: list[str]) -> list[str]:
        """`cmd` run in the network namespace at path `netns` (None: ours)."""
        return cmd if netns is None else ["nsenter", f"--net={netns}", *cmd]

    @classmethod
    def _ethtool(cls, netns: str | None, *args: str) -> str:
        cmd = cls._in_netns(netns, [cls._ETHTOOL, *args])
        try:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise DatapathError(
                f"{' '.join(cmd)} failed ({str(detail).strip()}); the kernel target needs "
                "ethtool (Debian package ethtool) to keep VLAN tags in the frame"
            ) from exc
        return out.stdout

    @classmethod
    def _veth_far_end(cls, ifname: str) -> tuple[str | None, str] | None:
        """(path of its network namespace, None for ours; interface name) of the other end
        of a veth port, or None when the port is not a veth."""
        import json

        def ip_json(netns: str | None, *args: str) -> Any:
            out = subprocess.run(cls._in_netns(netns, ["ip", "-j", *args]), check=True,
                                 capture_output=True, text=True, timeout=10)
            return json.loads(out.stdout or "[]")

        try:
            link = ip_json(None, "-d", "link", "show", "dev", ifname)[0]
            if link.get("linkinfo", {}).get("info_kind") != "veth":
                return None
            if "link_netnsid" not in link:
                return None, str(link["link"])
            # a named namespace by its id; else (Mininet hosts, containers) any process's
            named = [f"/run/netns/{ns['name']}" for ns in ip_json(None, "netns", "list-id")
                     if ns.get("nsid") == link["link_netnsid"] and ns.get("name")]
            procs = [f"/proc/{pid}/ns/net" for pid in os.listdir("/proc") if pid.isdigit()]
            own = os.stat("/proc/self/ns/net")
            seen = {(own.st_dev, own.st_ino)}
            for path in named + procs:
                try:
                    st = os.stat(path)
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    links = ip_json(path, "link", "show")
                except (OSError, subprocess.SubprocessError, ValueError):
                    continue  # the process exited, or that namespace is not ours to read
                for far in links:  # the end whose peer is this port, and ours its peer
                    if (far.get("ifindex") == link.get("link_index")
                            and far.get("link_index") == link.get("ifindex")):
                        return path, str(far["ifname"])
        except (OSError, subprocess.SubprocessError, ValueError, LookupError) as exc:
            raise DatapathError(f"cannot find the far end of veth {ifname!r}: {exc}") from exc
        raise DatapathError(
            f"cannot find the far end of veth {ifname!r} in any network namespace, so the "
            "kernel target cannot keep VLAN tags in its frames (docs/dataplane.md \"What is a "
            "heartbeat\")"
        )

    def _offloads_off(self, netns: str | None, ifname: str,
                      offloads: tuple[tuple[str, str], ...]) -> None:
        """Turn `offloads` off on `ifname` (restored by close()); refuse if one stays on."""
        for shown, knob in offloads:
            m = re.search(rf"^{shown}: (on|off)( \[fixed\])?",
                          self._ethtool(netns, "-k", ifname), re.MULTILINE)
            if m is None or m.group(1) == "off":
                continue  # the device does not move tags of this kind
            if not m.group(2):
                # restore only what we changed, even if the change does not take
                self._vlan_restore.append((netns, ifname, knob))
                with contextlib.suppress(DatapathError):  # judged by the re-read below
                    self._ethtool(netns, "-K", ifname, knob, "off")
                m = re.search(rf"^{shown}: (on|off)", self._ethtool(netns, "-k", ifname),
                              re.MULTILINE)
            if m is not None and m.group(1) == "on":
                where = f" in network namespace {netns}" if netns else ""
                raise DatapathError(
                    f"interface {ifname!r}{where} carries VLAN tags outside the frame "
                    f"({shown}: on) and cannot turn that off: hbmon's XDP program would take "
                    "a tagged heartbeat for an untagged one (docs/dataplane.md)"
                )

    def _keep_vlan_tags(self, port: int, ifname: str) -> None:
        """Keep every VLAN tag inside the frames XDP sees on a port (restored by close()).

        Issue 11: hb_xdp_rx cannot see a tag carried in skb metadata, so a tagged heartbeat
        looked untagged and was recorded (it revived a muted DOWN peer), while bmv2's parser,
        which has no 802.1Q state, treats it as ordinary traffic. With the offloads off the
        tag stays in the frame, the EtherType is 802.1Q/802.1ad and the program passes the
        frame on as ordinary traffic: one contract on both targets (docs/dataplane.md "What
        is a heartbeat"). On a NIC that is the rx offload of the port. A veth hands the
        sender's skb over as it is (its receive side has no rx offload to speak of), so the
        tag stays out of the frame when the far end's tx offload put it in metadata: those
        are turned off too. A port where this cannot be done is refused.
        """
        self._offloads_off(None, ifname, self._VLAN_RX_OFFLOADS)
        far = self._veth_far_end(ifname)
        if far is not None:
            self._offloads_off(*far, self._VLAN_TX_OFFLOADS)

    def _remove_orphans(self, port: int, ifindex: int) -> None:
        """Detach what a killed data plane (kill -9: no clean-up ran) left on a port.

        Only our own programs (by name) that no live process holds an fd to: anything in
        use, or anyone else's program, is left alone and start() refuses instead.
        """
        xdp_id = lb.xdp_prog_id(ifindex)
        if xdp_id and lb.prog_name_by_id(xdp_id) == XDP_PROGRAM and not _prog_in_use(xdp_id):
            with contextlib.suppress(lb.LibbpfError):
                lb.xdp_detach(ifindex)
        hook = lb.TcHook(ifindex)
        with contextlib.suppress(lb.LibbpfError):
            tc_id = hook.query()
            if tc_id and lb.prog_name_by_id(tc_id) == TC_L2_PROGRAM and not _prog_in_use(tc_id):
                hook.detach()

    def _raise_backlog(self) -> None:
        """Make room in the per-CPU backlog for a whole fan-out round (restored on close)."""
        try:
            old = int(_BACKLOG_SYSCTL.read_text())
        except (OSError, ValueError):
            return
        want = self.max_peers + 2 * REPLICAS_PER_BURST
        if old >= want:
            return
        try:
            _BACKLOG_SYSCTL.write_text(f"{want}\n")
        except OSError:
            return  # e.g. read-only /proc/sys in a container: chunking alone must do
        self._backlog_restore = (old, want)

    def close(self) -> None:
        """Detach everything, remove the CPU-port veth, free maps. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            if self._ring is not None:
                with self._events_lock:
                    self._ring.free()
                self._ring = None
            for ifindex, prog_fd in reversed(self._xdp_attached):
                # interface gone, or someone replaced our program: nothing of ours to detach
                with contextlib.suppress(lb.LibbpfError):
                    lb.xdp_detach(ifindex, prog_fd)
            self._xdp_attached.clear()
            for netns, ifname, knob in reversed(self._vlan_restore):
                # after the detach: no moment with our program attached and tags stripped
                with contextlib.suppress(DatapathError):  # interface gone: nothing to restore
                    self._ethtool(netns, "-K", ifname, knob, "on")
            self._vlan_restore.clear()
            for hook in reversed(self._tc_hooks):
                hook.destroy()
            self._tc_hooks.clear()
            for sock in (self._sock, *self._carrier_socks):
                if sock is not None:
                    sock.close()
            self._sock = None
            self._carrier_socks = [None, None]
            if self._cpu_veth_made:
                self._delete_cpu_veth()
            for reg in self._registers.values():
                reg.close()
            self._registers.clear()
            self._maps.clear()
            self._counter = None
            for obj in reversed(self._objects):
                obj.close()
            self._objects.clear()
            if self._backlog_restore is not None:
                old, ours = self._backlog_restore
                try:
                    # only if nobody changed it after us
                    if int(_BACKLOG_SYSCTL.read_text()) == ours:
                        _BACKLOG_SYSCTL.write_text(f"{old}\n")
                except (OSError, ValueError):
                    pass
                self._backlog_restore = None

    def _delete_cpu_veth(self) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                for name in self.cpu_ifnames[0::2]:
                    for idx in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=idx)  # removes the peer end too
        except Exception:  # cleanup goes on whatever netlink says
            pass
        self._cpu_veth_made = False

    def _running(self) -> None:
        if not self._started or self._closed:
            raise DatapathError("data plane not running (call start())")

    def _map(self, name: str) -> lb.BpfMap:
        self._running()
        return self._maps[name]

    # ------------------------------------------------------------------ tables

    def peers_set(self, src_addr: int, peer_id: int, index: int, nonce_key: int = 0,
                  min_ttl: int = 0) -> None:
        """HbIngress.set_peer_index(index, nonce_key, min_ttl) for (src_addr, peer_id).
        nonce_key 0 makes the expected nonce the sequence itself (what requests carry when
        peer_requests has key 0 too); min_ttl 0 turns GTSM off."""
        _check_range("src_addr", src_addr, 32)
        _check_range("peer_id", peer_id, 32)
        _check_range("index", index, 16)
        _check_range("nonce_key", nonce_key, 32)
        _check_range("min_ttl", min_ttl, 8)
        if index >= self.max_peers:
            raise ValueError(f"index = {index} outside 0..{self.max_peers - 1} (max_peers)")
        try:
            self._map("peers").update(_PEER_KEY.pack(src_addr, peer_id),
                                      _PEER_ENTRY.pack(index, nonce_key, min_ttl))
        except lb.LibbpfError as exc:
            raise _kernel_error(exc, "peers") from exc

    def peers_delete(self, src_addr: int, peer_id: int) -> bool:
        """Remove a peers entry; False if there was none."""
        _check_range("src_addr", src_addr, 32)
        _check_range("peer_id", peer_id, 32)
        return self._map("peers").delete(_PEER_KEY.pack(src_addr, peer_id))

    def peers_get(self, src_addr: int, peer_id: int) -> tuple[int, int, int] | None:
        """(index, nonce_key, min_ttl) of an entry, None if there is none."""
        raw = self._map("peers").lookup(_PEER_KEY.pack(src_addr, peer_id))
        return None if raw is None else _PEER_ENTRY.unpack(raw)

    def peers_items(self) -> list[tuple[int, int, int, int, int]]:
        """Every peers entry as (src_addr, peer_id, index, nonce_key, min_ttl), in batches."""
        return [
            (*_PEER_KEY.unpack(k), *_PEER_ENTRY.unpack(v))
            for k, v in self._map("peers").lookup_batch()
        ]

    def peer_ids_set(self, peer_id: int) -> None:
        _check_range("peer_id", peer_id, 32)
        try:
            self._map("peer_ids").update(_U32.pack(peer_id), b"\x01")
        except lb.LibbpfError as exc:
            raise _kernel_error(exc, "peer_ids") from exc

    def peer_ids_delete(self, peer_id: int) -> bool:
        _check_range("peer_id", peer_id, 32)
        return self._map("peer_ids").delete(_U32.pack(peer_id))

    def peer_ids_items(self) -> list[int]:
        return [_U32.unpack(k)[0] for k, _ in self._map("peer_ids").lookup_batch()]

    @staticmethod
    def _l2_key(dst_mac: int) -> bytes:
        _check_range("dst_mac", dst_mac, 48)
        return dst_mac.to_bytes(6, "big") + b"\0\0"

    def l2_set(self, dst_mac: int, port: int | None) -> None:
        """l2_forward: frames to dst_mac go out of `port`; None = drop them."""
        key = self._l2_key(dst_mac)
        if port is None:
            value = _L2_VALUE.pack(L2_DROP, 0)
        else:
            _check_range("port", port, 9)
            value = _L2_VALUE.pack(L2_FORWARD, port)
        try:
            self._map("l2_forward").update(key, value)
        except lb.LibbpfError as exc:
            raise _kernel_error(exc, "l2_forward") from exc

    def l2_delete(self, dst_mac: int) -> bool:
        return self._map("l2_forward").delete(self._l2_key(dst_mac))

    def l2_items(self) -> list[tuple[int, int | None]]:
        """Every l2_forward entry as (dst_mac, port or None for drop)."""
        out: list[tuple[int, int | None]] = []
        for k, v in self._map("l2_forward").lookup_batch():
            action, port = _L2_VALUE.unpack(v)
            out.append((int.from_bytes(k[:6], "big"), None if action == L2_DROP else port))
        return out

    def _check_index(self, index: int) -> None:
        _check_range("index", index, 16)
        if index >= self.max_peers:
            raise ValueError(f"index = {index} outside 0..{self.max_peers - 1} (max_peers)")

    def peer_requests_set(
        self, index: int, dst_mac: int, dst_addr: int, peer_id: int, detect_mult: int,
        nonce_key: int = 0,
    ) -> None:
        """HbEgress.rewrite_request(dst_mac, dst_addr, peer_id, detect_mult, nonce_key) for
        replicas of `index`: each carries nonce = nonce_key ^ its sequence."""
        self._check_index(index)
        _check_range("dst_mac", dst_mac, 48)
        _check_range("dst_addr", dst_addr, 32)
        _check_range("peer_id", peer_id, 32)
        _check_range("detect_mult", detect_mult, 8)
        _check_range("nonce_key", nonce_key, 32)
        value = _PEER_REQUEST.pack(dst_mac.to_bytes(6, "big"), detect_mult, 1, dst_addr, peer_id,
                                   nonce_key)
        self._map("peer_requests").update(_U32.pack(index), value)
        self._raise_index_limit(index)

    def _raise_index_limit(self, index: int) -> None:
        """The sweeper looks at slots 0 .. index_limit - 1: every slot with a request."""
        if index >= self._index_limit:
            with self._lock:
                self._index_limit = max(self._index_limit, index + 1)
                self._write_config()

    def peer_requests_get(self, index: int) -> tuple[int, int, int, int, int] | None:
        """(dst_mac, dst_addr, peer_id, detect_mult, nonce_key) of an entry, None if there
        is none."""
        self._check_index(index)
        raw = self._map("peer_requests").lookup(_U32.pack(index))
        if raw is None:
            return None
        mac, mult, valid, addr, pid, key = _PEER_REQUEST.unpack(raw)
        return (int.from_bytes(mac, "big"), addr, pid, mult, key) if valid else None

    def peer_requests_delete(self, index: int) -> bool:
        existed = self.peer_requests_get(index) is not None
        self._map("peer_requests").update(_U32.pack(index), bytes(_PEER_REQUEST.size))
        return existed

    # -- BFD (docs/bfd.md "P4Info additions") ----------------------------------------------

    def bfd_sessions_set(self, your_disc: int, index: int) -> None:
        """HbIngress.bfd_sessions: control packets whose your discriminator is `your_disc`
        (our discriminator of the session) are the session at `index`'s."""
        _check_range("your_disc", your_disc, 32)
        self._check_index(index)
        try:
            self._map("bfd_sessions").update(_U32.pack(your_disc), _U32.pack(index))
        except lb.LibbpfError as exc:
            raise _kernel_error(exc, "bfd_sessions") from exc

    def bfd_sessions_delete(self, your_disc: int) -> bool:
        _check_range("your_disc", your_disc, 32)
        return self._map("bfd_sessions").delete(_U32.pack(your_disc))

    def bfd_sessions_get(self, your_disc: int) -> int | None:
        _check_range("your_disc", your_disc, 32)
        raw = self._map("bfd_sessions").lookup(_U32.pack(your_disc))
        return None if raw is None else _U32.unpack(raw)[0]

    def bfd_peers_set(self, src_addr: int, port: int, index: int) -> None:
        """HbIngress.bfd_peers: control packets with your discriminator 0 from `src_addr`
        arriving on `port` are the session at `index`'s."""
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        self._check_index(index)
        try:
            self._map("bfd_peers").update(_BFD_PEER_KEY.pack(src_addr, port), _U32.pack(index))
        except lb.LibbpfError as exc:
            raise _kernel_error(exc, "bfd_peers") from exc

    def bfd_peers_delete(self, src_addr: int, port: int) -> bool:
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        return self._map("bfd_peers").delete(_BFD_PEER_KEY.pack(src_addr, port))

    def bfd_peers_get(self, src_addr: int, port: int) -> int | None:
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        raw = self._map("bfd_peers").lookup(_BFD_PEER_KEY.pack(src_addr, port))
        return None if raw is None else _U32.unpack(raw)[0]

    def bfd_requests_set(self, index: int, *, dst_mac: int, dst_addr: int, src_port: int,
                         my_disc: int, state: int, diag: int, flags: int, detect_mult: int,
                         desired_min_tx_us: int, required_min_rx_us: int, tx_interval_us: int,
                         detect_time_us: int) -> None:
        """HbEgress.bfd_control(...) for replicas of `index` (docs/bfd.md "Transmit")."""
        self._check_index(index)
        value = _BFD_REQUEST.pack(*check_bfd_control(
            dst_mac=dst_mac, dst_addr=dst_addr, src_port=src_port, my_disc=my_disc,
            state=state, diag=diag, flags=flags, detect_mult=detect_mult,
            desired_min_tx_us=desired_min_tx_us, required_min_rx_us=required_min_rx_us,
            tx_interval_us=tx_interval_us, detect_time_us=detect_time_us))
        self._map("bfd_requests").update(_U32.pack(index), value)
        self._raise_index_limit(index)

    def bfd_requests_get(self, index: int) -> dict[str, int] | None:
        """The bfd_control params of an entry by name, None if there is none."""
        self._check_index(index)
        raw = self._map("bfd_requests").lookup(_U32.pack(index))
        return None if raw is None else unpack_bfd_request(raw)

    def bfd_requests_delete(self, index: int) -> bool:
        existed = self.bfd_requests_get(index) is not None
        self._map("bfd_requests").update(_U32.pack(index), bytes(_BFD_REQUEST.size))
        return existed

    # ------------------------------------------------------------------ replication

    def mcast_group_set(self, group_id: int, replicas: list[tuple[int, int]]) -> None:
        """Create or replace a multicast group: replicas are (port, instance = peer index).

        Replicas keep their positions across updates, so adding or removing one peer
        rewrites O(1) map entries, not the whole group.
        """
        _check_range("group_id", group_id, 16, low=1)
        # validated in bulk: the fan-out group holds up to 65,536 replicas
        wanted = [(port, instance) for port, instance in replicas]
        for port, instance in wanted:
            if not (type(port) is int and type(instance) is int
                    and 0 <= port <= MAX_PORT and 0 <= instance <= 0xFFFF):
                _check_range("replica port", port, 9)
                _check_range("replica instance", instance, 16)
        seen = set(wanted)
        if len(seen) != len(wanted):
            dup: set[tuple[int, int]] = set()
            for rep in wanted:
                if rep in dup:
                    raise ValueError(f"replica (port {rep[0]}, instance {rep[1]}) given twice")
                dup.add(rep)
        with self._lock:
            self._running()
            old = self._groups.get(group_id, [])
            new = self._place(old, wanted, seen)
            common = min(len(old), len(new))
            changed = [pos for pos in range(common) if old[pos] != new[pos]]
            changed.extend(range(common, len(new)))
            writes = [
                (_MCAST_KEY.pack(group_id, pos), _MCAST_REPLICA.pack(*new[pos]))
                for pos in changed
            ]
            stale = [_MCAST_KEY.pack(group_id, pos) for pos in range(len(new), len(old))]
            reps_map, groups_map = self._maps["mcast_replicas"], self._maps["mcast_groups"]
            try:
                reps_map.update_batch(writes)
                groups_map.update(_U32.pack(group_id), _U32.pack(len(new)))
            except lb.LibbpfError as exc:
                # put the old group back so the kernel matches self._groups
                restore = [
                    (_MCAST_KEY.pack(group_id, pos), _MCAST_REPLICA.pack(*rep))
                    for pos, rep in enumerate(old)
                ]
                try:
                    reps_map.update_batch(restore)
                    extra = [
                        _MCAST_KEY.pack(group_id, pos) for pos in range(len(old), len(new))
                    ]
                    for key in extra:
                        reps_map.delete(key)
                except lb.LibbpfError:
                    pass
                raise _kernel_error(exc, f"multicast group {group_id}") from exc
            for key in stale:
                reps_map.delete(key)
            self._groups[group_id] = new

    @staticmethod
    def _place(
        old: list[tuple[int, int]], wanted: list[tuple[int, int]], wanted_set: set[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Positions for `wanted`: kept replicas stay, new ones fill holes, then the tail."""
        if wanted[:len(old)] == old:
            return list(wanted)  # unchanged or only appended: the common case
        old_set = set(old)
        added = iter([r for r in wanted if r not in old_set])
        slots: list[tuple[int, int] | None] = [r if r in wanted_set else None for r in old]
        for pos, rep in enumerate(slots):
            if rep is None:
                slots[pos] = next(added, None)
        slots.extend(added)
        # holes left (more removed than added): move replicas from the tail into them
        pos = 0
        while pos < len(slots):
            if slots[pos] is None:
                last = slots.pop()
                if pos < len(slots):
                    slots[pos] = last  # may be another hole: looked at again
                continue
            pos += 1
        return [r for r in slots if r is not None]

    def mcast_group_delete(self, group_id: int) -> bool:
        _check_range("group_id", group_id, 16, low=1)
        with self._lock:
            self._running()
            old = self._groups.pop(group_id, None)
            if old is None:
                return False
            self._maps["mcast_groups"].delete(_U32.pack(group_id))
            reps_map = self._maps["mcast_replicas"]
            for pos in range(len(old)):
                reps_map.delete(_MCAST_KEY.pack(group_id, pos))
            return True

    # ------------------------------------------------------------------ registers

    def _register(self, name: str) -> RegisterArray:
        self._running()
        try:
            return self._registers[name]
        except KeyError:
            raise KeyError(f"no register {name!r}; registers: {', '.join(REGISTERS)}") from None

    def register_read_all(self, name: str) -> list[int]:
        return self._register(name).read_all()

    def register_read(self, name: str, index: int) -> int:
        return self._register(name).read(index)

    def register_take(self, name: str, indexes: Any = None) -> Any:
        """Cells of a register as a numpy array (all, or at an int array of indexes)."""
        return self._register(name).take(indexes)

    def register_write(self, name: str, index: int, value: int) -> None:
        self._register(name).write(index, value)

    def register_fill(self, name: str, value: int) -> None:
        self._register(name).fill(value)

    def reset_slot(self, index: int) -> None:
        """Write 0 to every register at `index`, heartbeat and BFD (before an index is
        reused)."""
        self._check_index(index)
        for name in REGISTERS:
            self._register(name).write(index, 0)

    # ------------------------------------------------------------------ counter

    def _counter_of(self, name: str) -> PerCpuCounter:
        self._running()
        if name != "hb_reason" or self._counter is None:
            raise KeyError(f"no counter {name!r}; counters: hb_reason")
        return self._counter

    def counter_read_all(self, name: str) -> list[tuple[int, int]]:
        """(packets, bytes) per index, summed over CPUs."""
        return self._counter_of(name).read_all()

    def counter_read(self, name: str, index: int) -> tuple[int, int]:
        return self._counter_of(name).read(index)

    def counter_write(self, name: str, index: int, packets: int, byte_count: int) -> None:
        self._counter_of(name).write(index, packets, byte_count)

    # ------------------------------------------------------------------ packet I/O

    def packet_out(self, frame: bytes, egress_port: int, mcast_grp: int) -> None:
        """Inject a PacketOut: to `egress_port` unchanged (mcast_grp 0), else replicated to
        every replica of the group (the fan-out; a template that is not a valid REQUEST is
        counted BAD_TEMPLATE in the kernel).

        A fan-out template whose tx_timestamp_us is P > 0 asks for a round every P us
        (docs/dataplane.md "Rounds kept by the target"): the first round runs now, the kernel
        runs the next ones. The same P again only replaces the template (phase and sequence
        go on); a template with P = 0 is one round now and ends the schedule. A BFD template
        (docs/bfd.md "Transmit") does the same for the BFD schedule with the P in its
        required min echo RX field: the two schedules run side by side."""
        _check_range("egress_port", egress_port, 9)
        _check_range("mcast_grp", mcast_grp, 16)
        if len(frame) < 14:
            raise ValueError(f"frame of {len(frame)} bytes is shorter than an Ethernet header")
        if len(frame) + _CPU_TRAILER.size > CPU_PORT_MTU + 14:
            raise ValueError(f"frame of {len(frame)} bytes is larger than the CPU port allows")
        frame = bytes(frame)
        schedule, period_us = SCHEDULE_REQUEST, 0
        # (anything but a template goes to the kernel as it is, which counts it BAD_TEMPLATE)
        asked = template_period_us(frame) if mcast_grp else None
        if asked is not None:
            schedule, period_us = asked
        if period_us and not PERIOD_MIN_US <= period_us <= PERIOD_MAX_US:
            raise ValueError(f"round period {period_us} us (the template's "
                             f"{'required min echo RX' if schedule else 'tx_timestamp_us'}) "
                             f"outside {PERIOD_MIN_US} .. {PERIOD_MAX_US}")
        with self._lock:
            self._running()
            if period_us:
                self._schedule(frame, mcast_grp, period_us * 1000, schedule)
                return
            if asked is not None:
                self._stop_rounds(mcast_grp, schedule)
        # one injection: the kernel runs the bursts of the round itself
        self._inject(frame + _CPU_TRAILER.pack(_CPU_TRAILER_MAGIC, egress_port, mcast_grp, 0,
                                               0, 0, 0))

    def rounds(self, schedule: int = SCHEDULE_REQUEST) -> dict[str, int]:
        """A round schedule the kernel keeps (period_ns 0: none): heartbeat requests'
        (SCHEDULE_REQUEST) or BFD's (SCHEDULE_BFD)."""
        with self._lock:
            raw = self._map("hb_rounds").lookup(_U32.pack(schedule))
        assert raw is not None
        period_ns, round_ns, laps, sequence, generation, group, _ = _ROUND.unpack(raw)
        return {"period_ns": period_ns, "round_ns": round_ns, "laps": laps,
                "sequence": sequence, "generation": generation, "group": group}

    def _schedule(self, frame: bytes, group: int, period_ns: int, schedule: int) -> None:
        rounds = self._map("hb_rounds")
        key = _U32.pack(schedule)
        raw = rounds.lookup(key)
        assert raw is not None
        cur_period, cur_round, laps, _, generation, cur_group, _ = _ROUND.unpack(raw)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        template = frame[:FRAME_LEN].ljust(FRAME_LEN, b"\0")
        alive = now - cur_round < 2 * period_ns + _MAX_LAP_NS
        if cur_period == period_ns and cur_group == group and alive:
            # same schedule, carrier alive: only the template changes, from the next round;
            # written in place (mmap) so the round time and sequence the kernel keeps
            # updating are never written back stale
            at = schedule * _ROUND.size + _ROUND_FRAME_AT
            with mmap.mmap(rounds.fd, mmap.PAGESIZE, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                mm[at:at + FRAME_LEN] = template
            return
        laps = -(-period_ns // _MAX_LAP_NS)
        if period_ns // laps != self._lap_ns[schedule]:
            self._set_pacer(self.cpu_ifnames[4 if schedule else 0], period_ns // laps)
            self._lap_ns[schedule] = period_ns // laps
        generation = generation % 0xFFFF + 1  # 1..65535: 0 marks a single round
        first = 0 if schedule else int.from_bytes(frame[_SEQ_AT:_SEQ_AT + 4], "big")
        rounds.update(key, _ROUND.pack(period_ns, now, laps, (first - 1) & 0xFFFFFFFF,
                                       generation, group, template))
        self._periods_ns[schedule] = period_ns
        self._start_sweeper()
        # through the round pacer (a full bucket lets it pass at once): the first round now,
        # and the pacer's bucket is empty again, so the second one comes a whole lap later.
        # A carrier is always FRAME_LEN + trailer long (the pacer's rate counts on it).
        self._inject(template + _CPU_TRAILER.pack(_CPU_TRAILER_MAGIC, 0, group, 0, generation,
                                                  laps - 1, schedule),
                     sock=self._carrier_socks[schedule])

    def _write_config(self) -> None:
        """hb_config: the pacers' ports, and the deadline sweeper's pace and range."""
        sweep_ns = 0
        periods = [p for p in self._periods_ns if p]
        if periods:
            sweep_ns = max(_SWEEP_MIN_NS, min(periods) // 16,
                           self._index_limit * _SWEEP_NS_PER_SLOT)
        self._maps["hb_config"].update(_U32.pack(0), _CONFIG.pack(
            self._ifindex_cpu_a, self._ifindex_cpu_e, self._ifindex_cpu_c, self._index_limit,
            sweep_ns))

    def _start_sweeper(self) -> None:
        """(Re)start the BPF timer that declares DOWN at last answer + detect_mult x period
        (hb_tc.c `sweep`); it stops by itself when the schedule ends."""
        self._write_config()
        err = lb.prog_test_run(self._prog_fds[SWEEPER_PROGRAM], bytes(64)).retval
        if err:
            raise DatapathError(f"cannot start the DOWN-deadline sweeper: "
                                f"{os.strerror(err) if err < 4096 else err}", err)

    def _stop_rounds(self, group: int, schedule: int) -> None:
        rounds = self._map("hb_rounds")
        raw = rounds.lookup(_U32.pack(schedule))
        if raw is None:
            return
        fields = list(_ROUND.unpack(raw))
        if fields[0] and fields[5] == group:
            fields[0] = 0  # the carrier ends at its next round, the sweeper at its next run
            rounds.update(_U32.pack(schedule), _ROUND.pack(*fields))
            self._periods_ns[schedule] = 0
            self._write_config()

    def _inject(self, data: bytes, timeout_s: float = 1.0,
                sock: socket.socket | None = None) -> None:
        sock = sock or self._sock
        if sock is None:
            raise DatapathError("data plane not running (call start())")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock.send(data)
                return
            except OSError as exc:
                # ENOBUFS: the CPU-port backlog is full of the previous injection's clones;
                # it drains within the same softirq round, so retry until the deadline.
                if exc.errno != errno.ENOBUFS or time.monotonic() > deadline:
                    raise DatapathError(f"packet-out failed: {exc}", exc.errno) from exc
                os.sched_yield()

    # ------------------------------------------------------------------ notifications

    def _on_event(self, raw: bytes) -> None:
        if len(raw) >= _BFD_EVENT.size and raw[_EVENT_KIND_AT] == _EVENT_BFD:
            (time_us, my_disc, index, state, tx_us, rx_us, diag, flags,
             mult) = _BFD_EVENT.unpack_from(raw)
            self._pending.append(BfdEvent(index, state, diag, flags, mult, my_disc, tx_us,
                                          rx_us, time_us))
            return
        time_us, last_seq, index, state = _EVENT.unpack_from(raw)
        self._pending.append(PeerEvent(index, state, last_seq, time_us))

    def events_fd(self) -> int:
        """An fd that becomes readable when poll_events() has something (epoll of the ring)."""
        self._running()
        assert self._ring is not None
        return self._ring.epoll_fd()

    def poll_events(self, timeout_ms: int) -> list[PeerEvent | BfdEvent]:
        """Wait up to timeout_ms (0 = don't wait, -1 = forever) for UP/DOWN events and BFD
        records, in the order the data plane raised them."""
        self._running()
        with self._events_lock:
            ring = self._ring
            if ring is None:
                return []
            if timeout_ms == 0:
                ring.consume()
            else:
                ring.poll(timeout_ms)
            events, self._pending = self._pending, []
            return events

    # ------------------------------------------------------------------ misc

    @staticmethod
    def now_us() -> int:
        """The target clock (CLOCK_MONOTONIC, µs): what bpf_ktime_get_ns()/1000 returns."""
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    def port_ifindex(self, port: int) -> int:
        return self._ifindex[port]

    def program_fd(self, name: str) -> int:
        self._running()
        return self._prog_fds[name]

    def prog_test_run(self, program: str, data: bytes, repeat: int = 1) -> lb.ProgRunResult:
        """Run one of the pipeline's programs on `data` with BPF_PROG_TEST_RUN."""
        return lb.prog_test_run(self.program_fd(program), data, repeat=repeat)

    def reason_counts(self) -> dict[int, tuple[int, int]]:
        """hb_reason as {reason code: (packets, bytes)} for the non-zero entries."""
        return {i: c for i, c in enumerate(self.counter_read_all("hb_reason")) if c != (0, 0)}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "new"
        return f"Datapath(ports={self.ports!r}, cpu_port={self.cpu_port}, {state})"

