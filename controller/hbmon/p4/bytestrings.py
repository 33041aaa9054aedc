"""P4Runtime bytestrings (spec 8.4 "Bytestrings"): the one encode/decode pair of hbmon.

Both ends use it: the controller encodes what it writes and decodes what it reads, the
kernel target decodes what it is sent (rejecting what the spec says a server rejects) and
encodes what it answers. Readable values (dotted IPv4, colon MAC, decimal or 0x-hex text)
are turned into ints here too, so that every value reaches the wire through `encode_bits`.
"""

from __future__ import annotations

import ipaddress
import re

Value = int | str | bytes
"""A field value: an int, a dotted IPv4 / colon MAC / decimal or 0x-hex string, or raw bytes."""


class BytestringError(ValueError):
    """A value that has no bytestring of the field's width (or a string that is not one)."""


def encode_bits(value: int, bitwidth: int | None = None) -> bytes:
    """The canonical bytestring of a non-negative int: big-endian, no leading zero byte,
    0 is one zero byte (spec 8.4); `bitwidth`, when given, is checked."""
    if value < 0:
        raise BytestringError(f"negative value {value}")
    if bitwidth is not None and value >> bitwidth:
        raise BytestringError(f"value {value} does not fit in {bitwidth} bits")
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def decode_bits(data: bytes, bitwidth: int | None = None, what: str = "value") -> int:
    """The unsigned value of a received bytestring.

    Spec 8.4: any length is accepted as long as the value fits `bitwidth` (zero-padded
    strings included); an empty string is rejected (a value needs at least one byte).
    `what` names the field in the error."""
    if not data:
        raise BytestringError(f"{what}: empty bytestring (a value needs at least one byte)")
    value = int.from_bytes(data, "big")
    if bitwidth is not None and value >> bitwidth:
        raise BytestringError(f"{what}: value 0x{data.hex()} does not fit in {bitwidth} bits")
    return value


# ---------------------------------------------------------------------------------------------
# readable values

_MAC_RE = re.compile(r"^([0-9a-fA-F]{1,2})([:-][0-9a-fA-F]{1,2}){5}$")


def parse_value(value: Value) -> int:
    """Turn a readable value into an int (IPv4 and MAC strings are recognised)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return decode_bits(value)
    text = value.strip()
    if _MAC_RE.match(text):
        return int("".join(f"{int(p, 16):02x}" for p in re.split(r"[:-]", text)), 16)
    if text.count(".") == 3:
        try:
            return int(ipaddress.IPv4Address(text))
        except ValueError as exc:
            raise BytestringError(f"not an IPv4 address: {value!r}") from exc
    try:
        return int(text, 0)
    except ValueError as exc:
        raise BytestringError(f"not a number, IPv4 or MAC: {value!r}") from exc


def encode_value(value: Value, bitwidth: int | None = None) -> bytes:
    """`encode_bits` of a readable value."""
    return encode_bits(parse_value(value), bitwidth)


def format_ipv4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def format_mac(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
