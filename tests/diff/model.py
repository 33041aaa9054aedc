"""A reference of the data-plane contract (docs/protocol.md, docs/dataplane.md, docs/bfd.md
"Receive") for the trace.

It replays what one target was observed doing (the bytes the player sent, the requests the
target emitted with their tx times, the host-clock windows around every step) and says what
the registers, counters and digests must then hold:

- exactly, for everything that does not depend on the target's clock: counts, sequence,
  status, load, state, misses, reasons, digest (index, state, last_seq) - and hb_last_tx_us
  and DOWN digest times, which are the tx times the target itself wrote in requests we saw;
- as an interval [lo, hi] of target microseconds for arrival-dependent values
  (hb_last_rx_us, the RTTs, UP digest times). An arrival happened after its request left
  (tx, a target time we saw) and, by the host clock, no later than the end of the step
  minus the start of the request's round; both targets count time at the host clock's rate.

The model knows nothing of either target's code: only the documents.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from hbmon.protocol import (
    BFD_REGISTERS,
    HEADER_LEN,
    IPV4_TOTAL_LEN,
    MAGIC,
    REASON_COUNT,
    REQUEST_PORT,
    RESPONSE_PORT,
    UDP_LEN,
    VERSION,
    MsgType,
    PlaneState,
    Reason,
)

U32 = 0xFFFFFFFF
TIME_REGISTERS = ("hb_last_rx_us", "hb_rtt_last_us", "hb_rtt_min_us", "hb_rtt_max_us",
                  "hb_rtt_ewma_us")
EXACT_REGISTERS = ("hb_rx_count", "hb_tx_count", "hb_dup_count", "hb_miss_count",
                   "hb_last_seq", "hb_last_tx_us", "hb_peer_status", "hb_peer_load", "hb_state",
                   "hb_last_tx_seq")
# Reasons decided by looking at one received frame: their byte count is that frame's length.
RESPONSE_REASONS = (Reason.RESPONSE_RECORDED, Reason.TRUNCATED, Reason.BAD_MAGIC,
                    Reason.BAD_VERSION, Reason.BAD_TYPE, Reason.BAD_LENGTH,
                    Reason.UNKNOWN_PEER, Reason.SPOOFED, Reason.DUPLICATE,
                    Reason.OLD_SEQUENCE, Reason.FUTURE_SEQUENCE, Reason.BAD_NONCE,
                    Reason.BAD_TTL)
# The same for BFD control packets (docs/bfd.md "Receive", checks 1-7).
BFD_RECEIVE_REASONS = (Reason.BFD_RECORDED, Reason.BFD_TRUNCATED, Reason.BFD_BAD_VERSION,
                       Reason.BFD_MALFORMED, Reason.BFD_BAD_TTL,
                       Reason.BFD_UNKNOWN_DISCRIMINATOR, Reason.BFD_UNKNOWN_PEER)
BFD_PORT = 3784  # RFC 5881 section 4
BFD_LEN = 24


@dataclass(frozen=True, slots=True)
class Span:
    """A value known to lie in [lo, hi] (lo == hi: known exactly)."""

    lo: int
    hi: int

    @classmethod
    def exact(cls, value: int) -> Span:
        return cls(value, value)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.lo <= value <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"[{self.lo}, {self.hi}]"


ZERO = Span.exact(0)


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of an Ethernet/IPv4/UDP frame the classification looks at."""

    src_addr: int
    ttl: int
    ip_total_len: int
    udp_len: int
    dport: int
    sport: int
    hb: bytes  # every byte after the UDP header


def parse_udp(frame: bytes) -> Header | None:
    """The frame's IPv4/UDP header if it is unfragmented IPv4 without options carrying a
    whole UDP header, else None (docs/dataplane.md: "What is a heartbeat")."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if ip[0] >> 4 != 4 or ip[0] & 0x0F != 5 or ip[9] != 17:
        return None
    frag = struct.unpack_from("!H", ip, 6)[0]
    if frag & 0x3FFF:  # MF or an offset
        return None
    total = struct.unpack_from("!H", ip, 2)[0]
    src = int.from_bytes(ip[12:16], "big")
    sport, dport, udp_len = struct.unpack_from("!HHH", ip, 20)
    return Header(src, ip[8], total, udp_len, dport, sport, bytes(ip[28:]))


def classify_shape(frame: bytes) -> Reason | None:
    """The reason decided before the peer lookup, RESPONSE_RECORDED meaning "well formed,
    look it up"; None: not a heartbeat at all (ordinary traffic)."""
    h = parse_udp(frame)
    if h is None or h.dport != RESPONSE_PORT:
        return None
    if len(h.hb) < HEADER_LEN:
        return Reason.TRUNCATED
    magic, version, mtype = struct.unpack_from("!HBB", h.hb)
    if magic != MAGIC:
        return Reason.BAD_MAGIC
    if version != VERSION:
        return Reason.BAD_VERSION
    if mtype != MsgType.RESPONSE:
        return Reason.BAD_TYPE
    if h.udp_len != UDP_LEN or h.ip_total_len != IPV4_TOTAL_LEN:
        return Reason.BAD_LENGTH
    return Reason.RESPONSE_RECORDED


def template_ok(frame: bytes) -> bool:
    """docs/dataplane.md "Templates"."""
    h = parse_udp(frame)
    if h is None or h.sport != RESPONSE_PORT or h.dport != REQUEST_PORT:
        return False
    if len(h.hb) < HEADER_LEN:
        return False
    magic, version, mtype = struct.unpack_from("!HBB", h.hb)
    return (magic == MAGIC and version == VERSION and mtype == MsgType.REQUEST
            and h.udp_len == UDP_LEN and h.ip_total_len == IPV4_TOTAL_LEN)


def seq_newer(seq: int, last: int) -> bool:
    diff = (seq - last) & U32
    return diff != 0 and diff < 0x80000000


@dataclass
class Digest:
    index: int
    state: int
    last_seq: int
    time: Span
    # an UP raised by the last fresh response of its index in the step: its time must be
    # exactly the hb_last_rx_us read after the step
    is_last_rx: bool = False

    def key(self) -> tuple[int, int, int]:
        return (self.index, self.state, self.last_seq)


@dataclass
class BfdDigest:
    """A bfd_event_t: every field exact but the time (the packet's arrival)."""

    fields: dict[str, int]  # index, state, diag, flags, detect_mult, my_disc, timers
    time: Span

    def key(self) -> tuple[int, ...]:
        return tuple(self.fields[k] for k in BFD_DIGEST_KEYS)


BFD_DIGEST_KEYS = ("index", "state", "diag", "flags", "detect_mult", "my_disc",
                   "desired_min_tx_us", "required_min_rx_us")


@dataclass
class Slot:
    exact: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXACT_REGISTERS, 0))
    bfd: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BFD_REGISTERS, 0))
    time: dict[str, Span] = field(default_factory=lambda: dict.fromkeys(TIME_REGISTERS, ZERO))
    # the echoed tx of the last fresh response, and whether it was ahead of any arrival
    last_echoed: int | None = None
    last_future: bool = False
    # a BFD slot's hb_last_tx_us: no packet carries it, so only known to lie in a window
    tx_time: Span | None = None


@dataclass
class Expected:
    """What one step must leave behind (cumulative counters, slots of the used indexes)."""

    reasons: list[int]
    reason_bytes: dict[int, int]  # only RESPONSE_REASONS
    slots: dict[int, Slot]
    digests: list[Digest]
    bfd_digests: list[BfdDigest]
    bfd_control: dict[int, bytes]  # index -> the control packet (UDP payload) it must send
    packet_reasons: list[Reason | None]  # per packet sent in the step, None = ordinary


class Model:
    def __init__(self, trace: dict) -> None:
        self.trace = trace
        self.by_name = {p["name"]: p for p in trace["peers"]}
        # (source, peer_id) -> the peers entry's params (index, nonce_key, min_ttl)
        self.peers: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.peer_ids: set[int] = set()
        self.requests: dict[int, dict] = {}
        self.replicas: list[tuple[int, int]] = []
        self.reasons = [0] * REASON_COUNT
        self.reason_bytes = dict.fromkeys((int(r) for r in RESPONSE_REASONS), 0)
        self.slots: dict[int, Slot] = {}
        self.bfd_digests: list[BfdDigest] = []  # raised in the current step
        # bfd_sessions (our discriminator) and bfd_peers ((source, port)) -> index
        self.bfd_by_disc = {s["my_disc"]: s["index"] for s in trace.get("bfd_sessions", [])}
        self.bfd_by_peer = {(ip_int(s["ip"]), s["port"]): s["index"]
                            for s in trace.get("bfd_sessions", [])}
        self.bfd_requests = {s["index"]: s for s in trace.get("bfd_sessions", [])}
        self.bfd_replicas = [s["index"] for s in trace.get("bfd_sessions", [])]
        self.bfd_replicas += [r["instance"] for r in trace.get("bfd_extra_replicas", [])]
        self.bfd_control: dict[int, bytes] = {}  # sent in the current step
        for index in self.bfd_replicas:
            self.slots.setdefault(index, Slot())
        self.reason_bytes.update(dict.fromkeys((int(r) for r in BFD_RECEIVE_REASONS), 0))
        for p in trace["peers"]:
            self.insert_peer(p, tables=("peers", "peer_ids", "peer_requests"))
            self.replicas.append((p["port"], p["index"]))
        self.replicas += [(r["port"], r["instance"]) for r in trace["extra_replicas"]]
        for _, index in self.replicas:
            self.slots.setdefault(index, Slot())

    # -- configuration ----------------------------------------------------------------------

    def insert_peer(self, p: dict, tables: Iterable[str]) -> None:
        for t in tables:
            if t == "peers":
                self.peers[(ip_int(p["ip"]), p["peer_id"])] = (p["index"], p["key"],
                                                               p["min_ttl"])
            elif t == "peer_ids":
                self.peer_ids.add(p["peer_id"])
            elif t == "peer_requests":
                self.requests[p["index"]] = p
            else:
                raise ValueError(f"unknown table {t}")

    def delete_peer(self, p: dict, tables: Iterable[str]) -> None:
        for t in tables:
            if t == "peers":
                del self.peers[(ip_int(p["ip"]), p["peer_id"])]
            elif t == "peer_ids":
                self.peer_ids.discard(p["peer_id"])
            elif t == "peer_requests":
                del self.requests[p["index"]]
            else:
                raise ValueError(f"unknown table {t}")

    def reset_slot(self, index: int) -> None:
        self.slots[index] = Slot()

    # -- data plane -------------------------------------------------------------------------

    def bad_template(self) -> None:
        self.reasons[Reason.BAD_TEMPLATE] += 1

    def fan_out(self, seq: int, tx_by_index: dict[int, int], digests: list[Digest]) -> None:
        """One valid template of sequence `seq`: every replica of the group, with the tx
        times observed."""
        for _, index in self.replicas:
            req = self.requests.get(index)
            if req is None:
                self.reasons[Reason.REQUEST_NO_PEER] += 1
                continue
            slot = self.slots[index]
            e = slot.exact
            now = tx_by_index[index]
            misses = e["hb_miss_count"]
            dm = req["dm"]
            if dm and misses >= dm and e["hb_state"] != PlaneState.DOWN:
                e["hb_state"] = PlaneState.DOWN
                digests.append(Digest(index, PlaneState.DOWN, e["hb_last_seq"],
                                      Span.exact(now)))
                self.reasons[Reason.PEER_DOWN_EVENT] += 1
            e["hb_tx_count"] = (e["hb_tx_count"] + 1) & U32
            e["hb_last_tx_us"] = now
            e["hb_last_tx_seq"] = seq
            if misses != U32:
                e["hb_miss_count"] = misses + 1
            self.reasons[Reason.REQUEST_SENT] += 1

    def response(self, frame: bytes, arrival: Span, echoed: int,
                 digests: list[Digest]) -> Reason | None:
        """One frame into a port. `arrival`: when it reached the target (target µs);
        `echoed`: the tx_timestamp_us it carries."""
        reason = classify_shape(frame)
        if reason is None:
            return None
        if reason is Reason.RESPONSE_RECORDED:
            h = parse_udp(frame)
            assert h is not None
            peer_id, seq, nonce = struct.unpack_from("!III", h.hb, 4)
            status, load = h.hb[24], h.hb[25]
            entry = self.peers.get((h.src_addr, peer_id))
            if entry is None:
                reason = Reason.SPOOFED if peer_id in self.peer_ids else Reason.UNKNOWN_PEER
            else:
                index, key, min_ttl = entry
                reason = self._admit(index, seq, nonce, h.ttl, key, min_ttl)
                if reason is Reason.RESPONSE_RECORDED:
                    reason = self._record(index, seq, status, load, arrival, echoed, digests)
        self.reasons[reason] += 1
        self.reason_bytes[reason] += len(frame)
        return reason

    def _admit(self, index: int, seq: int, nonce: int, ttl: int, key: int, min_ttl: int
               ) -> Reason:
        """protocol.md's checks for a matched peer before its slot's own: GTSM, the nonce,
        and "answers a request sent" (RESPONSE_RECORDED: go on). None of them writes."""
        e = self.slots.setdefault(index, Slot()).exact
        if ttl < min_ttl:
            return Reason.BAD_TTL
        if nonce != key ^ seq:
            return Reason.BAD_NONCE
        if e["hb_tx_count"] == 0 or seq_newer(seq, e["hb_last_tx_seq"]):
            return Reason.FUTURE_SEQUENCE
        return Reason.RESPONSE_RECORDED

    def _record(self, index: int, seq: int, status: int, load: int, arrival: Span,
                echoed: int, digests: list[Digest]) -> Reason:
        slot = self.slots.setdefault(index, Slot())
        e, t = slot.exact, slot.time
        first = e["hb_rx_count"] == 0
        if not first and seq == e["hb_last_seq"]:
            e["hb_dup_count"] = (e["hb_dup_count"] + 1) & U32
            return Reason.DUPLICATE
        if not first and not seq_newer(seq, e["hb_last_seq"]):
            e["hb_dup_count"] = (e["hb_dup_count"] + 1) & U32
            return Reason.OLD_SEQUENCE
        if echoed > arrival.hi:
            rtt = ZERO
            slot.last_future = True
        elif echoed <= arrival.lo:
            rtt = Span(min(arrival.lo - echoed, U32), min(arrival.hi - echoed, U32))
            slot.last_future = False
        else:
            raise AssertionError(f"echoed {echoed} inside the arrival window {arrival}: "
                                 "the trace must keep echoed times clearly before or after")
        slot.last_echoed = echoed
        t["hb_rtt_last_us"] = rtt
        t["hb_rtt_min_us"] = rtt if first else Span(min(t["hb_rtt_min_us"].lo, rtt.lo),
                                                    min(t["hb_rtt_min_us"].hi, rtt.hi))
        t["hb_rtt_max_us"] = Span(max(t["hb_rtt_max_us"].lo, rtt.lo),
                                  max(t["hb_rtt_max_us"].hi, rtt.hi))
        old = t["hb_rtt_ewma_us"]
        t["hb_rtt_ewma_us"] = rtt if first else Span((7 * old.lo + rtt.lo) >> 3,
                                                     (7 * old.hi + rtt.hi) >> 3)
        t["hb_last_rx_us"] = arrival
        e["hb_last_seq"] = seq
        e["hb_peer_status"] = status
        e["hb_peer_load"] = load
        e["hb_miss_count"] = 0
        e["hb_rx_count"] = (e["hb_rx_count"] + 1) & U32
        if e["hb_state"] != PlaneState.UP:
            e["hb_state"] = PlaneState.UP
            for d in digests:  # only the last UP of an index in a step equals its last_rx
                if d.index == index and d.state == PlaneState.UP:
                    d.is_last_rx = False
            digests.append(Digest(index, PlaneState.UP, seq, arrival, is_last_rx=True))
            self.reasons[Reason.PEER_UP_EVENT] += 1
        else:
            for d in digests:
                if d.index == index and d.state == PlaneState.UP:
                    d.is_last_rx = False
        return Reason.RESPONSE_RECORDED

    def bfd(self, frame: bytes, port: int, arrival: Span) -> Reason | None:
        """One frame into `port` judged as docs/bfd.md "Receive" says (checks 1-7 in order;
        only a recorded packet writes); None: not a BFD packet (UDP to another port)."""
        h = parse_udp(frame)
        if h is None or h.dport != BFD_PORT:
            return None
        p = h.hb
        reason = Reason.BFD_RECORDED
        index = None
        if len(p) < BFD_LEN:
            reason = Reason.BFD_TRUNCATED
        else:
            b0, b1, mult, length, my, your, tx, rx = struct.unpack_from("!BBBBIIII", p)
            state, flags = b1 >> 6, b1 & 0x3F
            if b0 >> 5 != 1:
                reason = Reason.BFD_BAD_VERSION
            elif (length < BFD_LEN or length > h.udp_len - 8 or mult == 0 or flags & 0x05
                  or my == 0 or (your == 0 and state >= 2)):
                reason = Reason.BFD_MALFORMED
            elif h.ttl != 255:
                reason = Reason.BFD_BAD_TTL
            elif your != 0:
                index = self.bfd_by_disc.get(your)
                if index is None:
                    reason = Reason.BFD_UNKNOWN_DISCRIMINATOR
            else:
                index = self.bfd_by_peer.get((h.src_addr, port))
                if index is None:
                    reason = Reason.BFD_UNKNOWN_PEER
        if index is not None:
            slot = self.slots.setdefault(index, Slot())
            e, b = slot.exact, slot.bfd
            new = {"bfd_remote_state": state, "bfd_remote_diag": b0 & 0x1F,
                   "bfd_remote_mult": mult, "bfd_remote_disc": my, "bfd_remote_min_tx_us": tx,
                   "bfd_remote_min_rx_us": rx}
            changed = any(b[k] != v for k, v in new.items())
            e["hb_rx_count"] = (e["hb_rx_count"] + 1) & U32
            slot.time["hb_last_rx_us"] = arrival
            b.update(new)
            if flags & 0x20:
                b["bfd_final_due"] = 1
            if changed or flags & 0x10 or e["hb_state"] != PlaneState.UP:
                e["hb_state"] = PlaneState.UP
                self.bfd_digests.append(BfdDigest(
                    {"index": index, "state": state, "diag": b0 & 0x1F, "flags": flags,
                     "detect_mult": mult, "my_disc": my, "desired_min_tx_us": tx,
                     "required_min_rx_us": rx}, arrival))
                self.reasons[Reason.BFD_EVENT] += 1
        self.reasons[reason] += 1
        self.reason_bytes[reason] += len(frame)
        return reason

    def bfd_fan_out(self, now: Span, digests: list[Digest]) -> None:
        """One valid BFD template to group 2 (docs/bfd.md "Transmit"): every replica, in the
        doc's order (detection, due, rewrite); `now`: when the replicas left (target µs)."""
        for index in self.bfd_replicas:
            session = self.bfd_requests.get(index)
            if session is None:
                self.reasons[Reason.REQUEST_NO_PEER] += 1
                continue
            tx = session["tx"]
            slot = self.slots[index]
            e, b = slot.exact, slot.bfd
            if tx["detect_time_us"] and e["hb_state"] == PlaneState.UP:
                # the trace only uses 1 µs: any replica after the last packet finds it expired
                assert tx["detect_time_us"] == 1, "the model cannot place longer ones"
                e["hb_state"] = PlaneState.DOWN
                # the remote's discriminator is zeroed with it (RFC 5880 section 6.8.1), before
                # the rewrite below: this very packet carries your_disc 0
                b["bfd_remote_disc"] = 0
                digests.append(Digest(index, PlaneState.DOWN, e["hb_last_seq"], now))
                self.reasons[Reason.PEER_DOWN_EVENT] += 1
            # due: tx_interval_us 0 in the trace: always (the jitter is below 0 + 1)
            assert tx["tx_interval_us"] == 0, "the model cannot predict the jitter"
            flags = tx["flags"] | (0x10 if b["bfd_final_due"] else 0)
            self.bfd_control[index] = struct.pack(
                "!BBBBIIIII", 0x20 | tx["diag"], tx["state"] << 6 | flags, tx["detect_mult"],
                BFD_LEN, session["my_disc"], b["bfd_remote_disc"], tx["desired_min_tx_us"],
                tx["required_min_rx_us"], 0)
            b["bfd_final_due"] = 0
            e["hb_tx_count"] = (e["hb_tx_count"] + 1) & U32
            slot.tx_time = now
            self.reasons[Reason.BFD_SENT] += 1

    def expected(self, digests: list[Digest], packet_reasons: list[Reason | None]) -> Expected:
        snap = {i: Slot(dict(s.exact), dict(s.bfd), dict(s.time), s.last_echoed, s.last_future,
                        s.tx_time)
                for i, s in self.slots.items()}
        bfd_digests, self.bfd_digests = self.bfd_digests, []
        bfd_control, self.bfd_control = self.bfd_control, {}
        return Expected(list(self.reasons), dict(self.reason_bytes), snap, list(digests),
                        bfd_digests, bfd_control, list(packet_reasons))


def ip_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d
