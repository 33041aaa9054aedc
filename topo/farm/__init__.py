"""Peer farm: one XDP program answering heartbeat REQUESTs for a whole IPv4 prefix.

A lab and bench tool, not part of the monitor. Python responders cannot answer 655 k
heartbeats/s, and at thousands of peers a Python responder's CPU distorts the monitor's
measurements; the farm answers in the kernel, in the NAPI poll of the farm's interface, and
costs no user-space CPU at all. Source: topo/farm/hb_farm.c, built by `make -C kernel/bpf`
into build/bpf/hb_farm.o.

    with PeerFarm("eth0", "hb1234-peers", "198.18.0.0/16", exclude=["198.18.0.1"]) as farm:
        farm.set_fault("198.18.1.7", mute=True)
        farm.set_fault("198.18.1.8", loss=0.3, status=1, load=90)
        print(farm.counters())

Every address of the prefix is a healthy peer (load 0) until `set_fault` says otherwise;
addresses outside it (or `exclude`d) are not answered. Requests may be sent to any unicast
MAC: the farm answers from the MAC the request was sent to, so a controller may give all the
farm's peers the farm interface's MAC (no ARP involved: the monitor sends to the configured
MAC). See docs/labs.md "Peer farm" for the veth facts this relies on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from hbmon_kernel import libbpf as lb
from hbmon_kernel.datapath import default_bpf_dir

from ..netns import run_in_netns

OBJECT = "hb_farm.o"
PROGRAM = "hb_farm"
PASS_PROGRAM = "hb_farm_pass"
SINK_PROGRAM = "hb_farm_sink"

# enum farm_outcome in hb_farm.c
ANSWERED, MUTED, LOST, NOT_REQUEST, OUTSIDE, SUNK = range(6)
# struct farm_peer flags
F_MUTE, F_ABSENT, F_LOSS_ALL = 0x01, 0x02, 0x04

_PEER = struct.Struct("=IBBBx")  # struct farm_peer: loss threshold, flags, status, load
_CONFIG = struct.Struct("=IIBBBx")  # struct farm_config: net, mask (host order), defaults
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

Address = str | ipaddress.IPv4Address
T = TypeVar("T")


class FarmError(RuntimeError):
    """The farm cannot be loaded or attached; the message says why."""


@dataclass(frozen=True, slots=True)
class FarmCounters:
    """Requests per outcome since load (or `reset_counters`), summed over CPUs."""

    answered: int
    muted: int
    lost: int
    not_request: int
    outside: int

    @property
    def requests(self) -> int:
        """Everything that arrived for UDP port 9190."""
        return self.answered + self.muted + self.lost + self.not_request + self.outside


@dataclass(frozen=True, slots=True)
class Fault:
    """Per-address state. `loss` is a probability 0..1 (quantised to 1/2^32)."""

    mute: bool = False
    loss: float = 0.0
    status: int = 0
    load: int = 0
    absent: bool = False  # not a farm address: requests to it are not answered


def _key(address: Address) -> bytes:
    # farm_peers is keyed by the address in network byte order: the bytes as on the wire
    return ipaddress.IPv4Address(address).packed


def _loss_threshold(p: float) -> tuple[int, int]:
    """(threshold, extra flags): answer dropped when bpf_get_prandom_u32() < threshold."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"loss must be a probability 0..1, got {p}")
    if p >= 1.0:
        return 0, F_LOSS_ALL  # 2^32 does not fit the u32 threshold
    return min(round(p * 2**32), 2**32 - 1), 0


def encode_fault(fault: Fault) -> bytes:
    if fault.status not in (0, 1, 2):
        raise ValueError(f"status must be 0 (healthy), 1 (degraded) or 2 (draining), "
                         f"got {fault.status}")
    if not 0 <= fault.load <= 255:
        raise ValueError(f"load must be 0..255, got {fault.load}")
    threshold, flags = _loss_threshold(fault.loss)
    flags |= (F_MUTE if fault.mute else 0) | (F_ABSENT if fault.absent else 0)
    return _PEER.pack(threshold, flags, fault.status, fault.load)


def decode_fault(raw: bytes) -> Fault:
    threshold, flags, status, load = _PEER.unpack(raw)
    loss = 1.0 if flags & F_LOSS_ALL else threshold / 2**32
    return Fault(bool(flags & F_MUTE), loss, status, load, bool(flags & F_ABSENT))


class PeerFarm:
    """Load hb_farm.o, attach it (native XDP) to `ifname` in namespace `netns`, and steer it.

    `prefix`: the addresses answered ("198.18.0.0/16"); `exclude`: addresses of the prefix
    that are not farm peers (the monitor's). `netns=None`: the caller's namespace.
    `attach=False` loads without attaching (BPF_PROG_TEST_RUN tests).
    """

    def __init__(
        self, ifname: str | None, netns: str | None, prefix: str, *,
        exclude: Iterable[Address] = (), default_status: int = 0, default_load: int = 0,
        max_faults: int = 65536, bpf_dir: Path | None = None, attach: bool = True,
        xdp_flags: int = lb.XDP_FLAGS_DRV_MODE,
    ) -> None:
        self.ifname = ifname
        self.netns = netns
        self.network = ipaddress.IPv4Network(prefix, strict=True)
        self.exclude = [ipaddress.IPv4Address(a) for a in exclude]
        self.defaults = Fault(status=default_status, load=default_load)
        encode_fault(self.defaults)  # validates status/load early
        self.max_faults = max_faults
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        self.attach = attach
        self.xdp_flags = xdp_flags
        self._obj: lb.BpfObject | None = None
        self._peers: lb.BpfMap | None = None
        self._counters: lb.BpfMap | None = None
        self._ifindex: int | None = None
        self._prog_fd = -1

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PeerFarm:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _in_ns(self, fn: Callable[[], T]) -> T:
        return fn() if self.netns is None else run_in_netns(self.netns, fn)

    def start(self) -> None:
        path = self.bpf_dir / OBJECT
        if not path.is_file():
            raise FarmError(f"{path} missing: build it with `make -C kernel/bpf`")
        try:
            obj = lb.BpfObject(path)
            self._obj = obj
            obj.set_max_entries("farm_peers", self.max_faults)
            obj.load()
            self._peers = obj.map("farm_peers")
            self._counters = obj.map("farm_counters")
            self._prog_fd = obj.program_fd(PROGRAM)
            for address in self.exclude:
                self.set_fault(address, absent=True)
            self._write_config()
            if self.attach:
                if self.ifname is None:
                    raise FarmError("attach=True needs an interface name")
                ifname = self.ifname
                self._ifindex = self._in_ns(lambda: socket.if_nametoindex(ifname))
                ifindex, fd, flags = self._ifindex, self._prog_fd, self.xdp_flags
                self._in_ns(lambda: lb.xdp_attach(
                    ifindex, fd, flags | lb.XDP_FLAGS_UPDATE_IF_NOEXIST))
        except BaseException:
            self.close()
            raise

    def _write_config(self) -> None:
        assert self._obj is not None
        net = int(self.network.network_address)
        mask = int(self.network.netmask)
        raw = _CONFIG.pack(net, mask, self.defaults.status, self.defaults.load, 1)
        self._obj.map("farm_config").update(_U32.pack(0), raw)

    def close(self) -> None:
        """Detach (only our program, tolerating a vanished interface or namespace), unload."""
        if self._ifindex is not None:
            ifindex, fd, flags = self._ifindex, self._prog_fd, self.xdp_flags
            with contextlib.suppress(lb.LibbpfError, OSError):
                self._in_ns(lambda: lb.xdp_detach(ifindex, fd, flags))
            self._ifindex = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._peers = self._counters = None
        self._prog_fd = -1

    @property
    def prog_fd(self) -> int:
        if self._prog_fd < 0:
            raise FarmError("farm not loaded")
        return self._prog_fd

    # ------------------------------------------------------------------ faults

    def _peer_map(self) -> lb.BpfMap:
        if self._peers is None:
            raise FarmError("farm not loaded")
        return self._peers

    def fault(self, address: Address) -> Fault:
        """The address's state (the defaults when it has no entry)."""
        raw = self._peer_map().lookup(_key(address))
        return self.defaults if raw is None else decode_fault(raw)

    def set_fault(self, address: Address, *, mute: bool | None = None,
                  loss: float | None = None, status: int | None = None,
                  load: int | None = None, absent: bool | None = None) -> Fault:
        """Change some of the address's settings (the others keep their value)."""
        old = self.fault(address)
        new = Fault(
            mute=old.mute if mute is None else mute,
            loss=old.loss if loss is None else loss,
            status=old.status if status is None else status,
            load=old.load if load is None else load,
            absent=old.absent if absent is None else absent,
        )
        self._peer_map().update(_key(address), encode_fault(new))
        return new

    def set_faults(self, faults: dict[Address, Fault]) -> None:
        """Many addresses at once (one BPF_MAP_UPDATE_BATCH)."""
        self._peer_map().update_batch([(_key(a), encode_fault(f)) for a, f in faults.items()])

    def clear_fault(self, address: Address) -> bool:
        """Back to the defaults; False if the address had no entry."""
        return self._peer_map().delete(_key(address))

    def faults(self) -> dict[ipaddress.IPv4Address, Fault]:
        return {ipaddress.IPv4Address(k): decode_fault(v)
                for k, v in self._peer_map().lookup_batch()}

    # ------------------------------------------------------------------ counters

    def _counter_map(self) -> lb.BpfMap:
        if self._counters is None:
            raise FarmError("farm not loaded")
        return self._counters

    def counters(self) -> FarmCounters:
        cmap = self._counter_map()
        totals = []
        for which in range(5):
            raw = cmap.lookup(_U32.pack(which)) or b""
            totals.append(sum(v for (v,) in _U64.iter_unpack(raw)))
        return FarmCounters(*totals)

    def reset_counters(self) -> None:
        cmap = self._counter_map()
        for which in range(5):
            cmap.update(_U32.pack(which), bytes(cmap.value_bytes))

    def test_run(self, frame: bytes) -> lb.ProgRunResult:
        """Run the farm on one frame in the kernel (BPF_PROG_TEST_RUN), nothing sent."""
        return lb.prog_test_run(self.prog_fd, frame)


class PassProgram:
    """hb_farm_pass (XDP_PASS) on the other end of a farm's veth when no monitor runs there.

    Native XDP_TX into a veth is only received if the receiving veth has an XDP program
    (which gives it the NAPI ring); the kernel target's XDP is one, this is for labs without.
    `sink=True`: hb_farm_sink instead, which counts (`sunk()`) and drops every frame (benches).
    """

    def __init__(self, ifname: str, netns: str | None = None,
                 bpf_dir: Path | None = None, *, sink: bool = False) -> None:
        self.ifname = ifname
        self.netns = netns
        self.program = SINK_PROGRAM if sink else PASS_PROGRAM
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        self._obj: lb.BpfObject | None = None
        self._ifindex: int | None = None
        self._fd = -1

    def _in_ns(self, fn: Callable[[], T]) -> T:
        return fn() if self.netns is None else run_in_netns(self.netns, fn)

    def __enter__(self) -> PassProgram:
        try:
            self._obj = lb.BpfObject(self.bpf_dir / OBJECT)
            self._obj.load()
            self._fd = self._obj.program_fd(self.program)
            ifname, fd = self.ifname, self._fd
            ifindex = self._in_ns(lambda: socket.if_nametoindex(ifname))
            self._in_ns(lambda: lb.xdp_attach(
                ifindex, fd, lb.XDP_FLAGS_DRV_MODE | lb.XDP_FLAGS_UPDATE_IF_NOEXIST))
            self._ifindex = ifindex
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def prog_fd(self) -> int:
        return self._fd

    def sunk(self) -> int:
        """Frames hb_farm_sink counted (summed over CPUs)."""
        if self._obj is None:
            raise FarmError("not loaded")
        raw = self._obj.map("farm_counters").lookup(_U32.pack(SUNK)) or b""
        return sum(v for (v,) in _U64.iter_unpack(raw))

    def close(self) -> None:
        if self._ifindex is not None:
            ifindex, fd = self._ifindex, self._fd
            with contextlib.suppress(lb.LibbpfError, OSError):
                self._in_ns(lambda: lb.xdp_detach(ifindex, fd, lb.XDP_FLAGS_DRV_MODE))
            self._ifindex = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
