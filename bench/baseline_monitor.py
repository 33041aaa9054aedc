"""The user-space heartbeat monitor a user would write instead of hbmon (issue 9's baseline).

ONE Python process does the whole job in user space: every interval it sends one REQUEST
per peer (docs/protocol.md version 2: monitor_ip:9191 -> peer_ip:9190, IPv4 TTL 255,
sequence = round number, nonce = the peer's random 32-bit key XOR the sequence,
tx_timestamp_us from CLOCK_MONOTONIC), receives every RESPONSE, checks what hbmon's data
plane checks (source address, nonce, a sequence no later than the last round sent), keeps
per peer rx/tx, the last sequence (RFC 1982: duplicates and old sequences ignored), the last
receive time, RTT
(last and EWMA, alpha 1/8 as the data plane) and the reported status, and derives the same
health as hbmon: DOWN after detect_mult x interval without a fresh answer, DEGRADED on loss
over a window, on RTT or on the peer's own status, UNKNOWN until the first answer.

Two variants (``--variant``):

- ``tuned`` (default): non-blocking socket, epoll; after each wake-up recvmmsg (ctypes) drains
  the socket in batches until EAGAIN; a round goes out with sendmmsg in batches of up to 1,024
  from prebuilt message vectors (a static per-peer 8-byte head, the round's shared sequence,
  the peer's nonce, one shared 12-byte tail per batch carrying the timestamp); the round's
  nonces are one big-integer XOR of all keys with the sequence, so per-round Python work is
  per batch, not per peer. This is deliberately the fastest plain-Python monitor we know how
  to write: a slower baseline would flatter hbmon.
- ``asyncio``: the stock way, an asyncio DatagramProtocol endpoint; `sendto` per peer per
  round, `datagram_received` per response.

Health is evaluated every ``--eval-ms`` (default 500 ms, hbmon's poll interval), not per
packet, as a sensible user would do.

It reports its own counters (responses received/recorded, per-state peer counts, DOWN peers)
to ``--status-file`` (JSON, replaced atomically after every evaluation) and on exit to stdout,
so a bench can check it really received everything.

Usage (root for big socket buffers; run inside the namespace that owns the monitor address):
    python bench/baseline_monitor.py --monitor-ip 198.18.0.1 --peers-file peers.json \
        --interval-ms 100 --detect-mult 3 [--variant tuned|asyncio] [--status-file S.json]
peers.json: [{"name": "peer00001", "address": "198.18.1.1", "peer_id": 1001}, ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import json
import os
import secrets
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = 0x4842
VERSION = 2
REQUEST, RESPONSE = 1, 2
REQUEST_PORT, RESPONSE_PORT = 9190, 9191
HEADER_LEN = 28
SEND_TTL = 255  # RFC 5082, as hbmon's requests
SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 0x80000000
# magic, version, type of a RESPONSE as one big-endian word: one compare per datagram
RESPONSE_WORD = (MAGIC << 16) | (VERSION << 8) | RESPONSE
# magic+version+type, peer_id, sequence, nonce, tx_ts, status, load
_HEADER = struct.Struct("!IIIIQBB2x")
_HEAD = struct.Struct("!HBBI")  # the static first 8 bytes of a REQUEST
_SEQ = struct.Struct("!I")
_TAIL = struct.Struct("!QBB2x")  # tx_timestamp_us, status, load, reserved

UNKNOWN, UP, DEGRADED, DOWN = "UNKNOWN", "UP", "DEGRADED", "DOWN"
STATES = (UNKNOWN, UP, DEGRADED, DOWN)


def now_us() -> int:
    return time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as the protocol's timestamps


def seq_newer(a: int, b: int) -> bool:
    """RFC 1982 serial-number arithmetic on 32 bits: is `a` newer than `b`?"""
    d = (a - b) & SEQ_MASK
    return d != 0 and d < SEQ_HALF


def ip_to_int(address: str) -> int:
    """An IPv4 address as the native-endian int of its 4 network-order bytes (sin_addr)."""
    return int.from_bytes(socket.inet_aton(address), sys.byteorder)


@dataclass(frozen=True, slots=True)
class Rules:
    """The health thresholds; defaults are hbmon's (controller/hbmon/controller/health.py)."""

    interval_us: int
    detect_mult: int = 3
    rtt_degraded_us: int = 50_000
    loss_degraded: float = 0.2
    loss_window: int = 10  # evaluations in the sliding loss window
    loss_min_requests: int = 5


class PeerTable:
    """Per-peer state as parallel lists (index = peer number): the cheapest layout in Python.

    Pure logic, no I/O: `ingest_batch` / `ingest_one` take datagrams already received,
    `evaluate` derives health at a given time. tests/test_baseline_monitor.py drives it.
    """

    def __init__(self, peers: Sequence[dict[str, Any]], rules: Rules) -> None:
        self.rules = rules
        self.names = [str(p["name"]) for p in peers]
        self.addresses = [str(p["address"]) for p in peers]
        self.peer_ids = [int(p["peer_id"]) for p in peers]
        self.addr_ints = [ip_to_int(a) for a in self.addresses]
        self.index = {pid: i for i, pid in enumerate(self.peer_ids)}
        if len(self.index) != len(self.peer_ids):
            raise ValueError("peer_id must be unique")
        n = len(self.peer_ids)
        # per-peer random nonce keys, never sent alone: request nonce = key ^ sequence
        self.nonce_keys = [secrets.randbits(32) or 1 for _ in range(n)]
        self.rx = [0] * n
        self.tx_base = [0] * n  # round counter when the peer was added: tx = rounds - base
        self.last_seq = [-1] * n  # -1: nothing recorded yet
        self.last_rx_us = [0] * n
        self.rtt_last_us = [0] * n
        self.rtt_ewma_us = [0] * n
        self.status = [0] * n
        self.load = [0] * n
        self.state = [UNKNOWN] * n
        # (tx, rx) per evaluation, the last loss_window + 1 of them, for the loss ratio
        self.window: list[deque[tuple[int, int]]] = [
            deque(maxlen=rules.loss_window + 1) for _ in range(n)]
        self.loss = [0.0] * n
        self.rounds = 0
        self.degraded_by = {"status": 0, "rtt": 0, "loss": 0}  # of the last evaluation
        self.counters = {"received": 0, "recorded": 0, "duplicate": 0, "old_sequence": 0,
                         "bad": 0, "unknown_peer": 0, "spoofed": 0, "bad_nonce": 0,
                         "future_sequence": 0}

    # ---- receive path (hot) -------------------------------------------------------------

    def ingest_batch(self, data: bytes | bytearray | memoryview, slot: int,
                     lens: Sequence[int], sources: Sequence[int], n: int, now: int) -> None:
        """`n` datagrams: payload i at data[i*slot:], length lens[i], source sin_addr
        (native int) sources[i]. One clock reading per batch: the batch arrived together."""
        index_get = self.index.get
        addr_ints, last_seq, rx = self.addr_ints, self.last_seq, self.rx
        last_rx, rtt_last, ewma = self.last_rx_us, self.rtt_last_us, self.rtt_ewma_us
        status, load, keys, tx_base = self.status, self.load, self.nonce_keys, self.tx_base
        sent = self.rounds  # sequence of the last round sent (the round number)
        unpack = _HEADER.unpack_from
        recorded = dup = old = bad = unknown = spoofed = bad_nonce = future = 0
        for i in range(n):
            if lens[i] != HEADER_LEN:
                bad += 1
                continue
            word, pid, seq, nonce, ts, st, ld = unpack(data, i * slot)
            if word != RESPONSE_WORD:
                bad += 1
                continue
            idx = index_get(pid)
            if idx is None:
                unknown += 1
                continue
            if addr_ints[idx] != sources[i]:
                spoofed += 1
                continue
            if nonce != keys[idx] ^ seq:
                bad_nonce += 1
                continue
            # only sequences really sent count: none sent yet, or after the last round sent
            d = (seq - sent) & SEQ_MASK
            if sent == tx_base[idx] or (d != 0 and d < SEQ_HALF):
                future += 1
                continue
            last = last_seq[idx]
            if last >= 0:
                d = (seq - last) & SEQ_MASK
                if d == 0:
                    dup += 1
                    continue
                if d >= SEQ_HALF:
                    old += 1
                    continue
            last_seq[idx] = seq
            rx[idx] += 1
            last_rx[idx] = now
            rtt = now - ts
            if rtt < 0:
                rtt = 0
            rtt_last[idx] = rtt
            ewma[idx] = rtt if last < 0 else (7 * ewma[idx] + rtt) >> 3
            status[idx] = st
            load[idx] = ld
            recorded += 1
        c = self.counters
        c["received"] += n
        c["recorded"] += recorded
        c["duplicate"] += dup
        c["old_sequence"] += old
        c["bad"] += bad
        c["unknown_peer"] += unknown
        c["spoofed"] += spoofed
        c["bad_nonce"] += bad_nonce
        c["future_sequence"] += future

    def ingest_one(self, payload: bytes, source: str, now: int) -> None:
        """One datagram from `source` (dotted quad), as asyncio hands them over."""
        idx = self.index.get(int.from_bytes(payload[4:8], "big")) \
            if len(payload) == HEADER_LEN else None
        addr = self.addr_ints[idx] if idx is not None and self.addresses[idx] == source else -1
        self.ingest_batch(payload, 0, (len(payload),), (addr,), 1, now)

    # ---- health -------------------------------------------------------------------------

    def evaluate(self, now: int, settled_rounds: int | None = None) -> dict[str, int]:
        """Derive every peer's state at `now`; returns the count per state.

        `settled_rounds`: rounds whose answers had time to arrive (the last round may still
        be in flight; counting it as lost would show a phantom loss of one round).
        """
        r = self.rules
        dead_after = r.detect_mult * r.interval_us
        rounds = self.rounds if settled_rounds is None else settled_rounds
        counts = dict.fromkeys(STATES, 0)
        why = self.degraded_by = {"status": 0, "rtt": 0, "loss": 0}
        for i in range(len(self.peer_ids)):
            tx = rounds - self.tx_base[i]
            win = self.window[i]
            win.append((tx, self.rx[i]))
            tx0, rx0 = win[0]
            sent = tx - tx0
            if sent >= r.loss_min_requests:
                self.loss[i] = max(0.0, 1.0 - (self.rx[i] - rx0) / sent)
            if self.last_seq[i] < 0:
                state = UNKNOWN
            elif now - self.last_rx_us[i] > dead_after:
                state = DOWN
            elif self.status[i] != 0:
                state = DEGRADED
                why["status"] += 1
            elif self.rtt_ewma_us[i] > r.rtt_degraded_us:
                state = DEGRADED
                why["rtt"] += 1
            elif self.loss[i] > r.loss_degraded:
                state = DEGRADED
                why["loss"] += 1
            else:
                state = UP
            self.state[i] = state
            counts[state] += 1
        return counts

    def peer_dict(self, i: int) -> dict[str, Any]:
        return {"name": self.names[i], "state": self.state[i], "rx": self.rx[i],
                "tx": self.rounds - self.tx_base[i], "last_seq": self.last_seq[i],
                "rtt_last_us": self.rtt_last_us[i], "rtt_ewma_us": self.rtt_ewma_us[i],
                "loss": round(self.loss[i], 4), "status": self.status[i]}


# ---- the tuned variant: epoll + recvmmsg / sendmmsg via ctypes -----------------------------

MSG_DONTWAIT = 0x40
RX_BATCH = 256
RX_SLOT = 64  # room per datagram: longer than a heartbeat so over-long ones show their length
TX_BATCH = 1024  # UIO_MAXIOV: the kernel's limit on messages per sendmmsg


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)  # 64 on x86-64: msg_len is the 15th u32 of each
_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


def _addr(buf: Any) -> int:
    return ctypes.addressof(buf) if isinstance(buf, ctypes.Array) else \
        ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _sockaddr_in(address: str, port: int) -> bytes:
    # struct sockaddr_in: family (native u16), port (network u16), address, 8 zero bytes
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + \
        socket.inet_aton(address) + bytes(8)


class _Sender:
    """A round's REQUESTs as prebuilt sendmmsg vectors: per message a static head, the
    shared sequence, the peer's nonce and a shared tail (4 iovecs); a round rewrites the
    sequence, all nonces (one big-integer XOR) and, per batch, the tail's timestamp."""

    def __init__(self, table: PeerTable) -> None:
        n = len(table.peer_ids)
        self.n = n
        self.heads = bytearray(b"".join(_HEAD.pack(MAGIC, VERSION, REQUEST, pid)
                                        for pid in table.peer_ids))
        self.names = bytearray(b"".join(_sockaddr_in(a, REQUEST_PORT)
                                        for a in table.addresses))
        # all keys as one integer (4 big-endian bytes each), and 1 in every 4-byte lane: the
        # round's nonces are keys ^ (ones * seq), no carry crossing lanes (seq < 2^32)
        self.keys = int.from_bytes(b"".join(k.to_bytes(4, "big") for k in table.nonce_keys),
                                   "big")
        self.ones = int.from_bytes(b"\0\0\0\1" * n, "big")
        self.nonces = bytearray(4 * n)
        self.seq = bytearray(_SEQ.size)
        self.tail = bytearray(_TAIL.size)
        self.iov = (_IoVec * (4 * n))()
        self.msgs = (_MMsgHdr * n)()
        heads, names, nonces = _addr(self.heads), _addr(self.names), _addr(self.nonces)
        seq, tail = _addr(self.seq), _addr(self.tail)
        iov_base = ctypes.addressof(self.iov)
        iov_size = ctypes.sizeof(_IoVec)
        for i in range(n):
            for j, (base, length) in enumerate(((heads + 8 * i, 8), (seq, 4),
                                                (nonces + 4 * i, 4), (tail, _TAIL.size))):
                self.iov[4 * i + j].iov_base = base
                self.iov[4 * i + j].iov_len = length
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = names + 16 * i
            hdr.msg_namelen = 16
            hdr.msg_iov = iov_base + 4 * i * iov_size
            hdr.msg_iovlen = 4
        self.base = ctypes.addressof(self.msgs)
        self.errors = 0

    def stamp(self, seq: int) -> None:
        """Write round `seq`'s sequence and every peer's nonce into the vectors."""
        seq &= SEQ_MASK
        _SEQ.pack_into(self.seq, 0, seq)
        # same length: written in place, the iovecs keep pointing at it
        self.nonces[:] = (self.keys ^ (self.ones * seq)).to_bytes(4 * self.n, "big")

    def send_round(self, fd: int, seq: int) -> int:
        """Send every peer's REQUEST of round `seq`; returns how many went out."""
        sent = 0
        pack = _TAIL.pack_into
        self.stamp(seq)
        while sent < self.n:
            # the kernel copies the payload during the call, so one tail serves a batch
            pack(self.tail, 0, now_us(), 0, 0)
            k = _sendmmsg(fd, self.base + sent * _MMSG_SIZE, min(TX_BATCH, self.n - sent), 0)
            if k > 0:
                sent += k
                continue
            err = ctypes.get_errno()
            if k < 0 and err == errno.EINTR:
                continue
            if k < 0 and err in (errno.EAGAIN, errno.ENOBUFS):
                # send buffer full: wait until it drains rather than drop the rest
                select.select([], [fd], [], 0.05)
                continue
            self.errors += 1  # e.g. ECONNREFUSED left by an ICMP error: skip one message
            sent += 1
        return sent


class _Receiver:
    def __init__(self) -> None:
        self.data = bytearray(RX_BATCH * RX_SLOT)
        self.names = bytearray(RX_BATCH * 16)
        self.iov = (_IoVec * RX_BATCH)()
        self.msgs = (_MMsgHdr * RX_BATCH)()
        data, names = _addr(self.data), _addr(self.names)
        for i in range(RX_BATCH):
            self.iov[i].iov_base = data + i * RX_SLOT
            self.iov[i].iov_len = RX_SLOT
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = names + 16 * i
            hdr.msg_namelen = 16  # AF_INET: the kernel writes back 16 every time
            hdr.msg_iov = ctypes.addressof(self.iov[i])
            hdr.msg_iovlen = 1
        self.base = ctypes.addressof(self.msgs)
        # read results straight from the buffers (no ctypes attribute access per datagram)
        lens_u32 = memoryview(self.msgs).cast("B").cast("I")
        self.lens = lens_u32[14::_MMSG_SIZE // 4]  # msg_len of message i
        self.sources = memoryview(self.names).cast("I")[1::4]  # sin_addr of message i

    def drain(self, fd: int, table: PeerTable) -> None:
        while True:
            n = _recvmmsg(fd, self.base, RX_BATCH, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR,
                                                        errno.ECONNREFUSED):
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                if n < 0 and ctypes.get_errno() == errno.EINTR:
                    continue
                return
            table.ingest_batch(self.data, RX_SLOT, self.lens, self.sources, n, now_us())
            if n < RX_BATCH:
                return  # the socket is empty (a short batch): spare the EAGAIN call


def open_socket(monitor_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:  # a whole round of answers arrives at once: 65,536 x ~1 KiB of truesize
            sock.setsockopt(socket.SOL_SOCKET, force, 96 << 20)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, 96 << 20)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, SEND_TTL)
    sock.bind((monitor_ip, RESPONSE_PORT))
    sock.setblocking(False)
    return sock


class Monitor:
    """Rounds and evaluations on a schedule; the variants differ only in I/O."""

    def __init__(self, table: PeerTable, eval_us: int, status_file: Path | None) -> None:
        self.table = table
        self.eval_us = eval_us
        self.status_file = status_file
        self.started_us = now_us()
        self.next_round = self.started_us
        self.next_eval = self.started_us + eval_us
        self.last_round_us = 0
        self.late_rounds = 0
        self.counts = dict.fromkeys(STATES, 0)
        self.evaluations = 0
        self.stopping = False

    def settled_rounds(self, now: int) -> int:
        # answers to a round sent less than 100 ms (or one interval) ago may still be on
        # their way; they count once they could have arrived
        grace = min(100_000, self.table.rules.interval_us)
        return self.table.rounds - (1 if now - self.last_round_us < grace else 0)

    def evaluate(self, now: int) -> None:
        self.counts = self.table.evaluate(now, self.settled_rounds(now))
        self.evaluations += 1
        if self.status_file is not None:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report(brief=True)))
            tmp.replace(self.status_file)

    def report(self, brief: bool = False) -> dict[str, Any]:
        t = self.table
        down = [t.names[i] for i, s in enumerate(t.state) if s == DOWN]
        out: dict[str, Any] = {
            "pid": os.getpid(), "peers": len(t.peer_ids), "rounds": t.rounds,
            "late_rounds": self.late_rounds, "evaluations": self.evaluations,
            "uptime_s": round((now_us() - self.started_us) / 1e6, 3),
            "states": self.counts, "degraded_by": t.degraded_by, "down_peers": down[:20],
            **t.counters,
        }
        if not brief:
            out["peers_sample"] = [t.peer_dict(i) for i in range(min(3, len(t.peer_ids)))]
        return out

    def tick(self, now: int, send_round: Any) -> int:
        """Run what is due (a round, an evaluation); returns µs until the next due thing."""
        interval = self.table.rules.interval_us
        if now >= self.next_round:
            self.table.rounds += 1
            send_round(self.table.rounds)
            self.last_round_us = now_us()
            self.next_round += interval
            if now_us() >= self.next_round:  # fell behind: skip, do not burst
                missed = (now_us() - self.next_round) // interval + 1
                self.late_rounds += missed
                self.next_round += missed * interval
        if now >= self.next_eval:
            self.evaluate(now)
            self.next_eval += self.eval_us
            if now >= self.next_eval:
                self.next_eval = now + self.eval_us
        return max(0, min(self.next_round, self.next_eval) - now_us())


def run_tuned(mon: Monitor, monitor_ip: str) -> None:
    sock = open_socket(monitor_ip)
    fd = sock.fileno()
    sender, receiver = _Sender(mon.table), _Receiver()
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    try:
        while not mon.stopping:
            wait = mon.tick(now_us(), lambda seq: sender.send_round(fd, seq))
            if ep.poll(wait / 1e6 if wait else 0):
                receiver.drain(fd, mon.table)
    finally:
        mon.table.counters["send_errors"] = sender.errors
        ep.close()
        sock.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, table: PeerTable) -> None:
        self.table = table

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.table.ingest_one(data, addr[0], now_us())

    def error_received(self, exc: Exception) -> None:
        self.table.counters["send_errors"] = self.table.counters.get("send_errors", 0) + 1


async def _run_asyncio(mon: Monitor, monitor_ip: str) -> None:
    loop = asyncio.get_running_loop()
    table = mon.table
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(table), sock=open_socket(monitor_ip))
    dests = [(a, REQUEST_PORT) for a in table.addresses]
    pack = struct.Struct("!HBBIIIQBB2x").pack

    def send_round(seq: int) -> None:
        seq &= SEQ_MASK
        for pid, key, dest in zip(table.peer_ids, table.nonce_keys, dests, strict=True):
            transport.sendto(pack(MAGIC, VERSION, REQUEST, pid, seq, key ^ seq, now_us(),
                                  0, 0), dest)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            wait = mon.tick(now_us(), send_round)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait / 1e6)
    finally:
        transport.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--monitor-ip", required=True)
    ap.add_argument("--peers-file", type=Path, required=True)
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--detect-mult", type=int, default=3)
    ap.add_argument("--eval-ms", type=float, default=500.0)
    ap.add_argument("--variant", choices=["tuned", "asyncio"], default="tuned")
    ap.add_argument("--status-file", type=Path)
    ap.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM")
    args = ap.parse_args(argv)
    peers = json.loads(args.peers_file.read_text())
    rules = Rules(interval_us=int(args.interval_ms * 1000), detect_mult=args.detect_mult)
    mon = Monitor(PeerTable(peers, rules), int(args.eval_ms * 1000), args.status_file)
    if args.duration:
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        signal.setitimer(signal.ITIMER_REAL, args.duration)
    if args.variant == "tuned":
        def stop(*_: Any) -> None:
            mon.stopping = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        run_tuned(mon, args.monitor_ip)
    else:
        asyncio.run(_run_asyncio(mon, args.monitor_ip))
    print(json.dumps(mon.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
