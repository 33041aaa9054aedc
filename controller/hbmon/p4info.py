"""P4Info schema and typed P4Runtime entities.

`P4Schema` wraps one P4Info (text `.p4info.txtpb` or binary) and answers name -> object
lookups (full name or alias) for everything the controller touches. The entity dataclasses
(`TableEntry`, `MulticastGroup`, `RegisterRead`, ...) translate between readable values
(ints, dotted IPv4, colon MACs) and P4Runtime protobufs, in the spirit of finsy: the
controller never builds a protobuf by hand and never uses a numeric id.

Values on the wire are canonical bytestrings (P4Runtime spec 8.4: big-endian, no leading
zero bytes, zero is one byte 0x00).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2
from p4.v1 import p4data_pb2, p4runtime_pb2

Value = int | str | bytes
"""A field value: an int, a dotted IPv4 / colon MAC / decimal or 0x-hex string, or raw bytes."""


class SchemaError(LookupError):
    """A name the P4Info does not know, or a value that does not fit its field."""


# ---------------------------------------------------------------------------------------------
# canonical bytestrings


def encode_int(value: int, bitwidth: int | None = None) -> bytes:
    """Canonical P4Runtime bytestring of a non-negative int (0 -> b"\\x00")."""
    if value < 0:
        raise SchemaError(f"negative value {value}")
    if bitwidth is not None and value >> bitwidth:
        raise SchemaError(f"value {value} does not fit in {bitwidth} bits")
    if value == 0:
        return b"\x00"
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_int(data: bytes) -> int:
    return int.from_bytes(data, "big")


_MAC_RE = re.compile(r"^([0-9a-fA-F]{1,2})([:-][0-9a-fA-F]{1,2}){5}$")


def parse_value(value: Value, bitwidth: int | None = None) -> int:
    """Turn a readable value into an int (IPv4 and MAC strings are recognised)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return decode_int(value)
    text = value.strip()
    if _MAC_RE.match(text):
        return int("".join(f"{int(p, 16):02x}" for p in re.split(r"[:-]", text)), 16)
    if text.count(".") == 3:
        try:
            return int(ipaddress.IPv4Address(text))
        except ValueError as exc:
            raise SchemaError(f"not an IPv4 address: {value!r}") from exc
    try:
        return int(text, 0)
    except ValueError as exc:
        raise SchemaError(f"not a number, IPv4 or MAC: {value!r}") from exc


def encode_value(value: Value, bitwidth: int | None = None) -> bytes:
    return encode_int(parse_value(value, bitwidth), bitwidth)


def format_ipv4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def format_mac(value: int) -> str:
    raw = value.to_bytes(6, "big")
    return ":".join(f"{b:02x}" for b in raw)


# ---------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """A match field, action parameter or packet-metadata field."""

    id: int
    name: str
    bitwidth: int
    match_type: int = 0  # p4info_pb2.MatchField.MatchType for match fields


@dataclass(frozen=True, slots=True)
class ActionInfo:
    id: int
    name: str
    alias: str
    params: tuple[FieldInfo, ...]

    def param(self, name: str) -> FieldInfo:
        for p in self.params:
            if p.name == name:
                return p
        raise SchemaError(f"action {self.name} has no parameter {name!r}")

    def param_by_id(self, pid: int) -> FieldInfo:
        for p in self.params:
            if p.id == pid:
                return p
        raise SchemaError(f"action {self.name} has no parameter id {pid}")


@dataclass(frozen=True, slots=True)
class TableInfo:
    id: int
    name: str
    alias: str
    match_fields: tuple[FieldInfo, ...]
    action_ids: tuple[int, ...]
    size: int
    const_default_action_id: int = 0

    def match_field(self, name: str) -> FieldInfo:
        for f in self.match_fields:
            if f.name == name:
                return f
        raise SchemaError(f"table {self.name} has no match field {name!r}")

    def match_field_by_id(self, fid: int) -> FieldInfo:
        for f in self.match_fields:
            if f.id == fid:
                return f
        raise SchemaError(f"table {self.name} has no match field id {fid}")

    @property
    def needs_priority(self) -> bool:
        ternaryish = {
            p4info_pb2.MatchField.TERNARY, p4info_pb2.MatchField.RANGE,
            p4info_pb2.MatchField.OPTIONAL,
        }
        return any(f.match_type in ternaryish for f in self.match_fields)


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A register or indexed counter."""

    id: int
    name: str
    alias: str
    size: int
    bitwidth: int = 0  # registers: width of a cell
    unit: int = 0  # counters: p4info_pb2.CounterSpec.Unit


@dataclass(frozen=True, slots=True)
class DigestInfo:
    id: int
    name: str
    alias: str
    members: tuple[FieldInfo, ...]  # struct members in order (id = position + 1)


@dataclass(frozen=True, slots=True)
class PacketMetadataInfo:
    id: int
    name: str
    fields: tuple[FieldInfo, ...]

    def field(self, name: str) -> FieldInfo:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"controller header {self.name} has no field {name!r}")


_T = TypeVar("_T")


class _Index(Generic[_T]):
    """Objects of one kind by id, full name and alias."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_id: dict[int, _T] = {}
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
            raise SchemaError(
                f"P4Info has no {self.kind} {key!r} (known: {', '.join(known)[:300]})"
            ) from None


class P4Schema:
    """Lookups into one P4Info by name (full name or alias) or id."""

    def __init__(self, p4info: p4info_pb2.P4Info) -> None:
        self.p4info = p4info
        self._tables: _Index[TableInfo] = _Index("table")
        self._actions: _Index[ActionInfo] = _Index("action")
        self._registers: _Index[ArrayInfo] = _Index("register")
        self._counters: _Index[ArrayInfo] = _Index("counter")
        self._digests: _Index[DigestInfo] = _Index("digest")
        self._packet_metadata: _Index[PacketMetadataInfo] = _Index("controller packet metadata")

        for a in p4info.actions:
            params = tuple(FieldInfo(p.id, p.name, p.bitwidth) for p in a.params)
            info = ActionInfo(a.preamble.id, a.preamble.name, a.preamble.alias, params)
            self._actions.add(info, info.id, info.name, info.alias)
        for t in p4info.tables:
            fields = tuple(
                FieldInfo(m.id, m.name, m.bitwidth, m.match_type) for m in t.match_fields
            )
            tinfo = TableInfo(
                t.preamble.id, t.preamble.name, t.preamble.alias, fields,
                tuple(r.id for r in t.action_refs), t.size, t.const_default_action_id,
            )
            self._tables.add(tinfo, tinfo.id, tinfo.name, tinfo.alias)
        for r in p4info.registers:
            width = r.type_spec.bitstring.bit.bitwidth or r.type_spec.bitstring.int.bitwidth
            rinfo = ArrayInfo(r.preamble.id, r.preamble.name, r.preamble.alias, r.size, width)
            self._registers.add(rinfo, rinfo.id, rinfo.name, rinfo.alias)
        for c in p4info.counters:
            cinfo = ArrayInfo(
                c.preamble.id, c.preamble.name, c.preamble.alias, c.size, unit=c.spec.unit
            )
            self._counters.add(cinfo, cinfo.id, cinfo.name, cinfo.alias)
        for d in p4info.digests:
            members: tuple[FieldInfo, ...] = ()
            spec = d.type_spec
            if spec.HasField("struct"):
                struct = p4info.type_info.structs.get(spec.struct.name)
                if struct is None:
                    raise SchemaError(f"digest {d.preamble.name}: no struct {spec.struct.name}")
                members = tuple(
                    FieldInfo(i + 1, m.name, m.type_spec.bitstring.bit.bitwidth)
                    for i, m in enumerate(struct.members)
                )
            elif spec.HasField("bitstring"):
                members = (FieldInfo(1, "value", spec.bitstring.bit.bitwidth),)
            dinfo = DigestInfo(d.preamble.id, d.preamble.name, d.preamble.alias, members)
            self._digests.add(dinfo, dinfo.id, dinfo.name, dinfo.alias)
        for cpm in p4info.controller_packet_metadata:
            pfields = tuple(FieldInfo(m.id, m.name, m.bitwidth) for m in cpm.metadata)
            pinfo = PacketMetadataInfo(cpm.preamble.id, cpm.preamble.name, pfields)
            self._packet_metadata.add(pinfo, pinfo.id, pinfo.name, cpm.preamble.alias)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> P4Schema:
        """Read a P4Info file: text format (`.txt`, `.txtpb`, `.pb.txt`) or binary."""
        path = Path(path)
        data = path.read_bytes()
        return cls.from_bytes(data, text=_looks_like_text(path, data))

    @classmethod
    def from_bytes(cls, data: bytes, *, text: bool | None = None) -> P4Schema:
        msg = p4info_pb2.P4Info()
        if text is None:
            text = _looks_like_text(None, data)
        try:
            if text:
                text_format.Parse(data.decode(), msg)
            else:
                msg.ParseFromString(data)
        except (text_format.ParseError, UnicodeDecodeError, Exception) as exc:
            raise SchemaError(f"not a P4Info: {exc}") from exc
        return cls(msg)

    def to_text(self) -> str:
        return str(text_format.MessageToString(self.p4info))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, P4Schema):
            return NotImplemented
        return bool(self.p4info == other.p4info)

    __hash__ = None  # type: ignore[assignment]

    # -- lookups ------------------------------------------------------------------------------

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

    @property
    def tables(self) -> list[TableInfo]:
        return list(self._tables.by_id.values())

    @property
    def actions(self) -> list[ActionInfo]:
        return list(self._actions.by_id.values())

    @property
    def registers(self) -> list[ArrayInfo]:
        return list(self._registers.by_id.values())

    @property
    def counters(self) -> list[ArrayInfo]:
        return list(self._counters.by_id.values())

    @property
    def digests(self) -> list[DigestInfo]:
        return list(self._digests.by_id.values())


def _looks_like_text(path: Path | None, data: bytes) -> bool:
    if path is not None and path.suffix in (".txt", ".txtpb", ".textproto", ".pbtxt"):
        return True
    if path is not None and path.suffix in (".bin", ".pb"):
        return False
    head = data[:200].lstrip()
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


# ---------------------------------------------------------------------------------------------
# entities


def _bitstring(data: p4data_pb2.P4Data) -> int:
    return decode_int(data.bitstring)


@dataclass(frozen=True, slots=True)
class Ternary:
    value: Value
    mask: Value


@dataclass(frozen=True, slots=True)
class LPM:
    value: Value
    prefix_len: int


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One table entry; `match` and `params` by name, values readable (see `Value`).

    `action=None` with `is_default=True` addresses the default entry; an empty `match` with
    `action=None` is a wildcard read of the whole table.
    """

    table: str
    match: Mapping[str, Value | Ternary | LPM] = field(default_factory=dict)
    action: str | None = None
    params: Mapping[str, Value] = field(default_factory=dict)
    priority: int = 0
    is_default: bool = False

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        tinfo = schema.table(self.table)
        msg = p4runtime_pb2.TableEntry(table_id=tinfo.id, priority=self.priority)
        for name, value in self.match.items():
            finfo = tinfo.match_field(name)
            fm = msg.match.add(field_id=finfo.id)
            if isinstance(value, Ternary):
                fm.ternary.value = encode_value(value.value, finfo.bitwidth)
                fm.ternary.mask = encode_value(value.mask, finfo.bitwidth)
            elif isinstance(value, LPM):
                fm.lpm.value = encode_value(value.value, finfo.bitwidth)
                fm.lpm.prefix_len = value.prefix_len
            elif finfo.match_type == p4info_pb2.MatchField.LPM:
                fm.lpm.value = encode_value(value, finfo.bitwidth)
                fm.lpm.prefix_len = finfo.bitwidth
            elif finfo.match_type == p4info_pb2.MatchField.OPTIONAL:
                fm.optional.value = encode_value(value, finfo.bitwidth)
            else:
                fm.exact.value = encode_value(value, finfo.bitwidth)
        if self.action is not None:
            ainfo = schema.action(self.action)
            if ainfo.id not in tinfo.action_ids:
                raise SchemaError(f"action {ainfo.name} is not an action of table {tinfo.name}")
            act = msg.action.action
            act.action_id = ainfo.id
            missing = {p.name for p in ainfo.params} - set(self.params)
            if missing:
                raise SchemaError(f"action {ainfo.name}: missing parameters {sorted(missing)}")
            for pinfo in ainfo.params:
                act.params.add(
                    param_id=pinfo.id, value=encode_value(self.params[pinfo.name], pinfo.bitwidth)
                )
            extra = set(self.params) - {p.name for p in ainfo.params}
            if extra:
                raise SchemaError(f"action {ainfo.name} has no parameters {sorted(extra)}")
        if self.is_default:
            msg.is_default_action = True
        return p4runtime_pb2.Entity(table_entry=msg)

    @classmethod
    def decode(cls, schema: P4Schema, msg: p4runtime_pb2.Entity | p4runtime_pb2.TableEntry,
               ) -> TableEntry:
        entry = msg.table_entry if isinstance(msg, p4runtime_pb2.Entity) else msg
        tinfo = schema.table(entry.table_id)
        match: dict[str, Value | Ternary | LPM] = {}
        for fm in entry.match:
            name = tinfo.match_field_by_id(fm.field_id).name
            kind = fm.WhichOneof("field_match_type")
            if kind == "exact":
                match[name] = decode_int(fm.exact.value)
            elif kind == "ternary":
                match[name] = Ternary(decode_int(fm.ternary.value), decode_int(fm.ternary.mask))
            elif kind == "lpm":
                match[name] = LPM(decode_int(fm.lpm.value), fm.lpm.prefix_len)
            elif kind == "optional":
                match[name] = decode_int(fm.optional.value)
            else:
                raise SchemaError(f"table {tinfo.name}: unsupported match kind {kind}")
        action = None
        params: dict[str, Value] = {}
        if entry.HasField("action") and entry.action.HasField("action"):
            ainfo = schema.action(entry.action.action.action_id)
            action = ainfo.name
            for p in entry.action.action.params:
                params[ainfo.param_by_id(p.param_id).name] = decode_int(p.value)
        return cls(tinfo.name, match, action, params, entry.priority, entry.is_default_action)

    def key(self, schema: P4Schema) -> tuple[Any, ...]:
        """Identity of the entry (table, canonical match, priority), for reconciliation."""
        tinfo = schema.table(self.table)
        parts: list[Any] = [tinfo.id, self.priority]
        for name in sorted(self.match):
            v = self.match[name]
            if isinstance(v, Ternary):
                parts.append((name, parse_value(v.value), parse_value(v.mask)))
            elif isinstance(v, LPM):
                parts.append((name, parse_value(v.value), v.prefix_len))
            else:
                parts.append((name, parse_value(v)))
        return tuple(parts)

    def normalized(self, schema: P4Schema) -> TableEntry:
        """Same entry with full names and int values (compares equal to a decoded read)."""
        return TableEntry.decode(schema, self.encode(schema))


@dataclass(frozen=True, slots=True)
class Replica:
    port: int
    instance: int = 0


@dataclass(frozen=True, slots=True)
class MulticastGroup:
    """A multicast group of the packet replication engine; `replicas=()` for a wildcard read."""

    id: int
    replicas: tuple[Replica, ...] = ()

    def encode(self, schema: P4Schema | None = None) -> p4runtime_pb2.Entity:
        group = p4runtime_pb2.MulticastGroupEntry(multicast_group_id=self.id)
        for r in self.replicas:
            # egress_port (not the newer bytes `port`): understood by every PI/bmv2 version.
            group.replicas.add(egress_port=r.port, instance=r.instance)
        return p4runtime_pb2.Entity(
            packet_replication_engine_entry=p4runtime_pb2.PacketReplicationEngineEntry(
                multicast_group_entry=group
            )
        )

    @classmethod
    def decode(cls, schema: P4Schema | None, msg: p4runtime_pb2.Entity) -> MulticastGroup:
        group = msg.packet_replication_engine_entry.multicast_group_entry
        replicas = []
        for r in group.replicas:
            port = decode_int(r.port) if r.WhichOneof("port_kind") == "port" else r.egress_port
            replicas.append(Replica(port, r.instance))
        return cls(group.multicast_group_id, tuple(replicas))


@dataclass(frozen=True, slots=True)
class RegisterRead:
    """Read one cell (`index`) or, with `index=None`, every cell of a register."""

    name: str
    index: int | None = None

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        rinfo = schema.register(self.name)
        msg = p4runtime_pb2.RegisterEntry(register_id=rinfo.id)
        if self.index is not None:
            msg.index.index = self.index
        return p4runtime_pb2.Entity(register_entry=msg)


@dataclass(frozen=True, slots=True)
class RegisterCell:
    """A register cell as read, or as written with `encode` (an Update entity)."""

    name: str
    index: int
    value: int

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        rinfo = schema.register(self.name)
        msg = p4runtime_pb2.RegisterEntry(register_id=rinfo.id)
        msg.index.index = self.index
        msg.data.bitstring = encode_int(self.value, rinfo.bitwidth or None)
        return p4runtime_pb2.Entity(register_entry=msg)

    @classmethod
    def decode(cls, schema: P4Schema, msg: p4runtime_pb2.Entity) -> RegisterCell:
        entry = msg.register_entry
        return cls(schema.register(entry.register_id).name, entry.index.index,
                   _bitstring(entry.data))


@dataclass(frozen=True, slots=True)
class CounterRead:
    """Read one cell or (`index=None`) every cell of an indexed counter."""

    name: str
    index: int | None = None

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        cinfo = schema.counter(self.name)
        msg = p4runtime_pb2.CounterEntry(counter_id=cinfo.id)
        if self.index is not None:
            msg.index.index = self.index
        return p4runtime_pb2.Entity(counter_entry=msg)


@dataclass(frozen=True, slots=True)
class CounterCell:
    name: str
    index: int
    packets: int
    bytes: int

    @classmethod
    def decode(cls, schema: P4Schema, msg: p4runtime_pb2.Entity) -> CounterCell:
        entry = msg.counter_entry
        return cls(schema.counter(entry.counter_id).name, entry.index.index,
                   entry.data.packet_count, entry.data.byte_count)


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """Digest configuration (how the target batches notifications)."""

    name: str
    max_timeout_ns: int = 0  # 0: send each digest at once
    max_list_size: int = 1
    ack_timeout_ns: int = 1_000_000_000

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        dinfo = schema.digest(self.name)
        msg = p4runtime_pb2.DigestEntry(digest_id=dinfo.id)
        msg.config.max_timeout_ns = self.max_timeout_ns
        msg.config.max_list_size = self.max_list_size
        msg.config.ack_timeout_ns = self.ack_timeout_ns
        return p4runtime_pb2.Entity(digest_entry=msg)


@dataclass(frozen=True, slots=True)
class DigestMessage:
    """A received DigestList, decoded: one dict of member name -> int per digest."""

    name: str
    digest_id: int
    list_id: int
    data: tuple[dict[str, int], ...]
    timestamp_ns: int = 0

    @classmethod
    def decode(cls, schema: P4Schema, msg: p4runtime_pb2.DigestList) -> DigestMessage:
        dinfo = schema.digest(msg.digest_id)
        rows: list[dict[str, int]] = []
        for data in msg.data:
            if data.HasField("struct"):
                members = data.struct.members
                if len(members) != len(dinfo.members):
                    raise SchemaError(
                        f"digest {dinfo.name}: {len(members)} members, P4Info says "
                        f"{len(dinfo.members)}"
                    )
                rows.append({
                    m.name: _bitstring(d) for m, d in zip(dinfo.members, members, strict=True)
                })
            else:
                rows.append({dinfo.members[0].name if dinfo.members else "value":
                             _bitstring(data)})
        return cls(dinfo.name, dinfo.id, msg.list_id, tuple(rows), msg.timestamp)

    def ack(self) -> p4runtime_pb2.DigestListAck:
        return p4runtime_pb2.DigestListAck(digest_id=self.digest_id, list_id=self.list_id)


def encode_digest_list(schema: P4Schema, name: str, list_id: int,
                       rows: Sequence[Mapping[str, int]], timestamp_ns: int = 0,
                       ) -> p4runtime_pb2.DigestList:
    """Build a DigestList (what a target sends); used by target implementations and tests."""
    dinfo = schema.digest(name)
    msg = p4runtime_pb2.DigestList(digest_id=dinfo.id, list_id=list_id, timestamp=timestamp_ns)
    for row in rows:
        data = msg.data.add()
        for m in dinfo.members:
            data.struct.members.add().bitstring = encode_int(row[m.name], m.bitwidth)
    return msg


@dataclass(frozen=True, slots=True)
class PacketOut:
    payload: bytes
    metadata: Mapping[str, int] = field(default_factory=dict)

    def encode(self, schema: P4Schema) -> p4runtime_pb2.PacketOut:
        pinfo = schema.packet_metadata("packet_out")
        msg = p4runtime_pb2.PacketOut(payload=self.payload)
        unknown = set(self.metadata) - {f.name for f in pinfo.fields}
        if unknown:
            raise SchemaError(f"packet_out has no metadata {sorted(unknown)}")
        for f in pinfo.fields:
            if f.name in self.metadata:
                value = self.metadata[f.name]
            elif f.name.startswith("_"):
                value = 0  # padding: targets expect every field of the header
            else:
                raise SchemaError(f"packet_out metadata {f.name!r} missing")
            msg.metadata.add(metadata_id=f.id, value=encode_int(value, f.bitwidth))
        return msg


@dataclass(frozen=True, slots=True)
class PacketIn:
    payload: bytes
    metadata: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def decode(cls, schema: P4Schema, msg: p4runtime_pb2.PacketIn) -> PacketIn:
        pinfo = schema.packet_metadata("packet_in")
        meta: dict[str, int] = {}
        for m in msg.metadata:
            name = next((f.name for f in pinfo.fields if f.id == m.metadata_id), None)
            meta[name or str(m.metadata_id)] = decode_int(m.value)
        return cls(msg.payload, meta)
