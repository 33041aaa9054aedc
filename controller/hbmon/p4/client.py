"""A thread-safe P4Runtime client on grpcio and the official stubs.

No module-global state and no `sys.exit`: each `P4RuntimeClient` owns one channel, one
StreamChannel (kept open by a background thread that re-opens it with exponential backoff
after the switch restarts) and the arbitration state of one (device id, election id).

Unary RPCs (Write, Read, pipeline) go straight to the channel; the stream carries
arbitration, PacketOut, PacketIn, DigestList (+ ack) and stream errors. Callers register
callbacks (called on the stream thread: keep them short) or read `messages`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from hbmon.p4 import P4Schema

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a wildcard read of a 64K-cell register is ~1.5 MB;
# table reads of 64K entries are tens of MB


class Encodable(Protocol):
    def encode(self, schema: P4Schema) -> p4runtime_pb2.Entity: ...


EntityLike = p4runtime_pb2.Entity | Encodable

READ_METHOD = "/p4.v1.P4Runtime/Read"
INSERT = p4runtime_pb2.Update.INSERT
MODIFY = p4runtime_pb2.Update.MODIFY
DELETE = p4runtime_pb2.Update.DELETE


class P4RuntimeError(Exception):
    """An RPC failed; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotPrimaryError(P4RuntimeError):
    """A write was attempted while another controller is primary."""


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One update of a Write that the target refused."""

    index: int  # position in the list given to `write`
    update: p4runtime_pb2.Update
    code: int  # google.rpc.Code
    message: str

    @property
    def code_name(self) -> str:
        return str(code_pb2.Code.Name(self.code)) if self.code in code_pb2.Code.values() \
            else str(self.code)

    def __str__(self) -> str:
        kind = p4runtime_pb2.Update.Type.Name(self.update.type)
        which = self.update.entity.WhichOneof("entity")
        return f"update #{self.index} ({kind} {which}): {self.code_name}: {self.message}"


class WriteError(P4RuntimeError):
    """Some updates of a write failed; `errors` names each one. The others were applied
    (except those in `not_attempted`, skipped after a transport failure)."""

    def __init__(self, errors: Sequence[UpdateError], total: int,
                 not_attempted: Sequence[int] = ()) -> None:
        head = "; ".join(str(e) for e in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} of {total} updates failed: {head}{more}")
        self.errors = list(errors)
        self.total = total
        self.not_attempted = list(not_attempted)

    @property
    def failed_indexes(self) -> set[int]:
        return {e.index for e in self.errors}


def _uint128(value: int) -> p4runtime_pb2.Uint128:
    return p4runtime_pb2.Uint128(high=value >> 64, low=value & 0xFFFFFFFFFFFFFFFF)


def _status_details(err: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in (err.trailing_metadata() or ()):
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            with contextlib.suppress(Exception):
                status.ParseFromString(value)
                return status
    return None


def _rpc_error(what: str, err: grpc.RpcError) -> P4RuntimeError:
    code = err.code()
    details = err.details()
    cls = NotPrimaryError if code == grpc.StatusCode.PERMISSION_DENIED else P4RuntimeError
    return cls(f"{what}: {code.name}: {details}", code)


def make_update(kind: p4runtime_pb2.Update.Type, entity: EntityLike, schema: P4Schema | None = None,
                ) -> p4runtime_pb2.Update:
    if not isinstance(entity, p4runtime_pb2.Entity):
        if schema is None:
            raise ValueError("a schema is needed to encode typed entities")
        entity = entity.encode(schema)
    return p4runtime_pb2.Update(type=kind, entity=entity)


class P4RuntimeClient:
    """One controller's session with one P4Runtime device.

    `connect()` opens the stream and waits for the arbitration answer; `primary` tells
    whether this client won mastership. Re-arbitration after a stream loss is automatic;
    `on_connection(connected, primary)` reports every change (reconcile on reconnect).

    Take-over (`take_over=True`): when the target says there is no primary (spec 5.4:
    NOT_FOUND, with the highest election id it has seen), the client re-arbitrates with
    max(its id, that id + 1). A target that follows spec 5.3 (the kernel target) makes no
    client primary until one reaches the highest id ever seen, so a standby would otherwise
    never take over; PI promotes the next backup itself and never sends NOT_FOUND while a
    client is left, so there the standby is primary already. `election_id` is the id in
    use (Write carries it); `base_election_id` the configured one, which the client falls
    back to when the target ends its stream over a clash of ids (spec 5.3: INVALID_ARGUMENT).

    `election_id=None`: the arbitration update leaves the id unset, which makes the client
    a backup for good (spec 15.3.1 / 5.3); it never attempts a Write. `set_election_id`
    changes the id on the live stream (a replica elected leader of the switch, or deposed).
    """

    def __init__(
        self,
        address: str,
        device_id: int,
        election_id: int | None = 1,
        *,
        schema: P4Schema | None = None,
        role: str = "",
        batch_size: int = 1000,
        rpc_timeout: float = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        on_packet_in: Callable[[p4runtime_pb2.PacketIn], None] | None = None,
        on_digest: Callable[[p4runtime_pb2.DigestList], None] | None = None,
        on_connection: Callable[[bool, bool], None] | None = None,
        on_stream_error: Callable[[p4runtime_pb2.StreamError], None] | None = None,
        auto_ack_digests: bool = True,
        take_over: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.base_election_id = election_id
        self.take_over = take_over
        self.highest_election_id: int | None = None  # as the target's last notification said
        self.schema = schema
        self.role = role
        self.batch_size = batch_size
        self.rpc_timeout = rpc_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_packet_in = on_packet_in
        self.on_digest = on_digest
        self.on_connection = on_connection
        self.on_stream_error = on_stream_error
        self.auto_ack_digests = auto_ack_digests
        # stream messages without a callback land here (bounded: a slow reader loses the oldest)
        self.messages: queue.Queue[p4runtime_pb2.StreamMessageResponse] = queue.Queue(10000)
        self.dropped_messages = 0

        # `credentials` (grpc.ssl_channel_credentials): TLS, with a client certificate for
        # mutual TLS; `server_name`: the name the server's certificate must carry when it is
        # not the host part of `address` (e.g. a certificate for a name, dialled by address)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = p4runtime_pb2_grpc.P4RuntimeStub(self._channel)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._arbitrated = threading.Event()
        self._send_queue: queue.SimpleQueue[p4runtime_pb2.StreamMessageRequest | None] | None = None
        self._call: Any = None
        self._connected = False
        self._primary = False
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        self.stream_generation = 0  # increments on every (re)arbitration

    # -- lifecycle --------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> bool:
        """Start the stream thread and wait for arbitration; returns True if primary.

        Raises P4RuntimeError when no arbitration answer came within `timeout` (the thread
        keeps trying in the background; `close()` stops it)."""
        self.connect_async()
        if not self._arbitrated.wait(timeout):
            raise P4RuntimeError(
                f"no arbitration answer from {self.address} (device {self.device_id}) "
                f"within {timeout:.1f}s: {self._last_error or 'no response'}",
                grpc.StatusCode.UNAVAILABLE,
            )
        return self.primary

    def connect_async(self) -> None:
        """Start the stream thread (it connects, arbitrates and re-connects on its own;
        `on_connection` reports each change)."""
        with self._lock:
            if self._thread is None:
                self._closed.clear()
                self._thread = threading.Thread(
                    target=self._stream_loop, name=f"p4rt-stream-{self.address}", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            q, call, thread = self._send_queue, self._call, self._thread
            self._thread = None
        if q is not None:
            q.put(None)
        if call is not None:
            call.cancel()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._channel.close()

    def __enter__(self) -> P4RuntimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def primary(self) -> bool:
        return self._connected and self._primary

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # -- stream -----------------------------------------------------------------------------

    def _arbitration_request(self) -> p4runtime_pb2.StreamMessageRequest:
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = self.device_id
        if self.election_id is not None:  # unset: a backup that never becomes primary
            req.arbitration.election_id.CopyFrom(_uint128(self.election_id))
        if self.role:
            req.arbitration.role.name = self.role
        return req

    def set_election_id(self, election_id: int | None, *, take_over: bool | None = None,
                        ) -> None:
        """Use `election_id` from now on (None: backup without an id) and re-arbitrate on
        the live stream at once (a new MasterArbitrationUpdate, spec 5.3); without a stream
        the next connection arbitrates with it. Also the id a clash falls back to."""
        self.election_id = self.base_election_id = election_id
        if take_over is not None:
            self.take_over = take_over
        q = self._send_queue
        if q is not None:
            q.put(self._arbitration_request())

    def _stream_loop(self) -> None:
        delay = self.backoff_initial
        while not self._closed.is_set():
            q: queue.SimpleQueue[p4runtime_pb2.StreamMessageRequest | None] = queue.SimpleQueue()
            q.put(self._arbitration_request())

            def requests(q: queue.SimpleQueue[p4runtime_pb2.StreamMessageRequest | None] = q,
                         ) -> Iterator[p4runtime_pb2.StreamMessageRequest]:
                while True:
                    item = q.get()
                    if item is None:
                        return
                    yield item

            call = self._stub.StreamChannel(requests())
            with self._lock:
                self._send_queue, self._call = q, call
            try:
                for msg in call:
                    if self._handle(msg):
                        delay = self.backoff_initial
            except grpc.RpcError as err:
                if not self._closed.is_set():
                    self._last_error = f"stream: {err.code().name}: {err.details()}"
                    log.info("%s: %s", self.address, self._last_error)
                    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        # another live client holds this id (two standbys raced to the same
                        # take-over id): come back with the configured id, as a backup
                        self.election_id = self.base_election_id
            except Exception as exc:  # a callback failed: keep the session alive
                self._last_error = f"stream handler: {exc!r}"
                log.exception("%s: stream handler failed", self.address)
            finally:
                q.put(None)
                with self._lock:
                    self._send_queue, self._call = None, None
                call.cancel()
                self._set_state(False, False)
            if self._closed.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)

    def _set_state(self, connected: bool, primary: bool) -> None:
        changed = (connected, primary) != (self._connected, self._primary)
        self._connected, self._primary = connected, primary
        if connected:
            self._arbitrated.set()
        else:
            self._arbitrated.clear()
        if changed and self.on_connection is not None and not self._closed.is_set():
            try:
                self.on_connection(connected, primary)
            except Exception:
                log.exception("on_connection callback failed")

    def _handle(self, msg: p4runtime_pb2.StreamMessageResponse) -> bool:
        """Dispatch one stream message; returns True for an arbitration answer."""
        kind = msg.WhichOneof("update")
        if kind == "arbitration":
            arb = msg.arbitration
            primary = arb.status.code == code_pb2.OK
            if arb.HasField("election_id"):
                self.highest_election_id = (arb.election_id.high << 64) | arb.election_id.low
            if not primary:
                self._last_error = f"backup: {arb.status.message or 'another primary'}"
                if arb.status.code == code_pb2.NOT_FOUND and self._take_over():
                    return True
            if not self._connected or primary != self._primary:
                self.stream_generation += 1
            self._set_state(True, primary)
            return True
        if kind == "packet" and self.on_packet_in is not None:
            self.on_packet_in(msg.packet)
        elif kind == "digest" and self.on_digest is not None:
            self.on_digest(msg.digest)
            if self.auto_ack_digests:
                self.ack_digest(msg.digest)
        elif kind == "error" and self.on_stream_error is not None:
            self.on_stream_error(msg.error)
        else:
            if kind == "digest" and self.auto_ack_digests:
                self.ack_digest(msg.digest)
            if kind == "error":
                log.warning("%s: stream error: %s", self.address, msg.error)
            try:
                self.messages.put_nowait(msg)
            except queue.Full:
                self.dropped_messages += 1
        return False

    def _take_over(self) -> bool:
        """No primary: re-arbitrate above the highest id seen (spec 5.3). True when an
        update went out (its answer decides the state)."""
        if not self.take_over or self._closed.is_set() or self.election_id is None:
            return False
        wanted = max(self.election_id, (self.highest_election_id or 0) + 1)
        if wanted == self.election_id:
            return False  # already above it and still not primary: re-sending cannot help
        q = self._send_queue
        if q is None:
            return False
        log.info("%s: no primary (highest election id %s): taking over with %d",
                 self.address, self.highest_election_id, wanted)
        self.election_id = wanted
        q.put(self._arbitration_request())
        return True

    def _writer_id(self, what: str) -> int:
        """The election id a write carries; a client without one is a backup and does not
        attempt writes at all (the target would refuse them: spec 5.3, 15.3.1)."""
        election_id = self.election_id
        if election_id is None:
            raise P4RuntimeError(f"{what} not attempted: no election id (backup)",
                                 grpc.StatusCode.PERMISSION_DENIED)
        return election_id

    def _send(self, req: p4runtime_pb2.StreamMessageRequest) -> None:
        q = self._send_queue
        if q is None or not self._connected:
            raise P4RuntimeError(f"stream to {self.address} is not open",
                                 grpc.StatusCode.UNAVAILABLE)
        q.put(req)

    def packet_out(self, packet: p4runtime_pb2.PacketOut | Encodable) -> None:
        """Queue one PacketOut on the stream (fire and forget, as the spec has it)."""
        if not isinstance(packet, p4runtime_pb2.PacketOut):
            if self.schema is None:
                raise ValueError("a schema is needed to encode typed packets")
            packet = packet.encode(self.schema)
        self._send(p4runtime_pb2.StreamMessageRequest(packet=packet))

    def ack_digest(self, digest: p4runtime_pb2.DigestList) -> None:
        req = p4runtime_pb2.StreamMessageRequest()
        req.digest_ack.digest_id = digest.digest_id
        req.digest_ack.list_id = digest.list_id
        with contextlib.suppress(P4RuntimeError):  # stream gone: the target re-sends later
            self._send(req)

    # -- pipeline ---------------------------------------------------------------------------

    def set_pipeline(
        self,
        p4info: P4Schema | p4info_pb2.P4Info,
        device_config: bytes = b"",
        action: p4runtime_pb2.SetForwardingPipelineConfigRequest.Action = (
            p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT
        ),
        cookie: int | None = None,
    ) -> None:
        info = p4info.p4info if isinstance(p4info, P4Schema) else p4info
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, action=action,
        )
        req.election_id.CopyFrom(_uint128(self._writer_id("SetForwardingPipelineConfig")))
        if self.role:
            req.role = self.role
        req.config.p4info.CopyFrom(info)
        req.config.p4_device_config = device_config
        if cookie is not None:
            req.config.cookie.cookie = cookie
        try:
            self._stub.SetForwardingPipelineConfig(req, timeout=max(self.rpc_timeout, 60.0))
        except grpc.RpcError as err:
            raise _rpc_error("SetForwardingPipelineConfig", err) from err

    def get_pipeline(
        self,
        response_type: p4runtime_pb2.GetForwardingPipelineConfigRequest.ResponseType = (
            p4runtime_pb2.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE
        ),
    ) -> p4runtime_pb2.ForwardingPipelineConfig:
        req = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.device_id, response_type=response_type,
        )
        try:
            resp = self._stub.GetForwardingPipelineConfig(req, timeout=self.rpc_timeout)
        except grpc.RpcError as err:
            raise _rpc_error("GetForwardingPipelineConfig", err) from err
        return resp.config

    def pipeline_matches(self, p4info: P4Schema | p4info_pb2.P4Info) -> bool:
        """Does the device run a pipeline with exactly this P4Info?"""
        info = p4info.p4info if isinstance(p4info, P4Schema) else p4info
        try:
            config = self.get_pipeline()
        except P4RuntimeError as err:
            if err.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return False  # no pipeline installed yet
            raise
        return bool(config.p4info == info)

    def ensure_pipeline(self, p4info: P4Schema | p4info_pb2.P4Info,
                        device_config: bytes = b"", *, force: bool = False) -> bool:
        """Push the pipeline unless the device already runs it; True if it was pushed."""
        if not force and self.pipeline_matches(p4info):
            return False
        self.set_pipeline(p4info, device_config)
        return True

    def capabilities(self) -> str:
        try:
            resp = self._stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(),
                                           timeout=self.rpc_timeout)
        except grpc.RpcError as err:
            raise _rpc_error("Capabilities", err) from err
        return str(resp.p4runtime_api_version)

    # -- write ------------------------------------------------------------------------------

    def write(self, updates: Iterable[p4runtime_pb2.Update], *,
              atomicity: p4runtime_pb2.WriteRequest.Atomicity = (
                  p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR
              )) -> None:
        """Send updates in batches of `batch_size`; raise WriteError naming every failure.

        Batches after a transport failure (switch gone) are not attempted and are listed in
        `WriteError.not_attempted`."""
        updates = list(updates)
        election_id = self._writer_id("Write")
        errors: list[UpdateError] = []
        not_attempted: list[int] = []
        for start in range(0, len(updates), self.batch_size):
            batch = updates[start:start + self.batch_size]
            if not_attempted:
                not_attempted.extend(range(start, start + len(batch)))
                continue
            req = p4runtime_pb2.WriteRequest(
                device_id=self.device_id, atomicity=atomicity,
            )
            req.election_id.CopyFrom(_uint128(election_id))
            if self.role:
                req.role = self.role
            req.updates.extend(batch)
            try:
                self._stub.Write(req, timeout=self.rpc_timeout)
            except grpc.RpcError as err:
                batch_errors = self._update_errors(err, batch, start)
                if batch_errors is None:
                    code = err.code()
                    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.CANCELLED):
                        not_attempted.extend(range(start, start + len(batch)))
                        continue
                    if code == grpc.StatusCode.PERMISSION_DENIED:
                        raise _rpc_error("Write", err) from err
                    batch_errors = [
                        UpdateError(start + i, u, code.value[0], str(err.details()))
                        for i, u in enumerate(batch)
                    ]
                errors.extend(batch_errors)
        if errors or not_attempted:
            if not errors:
                raise WriteError(
                    [UpdateError(i, updates[i], code_pb2.UNAVAILABLE, "not attempted: "
                                 f"{self.address} unreachable") for i in not_attempted],
                    len(updates), not_attempted,
                )
            raise WriteError(errors, len(updates), not_attempted)

    @staticmethod
    def _update_errors(err: grpc.RpcError, batch: Sequence[p4runtime_pb2.Update], start: int,
                       ) -> list[UpdateError] | None:
        """Per-update errors from the status details (spec 12.3), or None if absent."""
        status = _status_details(err)
        if status is None or not status.details:
            return None
        out: list[UpdateError] = []
        for i, detail in enumerate(status.details):
            p4err = p4runtime_pb2.Error()
            if not detail.Unpack(p4err):
                continue
            if p4err.canonical_code != code_pb2.OK and i < len(batch):
                out.append(UpdateError(start + i, batch[i], p4err.canonical_code, p4err.message))
        return out

    def insert(self, entities: Iterable[EntityLike]) -> None:
        self.write(make_update(INSERT, e, self.schema) for e in entities)

    def modify(self, entities: Iterable[EntityLike]) -> None:
        self.write(make_update(MODIFY, e, self.schema) for e in entities)

    def delete(self, entities: Iterable[EntityLike]) -> None:
        self.write(make_update(DELETE, e, self.schema) for e in entities)

    # -- read -------------------------------------------------------------------------------

    def read(self, entities: Iterable[EntityLike]) -> Iterator[p4runtime_pb2.Entity]:
        """Stream every entity matching the (wildcard) entities, across all ReadResponses."""
        req = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        if self.role:
            req.role = self.role
        for e in entities:
            if not isinstance(e, p4runtime_pb2.Entity):
                if self.schema is None:
                    raise ValueError("a schema is needed to encode typed entities")
                e = e.encode(self.schema)
            req.entities.append(e)
        for resp in self.read_responses(req):
            yield from resp.entities

    def read_responses(self, request: p4runtime_pb2.ReadRequest,
                       ) -> Iterator[p4runtime_pb2.ReadResponse]:
        """A prepared ReadRequest (reused by periodic readers: building 50K entities costs
        more than reading them); its device id is set here."""
        request.device_id = self.device_id
        try:
            yield from self._stub.Read(request, timeout=self.rpc_timeout)
        except grpc.RpcError as err:
            raise _rpc_error("Read", err) from err

    def read_raw(self, request: p4runtime_pb2.ReadRequest | bytes) -> list[bytes]:
        """The serialized ReadResponses of a Read, unparsed, for callers that decode a
        known shape themselves (hbmon.dataplane.registers.decode_cells). A ReadRequest gets this
        client's device id; bytes are sent as they are (the caller set the device id)."""
        if isinstance(request, p4runtime_pb2.ReadRequest):
            request.device_id = self.device_id
            request = request.SerializeToString()
        # no deserializer: grpc hands over each response message's bytes
        read = self._channel.unary_stream(READ_METHOD)
        try:
            return list(read(request, timeout=self.rpc_timeout))
        except grpc.RpcError as err:
            raise _rpc_error("Read", err) from err

    def read_all(self, entities: Iterable[EntityLike]) -> list[p4runtime_pb2.Entity]:
        return list(self.read(entities))
