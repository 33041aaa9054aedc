"""BFD control packets (RFC 5880 section 4.1, single hop RFC 5881): the wire codec and the
receive classification the data plane applies (docs/bfd.md "Receive").

One implementation for everything that builds or reads BFD bytes: the controller's template,
the PTF suite, the kernel tests, the interop lab. Like `hbmon.protocol`, it needs nothing but
the standard library.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from hbmon.protocol import Reason

PORT = 3784  # RFC 5881 section 4: single-hop control packets
SOURCE_PORT_BASE = 49152  # RFC 5881 section 4: source port 49152..65535, fixed per session
VERSION = 1
LENGTH = 24  # no authentication section
UDP_LEN = 8 + LENGTH
IPV4_TOTAL_LEN = 20 + UDP_LEN
SEND_TTL = 255
FANOUT_GROUP = 2  # multicast group of the BFD fan-out (heartbeats use 1)
SLOW_TX_US = 1_000_000  # RFC 5880 section 6.8.3: desired min TX while not Up

_PACKET = struct.Struct("!BBBBIIIII")
assert _PACKET.size == LENGTH


class State(enum.IntEnum):
    """bfd.SessionState / the State field (RFC 5880 section 4.1)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    """The Diagnostic field (RFC 5880 section 4.1)."""

    NONE = 0
    DETECTION_TIME_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_SIGNALED_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMINISTRATIVELY_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


class Flag(enum.IntFlag):
    """The low six bits of byte 1."""

    P = 0x20  # Poll
    F = 0x10  # Final
    C = 0x08  # Control Plane Independent
    A = 0x04  # Authentication Present
    D = 0x02  # Demand
    M = 0x01  # Multipoint (must be zero)


class BfdError(ValueError):
    """Bytes the data plane discards; `reason` is the hb_reason it counts them under."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ControlPacket:
    state: State
    my_disc: int
    your_disc: int = 0
    diag: int = Diag.NONE
    flags: int = 0
    detect_mult: int = 3
    desired_min_tx_us: int = SLOW_TX_US
    required_min_rx_us: int = SLOW_TX_US
    required_min_echo_rx_us: int = 0
    version: int = VERSION
    length: int = LENGTH

    def pack(self) -> bytes:
        return _PACKET.pack(
            (self.version & 0x7) << 5 | (self.diag & 0x1F),
            (int(self.state) & 0x3) << 6 | (self.flags & 0x3F),
            self.detect_mult, self.length, self.my_disc, self.your_disc,
            self.desired_min_tx_us, self.required_min_rx_us, self.required_min_echo_rx_us,
        )

    @classmethod
    def unpack(cls, payload: bytes) -> ControlPacket:
        """Decode a UDP payload without judging it (see `classify` for the checks)."""
        if len(payload) < LENGTH:
            raise BfdError(Reason.BFD_TRUNCATED, f"{len(payload)} bytes < {LENGTH}")
        b0, b1, mult, length, my, your, tx, rx, echo = _PACKET.unpack_from(payload)
        return cls(State(b1 >> 6), my, your, b0 & 0x1F, b1 & 0x3F, mult, tx, rx, echo,
                   b0 >> 5, length)


def classify(payload: bytes, ttl: int = SEND_TTL) -> ControlPacket:
    """The data plane's checks 1-4 of docs/bfd.md "Receive" (RFC 5880 section 6.8.6, RFC
    5881 section 5), in their order; the session lookup (5-6) is the caller's."""
    pkt = ControlPacket.unpack(payload)
    if pkt.version != VERSION:
        raise BfdError(Reason.BFD_BAD_VERSION, f"version {pkt.version}")
    if pkt.length < LENGTH or pkt.length > len(payload):
        raise BfdError(Reason.BFD_MALFORMED, f"length {pkt.length}, payload {len(payload)}")
    if pkt.detect_mult == 0:
        raise BfdError(Reason.BFD_MALFORMED, "detect mult 0")
    if pkt.flags & (Flag.M | Flag.A):
        raise BfdError(Reason.BFD_MALFORMED, f"flags {pkt.flags:#04x} (M or A)")
    if pkt.my_disc == 0:
        raise BfdError(Reason.BFD_MALFORMED, "my discriminator 0")
    if pkt.your_disc == 0 and pkt.state in (State.INIT, State.UP):
        raise BfdError(Reason.BFD_MALFORMED, f"your discriminator 0 in state {pkt.state.name}")
    if ttl != SEND_TTL:
        raise BfdError(Reason.BFD_BAD_TTL, f"TTL {ttl}")
    return pkt


def source_port(index: int) -> int:
    """Our UDP source port for the session at `index` (constant per session)."""
    return SOURCE_PORT_BASE + index % 16384


def local_discriminator(key: int, index: int) -> int:
    """Our discriminator for the session at `index`: unique and nonzero per switch (the low
    17 bits, index + 1), not guessable (the high 15 bits, from the session's keyed HMAC;
    docs/bfd.md)."""
    return (key & 0xFFFE0000) | (index + 1)


def template_payload(tick_us: int) -> bytes:
    """The BFD fan-out template's control packet: everything 0 but version and length; the
    required min echo RX field carries the tick period (docs/bfd.md "Transmit")."""
    return ControlPacket(State.ADMIN_DOWN, 0, 0, 0, 0, 0, 0, 0, tick_us).pack()
