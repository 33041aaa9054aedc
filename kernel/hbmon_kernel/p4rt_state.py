"""Transport-free pieces of the kernel target's P4Runtime server: errors with canonical
codes (the shared bytestring codec's rejections among them, spec 8.4), the pipeline contract
(the semantic comparison of a pushed P4Info against the one the target implements; the
schema itself is hbmon.p4.P4Schema), client arbitration (spec 5) and digest batching
(spec 9.10). Nothing here touches gRPC or BPF, so all of it is unit-tested
with plain objects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import text_format
from google.rpc import code_pb2, status_pb2
from hbmon.p4 import (
    BytestringError,
    DigestInfo,
    P4Schema,
    bitstring_width,
    decode_bits,
    encode_digest_data,
)
from p4.config.v1 import p4info_pb2, p4types_pb2
from p4.v1 import p4runtime_pb2

# ---------------------------------------------------------------------------------------------
# errors


class P4RTError(Exception):
    """A P4Runtime failure with its canonical code (google.rpc.Code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return str(code_pb2.Code.Name(self.code))

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


def invalid(message: str) -> P4RTError:
    return P4RTError(code_pb2.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------------------------
# bytestrings (spec 8.4 "Bytestrings"): the shared codec, its errors as canonical codes


def received_bits(data: bytes, bitwidth: int, what: str,
                  code: int = code_pb2.OUT_OF_RANGE) -> int:
    """`hbmon.p4.decode_bits` of a bytestring a client sent, a rejection as a P4RTError.

    The spec's code for a rejected string is OUT_OF_RANGE; action parameters and register
    data name INVALID_ARGUMENT in their own sections, hence `code`."""
    try:
        return decode_bits(data, bitwidth, what)
    except BytestringError as exc:
        raise P4RTError(code, str(exc)) from None


def uint128(msg: p4runtime_pb2.Uint128) -> int:
    return (msg.high << 64) | msg.low


def make_uint128(value: int) -> p4runtime_pb2.Uint128:
    return p4runtime_pb2.Uint128(high=value >> 64, low=value & 0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------------------------------------
# the pipeline (P4Info) the target implements: hbmon.p4.P4Schema (`Pipeline` is the name
# server.py knows it by)

Pipeline = P4Schema


# -- semantic comparison ----------------------------------------------------------------------

_Described = dict[str, dict[str, dict[str, str]]]  # category -> object name -> attribute -> value

_CATEGORIES = (
    ("tables", "table"), ("actions", "action"), ("counters", "counter"),
    ("registers", "register"), ("digests", "digest"),
    ("controller_packet_metadata", "controller packet metadata"),
    ("action_profiles", "action profile"), ("direct_counters", "direct counter"),
    ("meters", "meter"), ("direct_meters", "direct meter"), ("value_sets", "value set"),
    ("externs", "extern"),
)


def _type_text(spec: p4types_pb2.P4DataTypeSpec) -> str:
    width = bitstring_width(spec)
    if width is not None:
        return f"bit<{width}>"
    return text_format.MessageToString(spec, as_one_line=True) or "unset"


_Field = p4info_pb2.Action.Param | p4info_pb2.ControllerPacketMetadata.Metadata


def _with_fields(oid: int, label: str, fields: Iterable[_Field]) -> dict[str, str]:
    """An action's parameters or a controller header's fields, with its id."""
    attrs = {"id": f"{oid:#010x}"}
    for f in fields:
        attrs[f"{label} {f.name!r}"] = f"id {f.id}, {f.bitwidth} bits"
    return attrs


def describe(p4info: p4info_pb2.P4Info) -> _Described:
    """What the target depends on in a P4Info, as comparable strings, by object name.

    Names, ids, widths, match kinds, action scopes and sizes count; aliases, annotations,
    documentation and pkg_info do not (p4c may fill those in differently)."""
    action_names = {a.preamble.id: a.preamble.name for a in p4info.actions}
    out: _Described = {cat: {} for cat, _ in _CATEGORIES}
    mt = p4info_pb2.MatchField.MatchType
    for t in p4info.tables:
        attrs = {"id": f"{t.preamble.id:#010x}", "size": str(t.size),
                 "const default action": action_names.get(t.const_default_action_id,
                                                          str(t.const_default_action_id)),
                 "implementation": str(t.implementation_id or "none"),
                 "idle timeout": p4info_pb2.Table.IdleTimeoutBehavior.Name(
                     t.idle_timeout_behavior),
                 "const table": str(t.is_const_table)}
        for f in t.match_fields:
            kind = mt.Name(f.match_type) if f.WhichOneof("match") == "match_type" \
                else f"other {f.other_match_type}"
            attrs[f"match field {f.name!r}"] = f"id {f.id}, {f.bitwidth} bits, {kind}"
        for r in t.action_refs:
            name = action_names.get(r.id, f"id {r.id}")
            attrs[f"action {name!r}"] = p4info_pb2.ActionRef.Scope.Name(r.scope)
        out["tables"][t.preamble.name] = attrs
    for a in p4info.actions:
        out["actions"][a.preamble.name] = _with_fields(a.preamble.id, "parameter", a.params)
    for c in p4info.counters:
        out["counters"][c.preamble.name] = {
            "id": f"{c.preamble.id:#010x}", "size": str(c.size),
            "unit": p4info_pb2.CounterSpec.Unit.Name(c.spec.unit)}
    for r in p4info.registers:
        out["registers"][r.preamble.name] = {
            "id": f"{r.preamble.id:#010x}", "size": str(r.size), "type": _type_text(r.type_spec)}
    structs = p4info.type_info.structs
    for d in p4info.digests:
        attrs = {"id": f"{d.preamble.id:#010x}"}
        if d.type_spec.WhichOneof("type_spec") == "struct":
            sname = d.type_spec.struct.name
            attrs["type"] = f"struct {sname}"
            if sname not in structs:
                attrs["struct"] = "missing from type_info"
            else:
                for i, m in enumerate(structs[sname].members):
                    attrs[f"member #{i + 1}"] = f"{m.name!r}: {_type_text(m.type_spec)}"
        else:
            attrs["type"] = _type_text(d.type_spec)
        out["digests"][d.preamble.name] = attrs
    for cpm in p4info.controller_packet_metadata:
        out["controller_packet_metadata"][cpm.preamble.name] = _with_fields(
            cpm.preamble.id, "metadata", cpm.metadata)
    for cat, _ in _CATEGORIES[6:]:
        for obj in getattr(p4info, cat):
            out[cat][obj.preamble.name] = {"id": f"{obj.preamble.id:#010x}"}
    return out


def first_mismatch(expected: p4info_pb2.P4Info, got: p4info_pb2.P4Info) -> str | None:
    """The first difference that matters between two P4Infos, in words; None if none."""
    want, have = describe(expected), describe(got)
    for cat, label in _CATEGORIES:
        for name, attrs in want[cat].items():
            if name not in have[cat]:
                return f"{label} {name!r} missing"
            theirs = have[cat][name]
            for attr, value in attrs.items():
                if attr not in theirs:
                    return f"{label} {name!r}: {attr} missing"
                if theirs[attr] != value:
                    return f"{label} {name!r}: {attr} is {theirs[attr]}, expected {value}"
            for attr in theirs:
                if attr not in attrs:
                    return f"{label} {name!r}: unexpected {attr} ({theirs[attr]})"
        for name in have[cat]:
            if name not in want[cat]:
                return f"{label} {name!r} is not part of this target's pipeline"
    return None


# ---------------------------------------------------------------------------------------------
# arbitration (spec 5)


class StreamSink(Protocol):
    """Where a stream's outgoing messages go (the StreamChannel's queue)."""

    def send(self, msg: p4runtime_pb2.StreamMessageResponse) -> None: ...


@dataclass(eq=False)
class Session:
    """One StreamChannel. Arbitration fields are set by its first MasterArbitrationUpdate."""

    sink: StreamSink
    peer: str = ""
    device_id: int | None = None
    role: str | None = None
    role_given: bool = False
    election_id: int | None = None  # None: unset (never primary, spec 15.3.1)
    seq: int = 0  # arrival order, tie-break for unset ids

    @property
    def arbitrated(self) -> bool:
        return self.device_id is not None

    def describe(self) -> str:
        eid = "unset" if self.election_id is None else str(self.election_id)
        role = f" role {self.role!r}" if self.role else ""
        return f"{self.peer or 'client'} (election id {eid}{role})"


@dataclass
class _Group:
    sessions: list[Session] = field(default_factory=list)
    # election_id_past of spec 5.3: the highest id any primary of this (device, role) ever
    # had, kept after that primary leaves; None while there has been no primary at all
    highest: int | None = None
    primary: Session | None = None


class Arbiter:
    """Primary/backup election per (device id, role), as P4Runtime 1.4 section 5 says.

    5.3: a client whose election id is >= the highest id ever seen for its (device, role)
    becomes (or stays) primary; any other client is a backup. When the primary leaves or
    lowers its id there is NO primary until a client advertises an id >= the highest ever
    seen (changelog v1.1.0); the server does not promote the next backup, as PI does.
    A client without an election id is always a backup. 5.4: notifications carry the
    highest id ever seen (unset while there has been no primary), OK to the primary,
    ALREADY_EXISTS to backups while there is a primary, NOT_FOUND when there is none.
    Who is told: everyone on a change of primary (the others first, the new primary last),
    when the primary leaves or steps down; only the asker when it becomes a backup.

    `lock` is shared with the device so that a change of primary waits for the Write in
    progress (5.3: the old primary's writes finish before the new one is accepted)."""

    MAX_SESSIONS_PER_ROLE = 16

    def __init__(self, device_id: int, lock: threading.RLock | None = None) -> None:
        self.device_id = device_id
        self.lock = lock if lock is not None else threading.RLock()
        self._groups: dict[str, _Group] = {}
        self._seq = 0

    # -- queries ----------------------------------------------------------------------------

    def primary(self, role: str = "") -> Session | None:
        # Without the lock on purpose: digests are sent from under a digest engine's lock,
        # and a Write holding the device lock may be waiting for that engine's lock. One
        # dict lookup and one attribute read are atomic under the GIL.
        group = self._groups.get(role)
        return group.primary if group else None

    def sessions(self, role: str = "") -> list[Session]:
        with self.lock:
            group = self._groups.get(role)
            return list(group.sessions) if group else []

    def highest(self, role: str = "") -> int | None:
        """election_id_past (spec 5.3) of a role: None while it never had a primary."""
        with self.lock:
            group = self._groups.get(role)
            return group.highest if group else None

    def check_writer(self, device_id: int, role: str, election_id: int | None) -> None:
        """Spec 12 / 13: NOT_FOUND for another device or unknown role, PERMISSION_DENIED
        unless (role, election id) is the current primary."""
        if device_id != self.device_id:
            raise P4RTError(code_pb2.NOT_FOUND,
                            f"device id {device_id} unknown (this target is {self.device_id})")
        with self.lock:
            group = self._groups.get(role)
            if group is None and role:
                raise P4RTError(code_pb2.NOT_FOUND,
                                f"role {role!r} unknown: no client arbitrated for it")
            primary = group.primary if group else None
            if primary is None:
                raise P4RTError(code_pb2.PERMISSION_DENIED,
                                "not primary: no client is primary"
                                + (f" for role {role!r}" if role else "")
                                + " (open a StreamChannel and arbitrate with an election id"
                                + (f" >= {group.highest}" if group and group.highest else "")
                                + ")")
            if election_id is None or election_id != primary.election_id:
                eid = "unset" if election_id is None else str(election_id)
                raise P4RTError(code_pb2.PERMISSION_DENIED,
                                f"not primary: election id {eid}, the primary's is "
                                f"{primary.election_id}")

    def is_primary(self, session: Session) -> bool:
        with self.lock:
            if session.role is None:
                return False
            group = self._groups.get(session.role)
            return group is not None and group.primary is session

    # -- updates ----------------------------------------------------------------------------

    def arbitrate(self, session: Session, update: p4runtime_pb2.MasterArbitrationUpdate) -> None:
        """Apply one MasterArbitrationUpdate (spec 5.3). P4RTError means: end the stream
        with that status."""
        role = update.role.name if update.HasField("role") else ""
        election_id = uint128(update.election_id) if update.HasField("election_id") else None
        if update.HasField("role") and update.role.HasField("config"):
            raise invalid("role.config is not supported: this target only has full "
                          "pipeline access roles (leave role.config unset)")
        with self.lock:
            if not session.arbitrated:  # 5.3 case 1: first update on this stream
                if update.device_id != self.device_id:
                    raise P4RTError(code_pb2.NOT_FOUND,
                                    f"device id {update.device_id} unknown (this target is "
                                    f"{self.device_id})")
                group = self._groups.setdefault(role, _Group())
                self._check_unique(group, election_id, session)
                if len(group.sessions) >= self.MAX_SESSIONS_PER_ROLE:
                    raise P4RTError(code_pb2.RESOURCE_EXHAUSTED,
                                    f"too many clients for role {role!r} "
                                    f"(at most {self.MAX_SESSIONS_PER_ROLE})")
                self._seq += 1
                session.device_id, session.role, session.election_id = \
                    update.device_id, role, election_id
                session.role_given = update.HasField("role")
                session.seq = self._seq
                group.sessions.append(session)
            else:  # 5.3 case 2: a live controller
                if update.device_id != session.device_id:
                    raise P4RTError(code_pb2.FAILED_PRECONDITION,
                                    f"device id {update.device_id} differs from this stream's "
                                    f"{session.device_id}")
                if role != session.role:
                    raise P4RTError(code_pb2.FAILED_PRECONDITION,
                                    f"role {role!r} differs from this stream's "
                                    f"{session.role!r}; open a new stream to change role")
                group = self._groups[role]
                self._check_unique(group, election_id, session)
                session.election_id = election_id
            old = group.primary
            if election_id is not None and (group.highest is None
                                            or election_id >= group.highest):
                # becomes or stays primary; the old primary's Writes finished: we hold the lock
                group.primary = session
                group.highest = election_id
                if old is None:
                    self._notify_all(group)
                else:
                    self._notify_all(group, last=session)
            elif old is session:  # the primary stepped down below the highest id
                group.primary = None
                self._notify_all(group)
            else:  # a backup: only the asker is told
                self._notify(session, group)

    def leave(self, session: Session) -> None:
        with self.lock:
            if not session.arbitrated or session.role is None:
                return
            group = self._groups.get(session.role)
            if group is None or session not in group.sessions:
                return
            group.sessions.remove(session)
            if group.primary is session:  # 5: no primary until someone re-arbitrates
                group.primary = None
                self._notify_all(group)

    @staticmethod
    def _check_unique(group: _Group, election_id: int | None, session: Session) -> None:
        if election_id is None:
            return
        for other in group.sessions:
            if other is not session and other.election_id == election_id:
                raise invalid(f"election id {election_id} is already used by another client "
                              f"({other.describe()})")

    def _notify_all(self, group: _Group, last: Session | None = None) -> None:
        """Everyone in the group; `last` (the new primary) after all the others (5.3)."""
        for s in group.sessions:
            if s is not last:
                self._notify(s, group)
        if last is not None:
            self._notify(last, group)

    def _notify(self, session: Session, group: _Group) -> None:
        msg = p4runtime_pb2.StreamMessageResponse()
        arb = msg.arbitration
        arb.device_id = self.device_id
        if session.role_given:
            arb.role.name = session.role or ""
        if group.highest is not None:  # 5.4: unset while there has been no primary at all
            arb.election_id.CopyFrom(make_uint128(group.highest))
        primary = group.primary
        if primary is session:
            arb.status.CopyFrom(status_pb2.Status(code=code_pb2.OK, message="is primary"))
        elif primary is not None:
            arb.status.CopyFrom(status_pb2.Status(
                code=code_pb2.ALREADY_EXISTS,
                message=f"is backup; the primary has election id {primary.election_id}"))
        else:
            arb.status.CopyFrom(status_pb2.Status(
                code=code_pb2.NOT_FOUND,
                message="no primary"
                + (f": arbitrate with an election id >= {group.highest} to become primary"
                   if group.highest is not None else "")))
        session.sink.send(msg)


# ---------------------------------------------------------------------------------------------
# digests (spec 9.10)

Sample = tuple[int, ...]


@dataclass
class _SentList:
    sent_ns: int
    samples: list[Sample]


class DigestEngine:
    """Batching, de-duplication and acknowledgement of one digest's notifications.

    Follows the spec's pseudo-code: samples wait in a buffer until `max_list_size` distinct
    ones are there (0: no limit) or `max_timeout_ns` passed since the first (0: send at
    once); a sent list's samples stay in a cache, which suppresses duplicates, until the
    list is acknowledged or `ack_timeout_ns` old (0: no cache). Lists are never re-sent.
    `send(list)` returns False when no primary is there to take it (the list is dropped).
    """

    def __init__(self, spec: DigestInfo,
                 send: Callable[[p4runtime_pb2.DigestList], bool],
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.spec = spec
        self._send = send
        self._clock = clock_ns
        self._lock = threading.Lock()
        self.config: p4runtime_pb2.DigestEntry | None = None
        self._buffer: list[Sample] = []
        self._buffered: set[Sample] = set()
        self._first_ns = 0
        self._cache: dict[Sample, int] = {}
        self._lists: dict[int, _SentList] = {}
        self._next_list_id = 1
        self.dropped = 0  # samples lost: digest not enabled, or no primary
        self.sent_lists = 0

    # -- configuration (DigestEntry writes) -------------------------------------------------

    def write(self, kind: int, entry: p4runtime_pb2.DigestEntry) -> Callable[[], None]:
        """Apply a DigestEntry update; returns its undo."""
        with self._lock:
            old = self.config
            if kind == p4runtime_pb2.Update.INSERT:
                if old is not None:
                    raise P4RTError(code_pb2.ALREADY_EXISTS,
                                    f"digest {self.spec.name} is already enabled (MODIFY it)")
                self._set(entry)
            elif kind == p4runtime_pb2.Update.MODIFY:
                if old is None:
                    raise P4RTError(code_pb2.NOT_FOUND,
                                    f"digest {self.spec.name} is not enabled (INSERT it)")
                self._set(entry)
            elif kind == p4runtime_pb2.Update.DELETE:
                if old is None:
                    raise P4RTError(code_pb2.NOT_FOUND,
                                    f"digest {self.spec.name} is not enabled")
                self._reset()
            else:
                raise invalid("update type must be INSERT, MODIFY or DELETE")

        def undo() -> None:
            with self._lock:
                if old is None:
                    self._reset()
                else:
                    self.config = old

        return undo

    def _set(self, entry: p4runtime_pb2.DigestEntry) -> None:
        cfg = entry.config
        if cfg.max_timeout_ns < 0 or cfg.ack_timeout_ns < 0 or cfg.max_list_size < 0:
            raise invalid(f"digest {self.spec.name}: config values must not be negative")
        self.config = p4runtime_pb2.DigestEntry(digest_id=self.spec.id, config=cfg)

    def _reset(self) -> None:
        self.config = None
        self._buffer.clear()
        self._buffered.clear()
        self._cache.clear()
        self._lists.clear()

    def clear(self) -> None:
        """Forget the configuration and every pending list (pipeline re-commit)."""
        with self._lock:
            self._reset()

    # -- data path ----------------------------------------------------------------------------

    def add(self, samples: Iterable[Sample]) -> None:
        with self._lock:
            if self.config is None:
                self.dropped += sum(1 for _ in samples)
                return
            cfg = self.config.config
            for s in samples:
                if s in self._cache or s in self._buffered:
                    continue
                if not self._buffer:
                    self._first_ns = self._clock()
                self._buffer.append(s)
                self._buffered.add(s)
                if (cfg.max_list_size and len(self._buffer) >= cfg.max_list_size) \
                        or cfg.max_timeout_ns == 0:
                    self._flush()

    def ack(self, list_id: int) -> bool:
        """DigestListAck: the list's samples leave the cache. False if unknown (late ack)."""
        with self._lock:
            sent = self._lists.pop(list_id, None)
            if sent is None:
                return False
            for s in sent.samples:
                if self._cache.get(s) == list_id:
                    del self._cache[s]
            return True

    def tick(self) -> int | None:
        """Send a buffer whose time is up, expire unacknowledged lists; returns the
        nanoseconds until the next thing to do (None: nothing pending)."""
        with self._lock:
            if self.config is None:
                return None
            cfg = self.config.config
            now = self._clock()
            waits: list[int] = []
            if self._buffer:
                due = self._first_ns + cfg.max_timeout_ns
                if now >= due:
                    self._flush()
                else:
                    waits.append(due - now)
            if self._lists and cfg.ack_timeout_ns:
                for list_id, sent in list(self._lists.items()):
                    due = sent.sent_ns + cfg.ack_timeout_ns
                    if now >= due:
                        self._expire(list_id)
                    else:
                        waits.append(due - now)
            return min(waits) if waits else None

    def _expire(self, list_id: int) -> None:
        sent = self._lists.pop(list_id)
        for s in sent.samples:
            if self._cache.get(s) == list_id:
                del self._cache[s]

    def pending_lists(self) -> list[int]:
        with self._lock:
            return sorted(self._lists)

    def _flush(self) -> None:
        assert self.config is not None
        samples, self._buffer = self._buffer, []
        self._buffered = set()
        if not samples:
            return
        msg = p4runtime_pb2.DigestList(digest_id=self.spec.id, list_id=self._next_list_id,
                                       timestamp=time.time_ns())
        for sample in samples:
            encode_digest_data(self.spec, sample, msg.data.add())
        if not self._send(msg):
            self.dropped += len(samples)
            return
        self.sent_lists += 1
        list_id = self._next_list_id
        self._next_list_id += 1
        if self.config.config.ack_timeout_ns:
            self._lists[list_id] = _SentList(self._clock(), samples)
            for s in samples:
                self._cache[s] = list_id


def sample_of(spec: DigestInfo, event: Any) -> Sample:
    """A digest sample from a data-plane event, member by member (by name)."""
    return tuple(int(getattr(event, m.name)) for m in spec.members)


def check_event_fields(spec: DigestInfo, event_fields: Sequence[str]) -> None:
    missing = [m.name for m in spec.members if m.name not in event_fields]
    if missing:
        raise ValueError(f"digest {spec.name}: members {missing} are not fields of the data "
                         f"plane's events ({', '.join(event_fields)})")
