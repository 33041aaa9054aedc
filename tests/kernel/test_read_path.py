"""The P4Runtime register read path, both ends: the kernel target's RegisterEntry
encoder and response cutting, and the controller's fixed-shape decoder with its protobuf
fallback.

The pure-logic tests compare with the official protobuf classes (no target needed). The
rest run the real `hbmon-kernel-target` (subprocess, veths in namespaces made here) and
read more than 1 MiB of registers, by index and by wildcard, decoding every response with
the official classes and with hbmon's decoder and checking every cell against what was
written; no ReadResponse may exceed MAX_RESPONSE_BYTES (p4runtime-shell reading them is in
test_p4runtime_shell.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import pytest
from hbmon.dataplane.registers import (
    P4RuntimeRegisterAccess,
    RegisterAccessError,
    decode_cells,
    decode_register_entities,
)
from hbmon.p4 import P4Schema, wire
from hbmon.p4.client import MODIFY, P4RuntimeClient, P4RuntimeError
from hbmon.protocol import REGISTERS
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .bpf_lab import Lab
from .server_harness import P4INFO, KernelTarget

CELLS = 65536
INDEXED = 8192 + 777  # cells per register in the big indexed read (14 x this > 1 MiB)


def official_response(cells: Sequence[tuple[int, int, int]]) -> p4runtime_pb2.ReadResponse:
    """(register id, index, value) cells as the official classes build them."""
    resp = p4runtime_pb2.ReadResponse()
    for rid, index, value in cells:
        e = resp.entities.add().register_entry
        e.register_id = rid
        e.index.index = index
        e.data.bitstring = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return resp


def random_cells(rng: random.Random, n: int, rids: Sequence[int]) -> list[tuple[int, int, int]]:
    edges = [0, 1, 127, 128, 255, 256, 16383, 16384, 65535, (1 << 32) - 1, (1 << 64) - 1]
    out = []
    for _ in range(n):
        width = rng.choice([8, 32, 64])
        value = rng.choice(edges) if rng.random() < 0.3 else rng.randrange(1 << width)
        index = rng.choice([0, 1, 127, 128, 16383, 16384, 65535, rng.randrange(1 << 20)])
        out.append((rng.choice(rids), index, value))
    return out


# -- encoder (pure logic against the official encoder) -----------------------------------------


@pytest.mark.parametrize("rid", [1, 0x1000, 0x10000005, 0xFFFFFFFF])
def test_encoder_bytes_identical_to_official(rid: int) -> None:
    cells = random_cells(random.Random(rid), 5000, [rid])
    _, indexes, values = zip(*cells, strict=True)
    blob, ends = wire.encode_register_cells(rid, np.array(indexes), np.array(values, np.uint64))
    assert blob == official_response(cells).SerializeToString()
    # ends[k] is the end of entity k: each slice is exactly one entities field
    starts = np.concatenate([[0], ends[:-1]])
    for k in (0, 1, 2500, 4999):
        one = p4runtime_pb2.ReadResponse.FromString(blob[starts[k]:ends[k]])
        assert len(one.entities) == 1 and one.entities[0].register_entry.index.index == \
            indexes[k]


def test_encoder_of_no_cells_is_empty() -> None:
    blob, ends = wire.encode_register_cells(5, np.zeros(0, np.intp), np.zeros(0, np.uint64))
    assert blob == b"" and len(ends) == 0


def test_chunker_cuts_blocks_only_between_entities() -> None:
    rng = random.Random(7)
    chunker = wire.ResponseChunker(limit=4096)
    out: list[bytes] = []
    fields = [wire.entities_field(p4runtime_pb2.Entity(
        table_entry=p4runtime_pb2.TableEntry(table_id=1, metadata=b"x" * 300)))] * 5
    expected = 5
    out += chunker.add(fields)
    for rid in (0x10000001, 0x10000002):
        cells = random_cells(rng, 3000, [rid])
        _, indexes, values = zip(*cells, strict=True)
        blob, ends = wire.encode_register_cells(rid, np.array(indexes),
                                                np.array(values, np.uint64))
        out += chunker.add_block(blob, ends)
        expected += len(cells)
    out += chunker.add(fields)
    expected += 5
    out.append(chunker.flush())
    assert all(0 < len(c) <= 4096 for c in out)
    # every message parses on its own: no entity was cut
    assert sum(len(p4runtime_pb2.ReadResponse.FromString(c).entities) for c in out) == expected


def test_register_fields_items_are_whole_entities() -> None:
    # the 1 MiB bug: the chunker cut between pieces of one entity
    items = wire.register_fields(0x10000003, [5, 1 << 40, 0], start=100)
    assert [len(p4runtime_pb2.ReadResponse.FromString(i).entities) for i in items] == [1, 1, 1]


# -- decoder (pure logic; responses from the official encoder) ---------------------------------


def test_decoder_reads_official_bytes() -> None:
    rids = [0x10000001, 0x10000002, 0x1000000E]
    rng = random.Random(3)
    indexes = rng.sample(range(CELLS), 3000)
    values = {(r, i): rng.randrange(1 << rng.choice([8, 32, 64])) for r in rids for i in indexes}
    cells = [(r, i, values[r, i]) for r in rids for i in indexes]
    data = official_response(cells).SerializeToString()
    fast = decode_register_entities(data, rids)
    assert fast is not None  # the usual shape takes the fast (C codec) path
    columns = decode_cells([data[:0], data], rids, indexes, [CELLS] * 3)
    for r, column in zip(rids, columns, strict=True):
        assert column.tolist() == [values[r, i] for i in indexes]


def shuffled_split(cells: list[tuple[int, int, int]]) -> list[bytes]:
    """Cells in reverse order, one ReadResponse each."""
    return [official_response([c]).SerializeToString() for c in reversed(cells)]


@pytest.mark.parametrize("shape", ["leading_zeros", "wide_bitstring", "short_register_id",
                                   "unknown_field"])
def test_decoder_falls_back_to_protobuf_for_other_shapes(shape: str) -> None:
    rids = [0x10000001, 0x10000002]
    indexes = [0, 5, 300, 65535]
    values = {(r, i): (r * 7919 + i * 104729) % (1 << 40) for r in rids for i in indexes}
    if shape == "short_register_id":
        rids = [0x10000001, 7]  # varints of different lengths
        values = {(r, i): i + 1 for r in rids for i in indexes}
    resp = official_response([(r, i, values[r, i]) for r in rids for i in indexes])
    if shape == "leading_zeros":  # valid bytestring, not canonical: still parsed right
        for e in resp.entities:
            e.register_entry.data.bitstring = b"\x00\x00" + e.register_entry.data.bitstring
    if shape == "wide_bitstring":  # 9 bytes, value < 2**64: the fast path stops at 8
        for e in resp.entities:
            e.register_entry.data.bitstring = e.register_entry.data.bitstring.rjust(9, b"\x00")
    data = resp.SerializeToString()
    if shape == "unknown_field":
        # a field this client does not know (a newer P4Runtime), appended to the first
        # RegisterEntry: parsers skip it; the fast path must not take it for data
        first = resp.entities[0].register_entry.SerializeToString() + b"\x78\x01"
        entity = b"\x5a" + bytes([len(first)]) + first
        rest = p4runtime_pb2.ReadResponse(entities=resp.entities[1:]).SerializeToString()
        data = b"\x0a" + bytes([len(entity)]) + entity + rest
    if shape != "leading_zeros":
        assert decode_register_entities(data, rids) is None
    columns = decode_cells([data], rids, indexes, [CELLS] * 2)
    for r, column in zip(rids, columns, strict=True):
        assert column.tolist() == [values[r, i] for i in indexes]
    # the same cells in another order and split per entity: same answer
    split = shuffled_split([(r, i, values[r, i]) for r in rids for i in indexes])
    columns = decode_cells(split, rids, indexes, [CELLS] * 2)
    assert [c.tolist() for c in columns] == [[values[r, i] for i in indexes] for r in rids]


def test_decoder_refuses_missing_duplicate_and_unasked_cells() -> None:
    rid = 0x10000001
    ok = [(rid, i, i) for i in (1, 2, 3)]
    for cells, what in ((ok[:2], "2 of 3"), (ok[:2] + ok[:1], "twice"),
                        ([*ok[:2], (rid, 9, 9)], "not asked for")):
        data = official_response(cells).SerializeToString()
        with pytest.raises(RegisterAccessError, match=what):
            decode_cells([data], [rid], [1, 2, 3], [CELLS])


def test_decoder_finds_chain_despite_lookalike_values() -> None:
    # values whose bytes look like an entity header (0a xx 5a ..): the start chain decides
    rid = 0x10000001
    header = int.from_bytes(b"\x0a\x14\x5a\x12\x08\x81\x80", "big")
    cells = [(rid, i, header + i) for i in range(200)]
    data = official_response(cells).SerializeToString()
    (column,) = decode_cells([data], [rid], None, [200])
    assert column.tolist() == [v for _, _, v in cells]


# -- the real kernel target ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture(scope="module")
def target() -> Iterator[KernelTarget]:
    with Lab(1) as lab, KernelTarget(lab.ports) as t:
        yield t
        assert t.running(), f"target died:\n{t.output}"


@pytest.fixture(scope="module")
def written(target: KernelTarget, schema: P4Schema,
            ) -> Iterator[tuple[P4RuntimeClient, dict[str, np.ndarray]]]:
    """A primary client, and what every register holds: each register filled with its
    widest value (so cells are as long as they get), then random values in a quarter of the
    cells, all written with P4Runtime."""
    assert target.address is not None
    client = P4RuntimeClient(target.address, 1, election_id=10, schema=schema,
                             batch_size=4096)
    try:
        assert client.connect(timeout=10), client.last_error
        client.set_pipeline(schema, b"{}")
        rng = np.random.default_rng(11)
        expected: dict[str, np.ndarray] = {}
        updates = []
        for name, width in REGISTERS.items():
            info = schema.register(name)
            top = (1 << width) - 1
            fill = p4runtime_pb2.Entity()
            fill.register_entry.register_id = info.id
            fill.register_entry.data.bitstring = top.to_bytes(width // 8, "big")
            client.write([p4runtime_pb2.Update(type=MODIFY, entity=fill)])
            cells = np.full(info.size, top, np.uint64)
            at = rng.choice(info.size, info.size // 4 // len(REGISTERS) * 4, replace=False)
            high = np.uint64(top) if width < 64 else np.uint64((1 << 63) - 1)
            cells[at] = rng.integers(0, high, len(at), dtype=np.uint64, endpoint=True)
            cells[0] = 0  # index 0 (an empty Index message) with value 0 (one zero byte)
            for i in (*at.tolist(), 0):
                e = p4runtime_pb2.Entity()
                e.register_entry.register_id = info.id
                e.register_entry.index.index = i
                value = int(cells[i])
                e.register_entry.data.bitstring = value.to_bytes(
                    max(1, (value.bit_length() + 7) // 8), "big")
                updates.append(p4runtime_pb2.Update(type=MODIFY, entity=e))
            expected[name] = cells
        client.write(updates)
        yield client, expected
    finally:
        client.close()


@pytest.fixture
def stub(target: KernelTarget) -> Iterator[p4runtime_pb2_grpc.P4RuntimeStub]:
    assert target.address is not None
    channel = grpc.insecure_channel(target.address)  # the default 4 MiB receive limit
    yield p4runtime_pb2_grpc.P4RuntimeStub(channel)
    channel.close()


def entity_cells(responses: Sequence[p4runtime_pb2.ReadResponse],
                 ) -> list[tuple[int, int, int]]:
    return [(e.register_entry.register_id, e.register_entry.index.index,
             int.from_bytes(e.register_entry.data.bitstring, "big"))
            for r in responses for e in r.entities]


@pytest.mark.netns
def test_indexed_read_over_1mib_official_decode(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema,
        stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    _, expected = written
    rng = random.Random(5)
    indexes = [0, *rng.sample(range(1, CELLS), INDEXED - 1)]
    ids = [schema.register(n).id for n in REGISTERS]
    request = p4runtime_pb2.ReadRequest.FromString(wire.register_cells_request(ids, indexes, 1))
    responses = list(stub.Read(request))
    sizes = [r.ByteSize() for r in responses]
    assert sum(sizes) > 1 << 20 and len(responses) > 1
    assert max(sizes) <= wire.MAX_RESPONSE_BYTES
    want = [(schema.register(n).id, i, int(expected[n][i])) for n in REGISTERS
            for i in indexes]
    assert entity_cells(responses) == want  # every cell, in request order
    # canonical bytestrings (spec 8.4): no leading zero byte, at least one byte
    assert all(len(b) == 1 or b[0] for r in responses
               for b in (e.register_entry.data.bitstring for e in r.entities))


@pytest.mark.netns
def test_wildcard_read_over_1mib_official_decode(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema,
        stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
    _, expected = written
    request = p4runtime_pb2.ReadRequest(device_id=1, entities=[
        p4runtime_pb2.Entity(register_entry=p4runtime_pb2.RegisterEntry())])
    responses = list(stub.Read(request))
    assert max(r.ByteSize() for r in responses) <= wire.MAX_RESPONSE_BYTES
    got: dict[int, dict[int, int]] = {}
    for rid, index, value in entity_cells(responses):
        assert index not in got.setdefault(rid, {})
        got[rid][index] = value
    for name in REGISTERS:
        column = got[schema.register(name).id]
        assert [column[i] for i in range(CELLS)] == expected[name].tolist(), name


@pytest.mark.netns
def test_controller_decoder_on_real_responses(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema) -> None:
    client, expected = written
    names = list(REGISTERS)
    ids = [schema.register(n).id for n in names]
    indexes = random.Random(9).sample(range(CELLS), INDEXED)
    request = wire.register_cells_request(ids, indexes, client.device_id)
    responses = client.read_raw(request)
    assert all(decode_register_entities(r, ids) is not None for r in responses)
    columns = decode_cells(responses, ids, indexes, [CELLS] * len(ids))
    for name, column in zip(names, columns, strict=True):
        assert column.tolist() == expected[name][indexes].tolist(), name
    access = P4RuntimeRegisterAccess(client, schema)
    arrays = access.snapshot_arrays()
    for name in names:
        assert arrays[name].tolist() == expected[name].tolist(), name


@pytest.mark.netns
def test_repeated_request_reads_current_values(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema) -> None:
    # the target keeps the plan of a repeated request, never its values
    client, expected = written
    info = schema.register("hb_rx_count")
    indexes = [3, 1, 2]
    request = wire.register_cells_request([info.id], indexes, client.device_id)

    def read() -> list[int]:
        (column,) = decode_cells(client.read_raw(request), [info.id], indexes, [CELLS])
        return list(column.tolist())

    assert read() == expected["hb_rx_count"][indexes].tolist()
    access = P4RuntimeRegisterAccess(client, schema)
    try:
        access.write("hb_rx_count", 1, 424242)
        assert read()[1] == 424242
    finally:
        access.write("hb_rx_count", 1, int(expected["hb_rx_count"][1]))
    assert read() == expected["hb_rx_count"][indexes].tolist()


@pytest.mark.netns
def test_errors_of_a_repeated_request_stay_errors(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema) -> None:
    client, _ = written
    info = schema.register("hb_rx_count")
    bad = wire.register_cells_request([info.id], [1, CELLS], client.device_id)  # one out of range
    for _ in range(2):
        with pytest.raises(P4RuntimeError, match="OUT_OF_RANGE") as failed:
            client.read_raw(bad)
        assert failed.value.code == grpc.StatusCode.UNKNOWN  # a batch error (spec 12.3)
    other_device = wire.register_cells_request([info.id], [1], client.device_id + 1)
    with pytest.raises(P4RuntimeError) as refused:
        client.read_raw(other_device)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.netns
def test_register_access_read_columns_is_the_poll_read(
        written: tuple[P4RuntimeClient, dict[str, np.ndarray]], schema: P4Schema,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's poll reads through RegisterAccess.read_columns: chosen cells in one
    ReadRequest (the same bytes while the index list is the same: the target reuses its
    plan), every cell through wildcard reads when most of the array is asked for; both
    give the written values, a refused read is a RegisterAccessError."""
    client, expected = written
    sent: list[object] = []
    real_read_raw = client.read_raw

    def recording(request: object) -> list[bytes]:  # the real call, remembered
        sent.append(request)
        return real_read_raw(request)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "read_raw", recording)
    access = P4RuntimeRegisterAccess(client, schema)
    names = ["hb_rx_count", "hb_state", "hb_last_rx_us"]
    few = random.Random(3).sample(range(CELLS), 4096)
    for _ in range(2):
        columns = access.read_columns(names, few)
        for name, column in zip(names, columns, strict=True):
            assert column.tolist() == expected[name][few].tolist(), name
    assert len(sent) == 2 and isinstance(sent[0], bytes) and sent[0] is sent[1]
    request = p4runtime_pb2.ReadRequest.FromString(sent[0])
    assert len(request.entities) == len(names) * len(few)
    many = list(range(0, CELLS, 2))  # half of every array: wildcard reads are cheaper
    columns = access.read_columns(names, many)
    for name, column in zip(names, columns, strict=True):
        assert column.tolist() == expected[name][many].tolist(), name
    wildcard = sent[-1]
    assert isinstance(wildcard, p4runtime_pb2.ReadRequest)
    assert all(not e.register_entry.HasField("index") for e in wildcard.entities)
    with pytest.raises(RegisterAccessError, match="OUT_OF_RANGE"):
        access.read_columns(names, [1, CELLS])
