"""hbmon.dataplane.registers: the P4Runtime implementation against the kernel target's P4Runtime
device over its in-memory data plane (hbmon_kernel.memory, real gRPC: encoding, batching,
validation, wildcard and indexed reads as the target answers them), the automatic choice,
and the bmv2 Thrift implementation against a real simple_switch_grpc when one is installed
(see test_ptf_bmv2)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from hbmon.dataplane import registers
from hbmon.p4 import P4Schema
from hbmon.p4.client import P4RuntimeClient, P4RuntimeError
from hbmon.protocol import BFD_REGISTERS, REGISTERS
from hbmon_kernel.memory import MemoryTarget, serve_memory_target
from hbmon_kernel.p4rt_state import Pipeline
from p4.v1 import p4runtime_pb2

# a slot of this P4Info (it has BFD): the hb_* registers, then the bfd_* ones (docs/bfd.md)
SLOT = {**REGISTERS, **BFD_REGISTERS}

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = P4Schema.load(ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb")


class Recording:
    """The real P4RuntimeClient, with the requests it was asked to send recorded (a spy:
    every call goes to the target)."""

    def __init__(self, client: P4RuntimeClient) -> None:
        self.client = client
        self.read_requests: list[list[p4runtime_pb2.Entity]] = []
        self.write_requests: list[list[p4runtime_pb2.Update]] = []

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        entities = list(entities)
        self.read_requests.append(entities)
        return self.client.read(entities)

    def write(self, updates: Iterable[p4runtime_pb2.Update]) -> None:
        updates = list(updates)
        self.write_requests.append(updates)
        self.client.write(updates)


def _schema(size: int) -> P4Schema:
    """The real P4Info with register sizes cut to `size` (keeps reads small)."""
    info = type(SCHEMA.p4info)()
    info.CopyFrom(SCHEMA.p4info)
    for r in info.registers:
        r.size = size
    return P4Schema(info)


@pytest.fixture
def target() -> Iterator[MemoryTarget]:
    """A target whose pipeline has 8 cells per register."""
    t = serve_memory_target(pipeline=Pipeline(_schema(8).p4info, "8-cell P4Info"))
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def server(target: MemoryTarget) -> Iterator[Recording]:
    client = P4RuntimeClient(target.address, 1, 10, schema=_schema(8))
    try:
        assert client.connect(timeout=10)
        client.set_pipeline(_schema(8))
        yield Recording(client)
    finally:
        client.close()


@pytest.fixture
def access(server: Recording) -> registers.P4RuntimeRegisterAccess:
    return registers.P4RuntimeRegisterAccess(server, _schema(8))


def test_names_follow_the_contract(access: registers.P4RuntimeRegisterAccess) -> None:
    assert access.names == list(SLOT)
    assert access.widths == SLOT


def test_write_then_read(server: Recording,
                         access: registers.P4RuntimeRegisterAccess) -> None:
    access.write("hb_last_rx_us", 3, (1 << 64) - 1)
    access.write("hb_state", 3, 2)
    assert access.read("hb_last_rx_us", 3) == (1 << 64) - 1
    assert access.read("hb_state", 3) == 2
    assert access.read_all("hb_state") == [0, 0, 0, 2, 0, 0, 0, 0]


def test_reads_what_the_data_plane_holds(target: MemoryTarget, server: Recording,
                                         access: registers.P4RuntimeRegisterAccess) -> None:
    target.datapath.set_cells(6, last_rx_us=(1 << 64) - 2, state=1)
    assert access.read("hb_last_rx_us", 6) == (1 << 64) - 2
    assert access.read_all("hb_state") == [0, 0, 0, 0, 0, 0, 1, 0]
    access.write("hb_rx_count", 2, 9)
    assert target.datapath.register_read("hb_rx_count", 2) == 9


def test_snapshot_is_one_read_request(server: Recording,
                                      access: registers.P4RuntimeRegisterAccess) -> None:
    access.write("hb_rx_count", 1, 5)
    snap = access.snapshot()
    assert len(server.read_requests) == 1
    assert len(server.read_requests[0]) == len(SLOT)
    assert all(not e.register_entry.HasField("index") for e in server.read_requests[0])
    assert snap["hb_rx_count"] == [0, 5, 0, 0, 0, 0, 0, 0]
    assert set(snap) == set(SLOT)


def test_reset_slot_is_one_write_of_every_register(
        server: Recording, access: registers.P4RuntimeRegisterAccess) -> None:
    for name in SLOT:
        access.write(name, 4, 1)
        access.write(name, 5, 1)
    server.write_requests.clear()
    access.reset_slot(4)
    assert len(server.write_requests) == 1
    assert len(server.write_requests[0]) == len(SLOT)
    assert access.read_slot(4) == dict.fromkeys(SLOT, 0)
    assert access.read_slot(5) == dict.fromkeys(SLOT, 1)


@pytest.mark.parametrize("name, index, value, message", [
    ("hb_nope", 0, 0, "unknown register"),
    ("hb_state", 0, 256, "does not fit 8 bits"),
    ("hb_rx_count", 0, -1, "does not fit"),
    ("hb_rx_count", -1, 0, "negative index"),
])
def test_bad_writes_are_refused_before_any_rpc(
        server: Recording, access: registers.P4RuntimeRegisterAccess,
        name: str, index: int, value: int, message: str) -> None:
    with pytest.raises(registers.RegisterAccessError, match=message):
        access.write(name, index, value)
    assert server.write_requests == []


def test_incomplete_wildcard_read_is_an_error(server: Recording) -> None:
    access = registers.P4RuntimeRegisterAccess(server, _schema(16))  # the target has 8
    with pytest.raises(registers.RegisterAccessError, match="incomplete"):
        access.read_all("hb_rx_count")


def test_unknown_register_in_schema(server: Recording) -> None:
    with pytest.raises(registers.RegisterAccessError):
        registers.P4RuntimeRegisterAccess(server, SCHEMA, ["hb_nope"])


def test_auto_picks_p4runtime_when_register_reads_work(server: Recording) -> None:
    access = registers.open_register_access(None, client=server, schema=_schema(8))
    assert isinstance(access, registers.P4RuntimeRegisterAccess)


class SaysUnimplemented:
    """A P4Runtime target that answers register reads UNIMPLEMENTED, as bmv2's
    simple_switch_grpc does: a stand-in for that one answer (the kernel target implements
    register reads), so the choice of the Thrift path is tested without bmv2."""

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        raise P4RuntimeError("Read: UNIMPLEMENTED", grpc.StatusCode.UNIMPLEMENTED)

    def write(self, updates: Iterable[p4runtime_pb2.Update]) -> None:
        raise AssertionError("no write expected")


def test_auto_picks_thrift_when_p4runtime_says_unimplemented(
        monkeypatch: pytest.MonkeyPatch) -> None:
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
    access = registers.open_register_access(None, client=SaysUnimplemented(),
                                            schema=_schema(8), thrift_port=9999)
    assert isinstance(access, Recorder)
    assert made == [("127.0.0.1", 9999)]


def test_auto_reraises_other_errors(target: MemoryTarget, server: Recording) -> None:
    target.stop_serving()  # the target is unreachable: UNAVAILABLE, not a reason for Thrift
    with pytest.raises(registers.RegisterAccessError, match="UNAVAILABLE"):
        registers.open_register_access(None, client=server, schema=_schema(8))


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
