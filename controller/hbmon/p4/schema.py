"""The P4Info schema: one class for the controller, the kernel target and the tests.

`P4Schema` wraps one P4Info (text `.p4info.txtpb` or binary) and answers lookups by full
name, alias or id for every object hbmon touches, with the widths, match kinds and action
scopes both ends need: the controller to encode what it writes, the kernel target to
validate what it is sent. Collections (`tables`, `actions`, `registers`, `counters`,
`digests`) are dicts by id, in P4Info order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2, p4types_pb2


class SchemaError(KeyError):
    """A name or id the P4Info does not know (a KeyError, as a dict lookup would raise)."""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0]) if self.args else ""


class P4InfoError(SchemaError, ValueError):
    """Bytes that are not a P4Info (or a P4Info that contradicts itself)."""


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """A match field, action parameter, packet-metadata field or digest struct member."""

    id: int
    name: str
    bitwidth: int
    match_type: int = 0  # p4info_pb2.MatchField.MatchType, match fields only


def _field(fields: tuple[FieldInfo, ...], name: str, missing: str) -> FieldInfo:
    for f in fields:
        if f.name == name:
            return f
    raise SchemaError(f"{missing} {name!r}")


@dataclass(frozen=True, slots=True)
class ActionInfo:
    id: int
    name: str
    params: tuple[FieldInfo, ...]
    param_by_id: dict[int, FieldInfo] = field(compare=False, repr=False)
    alias: str = ""

    def param(self, name: str) -> FieldInfo:
        return _field(self.params, name, f"action {self.name} has no parameter")


@dataclass(frozen=True, slots=True)
class TableInfo:
    id: int
    name: str
    match_fields: tuple[FieldInfo, ...]
    field_by_id: dict[int, FieldInfo] = field(compare=False, repr=False)
    action_scopes: dict[int, int]  # action id -> p4info ActionRef.Scope
    size: int
    const_default_action_id: int = 0
    has_implementation: bool = False  # action profile / selector
    idle_timeout: bool = False
    alias: str = ""

    def match_field(self, name: str) -> FieldInfo:
        return _field(self.match_fields, name, f"table {self.name} has no match field")


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """An indexed register or counter."""

    id: int
    name: str
    size: int
    bitwidth: int = 0  # registers: width of a cell
    unit: int = 0  # counters: p4info_pb2.CounterSpec.Unit
    alias: str = ""


@dataclass(frozen=True, slots=True)
class DigestInfo:
    id: int
    name: str
    members: tuple[FieldInfo, ...]  # struct members in order (id = position + 1)
    alias: str = ""


@dataclass(frozen=True, slots=True)
class PacketMetadataInfo:
    id: int
    name: str
    fields: tuple[FieldInfo, ...]
    field_by_id: dict[int, FieldInfo] = field(compare=False, repr=False)
    alias: str = ""

    def field(self, name: str) -> FieldInfo:
        return _field(self.fields, name, f"controller header {self.name} has no field")


def bitstring_width(spec: p4types_pb2.P4DataTypeSpec) -> int | None:
    """The width of a `bit<W>` type; None for any other type."""
    if spec.WhichOneof("type_spec") == "bitstring" \
            and spec.bitstring.WhichOneof("type_spec") == "bit":
        return int(spec.bitstring.bit.bitwidth)
    return None


_T = TypeVar("_T")


class _Names(Generic[_T]):
    """Objects of one kind by full name and alias (ids: the schema's dicts)."""

    def __init__(self, kind: str, source: str, by_id: dict[int, _T]) -> None:
        self.kind = kind
        self.source = source
        self.by_id = by_id
        self.by_name: dict[str, _T] = {}

    def add(self, obj: _T, oid: int, name: str, alias: str) -> None:
        self.by_id[oid] = obj
        self.by_name[name] = obj
        if alias and alias not in self.by_name:
            self.by_name[alias] = obj

    def get(self, key: str | int) -> _T:
        try:
            if isinstance(key, int):
                return self.by_id[key]
            return self.by_name[key]
        except KeyError:
            known = sorted(n for n in self.by_name if "." in n) or sorted(self.by_name)
            raise SchemaError(f"{self.source} has no {self.kind} {key!r} "
                              f"(known: {', '.join(known)[:300]})") from None


class P4Schema:
    """Lookups into one P4Info by full name, alias or id. `source` names it in errors."""

    def __init__(self, p4info: p4info_pb2.P4Info, source: str = "P4Info") -> None:
        self.p4info = p4info
        self.source = source
        self.tables: dict[int, TableInfo] = {}
        self.actions: dict[int, ActionInfo] = {}
        self.registers: dict[int, ArrayInfo] = {}
        self.counters: dict[int, ArrayInfo] = {}
        self.digests: dict[int, DigestInfo] = {}
        self.controller_packet_metadata: dict[int, PacketMetadataInfo] = {}
        self._tables = _Names("table", source, self.tables)
        self._actions = _Names("action", source, self.actions)
        self._registers = _Names("register", source, self.registers)
        self._counters = _Names("counter", source, self.counters)
        self._digests = _Names("digest", source, self.digests)
        self._packet_metadata = _Names("controller packet metadata", source,
                                       self.controller_packet_metadata)

        for a in p4info.actions:
            params = tuple(FieldInfo(p.id, p.name, p.bitwidth) for p in a.params)
            ainfo = ActionInfo(a.preamble.id, a.preamble.name, params,
                               {p.id: p for p in params}, a.preamble.alias)
            self._actions.add(ainfo, ainfo.id, ainfo.name, ainfo.alias)
        for t in p4info.tables:
            fields = tuple(FieldInfo(m.id, m.name, m.bitwidth, m.match_type)
                           for m in t.match_fields)
            tinfo = TableInfo(
                t.preamble.id, t.preamble.name, fields, {f.id: f for f in fields},
                {r.id: r.scope for r in t.action_refs}, int(t.size),
                t.const_default_action_id, bool(t.implementation_id),
                t.idle_timeout_behavior != p4info_pb2.Table.NO_TIMEOUT, t.preamble.alias)
            self._tables.add(tinfo, tinfo.id, tinfo.name, tinfo.alias)
        for r in p4info.registers:
            rinfo = ArrayInfo(r.preamble.id, r.preamble.name, int(r.size),
                              bitstring_width(r.type_spec) or 0, alias=r.preamble.alias)
            self._registers.add(rinfo, rinfo.id, rinfo.name, rinfo.alias)
        for c in p4info.counters:
            cinfo = ArrayInfo(c.preamble.id, c.preamble.name, int(c.size), unit=c.spec.unit,
                              alias=c.preamble.alias)
            self._counters.add(cinfo, cinfo.id, cinfo.name, cinfo.alias)
        structs = p4info.type_info.structs
        for d in p4info.digests:
            spec = d.type_spec
            if spec.WhichOneof("type_spec") == "struct":
                struct = structs.get(spec.struct.name)
                if struct is None:
                    raise P4InfoError(f"{source}: digest {d.preamble.name}: no struct "
                                      f"{spec.struct.name} in type_info")
                members = tuple(FieldInfo(i, m.name, bitstring_width(m.type_spec) or 0)
                                for i, m in enumerate(struct.members, start=1))
            else:
                members = (FieldInfo(1, "value", bitstring_width(spec) or 0),)
            dinfo = DigestInfo(d.preamble.id, d.preamble.name, members, d.preamble.alias)
            self._digests.add(dinfo, dinfo.id, dinfo.name, dinfo.alias)
        for cpm in p4info.controller_packet_metadata:
            pfields = tuple(FieldInfo(m.id, m.name, m.bitwidth) for m in cpm.metadata)
            pinfo = PacketMetadataInfo(cpm.preamble.id, cpm.preamble.name, pfields,
                                       {f.id: f for f in pfields}, cpm.preamble.alias)
            self._packet_metadata.add(pinfo, pinfo.id, pinfo.name, pinfo.alias)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> P4Schema:
        """Read a P4Info file: text format (`.txt`, `.txtpb`, `.pb.txt`) or binary."""
        path = Path(path)
        data = path.read_bytes()
        return cls.from_bytes(data, text=_looks_like_text(path, data), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, text: bool | None = None,
                   source: str = "P4Info") -> P4Schema:
        msg = p4info_pb2.P4Info()
        if text is None:
            text = _looks_like_text(None, data)
        try:
            if text:
                text_format.Parse(data.decode(), msg)
            else:
                msg.ParseFromString(data)
        except Exception as exc:  # ParseError, UnicodeDecodeError, DecodeError
            raise P4InfoError(f"{source}: not a P4Info: {exc}") from exc
        return cls(msg, source)

    def to_text(self) -> str:
        return str(text_format.MessageToString(self.p4info))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, P4Schema):
            return NotImplemented
        return bool(self.p4info == other.p4info)

    __hash__ = None  # type: ignore[assignment]

    # -- lookups (full name, alias or id) -----------------------------------------------------

    def table(self, key: str | int) -> TableInfo:
        return self._tables.get(key)

    def action(self, key: str | int) -> ActionInfo:
        return self._actions.get(key)

    def register(self, key: str | int) -> ArrayInfo:
        return self._registers.get(key)

    def counter(self, key: str | int) -> ArrayInfo:
        return self._counters.get(key)

    def digest(self, key: str | int) -> DigestInfo:
        return self._digests.get(key)

    def packet_metadata(self, key: str | int) -> PacketMetadataInfo:
        return self._packet_metadata.get(key)


def _looks_like_text(path: Path | None, data: bytes) -> bool:
    if path is not None and path.suffix in (".txt", ".txtpb", ".textproto", ".pbtxt"):
        return True
    if path is not None and path.suffix in (".bin", ".pb"):
        return False
    head = data[:200].lstrip()
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
