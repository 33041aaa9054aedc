"""The real hbmon-kernel-target over real gRPC: pipeline config, Write/Read semantics and
error codes for tables, multicast groups, registers, counters and digest config.

One target (on veths into namespaces made here) serves the module; every test starts from a
VERIFY_AND_COMMIT, which clears the forwarding state."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from hbmon.p4 import (
    CounterRead,
    DigestEntry,
    MulticastGroup,
    P4Schema,
    RegisterCell,
    RegisterRead,
    Replica,
    TableEntry,
)
from hbmon.p4.client import (
    DELETE,
    INSERT,
    MODIFY,
    NotPrimaryError,
    P4RuntimeClient,
    P4RuntimeError,
    WriteError,
    make_update,
)
from hbmon.protocol import REASON_COUNT
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .bpf_lab import Lab
from .server_harness import P4INFO, KernelTarget, uint128

pytestmark = pytest.mark.netns

ELECTION = 100
A = p4runtime_pb2.SetForwardingPipelineConfigRequest
R = p4runtime_pb2.GetForwardingPipelineConfigRequest
CELLS = 65536


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture(scope="module")
def target() -> Iterator[KernelTarget]:
    with Lab(3) as lab, KernelTarget(lab.ports) as t:
        yield t
        assert t.running(), f"target died:\n{t.output}"


@pytest.fixture
def client(target: KernelTarget, schema: P4Schema) -> Iterator[P4RuntimeClient]:
    assert target.address is not None
    c = P4RuntimeClient(target.address, 1, election_id=ELECTION, schema=schema)
    try:
        assert c.connect(timeout=10), c.last_error
        c.set_pipeline(schema, b'{"bmv2": "ignored"}')  # clears what earlier tests left
        yield c
    finally:
        c.close()


@pytest.fixture
def stub(target: KernelTarget) -> Iterator[p4runtime_pb2_grpc.P4RuntimeStub]:
    assert target.address is not None
    channel = grpc.insecure_channel(target.address, options=[
        ("grpc.max_receive_message_length", 256 << 20)])
    yield p4runtime_pb2_grpc.P4RuntimeStub(channel)
    channel.close()


# -- helpers ------------------------------------------------------------------------------


def write_request(*updates: p4runtime_pb2.Update,
                  atomicity: int = p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR,
                  ) -> p4runtime_pb2.WriteRequest:
    req = p4runtime_pb2.WriteRequest(device_id=1, atomicity=atomicity)
    req.election_id.CopyFrom(uint128(ELECTION))
    req.updates.extend(updates)
    return req


def details(err: grpc.RpcError) -> list[int]:
    """Canonical codes of the p4.v1.Error list in a failed RPC's status details."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert status.code == code_pb2.UNKNOWN
            out = []
            for d in status.details:
                e = p4runtime_pb2.Error()
                assert d.Unpack(e)
                out.append(e.canonical_code)
            return out
    raise AssertionError("no grpc-status-details-bin in the trailing metadata")


def write_codes(stub: p4runtime_pb2_grpc.P4RuntimeStub, *updates: p4runtime_pb2.Update,
                atomicity: int = p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR) -> list[int]:
    """Per-update canonical codes of a Write (all OK when it succeeded)."""
    try:
        stub.Write(write_request(*updates, atomicity=atomicity))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNKNOWN, err.details()
        return details(err)
    return [code_pb2.OK] * len(updates)


def update(kind: int, entity: p4runtime_pb2.Entity) -> p4runtime_pb2.Update:
    return p4runtime_pb2.Update(type=kind, entity=entity)


def read(stub: p4runtime_pb2_grpc.P4RuntimeStub, *entities: p4runtime_pb2.Entity,
         ) -> list[p4runtime_pb2.Entity]:
    req = p4runtime_pb2.ReadRequest(device_id=1)
    req.entities.extend(entities)
    return [e for resp in stub.Read(req) for e in resp.entities]


def peers_entry(schema: P4Schema, src: bytes = b"\xc6\x12\x01\x02",
                peer_id: bytes = b"\x2a", index: bytes | None = b"\x03",
                ) -> p4runtime_pb2.TableEntry:
    te = p4runtime_pb2.TableEntry(table_id=schema.table("HbIngress.peers").id)
    te.match.add(field_id=1).exact.value = src
    te.match.add(field_id=2).exact.value = peer_id
    if index is not None:
        te.action.action.action_id = schema.action("HbIngress.set_peer_index").id
        te.action.action.params.add(param_id=1, value=index)
        te.action.action.params.add(param_id=2, value=b"\x5e\xed\x12\x34")  # nonce_key
        te.action.action.params.add(param_id=3, value=b"\xff")  # min_ttl: GTSM on
    return te


def table_entity(te: p4runtime_pb2.TableEntry) -> p4runtime_pb2.Entity:
    return p4runtime_pb2.Entity(table_entry=te)


def codes_of(err: WriteError) -> list[str]:
    return [e.code_name for e in err.errors]


# -- capabilities and pipeline ------------------------------------------------------------


def test_capabilities(client: P4RuntimeClient) -> None:
    assert client.capabilities() == "1.4.1"


def test_get_pipeline_response_types(client: P4RuntimeClient, schema: P4Schema,
                                     stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    req = A(device_id=1, action=A.VERIFY_AND_COMMIT, election_id=uint128(ELECTION))
    req.config.p4info.CopyFrom(schema.p4info)
    req.config.p4_device_config = b"device-bytes"
    req.config.cookie.cookie = 77
    stub.SetForwardingPipelineConfig(req)
    got = {t: stub.GetForwardingPipelineConfig(R(device_id=1, response_type=t)).config
           for t in (R.ALL, R.COOKIE_ONLY, R.P4INFO_AND_COOKIE, R.DEVICE_CONFIG_AND_COOKIE)}
    assert got[R.ALL] == req.config  # read-write symmetry
    assert got[R.COOKIE_ONLY] == p4runtime_pb2.ForwardingPipelineConfig(cookie=req.config.cookie)
    assert got[R.P4INFO_AND_COOKIE].p4info == schema.p4info
    assert not got[R.P4INFO_AND_COOKIE].p4_device_config
    assert got[R.DEVICE_CONFIG_AND_COOKIE].p4_device_config == b"device-bytes"
    assert not got[R.DEVICE_CONFIG_AND_COOKIE].HasField("p4info")
    assert got[R.DEVICE_CONFIG_AND_COOKIE].cookie.cookie == 77
    assert client.pipeline_matches(schema)


def _mutated(schema: P4Schema) -> p4info_pb2.P4Info:
    other = p4info_pb2.P4Info()
    other.CopyFrom(schema.p4info)
    next(t for t in other.tables if t.preamble.name == "HbIngress.l2_forward") \
        .match_fields[0].bitwidth = 32
    return other


def test_foreign_p4info_refused_naming_the_mismatch(client: P4RuntimeClient,
                                                    schema: P4Schema) -> None:
    client.insert([TableEntry("HbIngress.peer_ids", {"peer_id": 9}, "HbIngress.peer_id_known")])
    for action in (A.VERIFY, A.VERIFY_AND_COMMIT, A.VERIFY_AND_SAVE, A.RECONCILE_AND_COMMIT):
        with pytest.raises(P4RuntimeError) as info:
            client.set_pipeline(_mutated(schema), action=action)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "table 'HbIngress.l2_forward': match field 'dst_addr' is id 1, 32 bits" \
            in str(info.value)
    with pytest.raises(P4RuntimeError) as info:
        client.set_pipeline(p4info_pb2.P4Info())
    assert "table 'HbIngress.peers' missing" in str(info.value)
    # nothing changed: the entry is still there
    assert len(client.read_all([TableEntry("HbIngress.peer_ids")])) == 1


def test_pipeline_actions(client: P4RuntimeClient, schema: P4Schema,
                          stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    entry = TableEntry("HbIngress.peer_ids", {"peer_id": 9}, "HbIngress.peer_id_known")
    client.insert([entry])
    client.write([make_update(MODIFY, RegisterCell("hb_rx_count", 5, 11), schema)])
    client.set_pipeline(schema, action=A.VERIFY)  # checks only
    client.set_pipeline(schema, action=A.RECONCILE_AND_COMMIT)  # same pipeline: state kept
    assert len(client.read_all([TableEntry("HbIngress.peer_ids")])) == 1
    client.set_pipeline(schema, action=A.VERIFY_AND_SAVE)
    client.set_pipeline(p4info_pb2.P4Info(), action=A.COMMIT)  # empty config: allowed
    assert len(client.read_all([TableEntry("HbIngress.peer_ids")])) == 1
    with pytest.raises(P4RuntimeError) as info:  # nothing saved any more
        client.set_pipeline(p4info_pb2.P4Info(), action=A.COMMIT)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    client.set_pipeline(schema, action=A.VERIFY_AND_SAVE)
    with pytest.raises(P4RuntimeError) as info:
        client.set_pipeline(schema, action=A.COMMIT)  # COMMIT takes no config
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    client.set_pipeline(schema)  # VERIFY_AND_COMMIT clears the forwarding state
    assert client.read_all([TableEntry("HbIngress.peer_ids")]) == []
    cell = client.read_all([RegisterRead("hb_rx_count", 5)])[0]
    assert cell.register_entry.data.bitstring == b"\x00"
    for bad in (A(device_id=1, action=A.VERIFY_AND_COMMIT, election_id=uint128(ELECTION)),
                A(device_id=1, action=A.UNSPECIFIED, election_id=uint128(ELECTION))):
        with pytest.raises(grpc.RpcError) as err:
            stub.SetForwardingPipelineConfig(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pipeline_rpc_checks_device_and_primary(client: P4RuntimeClient, schema: P4Schema,
                                                stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    req = A(device_id=2, action=A.VERIFY, election_id=uint128(ELECTION))
    req.config.p4info.CopyFrom(schema.p4info)
    with pytest.raises(grpc.RpcError) as err:
        stub.SetForwardingPipelineConfig(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    req.device_id, req.election_id.low = 1, ELECTION - 1
    with pytest.raises(grpc.RpcError) as err:
        stub.SetForwardingPipelineConfig(req)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        stub.GetForwardingPipelineConfig(R(device_id=3))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    bare = p4runtime_pb2.ReadRequest(device_id=0)
    bare.entities.add().table_entry.SetInParent()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Read(bare))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- tables -------------------------------------------------------------------------------


def test_insert_and_read_back_canonical(client: P4RuntimeClient, schema: P4Schema,
                                        stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    # padded bytestrings are accepted (spec 8.4) and read back in canonical form
    te = peers_entry(schema, peer_id=b"\x00\x00\x00\x2a", index=b"\x00\x03")
    te.controller_metadata = 5
    te.metadata = b"opaque"
    assert write_codes(stub, update(INSERT, table_entity(te))) == [code_pb2.OK]
    want = peers_entry(schema)
    want.controller_metadata, want.metadata = 5, b"opaque"
    tid = schema.table("HbIngress.peers").id
    assert [e.table_entry for e in read(stub, table_entity(
        p4runtime_pb2.TableEntry(table_id=tid)))] == [want]
    # by exact key (any encoding), all tables, and a key that is not there
    assert [e.table_entry for e in read(stub, table_entity(peers_entry(
        schema, src=b"\x00\xc6\x12\x01\x02", index=None)))] == [want]
    assert [e.table_entry for e in read(stub, table_entity(p4runtime_pb2.TableEntry()))] \
        == [want]
    assert read(stub, table_entity(peers_entry(schema, peer_id=b"\x2b", index=None))) == []
    # filters: action id, metadata
    action_filter = p4runtime_pb2.TableEntry(table_id=tid)
    action_filter.action.action.action_id = schema.action("HbIngress.set_peer_index").id
    assert len(read(stub, table_entity(action_filter))) == 1
    assert read(stub, table_entity(p4runtime_pb2.TableEntry(table_id=tid, metadata=b"x"))) == []
    decoded = TableEntry.decode(schema, read(stub, table_entity(want))[0])
    assert decoded.match == {"src_addr": 0xC6120102, "peer_id": 42}


def test_insert_modify_delete_semantics(client: P4RuntimeClient) -> None:
    key = {"dst_addr": "02:00:00:00:00:01"}
    fwd = TableEntry("HbIngress.l2_forward", key, "HbIngress.set_egress_port", {"port": 2})
    drop = TableEntry("HbIngress.l2_forward", key, "HbIngress.drop")
    with pytest.raises(WriteError) as info:
        client.modify([fwd])
    assert codes_of(info.value) == ["NOT_FOUND"]
    with pytest.raises(WriteError) as info:
        client.delete([fwd])
    assert codes_of(info.value) == ["NOT_FOUND"]
    client.insert([fwd])
    with pytest.raises(WriteError) as info:
        client.insert([drop])  # the existing entry stays unchanged
    assert codes_of(info.value) == ["ALREADY_EXISTS"]
    got = client.read_all([TableEntry("HbIngress.l2_forward")])
    assert [TableEntry.decode(client.schema, e).action for e in got] == [  # type: ignore[arg-type]
        "HbIngress.set_egress_port"]
    client.modify([drop])
    got = client.read_all([TableEntry("HbIngress.l2_forward")])
    assert [TableEntry.decode(client.schema, e).action for e in got] == [  # type: ignore[arg-type]
        "HbIngress.drop"]
    # MODIFY without an action keeps it
    client.modify([TableEntry("HbIngress.l2_forward", key)])
    got = client.read_all([TableEntry("HbIngress.l2_forward")])
    assert got[0].table_entry.action.action.action_id == client.schema.action(  # type: ignore[union-attr]
        "HbIngress.drop").id
    client.delete([TableEntry("HbIngress.l2_forward", key)])  # only the key counts
    assert client.read_all([TableEntry("HbIngress.l2_forward")]) == []


def test_batch_continue_on_error_reports_each_update(
        client: P4RuntimeClient, schema: P4Schema,
        stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    good1 = peers_entry(schema, peer_id=b"\x01")
    good2 = peers_entry(schema, peer_id=b"\x02")
    bad_table = peers_entry(schema)
    bad_table.table_id = 0x0200FFFF
    codes = write_codes(stub, update(INSERT, table_entity(good1)),
                        update(INSERT, table_entity(good1)),
                        update(INSERT, table_entity(bad_table)),
                        update(INSERT, table_entity(good2)))
    assert codes == [code_pb2.OK, code_pb2.ALREADY_EXISTS, code_pb2.INVALID_ARGUMENT,
                     code_pb2.OK]
    assert len(read(stub, table_entity(p4runtime_pb2.TableEntry(table_id=good1.table_id)))) == 2


def test_batch_rollback_on_error(client: P4RuntimeClient, schema: P4Schema,
                                 stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    W = p4runtime_pb2.WriteRequest
    existing = peers_entry(schema, peer_id=b"\x09")
    stub.Write(write_request(update(INSERT, table_entity(existing))))
    fresh = peers_entry(schema, peer_id=b"\x01")
    group = MulticastGroup(1, (Replica(1, 0),)).encode(schema)
    codes = write_codes(stub, update(INSERT, table_entity(fresh)), update(INSERT, group),
                        update(DELETE, table_entity(existing)),
                        update(DELETE, table_entity(existing)),  # fails: all undone
                        update(INSERT, table_entity(peers_entry(schema, peer_id=b"\x03"))),
                        atomicity=W.ROLLBACK_ON_ERROR)
    assert codes == [code_pb2.ABORTED] * 3 + [code_pb2.NOT_FOUND, code_pb2.ABORTED]
    entries = read(stub, table_entity(p4runtime_pb2.TableEntry(table_id=fresh.table_id)))
    assert [e.table_entry for e in entries] == [existing]
    assert read(stub, MulticastGroup(0).encode(schema)) == []
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(write_request(update(INSERT, table_entity(fresh)),
                                 atomicity=W.DATAPLANE_ATOMIC))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rollback_failure_code_is_the_real_one(client: P4RuntimeClient, schema: P4Schema,
                                               stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    dup = peers_entry(schema, peer_id=b"\x07")
    codes = write_codes(stub, update(INSERT, table_entity(dup)),
                        update(INSERT, table_entity(dup)),
                        atomicity=p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR)
    assert codes == [code_pb2.ABORTED, code_pb2.ALREADY_EXISTS]
    assert read(stub, table_entity(p4runtime_pb2.TableEntry(table_id=dup.table_id))) == []


def _bad_entries(schema: P4Schema) -> list[tuple[str, p4runtime_pb2.TableEntry, int]]:
    out: list[tuple[str, p4runtime_pb2.TableEntry, int]] = []

    def case(name: str, code: int, **kw: bytes | None) -> p4runtime_pb2.TableEntry:
        te = peers_entry(schema, **kw)  # type: ignore[arg-type]
        out.append((name, te, code))
        return te

    case("value wider than 32 bits", code_pb2.OUT_OF_RANGE, src=b"\x01\x00\x00\x00\x00")
    case("empty value", code_pb2.OUT_OF_RANGE, peer_id=b"")
    case("parameter wider than 16 bits", code_pb2.INVALID_ARGUMENT, index=b"\x01\x00\x00")
    te = case("unknown match field", code_pb2.INVALID_ARGUMENT)
    te.match[1].field_id = 7
    te = case("missing match field", code_pb2.INVALID_ARGUMENT)
    del te.match[1]
    te = case("field given twice", code_pb2.INVALID_ARGUMENT)
    te.match.add().CopyFrom(te.match[0])
    te = case("ternary on an exact field", code_pb2.INVALID_ARGUMENT)
    te.match[0].ternary.value, te.match[0].ternary.mask = b"\x01", b"\xff"
    te = case("priority on an exact table", code_pb2.INVALID_ARGUMENT)
    te.priority = 10
    te = case("unknown table", code_pb2.INVALID_ARGUMENT)
    te.table_id = 0x02000077
    te = case("action of another table", code_pb2.INVALID_ARGUMENT)
    te.action.action.action_id = schema.action("HbIngress.peer_id_known").id
    del te.action.action.params[:]
    te = case("DEFAULT_ONLY action in an entry", code_pb2.PERMISSION_DENIED)
    te.action.action.action_id = schema.action("NoAction").id
    del te.action.action.params[:]
    te = case("missing parameter", code_pb2.INVALID_ARGUMENT)
    del te.action.action.params[:]
    te = case("unknown parameter", code_pb2.INVALID_ARGUMENT)
    te.action.action.params.add(param_id=9, value=b"\x01")
    te = case("action profile on a direct table", code_pb2.INVALID_ARGUMENT)
    te.action.action_profile_member_id = 1
    case("INSERT without action", code_pb2.INVALID_ARGUMENT, index=None)
    te = case("is_const", code_pb2.INVALID_ARGUMENT)
    te.is_const = True
    te = case("idle timeout", code_pb2.INVALID_ARGUMENT)
    te.idle_timeout_ns = 10
    return out


def test_bad_entries_refused_with_their_code(client: P4RuntimeClient, schema: P4Schema,
                                             stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    cases = _bad_entries(schema)
    codes = write_codes(stub, *(update(INSERT, table_entity(te)) for _, te, _ in cases))
    assert {name: code_pb2.Code.Name(c) for (name, _, _), c in zip(cases, codes, strict=True)} \
        == {name: code_pb2.Code.Name(code) for name, _, code in cases}
    assert read(stub, table_entity(p4runtime_pb2.TableEntry())) == []


def test_l2_forward_port_must_exist(client: P4RuntimeClient) -> None:
    with pytest.raises(WriteError) as info:
        client.insert([TableEntry("HbIngress.l2_forward", {"dst_addr": 1},
                                  "HbIngress.set_egress_port", {"port": 99})])
    assert codes_of(info.value) == ["INVALID_ARGUMENT"]
    assert "port 99 is not a port of this target (ports: 1, 2, 3)" in str(info.value)


def test_default_entries(client: P4RuntimeClient, schema: P4Schema,
                         stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    defaults = {"HbIngress.peers": "NoAction", "HbIngress.peer_ids": "NoAction",
                "HbIngress.l2_forward": "HbIngress.drop",
                "HbEgress.peer_requests": "HbEgress.drop_request"}
    for table, action in defaults.items():
        got = client.read_all([TableEntry(table, is_default=True)])
        assert [TableEntry.decode(schema, e) for e in got] == [
            TableEntry(table, {}, action, {}, 0, True)]
    # wildcard reads do not return default entries
    assert read(stub, table_entity(p4runtime_pb2.TableEntry())) == []
    client.modify([TableEntry("HbIngress.l2_forward", action="HbIngress.drop",
                              is_default=True)])
    client.modify([TableEntry("HbIngress.l2_forward", is_default=True)])  # reset
    cases = [
        (MODIFY, TableEntry("HbIngress.l2_forward", action="HbIngress.set_egress_port",
                            params={"port": 1}, is_default=True), "UNIMPLEMENTED"),
        (MODIFY, TableEntry("HbIngress.peers", action="HbIngress.set_peer_index",
                            params={"index": 1, "nonce_key": 1, "min_ttl": 0},
                            is_default=True), "UNIMPLEMENTED"),
        (INSERT, TableEntry("HbIngress.peers", action="NoAction", is_default=True),
         "INVALID_ARGUMENT"),
        (DELETE, TableEntry("HbIngress.peers", is_default=True), "INVALID_ARGUMENT"),
        (MODIFY, TableEntry("HbIngress.peer_ids", {"peer_id": 1}, "NoAction",
                            is_default=True), "INVALID_ARGUMENT"),
    ]
    for kind, entry, code in cases:
        with pytest.raises(WriteError) as info:
            client.write([make_update(kind, entry, schema)])
        assert codes_of(info.value) == [code], entry


def test_table_size_limit(client: P4RuntimeClient, schema: P4Schema) -> None:
    size = schema.table("HbIngress.l2_forward").size
    entries = [TableEntry("HbIngress.l2_forward", {"dst_addr": 0x020000000000 + i},
                          "HbIngress.drop") for i in range(size + 1)]
    with pytest.raises(WriteError) as info:
        client.insert(entries)
    assert [(e.index, e.code_name) for e in info.value.errors] == [(size, "RESOURCE_EXHAUSTED")]
    assert len(client.read_all([TableEntry("HbIngress.l2_forward")])) == size


# -- multicast groups ---------------------------------------------------------------------


def test_multicast_groups(client: P4RuntimeClient, schema: P4Schema,
                          stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    group = MulticastGroup(1, (Replica(1, 3), Replica(2, 4), Replica(3, 7)))
    client.insert([group])
    # a group written with the bytes `port` (P4Runtime 1.4) reads back the same way
    g2 = p4runtime_pb2.Entity()
    entry = g2.packet_replication_engine_entry.multicast_group_entry
    entry.multicast_group_id = 9
    entry.metadata = b"meta"
    entry.replicas.add(port=b"\x02", instance=1)
    assert write_codes(stub, update(INSERT, g2)) == [code_pb2.OK]
    assert read(stub, MulticastGroup(0).encode(schema)) == [group.encode(schema), g2]
    assert [MulticastGroup.decode(schema, e) for e in client.read([MulticastGroup(1)])] \
        == [group]
    smaller = MulticastGroup(1, (Replica(2, 4),))
    client.modify([smaller])
    assert [MulticastGroup.decode(schema, e) for e in client.read([MulticastGroup(1)])] \
        == [smaller]
    client.delete([MulticastGroup(1)])
    assert read(stub, MulticastGroup(1).encode(schema)) == []
    assert read(stub, MulticastGroup(0).encode(schema)) == [g2]


@pytest.mark.parametrize(("kind", "group", "code"), [
    (INSERT, MulticastGroup(0, (Replica(1, 1),)), "INVALID_ARGUMENT"),
    (INSERT, MulticastGroup(70000, (Replica(1, 1),)), "OUT_OF_RANGE"),
    (INSERT, MulticastGroup(2, (Replica(1, 1), Replica(1, 1))), "INVALID_ARGUMENT"),
    (INSERT, MulticastGroup(2, (Replica(9, 1),)), "INVALID_ARGUMENT"),
    (INSERT, MulticastGroup(2, (Replica(1, 70000),)), "INVALID_ARGUMENT"),
    (INSERT, MulticastGroup(5, (Replica(2, 1),)), "ALREADY_EXISTS"),
    (MODIFY, MulticastGroup(6, (Replica(1, 1),)), "NOT_FOUND"),
    (DELETE, MulticastGroup(6), "NOT_FOUND"),
])
def test_multicast_group_errors(client: P4RuntimeClient, schema: P4Schema, kind: int,
                                group: MulticastGroup, code: str) -> None:
    client.insert([MulticastGroup(5, (Replica(1, 1),))])
    with pytest.raises(WriteError) as info:
        client.write([make_update(kind, group, schema)])
    assert codes_of(info.value) == [code]
    assert [MulticastGroup.decode(schema, e) for e in client.read([MulticastGroup(0)])] == [
        MulticastGroup(5, (Replica(1, 1),))]


def test_clone_sessions_unimplemented(client: P4RuntimeClient,
                                      stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    e = p4runtime_pb2.Entity()
    e.packet_replication_engine_entry.clone_session_entry.session_id = 1
    assert write_codes(stub, update(INSERT, e)) == [code_pb2.UNIMPLEMENTED]


# -- registers ----------------------------------------------------------------------------


def _cells(entities: Sequence[p4runtime_pb2.Entity]) -> list[tuple[int, int, int]]:
    return [(e.register_entry.register_id, e.register_entry.index.index,
             int.from_bytes(e.register_entry.data.bitstring, "big")) for e in entities]


def test_register_reads_and_writes(client: P4RuntimeClient, schema: P4Schema) -> None:
    rx = schema.register("hb_rx_count").id
    last = schema.register("hb_last_rx_us").id
    client.write([make_update(MODIFY, RegisterCell("hb_rx_count", 7, 123), schema),
                  make_update(MODIFY, RegisterCell("hb_last_rx_us", 65535, (1 << 64) - 1),
                              schema)])
    cells = _cells(client.read_all([RegisterRead("hb_rx_count")]))
    assert len(cells) == CELLS
    assert [i for _, i, _ in cells] == list(range(CELLS))  # index order
    assert {(r, i, v) for r, i, v in cells if v} == {(rx, 7, 123)}
    assert _cells(client.read_all([RegisterRead("hb_rx_count", 7),
                                   RegisterRead("hb_last_rx_us", 65535)])) == [
        (rx, 7, 123), (last, 65535, (1 << 64) - 1)]
    # a write without index sets every cell (spec 9.7)
    fill = p4runtime_pb2.Entity(register_entry=p4runtime_pb2.RegisterEntry(register_id=rx))
    fill.register_entry.data.bitstring = b"\x00\x05"
    client.write([p4runtime_pb2.Update(type=MODIFY, entity=fill)])
    assert {v for _, _, v in _cells(client.read_all([RegisterRead("hb_rx_count")]))} == {5}


def test_register_read_all_registers(client: P4RuntimeClient, schema: P4Schema) -> None:
    client.write([make_update(MODIFY, RegisterCell(r.name, 1, 1), schema)
                  for r in schema.registers.values()])
    cells = _cells(client.read_all([p4runtime_pb2.Entity(
        register_entry=p4runtime_pb2.RegisterEntry())]))
    assert len(cells) == CELLS * len(schema.registers)
    assert {(r, i) for r, i, v in cells if v} == {(rid, 1) for rid in schema.registers}


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda e: setattr(e.index, "index", CELLS), "OUT_OF_RANGE"),
    (lambda e: setattr(e.index, "index", -1), "INVALID_ARGUMENT"),
    (lambda e: setattr(e, "register_id", 0x16FFFFFF), "INVALID_ARGUMENT"),
    (lambda e: setattr(e.data, "bitstring", b"\x01\x00\x00\x00\x00"), "INVALID_ARGUMENT"),
    (lambda e: e.data.ClearField("bitstring"), "INVALID_ARGUMENT"),
    (lambda e: setattr(e.data, "bool", True), "INVALID_ARGUMENT"),
])
def test_register_write_errors(client: P4RuntimeClient, schema: P4Schema,
                               stub: p4runtime_pb2_grpc.P4RuntimeStub, mutate: object,
                               code: str) -> None:
    entity = RegisterCell("hb_rx_count", 3, 9).encode(schema)
    mutate(entity.register_entry)  # type: ignore[operator]
    assert [code_pb2.Code.Name(c) for c in write_codes(stub, update(MODIFY, entity))] == [code]


def test_register_insert_delete_refused(client: P4RuntimeClient, schema: P4Schema,
                                        stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    entity = RegisterCell("hb_rx_count", 3, 9).encode(schema)
    assert write_codes(stub, update(INSERT, entity), update(DELETE, entity)) == [
        code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT]


def test_read_batch_with_a_bad_request(client: P4RuntimeClient, schema: P4Schema,
                                       stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    good = RegisterRead("hb_state", 2).encode(schema)
    bad = RegisterRead("hb_state", CELLS + 5).encode(schema)
    req = p4runtime_pb2.ReadRequest(device_id=1)
    req.entities.extend([good, bad, p4runtime_pb2.Entity(), CounterRead("hb_reason", 0)
                         .encode(schema)])
    got: list[p4runtime_pb2.Entity] = []
    with pytest.raises(grpc.RpcError) as err:
        for resp in stub.Read(req):
            got.extend(resp.entities)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert details(err.value) == [code_pb2.OK, code_pb2.OUT_OF_RANGE, code_pb2.INVALID_ARGUMENT,
                                  code_pb2.OK]
    assert [e.WhichOneof("entity") for e in got] == ["register_entry", "counter_entry"]


# -- counters -----------------------------------------------------------------------------


def _counters(entities: Sequence[p4runtime_pb2.Entity]) -> dict[int, tuple[int, int]]:
    return {e.counter_entry.index.index: (e.counter_entry.data.packet_count,
                                          e.counter_entry.data.byte_count) for e in entities}


def test_counter_reads_and_writes(client: P4RuntimeClient, schema: P4Schema,
                                  stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    assert _counters(client.read_all([CounterRead("hb_reason")])) == {
        i: (0, 0) for i in range(REASON_COUNT)}
    cid = schema.counter("hb_reason").id
    one = p4runtime_pb2.Entity(counter_entry=p4runtime_pb2.CounterEntry(counter_id=cid))
    one.counter_entry.index.index = 3
    one.counter_entry.data.packet_count, one.counter_entry.data.byte_count = 5, 300
    client.write([p4runtime_pb2.Update(type=MODIFY, entity=one)])
    assert _counters(client.read_all([CounterRead("hb_reason", 3)])) == {3: (5, 300)}
    assert _counters(read(stub, p4runtime_pb2.Entity(
        counter_entry=p4runtime_pb2.CounterEntry())))[3] == (5, 300)  # counter_id 0: all
    every = p4runtime_pb2.Entity(counter_entry=p4runtime_pb2.CounterEntry(counter_id=cid))
    every.counter_entry.data.packet_count = 1
    client.write([p4runtime_pb2.Update(type=MODIFY, entity=every)])
    assert set(_counters(client.read_all([CounterRead("hb_reason")])).values()) == {(1, 0)}
    one.counter_entry.index.index = REASON_COUNT
    assert write_codes(stub, update(MODIFY, one), update(INSERT, every)) == [
        code_pb2.OUT_OF_RANGE, code_pb2.INVALID_ARGUMENT]


# -- digest config ------------------------------------------------------------------------


def test_digest_entry_config(client: P4RuntimeClient, schema: P4Schema,
                             stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    entry = DigestEntry("peer_event_t", max_timeout_ns=1000, max_list_size=4,
                        ack_timeout_ns=5000)
    wildcard = p4runtime_pb2.Entity(digest_entry=p4runtime_pb2.DigestEntry())
    assert read(stub, wildcard) == []
    client.insert([entry])
    assert read(stub, wildcard) == [entry.encode(schema)]
    assert read(stub, DigestEntry("peer_event_t").encode(schema)) == [entry.encode(schema)]
    with pytest.raises(WriteError) as info:
        client.insert([entry])
    assert codes_of(info.value) == ["ALREADY_EXISTS"]
    changed = DigestEntry("peer_event_t", max_list_size=1)
    client.modify([changed])
    assert read(stub, wildcard) == [changed.encode(schema)]
    client.delete([changed])
    assert read(stub, wildcard) == []
    with pytest.raises(WriteError) as info:
        client.delete([changed])
    assert codes_of(info.value) == ["NOT_FOUND"]
    unknown = p4runtime_pb2.Entity(digest_entry=p4runtime_pb2.DigestEntry(digest_id=0x18FFFFFF))
    assert write_codes(stub, update(INSERT, unknown)) == [code_pb2.INVALID_ARGUMENT]


def test_entities_this_pipeline_lacks(client: P4RuntimeClient,
                                      stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    meters = p4runtime_pb2.Entity(meter_entry=p4runtime_pb2.MeterEntry())
    assert read(stub, meters) == []  # wildcard: nothing
    meters.meter_entry.meter_id = 0x15000001
    with pytest.raises(grpc.RpcError) as err:
        read(stub, meters)
    assert details(err.value) == [code_pb2.INVALID_ARGUMENT]
    assert write_codes(stub, update(MODIFY, meters)) == [code_pb2.INVALID_ARGUMENT]
    assert write_codes(stub, update(INSERT, p4runtime_pb2.Entity())) == [
        code_pb2.INVALID_ARGUMENT]


def test_write_from_backup_refused(client: P4RuntimeClient,
                                   stub: p4runtime_pb2_grpc.P4RuntimeStub,
                                   schema: P4Schema) -> None:
    req = write_request(update(INSERT, table_entity(peers_entry(schema))))
    req.election_id.low = ELECTION + 1  # not the primary's id
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(req)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    req.device_id, req.election_id.low = 4, ELECTION
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    req.device_id, req.role = 1, "unknown-role"
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotPrimaryError):
        P4RuntimeClient(client.address, 1, election_id=ELECTION - 1, schema=schema).write(
            [make_update(INSERT, TableEntry("HbIngress.peer_ids", {"peer_id": 1},
                                            "HbIngress.peer_id_known"), schema)])
