"""A small in-memory P4Runtime server for the client's unit tests (real gRPC, fake switch).

It keeps tables, multicast groups and registers as dictionaries and follows the spec where
the client's behaviour depends on it: arbitration by highest election id, per-update errors
in the status details of a failed Write, streamed Read responses, PacketOut capture and
DigestList push. Integration tests use the real targets instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc


def _key(entry: p4runtime_pb2.TableEntry) -> tuple[Any, ...]:
    return (entry.table_id, entry.priority,
            tuple(sorted(m.SerializeToString(deterministic=True) for m in entry.match)))


class _Stream:
    def __init__(self, election_id: int) -> None:
        self.election_id = election_id
        self.out: queue.SimpleQueue[p4runtime_pb2.StreamMessageResponse | None] = (
            queue.SimpleQueue()
        )


class TestP4RuntimeServer(p4runtime_pb2_grpc.P4RuntimeServicer):
    __test__ = False  # not a pytest class

    def __init__(self, device_id: int = 1, read_chunk: int = 100) -> None:
        self.device_id = device_id
        self.read_chunk = read_chunk
        self.lock = threading.Lock()
        self.config: p4runtime_pb2.ForwardingPipelineConfig | None = None
        self.tables: dict[tuple[Any, ...], p4runtime_pb2.TableEntry] = {}
        self.groups: dict[int, p4runtime_pb2.MulticastGroupEntry] = {}
        self.registers: dict[tuple[int, int], bytes] = {}
        self.counters: dict[tuple[int, int], tuple[int, int]] = {}
        self.register_sizes: dict[int, int] = {}
        self.counter_sizes: dict[int, int] = {}
        self.packets_out: queue.SimpleQueue[p4runtime_pb2.PacketOut] = queue.SimpleQueue()
        self.digest_acks: queue.SimpleQueue[p4runtime_pb2.DigestListAck] = queue.SimpleQueue()
        self.streams: list[_Stream] = []
        self.writes = 0
        self.fail_next_writes: list[grpc.StatusCode] = []
        # per-update refusal: return a message to fail that update (INVALID_ARGUMENT)
        self.reject: Any = None
        self._server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        p4runtime_pb2_grpc.add_P4RuntimeServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        with self.lock:
            for s in self.streams:
                s.out.put(None)
            self.streams.clear()
        if self._server is not None:
            self._server.stop(grace=None).wait()

    # -- helpers for tests ------------------------------------------------------------------

    def primary_election_id(self) -> int:
        with self.lock:
            return max((s.election_id for s in self.streams), default=0)

    def send_digest(self, digest: p4runtime_pb2.DigestList) -> None:
        with self.lock:
            streams = list(self.streams)
        top = max((s.election_id for s in streams), default=None)
        for s in streams:
            if s.election_id == top:
                s.out.put(p4runtime_pb2.StreamMessageResponse(digest=digest))

    def _arbitration_updates(self) -> None:
        top = max((s.election_id for s in self.streams), default=0)
        for s in self.streams:
            resp = p4runtime_pb2.StreamMessageResponse()
            resp.arbitration.device_id = self.device_id
            resp.arbitration.election_id.high = top >> 64
            resp.arbitration.election_id.low = top & 0xFFFFFFFFFFFFFFFF
            resp.arbitration.status.code = (
                code_pb2.OK if s.election_id == top else code_pb2.ALREADY_EXISTS
            )
            s.out.put(resp)

    def _check_primary(self, election: p4runtime_pb2.Uint128, context: Any) -> None:
        eid = (election.high << 64) | election.low
        if eid != self.primary_election_id():
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not primary")

    # -- RPCs -------------------------------------------------------------------------------

    def SetForwardingPipelineConfig(self, request: Any, context: Any) -> Any:
        self._check_primary(request.election_id, context)
        with self.lock:
            self.config = p4runtime_pb2.ForwardingPipelineConfig()
            self.config.CopyFrom(request.config)
            self.tables.clear()
            self.groups.clear()
            self.registers.clear()
            self.register_sizes = {r.preamble.id: r.size for r in request.config.p4info.registers}
            self.counter_sizes = {c.preamble.id: c.size for c in request.config.p4info.counters}
        return p4runtime_pb2.SetForwardingPipelineConfigResponse()

    def GetForwardingPipelineConfig(self, request: Any, context: Any) -> Any:
        with self.lock:
            if self.config is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no pipeline")
            resp = p4runtime_pb2.GetForwardingPipelineConfigResponse()
            assert self.config is not None
            resp.config.p4info.CopyFrom(self.config.p4info)
            return resp

    def Capabilities(self, request: Any, context: Any) -> Any:
        return p4runtime_pb2.CapabilitiesResponse(p4runtime_api_version="1.6.0")

    def Write(self, request: Any, context: Any) -> Any:
        self._check_primary(request.election_id, context)
        if self.fail_next_writes:
            context.abort(self.fail_next_writes.pop(0), "injected failure")
        errors: list[p4runtime_pb2.Error] = []
        with self.lock:
            self.writes += 1
            for update in request.updates:
                errors.append(self._apply(update))
        if any(e.canonical_code != code_pb2.OK for e in errors):
            status = status_pb2.Status(code=code_pb2.UNKNOWN, message="write failed")
            for e in errors:
                detail = any_pb2.Any()
                detail.Pack(e)
                status.details.append(detail)
            context.abort_with_status(_RpcStatus(status))
        return p4runtime_pb2.WriteResponse()

    def _apply(self, update: p4runtime_pb2.Update) -> p4runtime_pb2.Error:
        ok = p4runtime_pb2.Error(canonical_code=code_pb2.OK)
        refusal = self.reject(update) if self.reject is not None else None
        if refusal:
            return p4runtime_pb2.Error(canonical_code=code_pb2.INVALID_ARGUMENT,
                                       message=refusal)
        kind = update.entity.WhichOneof("entity")
        if kind == "table_entry":
            entry = update.entity.table_entry
            key = _key(entry)
            if update.type == p4runtime_pb2.Update.INSERT:
                if key in self.tables:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.ALREADY_EXISTS,
                                               message="entry exists")
                self.tables[key] = entry
            elif update.type == p4runtime_pb2.Update.MODIFY:
                if key not in self.tables:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.NOT_FOUND, message="none")
                self.tables[key] = entry
            else:
                if self.tables.pop(key, None) is None:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.NOT_FOUND, message="none")
            return ok
        if kind == "packet_replication_engine_entry":
            group = update.entity.packet_replication_engine_entry.multicast_group_entry
            gid = group.multicast_group_id
            if update.type == p4runtime_pb2.Update.INSERT:
                if gid in self.groups:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.ALREADY_EXISTS,
                                               message="group exists")
                self.groups[gid] = group
            elif update.type == p4runtime_pb2.Update.MODIFY:
                if gid not in self.groups:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.NOT_FOUND, message="none")
                self.groups[gid] = group
            else:
                if self.groups.pop(gid, None) is None:
                    return p4runtime_pb2.Error(canonical_code=code_pb2.NOT_FOUND, message="none")
            return ok
        if kind == "register_entry" and update.type == p4runtime_pb2.Update.MODIFY:
            reg = update.entity.register_entry
            self.registers[(reg.register_id, reg.index.index)] = reg.data.bitstring
            return ok
        if kind == "digest_entry":
            return ok
        return p4runtime_pb2.Error(canonical_code=code_pb2.UNIMPLEMENTED, message=str(kind))

    def Read(self, request: Any, context: Any) -> Iterator[Any]:
        out: list[p4runtime_pb2.Entity] = []
        with self.lock:
            for e in request.entities:
                kind = e.WhichOneof("entity")
                if kind == "table_entry":
                    tid = e.table_entry.table_id
                    for entry in self.tables.values():
                        if tid in (0, entry.table_id):
                            out.append(p4runtime_pb2.Entity(table_entry=entry))
                elif kind == "packet_replication_engine_entry":
                    gid = e.packet_replication_engine_entry.multicast_group_entry\
                        .multicast_group_id
                    for g in self.groups.values():
                        if gid in (0, g.multicast_group_id):
                            out.append(p4runtime_pb2.Entity(
                                packet_replication_engine_entry=p4runtime_pb2
                                .PacketReplicationEngineEntry(multicast_group_entry=g)))
                elif kind == "register_entry":
                    rid = e.register_entry.register_id
                    size = self.register_sizes.get(rid, 0)
                    idxs = ([e.register_entry.index.index] if e.register_entry.HasField("index")
                            else range(size))
                    for i in idxs:
                        ent = p4runtime_pb2.Entity()
                        ent.register_entry.register_id = rid
                        ent.register_entry.index.index = i
                        ent.register_entry.data.bitstring = self.registers.get((rid, i), b"\x00")
                        out.append(ent)
                elif kind == "counter_entry":
                    cid = e.counter_entry.counter_id
                    size = self.counter_sizes.get(cid, 0)
                    for i in range(size):
                        ent = p4runtime_pb2.Entity()
                        ent.counter_entry.counter_id = cid
                        ent.counter_entry.index.index = i
                        pk, by = self.counters.get((cid, i), (0, 0))
                        ent.counter_entry.data.packet_count = pk
                        ent.counter_entry.data.byte_count = by
                        out.append(ent)
        for start in range(0, max(len(out), 1), self.read_chunk):
            yield p4runtime_pb2.ReadResponse(entities=out[start:start + self.read_chunk])

    def StreamChannel(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        stream: _Stream | None = None
        done = threading.Event()

        def reader() -> None:
            nonlocal stream
            try:
                for req in request_iterator:
                    kind = req.WhichOneof("update")
                    if kind == "arbitration":
                        eid = ((req.arbitration.election_id.high << 64)
                               | req.arbitration.election_id.low)
                        with self.lock:
                            if stream is None:
                                stream = _Stream(eid)
                                self.streams.append(stream)
                                self._arbitration_updates()
                                started.set()
                    elif kind == "packet":
                        self.packets_out.put(req.packet)
                    elif kind == "digest_ack":
                        self.digest_acks.put(req.digest_ack)
            except Exception:
                pass
            finally:
                done.set()
                with self.lock:
                    if stream is not None and stream in self.streams:
                        self.streams.remove(stream)
                        self._arbitration_updates()
                    if stream is not None:
                        stream.out.put(None)
                started.set()

        started = threading.Event()
        threading.Thread(target=reader, daemon=True).start()
        started.wait()
        if stream is None:
            return
        while context.is_active():
            try:
                msg = stream.out.get(timeout=0.5)
            except queue.Empty:
                continue
            if msg is None:
                return
            yield msg


class _RpcStatus(grpc.Status):  # type: ignore[misc]
    def __init__(self, status: status_pb2.Status) -> None:
        self.code = grpc.StatusCode.UNKNOWN
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)
