"""hbmon.registers: the P4Runtime implementation against an in-memory RegisterEntry server
(pure logic: encoding, batching, validation), the automatic choice, and the bmv2 Thrift
implementation against a real simple_switch_grpc when one is installed (see test_ptf_bmv2)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from hbmon import registers
from hbmon.p4info import P4Schema, decode_int, encode_int
from hbmon.p4rt import P4RuntimeError
from hbmon.protocol import REGISTERS
from p4.v1 import p4runtime_pb2

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = P4Schema.load(ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb")


class FakeRegisterServer:
    """Answers RegisterEntry reads/writes like a P4Runtime server that implements them."""

    def __init__(self, schema: P4Schema, size: int = 8) -> None:
        self.schema = schema
        self.size = size
        self.cells = {r.id: [0] * size for r in schema.registers}
        self.read_requests: list[list[p4runtime_pb2.Entity]] = []
        self.write_requests: list[list[p4runtime_pb2.Update]] = []
        self.unimplemented = False

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        entities = list(entities)
        self.read_requests.append(entities)
        if self.unimplemented:
            raise P4RuntimeError("Read: UNIMPLEMENTED", grpc.StatusCode.UNIMPLEMENTED)
        for e in entities:
            entry = e.register_entry
            indexes = [entry.index.index] if entry.HasField("index") else range(self.size)
            for i in indexes:
                out = p4runtime_pb2.RegisterEntry(register_id=entry.register_id)
                out.index.index = i
                out.data.bitstring = encode_int(self.cells[entry.register_id][i])
                yield p4runtime_pb2.Entity(register_entry=out)

    def write(self, updates: Iterable[p4runtime_pb2.Update]) -> None:
        updates = list(updates)
        self.write_requests.append(updates)
        for u in updates:
            assert u.type == p4runtime_pb2.Update.MODIFY
            entry = u.entity.register_entry
            self.cells[entry.register_id][entry.index.index] = decode_int(entry.data.bitstring)


def _schema(size: int) -> P4Schema:
    """The real P4Info with register sizes cut to `size` (keeps reads small)."""
    info = type(SCHEMA.p4info)()
    info.CopyFrom(SCHEMA.p4info)
    for r in info.registers:
        r.size = size
    return P4Schema(info)


@pytest.fixture
def server() -> FakeRegisterServer:
    return FakeRegisterServer(_schema(8))


@pytest.fixture
def access(server: FakeRegisterServer) -> registers.P4RuntimeRegisterAccess:
    return registers.P4RuntimeRegisterAccess(server, server.schema)


def test_names_follow_the_contract(access: registers.P4RuntimeRegisterAccess) -> None:
    assert access.names == list(REGISTERS)
    assert access.widths == REGISTERS


def test_write_then_read(server: FakeRegisterServer,
                         access: registers.P4RuntimeRegisterAccess) -> None:
    access.write("hb_last_rx_us", 3, (1 << 64) - 1)
    access.write("hb_state", 3, 2)
    assert access.read("hb_last_rx_us", 3) == (1 << 64) - 1
    assert access.read("hb_state", 3) == 2
    assert access.read_all("hb_state") == [0, 0, 0, 2, 0, 0, 0, 0]
    rid = SCHEMA.register("hb_state").id
    assert server.cells[rid][3] == 2


def test_snapshot_is_one_read_request(server: FakeRegisterServer,
                                      access: registers.P4RuntimeRegisterAccess) -> None:
    access.write("hb_rx_count", 1, 5)
    snap = access.snapshot()
    assert len(server.read_requests) == 1
    assert len(server.read_requests[0]) == len(REGISTERS)
    assert all(not e.register_entry.HasField("index") for e in server.read_requests[0])
    assert snap["hb_rx_count"] == [0, 5, 0, 0, 0, 0, 0, 0]
    assert set(snap) == set(REGISTERS)


def test_reset_slot_is_one_write_of_every_register(
        server: FakeRegisterServer, access: registers.P4RuntimeRegisterAccess) -> None:
    for name in REGISTERS:
        access.write(name, 4, 1)
        access.write(name, 5, 1)
    server.write_requests.clear()
    access.reset_slot(4)
    assert len(server.write_requests) == 1
    assert len(server.write_requests[0]) == len(REGISTERS)
    assert access.read_slot(4) == dict.fromkeys(REGISTERS, 0)
    assert access.read_slot(5) == dict.fromkeys(REGISTERS, 1)


@pytest.mark.parametrize("name, index, value, message", [
    ("hb_nope", 0, 0, "unknown register"),
    ("hb_state", 0, 256, "does not fit 8 bits"),
    ("hb_rx_count", 0, -1, "does not fit"),
    ("hb_rx_count", -1, 0, "negative index"),
])
def test_bad_writes_are_refused_before_any_rpc(
        server: FakeRegisterServer, access: registers.P4RuntimeRegisterAccess,
        name: str, index: int, value: int, message: str) -> None:
    with pytest.raises(registers.RegisterAccessError, match=message):
        access.write(name, index, value)
    assert server.write_requests == []


def test_incomplete_wildcard_read_is_an_error(server: FakeRegisterServer) -> None:
    access = registers.P4RuntimeRegisterAccess(server, _schema(16))  # server has only 8
    with pytest.raises(registers.RegisterAccessError, match="incomplete"):
        access.read_all("hb_rx_count")


def test_unknown_register_in_schema() -> None:
    with pytest.raises(registers.RegisterAccessError):
        registers.P4RuntimeRegisterAccess(FakeRegisterServer(SCHEMA, 1), SCHEMA, ["hb_nope"])


def test_auto_picks_p4runtime_when_register_reads_work(server: FakeRegisterServer) -> None:
    access = registers.open_register_access(None, client=server, schema=server.schema)
    assert isinstance(access, registers.P4RuntimeRegisterAccess)


def test_auto_picks_thrift_when_p4runtime_says_unimplemented(
        server: FakeRegisterServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.unimplemented = True
    made: list[tuple[str, int]] = []

    class Recorder(registers.RegisterAccess):
        def __init__(self, host: str, port: int, **_: object) -> None:
            super().__init__()
            made.append((host, port))

        def read_all(self, name: str) -> list[int]:
            return []

        def read(self, name: str, index: int) -> int:
            return 0

        def write(self, name: str, index: int, value: int) -> None:
            pass

    monkeypatch.setattr(registers, "Bmv2ThriftRegisterAccess", Recorder)
    access = registers.open_register_access(None, client=server, schema=server.schema,
                                            thrift_port=9999)
    assert isinstance(access, Recorder)
    assert made == [("127.0.0.1", 9999)]


def test_auto_reraises_other_errors(server: FakeRegisterServer) -> None:
    def broken(entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        raise P4RuntimeError("Read: UNAVAILABLE", grpc.StatusCode.UNAVAILABLE)
        yield  # pragma: no cover

    server.read = broken  # type: ignore[method-assign]
    with pytest.raises(registers.RegisterAccessError, match="UNAVAILABLE"):
        registers.open_register_access(None, client=server, schema=server.schema)


def test_p4runtime_target_needs_client_and_schema() -> None:
    with pytest.raises(registers.RegisterAccessError, match="client"):
        registers.open_register_access("kernel")


def test_thrift_connection_refused_names_the_address() -> None:
    with pytest.raises(registers.RegisterAccessError, match=re.escape("127.0.0.1:1")):
        registers.Bmv2ThriftRegisterAccess("127.0.0.1", 1)


def test_bmv2_register_names_strip_control_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"register_arrays": [{"name": "hb_rx_count"}, '
                    '{"name": "HbIngress.hb_state"}]}')
    assert registers.bmv2_register_names(path) == {
        "hb_rx_count": "hb_rx_count", "hb_state": "HbIngress.hb_state"}
