"""P4RuntimeClient over real gRPC against the kernel target's P4Runtime device over its
in-memory data plane (tests/controller/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hbmon.p4 import (
    DigestEntry,
    MulticastGroup,
    P4Schema,
    PacketOut,
    RegisterCell,
    RegisterRead,
    Replica,
    TableEntry,
)
from hbmon.p4.client import (
    DELETE,
    INSERT,
    NotPrimaryError,
    P4RuntimeClient,
    P4RuntimeError,
    WriteError,
    make_update,
)
from hbmon.protocol import PlaneState
from hbmon_kernel.memory import MemoryTarget, serve_memory_target
from hbmon_kernel.server import P4RUNTIME_API_VERSION
from p4.v1 import p4runtime_pb2

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture
def client(target: MemoryTarget, schema: P4Schema) -> Iterator[P4RuntimeClient]:
    c = P4RuntimeClient(target.address, 1, 10, schema=schema, batch_size=3)
    assert c.connect(timeout=10)
    c.set_pipeline(schema)
    yield c
    c.close()


def _peer(i: int) -> TableEntry:
    return TableEntry("peers", {"src_addr": f"198.18.0.{i}", "peer_id": i}, "set_peer_index",
                      {"index": i, "nonce_key": 0x1000 + i, "min_ttl": 0})


def test_arbitration_primary_and_backup(target: MemoryTarget, schema: P4Schema) -> None:
    addr = target.address
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
        # the higher controller left: spec 5.3 makes nobody primary until an id reaches 9;
        # the target says so (5.4: NOT_FOUND) and the client takes over with 10
        assert changed.wait(10)
        assert changes[-1] == (True, True)
        assert low.primary
        assert low.election_id == 10


def test_pipeline_set_get_verify(client: P4RuntimeClient, schema: P4Schema) -> None:
    assert client.pipeline_matches(schema)
    assert client.get_pipeline().p4info == schema.p4info
    assert client.ensure_pipeline(schema) is False
    other = P4Schema.from_bytes(schema.to_text().encode())
    other.p4info.tables[0].size = 1
    assert not client.pipeline_matches(other)
    assert client.capabilities() == P4RUNTIME_API_VERSION


def test_pipeline_absent_is_not_a_match(target: MemoryTarget, schema: P4Schema) -> None:
    with P4RuntimeClient(target.address, 1, 1, schema=schema) as c:
        c.connect(timeout=10)
        assert not c.pipeline_matches(schema)
        assert c.ensure_pipeline(schema) is True


def test_batched_writes_and_wildcard_read(client: P4RuntimeClient, target: MemoryTarget,
                                          schema: P4Schema) -> None:
    writes = target.calls["Write"]
    client.insert(_peer(i) for i in range(1, 11))
    assert target.calls["Write"] - writes == 4  # 10 updates in batches of 3
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
                                                    target: MemoryTarget) -> None:
    target.stop_serving()  # the target is gone: the first batch's Write fails in transport
    with pytest.raises(WriteError) as info:
        client.insert(_peer(i) for i in range(1, 8))
    assert info.value.not_attempted == list(range(7))
    assert info.value.errors == [] or all(
        e.code_name in ("UNAVAILABLE", "CANCELLED") for e in info.value.errors)


def test_register_read_write(client: P4RuntimeClient, schema: P4Schema) -> None:
    client.modify([RegisterCell("hb_rx_count", 5, 42)])
    cells = [RegisterCell.decode(schema, e) for e in client.read([RegisterRead("hb_rx_count")])]
    assert len(cells) == 65536
    assert cells[5].value == 42
    one = client.read_all([RegisterRead("hb_rx_count", 5)])
    assert RegisterCell.decode(schema, one[0]).value == 42


def _enable_digest(client: P4RuntimeClient) -> None:
    # spec 9.10 / 16.3: a digest is sent only once a DigestEntry configured it; a long ack
    # timeout keeps an unacknowledged list visible (digests_unacknowledged)
    client.insert([DigestEntry("peer_event_t", max_timeout_ns=0, max_list_size=1,
                               ack_timeout_ns=60_000_000_000)])


def _acknowledged(target: MemoryTarget, lists: int) -> bool:
    return target.digest_lists_sent() == lists and target.digests_unacknowledged() == []


def test_packet_out_and_digest_ack(client: P4RuntimeClient, target: MemoryTarget,
                                   schema: P4Schema) -> None:
    client.packet_out(PacketOut(b"\x01" * 66, {"egress_port": 0, "mcast_grp": 1}))
    [pkt] = target.datapath.wait_packet_outs(1)
    assert (pkt.frame, pkt.egress_port, pkt.mcast_grp) == (b"\x01" * 66, 0, 1)
    got: list[p4runtime_pb2.DigestList] = []
    event = threading.Event()

    def on_digest(d: p4runtime_pb2.DigestList) -> None:
        got.append(d)
        event.set()

    client.on_digest = on_digest
    _enable_digest(client)
    target.datapath.peer_event(2, PlaneState.UP, last_seq=5, time_us=10)
    assert event.wait(10)
    assert got[0].list_id == 1  # the target numbers its lists from 1
    assert [[m.bitstring for m in d.struct.members] for d in got[0].data] == [
        [b"\x02", b"\x01", b"\x05", b"\x0a"]]
    _wait(lambda: _acknowledged(target, 1), "the DigestListAck")


def test_unhandled_messages_are_queued(client: P4RuntimeClient, target: MemoryTarget) -> None:
    _enable_digest(client)
    target.datapath.peer_event(1, PlaneState.DOWN, last_seq=5, time_us=10)
    msg = client.messages.get(timeout=10)
    assert msg.digest.list_id == 1
    _wait(lambda: _acknowledged(target, 1), "the DigestListAck")


def _wait(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)


def test_reconnect_after_server_restart(schema: P4Schema) -> None:
    server = serve_memory_target()
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
        server = serve_memory_target(f"127.0.0.1:{port}")  # a new target: nothing set
        assert reconnected.wait(20)
        assert (False, False) in states
        assert client.primary
        assert client.stream_generation > generation
        client.set_pipeline(schema)
        client.packet_out(PacketOut(b"x" * 14, {"egress_port": 1, "mcast_grp": 0}))
        assert server.datapath.wait_packet_outs(1)[0].frame == b"x" * 14
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
