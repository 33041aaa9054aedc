"""Running the real `hbmon-kernel-target` for tests: a subprocess on a bpf_lab.Lab's ports,
listening on a free loopback port, stopped by PID; plus a raw StreamChannel client for
tests that look at individual stream messages (arbitration, errors, digests)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
LISTENING = "listening on "


def target_program() -> str:
    beside = Path(sys.executable).with_name("hbmon-kernel-target")
    if not beside.is_file():
        raise RuntimeError(f"{beside} missing: `pip install -e .` declares the console script")
    return str(beside)


class KernelTarget:
    """One `hbmon-kernel-target` process; `stop()` ends it by PID (idempotent)."""

    def __init__(self, ports: dict[int, str], *, device_id: int = 1, cpu_port: int = 255,
                 extra_args: Sequence[str] = (), user: int | None = None) -> None:
        self.command = [target_program()]
        for port, iface in sorted(ports.items()):
            self.command += ["-i", f"{port}@{iface}"]
        self.command += ["--grpc-addr", "127.0.0.1:0", "--device-id", str(device_id),
                         "--cpu-port", str(cpu_port), *extra_args]
        self.user = user
        self.device_id = device_id
        self.address: str | None = None
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self, timeout: float = 30.0) -> KernelTarget:
        """Start and wait (polling its output) until it serves; RuntimeError otherwise."""
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, user=self.user)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self._proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"target exited with {self._proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"target not serving after {timeout}s:\n{self.output}")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)
            if LISTENING in line and self.address is None:
                self.address = line.rsplit(LISTENING, 1)[1].strip()
                self._listening.set()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self._proc is not None
        rc = self._proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return rc

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode

    def __enter__(self) -> KernelTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawStream:
    """A StreamChannel driven by hand: send requests, wait for responses by kind."""

    def __init__(self, address: str,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = (grpc.insecure_channel(address) if credentials is None
                        else grpc.secure_channel(address, credentials))
        self.stub = p4runtime_pb2_grpc.P4RuntimeStub(self.channel)
        self._out: queue.SimpleQueue[p4runtime_pb2.StreamMessageRequest | None] = \
            queue.SimpleQueue()
        self._in: queue.Queue[Any] = queue.Queue()
        self.ended: grpc.RpcError | None = None
        self._call = self.stub.StreamChannel(iter(self._out.get, None))
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        try:
            for msg in self._call:
                self._in.put(msg)
        except grpc.RpcError as err:
            self.ended = err
        self._in.put(None)

    def send(self, req: p4runtime_pb2.StreamMessageRequest) -> None:
        self._out.put(req)

    def arbitrate(self, device_id: int = 1, election_id: int | None = 1,
                  role: str | None = None) -> None:
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = device_id
        if election_id is not None:
            req.arbitration.election_id.high = election_id >> 64
            req.arbitration.election_id.low = election_id & 0xFFFFFFFFFFFFFFFF
        if role is not None:
            req.arbitration.role.name = role
        self.send(req)

    def next(self, kind: str, timeout: float = 5.0,
             ) -> p4runtime_pb2.StreamMessageResponse | None:
        """The next message of `kind` (others are dropped); None when the stream ended or
        nothing came before the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self._in.get(timeout=left)
            except queue.Empty:
                return None
            if msg is None:
                self._in.put(None)  # stays ended
                return None
            if msg.WhichOneof("update") == kind:
                return msg  # type: ignore[no-any-return]

    def next_any(self, timeout: float = 5.0) -> p4runtime_pb2.StreamMessageResponse | None:
        """The next message whatever its kind (None: ended or deadline)."""
        try:
            msg = self._in.get(timeout=timeout)
        except queue.Empty:
            return None
        if msg is None:
            self._in.put(None)
        return msg  # type: ignore[no-any-return]

    def wait_end(self, timeout: float = 5.0) -> grpc.RpcError | None:
        self._thread.join(timeout)
        return self.ended

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._thread.join(5)
        self.channel.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def uint128(value: int) -> p4runtime_pb2.Uint128:
    return p4runtime_pb2.Uint128(high=value >> 64, low=value & 0xFFFFFFFFFFFFFFFF)


def wait_for(predicate: Any, timeout: float = 5.0, pause: float = 0.02) -> Any:
    """Poll `predicate()` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(pause)
