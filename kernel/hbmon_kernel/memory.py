"""The kernel target's data plane in memory: `MemoryDatapath` implements `DatapathLike`
with the observable semantics of `datapath.Datapath` (the BPF maps), without BPF, root or
interfaces. `KernelDevice` over it is the same P4Runtime device users get (one arbitration,
one table implementation); `hbmon-kernel-target --datapath memory` serves it, and
`serve_memory_target()` starts it inside a test process.

What is modelled, as kernel/bpf does it (docs/dataplane.md):

* tables (peers, peer_ids, l2_forward, peer_requests) with Datapath's range checks and its
  errors (ValueError, TableFullError when a table has `max_peers` entries);
* multicast groups, registers (widths from `Datapath.REGISTERS`, `max_peers` cells each,
  a value that does not fit is refused), the `hb_reason` counter (REASON_COUNT cells);
* PacketOut: every PacketOut is recorded (`packet_outs`); to a group, a valid request
  template runs a fan-out round as hb_tc.c `fanout_one` does per replica (hb_last_tx_seq,
  hb_tx_count, hb_last_tx_us, hb_miss_count, DOWN after detect_mult unanswered requests
  with its event, REQUEST_SENT / REQUEST_NO_PEER), anything else counts BAD_TEMPLATE;
  a template asking for a period starts a schedule ("Rounds kept by the target"): the same
  period again only replaces the template, period 0 is one round and ends it. The next
  rounds run when `run_rounds()` is called (tests: time is theirs) or, with
  `keep_time=True`, every period on a thread (the simulator);
* answers: nothing on a wire answers; with `answering=True` every request is answered at
  once (the simulator's healthy peers), and `answer(index)` records a valid response as the XDP
  program does (hb_rx_count, hb_last_seq, RTT, miss count cleared, UP with its event);
* events: `peer_event()` is a state change of the data plane (hb_state written, counted,
  queued for `poll_events`, which KernelDevice turns into digests);
* BFD (docs/bfd.md): the bfd_sessions / bfd_peers / bfd_requests tables and the bfd_*
  registers with Datapath's checks; a BFD template to a group (`is_bfd_template`) runs a
  BFD round as hb_tc.c `bfd_one` does per replica (detection: DOWN with its event and
  bfd_remote_disc zeroed once `detect_time_us` passed since the last packet; due-gating
  with the same jitter; a due replica clears bfd_final_due, bumps hb_tx_count, writes
  hb_last_tx_us, counts BFD_SENT; no frame exists, so none is built); its tick period (the
  required min echo RX field) starts the BFD schedule next to the heartbeat one
  (`bfd_schedule`, `run_bfd_rounds()`); `bfd_receive(index, packet)` records a control
  packet of the session as hb_xdp.c does after the lookup (registers, bfd_final_due on P, a
  `BfdEvent` on a change, F or not UP); with `answering=True` every packet sent is answered
  at once by a healthy remote (Down -> Init -> Up, a Poll with F).

Not modelled: the DOWN-deadline sweeper (only the miss count at each round declares DOWN,
and BFD detection runs only at its rounds), the XDP classification of received frames
(tests/kernel/xdp_fuzz.py models that; BFD's checks 1-6 are tests/kernel/test_bpf_bfd.py's),
no BFD frame is built (so none is parsed: only what bfd_receive is given is recorded),
l2 forwarding of frames.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from hbmon.bfd_packet import ControlPacket, Flag, State
from hbmon.protocol import REASON_COUNT, PlaneState, Reason
from p4.v1 import p4runtime_pb2

from .datapath import (
    BFD_FRAME_LEN,
    CPU_PORT_MTU,
    FRAME_LEN,
    PERIOD_MAX_US,
    PERIOD_MIN_US,
    REGISTERS,
    SCHEDULE_BFD,
    BfdEvent,
    GroupShadow,
    PeerEvent,
    TableFullError,
    _check_range,
    check_bfd_control,
    template_period_us,
    unpack_bfd_request,
)
from .p4rt_device import KernelDevice
from .p4rt_state import Pipeline

__all__ = ["MemoryDatapath", "MemoryTarget", "PacketOutRecord", "serve_memory_target"]

_DTYPE = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_SEQ_AT = 14 + 20 + 8 + 8  # Ethernet, IPv4, UDP, then magic..peer_id (datapath._SEQ_AT)
_TX_AT = _SEQ_AT + 8
_U32 = 0xFFFF_FFFF
_TRAILER = 16  # struct hb_cpu_trailer: what the CPU port's MTU must also carry


@dataclass(frozen=True)
class PacketOutRecord:
    """One PacketOut as the data plane received it."""

    frame: bytes
    egress_port: int
    mcast_grp: int


@dataclass
class _Schedule:
    period_us: int
    group: int
    template: bytes
    sequence: int  # of the last round run


class MemoryDatapath(GroupShadow):
    """Datapath's interface and semantics over Python dicts and numpy arrays."""

    REGISTERS: dict[str, int] = REGISTERS

    def __init__(self, ports: Mapping[int, str] | Iterable[int] = (1, 2), cpu_port: int = 255,
                 max_peers: int = 65536, *, keep_time: bool = False,
                 answering: bool = False, history: int = 4096) -> None:
        _check_range("cpu_port", cpu_port, 9)
        numbers = list(ports.keys() if isinstance(ports, Mapping) else ports)
        for port in numbers:
            _check_range("port", port, 9)
            if port == cpu_port:
                raise ValueError(f"port {port} is the CPU port")
        if not 1 <= max_peers <= 65536:
            raise ValueError(f"max_peers = {max_peers} outside 1..65536 (indexes are 16 bits)")
        self.ports = (dict(ports) if isinstance(ports, Mapping)
                      else {p: "none" for p in numbers})
        self.cpu_port = cpu_port
        self.max_peers = max_peers
        self.keep_time = keep_time
        self._lock = threading.RLock()
        self._peers: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._peer_ids: set[int] = set()
        self._l2: dict[int, int | None] = {}
        # index -> (dst_mac, dst_addr, peer_id, detect_mult, nonce_key)
        self._requests: dict[int, tuple[int, int, int, int, int]] = {}
        self._bfd_sessions: dict[int, int] = {}  # your_disc -> index
        self._bfd_peers: dict[tuple[int, int], int] = {}  # (src_addr, port) -> index
        self._bfd_requests: dict[int, bytes] = {}  # index -> struct bfd_request bytes
        self._groups: dict[int, list[tuple[int, int]]] = {}
        self._registers = {name: np.zeros(max_peers, _DTYPE[width])
                           for name, width in REGISTERS.items()}
        self._counter = [[0, 0] for _ in range(REASON_COUNT)]
        self._events: list[PeerEvent | BfdEvent] = []
        self._events_ready = threading.Condition(self._lock)
        self.schedule: _Schedule | None = None
        self.bfd_schedule: _Schedule | None = None  # group 2's, next to the heartbeat one
        self._schedule_changed = threading.Condition(self._lock)
        # test hooks: what was sent, and refusals to inject
        self.packet_outs: collections.deque[PacketOutRecord] = collections.deque(maxlen=history)
        self._packet_count = 0
        self._packets_seen = threading.Condition(self._lock)
        self.rounds_run = 0
        self.refusals: dict[str, Callable[..., bool]] = {}
        self._closed = threading.Event()
        self.answering = answering
        self._clock: threading.Thread | None = None
        if keep_time:
            self._clock = threading.Thread(target=self._keep_time, name="memory-rounds",
                                           daemon=True)
            self._clock.start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Nothing to attach (Datapath's lifecycle, for callers that expect it)."""

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._schedule_changed.notify_all()
            self._events_ready.notify_all()
        if self._clock is not None and self._clock is not threading.current_thread():
            self._clock.join(timeout=5)

    def __enter__(self) -> MemoryDatapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def now_us() -> int:
        """The target clock, as Datapath.now_us (CLOCK_MONOTONIC, us)."""
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    def _refuse(self, op: str, *args: int) -> None:
        """A refusal a test asked for (`refusals[op](*args)` true): the error a full BPF map
        gives (TableFullError), which the device reports as RESOURCE_EXHAUSTED."""
        check = self.refusals.get(op)
        if check is not None and check(*args):
            raise TableFullError(f"{op}: table full (refusal injected by a test)")

    def _room(self, table: Mapping[Any, Any] | set[Any], key: Any, what: str) -> None:
        # the per-peer maps have max_peers entries (Datapath._load)
        if key not in table and len(table) >= self.max_peers:
            raise TableFullError(f"{what}: table full")

    # ------------------------------------------------------------------ tables

    def peers_set(self, src_addr: int, peer_id: int, index: int, nonce_key: int = 0,
                  min_ttl: int = 0) -> None:
        _check_range("src_addr", src_addr, 32)
        _check_range("peer_id", peer_id, 32)
        _check_range("index", index, 16)
        _check_range("nonce_key", nonce_key, 32)
        _check_range("min_ttl", min_ttl, 8)
        if index >= self.max_peers:
            raise ValueError(f"index = {index} outside 0..{self.max_peers - 1} (max_peers)")
        with self._lock:
            self._refuse("peers_set", src_addr, peer_id, index)
            self._room(self._peers, (src_addr, peer_id), "peers")
            self._peers[(src_addr, peer_id)] = (index, nonce_key, min_ttl)

    def peers_delete(self, src_addr: int, peer_id: int) -> bool:
        _check_range("src_addr", src_addr, 32)
        _check_range("peer_id", peer_id, 32)
        with self._lock:
            return self._peers.pop((src_addr, peer_id), None) is not None

    def peers_get(self, src_addr: int, peer_id: int) -> tuple[int, int, int] | None:
        with self._lock:
            return self._peers.get((src_addr, peer_id))

    def peers_items(self) -> list[tuple[int, int, int, int, int]]:
        with self._lock:
            return [(*k, *v) for k, v in self._peers.items()]

    def peer_ids_set(self, peer_id: int) -> None:
        _check_range("peer_id", peer_id, 32)
        with self._lock:
            self._refuse("peer_ids_set", peer_id)
            self._room(self._peer_ids, peer_id, "peer_ids")
            self._peer_ids.add(peer_id)

    def peer_ids_delete(self, peer_id: int) -> bool:
        _check_range("peer_id", peer_id, 32)
        with self._lock:
            if peer_id not in self._peer_ids:
                return False
            self._peer_ids.discard(peer_id)
            return True

    def peer_ids_items(self) -> list[int]:
        with self._lock:
            return sorted(self._peer_ids)

    def l2_set(self, dst_mac: int, port: int | None) -> None:
        _check_range("dst_mac", dst_mac, 48)
        if port is not None:
            _check_range("port", port, 9)
        with self._lock:
            self._refuse("l2_set", dst_mac)
            self._l2[dst_mac] = port

    def l2_delete(self, dst_mac: int) -> bool:
        _check_range("dst_mac", dst_mac, 48)
        with self._lock:
            return self._l2.pop(dst_mac, -1) != -1

    def l2_items(self) -> list[tuple[int, int | None]]:
        with self._lock:
            return list(self._l2.items())

    def _check_index(self, index: int) -> None:
        _check_range("index", index, 16)
        if index >= self.max_peers:
            raise ValueError(f"index = {index} outside 0..{self.max_peers - 1} (max_peers)")

    def peer_requests_set(self, index: int, dst_mac: int, dst_addr: int, peer_id: int,
                          detect_mult: int, nonce_key: int = 0) -> None:
        self._check_index(index)
        _check_range("dst_mac", dst_mac, 48)
        _check_range("dst_addr", dst_addr, 32)
        _check_range("peer_id", peer_id, 32)
        _check_range("detect_mult", detect_mult, 8)
        _check_range("nonce_key", nonce_key, 32)
        with self._lock:
            self._refuse("peer_requests_set", index)
            self._requests[index] = (dst_mac, dst_addr, peer_id, detect_mult, nonce_key)

    def peer_requests_get(self, index: int) -> tuple[int, int, int, int, int] | None:
        self._check_index(index)
        with self._lock:
            return self._requests.get(index)

    def peer_requests_delete(self, index: int) -> bool:
        self._check_index(index)
        with self._lock:
            return self._requests.pop(index, None) is not None

    # -- BFD -------------------------------------------------------------------------------

    def bfd_sessions_set(self, your_disc: int, index: int) -> None:
        _check_range("your_disc", your_disc, 32)
        self._check_index(index)
        with self._lock:
            self._refuse("bfd_sessions_set", index)
            self._room(self._bfd_sessions, your_disc, "bfd_sessions")
            self._bfd_sessions[your_disc] = index

    def bfd_sessions_delete(self, your_disc: int) -> bool:
        _check_range("your_disc", your_disc, 32)
        with self._lock:
            return self._bfd_sessions.pop(your_disc, None) is not None

    def bfd_sessions_get(self, your_disc: int) -> int | None:
        _check_range("your_disc", your_disc, 32)
        with self._lock:
            return self._bfd_sessions.get(your_disc)

    def bfd_peers_set(self, src_addr: int, port: int, index: int) -> None:
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        self._check_index(index)
        with self._lock:
            self._refuse("bfd_peers_set", index)
            self._room(self._bfd_peers, (src_addr, port), "bfd_peers")
            self._bfd_peers[(src_addr, port)] = index

    def bfd_peers_delete(self, src_addr: int, port: int) -> bool:
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        with self._lock:
            return self._bfd_peers.pop((src_addr, port), None) is not None

    def bfd_peers_get(self, src_addr: int, port: int) -> int | None:
        _check_range("src_addr", src_addr, 32)
        _check_range("port", port, 9)
        with self._lock:
            return self._bfd_peers.get((src_addr, port))

    def bfd_requests_set(self, index: int, **params: int) -> None:
        """As Datapath.bfd_requests_set (same checks, same stored layout)."""
        from .datapath import _BFD_REQUEST

        self._check_index(index)
        value = _BFD_REQUEST.pack(*check_bfd_control(**params))
        with self._lock:
            self._refuse("bfd_requests_set", index)
            self._bfd_requests[index] = value

    def bfd_requests_get(self, index: int) -> dict[str, int] | None:
        self._check_index(index)
        with self._lock:
            raw = self._bfd_requests.get(index)
        return None if raw is None else unpack_bfd_request(raw)

    def bfd_requests_delete(self, index: int) -> bool:
        self._check_index(index)
        with self._lock:
            return self._bfd_requests.pop(index, None) is not None

    def bfd_receive(self, index: int, pkt: ControlPacket) -> None:
        """Test/simulator hook: a control packet that passed checks 1-6 for the session at
        `index`, recorded as hb_xdp.c bfd_record does (docs/bfd.md "Receive" 7)."""
        self._check_index(index)
        with self._lock:
            r = self._registers
            fields = {"bfd_remote_state": int(pkt.state), "bfd_remote_diag": pkt.diag,
                      "bfd_remote_mult": pkt.detect_mult, "bfd_remote_disc": pkt.my_disc,
                      "bfd_remote_min_tx_us": pkt.desired_min_tx_us,
                      "bfd_remote_min_rx_us": pkt.required_min_rx_us}
            changed = (any(int(r[name][index]) != v for name, v in fields.items())
                       or bool(pkt.flags & Flag.F) or r["hb_state"][index] != PlaneState.UP)
            now = self.now_us()
            r["hb_rx_count"][index] = (int(r["hb_rx_count"][index]) + 1) & _U32
            r["hb_last_rx_us"][index] = now
            for name, v in fields.items():
                r[name][index] = v
            if pkt.flags & Flag.P:
                r["bfd_final_due"][index] = 1
            self._count(Reason.BFD_RECORDED, BFD_FRAME_LEN)
            if changed:
                r["hb_state"][index] = PlaneState.UP
                self._count(Reason.BFD_EVENT, BFD_FRAME_LEN)
                self._events.append(BfdEvent(index, int(pkt.state), pkt.diag, pkt.flags,
                                             pkt.detect_mult, pkt.my_disc,
                                             pkt.desired_min_tx_us, pkt.required_min_rx_us,
                                             now))
                self._events_ready.notify_all()

    # ------------------------------------------------------------------ replication

    def mcast_group_set(self, group_id: int, replicas: list[tuple[int, int]]) -> None:
        _check_range("group_id", group_id, 16, low=1)
        wanted = [(port, instance) for port, instance in replicas]
        for port, instance in wanted:
            _check_range("replica port", port, 9)
            _check_range("replica instance", instance, 16)
        if len(set(wanted)) != len(wanted):
            seen: set[tuple[int, int]] = set()
            for rep in wanted:
                if rep in seen:
                    raise ValueError(f"replica (port {rep[0]}, instance {rep[1]}) given twice")
                seen.add(rep)
        if len(wanted) > 2 * self.max_peers:  # mcast_replicas has 2 x max_peers entries
            raise TableFullError(f"multicast group {group_id}: table full")
        with self._lock:
            self._refuse("mcast_group_set", group_id)
            self._groups[group_id] = wanted

    def mcast_group_delete(self, group_id: int) -> bool:
        _check_range("group_id", group_id, 16, low=1)
        with self._lock:
            return self._groups.pop(group_id, None) is not None

    # ------------------------------------------------------------------ registers

    def _register(self, name: str) -> npt.NDArray[Any]:
        try:
            return self._registers[name]
        except KeyError:
            raise KeyError(f"no register {name!r}; registers: {', '.join(REGISTERS)}") from None

    def _check_cell(self, name: str, index: int, value: int | None = None) -> None:
        if not 0 <= index < self.max_peers:
            raise IndexError(f"{name}: index {index} outside 0..{self.max_peers - 1}")
        if value is not None and not 0 <= value < 1 << REGISTERS[name]:
            raise ValueError(f"{name}: value {value} does not fit in {REGISTERS[name]} bits")

    def register_read_all(self, name: str) -> list[int]:
        with self._lock:
            return [int(v) for v in self._register(name).tolist()]

    def register_read(self, name: str, index: int) -> int:
        cells = self._register(name)
        self._check_cell(name, index)
        with self._lock:
            return int(cells[index])

    def register_take(self, name: str, indexes: npt.NDArray[np.intp] | None = None,
                      ) -> npt.NDArray[Any]:
        """As Datapath.register_take: a copy of the cells at `indexes` (all when None)."""
        cells = self._register(name)
        with self._lock:
            if indexes is None:
                return cells.copy()
            if len(indexes) and not (int(indexes.min()) >= 0
                                     and int(indexes.max()) < self.max_peers):
                raise IndexError(f"{name}: index outside 0..{self.max_peers - 1}")
            return cells[indexes]

    def register_write(self, name: str, index: int, value: int) -> None:
        cells = self._register(name)
        self._check_cell(name, index, value)
        with self._lock:
            cells[index] = value

    def register_fill(self, name: str, value: int) -> None:
        cells = self._register(name)
        self._check_cell(name, 0, value)
        with self._lock:
            cells.fill(value)

    def reset_slot(self, index: int) -> None:
        self._check_index(index)
        with self._lock:
            for cells in self._registers.values():
                cells[index] = 0

    def set_cells(self, index: int, **values: int) -> None:
        """Test hook: several registers of one slot at once (`rx_count=5` is hb_rx_count),
        as the data plane would have left them."""
        with self._lock:
            for short, value in values.items():
                self.register_write(f"hb_{short}", index, value)

    # ------------------------------------------------------------------ counter

    def _counter_of(self, name: str) -> list[list[int]]:
        if name != "hb_reason":
            raise KeyError(f"no counter {name!r}; counters: hb_reason")
        return self._counter

    def counter_read_all(self, name: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(p, b) for p, b in self._counter_of(name)]

    def counter_read(self, name: str, index: int) -> tuple[int, int]:
        cells = self._counter_of(name)
        if not 0 <= index < len(cells):
            raise IndexError(f"{name}: index {index} outside 0..{len(cells) - 1}")
        with self._lock:
            packets, byte_count = cells[index]
            return packets, byte_count

    def counter_write(self, name: str, index: int, packets: int, byte_count: int) -> None:
        cells = self._counter_of(name)
        if not 0 <= index < len(cells):
            raise IndexError(f"{name}: index {index} outside 0..{len(cells) - 1}")
        if not (0 <= packets < 1 << 64 and 0 <= byte_count < 1 << 64):
            raise ValueError(f"{name}: counter values must fit in 64 bits")
        with self._lock:
            cells[index] = [packets, byte_count]

    def _count(self, reason: Reason, byte_count: int) -> None:
        cell = self._counter[reason]
        cell[0] += 1
        cell[1] += byte_count

    # ------------------------------------------------------------------ packet I/O

    def packet_out(self, frame: bytes, egress_port: int, mcast_grp: int) -> None:
        """Datapath.packet_out's checks and effects (see the module docstring)."""
        _check_range("egress_port", egress_port, 9)
        _check_range("mcast_grp", mcast_grp, 16)
        if len(frame) < 14:
            raise ValueError(f"frame of {len(frame)} bytes is shorter than an Ethernet header")
        if len(frame) + _TRAILER > CPU_PORT_MTU + 14:
            raise ValueError(f"frame of {len(frame)} bytes is larger than the CPU port allows")
        frame = bytes(frame)
        asked = template_period_us(frame) if mcast_grp else None
        period_us = asked[1] if asked is not None else 0
        if period_us and not PERIOD_MIN_US <= period_us <= PERIOD_MAX_US:
            field = "required min echo RX" if asked and asked[0] else "tx_timestamp_us"
            raise ValueError(f"round period {period_us} us (the template's {field}) "
                             f"outside {PERIOD_MIN_US} .. {PERIOD_MAX_US}")
        with self._lock:
            self.packet_outs.append(PacketOutRecord(frame, egress_port, mcast_grp))
            self._packet_count += 1
            self._packets_seen.notify_all()
            if not mcast_grp:
                return  # out of egress_port as it is
            if asked is None:
                self._count(Reason.BAD_TEMPLATE, len(frame))
                return
            if asked[0] == SCHEDULE_BFD:
                self._bfd_template(frame, mcast_grp, period_us)
                return
            sequence = int.from_bytes(frame[_SEQ_AT:_SEQ_AT + 4], "big")
            current = self.schedule
            if period_us:
                if current is not None and (current.period_us, current.group) == (
                        period_us, mcast_grp):
                    current.template = frame[:FRAME_LEN]  # phase and sequence go on
                    return
                self.schedule = _Schedule(period_us, mcast_grp, frame[:FRAME_LEN], sequence)
                self._schedule_changed.notify_all()
            elif current is not None and current.group == mcast_grp:
                self.schedule = None  # a template with period 0 ends the schedule
                self._schedule_changed.notify_all()
            self._round(mcast_grp, sequence)

    def _round(self, group: int, sequence: int) -> None:
        """One fan-out round (lock held): hb_tc.c fanout_one for every replica."""
        self.rounds_run += 1
        now = self.now_us()
        r = self._registers
        for _port, index in self._groups.get(group, []):
            req = self._requests.get(index) if index < self.max_peers else None
            if req is None:
                self._count(Reason.REQUEST_NO_PEER, FRAME_LEN)
                continue
            detect_mult = req[3]
            r["hb_last_tx_seq"][index] = sequence & _U32
            r["hb_tx_count"][index] = (int(r["hb_tx_count"][index]) + 1) & _U32
            r["hb_last_tx_us"][index] = now
            misses = int(r["hb_miss_count"][index])
            if detect_mult and misses >= detect_mult and r["hb_state"][index] != PlaneState.DOWN:
                self._transition(index, PlaneState.DOWN, int(r["hb_last_seq"][index]), now)
            if misses != _U32:
                r["hb_miss_count"][index] = misses + 1
            self._count(Reason.REQUEST_SENT, FRAME_LEN)
            if self.answering:
                self.answer(index)

    def _bfd_template(self, frame: bytes, group: int, period_us: int) -> None:
        """A BFD template (lock held): the BFD schedule as packet_out's heartbeat one."""
        current = self.bfd_schedule
        if period_us:
            if current is not None and (current.period_us, current.group) == (period_us, group):
                current.template = frame[:BFD_FRAME_LEN]
                return
            self.bfd_schedule = _Schedule(period_us, group, frame[:BFD_FRAME_LEN], 0)
            self._schedule_changed.notify_all()
        elif current is not None and current.group == group:
            self.bfd_schedule = None
            self._schedule_changed.notify_all()
        self._bfd_round(group)

    def _bfd_round(self, group: int) -> None:
        """One BFD round (lock held): hb_tc.c bfd_one for every replica."""
        self.rounds_run += 1
        now = self.now_us()
        r = self._registers
        for _port, index in self._groups.get(group, []):
            raw = self._bfd_requests.get(index) if index < self.max_peers else None
            req = None if raw is None else unpack_bfd_request(raw)
            if req is None:
                self._count(Reason.REQUEST_NO_PEER, BFD_FRAME_LEN)
                continue
            last_rx = int(r["hb_last_rx_us"][index])
            if (req["detect_time_us"] and r["hb_state"][index] == PlaneState.UP
                    and now > last_rx and now - last_rx > req["detect_time_us"]):
                # RFC 5880 section 6.8.1: bfd.RemoteDiscr is zeroed with the DOWN (hb_tc.c
                # bfd_detected), so this replica and later ones carry your_disc 0
                r["bfd_remote_disc"][index] = 0
                self._transition(index, PlaneState.DOWN, 0, now)
            interval = req["tx_interval_us"]
            if r["hb_tx_count"][index] and not r["bfd_final_due"][index]:
                jitter = random.randrange(interval // 4 + 1)
                if now - int(r["hb_last_tx_us"][index]) < interval - jitter:
                    continue  # not due this tick
            r["bfd_final_due"][index] = 0
            r["hb_tx_count"][index] = (int(r["hb_tx_count"][index]) + 1) & _U32
            r["hb_last_tx_us"][index] = now
            self._count(Reason.BFD_SENT, BFD_FRAME_LEN)
            if self.answering:
                self.bfd_receive(index, self._bfd_remote_answer(index, req))

    @staticmethod
    def _bfd_remote_answer(index: int, sent: dict[str, int]) -> ControlPacket:
        """answering=True: what a healthy remote answers to the packet we sent (RFC 5880
        section 6.8.6 from its side: our Down -> its Init, our Init or Up -> its Up, our
        AdminDown -> its Down; a Poll answered with F; our timers mirrored)."""
        state = {State.ADMIN_DOWN: State.DOWN, State.DOWN: State.INIT}.get(
            State(sent["state"]), State.UP)
        return ControlPacket(state, my_disc=0x40000000 | (index + 1), your_disc=sent["my_disc"],
                             flags=Flag.F if sent["flags"] & Flag.P else 0, detect_mult=3,
                             desired_min_tx_us=sent["desired_min_tx_us"],
                             required_min_rx_us=sent["required_min_rx_us"])

    def run_bfd_rounds(self, count: int = 1) -> int:
        """Test hook: the next `count` ticks of the BFD schedule; returns how many ran."""
        ran = 0
        with self._lock:
            for _ in range(count):
                s = self.bfd_schedule
                if s is None:
                    break
                self._bfd_round(s.group)
                ran += 1
        return ran

    def run_rounds(self, count: int = 1) -> list[int]:
        """Test hook: the next `count` rounds of the schedule, as the kernel's timer runs
        them (the template with the sequence one up each round); returns their sequences."""
        out: list[int] = []
        with self._lock:
            for _ in range(count):
                s = self.schedule
                if s is None:
                    break
                s.sequence = (s.sequence + 1) & _U32
                self._round(s.group, s.sequence)
                out.append(s.sequence)
        return out

    def _keep_time(self) -> None:
        """keep_time=True: a round every period while a schedule is set, for each of the two
        schedules (heartbeat and BFD) on its own period."""
        run: dict[str, Callable[[], object]] = {
            "schedule": lambda: self.run_rounds(1),
            "bfd_schedule": lambda: self.run_bfd_rounds(1),
        }
        next_at: dict[str, float] = {}  # schedule attribute -> when its next round is due
        with self._lock:
            while not self._closed.is_set():
                now = time.monotonic()
                for name, round_ in run.items():
                    s: _Schedule | None = getattr(self, name)
                    at = next_at.get(name)
                    if s is None:
                        next_at.pop(name, None)
                    elif at is None:  # just started: its first round ran at the PacketOut
                        next_at[name] = now + s.period_us / 1e6
                    elif now >= at:
                        round_()
                        next_at[name] = max(at + s.period_us / 1e6, time.monotonic())
                wait = min(next_at.values(), default=None)
                self._schedule_changed.wait(None if wait is None
                                            else max(0.0, wait - time.monotonic()))

    def wait_packet_outs(self, count: int, timeout: float = 10.0) -> list[PacketOutRecord]:
        """Test hook: wait until `count` PacketOuts arrived in all; returns those kept."""
        with self._lock:
            if not self._packets_seen.wait_for(lambda: self._packet_count >= count, timeout):
                raise TimeoutError(f"{self._packet_count} PacketOuts within {timeout} s, "
                                   f"not {count}")
            return list(self.packet_outs)

    @property
    def packet_out_count(self) -> int:
        with self._lock:
            return self._packet_count

    # ------------------------------------------------------------------ answers, events

    def answer(self, index: int, rtt_us: int = 100) -> None:
        """Test/simulator hook: a valid answer to the last request sent to `index` arrived
        `rtt_us` after it, recorded as hb_xdp.c records one."""
        self._check_index(index)
        with self._lock:
            r = self._registers
            if self._requests.get(index) is None or not r["hb_tx_count"][index]:
                self._count(Reason.UNKNOWN_PEER, FRAME_LEN)
                return
            seq = int(r["hb_last_tx_seq"][index])
            r["hb_rx_count"][index] = (int(r["hb_rx_count"][index]) + 1) & _U32
            r["hb_last_seq"][index] = seq
            r["hb_last_rx_us"][index] = int(r["hb_last_tx_us"][index]) + rtt_us
            r["hb_rtt_last_us"][index] = rtt_us
            low = int(r["hb_rtt_min_us"][index])
            r["hb_rtt_min_us"][index] = rtt_us if low == 0 else min(low, rtt_us)
            r["hb_rtt_max_us"][index] = max(int(r["hb_rtt_max_us"][index]), rtt_us)
            ewma = int(r["hb_rtt_ewma_us"][index])
            r["hb_rtt_ewma_us"][index] = rtt_us if ewma == 0 else (ewma * 7 + rtt_us) // 8
            r["hb_miss_count"][index] = 0
            self._count(Reason.RESPONSE_RECORDED, FRAME_LEN)
            if r["hb_state"][index] != PlaneState.UP:
                self._transition(index, PlaneState.UP, seq, self.now_us())

    def peer_event(self, index: int, state: int, last_seq: int = 0,
                   time_us: int | None = None) -> None:
        """Test hook: the data plane declares `index` UP or DOWN (hb_state written, the
        event counted and queued for poll_events, hence a digest when enabled)."""
        self._check_index(index)
        with self._lock:
            self._transition(index, PlaneState(state), last_seq,
                             self.now_us() if time_us is None else time_us)

    def _transition(self, index: int, state: PlaneState, last_seq: int, time_us: int) -> None:
        self._registers["hb_state"][index] = state
        self._count(Reason.PEER_UP_EVENT if state == PlaneState.UP else Reason.PEER_DOWN_EVENT,
                    FRAME_LEN)
        self._events.append(PeerEvent(index, int(state), last_seq & _U32, time_us))
        self._events_ready.notify_all()

    def poll_events(self, timeout_ms: int) -> list[PeerEvent | BfdEvent]:
        """Wait up to timeout_ms (0 = don't wait, -1 = forever) for UP/DOWN events."""
        with self._lock:
            if not self._events and timeout_ms and not self._closed.is_set():
                self._events_ready.wait(None if timeout_ms < 0 else timeout_ms / 1000)
            events, self._events = self._events, []
            return events

    def __repr__(self) -> str:
        return f"MemoryDatapath(ports={sorted(self.ports)}, max_peers={self.max_peers})"


# ---------------------------------------------------------------------------------------------
# the device served in-process


class _CallCounter(grpc.ServerInterceptor):
    """Counts the RPCs a target received, by method name (`Write`, `Read`, ...)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details)


@dataclass
class MemoryTarget:
    """A KernelDevice over a MemoryDatapath, served over real gRPC in this process."""

    device: KernelDevice
    datapath: MemoryDatapath
    server: grpc.Server | None
    port: int
    host: str = "127.0.0.1"
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _pump: threading.Thread | None = None
    _server_options: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop_serving(self) -> None:
        """The gRPC server goes (every stream ends; the device and its state stay): what
        a client sees of a target that became unreachable."""
        if self.server is not None:
            self.server.stop(grace=None).wait(10)
            self.server = None

    def serve_again(self) -> None:
        """Serve the same device again on the same port (the target is reachable again)."""
        from .server import start_server

        if self.server is None:
            counter = _CallCounter()
            counter.calls = self.calls
            self.server, _ = start_server(self.device, self.address, interceptors=(counter,),
                                          **self._server_options)

    def stop(self) -> None:
        self.stop_serving()
        self._stop.set()
        if self._pump is not None:
            self._pump.join(timeout=5)
        self.datapath.close()

    def __enter__(self) -> MemoryTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the device holds, read as a client would (ReadRequest, no transport) --------

    def read(self, entities: Sequence[p4runtime_pb2.Entity]) -> list[p4runtime_pb2.Entity]:
        """The device's answer to a ReadRequest of `entities` (RPC errors raise P4RTError;
        per-entity errors are raised too, as P4RTError of the first)."""
        req = p4runtime_pb2.ReadRequest(device_id=self.device.device_id, entities=entities)
        jobs, errors = self.device.read_plan(req)
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]
        out: list[p4runtime_pb2.Entity] = []
        for chunk in self.device.encode(jobs):
            out.extend(p4runtime_pb2.ReadResponse.FromString(chunk).entities)
        return out

    def table_entries(self, table: str) -> list[p4runtime_pb2.TableEntry]:
        tid = self.device.pipeline.table(table).id
        return [e.table_entry for e in self.read(
            [p4runtime_pb2.Entity(table_entry=p4runtime_pb2.TableEntry(table_id=tid))])]

    def multicast_group(self, group_id: int) -> p4runtime_pb2.MulticastGroupEntry | None:
        ent = p4runtime_pb2.Entity()
        ent.packet_replication_engine_entry.multicast_group_entry.multicast_group_id = group_id
        found = self.read([ent])
        return found[0].packet_replication_engine_entry.multicast_group_entry if found else None

    def digests_unacknowledged(self) -> list[int]:
        """List ids of digest lists sent and neither acknowledged nor expired."""
        return sorted(itertools.chain.from_iterable(
            e.pending_lists() for e in self.device._digests.values()))

    def digest_lists_sent(self) -> int:
        return sum(e.sent_lists for e in self.device._digests.values())


def default_pipeline(p4info: Path | None = None) -> Pipeline:
    from .server import default_p4info

    path = p4info or default_p4info()
    if path is None:
        raise FileNotFoundError("no P4Info: pass p4info= (p4src/build/ not found)")
    return Pipeline.load(path)


def make_device(dp: MemoryDatapath | Any, pipeline: Pipeline, *, device_id: int = 1,
                ) -> KernelDevice:
    """The kernel target's device over a data plane, as `hbmon-kernel-target` makes it."""
    return KernelDevice(dp, pipeline, device_id=device_id, ports=dp.ports,
                        cpu_port=dp.cpu_port)


def serve_memory_target(address: str = "127.0.0.1:0", *, pipeline: Pipeline | None = None,
                        p4info: Path | None = None, ports: Iterable[int] = (1, 2),
                        device_id: int = 1, cpu_port: int = 255, max_peers: int | None = None,
                        keep_time: bool = False, answering: bool = False,
                        **server_options: Any) -> MemoryTarget:
    """Start the kernel target's P4Runtime server over a MemoryDatapath in this process
    (`server_options`: start_server's max_streams, arbitration_timeout, ...). The digest
    pump runs as in hbmon-kernel-target; stop() ends everything."""
    from .server import start_server

    pipeline = pipeline or default_pipeline(p4info)
    if max_peers is None:  # as hbmon-kernel-target sizes the data plane
        sizes = [r.size for r in pipeline.registers.values()]
        max_peers = max(sizes) if sizes else 65536
    dp = MemoryDatapath(list(ports), cpu_port=cpu_port, max_peers=max_peers,
                        keep_time=keep_time, answering=answering)
    device = make_device(dp, pipeline, device_id=device_id)
    counter = _CallCounter()
    server, port = start_server(device, address, interceptors=(counter,), **server_options)
    host = address.rsplit(":", 1)[0]
    target = MemoryTarget(device, dp, server, port, host, counter.calls,
                          _server_options=server_options)
    target._pump = threading.Thread(target=device.pump_events, args=(target._stop, 100),
                                    name="memory-digests", daemon=True)
    target._pump.start()
    return target


@contextmanager
def memory_target(**kwargs: Any) -> Iterator[MemoryTarget]:
    """serve_memory_target as a context manager."""
    target = serve_memory_target(**kwargs)
    try:
        yield target
    finally:
        target.stop()
