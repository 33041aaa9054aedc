"""Client arbitration on the real hbmon-kernel-target against P4Runtime 1.4 section 5:
primary/backup by election id (5.3), notifications (5.4), no primary after the primary
leaves until an id reaches the highest ever seen (5, changelog v1.1.0), writes and
packet-out refused to backups (12, 16.1), stream-ending errors (5.3). Every test gets a
fresh target: election_id_past lives as long as the target does.

The same scenarios run against bmv2 in tests/test_bmv2_arbitration.py, where PI's known
deviation (it promotes the next backup) is recorded."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import code_pb2
from hbmon.p4 import P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient
from p4.v1 import p4runtime_pb2

from .bpf_lab import Lab
from .server_harness import P4INFO, KernelTarget, RawStream, uint128, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture
def target(schema: P4Schema) -> Iterator[KernelTarget]:
    with Lab(2) as lab, KernelTarget(lab.ports) as t:
        assert t.address is not None
        with RawStream(t.address) as s:  # push the pipeline once, then leave
            s.arbitrate(1, 1)  # the lowest id: every test's ids are above it (5.3)
            assert s.next("arbitration") is not None
            req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
                device_id=1, election_id=uint128(1),
                action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
            req.config.p4info.CopyFrom(schema.p4info)
            s.stub.SetForwardingPipelineConfig(req)
        yield t


@pytest.fixture
def streams(target: KernelTarget) -> Iterator[list[RawStream]]:
    made: list[RawStream] = []
    yield made
    for s in made:
        s.close()
    assert target.address is not None
    assert wait_for(lambda: no_primary(target.address)), "streams of the test still live"


def no_primary(address: str) -> bool:
    """True once the target has no primary (the streams of a test have been torn down)."""
    with RawStream(address) as probe:
        probe.arbitrate(1, None)
        msg = probe.next("arbitration")
        return msg is not None and msg.arbitration.status.code == code_pb2.NOT_FOUND


def open_stream(target: KernelTarget, streams: list[RawStream]) -> RawStream:
    assert target.address is not None
    s = RawStream(target.address)
    streams.append(s)
    return s


def status(s: RawStream) -> tuple[int, int | None]:
    """(status code, election id shown) of the next arbitration message."""
    msg = s.next("arbitration")
    assert msg is not None, f"no arbitration message ({s.ended})"
    arb = msg.arbitration
    assert arb.device_id == 1
    eid = (arb.election_id.high << 64) | arb.election_id.low \
        if arb.HasField("election_id") else None
    return arb.status.code, eid


def insert_peer_id(s: RawStream, schema: P4Schema, election_id: int | None,
                   peer_id: int) -> grpc.StatusCode:
    req = p4runtime_pb2.WriteRequest(device_id=1)
    if election_id is not None:
        req.election_id.CopyFrom(uint128(election_id))
    req.updates.add(type=p4runtime_pb2.Update.INSERT, entity=TableEntry(
        "HbIngress.peer_ids", {"peer_id": peer_id}, "HbIngress.peer_id_known").encode(schema))
    try:
        s.stub.Write(req)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


OK, EXISTS, NOT_FOUND = code_pb2.OK, code_pb2.ALREADY_EXISTS, code_pb2.NOT_FOUND


def test_primary_backup_and_takeover(target: KernelTarget, streams: list[RawStream],
                                     schema: P4Schema) -> None:
    a = open_stream(target, streams)
    a.arbitrate(1, 5)
    assert status(a) == (OK, 5)  # 5.3: first id ever: primary
    b = open_stream(target, streams)
    b.arbitrate(1, 3)
    assert status(b) == (EXISTS, 5)  # 5.3: backup; only b is told (5.4: ALREADY_EXISTS)
    assert insert_peer_id(b, schema, 3, 100) == grpc.StatusCode.PERMISSION_DENIED  # 12.1
    assert insert_peer_id(a, schema, 5, 100) == grpc.StatusCode.OK
    c = open_stream(target, streams)
    c.arbitrate(1, 9)  # 5.3: higher id: the others are told first, then the new primary
    assert status(a) == (EXISTS, 9) and status(b) == (EXISTS, 9)
    assert status(c) == (OK, 9)
    assert insert_peer_id(a, schema, 5, 101) == grpc.StatusCode.PERMISSION_DENIED
    assert insert_peer_id(c, schema, 9, 101) == grpc.StatusCode.OK
    c.close()  # 5: the primary leaves: no primary, everyone told with the highest id (5.4)
    assert status(a) == (NOT_FOUND, 9)
    assert status(b) == (NOT_FOUND, 9)
    assert insert_peer_id(a, schema, 5, 102) == grpc.StatusCode.PERMISSION_DENIED
    b.arbitrate(1, 7)  # below the highest ever seen (9): still a backup, only b told
    assert status(b) == (NOT_FOUND, 9)
    b.arbitrate(1, 10)  # above it: b takes over, a is told
    assert status(a) == (EXISTS, 10) and status(b) == (OK, 10)
    assert insert_peer_id(b, schema, 10, 102) == grpc.StatusCode.OK
    b.arbitrate(1, 4)  # 5.3: the primary lowers its id: it steps down, everyone is told
    assert status(a) == (NOT_FOUND, 10) and status(b) == (NOT_FOUND, 10)
    assert insert_peer_id(b, schema, 4, 103) == grpc.StatusCode.PERMISSION_DENIED


def test_a_reconnecting_primary_keeps_its_id(target: KernelTarget,
                                             streams: list[RawStream]) -> None:
    """5.3: an id >= election_id_past wins, so a primary whose stream broke is primary
    again with its own id, while a backup with a lower id is not promoted meanwhile."""
    a = open_stream(target, streams)
    a.arbitrate(1, 12)
    assert status(a) == (OK, 12)
    b = open_stream(target, streams)
    b.arbitrate(1, 11)
    assert status(b) == (EXISTS, 12)
    a.close()
    assert status(b) == (NOT_FOUND, 12)
    a2 = open_stream(target, streams)
    a2.arbitrate(1, 12)
    assert status(b) == (EXISTS, 12) and status(a2) == (OK, 12)


def test_stream_errors_end_the_stream(target: KernelTarget, streams: list[RawStream]) -> None:
    a = open_stream(target, streams)
    a.arbitrate(1, 20)
    assert status(a) == (OK, 20)
    dup = open_stream(target, streams)
    dup.arbitrate(1, 20)
    err = dup.wait_end()
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "election id 20 is already used" in str(err.details())
    other = open_stream(target, streams)
    other.arbitrate(2, 1)
    err = other.wait_end()
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    a.arbitrate(3, 20)  # a live stream cannot change its device id
    err = a.wait_end()
    assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unset_election_id_is_a_backup(target: KernelTarget, streams: list[RawStream],
                                       schema: P4Schema) -> None:
    s = open_stream(target, streams)
    s.arbitrate(1, None)
    code, _ = status(s)
    assert code == NOT_FOUND  # nobody else connected: no primary
    assert insert_peer_id(s, schema, None, 200) == grpc.StatusCode.PERMISSION_DENIED
    p = open_stream(target, streams)
    p.arbitrate(1, 1)
    assert status(p) == (OK, 1)
    assert status(s) == (EXISTS, 1)


def test_roles_arbitrate_separately(target: KernelTarget, streams: list[RawStream],
                                    schema: P4Schema) -> None:
    d = open_stream(target, streams)
    d.arbitrate(1, 30)
    r = open_stream(target, streams)
    r.arbitrate(1, 2, role="monitoring")
    assert status(d) == (OK, 30)
    msg = r.next("arbitration")
    assert msg is not None and msg.arbitration.status.code == OK
    assert msg.arbitration.role.name == "monitoring"


def test_packet_out_from_backup_refused(target: KernelTarget, streams: list[RawStream],
                                        schema: P4Schema) -> None:
    a = open_stream(target, streams)
    a.arbitrate(1, 40)
    # a must be primary before b asks, or b is briefly primary and told OK first
    assert status(a)[0] == OK
    b = open_stream(target, streams)
    b.arbitrate(1, 39)
    assert status(b)[0] == EXISTS
    pkt = p4runtime_pb2.PacketOut(payload=b"\x00" * 60)
    for f in schema.packet_metadata("packet_out").fields:
        pkt.metadata.add(metadata_id=f.id, value=b"\x01" if f.name == "egress_port" else b"\x00")
    b.send(p4runtime_pb2.StreamMessageRequest(packet=pkt))
    err = b.next("error")
    assert err is not None and err.error.canonical_code == code_pb2.PERMISSION_DENIED
    assert err.error.packet_out.packet_out == pkt
    ack = p4runtime_pb2.StreamMessageRequest()
    ack.digest_ack.digest_id = schema.digest("peer_event_t").id
    ack.digest_ack.list_id = 1
    b.send(ack)
    err = b.next("error")
    assert err is not None and err.error.canonical_code == code_pb2.PERMISSION_DENIED
    assert err.error.HasField("digest_list_ack")


def test_controller_standby_takes_over_and_the_old_primary_returns_as_backup(
        target: KernelTarget, streams: list[RawStream], schema: P4Schema) -> None:
    """The controller's client (hbmon.p4.client) on this spec-conforming target: when the primary
    leaves, the target names no primary (5) and the standby re-arbitrates above the highest
    id it was told of (5.4), becomes primary and can write; the old primary, back with its
    configured id, is then a backup (5.3) and does not preempt it."""
    assert target.address is not None
    primary = P4RuntimeClient(target.address, 1, 10, schema=schema)
    standby = P4RuntimeClient(target.address, 1, 9, schema=schema)
    try:
        assert primary.connect(10) is True
        assert standby.connect(10) is False
        primary.close()  # its stream ends: the target is left without a primary
        assert wait_for(lambda: standby.primary, timeout=2.0), standby.last_error
        assert standby.election_id == 11 and standby.base_election_id == 9
        standby.insert([TableEntry("HbIngress.peer_ids", {"peer_id": 300},
                                   "HbIngress.peer_id_known")])
        returning = P4RuntimeClient(target.address, 1, 10)
        try:
            assert returning.connect(10) is False  # 10 < 11: a backup
            assert returning.highest_election_id == 11
            assert standby.primary
        finally:
            returning.close()
    finally:
        primary.close()
        standby.close()
