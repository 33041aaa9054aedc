"""The worked heartbeat examples of docs/protocol.md ("Hex examples"), as bytes.

The doc quotes REQUEST_HEX and RESPONSE_HEX verbatim (fenced ```hex request / ```hex
response blocks) and tests/test_hb_examples.py fails if the two ever differ. Every PTF test
starts from these bytes; `with_fields` and friends derive the variants a test needs
(another peer, sequence, a broken magic, ...), keeping the IPv4 header checksum valid.

Offsets are those of an IPv4 packet without options: IPv4 at 0, UDP at 20, heartbeat at 28.
Protocol version 2: 28-byte heartbeat with the nonce at offset 12, IPv4 TTL 255.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

REQUEST_HEX = """
45 00 00 38 00 00 40 00 ff 11 ee 8c c6 12 00 01 c6 12 01 02
23 e7 23 e6 00 24 00 00
48 42 02 01 00 00 00 2a 00 00 00 07 5e ed 12 33 00 00 00 00 07 5b cd 15 00 00 00 00
"""

RESPONSE_HEX = """
45 00 00 38 00 00 40 00 ff 11 ee 8c c6 12 01 02 c6 12 00 01
23 e6 23 e7 00 24 00 00
48 42 02 02 00 00 00 2a 00 00 00 07 5e ed 12 33 00 00 00 00 07 5b cd 15 01 25 00 00
"""

# What the examples say, for tests that check a decoded value against the bytes above.
MONITOR_IP = "198.18.0.1"
PEER_IP = "198.18.1.2"
PEER_ID = 42
SEQUENCE = 7
NONCE_KEY = 0x5EED1234  # the peer's nonce key (in its peers / peer_requests entries)
NONCE = NONCE_KEY ^ SEQUENCE  # what request 7 carries and its response echoes
TTL = 255  # both directions (RFC 5082), so a monitor can require it (GTSM)
TX_TIMESTAMP_US = 123456789
RESPONSE_STATUS = 1  # DEGRADED
RESPONSE_LOAD = 37

IPV4_OFF = 0
UDP_OFF = 20
HB_OFF = 28


def hexbytes(text: str) -> bytes:
    """Bytes of a hex dump: whitespace-separated pairs, as in the doc."""
    return bytes.fromhex("".join(text.split()))


REQUEST = hexbytes(REQUEST_HEX)
RESPONSE = hexbytes(RESPONSE_HEX)


def ipv4_checksum(header: bytes) -> int:
    total = 0
    for (word,) in struct.iter_unpack("!H", header):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _fix_ipv4_checksum(packet: bytearray) -> None:
    ihl = (packet[0] & 0x0F) * 4
    packet[10:12] = b"\x00\x00"
    packet[10:12] = struct.pack("!H", ipv4_checksum(bytes(packet[:ihl])))


# Heartbeat fields: name -> (offset in the heartbeat header, struct format).
HB_FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0, "!H"),
    "version": (2, "!B"),
    "msg_type": (3, "!B"),
    "peer_id": (4, "!I"),
    "sequence": (8, "!I"),
    "nonce": (12, "!I"),
    "tx_timestamp_us": (16, "!Q"),
    "status": (24, "!B"),
    "load": (25, "!B"),
    "reserved": (26, "!H"),
}


def with_fields(packet: bytes, *, src: str | None = None, dst: str | None = None,
                sport: int | None = None, dport: int | None = None, ttl: int | None = None,
                **hb: int) -> bytes:
    """A copy of an example packet with some fields replaced; the IPv4 checksum follows.
    Changing `sequence` alone leaves the nonce of sequence 7: a test that wants a valid
    answer to another request passes nonce=answer_nonce(seq) too (or uses `answer`)."""
    out = bytearray(packet)
    if ttl is not None:
        out[8] = ttl
    if src is not None:
        out[12:16] = ipaddress.IPv4Address(src).packed
    if dst is not None:
        out[16:20] = ipaddress.IPv4Address(dst).packed
    if sport is not None:
        out[UDP_OFF:UDP_OFF + 2] = struct.pack("!H", sport)
    if dport is not None:
        out[UDP_OFF + 2:UDP_OFF + 4] = struct.pack("!H", dport)
    for name, value in hb.items():
        if name not in HB_FIELDS:
            raise KeyError(f"no heartbeat field {name!r} (known: {', '.join(HB_FIELDS)})")
        off, fmt = HB_FIELDS[name]
        struct.pack_into(fmt, out, HB_OFF + off, value)
    _fix_ipv4_checksum(out)
    return bytes(out)


def answer_nonce(sequence: int, nonce_key: int = NONCE_KEY) -> int:
    """The nonce a response to request `sequence` echoes (docs/protocol.md "Nonce")."""
    return (nonce_key ^ sequence) & 0xFFFFFFFF


def answer(packet: bytes, sequence: int, nonce_key: int = NONCE_KEY, **kw: Any) -> bytes:
    """A response (or request) for another sequence, carrying that round's nonce."""
    return with_fields(packet, sequence=sequence, nonce=answer_nonce(sequence, nonce_key), **kw)


def with_payload_length(packet: bytes, hb_len: int) -> bytes:
    """The packet with only `hb_len` heartbeat bytes (truncated) or extra zero bytes, its
    IPv4 total length and UDP length consistent with that (a well-formed short datagram)."""
    body = packet[:HB_OFF + min(hb_len, len(packet) - HB_OFF)]
    body += bytes(max(0, hb_len - (len(packet) - HB_OFF)))
    out = bytearray(body)
    struct.pack_into("!H", out, 2, len(out))
    struct.pack_into("!H", out, UDP_OFF + 4, len(out) - UDP_OFF)
    _fix_ipv4_checksum(out)
    return bytes(out)


def with_lengths(packet: bytes, *, ip_total_len: int | None = None,
                 udp_len: int | None = None) -> bytes:
    """The packet with its length fields (not its size) changed."""
    out = bytearray(packet)
    if ip_total_len is not None:
        struct.pack_into("!H", out, 2, ip_total_len)
    if udp_len is not None:
        struct.pack_into("!H", out, UDP_OFF + 4, udp_len)
    _fix_ipv4_checksum(out)
    return bytes(out)


def field(packet: bytes, name: str) -> int:
    off, fmt = HB_FIELDS[name]
    (value,) = struct.unpack_from(fmt, packet, HB_OFF + off)
    return int(value)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def frame(dst_mac: str, src_mac: str, ipv4_packet: bytes) -> bytes:
    """An Ethernet II frame carrying an IPv4 packet."""
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + ipv4_packet
