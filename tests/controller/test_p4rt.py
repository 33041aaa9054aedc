"""P4RuntimeClient over real gRPC against the in-memory test server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hbmon.p4info import (
    MulticastGroup,
    P4Schema,
    PacketOut,
    RegisterCell,
    RegisterRead,
    Replica,
    TableEntry,
    encode_digest_list,
)
from hbmon.p4rt import (
    DELETE,
    INSERT,
    NotPrimaryError,
    P4RuntimeClient,
    P4RuntimeError,
    WriteError,
    make_update,
)
from p4.v1 import p4runtime_pb2

from .p4rt_testserver import TestP4RuntimeServer

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture
def server() -> Iterator[TestP4RuntimeServer]:
    srv = TestP4RuntimeServer(read_chunk=7)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: TestP4RuntimeServer, schema: P4Schema) -> Iterator[P4RuntimeClient]:
    c = P4RuntimeClient(f"127.0.0.1:{server.port}", 1, 10, schema=schema, batch_size=3)
    assert c.connect(timeout=10)
    c.set_pipeline(schema)
    yield c
    c.close()


def _peer(i: int) -> TableEntry:
    return TableEntry("peers", {"src_addr": f"198.18.0.{i}", "peer_id": i}, "set_peer_index",
                      {"index": i, "nonce_key": 0x1000 + i, "min_ttl": 0})


def test_arbitration_primary_and_backup(server: TestP4RuntimeServer, schema: P4Schema) -> None:
    addr = f"127.0.0.1:{server.port}"
    changes: list[tuple[bool, bool]] = []
    changed = threading.Event()

    def on_connection(connected: bool, primary: bool) -> None:
        changes.append((connected, primary))
        changed.set()

    with P4RuntimeClient(addr, 1, 5, schema=schema, on_connection=on_connection) as low:
        assert low.connect(timeout=10) is True
        changed.clear()
        with P4RuntimeClient(addr, 1, 9, schema=schema) as high:
            assert high.connect(timeout=10) is True
            assert changed.wait(10)
            assert changes[-1] == (True, False)
            assert not low.primary
            with pytest.raises(NotPrimaryError):
                low.set_pipeline(schema)
            changed.clear()
        # the higher controller left: the lower one is primary again
        assert changed.wait(10)
        assert changes[-1] == (True, True)
        assert low.primary


def test_pipeline_set_get_verify(client: P4RuntimeClient, schema: P4Schema) -> None:
    assert client.pipeline_matches(schema)
    assert client.get_pipeline().p4info == schema.p4info
    assert client.ensure_pipeline(schema) is False
    other = P4Schema.from_bytes(schema.to_text().encode())
    other.p4info.tables[0].size = 1
    assert not client.pipeline_matches(other)
    assert client.capabilities() == "1.6.0"


def test_pipeline_absent_is_not_a_match(server: TestP4RuntimeServer, schema: P4Schema) -> None:
    with P4RuntimeClient(f"127.0.0.1:{server.port}", 1, 1, schema=schema) as c:
        c.connect(timeout=10)
        assert not c.pipeline_matches(schema)
        assert c.ensure_pipeline(schema) is True


def test_batched_writes_and_wildcard_read(client: P4RuntimeClient, server: TestP4RuntimeServer,
                                          schema: P4Schema) -> None:
    client.insert(_peer(i) for i in range(1, 11))
    assert server.writes == 4  # 10 updates in batches of 3
    read = [TableEntry.decode(schema, e) for e in client.read([TableEntry("peers")])]
    assert sorted(e.params["index"] for e in read) == list(range(1, 11))
    client.insert([MulticastGroup(1, (Replica(1, 1), Replica(1, 2)))])
    groups = [MulticastGroup.decode(schema, e) for e in client.read([MulticastGroup(0)])]
    assert groups == [MulticastGroup(1, (Replica(1, 1), Replica(1, 2)))]


def test_per_update_errors(client: P4RuntimeClient, schema: P4Schema) -> None:
    client.insert([_peer(1), _peer(2)])
    updates = [make_update(INSERT, _peer(i), schema) for i in (3, 1, 4, 2)]
    with pytest.raises(WriteError) as info:
        client.write(updates)
    err = info.value
    assert err.failed_indexes == {1, 3}
    assert {e.code_name for e in err.errors} == {"ALREADY_EXISTS"}
    assert "update #1 (INSERT table_entry): ALREADY_EXISTS" in str(err)
    # the others were applied
    assert len(client.read_all([TableEntry("peers")])) == 4
    with pytest.raises(WriteError) as info:
        client.delete([_peer(9)])
    assert info.value.errors[0].code_name == "NOT_FOUND"


def test_transport_failure_marks_rest_not_attempted(client: P4RuntimeClient,
                                                    server: TestP4RuntimeServer) -> None:
    server.fail_next_writes.append(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(WriteError) as info:
        client.insert(_peer(i) for i in range(1, 8))
    assert info.value.not_attempted == list(range(7))


def test_register_read_write(client: P4RuntimeClient, schema: P4Schema) -> None:
    client.modify([RegisterCell("hb_rx_count", 5, 42)])
    cells = [RegisterCell.decode(schema, e) for e in client.read([RegisterRead("hb_rx_count")])]
    assert len(cells) == 65536
    assert cells[5].value == 42
    one = client.read_all([RegisterRead("hb_rx_count", 5)])
    assert RegisterCell.decode(schema, one[0]).value == 42


def test_packet_out_and_digest_ack(client: P4RuntimeClient, server: TestP4RuntimeServer,
                                   schema: P4Schema) -> None:
    client.packet_out(PacketOut(b"\x01" * 66, {"egress_port": 0, "mcast_grp": 1}))
    pkt = server.packets_out.get(timeout=10)
    assert pkt.payload == b"\x01" * 66
    got: list[p4runtime_pb2.DigestList] = []
    event = threading.Event()
    client.on_digest = lambda d: (got.append(d), event.set())  # type: ignore[func-returns-value]
    rows = [{"index": 2, "state": 1, "last_seq": 5, "time_us": 10}]
    server.send_digest(encode_digest_list(schema, "peer_event_t", 77, rows))
    assert event.wait(10)
    assert got[0].list_id == 77
    ack = server.digest_acks.get(timeout=10)
    assert (ack.digest_id, ack.list_id) == (got[0].digest_id, 77)


def test_unhandled_messages_are_queued(client: P4RuntimeClient, server: TestP4RuntimeServer,
                                       schema: P4Schema) -> None:
    rows = [{"index": 1, "state": 2, "last_seq": 5, "time_us": 10}]
    server.send_digest(encode_digest_list(schema, "peer_event_t", 3, rows))
    msg = client.messages.get(timeout=10)
    assert msg.digest.list_id == 3
    assert server.digest_acks.get(timeout=10).list_id == 3


def test_reconnect_after_server_restart(schema: P4Schema) -> None:
    server = TestP4RuntimeServer()
    server.start()
    port = server.port
    states: list[tuple[bool, bool]] = []
    reconnected = threading.Event()

    def on_connection(connected: bool, primary: bool) -> None:
        states.append((connected, primary))
        if connected and len(states) > 1:
            reconnected.set()

    client = P4RuntimeClient(f"127.0.0.1:{port}", 1, 3, schema=schema,
                             on_connection=on_connection, backoff_max=0.2)
    try:
        assert client.connect(timeout=10)
        generation = client.stream_generation
        server.stop()
        server = TestP4RuntimeServer()
        server.start(port)
        assert reconnected.wait(20)
        assert (False, False) in states
        assert client.primary
        assert client.stream_generation > generation
        client.set_pipeline(schema)
        client.packet_out(PacketOut(b"x", {"egress_port": 1, "mcast_grp": 0}))
        assert server.packets_out.get(timeout=10).payload == b"x"
    finally:
        client.close()
        server.stop()


def test_connect_timeout_names_the_target(schema: P4Schema) -> None:
    client = P4RuntimeClient("127.0.0.1:1", 1, 1, schema=schema)
    try:
        with pytest.raises(P4RuntimeError, match=r"127.0.0.1:1"):
            client.connect(timeout=0.5)
        with pytest.raises(P4RuntimeError, match="not open"):
            client.packet_out(PacketOut(b"x", {"egress_port": 1, "mcast_grp": 0}))
    finally:
        client.close()


def test_typed_entities_need_a_schema() -> None:
    client = P4RuntimeClient("127.0.0.1:1", 1)
    try:
        with pytest.raises(ValueError, match="schema"):
            client.insert([TableEntry("peers")])
        assert make_update(DELETE, p4runtime_pb2.Entity()).type == DELETE
    finally:
        client.close()
