"""A software stand-in for the monitor's data plane, for checking a lab without a target.

It sends heartbeat REQUEST frames out of a monitor port (AF_PACKET, whole Ethernet frames
as the data plane builds them: monitor MAC/IP, UDP 9191 -> 9190) and collects the RESPONSE
frames coming back. Tests use it to show that the lab and the responders work before any
target is attached; the demo uses it to tell "peer is down" from "lab is broken".
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

from hbmon.protocol import (
    REQUEST_PORT,
    RESPONSE_PORT,
    SEND_TTL,
    Heartbeat,
    MsgType,
    ProtocolError,
    request_nonce,
)

from .model import PeerSpec

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def request_frame(
    *, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, peer_id: int, sequence: int,
    tx_timestamp_us: int, ident: int = 0, nonce: int = 0,
) -> bytes:
    """A complete Ethernet/IPv4/UDP/heartbeat REQUEST, UDP checksum 0, TTL 255
    (docs/protocol.md, version 2)."""
    payload = Heartbeat(MsgType.REQUEST, peer_id, sequence, tx_timestamp_us,
                        nonce=nonce).pack()
    udp = _UDP.pack(RESPONSE_PORT, REQUEST_PORT, 8 + len(payload), 0) + payload
    ip = bytearray(_IPV4.pack(0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, SEND_TTL, 17,
                              0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
    struct.pack_into("!H", ip, 10, ipv4_checksum(bytes(ip)))
    return _mac_bytes(dst_mac) + _mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP) + ip + udp


@dataclass(frozen=True, slots=True)
class Answer:
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    heartbeat: Heartbeat
    received_us: int
    ttl: int = SEND_TTL  # IPv4 TTL it arrived with (255: it crossed no router)


class Probe:
    """Send requests / receive responses on a root-namespace monitor port."""

    def __init__(self, iface: str, *, monitor_mac: str, monitor_ip: str) -> None:
        self.iface = iface
        self.monitor_mac = monitor_mac
        self.monitor_ip = monitor_ip
        # like the controller's per-peer keys: random, so answers to another probe's (or an
        # earlier run's) requests do not count
        self.nonce_key = secrets.randbits(32) or 1
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self._sock.bind((iface, ETH_P_IP))
        # a whole round of answers arrives at once: room for thousands of frames
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
                break
            except PermissionError:
                continue
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, peer: PeerSpec, sequence: int) -> None:
        frame = request_frame(
            src_mac=self.monitor_mac, dst_mac=peer.mac, src_ip=self.monitor_ip,
            dst_ip=peer.address, peer_id=peer.peer_id, sequence=sequence,
            tx_timestamp_us=time.monotonic_ns() // 1000, ident=sequence,
            nonce=request_nonce(self.nonce_key, sequence),
        )
        self._sock.send(frame)

    def send_raw(self, frame: bytes) -> None:
        self._sock.send(frame)

    def _parse(self, frame: bytes) -> Answer | None:
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:34]
        ver_ihl, _, total, _, _, ttl, proto, _, src, dst = _IPV4.unpack(ip)
        if ver_ihl != 0x45 or proto != 17:
            return None
        sport, dport, _, _ = _UDP.unpack_from(frame, 34)
        if dport != RESPONSE_PORT:
            return None
        try:
            hb = Heartbeat.unpack(frame[42:14 + total], expect=MsgType.RESPONSE)
        except ProtocolError:
            return None
        return Answer(socket.inet_ntoa(src), socket.inet_ntoa(dst), sport, dport, hb,
                      time.monotonic_ns() // 1000, ttl)

    def collect(self, *, until: int | None = None, timeout: float = 2.0) -> list[Answer]:
        """Responses arriving within `timeout`; returns early once `until` have arrived."""
        answers: list[Answer] = []
        deadline = time.monotonic() + timeout
        while until is None or len(answers) < until:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if not ready:
                break
            while True:
                try:
                    frame, addr = self._sock.recvfrom(4096)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                answer = self._parse(frame)
                if answer is not None:
                    answers.append(answer)
        return answers

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(4096)

    def round(self, peers: list[PeerSpec], sequence: int, *, timeout: float = 1.0) -> dict[
        str, Answer
    ]:
        """One heartbeat round: a request to every peer; answers by peer address (those
        echoing this round's sequence and nonce, as the data plane counts them)."""
        for peer in peers:
            self.send(peer, sequence)
        by_addr: dict[str, Answer] = {}
        nonce = request_nonce(self.nonce_key, sequence)
        for answer in self.collect(until=len(peers), timeout=timeout):
            if answer.heartbeat.sequence == sequence and answer.heartbeat.nonce == nonce:
                by_addr[answer.src_ip] = answer
        return by_addr
