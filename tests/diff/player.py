"""Plays the recorded trace (trace.json) into one target and records what it did.

A target is bmv2 (`simple_switch_grpc`, registers over its Thrift runtime) or the kernel
target (`hbmon-kernel-target`, registers over P4Runtime); both sit on the two root-namespace
ports of a bpf_lab.Lab, are programmed identically over P4Runtime (peers, peer_ids,
peer_requests, multicast group 1, the BFD sessions' bfd_sessions / bfd_peers / bfd_requests
entries and group 2, both digests) and are stopped by PID.

Per step the player sends what the script says, then waits - by polling, with a deadline -
until the target has visibly dealt with all of it:
  - every request of a round (every control packet of a BFD round) captured in the peers'
    namespaces;
  - the response-classification reasons summing to the heartbeats sent so far, and the
    fan-out reasons to rounds x replicas (plus bad templates);
  - as many digests received as PEER_UP_EVENT + PEER_DOWN_EVENT + BFD_EVENT counted.
Nothing here knows what the values should be: that is model.py's business.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from hbmon.bfd_packet import PORT as BFD_PORT
from hbmon.bfd_packet import SOURCE_PORT_BASE, ControlPacket, State, template_payload
from hbmon.dataplane import targets
from hbmon.dataplane.registers import Bmv2ThriftRegisterAccess, bmv2_register_names
from hbmon.p4 import (
    CounterRead,
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    P4Schema,
    PacketOut,
    RegisterCell,
    RegisterRead,
    Replica,
    TableEntry,
    decode_bits,
)
from hbmon.p4.client import P4RuntimeClient
from hbmon.protocol import (
    BFD_REGISTERS,
    HEADER_LEN,
    REASON_COUNT,
    REGISTERS,
    REQUEST_PORT,
    RESPONSE_PORT,
    Heartbeat,
    MsgType,
    Reason,
    request_nonce,
)
from kernel.bpf_lab import Capture, Lab, heartbeat_frame, ip_int, mac_int
from kernel.server_harness import KernelTarget

from .model import BFD_RECEIVE_REASONS, RESPONSE_REASONS

ROOT = Path(__file__).resolve().parents[2]
P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
BMV2_JSON = ROOT / "p4src" / "build" / "heartbeat.json"
ELECTION_ID = 7
STEP_DEADLINE_S = 15.0  # per wait; a healthy target needs milliseconds
FUTURE_US = 1 << 40  # added to an echoed time "from the future"
DIRECT_FRAME_DST = ("02:ee:00:00:00:01", "198.18.2.200")
CLASSIFIED = {int(r) for r in (*RESPONSE_REASONS, *BFD_RECEIVE_REASONS)}
# what a target reads per used slot: the heartbeat registers, and the BFD ones (docs/bfd.md)
SLOT_REGISTERS = (*REGISTERS, *BFD_REGISTERS)


def now_us() -> int:
    return time.monotonic_ns() // 1000


# ---------------------------------------------------------------------------------------------
# what a run records


@dataclass
class Request:
    peer: str
    port: int
    seq: int
    tx_us: int
    frame: bytes


@dataclass
class Sent:
    """One frame the player put on a port, with what it answered."""

    frame: bytes
    port: int
    t_sent: int  # host µs just before sending
    echo_round: str | None  # for a BFD packet: the last round before it (its time anchor)
    echo_peer: str | None
    echoed: int  # tx_timestamp_us in the frame (0 when it has no heartbeat)
    t_counted: int | None = None  # host µs once a reason counted it (None: ordinary traffic)


@dataclass
class StepObs:
    index: int
    op: str
    label: str
    t_start: int
    t_done: int = 0
    requests: dict[str, Request] = field(default_factory=dict)  # peer name -> request
    unexpected: list[bytes] = field(default_factory=list)  # frames nobody asked for
    sent: list[Sent] = field(default_factory=list)
    templates: list[bytes] = field(default_factory=list)  # bad templates sent
    direct: list[tuple[int, bytes, bool]] = field(default_factory=list)  # port, frame, seen
    bfd_control: dict[str, bytes] = field(default_factory=dict)  # session -> control packet
    t_po: int = 0  # a BFD round: host µs just before its PacketOut
    t_cap: int = 0  # and once every control packet was captured
    anchor: str | None = None  # a BFD round: the last heartbeat round before it
    digests: list[dict[str, int]] = field(default_factory=list)
    reasons: list[tuple[int, int]] = field(default_factory=list)  # (packets, bytes) by code
    cells: dict[str, dict[int, int]] = field(default_factory=dict)
    problem: str | None = None  # a wait that ran out; the run stops there


@dataclass
class Round:
    label: str
    seq: int
    t_po: int  # host µs just before the PacketOut
    t_cap: int  # host µs once every request was captured
    requests: dict[str, Request]


@dataclass
class Observation:
    target: str
    steps: list[StepObs] = field(default_factory=list)
    rounds: dict[str, Round] = field(default_factory=dict)
    full: dict[str, list[int]] = field(default_factory=dict)  # every cell, after the trace
    used_indexes: list[int] = field(default_factory=list)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        def conv(obj: Any) -> Any:
            if isinstance(obj, bytes):
                return obj.hex()
            if isinstance(obj, dict):
                return {str(k): conv(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return [conv(v) for v in obj]
            return obj

        data = asdict(self)
        # the full arrays are 14 x 65536 cells: keep only the non-zero ones
        data["full"] = {n: {i: v for i, v in enumerate(cells) if v}
                        for n, cells in self.full.items()}
        return {k: conv(v) for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# frames


def _patch(frame: bytes, spec: dict[str, Any]) -> bytes:
    out = bytearray(frame)
    if "ethertype" in spec:
        out[12:14] = struct.pack("!H", spec["ethertype"])
    if "trailer" in spec:
        out += b"\xee" * spec["trailer"]
    return bytes(out)


def _hb_payload(base: Heartbeat, hb: dict[str, Any], frame: dict[str, Any]) -> bytes:
    payload = Heartbeat(base.type, base.peer_id, base.sequence, base.tx_timestamp_us,
                        base.status, base.load, base.nonce, hb.get("version", base.version),
                        hb.get("magic", base.magic)).pack()
    if "type" in hb:
        payload = payload[:3] + bytes([hb["type"]]) + payload[4:]
    if "truncate_hb" in frame:
        payload = payload[:frame["truncate_hb"]]
    if "extra" in frame:
        payload += b"\xab" * frame["extra"]
    return payload


def _udp_frame(*, src_mac: int, dst_mac: int, src_ip: int, dst_ip: int, sport: int,
               dport: int, payload: bytes, frame: dict[str, Any]) -> bytes:
    # a frame cut short keeps the lengths it claims (as one truncated on the way would)
    truncated = "truncate_hb" in frame
    udp_len = frame.get("udp_len", 8 + HEADER_LEN if truncated else None)
    ip_total_len = frame.get("ip_total_len", 20 + 8 + HEADER_LEN if truncated else None)
    raw = heartbeat_frame(
        src_mac=src_mac, dst_mac=dst_mac, src_ip=src_ip, dst_ip=dst_ip,
        sport=frame.get("sport", sport), dport=frame.get("dport", dport), payload=payload,
        ihl=frame.get("ihl", 5), ip_total_len=ip_total_len, udp_len=udp_len,
        frag_off=frame.get("frag_off", 0), proto=frame.get("proto", 17),
        ttl=frame.get("ttl", 255))
    return _patch(raw, frame)


def template_frame(trace: dict[str, Any], seq: int, spec: dict[str, Any] | None = None,
                   ) -> bytes:
    spec = spec or {}
    mon = trace["monitor"]
    base = Heartbeat(MsgType.REQUEST, 0, seq, 0)
    payload = _hb_payload(base, spec.get("hb", {}), spec.get("frame", {}))
    return _udp_frame(src_mac=mac_int(mon["mac"]), dst_mac=0, src_ip=ip_int(mon["ip"]),
                      dst_ip=0, sport=RESPONSE_PORT, dport=REQUEST_PORT, payload=payload,
                      frame=spec.get("frame", {}))


def direct_frame(trace: dict[str, Any]) -> bytes:
    mon = trace["monitor"]
    return heartbeat_frame(src_mac=mac_int(mon["mac"]), dst_mac=mac_int(DIRECT_FRAME_DST[0]),
                           src_ip=ip_int(mon["ip"]), dst_ip=ip_int(DIRECT_FRAME_DST[1]),
                           sport=5000, dport=5001, payload=b"hbmon differential packet-out")


def response_for(trace: dict[str, Any], pkt: dict[str, Any], rounds: dict[str, Round],
                 ) -> tuple[int, bytes, int]:
    """(port, frame, echoed tx) for one scripted packet, from the request it answers."""
    peers = {p["name"]: p for p in trace["peers"]}
    peer = peers[pkt["from"]]
    rnd = rounds.get(pkt["echo"])
    if rnd is None or peer["name"] not in rnd.requests:
        raise RuntimeError(f"packet {pkt} answers a request that was not captured")
    req = rnd.requests[peer["name"]]
    tx = pkt.get("tx", {})
    if tx.get("future"):
        echoed = req.tx_us + FUTURE_US
    else:
        offset = int(tx.get("offset_us", 0))
        if offset > req.tx_us:
            raise RuntimeError(f"target clock {req.tx_us} µs is below the scripted offset "
                               f"{offset} µs: it started too recently")
        echoed = req.tx_us - offset
    seq = pkt["seq"] if "seq" in pkt else (req.seq + pkt.get("seq_add", 0)) & 0xFFFFFFFF
    # the nonce: echoed from the captured request when the answer is to that request (so a
    # target writing a wrong nonce fails here too), else the right one for the sequence the
    # packet claims; {"value": v} forges one, {"xor": x} flips bits of the right one
    if seq == req.seq and req.frame:
        nonce = Heartbeat.unpack(req.frame[42:42 + HEADER_LEN]).nonce
    else:
        nonce = request_nonce(peer["key"], seq)
    spec = pkt.get("nonce", {})
    nonce = spec["value"] if "value" in spec else nonce ^ spec.get("xor", 0)
    base = Heartbeat(MsgType.RESPONSE, pkt.get("peer_id", peer["peer_id"]), seq, echoed,
                     pkt.get("status", 0), pkt.get("load", 0), nonce)
    frame_spec = pkt.get("frame", {})
    payload = _hb_payload(base, pkt.get("hb", {}), frame_spec)
    mon = trace["monitor"]
    frame = _udp_frame(src_mac=mac_int(peer["mac"]), dst_mac=mac_int(mon["mac"]),
                       src_ip=ip_int(pkt.get("src_ip", peer["ip"])), dst_ip=ip_int(mon["ip"]),
                       sport=REQUEST_PORT, dport=RESPONSE_PORT, payload=payload,
                       frame=frame_spec)
    return pkt.get("port", peer["port"]), frame, echoed


def bfd_frame(trace: dict[str, Any], pkt: dict[str, Any]) -> tuple[int, bytes]:
    """(port, frame) of one scripted BFD control packet from a session's remote."""
    session = {s["name"]: s for s in trace["bfd_sessions"]}[pkt["from"]]
    f = pkt.get("bfd", {})
    payload = ControlPacket(
        State(f.get("state", State.DOWN)), f.get("my_disc", session["remote"]),
        f.get("your_disc", 0), f.get("diag", 0), f.get("flags", 0), f.get("detect_mult", 3),
        f.get("desired_min_tx_us", 1_000_000), f.get("required_min_rx_us", 1_000_000), 0,
        f.get("version", 1), f.get("length", 24)).pack()
    spec = pkt.get("frame", {})
    payload = payload[:spec.get("truncate", len(payload))]
    mon = trace["monitor"]
    frame = heartbeat_frame(
        src_mac=mac_int(session["mac"]), dst_mac=mac_int(mon["mac"]),
        src_ip=ip_int(pkt.get("src_ip", session["ip"])), dst_ip=ip_int(mon["ip"]),
        sport=SOURCE_PORT_BASE, dport=BFD_PORT, payload=payload, udp_len=spec.get("udp_len"),
        ttl=spec.get("ttl", 255))
    return pkt.get("port", session["port"]), frame


def bfd_template_frame(trace: dict[str, Any]) -> bytes:
    """The group-2 template (docs/bfd.md "Transmit"), tick 0: this round only."""
    mon = trace["monitor"]
    return heartbeat_frame(src_mac=mac_int(mon["mac"]), dst_mac=0, src_ip=ip_int(mon["ip"]),
                           dst_ip=0, sport=SOURCE_PORT_BASE, dport=BFD_PORT,
                           payload=template_payload(0))


def is_bfd_control(frame: bytes) -> bool:
    return (len(frame) >= 14 + 20 + 8 and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and frame[36:38] == struct.pack("!H", BFD_PORT))


def is_request(frame: bytes) -> bool:
    return (len(frame) >= 14 + 20 + 8 + HEADER_LEN and frame[12:14] == b"\x08\x00"
            and frame[23] == 17
            and frame[36:38] == struct.pack("!H", REQUEST_PORT))


# ---------------------------------------------------------------------------------------------
# targets


class Target:
    """A running target, its P4Runtime client (primary) and the digests it delivered."""

    name: str

    def __init__(self, schema: P4Schema) -> None:
        self.schema = schema
        self.client: P4RuntimeClient | None = None
        self._digests: list[dict[str, int]] = []
        self._lock = threading.Lock()

    def _connect(self, address: str, device_config: bytes) -> None:
        self.client = P4RuntimeClient(address, 1, election_id=ELECTION_ID, schema=self.schema,
                                      on_digest=self._on_digest)
        if not self.client.connect(timeout=30):
            raise RuntimeError(f"{self.name}: not primary: {self.client.last_error}")
        self.client.set_pipeline(self.schema, device_config)

    def _on_digest(self, msg: Any) -> None:
        decoded = DigestMessage.decode(self.schema, msg)
        with self._lock:
            self._digests.extend(dict(row) for row in decoded.data)

    def digests(self) -> list[dict[str, int]]:
        with self._lock:
            return list(self._digests)

    def reasons(self) -> list[tuple[int, int]]:
        assert self.client is not None
        out = [(0, 0)] * REASON_COUNT
        for e in self.client.read([CounterRead("hb_reason")]):
            c = e.counter_entry
            out[c.index.index] = (c.data.packet_count, c.data.byte_count)
        return out

    def read_cells(self, indexes: list[int]) -> dict[str, dict[int, int]]:
        raise NotImplementedError

    def read_full(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def reset_slot(self, index: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class KernelSide(Target):
    name = targets.KERNEL

    def __init__(self, schema: P4Schema, lab: Lab) -> None:
        super().__init__(schema)
        self.process = KernelTarget(lab.ports)
        self.process.start()
        try:
            assert self.process.address is not None
            self._connect(self.process.address, b"")
        except BaseException:
            self.close()
            raise

    def read_cells(self, indexes: list[int]) -> dict[str, dict[int, int]]:
        assert self.client is not None
        out: dict[str, dict[int, int]] = {n: {} for n in SLOT_REGISTERS}
        reads = [RegisterRead(n, i) for n in SLOT_REGISTERS for i in indexes]
        for e in self.client.read(reads):
            r = e.register_entry
            out[self.schema.register(r.register_id).name][r.index.index] = \
                decode_bits(r.data.bitstring)
        return out

    def read_full(self) -> dict[str, list[int]]:
        assert self.client is not None
        out = {n: [0] * self.schema.register(n).size for n in SLOT_REGISTERS}
        for e in self.client.read([RegisterRead(n) for n in SLOT_REGISTERS]):
            r = e.register_entry
            out[self.schema.register(r.register_id).name][r.index.index] = \
                decode_bits(r.data.bitstring)
        return out

    def reset_slot(self, index: int) -> None:
        assert self.client is not None
        self.client.modify([RegisterCell(n, index, 0) for n in SLOT_REGISTERS])

    def close(self) -> None:
        super().close()
        self.process.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bmv2Side(Target):
    name = targets.BMV2

    def __init__(self, schema: P4Schema, lab: Lab, log_dir: Path) -> None:
        super().__init__(schema)
        self.registers: Bmv2ThriftRegisterAccess | None = None
        self.process = targets.start_target(
            targets.BMV2, lab.ports, grpc_addr=f"127.0.0.1:{free_port()}",
            thrift_port=free_port(), output_path=log_dir / "simple_switch_grpc.out", wait=60)
        try:
            self._connect(self.process.grpc_addr, BMV2_JSON.read_bytes())
            assert self.process.thrift_port is not None
            self.registers = Bmv2ThriftRegisterAccess(
                port=self.process.thrift_port,
                widths={n: schema.register(n).bitwidth for n in SLOT_REGISTERS},
                bmv2_names=bmv2_register_names(BMV2_JSON))
        except BaseException:
            self.close()
            raise

    def read_cells(self, indexes: list[int]) -> dict[str, dict[int, int]]:
        assert self.registers is not None
        return {n: {i: self.registers.read(n, i) for i in indexes} for n in SLOT_REGISTERS}

    def read_full(self) -> dict[str, list[int]]:
        assert self.registers is not None
        return self.registers.snapshot(list(SLOT_REGISTERS))

    def reset_slot(self, index: int) -> None:
        assert self.registers is not None
        self.registers.reset_slot(index)

    def close(self) -> None:
        if self.registers is not None:
            self.registers.close()
            self.registers = None
        super().close()
        self.process.stop()


# ---------------------------------------------------------------------------------------------
# playing


def program(target: Target, trace: dict[str, Any]) -> None:
    """Identical P4Runtime writes for either target."""
    assert target.client is not None
    entities: list[Any] = []
    for p in trace["peers"]:
        entities += [peers_entry(p), peer_ids_entry(p), requests_entry(p)]
    replicas = [Replica(p["port"], p["index"]) for p in trace["peers"]]
    replicas += [Replica(r["port"], r["instance"]) for r in trace["extra_replicas"]]
    entities.append(MulticastGroup(trace["fanout_group"], tuple(replicas)))
    d = trace["digest"]
    for s in trace.get("bfd_sessions", []):
        entities += [
            TableEntry("HbIngress.bfd_sessions", {"your_disc": s["my_disc"]},
                       "HbIngress.set_bfd_session", {"index": s["index"]}),
            TableEntry("HbIngress.bfd_peers", {"src_addr": ip_int(s["ip"]), "port": s["port"]},
                       "HbIngress.set_bfd_session", {"index": s["index"]}),
            TableEntry("HbEgress.bfd_requests", {"index": s["index"]}, "HbEgress.bfd_control",
                       {"dst_mac": mac_int(s["mac"]), "dst_addr": ip_int(s["ip"]),
                        "src_port": SOURCE_PORT_BASE + s["index"] % 16384,
                        "my_disc": s["my_disc"], **s["tx"]})]
    if trace.get("bfd_sessions"):
        bfd_replicas = [Replica(s["port"], s["index"]) for s in trace["bfd_sessions"]]
        bfd_replicas += [Replica(r["port"], r["instance"]) for r in trace["bfd_extra_replicas"]]
        entities.append(MulticastGroup(trace["bfd_group"], tuple(bfd_replicas)))
    for name in ("peer_event_t", "bfd_event_t"):
        entities.append(DigestEntry(name, d["max_timeout_ns"], d["max_list_size"],
                                    d["ack_timeout_ns"]))
    target.client.insert(entities)


def peers_entry(p: dict[str, Any]) -> TableEntry:
    return TableEntry("HbIngress.peers", {"src_addr": ip_int(p["ip"]), "peer_id": p["peer_id"]},
                      "HbIngress.set_peer_index",
                      {"index": p["index"], "nonce_key": p["key"], "min_ttl": p["min_ttl"]})


def peer_ids_entry(p: dict[str, Any]) -> TableEntry:
    return TableEntry("HbIngress.peer_ids", {"peer_id": p["peer_id"]},
                      "HbIngress.peer_id_known")


def requests_entry(p: dict[str, Any]) -> TableEntry:
    return TableEntry("HbEgress.peer_requests", {"index": p["index"]},
                      "HbEgress.rewrite_request",
                      {"dst_mac": mac_int(p["mac"]), "dst_addr": ip_int(p["ip"]),
                       "peer_id": p["peer_id"], "detect_mult": p["dm"], "nonce_key": p["key"]})


ENTRY_OF: dict[str, Callable[[dict[str, Any]], TableEntry]] = {
    "peers": peers_entry, "peer_ids": peer_ids_entry, "peer_requests": requests_entry}


class Player:
    def __init__(self, trace: dict[str, Any], target: Target, lab: Lab) -> None:
        self.trace = trace
        self.target = target
        self.lab = lab
        self.peers = {p["name"]: p for p in trace["peers"]}
        self.by_id = {p["peer_id"]: p for p in trace["peers"]}
        self.captures: dict[int, Capture] = {port: lab.capture(port) for port in trace["ports"]}
        self.senders: dict[int, socket.socket] = {port: lab.sender(port)
                                                  for port in trace["ports"]}
        self.used = sorted({p["index"] for p in trace["peers"]}
                           | {r["instance"] for r in trace["extra_replicas"]}
                           | {s["index"] for s in trace.get("bfd_sessions", [])}
                           | {r["instance"] for r in trace.get("bfd_extra_replicas", [])})
        self.replicas = len(trace["peers"]) + len(trace["extra_replicas"])
        self.with_request: set[str] = {p["name"] for p in trace["peers"]}
        self.obs = Observation(target.name, used_indexes=self.used)
        # what must be visible in the counters once a step is done (cumulative); a BFD
        # control packet counts as a heartbeat here: one receive reason each
        self.heartbeats_sent = 0
        self.fanout_reasons = 0
        self.bad_templates = 0

    def play(self) -> Observation:
        for i, step in enumerate(self.trace["steps"]):
            label = step.get("round") or step["op"]
            obs = StepObs(i, step["op"], label, now_us())
            self.obs.steps.append(obs)
            try:
                getattr(self, "_" + step["op"])(step, obs)
                self._settle(obs)
            except StepTimeout as exc:
                obs.problem = str(exc)
                self.obs.problem = f"step {i} ({label}): {exc}"
                return self.obs
            obs.t_done = now_us()
            obs.cells = self.target.read_cells(self.used)
        self.obs.full = self.target.read_full()
        return self.obs

    # -- ops ------------------------------------------------------------------------------

    def _round(self, step: dict[str, Any], obs: StepObs) -> None:
        assert self.target.client is not None
        for cap in self.captures.values():
            obs.unexpected += pending(cap)
        frame = template_frame(self.trace, step["seq"])
        t_po = now_us()
        self.target.client.packet_out(PacketOut(frame, {"egress_port": 0,
                                                        "mcast_grp": self.trace["fanout_group"]}))
        want: dict[int, int] = {}
        for name in self.with_request:
            want[self.peers[name]["port"]] = want.get(self.peers[name]["port"], 0) + 1
        for port, n in want.items():
            frames = self.captures[port].frames(partial(at_least, n), is_request,
                                                timeout_s=STEP_DEADLINE_S)
            for f in frames:
                hb = Heartbeat.unpack(f[42:42 + HEADER_LEN])
                peer = self.by_id.get(hb.peer_id)
                if peer is None or peer["name"] in obs.requests or hb.sequence != step["seq"]:
                    obs.unexpected.append(f)
                    continue
                obs.requests[peer["name"]] = Request(peer["name"], port, hb.sequence,
                                                     hb.tx_timestamp_us, f)
            if len(frames) < n:
                raise StepTimeout(f"{len(frames)} of {n} requests on port {port}")
        t_cap = now_us()
        self.obs.rounds[step["round"]] = Round(step["round"], step["seq"], t_po, t_cap,
                                               obs.requests)
        self.fanout_reasons += self.replicas
        self._send(step.get("packets", []), obs)

    def _send(self, packets: list[dict[str, Any]], obs: StepObs) -> None:
        """One frame at a time: each heartbeat is counted before the next one goes. bmv2
        captures in libpcap's immediate mode, whose ring holds about 8 frames of the default
        snap length; a burst longer than that would be lost before bmv2 saw it. (Ordinary
        frames are not counted anywhere: the trace follows at most 6 of them with a
        heartbeat on the same port.)"""
        for pkt in packets:
            port, frame, echoed = response_for(self.trace, pkt, self.obs.rounds)
            sent = Sent(frame, port, now_us(), pkt["echo"], pkt["from"], echoed)
            obs.sent.append(sent)
            self.senders[port].send(frame)
            if pkt["expect"] != "ORDINARY":
                self.heartbeats_sent += 1
                sent.t_counted = self._wait_counted()

    def _bfd(self, step: dict[str, Any], obs: StepObs) -> None:
        """BFD control packets, one at a time (as `_send`), each counted before the next;
        their arrival is anchored to the last round played (the model's clock)."""
        anchor = list(self.obs.rounds)[-1]
        for pkt in step["packets"]:
            port, frame = bfd_frame(self.trace, pkt)
            sent = Sent(frame, port, now_us(), anchor, None, 0)
            obs.sent.append(sent)
            self.senders[port].send(frame)
            self.heartbeats_sent += 1
            sent.t_counted = self._wait_counted()

    def _bfd_round(self, step: dict[str, Any], obs: StepObs) -> None:
        """The group-2 template; every session's control packet captured (each is due)."""
        assert self.target.client is not None
        for cap in self.captures.values():
            obs.unexpected += pending(cap)
        sessions = self.trace["bfd_sessions"]
        by_ip = {ip_int(s["ip"]): s for s in sessions}
        obs.anchor = list(self.obs.rounds)[-1]
        obs.t_po = now_us()
        self.target.client.packet_out(PacketOut(bfd_template_frame(self.trace), {
            "egress_port": 0, "mcast_grp": self.trace["bfd_group"]}))
        want: dict[int, int] = {}
        for s in sessions:
            want[s["port"]] = want.get(s["port"], 0) + 1
        for port, n in want.items():
            frames = self.captures[port].frames(partial(at_least, n), is_bfd_control,
                                                timeout_s=STEP_DEADLINE_S)
            for f in frames:
                s = by_ip.get(int.from_bytes(f[30:34], "big"))
                if s is None or s["name"] in obs.bfd_control:
                    obs.unexpected.append(f)
                    continue
                obs.bfd_control[s["name"]] = f
            if len(frames) < n:
                raise StepTimeout(f"{len(frames)} of {n} BFD control packets on port {port}")
        obs.t_cap = now_us()
        self.fanout_reasons += len(sessions) + len(self.trace["bfd_extra_replicas"])

    def _wait_counted(self) -> int:
        deadline = time.monotonic() + STEP_DEADLINE_S
        while True:
            reasons = self.target.reasons()
            classified = sum(reasons[r][0] for r in CLASSIFIED)
            if classified >= self.heartbeats_sent:
                return now_us()
            if time.monotonic() > deadline:
                raise StepTimeout(f"heartbeat #{self.heartbeats_sent} not counted after "
                                  f"{STEP_DEADLINE_S}s ({classified} counted)")
            time.sleep(0.002)

    def _reset_slot(self, step: dict[str, Any], obs: StepObs) -> None:
        self.target.reset_slot(self.peers[step["peer"]]["index"])

    def _delete(self, step: dict[str, Any], obs: StepObs) -> None:
        assert self.target.client is not None
        self.target.client.delete([ENTRY_OF[step["table"]](self.peers[step["peer"]])])

    def _insert(self, step: dict[str, Any], obs: StepObs) -> None:
        assert self.target.client is not None
        self.target.client.insert([ENTRY_OF[step["table"]](self.peers[step["peer"]])])

    def _bad_templates(self, step: dict[str, Any], obs: StepObs) -> None:
        assert self.target.client is not None
        for spec in step["templates"]:
            frame = template_frame(self.trace, step["seq"], spec)
            obs.templates.append(frame)
            self.target.client.packet_out(PacketOut(frame, {
                "egress_port": 0, "mcast_grp": self.trace["fanout_group"]}))
            self.bad_templates += 1
        for spec in step.get("direct", []):
            frame = direct_frame(self.trace)
            port = spec["port"]
            self.target.client.packet_out(PacketOut(frame, {"egress_port": port,
                                                            "mcast_grp": 0}))
            got = self.captures[port].frames(partial(at_least, 1), partial(equals, frame),
                                             timeout_s=STEP_DEADLINE_S)
            obs.direct.append((port, frame, bool(got)))

    # -- waiting ----------------------------------------------------------------------------

    def _settle(self, obs: StepObs) -> None:
        """Poll until the counters account for everything sent, and the digests for every
        event counted."""
        deadline = time.monotonic() + STEP_DEADLINE_S
        while True:
            reasons = self.target.reasons()
            classified = sum(reasons[r][0] for r in CLASSIFIED)
            fanout = (reasons[Reason.REQUEST_SENT][0] + reasons[Reason.REQUEST_NO_PEER][0]
                      + reasons[Reason.BFD_SENT][0])
            bad = reasons[Reason.BAD_TEMPLATE][0]
            events = (reasons[Reason.PEER_UP_EVENT][0] + reasons[Reason.PEER_DOWN_EVENT][0]
                      + reasons[Reason.BFD_EVENT][0])
            digests = self.target.digests()
            done = (classified == self.heartbeats_sent and fanout == self.fanout_reasons
                    and bad == self.bad_templates and len(digests) == events)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        seen = sum(len(s.digests) for s in self.obs.steps[:-1])
        obs.digests = digests[seen:]
        obs.reasons = reasons
        if not done:
            raise StepTimeout(
                f"after {STEP_DEADLINE_S}s: classified {classified}/{self.heartbeats_sent}, "
                f"fan-out {fanout}/{self.fanout_reasons}, bad templates "
                f"{bad}/{self.bad_templates}, digests {len(digests)}/{events} events")


class StepTimeout(Exception):
    pass


def at_least(n: int, frames: list[bytes]) -> bool:
    return len(frames) >= n


def equals(want: bytes, frame: bytes) -> bool:
    return frame == want


def pending(cap: Capture) -> list[bytes]:
    """Frames already waiting on a capture (without blocking)."""
    out: list[bytes] = []
    while True:
        try:
            data, addr = cap.sock.recvfrom(65535)
        except BlockingIOError:
            return out
        if addr[2] != socket.PACKET_OUTGOING:
            out.append(data)


@contextlib.contextmanager
def lab_for_trace(trace: dict[str, Any]) -> Iterator[Lab]:
    """Two ports (veth root end <-> a namespace per port), names unique to this run; the
    host stack must neither forward nor answer what the tests put on them."""
    with Lab(len(trace["ports"])) as lab:
        for iface in lab.ifaces:
            with open(f"/proc/sys/net/ipv4/conf/{iface}/forwarding", "w") as f:
                f.write("0\n")
        yield lab


def play(kind: str, trace: dict[str, Any], schema: P4Schema, log_dir: Path) -> Observation:
    """Start `kind` on a fresh lab, program it, play the trace, stop everything."""
    with lab_for_trace(trace) as lab:
        target: Target = (Bmv2Side(schema, lab, log_dir) if kind == targets.BMV2
                          else KernelSide(schema, lab))
        try:
            program(target, trace)
            obs = Player(trace, target, lab).play()
        finally:
            target.close()
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"observation-{kind}.json").write_text(json.dumps(obs.to_json(), indent=1))
    return obs
