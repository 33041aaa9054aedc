"""The heartbeat wire protocol (docs/protocol.md) and the data plane's shared codes.

Everything that builds or reads heartbeat bytes (responder, PTF suite, kernel tests,
controller templates) goes through this module so the numbers live in one place. Standard
library only: it ships with the responder (distribution `hbmon-responder`); the controller
imports it as `hbmon.protocol`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, replace


class ValidationError(ValueError):
    """Bad input; `field` names what is wrong (the API answers 422 with it).

    Defined here, not in `hbmon.model` (which uses it for every domain type), so the
    responder (`hbmon_responder`) needs nothing of the controller."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


MAGIC = 0x4842
VERSION = 2  # 2: the nonce field (docs/protocol.md "Version history")
REQUEST_PORT = 9190  # peers listen here
RESPONSE_PORT = 9191  # the monitor's source port of requests, where responses go
HEADER_LEN = 28
UDP_LEN = 8 + HEADER_LEN
IPV4_TOTAL_LEN = 20 + UDP_LEN
FANOUT_GROUP = 1  # multicast group id of the request fan-out
MAX_PEERS = 65536  # peer index is 16 bits (bmv2's replication id)
# RFC 5082 (GTSM): both sides send with TTL 255; a monitor with min_ttl 255 for a peer
# counts any answer that crossed a router (TTL < 255) as BAD_TTL.
SEND_TTL = 255
GTSM_MIN_TTL = 255

_HEADER = struct.Struct("!HBBIIIQBBH")
assert _HEADER.size == HEADER_LEN


class MsgType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2


class PeerStatus(enum.IntEnum):
    """What a peer reports about itself."""

    HEALTHY = 0
    DEGRADED = 1
    DRAINING = 2


class PlaneState(enum.IntEnum):
    """Liveness the data plane keeps in `hb_state` (not the controller's richer health)."""

    UNKNOWN = 0
    UP = 1
    DOWN = 2


class Reason(enum.IntEnum):
    """Index of the `hb_reason` counter; identical in P4 and BPF."""

    RESPONSE_RECORDED = 0
    REQUEST_SENT = 1
    TRUNCATED = 2
    BAD_MAGIC = 3
    BAD_VERSION = 4
    BAD_TYPE = 5
    BAD_LENGTH = 6
    UNKNOWN_PEER = 7
    SPOOFED = 8
    DUPLICATE = 9
    OLD_SEQUENCE = 10
    REQUEST_NO_PEER = 11
    BAD_TEMPLATE = 12
    PEER_DOWN_EVENT = 13
    PEER_UP_EVENT = 14
    FUTURE_SEQUENCE = 15  # ahead of the last request sent to the peer (or none sent yet)
    BAD_NONCE = 16  # nonce is not the one the peer's requests carry for that sequence
    BAD_TTL = 17  # IPv4 TTL below the peer's min_ttl (GTSM)
    # BFD (docs/bfd.md "Receive" and "Transmit")
    BFD_RECORDED = 18
    BFD_SENT = 19
    BFD_TRUNCATED = 20  # fewer than 24 bytes after UDP
    BFD_BAD_VERSION = 21  # version != 1
    BFD_MALFORMED = 22  # length, detect mult 0, M or A bit, my/your discriminator rules
    BFD_BAD_TTL = 23  # TTL != 255 (RFC 5881 section 5)
    BFD_UNKNOWN_DISCRIMINATOR = 24  # your discriminator names no session
    BFD_UNKNOWN_PEER = 25  # your discriminator 0 and no session for (source, port)
    BFD_EVENT = 26  # bfd_event_t digests raised


REASON_COUNT = 32

# Registers of the health-check structure, in P4Info order, with their bit widths.
REGISTERS: dict[str, int] = {
    "hb_rx_count": 32,
    "hb_tx_count": 32,
    "hb_dup_count": 32,
    "hb_miss_count": 32,
    "hb_last_seq": 32,
    "hb_last_rx_us": 64,
    "hb_last_tx_us": 64,
    "hb_rtt_last_us": 32,
    "hb_rtt_min_us": 32,
    "hb_rtt_max_us": 32,
    "hb_rtt_ewma_us": 32,
    "hb_peer_status": 8,
    "hb_peer_load": 8,
    "hb_state": 8,
    "hb_last_tx_seq": 32,
}

# The BFD session registers (docs/bfd.md), read only for BFD slots, in P4Info order.
BFD_REGISTERS: dict[str, int] = {
    "bfd_remote_state": 8,
    "bfd_remote_diag": 8,
    "bfd_remote_mult": 8,
    "bfd_remote_disc": 32,
    "bfd_remote_min_tx_us": 32,
    "bfd_remote_min_rx_us": 32,
    "bfd_final_due": 8,
}


class ProtocolError(ValueError):
    """Bytes that are not a valid heartbeat; `reason` says which check failed."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Heartbeat:
    type: MsgType
    peer_id: int
    sequence: int
    tx_timestamp_us: int
    status: int = PeerStatus.HEALTHY
    load: int = 0
    nonce: int = 0
    version: int = VERSION
    magic: int = MAGIC

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.magic, self.version, self.type, self.peer_id, self.sequence, self.nonce,
            self.tx_timestamp_us, self.status, self.load, 0,
        )

    @classmethod
    def unpack(cls, data: bytes, *, expect: MsgType | None = None) -> Heartbeat:
        """Parse and validate a heartbeat header (the UDP payload), in the monitor's order."""
        if len(data) < HEADER_LEN:
            raise ProtocolError(Reason.TRUNCATED, f"{len(data)} bytes < {HEADER_LEN}")
        magic, version, mtype, peer_id, seq, nonce, tx_us, status, load, _ = \
            _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ProtocolError(Reason.BAD_MAGIC, f"magic {magic:#06x}")
        if version != VERSION:
            raise ProtocolError(Reason.BAD_VERSION, f"version {version}")
        if mtype not in (MsgType.REQUEST, MsgType.RESPONSE) or (
            expect is not None and mtype != expect
        ):
            raise ProtocolError(Reason.BAD_TYPE, f"type {mtype}")
        if len(data) != HEADER_LEN:
            raise ProtocolError(Reason.BAD_LENGTH, f"payload {len(data)} bytes != {HEADER_LEN}")
        return cls(MsgType(mtype), peer_id, seq, tx_us, status, load, nonce, version, magic)

    def response(self, status: int, load: int) -> Heartbeat:
        """The answer a responder sends: echoes id, sequence, nonce and timestamp."""
        return replace(self, type=MsgType.RESPONSE, status=status, load=load)


def build_response(
    request_payload: bytes, status: int = PeerStatus.HEALTHY, load: int = 0
) -> bytes:
    """Response payload for a request payload; raises ProtocolError for anything but a request."""
    request = Heartbeat.unpack(request_payload, expect=MsgType.REQUEST)
    return request.response(status, load).pack()


def seq_newer(seq: int, last: int) -> bool:
    """RFC 1982 serial comparison on 32 bits: is `seq` after `last`?"""
    diff = (seq - last) & 0xFFFFFFFF
    return diff != 0 and diff < 0x80000000


def request_nonce(nonce_key: int, sequence: int) -> int:
    """The nonce a request carries (docs/protocol.md "Nonce"): the peer's 32-bit nonce key
    XOR the round's sequence, so it changes every round and, the key being random and never
    sent alone, an off-path sender cannot predict it. The data plane computes the same to
    check an answer (the key comes from the peer's table entries)."""
    return (nonce_key ^ sequence) & 0xFFFFFFFF


def derive_nonce_key(secret: bytes, switch: str, index: int, peer_id: int) -> int:
    """A peer's nonce key: 32 bits of HMAC-SHA256 over where it sits, under the controller's
    secret (kept in the store, so every replica and every restart derives the same key).
    Never 0: a key of 0 would make the nonce the sequence itself."""
    mac = hmac.new(secret, f"{switch}/{index}/{peer_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:4], "big") or 1
