"""The kernel target as a P4Runtime device: pipeline config, Write and Read of the
contract's entities (docs/dataplane.md) on top of the BPF data plane (`Datapath`), packet
out and digests. Transport-free: server.py wraps it in gRPC; unit tests drive it with a
fake data plane.

Table entries are kept in a shadow store (the canonical protobuf of every entry, with its
serialized form cached for reads) and written through to the BPF maps; an entry is in the
store only once the map update succeeded, so a failed update leaves nothing half-applied.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from google.rpc import code_pb2
from hbmon.p4 import ArrayInfo, P4Schema, SchemaError, TableInfo, encode_bits, wire
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from .p4rt_state import (
    Arbiter,
    DigestEngine,
    P4RTError,
    Session,
    check_event_fields,
    first_mismatch,
    invalid,
    received_bits,
    sample_of,
    uint128,
)

log = logging.getLogger(__name__)

INSERT = p4runtime_pb2.Update.INSERT
MODIFY = p4runtime_pb2.Update.MODIFY
DELETE = p4runtime_pb2.Update.DELETE
Undo = Callable[[], None]
_INT64_MAX = (1 << 63) - 1
MAX_GROUP_ID = 0xFFFF  # the data plane's mcast_grp is 16 bits
MAX_INSTANCE = 0xFFFF  # replica instance = peer index, 16 bits
PEER_EVENT_DIGEST = "peer_event_t"
BFD_EVENT_DIGEST = "bfd_event_t"
# The digests the data plane raises, with the fields of its events (by name, the members of
# each digest; hbmon_kernel.datapath PeerEvent and BfdEvent, whose DIGEST names the digest)
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    PEER_EVENT_DIGEST: ("index", "state", "last_seq", "time_us"),
    BFD_EVENT_DIGEST: ("index", "state", "diag", "flags", "detect_mult", "my_disc",
                       "desired_min_tx_us", "required_min_rx_us", "time_us"),
}


class DatapathLike(Protocol):
    """What the device needs from `hbmon_kernel.datapath.Datapath`."""

    REGISTERS: dict[str, int]
    max_peers: int

    def peers_set(self, src_addr: int, peer_id: int, index: int, nonce_key: int = 0,
                  min_ttl: int = 0) -> None: ...
    def peers_delete(self, src_addr: int, peer_id: int) -> bool: ...
    def peer_ids_set(self, peer_id: int) -> None: ...
    def peer_ids_delete(self, peer_id: int) -> bool: ...
    def l2_set(self, dst_mac: int, port: int | None) -> None: ...
    def l2_delete(self, dst_mac: int) -> bool: ...
    def peer_requests_set(self, index: int, dst_mac: int, dst_addr: int, peer_id: int,
                          detect_mult: int, nonce_key: int = 0) -> None: ...
    def peer_requests_delete(self, index: int) -> bool: ...
    def bfd_sessions_set(self, your_disc: int, index: int) -> None: ...
    def bfd_sessions_delete(self, your_disc: int) -> bool: ...
    def bfd_peers_set(self, src_addr: int, port: int, index: int) -> None: ...
    def bfd_peers_delete(self, src_addr: int, port: int) -> bool: ...
    def bfd_requests_set(self, index: int, *, dst_mac: int, dst_addr: int, src_port: int,
                         my_disc: int, state: int, diag: int, flags: int, detect_mult: int,
                         desired_min_tx_us: int, required_min_rx_us: int, tx_interval_us: int,
                         detect_time_us: int) -> None: ...
    def bfd_requests_delete(self, index: int) -> bool: ...
    def mcast_group_set(self, group_id: int, replicas: list[tuple[int, int]]) -> None: ...
    def mcast_group_delete(self, group_id: int) -> bool: ...
    def register_read_all(self, name: str) -> list[int]: ...
    def register_read(self, name: str, index: int) -> int: ...
    def register_write(self, name: str, index: int, value: int) -> None: ...
    def register_fill(self, name: str, value: int) -> None: ...
    def counter_read_all(self, name: str) -> list[tuple[int, int]]: ...
    def counter_write(self, name: str, index: int, packets: int, byte_count: int) -> None: ...
    def packet_out(self, frame: bytes, egress_port: int, mcast_grp: int) -> None: ...
    def poll_events(self, timeout_ms: int) -> list[Any]: ...


# ---------------------------------------------------------------------------------------------
# how each contract table maps onto the data plane

Key = Mapping[str, int]
Params = Mapping[str, int]


@dataclass(frozen=True)
class TableBinding:
    table: str
    match: tuple[str, ...]  # match field names the data plane needs
    default_action: str  # the P4 program's default action (docs/dataplane.md)
    actions: Mapping[str, Callable[[DatapathLike, Key, Params], None]]
    remove: Callable[[DatapathLike, Key], object]
    port_params: frozenset[tuple[str, str]] = frozenset()  # (action, param) that are ports
    # a table the P4Info may lack (BFD, docs/bfd.md): then it is simply not bound
    optional: bool = False


BINDINGS: tuple[TableBinding, ...] = (
    TableBinding(
        "HbIngress.peers", ("src_addr", "peer_id"), "NoAction",
        {"HbIngress.set_peer_index":
            lambda dp, k, p: dp.peers_set(k["src_addr"], k["peer_id"], p["index"],
                                          p["nonce_key"], p["min_ttl"])},
        lambda dp, k: dp.peers_delete(k["src_addr"], k["peer_id"])),
    TableBinding(
        "HbIngress.peer_ids", ("peer_id",), "NoAction",
        {"HbIngress.peer_id_known": lambda dp, k, p: dp.peer_ids_set(k["peer_id"])},
        lambda dp, k: dp.peer_ids_delete(k["peer_id"])),
    TableBinding(
        "HbIngress.l2_forward", ("dst_addr",), "HbIngress.drop",
        {"HbIngress.set_egress_port": lambda dp, k, p: dp.l2_set(k["dst_addr"], p["port"]),
         "HbIngress.drop": lambda dp, k, p: dp.l2_set(k["dst_addr"], None)},
        lambda dp, k: dp.l2_delete(k["dst_addr"]),
        frozenset({("HbIngress.set_egress_port", "port")})),
    TableBinding(
        "HbEgress.peer_requests", ("index",), "HbEgress.drop_request",
        {"HbEgress.rewrite_request": lambda dp, k, p: dp.peer_requests_set(
            k["index"], p["dst_mac"], p["dst_addr"], p["peer_id"], p["detect_mult"],
            p["nonce_key"])},
        lambda dp, k: dp.peer_requests_delete(k["index"])),
    # BFD (docs/bfd.md "P4Info additions")
    TableBinding(
        "HbIngress.bfd_sessions", ("your_disc",), "NoAction",
        {"HbIngress.set_bfd_session":
            lambda dp, k, p: dp.bfd_sessions_set(k["your_disc"], p["index"])},
        lambda dp, k: dp.bfd_sessions_delete(k["your_disc"]), optional=True),
    TableBinding(
        "HbIngress.bfd_peers", ("src_addr", "port"), "NoAction",
        {"HbIngress.set_bfd_session":
            lambda dp, k, p: dp.bfd_peers_set(k["src_addr"], k["port"], p["index"])},
        lambda dp, k: dp.bfd_peers_delete(k["src_addr"], k["port"]), optional=True),
    TableBinding(
        "HbEgress.bfd_requests", ("index",), "HbEgress.drop_request",
        {"HbEgress.bfd_control": lambda dp, k, p: dp.bfd_requests_set(k["index"], **p)},
        lambda dp, k: dp.bfd_requests_delete(k["index"]), optional=True),
)


@dataclass(frozen=True)
class _BoundTable:
    spec: TableInfo
    binding: TableBinding
    default_action_id: int
    action_names: dict[int, str]  # bound action id -> name


@dataclass
class _Entry:
    """A table entry as stored: canonical message + its ReadResponse wire field."""

    msg: p4runtime_pb2.TableEntry
    field: bytes
    key: dict[str, int]
    action: str
    params: dict[str, int]


@dataclass
class _Group:
    msg: p4runtime_pb2.MulticastGroupEntry
    field: bytes
    replicas: list[tuple[int, int]]


def _entry(msg: p4runtime_pb2.TableEntry, key: dict[str, int], action: str,
           params: dict[str, int]) -> _Entry:
    return _Entry(msg, wire.entities_field(p4runtime_pb2.Entity(table_entry=msg)), key,
                  action, params)


def _datapath_error(exc: Exception, what: str) -> P4RTError:
    """A data-plane failure in P4Runtime terms (the message keeps the kernel's words)."""
    from .datapath import DatapathError, TableFullError

    if isinstance(exc, TableFullError):
        return P4RTError(code_pb2.RESOURCE_EXHAUSTED, f"{what}: {exc}")
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)):
        return invalid(f"{what}: {exc}")
    if isinstance(exc, DatapathError):
        return P4RTError(code_pb2.INTERNAL, f"{what}: data plane: {exc}")
    return P4RTError(code_pb2.INTERNAL, f"{what}: {type(exc).__name__}: {exc}")


class WriteFailed(Exception):
    """Some updates of a Write failed: `results[i]` is update i's error (None = OK)."""

    def __init__(self, results: list[P4RTError | None]) -> None:
        failed = [r for r in results if r is not None]
        super().__init__(f"{len(failed)} of {len(results)} updates failed; first: {failed[0]}")
        self.results = results


# a Read request turned into what to send: ("fields", ready wire fields) or ("cells",
# (CellEncoder or None, register id, indexes, values)) to encode
ReadJob = tuple[str, Any]

# Memoised read plans (see KernelDevice.read_plan_bytes): a controller sends the same
# indexed ReadRequest every poll; at most this many plans and request bytes are kept (a
# plan's encoder holds ~2.5 bytes per request byte).
PLAN_CACHE_ENTRIES = 8
PLAN_CACHE_BYTES = 16 << 20
BATCH_CELLS = 65536


def _plan_key(raw: bytes) -> tuple[int, bytes, bytes]:
    """A cheap dict key for a serialized request: hashing all of a 700 KB request costs
    more than comparing it byte for byte with the one request the key finds (memcmp)."""
    return len(raw), raw[:64], raw[-64:]


@dataclass(frozen=True)
class CellRead:
    """Cells of one register a Read asks for: `indexes` in request order (None = all)."""

    spec: ArrayInfo
    indexes: npt.NDArray[np.intp] | None


# what one Read resolves to, in request order: register cells to fetch at send time, or
# jobs already made (tables, PRE, counters, digests: read under the same lock)
ReadStep = CellRead | list[ReadJob]
# a memoised read plan: device id, batches of its register steps with the encoder of their
# cells, and how many entities the request has
_Plan = tuple[int, list[tuple[list[CellRead], "wire.CellEncoder"]], int]


class KernelDevice:
    """One P4Runtime device (device id) backed by a Datapath."""

    def __init__(self, dp: DatapathLike, pipeline: P4Schema, *, device_id: int,
                 ports: Mapping[int, str], cpu_port: int = 255,
                 event_fields: Mapping[str, Sequence[str]] = EVENT_FIELDS,
                 ) -> None:
        self.dp = dp
        self.pipeline = pipeline
        self.device_id = device_id
        self.ports = dict(ports)
        self.cpu_port = cpu_port
        self.lock = threading.RLock()
        self.arbiter = Arbiter(device_id, self.lock)
        self.config: p4runtime_pb2.ForwardingPipelineConfig | None = None
        self.saved: p4runtime_pb2.ForwardingPipelineConfig | None = None  # not committed

        self._tables: dict[int, _BoundTable] = {}
        for b in BINDINGS:
            if b.optional and not self._has_table(b.table):
                continue
            bound = self._bind_table(b)
            self._tables[bound.spec.id] = bound
        self._entries: dict[int, dict[tuple[int, ...], _Entry]] = {t: {} for t in self._tables}
        self._defaults: dict[int, _Entry] = {}
        self._groups: dict[int, _Group] = {}

        self._registers: dict[int, ArrayInfo] = {}
        for spec in pipeline.registers.values():
            width = dp.REGISTERS.get(spec.name)
            if width is None:
                raise ValueError(f"{pipeline.source}: register {spec.name!r} is not one of the "
                                 f"data plane's ({', '.join(dp.REGISTERS)})")
            if width != spec.bitwidth:
                raise ValueError(f"{pipeline.source}: register {spec.name!r} is bit<"
                                 f"{spec.bitwidth}>, the data plane's is bit<{width}>")
            if spec.size > dp.max_peers:
                raise ValueError(f"{pipeline.source}: register {spec.name!r} has {spec.size} "
                                 f"cells, the data plane {dp.max_peers}")
            self._registers[spec.id] = spec
        self._counters: dict[int, ArrayInfo] = dict(pipeline.counters)
        for spec in self._counters.values():
            have = len(dp.counter_read_all(spec.name))
            if have < spec.size:
                raise ValueError(f"{pipeline.source}: counter {spec.name!r} has {spec.size} "
                                 f"cells, the data plane {have}")
        try:
            packet_out = pipeline.packet_metadata("packet_out")
        except SchemaError:
            raise ValueError(f"{pipeline.source}: no controller header packet_out") from None
        if not {"egress_port", "mcast_grp"} <= {
                f.name for f in packet_out.fields}:
            raise ValueError(f"{pipeline.source}: controller header packet_out needs metadata "
                             "egress_port and mcast_grp")
        self._packet_out = packet_out
        self._digests: dict[int, DigestEngine] = {}
        self._digest_by_name: dict[str, DigestEngine] = {}  # an event's DIGEST -> engine
        for dspec in pipeline.digests.values():
            fields = event_fields.get(dspec.name)
            if fields is None:
                raise ValueError(f"{pipeline.source}: digest {dspec.name!r} is not raised by "
                                 f"the kernel data plane (only {', '.join(event_fields)})")
            check_event_fields(dspec, fields)
            engine = DigestEngine(dspec, self._send_digest)
            self._digests[dspec.id] = engine
            self._digest_by_name[dspec.name] = engine
        self.packets_out = 0
        # read_plan_bytes: _plan_key(serialized ReadRequest) -> (the request, its plan)
        self._plans: OrderedDict[tuple[int, bytes, bytes], tuple[bytes, _Plan]] = OrderedDict()
        # whole-register encoders (wildcard reads), made on first use (lock held)
        self._whole_encoders: dict[int, wire.CellEncoder] = {}
        self._plans_bytes = 0
        self._plans_lock = threading.Lock()

    def _has_table(self, name: str) -> bool:
        try:
            self.pipeline.table(name)
        except SchemaError:
            return False
        return True

    def _bind_table(self, b: TableBinding) -> _BoundTable:
        p = self.pipeline
        try:
            spec = p.table(b.table)
            names = {f.name for f in spec.match_fields}
            if set(b.match) != names:
                raise KeyError(f"table {b.table}: match fields {sorted(names)}, the data plane "
                               f"needs {sorted(b.match)}")
            action_names: dict[int, str] = {}
            for name in b.actions:
                aspec = p.action(name)
                if aspec.id not in spec.action_scopes:
                    raise KeyError(f"action {name} is not an action of table {b.table}")
                action_names[aspec.id] = name
            default = p.action(b.default_action)
            action_names.setdefault(default.id, b.default_action)
        except KeyError as exc:
            raise ValueError(f"{p.source} does not fit the kernel data plane: "
                             f"{exc.args[0]}") from None
        return _BoundTable(spec, b, default.id, action_names)

    # ------------------------------------------------------------------ checks

    @property
    def pipeline_set(self) -> bool:
        return self.config is not None or self.saved is not None

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise P4RTError(code_pb2.NOT_FOUND,
                            f"device id {device_id} unknown (this target is {self.device_id})")

    def _require_pipeline(self) -> None:
        if not self.pipeline_set:
            raise P4RTError(code_pb2.FAILED_PRECONDITION,
                            "no forwarding pipeline config set: SetForwardingPipelineConfig "
                            "first")

    # ------------------------------------------------------------------ pipeline

    def verify(self, config: p4runtime_pb2.ForwardingPipelineConfig) -> None:
        if not config.HasField("p4info"):
            raise invalid("config.p4info missing")
        mismatch = first_mismatch(self.pipeline.p4info, config.p4info)
        if mismatch is not None:
            raise invalid(f"P4Info does not match the kernel target's pipeline "
                          f"({self.pipeline.source}): {mismatch}")

    def set_pipeline(self, req: p4runtime_pb2.SetForwardingPipelineConfigRequest) -> None:
        A = p4runtime_pb2.SetForwardingPipelineConfigRequest
        with self.lock:
            self._check_device(req.device_id)
            eid = uint128(req.election_id) if req.HasField("election_id") else None
            self.arbiter.check_writer(req.device_id, req.role, eid)
            action = req.action
            if action == A.COMMIT:
                if self.saved is None:
                    raise P4RTError(code_pb2.NOT_FOUND,
                                    "no saved config to commit (VERIFY_AND_SAVE first)")
                # an empty config message is no config (some clients always send one)
                if req.config.p4info.ByteSize() or req.config.p4_device_config:
                    raise invalid("COMMIT takes no config (it commits the saved one)")
                self.config, self.saved = self.saved, None
                log.info("pipeline committed (saved config)")
                return
            if action not in (A.VERIFY, A.VERIFY_AND_SAVE, A.VERIFY_AND_COMMIT,
                              A.RECONCILE_AND_COMMIT):
                raise invalid(f"action {A.Action.Name(action)} is not a pipeline action")
            if not req.HasField("config"):
                raise invalid("config missing")
            self.verify(req.config)
            if action == A.VERIFY:
                return
            config = p4runtime_pb2.ForwardingPipelineConfig()
            config.CopyFrom(req.config)
            if action == A.VERIFY_AND_SAVE:
                self.saved = config
            elif action == A.VERIFY_AND_COMMIT:
                self._clear_state()
                self.config, self.saved = config, None
            else:  # RECONCILE_AND_COMMIT: same pipeline, so the state is kept as it is
                self.config, self.saved = config, None
            log.info("pipeline %s (%d bytes of device config ignored)",
                     A.Action.Name(action), len(config.p4_device_config))

    def get_pipeline(self, req: p4runtime_pb2.GetForwardingPipelineConfigRequest,
                     ) -> p4runtime_pb2.GetForwardingPipelineConfigResponse:
        R = p4runtime_pb2.GetForwardingPipelineConfigRequest
        self._check_device(req.device_id)
        resp = p4runtime_pb2.GetForwardingPipelineConfigResponse()
        with self.lock:
            config = self.saved if self.saved is not None else self.config
            if config is None:
                return resp  # spec 14: config unset when none is known
            out = resp.config
            if config.HasField("cookie"):
                out.cookie.CopyFrom(config.cookie)
            kind = req.response_type
            if kind in (R.ALL, R.P4INFO_AND_COOKIE):
                out.p4info.CopyFrom(config.p4info)
            if kind in (R.ALL, R.DEVICE_CONFIG_AND_COOKIE):
                out.p4_device_config = config.p4_device_config
            if kind not in (R.ALL, R.COOKIE_ONLY, R.P4INFO_AND_COOKIE,
                            R.DEVICE_CONFIG_AND_COOKIE):
                raise invalid(f"response_type {kind} unknown")
        return resp

    def _clear_state(self) -> None:
        """VERIFY_AND_COMMIT: every entry, group, register cell, counter and digest config
        goes back to its initial value."""
        try:
            for tid, entries in self._entries.items():
                remove = self._tables[tid].binding.remove
                for e in entries.values():
                    remove(self.dp, e.key)
                entries.clear()
            self._defaults.clear()
            for gid in list(self._groups):
                self.dp.mcast_group_delete(gid)
                del self._groups[gid]
            for spec in self._registers.values():
                self.dp.register_fill(spec.name, 0)
            for cspec in self._counters.values():
                for i in range(cspec.size):
                    self.dp.counter_write(cspec.name, i, 0, 0)
        except Exception as exc:
            raise _datapath_error(exc, "clearing the forwarding state") from exc
        for engine in self._digests.values():
            engine.clear()

    # ------------------------------------------------------------------ write

    def write(self, req: p4runtime_pb2.WriteRequest) -> None:
        """Apply a WriteRequest. RPC-level failures raise P4RTError; per-update failures
        raise WriteFailed after every update was attempted (CONTINUE_ON_ERROR) or after all
        were rolled back (ROLLBACK_ON_ERROR)."""
        W = p4runtime_pb2.WriteRequest
        with self.lock:
            self._check_device(req.device_id)
            eid = uint128(req.election_id) if req.HasField("election_id") else None
            self.arbiter.check_writer(req.device_id, req.role, eid)
            self._require_pipeline()
            if req.atomicity not in (W.CONTINUE_ON_ERROR, W.ROLLBACK_ON_ERROR):
                raise P4RTError(code_pb2.UNIMPLEMENTED,
                                f"atomicity {W.Atomicity.Name(req.atomicity)} is not supported "
                                "(CONTINUE_ON_ERROR and ROLLBACK_ON_ERROR are)")
            rollback = req.atomicity == W.ROLLBACK_ON_ERROR
            results: list[P4RTError | None] = []
            undos: list[Undo] = []
            for i, update in enumerate(req.updates):
                try:
                    undos.append(self._apply(update))
                    results.append(None)
                except P4RTError as exc:
                    results.append(exc)
                    if rollback:
                        break
                except Exception as exc:  # a bug or the data plane: reported, not fatal
                    log.exception("update #%d failed", i)
                    results.append(P4RTError(code_pb2.INTERNAL, f"{type(exc).__name__}: {exc}"))
                    if rollback:
                        break
            failed = next((i for i, r in enumerate(results) if r is not None), None)
            if failed is None:
                return
            if rollback:
                for undo in reversed(undos):
                    try:
                        undo()
                    except Exception:
                        log.exception("rollback step failed")
                results = [
                    r if i == failed else P4RTError(
                        code_pb2.ABORTED, f"rolled back: update #{failed} failed")
                    for i, r in enumerate(results)
                ] + [P4RTError(code_pb2.ABORTED, f"not attempted: update #{failed} failed")
                     ] * (len(req.updates) - len(results))
            raise WriteFailed(results)

    def _apply(self, update: p4runtime_pb2.Update) -> Undo:
        kind = update.type
        if kind not in (INSERT, MODIFY, DELETE):
            raise invalid(f"update type {p4runtime_pb2.Update.Type.Name(kind)} is not "
                          "INSERT, MODIFY or DELETE")
        entity = update.entity
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            return self._write_table(kind, entity.table_entry)
        if which == "packet_replication_engine_entry":
            return self._write_pre(kind, entity.packet_replication_engine_entry)
        if which == "register_entry":
            return self._write_register(kind, entity.register_entry)
        if which == "counter_entry":
            return self._write_counter(kind, entity.counter_entry)
        if which == "digest_entry":
            return self._write_digest(kind, entity.digest_entry)
        if which is None:
            raise invalid("entity not set")
        raise invalid(f"{which}: this pipeline has no such objects (its P4Info lists none)")

    # -- tables ---------------------------------------------------------------------------

    def _table(self, table_id: int) -> _BoundTable:
        bound = self._tables.get(table_id)
        if bound is None:
            raise invalid(f"table id {table_id:#x} is not a table of this pipeline")
        return bound

    def _match_key(self, bound: _BoundTable, te: p4runtime_pb2.TableEntry,
                   ) -> tuple[tuple[int, ...], dict[str, int]]:
        spec = bound.spec
        if te.priority != 0:
            raise invalid(f"table {spec.name}: priority must be 0 (every match field is "
                          f"exact), got {te.priority}")
        values: dict[int, int] = {}
        for fm in te.match:
            f = spec.field_by_id.get(fm.field_id)
            if f is None:
                raise invalid(f"table {spec.name}: no match field with id {fm.field_id}")
            if fm.field_id in values:
                raise invalid(f"table {spec.name}: match field {f.name!r} given twice")
            kind = fm.WhichOneof("field_match_type")
            if kind != "exact":
                raise invalid(f"table {spec.name}: match field {f.name!r} is an exact match, "
                              f"got {kind or 'no value'}")
            values[fm.field_id] = received_bits(
                fm.exact.value, f.bitwidth, f"table {spec.name} match field {f.name!r}")
        missing = [f.name for f in spec.match_fields if f.id not in values]
        if missing:
            raise invalid(f"table {spec.name}: match field(s) {', '.join(map(repr, missing))} "
                          "missing (exact fields cannot be omitted)")
        key = tuple(values[f.id] for f in spec.match_fields)
        return key, {f.name: values[f.id] for f in spec.match_fields}

    def _action(self, bound: _BoundTable, table_action: p4runtime_pb2.TableAction, *,
                default: bool) -> tuple[int, str, dict[str, int], p4runtime_pb2.Action]:
        """Validate a direct action; returns (id, name, params, canonical Action)."""
        spec = bound.spec
        kind = table_action.WhichOneof("type")
        if kind != "action":
            raise invalid(f"table {spec.name} is a direct table: the action must be an "
                          f"`action`, got {kind or 'nothing'}")
        action = table_action.action
        aspec = self.pipeline.actions.get(action.action_id)
        if aspec is None:
            raise invalid(f"action id {action.action_id:#x} is not an action of this pipeline")
        scope = spec.action_scopes.get(aspec.id)
        if scope is None:
            raise invalid(f"action {aspec.name} is not an action of table {spec.name}")
        if default and scope == p4info_pb2.ActionRef.TABLE_ONLY:
            raise P4RTError(code_pb2.PERMISSION_DENIED,
                            f"action {aspec.name} is TABLE_ONLY in {spec.name}: it cannot be "
                            "the default action")
        if not default and scope == p4info_pb2.ActionRef.DEFAULT_ONLY:
            raise P4RTError(code_pb2.PERMISSION_DENIED,
                            f"action {aspec.name} is DEFAULT_ONLY in {spec.name}: it cannot be "
                            "used by an entry")
        values: dict[int, int] = {}
        for p in action.params:
            pspec = aspec.param_by_id.get(p.param_id)
            if pspec is None:
                raise invalid(f"action {aspec.name}: no parameter with id {p.param_id}")
            if p.param_id in values:
                raise invalid(f"action {aspec.name}: parameter {pspec.name!r} given twice")
            values[p.param_id] = received_bits(p.value, pspec.bitwidth,
                                             f"action {aspec.name} parameter {pspec.name!r}",
                                             code_pb2.INVALID_ARGUMENT)
        missing = [p.name for p in aspec.params if p.id not in values]
        if missing:
            raise invalid(f"action {aspec.name}: parameter(s) {', '.join(map(repr, missing))} "
                          "missing")
        canonical = p4runtime_pb2.Action(action_id=aspec.id)
        for pspec in aspec.params:
            canonical.params.add(param_id=pspec.id, value=encode_bits(values[pspec.id]))
        params = {pspec.name: values[pspec.id] for pspec in aspec.params}
        for action_name, param in bound.binding.port_params:
            if aspec.name == action_name and params[param] not in self.ports:
                raise invalid(f"action {aspec.name}: {param} {params[param]} is not a port of "
                              f"this target (ports: {', '.join(map(str, sorted(self.ports)))})")
        return aspec.id, aspec.name, params, canonical

    @staticmethod
    def _check_plain(spec: TableInfo, te: p4runtime_pb2.TableEntry) -> None:
        if te.is_const:
            raise invalid("is_const must be false in a write")
        for name in ("meter_config", "counter_data", "meter_counter_data"):
            if te.HasField(name):
                raise invalid(f"table {spec.name} has no direct resources ({name} given)")
        if te.idle_timeout_ns or te.HasField("time_since_last_hit"):
            raise invalid(f"table {spec.name} does not support idle timeout")

    def _write_table(self, kind: int, te: p4runtime_pb2.TableEntry) -> Undo:
        bound = self._table(te.table_id)
        spec = bound.spec
        if te.is_default_action:
            return self._write_default(kind, bound, te)
        key, key_names = self._match_key(bound, te)
        entries = self._entries[spec.id]
        old = entries.get(key)
        what = f"table {spec.name} entry {key_names}"
        if kind == DELETE:
            if old is None:
                raise P4RTError(code_pb2.NOT_FOUND, f"{what} not found")
            self._dp_remove(bound, old, what)
            del entries[key]
            return lambda: self._restore(bound, key, old)
        self._check_plain(spec, te)
        if kind == INSERT and old is not None:
            raise P4RTError(code_pb2.ALREADY_EXISTS, f"{what} already exists")
        if kind == MODIFY and old is None:
            raise P4RTError(code_pb2.NOT_FOUND, f"{what} not found")
        msg = p4runtime_pb2.TableEntry(table_id=spec.id, controller_metadata=te.controller_metadata,
                                       metadata=te.metadata)
        for f in spec.match_fields:
            msg.match.add(field_id=f.id).exact.value = encode_bits(key_names[f.name])
        if not te.HasField("action"):
            if kind == INSERT:
                raise invalid(f"{what}: INSERT needs an action")
            assert old is not None  # MODIFY without action keeps the action (spec 9.1.2)
            msg.action.CopyFrom(old.msg.action)
            entries[key] = _entry(msg, key_names, old.action, old.params)
            return lambda: entries.__setitem__(key, old)
        _, name, params, canonical = self._action(bound, te.action, default=False)
        msg.action.action.CopyFrom(canonical)
        if kind == INSERT and len(entries) >= spec.size:
            raise P4RTError(code_pb2.RESOURCE_EXHAUSTED,
                            f"table {spec.name} is full ({spec.size} entries)")
        try:
            bound.binding.actions[name](self.dp, key_names, params)
        except Exception as exc:
            raise _datapath_error(exc, what) from exc
        entries[key] = _entry(msg, key_names, name, params)
        if old is None:
            return lambda: self._unapply(bound, key)
        return lambda: self._restore(bound, key, old)

    def _dp_remove(self, bound: _BoundTable, entry: _Entry, what: str) -> None:
        try:
            bound.binding.remove(self.dp, entry.key)
        except Exception as exc:
            raise _datapath_error(exc, what) from exc

    def _unapply(self, bound: _BoundTable, key: tuple[int, ...]) -> None:
        entry = self._entries[bound.spec.id].pop(key)
        bound.binding.remove(self.dp, entry.key)

    def _restore(self, bound: _BoundTable, key: tuple[int, ...], old: _Entry) -> None:
        bound.binding.actions[old.action](self.dp, old.key, old.params)
        self._entries[bound.spec.id][key] = old

    def _default_entry(self, bound: _BoundTable) -> _Entry:
        entry = self._defaults.get(bound.spec.id)
        if entry is None:
            msg = p4runtime_pb2.TableEntry(table_id=bound.spec.id, is_default_action=True)
            msg.action.action.action_id = bound.default_action_id
            entry = _entry(msg, {}, bound.binding.default_action, {})
        return entry

    def _write_default(self, kind: int, bound: _BoundTable, te: p4runtime_pb2.TableEntry,
                       ) -> Undo:
        spec = bound.spec
        if kind != MODIFY:
            raise invalid(f"table {spec.name}: the default entry can only be MODIFY-ed "
                          "(INSERT and DELETE are not allowed on it)")
        if te.match or te.priority:
            raise invalid(f"table {spec.name}: the default entry has no match and priority 0")
        self._check_plain(spec, te)
        if spec.const_default_action_id:
            raise P4RTError(code_pb2.PERMISSION_DENIED,
                            f"table {spec.name} has a const default action")
        old = self._defaults.get(spec.id)
        if te.HasField("action"):
            action_id, name, _, canonical = self._action(bound, te.action, default=True)
            if action_id != bound.default_action_id:
                raise P4RTError(
                    code_pb2.UNIMPLEMENTED,
                    f"table {spec.name}: the kernel data plane's default action is fixed to "
                    f"{bound.binding.default_action}; it cannot be {name}")
            msg = p4runtime_pb2.TableEntry(
                table_id=spec.id, is_default_action=True,
                controller_metadata=te.controller_metadata, metadata=te.metadata)
            msg.action.action.CopyFrom(canonical)
            self._defaults[spec.id] = _entry(msg, {}, name, {})
        else:  # reset to the program's default (spec 9.1.4)
            self._defaults.pop(spec.id, None)

        def undo() -> None:
            if old is None:
                self._defaults.pop(spec.id, None)
            else:
                self._defaults[spec.id] = old

        return undo

    # -- packet replication -----------------------------------------------------------------

    def _write_pre(self, kind: int, pre: p4runtime_pb2.PacketReplicationEngineEntry) -> Undo:
        which = pre.WhichOneof("type")
        if which == "clone_session_entry":
            raise P4RTError(code_pb2.UNIMPLEMENTED,
                            "clone sessions are not supported by the kernel target")
        if which != "multicast_group_entry":
            raise invalid("packet_replication_engine_entry: no entry type set")
        g = pre.multicast_group_entry
        gid = g.multicast_group_id
        if gid == 0:
            raise invalid("multicast_group_id 0 is not valid in a write (0 is the wildcard)")
        if gid > MAX_GROUP_ID:
            raise P4RTError(code_pb2.OUT_OF_RANGE,
                            f"multicast group id {gid} above {MAX_GROUP_ID}")
        old = self._groups.get(gid)
        what = f"multicast group {gid}"
        if kind == DELETE:
            if old is None:
                raise P4RTError(code_pb2.NOT_FOUND, f"{what} not found")
            try:
                self.dp.mcast_group_delete(gid)
            except Exception as exc:
                raise _datapath_error(exc, what) from exc
            del self._groups[gid]
            return lambda: self._restore_group(gid, old)
        if kind == INSERT and old is not None:
            raise P4RTError(code_pb2.ALREADY_EXISTS, f"{what} already exists")
        if kind == MODIFY and old is None:
            raise P4RTError(code_pb2.NOT_FOUND, f"{what} not found")
        replicas = self._replicas(g)
        try:
            self.dp.mcast_group_set(gid, replicas)
        except Exception as exc:
            raise _datapath_error(exc, what) from exc
        msg = p4runtime_pb2.MulticastGroupEntry()
        msg.CopyFrom(g)
        self._groups[gid] = _Group(msg, wire.entities_field(p4runtime_pb2.Entity(
            packet_replication_engine_entry=p4runtime_pb2.PacketReplicationEngineEntry(
                multicast_group_entry=msg))), replicas)
        if old is None:
            return lambda: self._restore_group(gid, None)
        return lambda: self._restore_group(gid, old)

    def _replicas(self, g: p4runtime_pb2.MulticastGroupEntry) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for i, r in enumerate(g.replicas):
            kind = r.WhichOneof("port_kind")
            if kind == "port":
                port = received_bits(r.port, 32, f"replica #{i} port", code_pb2.INVALID_ARGUMENT)
            else:
                port = r.egress_port
            if port not in self.ports:
                raise invalid(f"multicast group {g.multicast_group_id}: replica #{i} port "
                              f"{port} is not a port of this target (ports: "
                              f"{', '.join(map(str, sorted(self.ports)))})")
            if r.instance > MAX_INSTANCE:
                raise invalid(f"multicast group {g.multicast_group_id}: replica #{i} instance "
                              f"{r.instance} above {MAX_INSTANCE}")
            if len(r.backup_replicas):
                raise P4RTError(code_pb2.UNIMPLEMENTED, "backup replicas are not supported")
            if (port, r.instance) in seen:
                raise invalid(f"multicast group {g.multicast_group_id}: replica (port {port}, "
                              f"instance {r.instance}) given twice")
            seen.add((port, r.instance))
            out.append((port, r.instance))
        return out

    def _restore_group(self, gid: int, old: _Group | None) -> None:
        if old is None:
            self.dp.mcast_group_delete(gid)
            self._groups.pop(gid, None)
        else:
            self.dp.mcast_group_set(gid, old.replicas)
            self._groups[gid] = old

    # -- registers, counters, digests -------------------------------------------------------

    def _index(self, spec: ArrayInfo, entry: Any, what: str) -> int | None:
        if not entry.HasField("index"):
            return None
        index = int(entry.index.index)
        if index < 0:
            raise invalid(f"{what} {spec.name}: negative index {index}")
        if index >= spec.size:
            raise P4RTError(code_pb2.OUT_OF_RANGE,
                            f"{what} {spec.name}: index {index} outside 0..{spec.size - 1}")
        return index

    def _register(self, register_id: int) -> ArrayInfo:
        spec = self._registers.get(register_id)
        if spec is None:
            raise invalid(f"register id {register_id:#x} is not a register of this pipeline")
        return spec

    def _write_register(self, kind: int, entry: p4runtime_pb2.RegisterEntry) -> Undo:
        spec = self._register(entry.register_id)
        if kind != MODIFY:
            raise invalid(f"register {spec.name}: only MODIFY is allowed on a RegisterEntry")
        index = self._index(spec, entry, "register")
        if entry.data.WhichOneof("data") != "bitstring":
            raise invalid(f"register {spec.name}: data must be a bitstring "
                          f"(bit<{spec.bitwidth}>)")
        value = received_bits(entry.data.bitstring, spec.bitwidth, f"register {spec.name} data",
                            code_pb2.INVALID_ARGUMENT)
        name = spec.name
        try:
            if index is None:  # spec 9.7: no index = every cell
                before = self.dp.register_read_all(name)
                self.dp.register_fill(name, value)
            else:
                old_value = self.dp.register_read(name, index)
                self.dp.register_write(name, index, value)
        except Exception as exc:
            raise _datapath_error(exc, f"register {name}") from exc
        if index is None:
            def undo_all() -> None:
                for i, v in enumerate(before):
                    if v != value:
                        self.dp.register_write(name, i, v)
            return undo_all
        return lambda: self.dp.register_write(name, index, old_value)

    def _counter(self, counter_id: int) -> ArrayInfo:
        spec = self._counters.get(counter_id)
        if spec is None:
            raise invalid(f"counter id {counter_id:#x} is not a counter of this pipeline")
        return spec

    def _write_counter(self, kind: int, entry: p4runtime_pb2.CounterEntry) -> Undo:
        spec = self._counter(entry.counter_id)
        if kind != MODIFY:
            raise invalid(f"counter {spec.name}: only MODIFY is allowed on a CounterEntry")
        index = self._index(spec, entry, "counter")
        if not entry.HasField("data"):
            return lambda: None  # spec 9.4: no data, no change
        packets, byte_count = entry.data.packet_count, entry.data.byte_count
        if packets < 0 or byte_count < 0:
            raise invalid(f"counter {spec.name}: negative counts")
        indexes = range(spec.size) if index is None else [index]
        try:
            before = self.dp.counter_read_all(spec.name)
            for i in indexes:
                self.dp.counter_write(spec.name, i, packets, byte_count)
        except Exception as exc:
            raise _datapath_error(exc, f"counter {spec.name}") from exc

        def undo() -> None:
            for i in indexes:
                self.dp.counter_write(spec.name, i, *before[i])

        return undo

    def _write_digest(self, kind: int, entry: p4runtime_pb2.DigestEntry) -> Undo:
        engine = self._digests.get(entry.digest_id)
        if engine is None:
            raise invalid(f"digest id {entry.digest_id:#x} is not a digest of this pipeline")
        return engine.write(kind, entry)

    # ------------------------------------------------------------------ read

    def read_plan(self, req: p4runtime_pb2.ReadRequest,
                  ) -> tuple[list[ReadJob], list[P4RTError | None]]:
        """What to send for each request of a Read (under the lock, so the answer is one
        consistent state), and each request's error. RPC-level failures raise."""
        self._check_device(req.device_id)
        with self.lock:
            self._require_pipeline()
            steps, errors = self._resolve(req)
            return self._fetch(steps), errors

    def read_plan_bytes(self, raw: bytes) -> tuple[list[ReadJob], list[P4RTError | None]]:
        """read_plan for a serialized ReadRequest; the per-entity errors are [] when there
        are none (a poll's 57K Nones are not worth building or scanning). A request that only
        names register cells is resolved once and its plan kept, keyed by its bytes: the
        controller repeats the same 57K-entity request every poll, and parsing it entity by
        entity would cost more than answering it."""
        probe = _plan_key(raw)
        with self._plans_lock:
            known = self._plans.get(probe)
            cached = known[1] if known is not None and known[0] == raw else None
            if cached is not None:
                self._plans.move_to_end(probe)
        if cached is not None:
            device_id, batches, _ = cached
            self._check_device(device_id)
            with self.lock:
                self._require_pipeline()
                values = [[self._step_cells(step) for step in group] for group, _ in batches]
            # the encoders were prepared when the plan was kept
            jobs: list[ReadJob] = [
                ("cells", (encoder, 0, None, v[0] if len(v) == 1 else np.concatenate(v)))
                for (_, encoder), v in zip(batches, values, strict=True)]
            return jobs, []
        try:
            req = p4runtime_pb2.ReadRequest.FromString(raw)
        except DecodeError as exc:
            raise invalid(f"ReadRequest does not parse: {exc}") from None
        self._check_device(req.device_id)
        with self.lock:
            self._require_pipeline()
            steps, errors = self._resolve(req)
            jobs = self._fetch(steps)
        if all(isinstance(step, CellRead) for step in steps) and not any(errors):
            self._remember(raw, req.device_id, steps, len(errors))
        return jobs, errors if any(errors) else []

    def _remember(self, raw: bytes, device_id: int, steps: list[ReadStep],
                  entities: int) -> None:
        if len(raw) > PLAN_CACHE_BYTES:
            return
        # consecutive steps share one encoder up to BATCH_CELLS cells: few codec calls for
        # a poll's 14 x 4,096 cells, cache-sized arrays for whole registers
        batches: list[tuple[list[CellRead], wire.CellEncoder]] = []
        group: list[CellRead] = []
        for step in [*(s for s in steps if isinstance(s, CellRead)), None]:
            if group and (step is None or sum(map(self._cell_count, group))
                          + self._cell_count(step) > BATCH_CELLS):
                ids = [np.full(self._cell_count(c), c.spec.id, np.uint64) for c in group]
                indexes = [c.indexes if c.indexes is not None else np.arange(c.spec.size)
                           for c in group]
                batches.append((group, wire.CellEncoder(np.concatenate(ids),
                                                        np.concatenate(indexes))))
                group = []
            if step is not None:
                group.append(step)
        with self._plans_lock:
            old = self._plans.pop(_plan_key(raw), None)
            if old is not None:
                self._plans_bytes -= len(old[0])
            self._plans[_plan_key(raw)] = (raw, (device_id, batches, entities))
            self._plans_bytes += len(raw)
            while len(self._plans) > PLAN_CACHE_ENTRIES or self._plans_bytes > PLAN_CACHE_BYTES:
                _, (gone, _) = self._plans.popitem(last=False)
                self._plans_bytes -= len(gone)

    def _resolve(self, req: p4runtime_pb2.ReadRequest,
                 ) -> tuple[list[ReadStep], list[P4RTError | None]]:
        """Each entity of a Read checked and turned into steps (lock held). Consecutive
        cells of one register become one CellRead, so a request listing 57K cells is a
        handful of array reads."""
        steps: list[ReadStep] = []
        errors: list[P4RTError | None] = []
        run_spec: ArrayInfo | None = None  # the register of the open run of single cells
        run: list[int] = []

        def close_run() -> None:
            nonlocal run_spec, run
            if run_spec is not None:
                steps.append(CellRead(run_spec, np.array(run, dtype=np.intp)))
            run_spec, run = None, []

        for entity in req.entities:
            try:
                if entity.WhichOneof("entity") == "register_entry":
                    entry = entity.register_entry
                    if entry.register_id and entry.HasField("index"):
                        spec = self._register(entry.register_id)
                        index = self._index(spec, entry, "register")
                        assert index is not None
                        if spec is not run_spec:
                            close_run()
                            run_spec = spec
                        run.append(index)
                    else:
                        close_run()
                        steps.extend(self._read_registers(entry))
                else:
                    close_run()
                    steps.append(self._read_entity(entity))
                errors.append(None)
            except P4RTError as exc:
                errors.append(exc)
            except Exception as exc:
                log.exception("read failed")
                errors.append(P4RTError(code_pb2.INTERNAL, f"{type(exc).__name__}: {exc}"))
        close_run()
        return steps, errors

    @staticmethod
    def _cell_count(step: CellRead) -> int:
        return step.spec.size if step.indexes is None else len(step.indexes)

    def _fetch(self, steps: Sequence[ReadStep]) -> list[ReadJob]:
        """The values of the register cells the steps name, now (lock held)."""
        jobs: list[ReadJob] = []
        for step in steps:
            if not isinstance(step, CellRead):
                jobs.extend(step)
                continue
            values = self._step_cells(step)
            encoder = None
            if step.indexes is None:  # a whole register: the same encoder every time
                encoder = self._whole_encoders.get(step.spec.id)
                if encoder is None:
                    encoder = self._whole_encoders[step.spec.id] = wire.CellEncoder(
                        step.spec.id, np.arange(step.spec.size))
            jobs.append(("cells", (encoder, step.spec.id, step.indexes, values)))
        return jobs

    def _step_cells(self, step: ReadStep) -> npt.NDArray[Any]:
        assert isinstance(step, CellRead)
        try:
            return self._cells(step.spec, step.indexes)
        except Exception as exc:
            raise _datapath_error(exc, f"register {step.spec.name}") from exc

    def _cells(self, spec: ArrayInfo, indexes: npt.NDArray[np.intp] | None,
               ) -> npt.NDArray[Any]:
        """A copy of the cells (all when None) as a numpy array: straight from the mapped
        BPF array when the data plane offers it (Datapath.register_take), else from
        register_read_all (test data planes)."""
        take = getattr(self.dp, "register_take", None)
        if take is not None:
            values = np.asarray(take(spec.name, indexes))
        else:
            values = np.asarray(self.dp.register_read_all(spec.name), dtype=np.uint64)
            if indexes is not None:
                values = values[indexes]
        return values if indexes is not None else values[:spec.size]

    @staticmethod
    def encode(jobs: Sequence[ReadJob]) -> Iterator[bytes]:
        """Serialized ReadResponses for a read plan (the expensive part, outside the lock),
        each at most MAX_RESPONSE_BYTES and cut only between entities."""
        chunker = wire.ResponseChunker()
        for kind, data in jobs:
            if kind == "fields":
                yield from chunker.add(data)
            else:  # "cells": (encoder or None, register id, indexes, values)
                encoder, register_id, indexes, values = data
                if encoder is None:
                    encoder = wire.CellEncoder(register_id, indexes)
                blob, ends = encoder.encode(values)
                yield from chunker.add_block(blob, ends)
        if chunker.pending:
            yield chunker.flush()

    def _read_entity(self, entity: p4runtime_pb2.Entity) -> list[ReadJob]:
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            return [("fields", self._read_table(entity.table_entry))]
        if which == "packet_replication_engine_entry":
            return [("fields", self._read_pre(entity.packet_replication_engine_entry))]
        if which == "register_entry":
            return self._fetch(self._read_registers(entity.register_entry))
        if which == "counter_entry":
            return [("fields", self._read_counters(entity.counter_entry))]
        if which == "digest_entry":
            return [("fields", self._read_digests(entity.digest_entry))]
        if which is None:
            raise invalid("entity not set (a wildcard read names each entity type)")
        # kinds this pipeline has none of: a wildcard finds nothing, an id is unknown
        msg = getattr(entity, which)
        ident = {
            "extern_entry": lambda m: m.extern_type_id or m.extern_id,
            "action_profile_member": lambda m: m.action_profile_id,
            "action_profile_group": lambda m: m.action_profile_id,
            "meter_entry": lambda m: m.meter_id,
            "direct_meter_entry": lambda m: m.table_entry.table_id,
            "direct_counter_entry": lambda m: m.table_entry.table_id,
            "value_set_entry": lambda m: m.value_set_id,
        }.get(which, lambda m: 1)(msg)
        if ident:
            raise invalid(f"{which}: id {ident:#x} unknown (this pipeline has none)")
        return []

    def _read_table(self, te: p4runtime_pb2.TableEntry) -> list[bytes]:
        if te.table_id == 0:
            if te.match or te.is_default_action:
                raise invalid("a read of all tables (table_id 0) takes no other filter")
            bounds = list(self._tables.values())
        else:
            bounds = [self._table(te.table_id)]
        out: list[bytes] = []
        for bound in bounds:
            if te.is_default_action:
                if te.match or te.priority:
                    raise invalid(f"table {bound.spec.name}: the default entry has no match "
                                  "and priority 0")
                out.append(self._default_entry(bound).field)
                continue
            if te.priority:
                continue  # every entry here has priority 0
            entries = self._entries[bound.spec.id]
            if te.match:
                key, _ = self._match_key(bound, te)
                found = entries.get(key)
                candidates = [found] if found is not None else []
            else:
                candidates = list(entries.values())
            action_id = te.action.action.action_id if te.HasField("action") else 0
            for e in candidates:
                if action_id and e.msg.action.action.action_id != action_id:
                    continue
                if te.controller_metadata and e.msg.controller_metadata != te.controller_metadata:
                    continue
                if te.metadata and e.msg.metadata != te.metadata:
                    continue
                out.append(e.field)
        return out

    def _read_pre(self, pre: p4runtime_pb2.PacketReplicationEngineEntry) -> list[bytes]:
        which = pre.WhichOneof("type")
        if which == "clone_session_entry":
            return []  # the kernel target has no clone sessions
        if which != "multicast_group_entry":
            raise invalid("packet_replication_engine_entry: no entry type set")
        gid = pre.multicast_group_entry.multicast_group_id
        if gid == 0:
            return [g.field for _, g in sorted(self._groups.items())]
        group = self._groups.get(gid)
        return [group.field] if group is not None else []

    def _read_registers(self, entry: p4runtime_pb2.RegisterEntry) -> list[CellRead]:
        specs = list(self._registers.values()) if entry.register_id == 0 \
            else [self._register(entry.register_id)]
        out: list[CellRead] = []
        for spec in specs:
            index = self._index(spec, entry, "register") if entry.register_id else None
            out.append(CellRead(spec, None if index is None
                                else np.array([index], dtype=np.intp)))
        return out

    def _read_counters(self, entry: p4runtime_pb2.CounterEntry) -> list[bytes]:
        specs = list(self._counters.values()) if entry.counter_id == 0 \
            else [self._counter(entry.counter_id)]
        out: list[bytes] = []
        for spec in specs:
            index = self._index(spec, entry, "counter") if entry.counter_id else None
            try:
                cells = self.dp.counter_read_all(spec.name)
            except Exception as exc:
                raise _datapath_error(exc, f"counter {spec.name}") from exc
            indexes = range(spec.size) if index is None else [index]
            for i in indexes:
                packets, byte_count = cells[i]
                ce = p4runtime_pb2.CounterEntry(counter_id=spec.id)
                ce.index.index = i
                ce.data.packet_count = min(packets, _INT64_MAX)
                ce.data.byte_count = min(byte_count, _INT64_MAX)
                out.append(wire.entities_field(p4runtime_pb2.Entity(counter_entry=ce)))
        return out

    def _read_digests(self, entry: p4runtime_pb2.DigestEntry) -> list[bytes]:
        if entry.digest_id == 0:
            engines = list(self._digests.values())
        else:
            engine = self._digests.get(entry.digest_id)
            if engine is None:
                raise invalid(f"digest id {entry.digest_id:#x} is not a digest of this pipeline")
            engines = [engine]
        return [wire.entities_field(p4runtime_pb2.Entity(digest_entry=e.config))
                for e in engines if e.config is not None]

    # ------------------------------------------------------------------ stream

    def packet_out(self, session: Session, pkt: p4runtime_pb2.PacketOut) -> None:
        if not self.arbiter.is_primary(session):
            raise P4RTError(code_pb2.PERMISSION_DENIED,
                            "PacketOut refused: only the primary client may send packets")
        if not self.pipeline_set:
            raise P4RTError(code_pb2.FAILED_PRECONDITION,
                            "PacketOut refused: no forwarding pipeline config set")
        spec = self._packet_out
        values: dict[str, int] = {}
        for m in pkt.metadata:
            f = spec.field_by_id.get(m.metadata_id)
            if f is None:
                raise invalid(f"packet_out has no metadata with id {m.metadata_id}")
            if f.name in values:
                raise invalid(f"packet_out metadata {f.name!r} given twice")
            values[f.name] = received_bits(m.value, f.bitwidth, f"packet_out metadata {f.name!r}",
                                         code_pb2.INVALID_ARGUMENT)
        # padding fields may be left out; the ones the data plane acts on may not
        missing = [f.name for f in spec.fields if f.name not in values
                   and not f.name.startswith("_")]
        if missing:
            raise invalid(f"packet_out metadata {', '.join(map(repr, missing))} missing")
        egress_port, mcast_grp = values["egress_port"], values["mcast_grp"]
        if mcast_grp == 0 and egress_port not in self.ports:
            raise invalid(f"packet_out egress_port {egress_port} is not a port of this target "
                          f"(ports: {', '.join(map(str, sorted(self.ports)))})")
        try:
            self.dp.packet_out(pkt.payload, egress_port, mcast_grp)
        except Exception as exc:
            raise _datapath_error(exc, "packet_out") from exc
        self.packets_out += 1

    def digest_ack(self, session: Session, ack: p4runtime_pb2.DigestListAck) -> None:
        engine = self._digests.get(ack.digest_id)
        if engine is None:
            raise invalid(f"DigestListAck: digest id {ack.digest_id:#x} is not a digest of "
                          "this pipeline")
        if not self.arbiter.is_primary(session):
            raise P4RTError(code_pb2.PERMISSION_DENIED,
                            "DigestListAck ignored: only the primary client acknowledges")
        engine.ack(ack.list_id)

    def _send_digest(self, msg: p4runtime_pb2.DigestList) -> bool:
        # Called with the engine's lock held: the lookup must not take the device lock
        # (a Write holds it and may wait for the engine's lock).
        primary = self.arbiter.primary("")
        if primary is None:
            return False
        primary.sink.send(p4runtime_pb2.StreamMessageResponse(digest=msg))
        return True

    def pump_events(self, stop: threading.Event, max_wait_ms: int = 1000) -> None:
        """Turn the data plane's UP/DOWN events into digests until `stop` (a thread)."""
        engines = list(self._digests.values())
        while not stop.is_set():
            waits = [w for w in (e.tick() for e in engines) if w is not None]
            timeout_ms = max_wait_ms
            if waits:
                timeout_ms = max(1, min(max_wait_ms, -(-min(waits) // 1_000_000)))
            try:
                events = self.dp.poll_events(timeout_ms)
            except Exception as exc:
                if not stop.is_set():
                    log.error("reading data-plane events failed: %s", exc)
                return
            if events:
                # each event goes to the digest it names (PeerEvent: peer_event_t, BfdEvent:
                # bfd_event_t); one the P4Info has no digest for is dropped
                by_engine: dict[int, list[Any]] = {}
                for ev in events:
                    engine = self._digest_by_name.get(getattr(ev, "DIGEST", PEER_EVENT_DIGEST))
                    if engine is not None:
                        by_engine.setdefault(id(engine), []).append(
                            sample_of(engine.spec, ev))
                for engine in engines:
                    samples = by_engine.get(id(engine))
                    if samples:
                        engine.add(samples)


def stream_error(exc: P4RTError, *, packet: p4runtime_pb2.PacketOut | None = None,
                 ack: p4runtime_pb2.DigestListAck | None = None,
                 ) -> p4runtime_pb2.StreamMessageResponse:
    """A StreamError (spec 16.4) naming the message that caused it."""
    msg = p4runtime_pb2.StreamMessageResponse()
    err = msg.error
    err.canonical_code = exc.code
    err.message = exc.message
    if packet is not None:
        err.packet_out.packet_out.CopyFrom(packet)
    elif ack is not None:
        err.digest_list_ack.digest_list_ack.CopyFrom(ack)
    else:
        err.other.SetInParent()
    return msg


def dataclass_fields(cls: type) -> tuple[str, ...]:
    """Field names of a dataclass (the data plane's event type)."""
    return tuple(f.name for f in dataclasses.fields(cls))
