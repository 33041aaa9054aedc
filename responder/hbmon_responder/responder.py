"""Heartbeat responder (docs/protocol.md) with run-time fault injection.

One process answers for every address it receives requests on: the UDP socket is bound to
0.0.0.0 (or to given addresses) with IP_PKTINFO, and each answer leaves from the address
the request was sent to. The loop is a plain non-blocking drain of the socket between
`select` calls, so an idle responder sleeps and a busy one does not pay for `select` per
packet.

Faults (changeable while it runs over the control socket, see `ControlClient`):

- ``mute``      do not answer at all (a stopped peer)
- ``loss``      drop this percentage of answers at random
- ``delay_ms``  answer this many milliseconds late
- ``flap``      answer for `flap` seconds, stay silent for `flap` seconds, and so on
- ``status``    report healthy / degraded / draining in every answer
- ``load``      report this load (0-100, 255 = unknown)

Control protocol: a UNIX stream socket; one JSON object per line in, one per line out.
``{"op": "get"}`` -> ``{"ok": true, "faults": {...}, "stats": {...}}``;
``{"op": "set", "loss": 20, ...}`` -> same, or ``{"ok": false, "field": "loss", "error": ...}``
(nothing changed); ``{"op": "reset"}`` clears every fault and counter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import json
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hbmon_wire.protocol import (
    HEADER_LEN,
    MAGIC,
    REQUEST_PORT,
    SEND_TTL,
    VERSION,
    MsgType,
    PeerStatus,
    ProtocolError,
    ValidationError,
    build_response,
)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_DRAIN_BATCH = 512  # packets handled per wake-up before looking at control and timers
_RECV_SIZE = 2048  # larger than any heartbeat, so over-long datagrams are seen as such

STATUS_NAMES = {s.name.lower(): int(s) for s in PeerStatus}
# magic, version, type of a valid REQUEST: the common case skips the full decoder
_REQUEST_PREFIX = struct.pack("!HBB", MAGIC, VERSION, MsgType.REQUEST)
_RESPONSE_TYPE = bytes([MsgType.RESPONSE])
# bytes 0..23 (magic .. tx_timestamp_us, nonce included) are echoed; status, load, reserved
# (the last 4) are the responder's own
_ECHO_END = HEADER_LEN - 4


@dataclass(slots=True)
class Faults:
    mute: bool = False
    loss: float = 0.0  # percent
    delay_ms: float = 0.0
    flap: float = 0.0  # seconds answering / seconds silent; 0 = no flapping
    status: str = "healthy"
    load: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Stats:
    received: int = 0  # datagrams seen on the heartbeat port
    answered: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # by protocol reason
    dropped_mute: int = 0
    dropped_loss: int = 0
    dropped_flap: int = 0
    delayed_pending: int = 0
    send_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["invalid"] = dict(self.invalid)
        return d


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValidationError(name, f"not a boolean: {value!r}")


def _parse_number(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(name, f"not a number: {value!r}") from exc
    if not lo <= number <= hi:
        raise ValidationError(name, f"must be {lo:g} .. {hi:g}, got {number:g}")
    return number


_ALIASES = {"loss_pct": "loss", "delay": "delay_ms", "flap_s": "flap"}


def apply_changes(faults: Faults, changes: dict[str, Any]) -> Faults:
    """A new `Faults` with `changes` applied; ValidationError (naming the key) on bad input."""
    new = Faults(**faults.to_dict())
    for raw_key, value in changes.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key == "mute":
            new.mute = _parse_bool(key, value)
        elif key == "loss":
            new.loss = _parse_number(key, value, 0, 100)
        elif key == "delay_ms":
            new.delay_ms = _parse_number(key, value, 0, 60_000)
        elif key == "flap":
            new.flap = _parse_number(key, value, 0, 3600)
        elif key == "status":
            if str(value).lower() not in STATUS_NAMES:
                raise ValidationError(key, f"one of {', '.join(STATUS_NAMES)}, got {value!r}")
            new.status = str(value).lower()
        elif key == "load":
            number = _parse_number(key, value, 0, 255)
            if number != int(number):
                raise ValidationError(key, f"must be an integer, got {value!r}")
            new.load = int(number)
        else:
            raise ValidationError(raw_key, "unknown setting")
    return new


def _grow_buffers(sock: socket.socket) -> None:
    """Room for a whole fan-out round (thousands of requests arrive at once)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)  # root: above rmem_max
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, 8 << 20)


# ---- batched socket I/O (recvmmsg / sendmmsg) -------------------------------------------

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
_SLOT = 64  # receive room per datagram: a heartbeat is 28; MSG_TRUNC flags anything longer
_CTL = socket.CMSG_SPACE(_PKTINFO.size)
_CMSG_HDR = struct.Struct("=QiI")  # struct cmsghdr on 64-bit Linux: len, level, type
_FLAGS_LEN = struct.Struct("=i4xI")  # mmsghdr: msg_hdr.msg_flags (offset 48) ... msg_len (56)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _recvmmsg = _libc.recvmmsg
    _sendmmsg = _libc.sendmmsg
    _recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                          ctypes.c_void_p]
    _sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    HAVE_MMSG = struct.calcsize("P") == 8
except (OSError, AttributeError):
    HAVE_MMSG = False


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Batch:
    """Preallocated message vectors for one direction of `n` datagrams."""

    def __init__(self, n: int, slot: int, with_ctl: bool) -> None:
        self.data = bytearray(n * slot)
        self.names = bytearray(n * 16)  # struct sockaddr_in
        self.ctl = bytearray(n * _CTL)
        self.iov = (_IoVec * n)()
        self.msgs = (_MMsgHdr * n)()
        self.raw = memoryview(self.msgs).cast("B")  # read results without ctypes objects
        self.with_ctl = with_ctl
        data, names, ctl = _address(self.data), _address(self.names), _address(self.ctl)
        for i in range(n):
            self.iov[i].iov_base = data + i * slot
            self.iov[i].iov_len = slot
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = names + 16 * i
            hdr.msg_namelen = 16
            hdr.msg_iov = ctypes.addressof(self.iov[i])
            hdr.msg_iovlen = 1
            hdr.msg_control = ctl + _CTL * i if with_ctl else None
            hdr.msg_controllen = _CTL if with_ctl else 0


assert _MMsgHdr.msg_len.offset == 56 and _MsgHdr.msg_flags.offset == 48


class BatchIO:
    """recvmmsg/sendmmsg on one UDP socket: one system call per batch in each direction."""

    def __init__(self, sock: socket.socket, batch: int = 64) -> None:
        self.fd = sock.fileno()
        self.n = batch
        self.pktinfo = sock.getsockname()[0] == "0.0.0.0"
        self.rx = _Batch(batch, _SLOT, self.pktinfo)
        self.tx = _Batch(batch, HEADER_LEN, self.pktinfo)
        if self.pktinfo:
            # every reply carries IP_PKTINFO: cmsghdr + in_pktinfo(0, spec_dst=?, 0)
            head = _CMSG_HDR.pack(socket.CMSG_LEN(_PKTINFO.size), socket.IPPROTO_IP, IP_PKTINFO)
            for i in range(batch):
                self.tx.ctl[i * _CTL:i * _CTL + len(head)] = head
        self._last = batch

    def recv(self) -> int:
        """Datagrams now in `rx` (0 when none are waiting)."""
        msgs = self.rx.msgs
        for i in range(self._last):  # the kernel shrank these to what it filled in
            msgs[i].msg_hdr.msg_namelen = 16
            if self.pktinfo:
                msgs[i].msg_hdr.msg_controllen = _CTL
        while True:
            n = _recvmmsg(self.fd, msgs, self.n, MSG_DONTWAIT, None)
            if n >= 0:
                self._last = n
                return int(n)
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                self._last = 0
                return 0
            if err != errno.ECONNREFUSED:  # an ICMP error from an earlier send: go on
                raise OSError(err, os.strerror(err))

    def send(self, count: int) -> int:
        """Send tx[0:count]; returns how many left (the rest is a send error)."""
        sent = 0
        base = ctypes.addressof(self.tx.msgs)
        size = ctypes.sizeof(_MMsgHdr)
        while sent < count:
            n = _sendmmsg(self.fd, base + sent * size, count - sent, 0)
            if n <= 0:
                err = ctypes.get_errno()
                if n < 0 and err == errno.EINTR:
                    continue
                break
            sent += n
        return sent


class Responder:
    """Answers heartbeat requests; thread-safe `stop()`, `set()`, `snapshot()`."""

    def __init__(
        self, *, port: int = REQUEST_PORT, binds: Sequence[str] = ("0.0.0.0",),
        ctl_path: str | None = None, faults: Faults | None = None, seed: int | None = None,
        batched: bool = True,
    ) -> None:
        """`batched`: use recvmmsg/sendmmsg (Linux, 64-bit); else one recvmsg/sendmsg each."""
        self.port = port
        self.binds = list(binds) or ["0.0.0.0"]
        self.ctl_path = ctl_path
        self.batched = batched and HAVE_MMSG
        self.faults = faults or Faults()
        self.stats = Stats()
        self._rng = random.Random(seed)
        self._sockets: list[socket.socket] = []
        self._ctl: socket.socket | None = None
        self._ctl_conns: dict[int, tuple[socket.socket, bytearray]] = {}
        self._delayed: list[tuple[float, int, socket.socket, bytes, Any, list[Any]]] = []
        self._delay_seq = 0
        self._flap_epoch = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._lock = threading.Lock()

    # ---- set-up --------------------------------------------------------------------

    def open(self) -> None:
        """Bind the heartbeat socket(s) and the control socket; raises OSError clearly."""
        try:
            for address in self.binds:
                # No SO_REUSEADDR: two responders on one port would silently split traffic.
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                if address == "0.0.0.0":
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                # docs/protocol.md: answers leave with TTL 255 (RFC 5082), so a monitor with
                # GTSM on can tell them from anything that crossed a router
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, SEND_TTL)
                _grow_buffers(sock)
                try:
                    sock.bind((address, self.port))
                except OSError as exc:
                    sock.close()
                    raise OSError(exc.errno, f"cannot bind UDP {address}:{self.port}: "
                                             f"{exc.strerror}") from exc
                sock.setblocking(False)
                self._sockets.append(sock)
            if self.ctl_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.ctl_path)
                ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                ctl.bind(self.ctl_path)
                ctl.listen(16)
                ctl.setblocking(False)
                self._ctl = ctl
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname() for s in self._sockets]

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        for conn, _ in self._ctl_conns.values():
            conn.close()
        self._ctl_conns.clear()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
            if self.ctl_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.ctl_path)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- control -------------------------------------------------------------------

    def stop(self) -> None:
        """Make `serve_forever` return (safe from other threads and signal handlers)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def set(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            new = apply_changes(self.faults, changes)
            if new.flap != self.faults.flap:
                self._flap_epoch = time.monotonic()  # a new flap period starts answering
            self.faults = new
            return new

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
            self.stats = Stats()
            self._delayed.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self.stats.delayed_pending = len(self._delayed)
            return {"faults": self.faults.to_dict(), "stats": self.stats.to_dict(),
                    "port": self.port, "binds": self.binds}

    def _handle_ctl_request(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "field": "op", "error": "expected {\"op\": ...}"}
        op = request["op"]
        try:
            if op == "set":
                self.set({k: v for k, v in request.items() if k != "op"})
            elif op == "reset":
                self.reset()
            elif op not in ("get", "stats"):
                return {"ok": False, "field": "op", "error": f"unknown op {op!r}"}
        except ValidationError as exc:
            return {"ok": False, "field": exc.field, "error": exc.message}
        return {"ok": True, **self.snapshot()}

    def _ctl_accept(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                conn, _ = self._ctl.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self._ctl_conns[conn.fileno()] = (conn, bytearray())

    def _ctl_read(self, fd: int) -> None:
        conn, buf = self._ctl_conns[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            conn.close()
            del self._ctl_conns[fd]
            return
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                request = json.loads(line)
            except ValueError as exc:
                reply: dict[str, Any] = {"ok": False, "field": "json", "error": str(exc)}
            else:
                reply = self._handle_ctl_request(request)
            try:
                conn.setblocking(True)
                conn.sendall(json.dumps(reply).encode() + b"\n")
                conn.setblocking(False)
            except OSError:
                conn.close()
                del self._ctl_conns[fd]
                return

    # ---- the heartbeat path --------------------------------------------------------

    def _answering(self, faults: Faults, now: float) -> str | None:
        """None to answer, else the name of the drop counter."""
        if faults.mute:
            return "dropped_mute"
        if faults.flap > 0 and int((now - self._flap_epoch) / faults.flap) % 2 == 1:
            return "dropped_flap"
        if faults.loss > 0 and self._rng.random() * 100.0 < faults.loss:
            return "dropped_loss"
        return None

    def _drain_batched(self, io: BatchIO) -> None:
        """The fast path (no delay): recvmmsg a batch, answer it with one sendmmsg."""
        faults = self.faults
        stats = self.stats
        tail = bytes([STATUS_NAMES[faults.status], faults.load, 0, 0])
        rx, tx = io.rx, io.tx
        rx_data, rx_names, rx_ctl = rx.data, rx.names, rx.ctl
        tx_data, tx_names, tx_ctl = tx.data, tx.names, tx.ctl
        raw = rx.raw
        size = ctypes.sizeof(_MMsgHdr)
        pktinfo = io.pktinfo
        for _ in range(_DRAIN_BATCH // io.n + 1):
            n = io.recv()
            if n == 0:
                return
            stats.received += n
            now = time.monotonic()
            silent = self._answering(Faults(mute=faults.mute, flap=faults.flap), now)
            j = 0
            for i in range(n):
                flags, length = _FLAGS_LEN.unpack_from(raw, i * size + 48)
                off = i * _SLOT
                if length != HEADER_LEN or flags & MSG_TRUNC:
                    key = "TRUNCATED" if length < HEADER_LEN else "BAD_LENGTH"
                    stats.invalid[key] = stats.invalid.get(key, 0) + 1
                    continue
                if rx_data[off:off + 4] != _REQUEST_PREFIX:
                    try:
                        build_response(bytes(rx_data[off:off + HEADER_LEN]))
                    except ProtocolError as exc:
                        reason = exc.reason.name
                        stats.invalid[reason] = stats.invalid.get(reason, 0) + 1
                    continue
                if silent is not None:
                    setattr(stats, silent, getattr(stats, silent) + 1)
                    continue
                if faults.loss > 0 and self._rng.random() * 100.0 < faults.loss:
                    stats.dropped_loss += 1
                    continue
                out = j * HEADER_LEN
                # docs/protocol.md "Building a response": type 2, own status/load, reserved 0
                # (magic, version, peer_id, sequence, nonce and timestamp echoed)
                tx_data[out:out + _ECHO_END] = rx_data[off:off + _ECHO_END]
                tx_data[out + 3] = MsgType.RESPONSE
                tx_data[out + _ECHO_END:out + HEADER_LEN] = tail
                tx_names[j * 16:j * 16 + 16] = rx_names[i * 16:i * 16 + 16]
                if pktinfo:
                    c = i * _CTL
                    _, level, ctype = _CMSG_HDR.unpack_from(rx_ctl, c)
                    if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                        # in_pktinfo.ipi_addr (the header's destination) -> ipi_spec_dst
                        h = _CMSG_HDR.size
                        tx_ctl[j * _CTL + h + 4:j * _CTL + h + 8] = rx_ctl[c + h + 8:c + h + 12]
                j += 1
            if j:
                sent = io.send(j)
                stats.answered += sent
                stats.send_errors += j - sent
            if n < io.n:
                return

    def _drain(self, sock: socket.socket) -> None:
        faults = self.faults
        stats = self.stats
        status = STATUS_NAMES[faults.status]
        tail = bytes([status, faults.load, 0, 0])
        use_pktinfo = sock.getsockname()[0] == "0.0.0.0"
        ancsize = socket.CMSG_SPACE(_PKTINFO.size) if use_pktinfo else 0
        for _ in range(_DRAIN_BATCH):
            try:
                data, ancdata, _flags, source = sock.recvmsg(_RECV_SIZE, ancsize)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # an ICMP error from an earlier send
                    continue
                raise
            stats.received += 1
            if len(data) != HEADER_LEN:
                key = "TRUNCATED" if len(data) < HEADER_LEN else "BAD_LENGTH"
                stats.invalid[key] = stats.invalid.get(key, 0) + 1
                continue
            if data[:4] == _REQUEST_PREFIX:
                # docs/protocol.md "Building a response": type 2, own status/load, reserved 0
                response = data[:3] + _RESPONSE_TYPE + data[4:_ECHO_END] + tail
            else:
                try:
                    response = build_response(data, status, faults.load)
                except ProtocolError as exc:
                    stats.invalid[exc.reason.name] = stats.invalid.get(exc.reason.name, 0) + 1
                    continue
            now = time.monotonic()
            drop = self._answering(faults, now)
            if drop is not None:
                setattr(stats, drop, getattr(stats, drop) + 1)
                continue
            reply_anc: list[Any] = []
            if use_pktinfo:
                for level, ctype, cdata in ancdata:
                    if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                        _, _, dst = _PKTINFO.unpack_from(cdata)
                        reply_anc = [(socket.IPPROTO_IP, IP_PKTINFO,
                                      _PKTINFO.pack(0, dst, b"\0\0\0\0"))]
            if faults.delay_ms > 0:
                self._delay_seq += 1
                heapq.heappush(self._delayed, (now + faults.delay_ms / 1000.0, self._delay_seq,
                                               sock, response, source, reply_anc))
                continue
            self._send(sock, response, source, reply_anc)

    def _send(self, sock: socket.socket, payload: bytes, dest: Any, anc: list[Any]) -> None:
        try:
            sock.sendmsg([payload], anc, 0, dest)
            self.stats.answered += 1
        except OSError:
            self.stats.send_errors += 1

    def _send_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, sock, payload, dest, anc = heapq.heappop(self._delayed)
            self._send(sock, payload, dest, anc)

    def serve_forever(self) -> None:
        """Answer until `stop()`; `open()` first."""
        if not self._sockets:
            raise RuntimeError("open() the responder before serving")
        by_fd = {s.fileno(): s for s in self._sockets}
        batch_io = {fd: BatchIO(s) for fd, s in by_fd.items()} if self.batched else {}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        ctl_fd = self._ctl.fileno() if self._ctl is not None else -1
        if ctl_fd >= 0:
            poller.register(ctl_fd, select.POLLIN)
        registered_conns: set[int] = set()
        while not self._stopping:
            timeout_ms: float | None = None
            if self._delayed:
                timeout_ms = max(0.0, (self._delayed[0][0] - time.monotonic()) * 1000.0)
            events = poller.poll(timeout_ms)
            for fd, _ in events:
                sock = by_fd.get(fd)
                if sock is not None:
                    with self._lock:
                        io = batch_io.get(fd)
                        if io is not None and self.faults.delay_ms <= 0:
                            self._drain_batched(io)
                        else:
                            self._drain(sock)
                elif fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                elif fd == ctl_fd:
                    self._ctl_accept()
                elif fd in self._ctl_conns:
                    self._ctl_read(fd)
            if self._delayed:
                with self._lock:
                    self._send_due(time.monotonic())
            # keep the poll set in step with control connections opened / closed above
            for fd in set(self._ctl_conns) - registered_conns:
                poller.register(fd, select.POLLIN)
                registered_conns.add(fd)
            for fd in registered_conns - set(self._ctl_conns):
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
                registered_conns.discard(fd)


class ControlError(RuntimeError):
    """The responder refused a control request; `field` names the offending setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class ControlClient:
    """Talks to a running responder's control socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"responder at {self.path} closed the connection")
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("field", "?")), str(reply.get("error", "")))
        return reply

    def get(self) -> dict[str, Any]:
        return self.request({"op": "get"})

    def set(self, **changes: Any) -> dict[str, Any]:
        return self.request({"op": "set", **changes})

    def reset(self) -> dict[str, Any]:
        return self.request({"op": "reset"})

    def wait_ready(self, timeout: float = 10.0, interval: float = 0.02) -> dict[str, Any]:
        """Poll until the responder answers on its control socket (it binds UDP first)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self.get()
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"responder control socket {self.path} not ready after "
                           f"{timeout:g}s: {last}")


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`["loss=20", "mute=on"]` -> `{"loss": "20", "mute": "on"}`; ValidationError otherwise."""
    changes: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(item, "expected KEY=VALUE")
        changes[key.strip()] = value.strip()
    return changes
