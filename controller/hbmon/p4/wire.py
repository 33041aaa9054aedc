"""The hand-written protobuf wire codec of the register-read hot path (both P4Runtime ends).

A poll of 65,536 peers is up to a million RegisterEntry entities each way. Building them as
Python protobuf objects costs ~2-4 µs per entity; writing the (tiny, fixed-shape) wire
encoding directly costs well under 1 µs with cached pieces (register_fields) and a few ns
in C (CellEncoder, hbmon._cells). The bytes are exactly what the official encoder writes
for the same messages (tests compare them), so any peer parses them as usual.

  controller  register_cells_request: the ReadRequest for chosen cells (sent as it is each
              poll; hbmon.dataplane.registers decodes the answer with hbmon._cells)
  target      register_fields / CellEncoder + ResponseChunker: the ReadResponses

Wire shapes (field numbers from p4runtime.proto):

    ReadRequest.device_id (1, varint), .entities (2, LEN) -> Entity
    ReadResponse.entities (1, LEN) -> Entity
    Entity.register_entry (11, LEN) -> RegisterEntry
    RegisterEntry.register_id (1, varint), .index (2, LEN) -> Index.index (1, varint),
                 .data (3, LEN) -> P4Data.bitstring (1, LEN)

Concatenated serialized ReadResponses merge (repeated fields append), so a response is
simply the concatenation of its `entities` fields; `ResponseChunker` cuts the stream of
those fields into ReadResponse messages of bounded size.
"""


from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from google.protobuf import message

from hbmon import _cells


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (protobuf wire type 0)."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# ---------------------------------------------------------------------------------------------
# requests (controller)


def register_cells_request(register_ids: Iterable[int], indexes: Iterable[int],
                           device_id: int = 0) -> bytes:
    """Serialized ReadRequest for cells `indexes` of every register in `register_ids`, in
    that order: a tenth of the cost of building 50K messages field by field. Sent as it is
    each poll (P4RuntimeClient.read_raw), so the target sees the same bytes (and may reuse
    its plan)."""
    parts: list[bytes] = [b"\x08" + varint(device_id)] if device_id else []
    index_fields = [b"\x12" + varint(len(v)) + v
                    for v in (b"\x08" + varint(i) if i else b"" for i in indexes)]
    for rid in register_ids:
        head = b"\x08" + varint(rid)
        for field in index_fields:
            entry = head + field
            entity = b"\x5a" + varint(len(entry)) + entry
            parts.append(b"\x12" + varint(len(entity)) + entity)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# responses (target)

# A ReadResponse message never exceeds this (the default gRPC receive limit of clients such
# as p4runtime-shell is 4 MiB).
MAX_RESPONSE_BYTES = 1 << 20

_PACK_U64 = struct.Struct(">Q").pack


def entities_field(entity: bytes | message.Message) -> bytes:
    """One `ReadResponse.entities` field holding a serialized Entity."""
    raw = entity if isinstance(entity, bytes) else entity.SerializeToString()
    return b"\x0a" + varint(len(raw)) + raw


# Index sub-message fields for every cell index, built once (0 is an empty Index: proto3
# omits the default value, as the official encoder does).
_index_fields: list[bytes] = []


def _index_table(n: int) -> list[bytes]:
    while len(_index_fields) < n:
        i = len(_index_fields)
        body = b"" if i == 0 else b"\x08" + varint(i)
        _index_fields.append(b"\x12" + bytes([len(body)]) + body)
    return _index_fields


# `ReadResponse.entities` + `Entity.register_entry` headers for an inner length n (< 126,
# so both lengths are one-byte varints).
_ENTITY_HEAD = [b"\x0a" + bytes([n + 2]) + b"\x5a" + bytes([n]) for n in range(126)]
# `RegisterEntry.data` + `P4Data.bitstring` headers for a bytestring of n bytes.
_DATA_HEAD = [b"\x1a" + bytes([n + 2]) + b"\x0a" + bytes([n]) for n in range(9)]


def register_fields(register_id: int, values: Sequence[int], start: int = 0) -> list[bytes]:
    """One `ReadResponse.entities` field per cell start.. of one register (values are its
    cells from `start` on, each < 2**64). Each item is a whole entity: ResponseChunker may
    cut between items, so an item must never be a piece of one."""
    reg = b"\x08" + varint(register_id)
    reg_len = len(reg)
    index = _index_table(start + len(values))
    head = _ENTITY_HEAD
    data_head = _DATA_HEAD
    pack = _PACK_U64
    cache: dict[int, bytes] = {}
    out: list[bytes] = []
    append = out.append
    for x, v in zip(index[start:start + len(values)], values, strict=True):
        d = cache.get(v)
        if d is None:
            raw = pack(v).lstrip(b"\x00") or b"\x00"
            d = cache[v] = data_head[len(raw)] + raw
        append(head[reg_len + len(x) + len(d)] + reg + x + d)
    return out


class CellEncoder:
    """`ReadResponse.entities` fields for a fixed list of register cells (register id and
    index per cell); `encode(values)` gives the bytes the official encoder writes for those
    RegisterEntry entities (and register_fields, joined) and where each entity ends
    (ResponseChunker.add_block cuts only there).

    The bytes are written in one pass in C (hbmon._cells.encode). What depends on the cells
    and not on their values (the id and index columns as contiguous uint64) is prepared
    once here: a target keeps the encoder of a request it answers every poll."""

    def __init__(self, register_ids: npt.ArrayLike, indexes: npt.ArrayLike) -> None:
        idx = np.ascontiguousarray(np.asarray(indexes, dtype=np.uint64).ravel())
        rid = np.ascontiguousarray(np.broadcast_to(np.asarray(register_ids, dtype=np.uint64),
                                                   idx.shape))
        self.size = len(idx)
        self._ids = rid
        self._indexes = idx

    def encode(self, values: npt.ArrayLike) -> tuple[bytes, npt.NDArray[np.int64]]:
        val = np.ascontiguousarray(np.asarray(values, dtype=np.uint64).ravel())
        if len(val) != self.size:
            raise ValueError(f"{self.size} cells but {len(val)} values")
        ends = np.empty(self.size, np.int64)
        return _cells.encode(self._ids, self._indexes, val, ends), ends


def encode_register_cells(register_id: int, indexes: npt.ArrayLike, values: npt.ArrayLike,
                          ) -> tuple[bytes, npt.NDArray[np.int64]]:
    """CellEncoder for cells `indexes` of one register, used once."""
    return CellEncoder(register_id, indexes).encode(values)


def register_chunks(register_id: int, values: Sequence[int],
                    cells_per_chunk: int = 32768) -> Iterator[bytes]:
    """Serialized ReadResponse messages holding every cell of one register."""
    for start in range(0, len(values), cells_per_chunk):
        yield b"".join(register_fields(register_id, values[start:start + cells_per_chunk],
                                       start))


class ResponseChunker:
    """Accumulates `entities` fields; yields serialized ReadResponses of bounded size."""

    def __init__(self, limit: int = MAX_RESPONSE_BYTES) -> None:
        self.limit = limit
        self._parts: list[bytes | memoryview] = []
        self._size = 0

    def add(self, fields: Iterable[bytes]) -> Iterator[bytes]:
        for f in fields:
            if self._size and self._size + len(f) > self.limit:
                yield self.flush()
            self._parts.append(f)
            self._size += len(f)

    def add_chunk(self, chunk: bytes) -> Iterator[bytes]:
        """A ready ReadResponse (e.g. from register_chunks): sent as it is, in order."""
        if self._parts:
            yield self.flush()
        yield chunk

    def add_block(self, blob: bytes, ends: npt.NDArray[np.int64]) -> Iterator[bytes]:
        """Consecutive entities fields in one buffer, entity k ending at ends[k] (as from
        encode_register_cells): cut only at those ends, so no entity is split."""
        view = memoryview(blob)
        total = len(blob)
        pos = 0
        while pos < total:
            room = self.limit - self._size
            # the entities that end within the room left in this ReadResponse
            k = int(np.searchsorted(ends, pos + room, side="right"))
            cut = int(ends[k - 1]) if k else 0
            if cut <= pos:
                if self._size:
                    yield self.flush()
                    continue
                # one entity larger than the limit: alone in its message (never for cells)
                cut = int(ends[np.searchsorted(ends, pos, side="right")])
            self._parts.append(view[pos:cut])
            self._size += cut - pos
            pos = cut
            if pos < total:
                yield self.flush()

    def flush(self) -> bytes:
        out = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return out

    @property
    def pending(self) -> bool:
        return bool(self._parts)
