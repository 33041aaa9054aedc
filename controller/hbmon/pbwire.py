"""Protobuf wire-format pieces for the few messages hbmon writes by hand.

Register reads are the hot path on both sides of P4Runtime (the controller's prepared
cell-read request, the kernel target's wildcard read responses); building those
fixed-shape messages as bytes avoids creating up to a million protobuf objects a poll.
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (protobuf wire type 0)."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
