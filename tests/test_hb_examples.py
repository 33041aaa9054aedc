"""The hex examples of docs/protocol.md are the bytes the PTF suite sends, and they are valid.

The doc quotes ptf_tests/hb_examples.py; this test fails when either side changes alone.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hbmon import protocol

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"


def _load_examples() -> ModuleType:
    path = ROOT / "ptf_tests" / "hb_examples.py"
    spec = importlib.util.spec_from_file_location("hb_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hb_examples", module)
    spec.loader.exec_module(module)
    return module


EX = _load_examples()


def _doc_blocks() -> dict[str, bytes]:
    text = DOC.read_text()
    blocks = re.findall(r"^```hex (\w+)\n(.*?)^```", text, flags=re.M | re.S)
    return {name: EX.hexbytes(body) for name, body in blocks}


def test_doc_has_both_examples_once() -> None:
    text = DOC.read_text()
    assert "## Hex examples" in text
    names = re.findall(r"^```hex (\w+)$", text, flags=re.M)
    assert sorted(names) == ["request", "response"]


@pytest.mark.parametrize("name, attr", [("request", "REQUEST"), ("response", "RESPONSE")])
def test_doc_hex_equals_module(name: str, attr: str) -> None:
    assert _doc_blocks()[name] == getattr(EX, attr)
    # the doc's text is the module's text, not merely the same bytes
    assert getattr(EX, f"{attr}_HEX").strip() in DOC.read_text()


@pytest.mark.parametrize("packet", [EX.REQUEST, EX.RESPONSE])
def test_examples_are_well_formed_ipv4_udp(packet: bytes) -> None:
    assert len(packet) == protocol.IPV4_TOTAL_LEN
    assert packet[0] == 0x45
    assert struct.unpack_from("!H", packet, 2)[0] == protocol.IPV4_TOTAL_LEN
    assert packet[9] == 17
    assert EX.ipv4_checksum(packet[:20]) == 0  # a valid header sums to 0xffff
    assert struct.unpack_from("!H", packet, 24)[0] == protocol.UDP_LEN


def test_request_fields() -> None:
    req = EX.REQUEST
    assert ipaddress.IPv4Address(req[12:16]) == ipaddress.IPv4Address(EX.MONITOR_IP)
    assert ipaddress.IPv4Address(req[16:20]) == ipaddress.IPv4Address(EX.PEER_IP)
    assert struct.unpack_from("!HH", req, 20) == (protocol.RESPONSE_PORT, protocol.REQUEST_PORT)
    hb = protocol.Heartbeat.unpack(req[28:], expect=protocol.MsgType.REQUEST)
    assert (hb.peer_id, hb.sequence, hb.tx_timestamp_us) == (
        EX.PEER_ID, EX.SEQUENCE, EX.TX_TIMESTAMP_US)
    assert (hb.status, hb.load) == (0, 0)
    # version 2: the round's nonce is the peer's key XOR the sequence; sent with TTL 255
    assert hb.version == protocol.VERSION == 2
    assert hb.nonce == protocol.request_nonce(EX.NONCE_KEY, EX.SEQUENCE) == EX.NONCE
    assert req[8] == protocol.SEND_TTL == EX.TTL


def test_response_is_what_the_protocol_builds() -> None:
    req, rsp = EX.REQUEST, EX.RESPONSE
    assert protocol.build_response(req[28:], EX.RESPONSE_STATUS, EX.RESPONSE_LOAD) == rsp[28:]
    assert rsp[12:16] == req[16:20] and rsp[16:20] == req[12:16]
    assert rsp[8] == protocol.SEND_TTL, "peers answer with TTL 255 (RFC 5082)"
    assert EX.field(rsp, "nonce") == EX.field(req, "nonce"), "the nonce is echoed"
    assert struct.unpack_from("!HH", rsp, 20) == (protocol.REQUEST_PORT, protocol.RESPONSE_PORT)


def test_with_fields_keeps_checksum_valid_and_changes_only_what_is_asked() -> None:
    out = EX.with_fields(EX.RESPONSE, src="198.18.9.9", peer_id=7, sequence=0xFFFFFFFF)
    assert EX.ipv4_checksum(out[:20]) == 0
    assert EX.field(out, "peer_id") == 7
    assert EX.field(out, "sequence") == 0xFFFFFFFF
    assert EX.field(out, "tx_timestamp_us") == EX.TX_TIMESTAMP_US
    assert out[20:28] == EX.RESPONSE[20:28]
    with pytest.raises(KeyError):
        EX.with_fields(EX.RESPONSE, nope=1)


def test_with_payload_length_truncates_consistently() -> None:
    short = EX.with_payload_length(EX.RESPONSE, 10)
    assert len(short) == 28 + 10
    assert struct.unpack_from("!H", short, 2)[0] == 38
    assert struct.unpack_from("!H", short, 24)[0] == 18
    assert EX.ipv4_checksum(short[:20]) == 0
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.Heartbeat.unpack(short[28:])
    assert err.value.reason == protocol.Reason.TRUNCATED
    longer = EX.with_payload_length(EX.RESPONSE, 34)
    assert len(longer) == 62 and longer[28:56] == EX.RESPONSE[28:]


def test_answer_carries_the_rounds_nonce() -> None:
    out = EX.answer(EX.RESPONSE, 0xFFFFFFFF)
    assert EX.field(out, "sequence") == 0xFFFFFFFF
    assert EX.field(out, "nonce") == EX.NONCE_KEY ^ 0xFFFFFFFF
    assert EX.answer(EX.RESPONSE, EX.SEQUENCE) == EX.RESPONSE
    assert EX.ipv4_checksum(EX.with_fields(EX.RESPONSE, ttl=254)[:20]) == 0
