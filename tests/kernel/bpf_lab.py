"""A minimal veth/namespace lab for the kernel data-plane tests and benches.

Port i of the data plane is a root-namespace veth `hbt<tag>p<i>`; its other end is `eth0`
in namespace `hbt<tag>n<i>` (a stand-in for the peers behind that port). Names carry the
PID and a random tag; everything is removed in `close()`, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from hbmon import protocol
from hbmon_topo.netns import run_in_netns

T = TypeVar("T")
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


def ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


# one implementation of "run this in that namespace" for labs and tests
in_netns = run_in_netns


def mac_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def mac_bytes(value: int) -> bytes:
    return value.to_bytes(6, "big")


def ip_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def heartbeat_frame(
    *, src_mac: int, dst_mac: int, src_ip: int, dst_ip: int, sport: int, dport: int,
    payload: bytes, ihl: int = 5, ip_total_len: int | None = None,
    udp_len: int | None = None, frag_off: int = 0, proto: int = 17,
    ttl: int = protocol.SEND_TTL,
) -> bytes:
    """Ethernet/IPv4/UDP frame; lengths default to the real ones, override to break them.
    TTL 255 by default: what v2 peers send (RFC 5082), so GTSM passes unless a test lowers it."""
    options = bytes(4 * (ihl - 5))
    udp_length = udp_len if udp_len is not None else 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, udp_length, 0) + payload
    total = ip_total_len if ip_total_len is not None else 4 * ihl + len(udp)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, frag_off, ttl, proto, 0,
        src_ip.to_bytes(4, "big"), dst_ip.to_bytes(4, "big"),
    ) + options
    hdr = hdr[:10] + struct.pack("!H", ipv4_checksum(hdr)) + hdr[12:]
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP) + hdr + udp


def response_frame(
    *, peer_ip: int, monitor_ip: int, peer_id: int, seq: int, tx_us: int,
    status: int = 0, load: int = 0, src_mac: int = 0x02AA00000001, dst_mac: int = 0x02BB00000001,
    nonce_key: int = 0, nonce: int | None = None, ttl: int = protocol.SEND_TTL,
) -> bytes:
    """A peer's answer to request `seq`: it echoes nonce_key ^ seq (the request's nonce)
    unless `nonce` forges another one."""
    if nonce is None:
        nonce = protocol.request_nonce(nonce_key, seq)
    hb = protocol.Heartbeat(protocol.MsgType.RESPONSE, peer_id, seq, tx_us, status, load, nonce)
    return heartbeat_frame(
        src_mac=src_mac, dst_mac=dst_mac, src_ip=peer_ip, dst_ip=monitor_ip,
        sport=protocol.REQUEST_PORT, dport=protocol.RESPONSE_PORT, payload=hb.pack(), ttl=ttl,
    )


def request_template(
    *, monitor_mac: int, monitor_ip: int, seq: int, msg_type: int = protocol.MsgType.REQUEST,
    dport: int = protocol.REQUEST_PORT,
) -> bytes:
    """The controller's fan-out template: per-peer fields 0 (docs/dataplane.md "Fan-out")."""
    hb = protocol.Heartbeat(protocol.MsgType(msg_type), 0, seq, 0)
    return heartbeat_frame(
        src_mac=monitor_mac, dst_mac=0, src_ip=monitor_ip, dst_ip=0,
        sport=protocol.RESPONSE_PORT, dport=dport, payload=hb.pack(),
    )


class Capture:
    """An AF_PACKET socket on eth0 of a lab namespace (inbound frames only)."""

    def __init__(self, ns: str, rcvbuf: int = 32 << 20) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (we are root)
            s.bind(("eth0", 0))
            s.setblocking(False)
            return s

        self.sock = in_netns(ns, make)

    def frames(
        self, until: Callable[[list[bytes]], bool], keep: Callable[[bytes], bool],
        timeout_s: float = 5.0,
    ) -> list[bytes]:
        """Collect kept inbound frames until `until(frames)` or the deadline."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            while True:
                try:
                    data, addr = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == socket.PACKET_OUTGOING:
                    continue
                if keep(data):
                    got.append(data)
        return got

    def drain(self) -> None:
        while True:
            try:
                self.sock.recv(65535)
            except BlockingIOError:
                return

    def close(self) -> None:
        self.sock.close()


class Lab:
    """`n` ports, each a veth pair root <-> its own namespace."""

    def __init__(self, n: int) -> None:
        self.tag = f"{os.getpid() % 100000}{secrets.token_hex(1)}"
        self.n = n
        self.namespaces = [f"hbt{self.tag}n{i}" for i in range(1, n + 1)]
        self.ifaces = [f"hbt{self.tag}p{i}" for i in range(1, n + 1)]
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> Lab:
        try:
            for ns, iface in zip(self.namespaces, self.ifaces, strict=True):
                ip("netns", "add", ns)
                self._made_ns.append(ns)
                ip("link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made_links.append(iface)
                with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as f:
                    f.write("1\n")
                ip("link", "set", iface, "up")
                for knob in ("all", "default", "eth0"):
                    ip("netns", "exec", ns, "sysctl", "-qw",
                       f"net.ipv6.conf.{knob}.disable_ipv6=1")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        for iface in self._made_links:
            with contextlib.suppress(RuntimeError):
                ip("link", "del", iface)
        self._made_links.clear()
        for ns in self._made_ns:
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", ns)
        self._made_ns.clear()

    @property
    def ports(self) -> dict[int, str]:
        return {i: iface for i, iface in enumerate(self.ifaces, start=1)}

    def ns(self, port: int) -> str:
        return self.namespaces[port - 1]

    def root_mac(self, port: int) -> int:
        with open(f"/sys/class/net/{self.ifaces[port - 1]}/address") as f:
            return mac_int(f.read().strip())

    def peer_mac(self, port: int) -> int:
        # not /sys: sysfs shows the namespace it was mounted in, not the thread's
        link = json.loads(ip("-j", "-n", self.ns(port), "link", "show", "eth0"))
        return mac_int(link[0]["address"])

    def capture(self, port: int) -> Capture:
        cap = Capture(self.ns(port))
        self._sockets.append(cap.sock)
        return cap

    def sender(self, port: int) -> socket.socket:
        """An AF_PACKET socket writing raw frames out of eth0 of the port's namespace."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind(("eth0", 0))
            return s

        s = in_netns(self.ns(port), make)
        self._sockets.append(s)
        return s
