"""Helpers for the peer-farm tests: heartbeat frames from docs/protocol.md's examples, the
response the protocol prescribes for a request (written here independently of the farm),
and raw-frame I/O on a root-namespace interface."""

from __future__ import annotations

import importlib.util
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from hbmon.protocol import HEADER_LEN, IPV4_TOTAL_LEN, REQUEST_PORT, UDP_LEN, build_response

ROOT = Path(__file__).resolve().parents[2]
ETH_P_ALL = 0x0003
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3


def load_examples() -> ModuleType:
    """ptf_tests/hb_examples.py (the bytes docs/protocol.md quotes), loaded by path."""
    if "hb_examples" in sys.modules:
        return sys.modules["hb_examples"]
    path = ROOT / "ptf_tests" / "hb_examples.py"
    spec = importlib.util.spec_from_file_location("hb_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hb_examples"] = module
    spec.loader.exec_module(module)
    return module


EX = load_examples()


def ipv4_checksum(header: bytes) -> int:
    return int(EX.ipv4_checksum(header))


def expected_response(frame: bytes, status: int, load: int) -> bytes:
    """docs/protocol.md "Building a response from a request", applied to a whole frame.

    TTL 255 is the protocol's (version 2 responder rule, RFC 5082). The fields it leaves to
    the sender's IP stack are those Linux writes for an unconnected UDP socket (TOS 0, id 0,
    DF); the UDP checksum is 0 (none).
    """
    ip = frame[14:34]
    sport = struct.unpack_from("!H", frame, 34)[0]
    iph = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_TOTAL_LEN, 0, 0x4000, 255, 17,
                                0, ip[16:20], ip[12:16]))
    struct.pack_into("!H", iph, 10, ipv4_checksum(bytes(iph)))
    udp = struct.pack("!HHHH", REQUEST_PORT, sport, UDP_LEN, 0)
    return (frame[6:12] + frame[0:6] + frame[12:14] + bytes(iph) + udp
            + build_response(frame[42:42 + HEADER_LEN], status, load))


def udp_checksum_ok(ipv4_packet: bytes) -> bool:
    """A UDP checksum of 0 (none) or one that verifies over the pseudo header."""
    udp = ipv4_packet[20:]
    if udp[6:8] == b"\0\0":
        return True
    pseudo = ipv4_packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    data = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def with_udp_checksum(ipv4_packet: bytes, value: int | None = None) -> bytes:
    """The packet with a valid UDP checksum (or `value`, to break it)."""
    out = bytearray(ipv4_packet)
    out[26:28] = b"\0\0"
    if value is None:
        udp = bytes(out[20:])
        pseudo = bytes(out[12:20]) + struct.pack("!BBH", 0, 17, len(udp))
        value = ipv4_checksum(pseudo + udp) or 0xFFFF
    struct.pack_into("!H", out, 26, value)
    return bytes(out)


def with_ip_header(ipv4_packet: bytes, *, tos: int | None = None, ident: int | None = None,
                   frag: int | None = None, ttl: int | None = None, proto: int | None = None,
                   bad_checksum: bool = False) -> bytes:
    out = bytearray(ipv4_packet)
    if tos is not None:
        out[1] = tos
    if ident is not None:
        struct.pack_into("!H", out, 4, ident)
    if frag is not None:
        struct.pack_into("!H", out, 6, frag)
    if ttl is not None:
        out[8] = ttl
    if proto is not None:
        out[9] = proto
    out[10:12] = b"\0\0"
    csum = ipv4_checksum(bytes(out[:20]))
    struct.pack_into("!H", out, 10, csum ^ 0x0101 if bad_checksum else csum)
    return bytes(out)


def with_options(ipv4_packet: bytes) -> bytes:
    """IHL 6: one word of (no-op) options before UDP."""
    out = bytearray(ipv4_packet[:20] + b"\x01\x01\x01\x00" + ipv4_packet[20:])
    out[0] = 0x46
    struct.pack_into("!H", out, 2, len(out))
    out[10:12] = b"\0\0"
    struct.pack_into("!H", out, 10, ipv4_checksum(bytes(out[:24])))
    return bytes(out)


def sequence_of(frame: bytes) -> int:
    return int(struct.unpack_from("!I", frame, 42 + 8)[0])


def is_answer(frame: bytes) -> bool:
    """UDP from the heartbeat port (what a responder sends), any content."""
    return (len(frame) >= 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and frame[34:36] == struct.pack("!H", REQUEST_PORT))


class Wire:
    """Raw frames in and out of one interface of the root namespace (AF_PACKET)."""

    def __init__(self, ifname: str) -> None:
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((ifname, 0))
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.rx.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE (root)
        self.rx.bind((ifname, 0))
        self.rx.setblocking(False)

    def send(self, frame: bytes) -> None:
        self.tx.send(frame)

    def receive(self, until: Callable[[list[bytes]], bool], timeout_s: float = 5.0
                ) -> list[bytes]:
        """Inbound answers until `until(answers)` holds or the deadline passes."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            while True:  # everything already queued, also with timeout 0
                try:
                    data, addr = self.rx.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] != socket.PACKET_OUTGOING and is_answer(data):
                    got.append(data)
            left = deadline - time.monotonic()
            if until(got) or left <= 0:
                return got
            select.select([self.rx], [], [], left)

    def drain(self) -> None:
        while True:
            try:
                self.rx.recv(65535)
            except BlockingIOError:
                return

    def close(self) -> None:
        self.tx.close()
        self.rx.close()
