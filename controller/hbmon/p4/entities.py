"""Typed P4Runtime entities: readable values (ints, dotted IPv4, colon MACs) by name in,
P4Runtime protobufs out, and back, through a `P4Schema` (in the spirit of finsy): the
controller never builds a protobuf by hand and never uses a numeric id. Every value goes
through the one bytestring codec (`hbmon.p4.bytestrings`, spec 8.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from p4.config.v1 import p4info_pb2
from p4.v1 import p4data_pb2, p4runtime_pb2

from hbmon.p4.bytestrings import Value, decode_bits, encode_bits, encode_value, parse_value
from hbmon.p4.schema import DigestInfo, P4Schema, SchemaError

# ---------------------------------------------------------------------------------------------
# entities


def _bitstring(data: p4data_pb2.P4Data) -> int:
    return decode_bits(data.bitstring)


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
            if ainfo.id not in tinfo.action_scopes:
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
            finfo = tinfo.field_by_id.get(fm.field_id)
            if finfo is None:
                raise SchemaError(f"table {tinfo.name} has no match field id {fm.field_id}")
            name = finfo.name
            kind = fm.WhichOneof("field_match_type")
            if kind == "exact":
                match[name] = decode_bits(fm.exact.value)
            elif kind == "ternary":
                match[name] = Ternary(decode_bits(fm.ternary.value), decode_bits(fm.ternary.mask))
            elif kind == "lpm":
                match[name] = LPM(decode_bits(fm.lpm.value), fm.lpm.prefix_len)
            elif kind == "optional":
                match[name] = decode_bits(fm.optional.value)
            else:
                raise SchemaError(f"table {tinfo.name}: unsupported match kind {kind}")
        action = None
        params: dict[str, Value] = {}
        if entry.HasField("action") and entry.action.HasField("action"):
            ainfo = schema.action(entry.action.action.action_id)
            action = ainfo.name
            for p in entry.action.action.params:
                pinfo = ainfo.param_by_id.get(p.param_id)
                if pinfo is None:
                    raise SchemaError(f"action {ainfo.name} has no parameter id {p.param_id}")
                params[pinfo.name] = decode_bits(p.value)
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
            port = decode_bits(r.port) if r.WhichOneof("port_kind") == "port" else r.egress_port
            replicas.append(Replica(port, r.instance))
        return cls(group.multicast_group_id, tuple(replicas))


_Indexed = TypeVar("_Indexed", p4runtime_pb2.RegisterEntry, p4runtime_pb2.CounterEntry)


def _indexed(entry: _Indexed, index: int | None) -> _Indexed:
    """A register or counter entry of one cell; `index=None` leaves every cell (a wildcard
    read: no Index at all, spec 9.5/9.6)."""
    if index is not None:
        entry.index.index = index
    return entry


@dataclass(frozen=True, slots=True)
class RegisterRead:
    """Read one cell (`index`) or, with `index=None`, every cell of a register."""

    name: str
    index: int | None = None

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        msg = p4runtime_pb2.RegisterEntry(register_id=schema.register(self.name).id)
        return p4runtime_pb2.Entity(register_entry=_indexed(msg, self.index))


@dataclass(frozen=True, slots=True)
class RegisterCell:
    """A register cell as read, or as written with `encode` (an Update entity)."""

    name: str
    index: int
    value: int

    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity:
        rinfo = schema.register(self.name)
        msg = _indexed(p4runtime_pb2.RegisterEntry(register_id=rinfo.id), self.index)
        msg.data.bitstring = encode_bits(self.value, rinfo.bitwidth or None)
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
        msg = p4runtime_pb2.CounterEntry(counter_id=schema.counter(self.name).id)
        return p4runtime_pb2.Entity(counter_entry=_indexed(msg, self.index))


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


def encode_digest_data(dinfo: DigestInfo, values: Sequence[int],
                       out: p4data_pb2.P4Data) -> None:
    """One digest's data (spec 9.10): the struct of its members' bitstrings, in member
    order, or the bitstring itself for a digest of a plain bit<W> type."""
    if len(dinfo.members) == 1 and dinfo.members[0].name == "value":
        out.bitstring = encode_bits(values[0], dinfo.members[0].bitwidth)
        return
    members = out.struct.members
    for m, value in zip(dinfo.members, values, strict=True):
        members.add().bitstring = encode_bits(value, m.bitwidth)


def encode_digest_list(schema: P4Schema, name: str, list_id: int,
                       rows: Sequence[Mapping[str, int]], timestamp_ns: int = 0,
                       ) -> p4runtime_pb2.DigestList:
    """Build a DigestList (what a target sends) from rows of member name -> value."""
    dinfo = schema.digest(name)
    msg = p4runtime_pb2.DigestList(digest_id=dinfo.id, list_id=list_id, timestamp=timestamp_ns)
    for row in rows:
        encode_digest_data(dinfo, [row[m.name] for m in dinfo.members], msg.data.add())
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
            msg.metadata.add(metadata_id=f.id, value=encode_bits(value, f.bitwidth))
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
            f = pinfo.field_by_id.get(m.metadata_id)
            meta[f.name if f else str(m.metadata_id)] = decode_bits(m.value)
        return cls(msg.payload, meta)
