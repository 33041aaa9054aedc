"""The C codec of the register read path (hbmon._cells), property-tested against the
official protobuf classes: the encoder must write exactly ReadResponse.SerializeToString()
bytes, the decoder must read what ParseFromString reads, and on anything malformed,
truncated or bit-flipped it must answer None (the caller then decodes with protobuf) or
the right cells, never crash, never read outside the buffer. Pure logic: the official
classes are the reference, no target needed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hbmon import _cells
from hbmon.dataplane.registers import decode_register_entities
from hbmon.p4 import wire
from p4.v1 import p4runtime_pb2

from tests.kernel.test_read_path import official_response

# register ids whose varints are 1, 2, 3, 4 and 5 bytes long
ID_WIDTHS = {1: [1, 7, 127], 2: [128, 300, 16383], 3: [16384, 0x1FFFFF],
             4: [0x200000, 0xFFFFFFF], 5: [0x10000000, 0x10000005, 0xFFFFFFFF]}
# a value of every canonical byte length 1..8 (0 is one zero byte), and the edges
VALUE_EDGES = [0, 1, 0xFF, 0x100, 0xFFFF, 1 << 16, (1 << 24) - 1, 1 << 24, (1 << 32) - 1,
               1 << 32, (1 << 40) - 1, 1 << 48, (1 << 56) - 1, 1 << 56, (1 << 64) - 1]


def protobuf_cells(data: bytes, rids: Sequence[int]) -> list[tuple[int, int, int]] | None:
    """(position in rids, index, value) per entity as the official classes read them;
    None when they do not read it as register entries of the asked ids."""
    try:
        resp = p4runtime_pb2.ReadResponse.FromString(data)
    except DecodeError:
        return None
    out = []
    for e in resp.entities:
        entry = e.register_entry
        if e.WhichOneof("entity") != "register_entry" or entry.register_id not in rids:
            return None
        out.append((rids.index(entry.register_id), entry.index.index,
                    int.from_bytes(entry.data.bitstring, "big")))
    return out


def random_cells(rng: random.Random, n: int, rids: Sequence[int],
                 ) -> list[tuple[int, int, int]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            value = rng.choice(VALUE_EDGES)
        else:
            value = rng.randrange(1 << (8 * rng.randint(0, 8)))  # every byte length
        index = rng.choice([0, 0, 1, 127, 128, 16383, 16384, 65535, rng.randrange(65536)])
        out.append((rng.choice(rids), index, value))
    return out


def decoded(data: bytes, rids: Sequence[int]) -> list[tuple[int, int, int]] | None:
    got = decode_register_entities(data, rids)
    if got is None:
        return None
    which, index, value = got
    return list(zip(which.tolist(), index.tolist(), value.tolist(), strict=True))


# -- encoder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_encoder_writes_official_bytes_for_random_cells(seed: int) -> None:
    rng = random.Random(seed)
    # ids of every varint length, mixed in one block (a batch spans several registers)
    rids = [rng.choice(ids) for ids in ID_WIDTHS.values()]
    cells = random_cells(rng, 3000, rids)
    rid, index, value = (np.array(c, np.uint64) for c in zip(*cells, strict=True))
    blob, ends = wire.CellEncoder(rid, index).encode(value)
    assert blob == official_response(cells).SerializeToString()
    # every entity ends where ends says: each slice is one whole entity
    starts = [0, *ends[:-1].tolist()]
    assert ends[-1] == len(blob)
    for k in rng.sample(range(len(cells)), 50):
        assert blob[starts[k]:ends[k]] == official_response([cells[k]]).SerializeToString()


def test_encoder_every_value_length_and_index_edge() -> None:
    cells = [(rid, index, value) for ids in ID_WIDTHS.values() for rid in ids
             for index in (0, 1, 127, 128, 65535, (1 << 32) - 1, (1 << 63) - 1)
             for value in VALUE_EDGES]
    rid, index, value = (np.array(c, np.uint64) for c in zip(*cells, strict=True))
    blob, ends = wire.CellEncoder(rid, index).encode(value)
    assert blob == official_response(cells).SerializeToString()
    assert len(ends) == len(cells)


def test_encoder_takes_values_of_any_unsigned_width() -> None:
    # the target's registers are uint8/uint32/uint64 arrays, a batch concatenates them
    encoder = wire.CellEncoder(0x10000001, [0, 1, 2])
    for dtype in (np.uint8, np.uint32, np.uint64):
        blob, _ = encoder.encode(np.array([0, 5, 200], dtype))
        assert blob == official_response([(0x10000001, i, v) for i, v in
                                 enumerate([0, 5, 200])]).SerializeToString()
    with pytest.raises(ValueError, match="3 cells but 2 values"):
        encoder.encode([1, 2])


def test_encode_refuses_buffers_of_different_lengths() -> None:
    ids = np.ones(3, np.uint64)
    ends = np.empty(3, np.int64)
    with pytest.raises(ValueError, match="indexes"):
        _cells.encode(ids, np.ones(2, np.uint64), np.ones(3, np.uint64), ends)
    with pytest.raises(ValueError, match="ends"):
        _cells.encode(ids, ids, ids, np.empty(2, np.int64))


# -- decoder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", sorted(ID_WIDTHS))
def test_decoder_reads_what_protobuf_reads(width: int) -> None:
    rng = random.Random(width)
    rids = ID_WIDTHS[width]  # the fast path takes ids of one varint length
    cells = random_cells(rng, 4000, rids)
    data = official_response(cells).SerializeToString()
    want = protobuf_cells(data, rids)
    assert want is not None and len(want) == len(cells)
    assert decoded(data, rids) == want


def test_decoder_answers_none_for_ids_it_cannot_match() -> None:
    cells = [(0x10000001, 3, 4)]
    data = official_response(cells).SerializeToString()
    assert decoded(data, [0x10000001]) == [(0, 3, 4)]
    assert decoded(data, [0x10000002]) is None  # not asked
    assert decoded(data, []) is None
    assert decoded(data, [0x10000001, 7]) is None  # varints of two lengths
    assert decoded(data, [1 << 64, 0x10000001]) is None  # no uint64 id
    assert decoded(data, [-1]) is None
    assert decoded(b"", [0x10000001]) == []


def test_decoder_takes_unusual_but_valid_encodings() -> None:
    rid = 0x10000001
    head = b"\x08\x81\x80\x80\x80\x01"
    # leading zero bytes in the bitstring (not canonical, valid): read as protobuf reads it
    body = head + b"\x12\x02\x08\x05" + b"\x1a\x06\x0a\x04\x00\x00\x01\x02"
    data = b"\x0a" + bytes([len(body) + 2]) + b"\x5a" + bytes([len(body)]) + body
    assert protobuf_cells(data, [rid]) == [(0, 5, 0x102)]
    assert decoded(data, [rid]) == [(0, 5, 0x102)]
    # an index varint with a redundant continuation byte (5 = 85 00): valid protobuf
    body = head + b"\x12\x03\x08\x85\x00" + b"\x1a\x03\x0a\x01\x07"
    data = b"\x0a" + bytes([len(body) + 2]) + b"\x5a" + bytes([len(body)]) + body
    assert protobuf_cells(data, [rid]) == [(0, 5, 7)]
    assert decoded(data, [rid]) in (None, [(0, 5, 7)])


@pytest.mark.parametrize("case", ["nine_byte_bitstring", "empty_bitstring", "field_order",
                                  "extra_field", "two_byte_length", "trailing_byte",
                                  "other_entity", "index_tag"])
def test_decoder_answers_none_for_other_shapes(case: str) -> None:
    rid = 0x10000001
    good = official_response([(rid, 5, 0x1234), (rid, 0, 0)])
    reg = b"\x08\x81\x80\x80\x80\x01"
    body = {
        "nine_byte_bitstring": reg + b"\x12\x02\x08\x05\x1a\x0b\x0a\x09" + bytes(8) + b"\x01",
        "empty_bitstring": reg + b"\x12\x02\x08\x05\x1a\x02\x0a\x00",
        "field_order": b"\x12\x02\x08\x05" + reg + b"\x1a\x03\x0a\x01\x07",
        "extra_field": reg + b"\x12\x02\x08\x05\x1a\x03\x0a\x01\x07\x78\x01",
        "index_tag": reg + b"\x12\x02\x10\x05\x1a\x03\x0a\x01\x07",
    }.get(case)
    if body is not None:
        data = b"\x0a" + bytes([len(body) + 2]) + b"\x5a" + bytes([len(body)]) + body
    elif case == "two_byte_length":  # a valid non-minimal length varint (0x0e as 8e 00)
        one = official_response([(rid, 5, 0x1234)]).SerializeToString()
        data = one[:1] + bytes([one[1] + 1]) + one[2:3] + bytes([one[3] | 0x80, 0]) + one[4:]
    elif case == "trailing_byte":
        data = good.SerializeToString() + b"\x00"
    else:  # other_entity: a TableEntry among register entries
        other = p4runtime_pb2.ReadResponse()
        other.entities.add().table_entry.table_id = 1
        data = good.SerializeToString() + other.SerializeToString()
    assert decoded(data, [rid]) is None


def test_decoder_survives_truncations_and_bit_flips() -> None:
    # every answer is None or exactly what protobuf reads; a crash or an out-of-bounds
    # read would fail here (the copies are exact-size bytes, nothing past them to read)
    rng = random.Random(42)
    rids = ID_WIDTHS[5]
    data = official_response(random_cells(rng, 40, rids)).SerializeToString()
    fast = 0
    for cut in range(len(data) + 1):
        got = decoded(data[:cut], rids)
        if got is not None:
            fast += 1
            assert got == protobuf_cells(data[:cut], rids)
    assert fast >= 40  # at least every cut between entities decodes
    for _ in range(3000):
        broken = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(broken))
            if rng.random() < 0.5:
                broken[at] ^= 1 << rng.randrange(8)
            else:
                broken[at] = rng.randrange(256)
        if rng.random() < 0.3:
            broken = broken[:rng.randrange(len(broken))]
        got = decoded(bytes(broken), rids)
        if got is not None:
            assert got == protobuf_cells(bytes(broken), rids)
    for _ in range(500):  # random bytes
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        got = decoded(junk, rids)
        assert got is None or got == protobuf_cells(junk, rids)


def test_decode_refuses_output_buffers_too_small() -> None:
    data = official_response([(1, i, i) for i in range(10)]).SerializeToString()
    small = np.empty(9, np.uint64)
    with pytest.raises(ValueError, match="too small"):
        _cells.decode(data, [1], np.empty(9, np.intp), small, small.copy())
