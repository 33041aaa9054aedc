"""hbmon.p4: P4Schema lookups, the bytestring codec (P4Runtime spec 8.4) and entity round
trips against the project P4Info."""

from __future__ import annotations

from pathlib import Path

import pytest
from hbmon import protocol
from hbmon.p4 import (
    LPM,
    BytestringError,
    CounterCell,
    CounterRead,
    DigestEntry,
    DigestMessage,
    MulticastGroup,
    P4InfoError,
    P4Schema,
    PacketIn,
    PacketOut,
    RegisterCell,
    RegisterRead,
    Replica,
    SchemaError,
    TableEntry,
    Ternary,
    decode_bits,
    encode_bits,
    encode_digest_list,
    encode_value,
    format_ipv4,
    format_mac,
    parse_value,
)
from p4.v1 import p4runtime_pb2

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.mark.parametrize(("value", "width", "expected"), [
    (0, 8, b"\x00"),
    (1, 9, b"\x01"),
    (255, 9, b"\xff"),
    (256, 9, b"\x01\x00"),
    (0x0102, 16, b"\x01\x02"),
    (0xC6120002, 32, b"\xc6\x12\x00\x02"),
    (2**64 - 1, 64, b"\xff" * 8),
])
def test_encode_bits_canonical(value: int, width: int, expected: bytes) -> None:
    """Spec 8.4: the shortest big-endian string, zero as one zero byte."""
    assert encode_bits(value, width) == expected
    assert decode_bits(expected, width) == value


@pytest.mark.parametrize(("value", "width"), [(512, 9), (2**16, 16), (-1, 8)])
def test_encode_bits_rejects_out_of_range(value: int, width: int) -> None:
    with pytest.raises(BytestringError):
        encode_bits(value, width)


@pytest.mark.parametrize(("data", "width", "value"), [
    (b"\x00\x00\x01", 9, 1),  # zero-padded: accepted as long as the value fits
    (b"\x00" * 9 + b"\xff", 64, 255),
    (b"\x01\xff", 9, 511),
])
def test_decode_bits_accepts_any_length_that_fits(data: bytes, width: int, value: int) -> None:
    """Spec 8.4: a receiver accepts a longer string whose value fits the width."""
    assert decode_bits(data, width) == value


@pytest.mark.parametrize(("data", "width", "error"), [
    (b"", 8, "empty bytestring"),
    (b"\x02\x00", 9, "does not fit in 9 bits"),
    (b"\x01" + b"\x00" * 8, 64, "does not fit in 64 bits"),
])
def test_decode_bits_rejects(data: bytes, width: int, error: str) -> None:
    """Spec 8.4: an empty string, or a value wider than the field, is rejected."""
    with pytest.raises(BytestringError, match=error):
        decode_bits(data, width, "f")


def test_parse_readable_values() -> None:
    assert parse_value("198.18.0.2") == 0xC6120002
    assert parse_value("02:00:00:00:00:0a") == 0x02000000000A
    assert parse_value("0x10") == 16
    assert parse_value(b"\x00\x05") == 5
    assert encode_value("0.0.0.0", 32) == b"\x00"
    assert format_ipv4(0xC6120002) == "198.18.0.2"
    assert format_mac(0x02000000000A) == "02:00:00:00:00:0a"
    with pytest.raises(BytestringError):
        parse_value("300.1.1.1")
    with pytest.raises(BytestringError):
        parse_value("nonsense")


def test_lookup_by_name_alias_and_id(schema: P4Schema) -> None:
    peers = schema.table("HbIngress.peers")
    assert schema.table("peers") is peers
    assert schema.table(peers.id) is peers
    assert [f.name for f in peers.match_fields] == ["src_addr", "peer_id"]
    assert peers.size == 65536
    action = schema.action("HbEgress.rewrite_request")
    assert [p.name for p in action.params] == ["dst_mac", "dst_addr", "peer_id", "detect_mult",
                                               "nonce_key"]
    assert action.param("dst_mac").bitwidth == 48
    assert action.param("nonce_key").bitwidth == 32
    # protocol v2: the ingress action carries the peer's nonce key and GTSM minimum TTL
    index = schema.action("HbIngress.set_peer_index")
    assert [(p.id, p.name, p.bitwidth) for p in index.params] == [
        (1, "index", 16), (2, "nonce_key", 32), (3, "min_ttl", 8)]
    for name, width in protocol.REGISTERS.items():
        reg = schema.register(name)
        assert (reg.bitwidth, reg.size) == (width, 65536)
    assert schema.counter("hb_reason").size == protocol.REASON_COUNT
    digest = schema.digest("peer_event_t")
    assert [(m.name, m.bitwidth) for m in digest.members] == [
        ("index", 16), ("state", 8), ("last_seq", 32), ("time_us", 64)]
    assert schema.packet_metadata("packet_out").field("mcast_grp").bitwidth == 16


def test_id_views_the_target_validates_with(schema: P4Schema) -> None:
    """What the kernel target checks a Write against (spec 9.1): objects by id, fields and
    parameters by id, each table's actions with their scope."""
    peers = schema.table("HbIngress.peers")
    assert schema.tables[peers.id] is peers
    rx = schema.register("hb_rx_count")
    assert schema.registers[rx.id] is rx and schema.register(rx.id) is rx
    assert {f.name for f in peers.field_by_id.values()} == {"src_addr", "peer_id"}
    index = schema.action("HbIngress.set_peer_index")
    assert index.param_by_id[3].name == "min_ttl"
    assert index.id in peers.action_scopes
    assert not peers.has_implementation and not peers.idle_timeout


def test_unknown_names_are_clear_errors(schema: P4Schema) -> None:
    with pytest.raises(SchemaError, match="no table 'nope'"):
        schema.table("nope")
    with pytest.raises(SchemaError, match="no match field"):
        schema.table("peers").match_field("dst")
    with pytest.raises(SchemaError, match="no register"):
        schema.register("hb_bogus")


def test_binary_and_text_load_agree(schema: P4Schema, tmp_path: Path) -> None:
    binary = tmp_path / "p.bin"
    binary.write_bytes(schema.p4info.SerializeToString())
    assert P4Schema.load(binary) == schema
    assert P4Schema.from_bytes(schema.to_text().encode()) == schema
    # a P4Info that does not parse: a ValueError (the kernel target refuses to start)
    with pytest.raises(P4InfoError, match="not a P4Info") as err:
        P4Schema.from_bytes(b"tables { nonsense")
    assert isinstance(err.value, ValueError)


def test_table_entry_round_trip(schema: P4Schema) -> None:
    entry = TableEntry("peers", {"src_addr": "198.18.0.2", "peer_id": 7}, "set_peer_index",
                       {"index": 3, "nonce_key": 0xA1B2C3D4, "min_ttl": 255})
    msg = entry.encode(schema)
    te = msg.table_entry
    assert te.table_id == 0x02000001
    assert [m.exact.value for m in te.match] == [b"\xc6\x12\x00\x02", b"\x07"]
    assert te.action.action.action_id == 0x01000002
    # P4Runtime 1.4 section 8.3 (bytestrings): the shortest big-endian encoding
    assert [(p.param_id, p.value) for p in te.action.action.params] == [
        (1, b"\x03"), (2, b"\xa1\xb2\xc3\xd4"), (3, b"\xff")]
    back = TableEntry.decode(schema, msg)
    assert back == TableEntry("HbIngress.peers", {"src_addr": 0xC6120002, "peer_id": 7},
                              "HbIngress.set_peer_index",
                              {"index": 3, "nonce_key": 0xA1B2C3D4, "min_ttl": 255})
    assert back.key(schema) == entry.key(schema)
    assert entry.normalized(schema) == back


def test_table_entry_validation(schema: P4Schema) -> None:
    with pytest.raises(SchemaError, match="missing parameters"):
        TableEntry("peer_requests", {"index": 1}, "rewrite_request", {"dst_mac": 1}).encode(schema)
    with pytest.raises(SchemaError, match="not an action of table"):
        TableEntry("peers", {"src_addr": 1, "peer_id": 1}, "rewrite_request").encode(schema)
    with pytest.raises(BytestringError, match="does not fit"):
        TableEntry("peer_requests", {"index": 65536}).encode(schema)
    with pytest.raises(SchemaError, match="has no parameters"):
        TableEntry("peer_ids", {"peer_id": 1}, "peer_id_known", {"x": 1}).encode(schema)


def test_ternary_and_lpm_encoding(schema: P4Schema) -> None:
    msg = TableEntry("l2_forward", {"dst_addr": Ternary(1, 0xFF)}).encode(schema)
    assert msg.table_entry.match[0].ternary.mask == b"\xff"
    msg = TableEntry("l2_forward", {"dst_addr": LPM(0x0A0000000000, 8)}).encode(schema)
    assert msg.table_entry.match[0].lpm.prefix_len == 8
    assert isinstance(TableEntry.decode(schema, msg).match["dst_addr"], LPM)


def test_multicast_group_round_trip() -> None:
    group = MulticastGroup(protocol.FANOUT_GROUP, (Replica(1, 0), Replica(2, 5)))
    msg = group.encode()
    assert msg.packet_replication_engine_entry.multicast_group_entry.replicas[1].instance == 5
    assert MulticastGroup.decode(None, msg) == group
    # targets speaking P4Runtime >= 1.4 may answer with the bytes `port`
    msg.packet_replication_engine_entry.multicast_group_entry.replicas[0].port = b"\x07"
    assert MulticastGroup.decode(None, msg).replicas[0] == Replica(7, 0)


def test_register_and_counter_entities(schema: P4Schema) -> None:
    msg = RegisterRead("hb_rx_count").encode(schema)
    assert msg.register_entry.register_id == 0x16000001
    assert not msg.register_entry.HasField("index")
    assert RegisterRead("hb_state", 9).encode(schema).register_entry.index.index == 9
    cell = RegisterCell("hb_last_rx_us", 4, 2**40)
    assert RegisterCell.decode(schema, cell.encode(schema)) == cell
    with pytest.raises(BytestringError):
        RegisterCell("hb_state", 0, 256).encode(schema)
    cmsg = CounterRead("hb_reason").encode(schema)
    cmsg.counter_entry.index.index = 3
    cmsg.counter_entry.data.packet_count = 10
    cmsg.counter_entry.data.byte_count = 660
    assert CounterCell.decode(schema, cmsg) == CounterCell("hb_reason", 3, 10, 660)


def test_digest_config_and_decode(schema: P4Schema) -> None:
    cfg = DigestEntry("peer_event_t", max_timeout_ns=0, max_list_size=1).encode(schema)
    assert cfg.digest_entry.config.max_list_size == 1
    rows = [{"index": 3, "state": 2, "last_seq": 99, "time_us": 123456789}]
    msg = encode_digest_list(schema, "peer_event_t", 17, rows)
    decoded = DigestMessage.decode(schema, msg)
    assert decoded.data == tuple(rows)
    assert decoded.list_id == 17
    assert decoded.ack().list_id == 17


def test_packet_out_and_in(schema: P4Schema) -> None:
    msg = PacketOut(b"abc", {"egress_port": 0, "mcast_grp": 1}).encode(schema)
    meta = {m.metadata_id: m.value for m in msg.metadata}
    assert meta == {1: b"\x00", 2: b"\x00", 3: b"\x01"}  # _pad filled with 0
    with pytest.raises(SchemaError, match="missing"):
        PacketOut(b"abc", {"egress_port": 0}).encode(schema)
    with pytest.raises(SchemaError, match="no metadata"):
        PacketOut(b"abc", {"egress_port": 0, "mcast_grp": 1, "x": 1}).encode(schema)
    pin = p4runtime_pb2.PacketIn(payload=b"zz")
    pin.metadata.add(metadata_id=1, value=b"\x01\x01")
    assert PacketIn.decode(schema, pin) == PacketIn(b"zz", {"ingress_port": 257})
