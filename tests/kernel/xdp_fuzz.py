"""Fuzz frames for the kernel target's response path, and the reference they are judged by.

`classify` is written from docs/protocol.md ("How a monitor classifies what arrives on port
9191", version 2), docs/dataplane.md ("What is a heartbeat", "First response") and, for UDP
3784, docs/bfd.md "Receive" (the fuzz installs no BFD session), NOT from
kernel/bpf/hb_xdp.c: a fuzz run compares the BPF program with this second, independent
reading of the contract. `Model` is the contract's state (tables with each peer's nonce key
and GTSM floor, the slots' exact fields including what egress last sent, the hb_reason
counter, UP events); `Fuzzer` makes seeded frames of named classes.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass, field

from hbmon.protocol import PlaneState, Reason

ETH_IPV4 = b"\x08\x00"
PEER_MAC = bytes.fromhex("02aa00000001")
MONITOR_MAC = bytes.fromhex("02bb00000001")
HB_PORT = 9191  # responses arrive here (docs/protocol.md "Transport")
BFD_PORT = 3784  # BFD control packets (docs/bfd.md "Wire")
PEER_PORT = 9190
SERIAL_HALF = 1 << 31
_HB = struct.Struct("!HBBIIIQBBH")  # the 28-byte v2 header as docs/protocol.md draws it
HB_LEN = _HB.size
VERSION = 2
SEND_TTL = 255  # RFC 5082: what peers send with, and the single-hop GTSM floor
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Response:
    """A frame that passed every check before the table lookup."""

    src: int
    peer_id: int
    seq: int
    nonce: int
    tx_us: int
    status: int
    load: int
    ttl: int  # IPv4 TTL as received (GTSM)


def classify(frame: bytes) -> Reason | Response | None:
    """None: ordinary traffic (passed on untouched). A Reason: a heartbeat that failed a
    check before the lookup. A Response: a heartbeat for the tables to judge.

    Ethernet type must be IPv4 itself: a frame carrying an 802.1Q/802.1ad tag is ordinary
    traffic on both targets (docs/dataplane.md "Details both targets implement")."""
    if len(frame) < 14 or frame[12:14] != ETH_IPV4:
        return None
    ip = frame[14:]
    # "unfragmented IPv4 without options (version 4, IHL 5, MF 0, fragment offset 0)"
    if len(ip) < 20 or ip[0] != 0x45 or ip[9] != 17:
        return None
    if int.from_bytes(ip[6:8], "big") & 0x3FFF:  # MF (0x2000) or any fragment offset
        return None
    udp = ip[20:]
    if len(udp) >= 8 and int.from_bytes(udp[2:4], "big") == BFD_PORT:
        return classify_bfd(udp, ip[8])
    if len(udp) < 8 or int.from_bytes(udp[2:4], "big") != HB_PORT:
        return None
    hb = udp[8:]
    if len(hb) < HB_LEN:  # real bytes after the UDP header, whatever the length fields claim
        return Reason.TRUNCATED
    magic, version, mtype, peer_id, seq, nonce, tx_us, status, load, _ = _HB.unpack_from(hb)
    if magic != 0x4842:
        return Reason.BAD_MAGIC
    if version != VERSION:
        return Reason.BAD_VERSION
    if mtype != 2:
        return Reason.BAD_TYPE
    if (int.from_bytes(udp[4:6], "big") != 8 + HB_LEN
            or int.from_bytes(ip[2:4], "big") != 20 + 8 + HB_LEN):
        return Reason.BAD_LENGTH
    return Response(int.from_bytes(ip[12:16], "big"), peer_id, seq, nonce, tx_us, status, load,
                    ip[8])


def classify_bfd(udp: bytes, ttl: int) -> Reason:
    """docs/bfd.md "Receive" checks 1-6 in their order, for a data plane with no BFD
    session (what the fuzz installs): every control packet fails one of them."""
    bfd = udp[8:]
    if len(bfd) < 24:  # real bytes after the UDP header
        return Reason.BFD_TRUNCATED
    if bfd[0] >> 5 != 1:
        return Reason.BFD_BAD_VERSION
    state, flags, mult, length = bfd[1] >> 6, bfd[1] & 0x3F, bfd[2], bfd[3]
    my_disc, your_disc = int.from_bytes(bfd[4:8], "big"), int.from_bytes(bfd[8:12], "big")
    if (length < 24 or length > int.from_bytes(udp[4:6], "big") - 8 or mult == 0
            or flags & 0x05 or my_disc == 0 or (your_disc == 0 and state in (2, 3))):
        return Reason.BFD_MALFORMED
    if ttl != 255:
        return Reason.BFD_BAD_TTL
    return Reason.BFD_UNKNOWN_DISCRIMINATOR if your_disc else Reason.BFD_UNKNOWN_PEER


@dataclass(slots=True)
class Slot:
    """The registers of one slot whose values the contract fixes exactly."""

    rx_count: int = 0
    dup_count: int = 0
    miss_count: int = 0
    last_seq: int = 0
    peer_status: int = 0
    peer_load: int = 0
    state: int = PlaneState.UNKNOWN
    tx_count: int = 0  # requests egress sent (the fuzz plays egress between chunks)
    last_tx_seq: int = 0  # the sequence of the last of them
    last_tx_us: int = 0  # the echoed tx_timestamp_us of the last recorded response


EXACT_REGISTERS = {
    "hb_rx_count": "rx_count", "hb_dup_count": "dup_count", "hb_miss_count": "miss_count",
    "hb_last_seq": "last_seq", "hb_peer_status": "peer_status", "hb_peer_load": "peer_load",
    "hb_state": "state", "hb_tx_count": "tx_count", "hb_last_tx_seq": "last_tx_seq",
}
# written only by a recorded response (their values depend on the arrival time)
TIMED_REGISTERS = ("hb_last_rx_us", "hb_rtt_last_us", "hb_rtt_min_us", "hb_rtt_max_us",
                   "hb_rtt_ewma_us")
# never written by the response path at all (hb_tx_count and hb_last_tx_seq are not either:
# they are EXACT above because the fuzz writes them between chunks, as egress would)
UNTOUCHED_REGISTERS = ("hb_last_tx_us",)


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A `peers` entry: HbIngress.set_peer_index(index, nonce_key, min_ttl)."""

    index: int
    nonce_key: int
    min_ttl: int


@dataclass
class Model:
    """What the contract says the data plane holds after the frames fed so far."""

    peers: dict[tuple[int, int], PeerEntry]  # (source IPv4, peer_id) -> entry
    max_peers: int
    peer_ids: set[int] = field(init=False)
    slots: list[Slot] = field(init=False)
    counts: list[list[int]] = field(init=False)  # hb_reason: [packets, bytes] per code
    up_events: list[tuple[int, int]] = field(init=False)  # (index, sequence) UP events
    recorded: set[int] = field(init=False)  # indexes recorded since the last take_recorded()

    def __post_init__(self) -> None:
        self.peer_ids = {pid for _, pid in self.peers}
        self.slots = [Slot() for _ in range(self.max_peers)]
        self.counts = [[0, 0] for _ in range(32)]  # docs/dataplane.md: hb_reason has 32
        self.up_events = []
        self.recorded = set()

    def _count(self, reason: Reason, nbytes: int) -> None:
        self.counts[reason][0] += 1
        self.counts[reason][1] += nbytes

    def feed(self, frame: bytes) -> Reason | None:
        """One frame through the contract; None: ordinary traffic."""
        verdict = classify(frame)
        if verdict is None:
            return None
        reason = verdict if isinstance(verdict, Reason) else self._judge(verdict, len(frame))
        self._count(reason, len(frame))
        return reason

    def sent(self, index: int, seq: int) -> None:
        """Egress sent request `seq` to slot `index`."""
        slot = self.slots[index]
        slot.tx_count = (slot.tx_count + 1) & _U32
        slot.last_tx_seq = seq & _U32

    def _judge(self, r: Response, nbytes: int) -> Reason:
        entry = self.peers.get((r.src, r.peer_id))
        if entry is None:
            return Reason.SPOOFED if r.peer_id in self.peer_ids else Reason.UNKNOWN_PEER
        index = entry.index
        slot = self.slots[index]
        # protocol.md, for a matched peer: 1 TTL (GTSM), 2 nonce, 3 not after the last sent
        if r.ttl < entry.min_ttl:
            return Reason.BAD_TTL
        if r.nonce != entry.nonce_key ^ r.seq:
            return Reason.BAD_NONCE
        ahead = (r.seq - slot.last_tx_seq) & _U32
        if slot.tx_count == 0 or 0 < ahead < SERIAL_HALF:
            return Reason.FUTURE_SEQUENCE
        if slot.rx_count:  # a slot that never recorded has no last sequence to compare
            diff = (r.seq - slot.last_seq) & _U32
            if diff == 0 or diff >= SERIAL_HALF:  # RFC 1982: equal, or not after it
                slot.dup_count = (slot.dup_count + 1) & _U32
                return Reason.DUPLICATE if diff == 0 else Reason.OLD_SEQUENCE
        slot.rx_count = (slot.rx_count + 1) & _U32
        slot.last_seq = r.seq
        slot.peer_status = r.status
        slot.peer_load = r.load
        slot.miss_count = 0
        slot.last_tx_us = r.tx_us
        self.recorded.add(index)
        if slot.state != PlaneState.UP:
            slot.state = PlaneState.UP
            self.up_events.append((index, r.seq))
            self._count(Reason.PEER_UP_EVENT, nbytes)  # counted with the response's bytes
        return Reason.RESPONSE_RECORDED

    def take_recorded(self) -> set[int]:
        out, self.recorded = self.recorded, set()
        return out


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(*, src: int, dst: int, payload: bytes, dport: int = HB_PORT, sport: int = PEER_PORT,
          proto: int = 17, frag: int = 0x4000, ihl: int = 5, ip_len: int | None = None,
          udp_len: int | None = None, ttl: int = SEND_TTL) -> bytes:
    udp = _UDP.pack(sport, dport, 8 + len(payload) if udp_len is None else udp_len, 0)
    options = bytes(4 * (ihl - 5))
    total = 4 * ihl + len(udp) + len(payload) if ip_len is None else ip_len
    hdr = _IP.pack(0x40 | ihl, 0, total & 0xFFFF, 0, frag, ttl, proto, 0,
                   src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + options
    hdr = hdr[:10] + ipv4_checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return MONITOR_MAC + PEER_MAC + ETH_IPV4 + hdr + udp + payload


def heartbeat(peer_id: int, seq: int, tx_us: int = 0, *, nonce: int = 0, status: int = 0,
              load: int = 0, magic: int = 0x4842, version: int = VERSION, mtype: int = 2
              ) -> bytes:
    return _HB.pack(magic, version, mtype, peer_id & _U32, seq & _U32, nonce & _U32, tx_us,
                    status, load, 0)


def tag(frame_: bytes, tpid: int, vid: int) -> bytes:
    """Insert an 802.1Q (0x8100) or 802.1ad (0x88a8) tag after the MAC addresses."""
    return frame_[:12] + struct.pack("!HH", tpid, vid & 0x0FFF) + frame_[12:]


# Offsets (in an untagged frame) where one mutated byte changes a check's outcome.
_HOT = (12, 13, 14, 16, 17, 20, 21, 22, 23, 36, 37, 38, 39, 42, 43, 44, 45, 46, 47, 48, 49,
        50, 51, 52, 53, 54, 55, 56, 57)

CLASSES = {  # class -> weight (of a draw)
    "valid": 14, "stale": 8, "replayed": 6, "spoofed": 6, "unknown": 6, "truncated": 10,
    "mutated": 18, "tagged": 8, "fragmented": 7, "ordinary": 6, "random": 6, "bad_length": 3,
    # v2: an off-path forger (no nonce), the lockout of issue 11, answers from beyond a router
    "bad_nonce": 6, "future": 6, "low_ttl": 5,
}


class Fuzzer:
    """Seeded frames of the named CLASSES against `model`'s peers (its current state decides
    which sequences are fresh)."""

    def __init__(self, seed: int, model: Model, monitor_ip: int, now_us: int) -> None:
        self.rng = random.Random(seed)
        self.model = model
        self.monitor_ip = monitor_ip
        self.now_us = now_us
        self.peers = sorted(model.peers.items())
        self.recent: list[bytes] = []  # heartbeats sent lately: material for replays
        self.classes, self.weights = zip(*CLASSES.items(), strict=True)
        self.sent: Counter[str] = Counter()  # frames run through the program, per class

    def _peer(self) -> tuple[int, int, int]:
        (src, pid), entry = self.rng.choice(self.peers)
        return src, pid, entry.index

    def _key(self, src: int, pid: int) -> int:
        return self.model.peers[(src, pid)].nonce_key

    def _hb(self, src: int, pid: int, seq: int, tx_us: int = 0, **kw: int) -> bytes:
        """A heartbeat carrying the nonce the peer's request `seq` carried (key ^ seq)."""
        return heartbeat(pid, seq, tx_us, nonce=self._key(src, pid) ^ (seq & _U32), **kw)

    def egress(self) -> list[int]:
        """Play egress for a random 80 % of the slots: one more request each, mostly the next
        sequence, sometimes a jump (a controller restart); a slot's first request has a random
        sequence (wraps included). Returns the slots written (the test writes them too)."""
        rng = self.rng
        changed = []
        for _, entry in self.peers:
            if rng.random() < 0.8:
                slot = self.model.slots[entry.index]
                if slot.tx_count == 0:
                    seq = rng.getrandbits(32)
                else:
                    seq = slot.last_tx_seq + rng.choice((1, 3, 10, 50, rng.randrange(1, 1000)))
                self.model.sent(entry.index, seq)
                changed.append(entry.index)
        return changed

    def _fresh(self, index: int) -> int:
        """A sequence in (last recorded, last sent] when there is one (else a future one)."""
        slot = self.model.slots[index]
        if not slot.tx_count:
            return self.rng.getrandbits(32)
        if not slot.rx_count:
            return (slot.last_tx_seq - self.rng.randrange(0, 4)) & _U32
        room = (slot.last_tx_seq - slot.last_seq) & _U32
        if not 0 < room < SERIAL_HALF:
            return (slot.last_seq + 1) & _U32
        step = self.rng.choice((1, 1, 1, 2, 3, room, self.rng.randrange(1, room + 1)))
        return (slot.last_seq + min(step, room)) & _U32

    def _tx_us(self) -> int:
        roll = self.rng.random()
        if roll < 0.9:
            return max(0, self.now_us - self.rng.randrange(0, 5_000_000))
        if roll < 0.95:
            return self.now_us + self.rng.randrange(1, 1 << 40)  # a time never written
        return self.rng.getrandbits(64)

    def valid(self, index_src_pid: tuple[int, int, int] | None = None) -> bytes:
        src, pid, index = index_src_pid or self._peer()
        rng = self.rng
        hb = self._hb(src, pid, self._fresh(index), self._tx_us(), status=rng.randrange(3),
                      load=rng.randrange(256))
        return frame(src=src, dst=self.monitor_ip, payload=hb,
                     frag=rng.choice((0x4000, 0x0000)))

    def draw(self) -> tuple[str, bytes, int]:
        """(class, frame, repeat): send `frame` `repeat` times in a row (only replays repeat)."""
        rng = self.rng
        cls = rng.choices(self.classes, self.weights)[0]
        repeat = 1
        if cls == "valid":
            out = self.valid()
        elif cls == "stale":
            src, pid, index = self._peer()
            back = rng.choice((0, 1, 2, rng.randrange(SERIAL_HALF + 1)))
            seq = self.model.slots[index].last_seq - back
            out = frame(src=src, dst=self.monitor_ip, payload=self._hb(src, pid, seq,
                                                                       self._tx_us()))
        elif cls == "replayed" and self.recent:
            out = rng.choice(self.recent)
            repeat = rng.randrange(1, 7)
        elif cls == "spoofed":  # a known peer_id from an address it is not registered for
            own, pid, _ = self._peer()
            src = rng.choice((self._peer()[0], rng.getrandbits(32)))
            src = src if src != own else own ^ 0xFF
            out = frame(src=src, dst=self.monitor_ip, payload=heartbeat(pid, rng.getrandbits(32)))
        elif cls == "unknown":
            src = rng.choice((self._peer()[0], rng.getrandbits(32)))
            pid = rng.getrandbits(32)
            out = frame(src=src, dst=self.monitor_ip, payload=heartbeat(pid, rng.getrandbits(32)))
        elif cls == "truncated":
            whole = self.valid()
            out = whole[:rng.randrange(14, len(whole))]
        elif cls == "mutated":
            buf = bytearray(self.valid())
            for _ in range(rng.randrange(1, 5)):
                at = rng.choice(_HOT) if rng.random() < 0.7 else rng.randrange(len(buf))
                buf[at] = rng.choice((0, 0xFF, buf[at] ^ (1 << rng.randrange(8)),
                                      rng.randrange(256)))
            if rng.random() < 0.1:
                buf += rng.randbytes(rng.randrange(1, 40))
            out = bytes(buf)
        elif cls == "tagged":
            # the dangerous case: a fresh, otherwise valid response behind a tag
            out = tag(self.valid(), rng.choice((0x8100, 0x88A8)), rng.randrange(4096))
            if rng.random() < 0.3:
                out = tag(out, 0x88A8, rng.randrange(4096))  # QinQ
        elif cls == "fragmented":
            # MF, an offset, or both; DF or the reserved bit beside them change nothing
            more, offset = rng.choice(((0x2000, 0), (0x2000, 1), (0, 1)))
            if offset:
                offset = rng.randrange(1, 0x2000)
            flags = more | offset | rng.choice((0, 0x4000, 0x8000))
            src, pid, index = self._peer()
            out = frame(src=src, dst=self.monitor_ip, frag=flags,
                        payload=self._hb(src, pid, self._fresh(index), self._tx_us()))
        elif cls == "ordinary":
            out = self._ordinary()
        elif cls == "bad_nonce":  # everything right but the nonce: what an off-path forger has
            src, pid, index = self._peer()
            seq = self._fresh(index)
            good = self._key(src, pid) ^ seq
            other_src, other_pid, _ = self._peer()
            nonce = rng.choice((rng.getrandbits(32), seq, self._key(src, pid), 0,
                                self._key(other_src, other_pid) ^ seq,
                                good ^ (1 << rng.randrange(32))))
            nonce = nonce if nonce != good else good ^ 1
            out = frame(src=src, dst=self.monitor_ip,
                        payload=heartbeat(pid, seq, self._tx_us(), nonce=nonce))
        elif cls == "future":  # the lockout: ahead of the last request sent, nonce right
            src, pid, index = self._peer()
            slot = self.model.slots[index]
            ahead = rng.choice((1, 2, 1 << 30, SERIAL_HALF - 1, rng.randrange(1, SERIAL_HALF)))
            seq = rng.choice((slot.last_tx_seq + ahead, SERIAL_HALF - 1))
            out = frame(src=src, dst=self.monitor_ip, payload=self._hb(src, pid, seq,
                                                                       self._tx_us()))
        elif cls == "low_ttl":  # a fresh answer that crossed routers (GTSM peers count it)
            src, pid, index = self._peer()
            out = frame(src=src, dst=self.monitor_ip, ttl=rng.randrange(SEND_TTL),
                        payload=self._hb(src, pid, self._fresh(index), self._tx_us()))
        elif cls == "bad_length":
            src, pid, index = self._peer()
            hb = self._hb(src, pid, self._fresh(index))
            kind = rng.randrange(3)
            if kind == 0:
                out = frame(src=src, dst=self.monitor_ip, payload=hb + rng.randbytes(
                    rng.randrange(1, 64)))
            elif kind == 1:
                out = frame(src=src, dst=self.monitor_ip, payload=hb,
                            udp_len=rng.choice((0, 8, 32, 35, 37, 0xFFFF)))
            else:
                out = frame(src=src, dst=self.monitor_ip, payload=hb,
                            ip_len=rng.choice((0, 20, 52, 55, 57, 0xFFFF)))
        else:  # "random", or a replay before anything was sent
            cls = "random"
            out = self._random()
        if classify(out) is not None and cls != "replayed":
            self.recent.append(out)
            if len(self.recent) > 512:
                del self.recent[:256]
        self.sent[cls] += repeat
        return cls, out, repeat

    def _ordinary(self) -> bytes:
        rng = self.rng
        src, pid, index = self._peer()
        hb = self._hb(src, pid, self._fresh(index))
        kind = rng.randrange(6)
        if kind == 0:  # ARP
            return MONITOR_MAC + PEER_MAC + b"\x08\x06" + rng.randbytes(28)
        if kind == 1:  # IPv6 carrying anything
            return MONITOR_MAC + PEER_MAC + b"\x86\xdd" + rng.randbytes(rng.randrange(40, 120))
        if kind == 2:  # TCP to 9191
            return frame(src=src, dst=self.monitor_ip, payload=hb, proto=6)
        if kind == 3:  # UDP to another port (the request port among them)
            return frame(src=src, dst=self.monitor_ip, payload=hb,
                         dport=rng.choice((PEER_PORT, 53, 9192, rng.randrange(65536))))
        if kind == 4:  # IPv4 options
            return frame(src=src, dst=self.monitor_ip, payload=hb, ihl=rng.randrange(6, 16))
        return frame(src=src, dst=self.monitor_ip, payload=hb, proto=rng.randrange(256))

    def _random(self) -> bytes:
        rng = self.rng
        buf = bytearray(rng.randbytes(rng.randrange(14, 200)))
        if rng.random() < 0.5 and len(buf) >= 38:  # deep enough to reach the heartbeat checks
            buf[12:14] = ETH_IPV4
            buf[14] = 0x45
            buf[20] &= 0x40
            buf[21] = 0
            buf[23] = 17
            # mostly the heartbeat checks, sometimes BFD's
            buf[36:38] = (BFD_PORT if rng.random() < 0.1 else HB_PORT).to_bytes(2, "big")
        return bytes(buf)
