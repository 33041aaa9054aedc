"""hbmon-kernel-target: the kernel data plane (XDP/tc eBPF) behind a P4Runtime server.

    hbmon-kernel-target -i 1@veth0 -i 2@veth1 [--grpc-addr 127.0.0.1:9559] [--device-id 1]
                        [--cpu-port 255] [--p4info FILE] [--bpf-dir DIR] [--log-level info]
                        [--tls-cert FILE --tls-key FILE [--tls-ca FILE] | --insecure]
                        [--max-streams 32] [--arbitration-timeout 10]
                        [--max-message-bytes 33554432]

Started like bmv2's simple_switch_grpc; it implements the P4Info of p4src/ (docs/dataplane.md)
with P4Runtime v1.4 semantics: arbitration, pipeline config (only this P4Info is accepted),
Write/Read of the contract's tables, multicast groups, registers, counters and digest
config, PacketOut, and DigestList + ack on the stream. It binds to loopback unless told
otherwise; with --tls-cert/--tls-key it serves TLS, and with --tls-ca also requires a client
certificate signed by that CA (mutual TLS: the only client authentication P4Runtime has).
It refuses to start (exit 2, a clear message) on a non-loopback address without TLS unless
told --insecure, when an interface is missing or BPF is not permitted, and detaches
everything it attached on SIGINT/SIGTERM. Once serving, it prints `... listening on
HOST:PORT` (port 0 = any free one).

`--datapath memory` serves the same P4Runtime device over an in-memory data plane
(hbmon_kernel.memory.MemoryDatapath: tables, groups, registers, counters and fan-out rounds
as the BPF maps keep them, no BPF, no root, no interfaces): a simulator to run `hbmon serve`
against anywhere. Its ports are `--ports 1,2` (default) or `-i PORT@NAME` (NAME ignored);
`--answering` makes every peer answer each request at once (healthy simulated peers), else
nothing answers and peers go DOWN after detect_mult rounds, as on a wire without peers.

Bounds, so that no client can starve the others: at most --max-streams StreamChannels at
once (the next one ends at once with RESOURCE_EXHAUSTED); a stream that has not sent its
first MasterArbitrationUpdate within --arbitration-timeout seconds ends with
DEADLINE_EXCEEDED; the gRPC thread pool has UNARY_WORKERS threads beyond the stream cap, so
Write/Read/pipeline calls always find one; and no message may exceed --max-message-bytes
(gRPC answers RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from hbmon.assets import p4_output
from hbmon.sdnotify import notify
from p4.v1 import p4runtime_pb2

from .p4rt_device import KernelDevice, WriteFailed, stream_error
from .p4rt_state import P4RTError, Pipeline, Session

log = logging.getLogger("hbmon_kernel.server")

P4RUNTIME_API_VERSION = "1.4.1"
SERVICE = "p4.v1.P4Runtime"
# The largest message hbmon's controller sends at 65,536 peers is a Write of the whole peer
# table in one batch (196,608 updates, 10.4 MB; its default batches of 1,000 are 52 KB, the
# largest allowed batch of 100,000 is 5.3 MB); a cell ReadRequest is at most 3.2 MB and our
# ReadResponses are cut at 1 MiB (p4rt_wire.MAX_RESPONSE_BYTES). 32 MiB is three times the
# largest, and an eighth of PI's 256 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_STREAMS = 32  # a few controllers, shells and tools per device
DEFAULT_ARBITRATION_TIMEOUT = 10.0  # seconds from stream start to its first arbitration
# Each StreamChannel holds one pool thread for its lifetime: the pool has this many threads
# beyond --max-streams, for unary RPCs and for refusing streams over the cap.
UNARY_WORKERS = 16
P4INFO_NAME = "heartbeat.p4info.txtpb"
EXIT_REFUSED = 2

_STATUS_BY_CODE = {sc.value[0]: sc for sc in grpc.StatusCode}


def grpc_code(code: int) -> grpc.StatusCode:
    return _STATUS_BY_CODE.get(code, grpc.StatusCode.UNKNOWN)


def error_details(message: str, errors: Sequence[P4RTError | None]) -> bytes:
    """google.rpc.Status with one p4.v1.Error per batch element (spec 12.3 / 13.3)."""
    status = status_pb2.Status(code=code_pb2.UNKNOWN, message=message)
    for e in errors:
        err = p4runtime_pb2.Error(canonical_code=code_pb2.OK if e is None else e.code)
        if e is not None:
            err.message = e.message
        status.details.add().Pack(err)
    return status.SerializeToString()


def _abort_batch(context: grpc.ServicerContext, what: str,
                 errors: Sequence[P4RTError | None]) -> None:
    failed = [e for e in errors if e is not None]
    message = f"{what}: {len(failed)} of {len(errors)} failed; first: {failed[0]}"
    context.set_trailing_metadata((("grpc-status-details-bin", error_details(message, errors)),))
    context.abort(grpc.StatusCode.UNKNOWN, message)


class _Sink:
    """A StreamChannel's outgoing queue: messages, an error that ends it, or the end."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def send(self, msg: p4runtime_pb2.StreamMessageResponse) -> None:
        self.queue.put(msg)

    def fail(self, exc: P4RTError) -> None:
        self.queue.put(exc)

    def close(self) -> None:
        self.queue.put(None)


class P4RuntimeService:
    """The P4Runtime gRPC methods over a KernelDevice."""

    def __init__(self, device: KernelDevice, *, max_streams: int = DEFAULT_MAX_STREAMS,
                 arbitration_timeout: float = DEFAULT_ARBITRATION_TIMEOUT) -> None:
        self.device = device
        self.max_streams = max_streams
        self.arbitration_timeout = arbitration_timeout
        self._streams = 0  # StreamChannels open now, arbitrated or not
        self._streams_lock = threading.Lock()

    def Capabilities(self, request: p4runtime_pb2.CapabilitiesRequest,
                     context: grpc.ServicerContext) -> p4runtime_pb2.CapabilitiesResponse:
        return p4runtime_pb2.CapabilitiesResponse(p4runtime_api_version=P4RUNTIME_API_VERSION)

    def SetForwardingPipelineConfig(
        self, request: p4runtime_pb2.SetForwardingPipelineConfigRequest,
        context: grpc.ServicerContext,
    ) -> p4runtime_pb2.SetForwardingPipelineConfigResponse:
        try:
            self.device.set_pipeline(request)
        except P4RTError as exc:
            log.info("SetForwardingPipelineConfig refused: %s", exc)
            context.abort(grpc_code(exc.code), exc.message)
        return p4runtime_pb2.SetForwardingPipelineConfigResponse()

    def GetForwardingPipelineConfig(
        self, request: p4runtime_pb2.GetForwardingPipelineConfigRequest,
        context: grpc.ServicerContext,
    ) -> p4runtime_pb2.GetForwardingPipelineConfigResponse:
        try:
            return self.device.get_pipeline(request)
        except P4RTError as exc:
            context.abort(grpc_code(exc.code), exc.message)
            raise  # not reached: abort raises

    def Write(self, request: p4runtime_pb2.WriteRequest,
              context: grpc.ServicerContext) -> p4runtime_pb2.WriteResponse:
        try:
            self.device.write(request)
        except P4RTError as exc:
            context.abort(grpc_code(exc.code), exc.message)
        except WriteFailed as exc:
            log.debug("Write: %s", exc)
            _abort_batch(context, "Write", exc.results)
        return p4runtime_pb2.WriteResponse()

    def Read(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        # the serialized ReadRequest: the device memoises plans by these bytes
        try:
            jobs, errors = self.device.read_plan_bytes(request)
        except P4RTError as exc:
            context.abort(grpc_code(exc.code), exc.message)
            return
        yield from self.device.encode(jobs)
        if errors:
            _abort_batch(context, "Read", errors)

    def StreamChannel(self, requests: Iterator[p4runtime_pb2.StreamMessageRequest],
                      context: grpc.ServicerContext,
                      ) -> Iterator[p4runtime_pb2.StreamMessageResponse]:
        with self._streams_lock:
            admitted = self._streams < self.max_streams
            if admitted:
                self._streams += 1
        if not admitted:
            log.warning("stream of %s refused: %d streams open (--max-streams)",
                        context.peer(), self.max_streams)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many streams: {self.max_streams} open (--max-streams)")
        try:
            yield from self._serve_stream(requests, context)
        finally:
            with self._streams_lock:
                self._streams -= 1

    def _serve_stream(self, requests: Iterator[p4runtime_pb2.StreamMessageRequest],
                      context: grpc.ServicerContext,
                      ) -> Iterator[p4runtime_pb2.StreamMessageResponse]:
        sink = _Sink()
        session = Session(sink, peer=context.peer())
        arbitrated = threading.Event()  # set by the reader after the first arbitration
        deadline = time.monotonic() + self.arbitration_timeout
        context.add_callback(sink.close)
        reader = threading.Thread(target=self._read_stream,
                                  args=(requests, session, sink, arbitrated),
                                  name=f"stream-{context.peer()}", daemon=True)
        reader.start()
        try:
            while True:
                if arbitrated.is_set():
                    item = sink.queue.get()
                else:
                    # an unarbitrated stream holds a slot and a thread: bounded in time
                    left = deadline - time.monotonic()
                    if left <= 0 and not arbitrated.is_set():
                        log.info("stream of %s ended: no MasterArbitrationUpdate within "
                                 "%gs", session.peer, self.arbitration_timeout)
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"no MasterArbitrationUpdate within "
                                      f"{self.arbitration_timeout:g}s of the stream's start "
                                      f"(--arbitration-timeout)")
                    try:
                        item = sink.queue.get(timeout=max(left, 0.0))
                    except queue.Empty:
                        continue
                if item is None:
                    return
                if isinstance(item, P4RTError):
                    log.info("stream of %s ended: %s", session.describe(), item)
                    context.abort(grpc_code(item.code), item.message)
                yield item
        finally:
            self.device.arbiter.leave(session)
            log.info("stream closed: %s", session.describe())

    def _read_stream(self, requests: Iterator[p4runtime_pb2.StreamMessageRequest],
                     session: Session, sink: _Sink, arbitrated: threading.Event) -> None:
        device = self.device
        try:
            for req in requests:
                kind = req.WhichOneof("update")
                if kind == "arbitration":
                    try:
                        device.arbiter.arbitrate(session, req.arbitration)
                    except P4RTError as exc:
                        sink.fail(exc)
                        return
                    arbitrated.set()
                    log.info("arbitration: %s is %s", session.describe(),
                             "primary" if device.arbiter.is_primary(session) else "backup")
                elif kind == "packet":
                    try:
                        device.packet_out(session, req.packet)
                    except P4RTError as exc:
                        log.info("PacketOut dropped: %s", exc)
                        sink.send(stream_error(exc, packet=req.packet))
                elif kind == "digest_ack":
                    try:
                        device.digest_ack(session, req.digest_ack)
                    except P4RTError as exc:
                        sink.send(stream_error(exc, ack=req.digest_ack))
                else:
                    sink.send(stream_error(P4RTError(
                        code_pb2.UNIMPLEMENTED,
                        f"stream message {kind or 'without content'} is not supported")))
        except grpc.RpcError:
            pass  # the client went away
        except Exception:
            log.exception("stream reader failed")
        finally:
            sink.close()


def _identity(data: bytes) -> bytes:
    return data


def service_handler(service: P4RuntimeService) -> grpc.GenericRpcHandler:
    """The P4Runtime service, with Read requests and responses as wire bytes."""
    P = p4runtime_pb2
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Write": grpc.unary_unary_rpc_method_handler(
            service.Write, P.WriteRequest.FromString, P.WriteResponse.SerializeToString),
        "Read": grpc.unary_stream_rpc_method_handler(
            service.Read, _identity, _identity),
        "SetForwardingPipelineConfig": grpc.unary_unary_rpc_method_handler(
            service.SetForwardingPipelineConfig, P.SetForwardingPipelineConfigRequest.FromString,
            P.SetForwardingPipelineConfigResponse.SerializeToString),
        "GetForwardingPipelineConfig": grpc.unary_unary_rpc_method_handler(
            service.GetForwardingPipelineConfig, P.GetForwardingPipelineConfigRequest.FromString,
            P.GetForwardingPipelineConfigResponse.SerializeToString),
        "StreamChannel": grpc.stream_stream_rpc_method_handler(
            service.StreamChannel, P.StreamMessageRequest.FromString,
            P.StreamMessageResponse.SerializeToString),
        "Capabilities": grpc.unary_unary_rpc_method_handler(
            service.Capabilities, P.CapabilitiesRequest.FromString,
            P.CapabilitiesResponse.SerializeToString),
    })


def start_server(device: KernelDevice, address: str, *,
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 arbitration_timeout: float = DEFAULT_ARBITRATION_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ) -> tuple[grpc.Server, int]:
    """Serve `device` on `address` (TLS when `credentials` are given); returns the server
    and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_streams + UNARY_WORKERS,
                                   thread_name_prefix="p4rt"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)],
        interceptors=interceptors,
    )
    service = P4RuntimeService(device, max_streams=max_streams,
                               arbitration_timeout=arbitration_timeout)
    server.add_generic_rpc_handlers((service_handler(service),))
    # both raise RuntimeError when they cannot bind
    port = (server.add_secure_port(address, credentials) if credentials is not None
            else server.add_insecure_port(address))
    if not port:
        raise RuntimeError(f"cannot listen on {address}")
    server.start()
    return server, port


def server_credentials(cert: Path, key: Path, ca: Path | None) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=ca.read_bytes() if ca is not None else None,
        require_client_auth=ca is not None)


def is_loopback(address: str) -> bool:
    """Whether a gRPC listen address (`host:port`, `[v6]:port`, `unix:PATH`) is reachable
    only from this host. Names other than `localhost` count as not loopback: what they
    resolve to may change."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# command line


def default_p4info() -> Path | None:
    """$HBMON_P4INFO, else the packaged copy (a wheel), else the checkout's p4src/build."""
    env = os.environ.get("HBMON_P4INFO")
    if env:
        return Path(env)
    found = p4_output(P4INFO_NAME)
    return found if found.is_file() else None


def _port_spec(text: str) -> tuple[int, str]:
    port, sep, iface = text.partition("@")
    if not sep or not iface:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT@INTERFACE, e.g. 1@veth0")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 511:
        raise argparse.ArgumentTypeError(f"{text!r}: port {number} outside 0..511 (9 bits)")
    return number, iface


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="hbmon-kernel-target",
        description="The hbmon kernel data plane (XDP/tc eBPF) behind a P4Runtime server.")
    ap.add_argument("-i", "--interface", dest="ports", action="append", type=_port_spec,
                    metavar="PORT@IFACE",
                    help="a data-plane port: P4 port number @ interface (repeat per port; "
                         "required with --datapath bpf)")
    ap.add_argument("--datapath", choices=["bpf", "memory"], default="bpf",
                    help="bpf: the kernel data plane (XDP/tc, needs root); memory: the same "
                         "device over an in-memory data plane, a simulator (default bpf)")
    ap.add_argument("--ports", dest="ports_list", default=None, metavar="LIST",
                    help="--datapath memory: the port numbers, comma-separated (default 1,2)")
    ap.add_argument("--answering", action="store_true",
                    help="--datapath memory: every peer answers each request at once")
    ap.add_argument("--grpc-addr", default="127.0.0.1:9559",
                    help="P4Runtime listen address (default 127.0.0.1:9559; port 0 = any)")
    ap.add_argument("--device-id", type=int, default=1, help="P4Runtime device id (default 1)")
    ap.add_argument("--cpu-port", type=int, default=255,
                    help="CPU port number (packet-out; default 255)")
    ap.add_argument("--p4info", type=Path, default=None,
                    help="the P4Info the target implements (default: $HBMON_P4INFO, else "
                         f"p4src/build/{P4INFO_NAME})")
    ap.add_argument("--bpf-dir", type=Path, default=None,
                    help="directory of hb_xdp.o/hb_tc.o (default: $HBMON_BPF_DIR, build/bpf)")
    ap.add_argument("--burst-gap-us", type=int, default=None,
                    help="spacing of the fan-out's 128-replica bursts within a round, in us "
                         "(default 80; raise it when the peers' side "
                         "drops bursts, e.g. a veth with XDP on its far end)")
    ap.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                    help="serve TLS with this certificate chain (PEM; needs --tls-key)")
    ap.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                    help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                    help="require client certificates signed by this CA (PEM): mutual TLS")
    ap.add_argument("--insecure", action="store_true",
                    help="allow plaintext P4Runtime on a non-loopback address (anyone who "
                         "can reach it can become primary and send PacketOut)")
    ap.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                    help="StreamChannels open at once; more are refused with "
                         f"RESOURCE_EXHAUSTED (default {DEFAULT_MAX_STREAMS})")
    ap.add_argument("--arbitration-timeout", type=float, default=DEFAULT_ARBITRATION_TIMEOUT,
                    metavar="SECONDS",
                    help="a stream without a MasterArbitrationUpdate this long after its "
                         "start ends with DEADLINE_EXCEEDED (default "
                         f"{DEFAULT_ARBITRATION_TIMEOUT:g})")
    ap.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                    metavar="BYTES",
                    help="largest gRPC message received or sent (default "
                         f"{DEFAULT_MAX_MESSAGE_BYTES}, 32 MiB)")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    given = list(args.ports or [])
    if args.datapath == "bpf":
        if not given:
            ap.error("the following arguments are required: -i/--interface")
        if args.ports_list is not None or args.answering:
            ap.error("--ports and --answering go with --datapath memory")
    elif args.ports_list is not None:
        if given:
            ap.error("--ports and -i/--interface exclude each other")
        try:
            given = [_port_spec(f"{p.strip()}@none{p.strip()}")
                     for p in args.ports_list.split(",") if p.strip()]
        except argparse.ArgumentTypeError as exc:
            ap.error(f"--ports {args.ports_list!r}: {exc}")
    elif not given:
        given = [(1, "none1"), (2, "none2")]
    ports: dict[int, str] = {}
    for number, iface in given:
        if number in ports:
            ap.error(f"port {number} given twice ({ports[number]}, {iface})")
        if iface in ports.values():
            ap.error(f"interface {iface} given twice")
        if number == args.cpu_port:
            ap.error(f"port {number} is the CPU port (--cpu-port {args.cpu_port})")
        ports[number] = iface
    args.ports = ports
    if not 0 <= args.cpu_port <= 511:
        ap.error(f"--cpu-port {args.cpu_port} outside 0..511")
    if args.device_id < 0:
        ap.error("--device-id must not be negative")
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    if args.tls_ca is not None and args.tls_cert is None:
        ap.error("--tls-ca needs --tls-cert and --tls-key (the server side of mutual TLS)")
    if args.max_streams < 1:
        ap.error("--max-streams must be at least 1")
    if not args.arbitration_timeout > 0:
        ap.error("--arbitration-timeout must be positive")
    if args.max_message_bytes < 64 * 1024:
        ap.error("--max-message-bytes must be at least 65536")
    return args


class _Stop(Exception):
    """A signal arrived while starting: unwind through every clean-up."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def refuse(message: str) -> int:
        print(f"hbmon-kernel-target: error: {message}", file=sys.stderr, flush=True)
        return EXIT_REFUSED

    stop = threading.Event()
    serving = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if not serving:
            raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if args.tls_cert is None and not args.insecure and not is_loopback(args.grpc_addr):
        return refuse(f"--grpc-addr {args.grpc_addr} is not a loopback address: P4Runtime "
                      "without TLS lets anyone who reaches it become primary; give "
                      "--tls-cert/--tls-key (and --tls-ca for client certificates), or "
                      "--insecure")
    credentials: grpc.ServerCredentials | None = None
    if args.tls_cert is not None:
        try:
            credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_ca)
        except OSError as exc:
            return refuse(f"cannot read the TLS files: {exc}")
    p4info_path = args.p4info or default_p4info()
    if p4info_path is None:
        return refuse(f"no P4Info: {P4INFO_NAME} not found in p4src/build/; pass --p4info")
    try:
        pipeline = Pipeline.load(p4info_path)
    except (OSError, ValueError) as exc:
        return refuse(f"cannot load the P4Info {p4info_path}: {exc}")

    from .datapath import (  # needs libbpf; after the checks
        BURST_GAP_NS,
        Datapath,
        DatapathError,
    )
    from .memory import MemoryDatapath

    sizes = [r.size for r in pipeline.registers.values()]
    max_peers = max(sizes) if sizes else 65536
    dp: Datapath | MemoryDatapath
    if args.datapath == "memory":
        # the simulator keeps time itself: a round every period, as the kernel's timer
        dp = MemoryDatapath(args.ports, cpu_port=args.cpu_port, max_peers=max_peers,
                            keep_time=True, answering=args.answering)
    else:
        dp = Datapath(args.ports, cpu_port=args.cpu_port, bpf_dir=args.bpf_dir,
                      max_peers=max_peers,
                      burst_gap_ns=(args.burst_gap_us * 1000 if args.burst_gap_us is not None
                                    else BURST_GAP_NS))
    server: grpc.Server | None = None
    pump: threading.Thread | None = None
    try:
        try:
            dp.start()
        except DatapathError as exc:
            return refuse(str(exc))
        try:
            device = KernelDevice(dp, pipeline, device_id=args.device_id, ports=args.ports,
                                  cpu_port=args.cpu_port)
        except ValueError as exc:
            return refuse(str(exc))
        try:
            server, port = start_server(
                device, args.grpc_addr, credentials=credentials, max_streams=args.max_streams,
                arbitration_timeout=args.arbitration_timeout,
                max_message_bytes=args.max_message_bytes)
        except RuntimeError as exc:
            return refuse(f"cannot listen on {args.grpc_addr}: {exc}")
        pump = threading.Thread(target=device.pump_events, args=(stop,), name="digests",
                                daemon=True)
        pump.start()
        serving = True
        host = args.grpc_addr.rsplit(":", 1)[0]
        ports = ", ".join(f"{p}@{i}" for p, i in sorted(args.ports.items()))
        security = ("plaintext" if credentials is None else
                    "TLS, client certificates required" if args.tls_ca is not None else "TLS")
        kind = "" if args.datapath == "bpf" else " (in-memory data plane)"
        print(f"hbmon-kernel-target{kind}: device {args.device_id}, ports {ports}, CPU port "
              f"{args.cpu_port}; P4Runtime server ({security}) listening on {host}:{port}",
              flush=True)
        notify("READY=1", f"STATUS=P4Runtime ({security}) on {host}:{port}, ports {ports}")
        stop.wait()
        log.info("stopping")
        notify("STOPPING=1")
        return 0
    except _Stop as exc:
        log.info("stopped by %s while starting", exc)
        return 0
    finally:
        stop.set()
        if server is not None:
            server.stop(grace=1.0).wait(5)
        if pump is not None:
            pump.join(timeout=5)
        dp.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
