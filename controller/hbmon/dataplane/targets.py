"""Finding, starting, waiting for and stopping data-plane targets.

Two targets speak the same P4Runtime contract: bmv2's `simple_switch_grpc` (built by hand,
found on PATH or via $SIMPLE_SWITCH_GRPC) and the project's kernel target
`hbmon-kernel-target`. Both take the same port list (`-i PORT@IFACE`), gRPC address,
device id and CPU port. A started target is waited for by polling its gRPC port (never a
fixed sleep) and stopped by its PID.

The caller chooses the network namespace: a process started here runs in the caller's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

BMV2 = "bmv2"
KERNEL = "kernel"
KINDS = (BMV2, KERNEL)

DEFAULT_GRPC_ADDR = "127.0.0.1:9559"
DEFAULT_THRIFT_PORT = 9090
DEFAULT_DEVICE_ID = 1
DEFAULT_CPU_PORT = 255


class TargetError(RuntimeError):
    """A target could not be found, started or reached; the message says what to do."""


class TargetMissing(TargetError):
    """The target's program is not installed; `what` names it."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(f"{what} not found: {hint}")
        self.what = what
        self.hint = hint


def find_program(name: str, env_var: str | None = None) -> Path | None:
    """`$env_var` if set (must be executable), else `name` on PATH, else None."""
    if env_var:
        value = os.environ.get(env_var)
        if value:
            path = Path(value)
            if path.is_file() and os.access(path, os.X_OK):
                return path
            found = shutil.which(value)
            return Path(found) if found else None
    found = shutil.which(name)
    return Path(found) if found else None


def find_simple_switch_grpc() -> Path | None:
    return find_program("simple_switch_grpc", "SIMPLE_SWITCH_GRPC")


def find_p4c() -> Path | None:
    """The bmv2 v1model compiler: $P4C, else `p4c` (driver) or `p4c-bm2-ss` on PATH."""
    return find_program("p4c", "P4C") or find_program("p4c-bm2-ss")


def find_kernel_target() -> Path | None:
    """`hbmon-kernel-target` next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("hbmon-kernel-target")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    return find_program("hbmon-kernel-target")


def require(kind: str) -> Path:
    """The target program, or TargetMissing naming what is missing and where it is looked."""
    if kind == BMV2:
        path = find_simple_switch_grpc()
        if path is None:
            raise TargetMissing(
                "simple_switch_grpc",
                "not on PATH and $SIMPLE_SWITCH_GRPC unset (bmv2 with the P4Runtime server; "
                "e.g. `source /opt/p4/env.sh` where it was built by hand)")
        return path
    if kind == KERNEL:
        path = find_kernel_target()
        if path is None:
            raise TargetMissing("hbmon-kernel-target",
                                "not in the venv nor on PATH (run `make setup`)")
        return path
    raise TargetError(f"unknown target kind {kind!r} (known: {', '.join(KINDS)})")


def target_command(
    kind: str,
    ports: Mapping[int, str],
    *,
    program: Path | str | None = None,
    grpc_addr: str = DEFAULT_GRPC_ADDR,
    device_id: int = DEFAULT_DEVICE_ID,
    cpu_port: int = DEFAULT_CPU_PORT,
    thrift_port: int = DEFAULT_THRIFT_PORT,
    log_file: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that starts a target on `ports` (P4 port number -> interface)."""
    prog = str(program) if program is not None else str(require(kind))
    port_args = [a for port, iface in sorted(ports.items()) for a in ("-i", f"{port}@{iface}")]
    if kind == BMV2:
        cmd = [prog, "--no-p4", "--device-id", str(device_id),
               "--thrift-port", str(thrift_port), *port_args]
        if log_file is not None:  # bmv2's own trace (slow); off unless asked
            cmd += ["--log-file", str(log_file), "--log-flush"]
        return [*cmd, *extra_args, "--", "--grpc-server-addr", grpc_addr,
                "--cpu-port", str(cpu_port)]
    if kind == KERNEL:
        return [prog, *port_args, "--grpc-addr", grpc_addr, "--device-id", str(device_id),
                "--cpu-port", str(cpu_port), *extra_args]
    raise TargetError(f"unknown target kind {kind!r} (known: {', '.join(KINDS)})")


@dataclass
class TargetProcess:
    """A running target; `stop()` ends it by PID (idempotent)."""

    kind: str
    process: subprocess.Popen[bytes]
    command: list[str]
    grpc_addr: str
    device_id: int
    cpu_port: int
    thrift_port: int | None
    output_path: Path | None
    _output: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output_tail(self, lines: int = 30) -> str:
        if self.output_path is None or not self.output_path.exists():
            return ""
        text = self.output_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        rc = stop_process(self.process, timeout)
        if self._output is not None:
            self._output.close()
            self._output = None
        return rc

    def __enter__(self) -> TargetProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """End one process we started, by its PID: SIGTERM, wait, SIGKILL if it lingers."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        return process.wait(timeout)


def start_target(
    kind: str,
    ports: Mapping[int, str],
    *,
    grpc_addr: str = DEFAULT_GRPC_ADDR,
    device_id: int = DEFAULT_DEVICE_ID,
    cpu_port: int = DEFAULT_CPU_PORT,
    thrift_port: int = DEFAULT_THRIFT_PORT,
    output_path: Path | None = None,
    log_file: Path | None = None,
    program: Path | str | None = None,
    extra_args: Sequence[str] = (),
    wait: float | None = 30.0,
) -> TargetProcess:
    """Start a target and (unless `wait=None`) wait until its gRPC server answers.

    Its stdout/stderr go to `output_path` (else are discarded). On a failed start the
    process is stopped and TargetError carries the end of its output."""
    cmd = target_command(kind, ports, program=program, grpc_addr=grpc_addr,
                         device_id=device_id, cpu_port=cpu_port, thrift_port=thrift_port,
                         log_file=log_file, extra_args=extra_args)
    out: IO[bytes] | None = None
    if output_path is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        out = output_path.open("wb")
    try:
        # its own session: a SIGINT meant for the caller's process group does not kill
        # the target under a controller that is still using it; the caller stops it
        proc = subprocess.Popen(cmd, stdout=out or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        if out is not None:
            out.close()
        raise TargetError(f"cannot start {cmd[0]}: {exc}") from exc
    target = TargetProcess(kind, proc, cmd, grpc_addr, device_id, cpu_port,
                           thrift_port if kind == BMV2 else None, output_path, out)
    if wait is not None:
        try:
            wait_for_grpc(grpc_addr, wait, target)
        except BaseException:
            target.stop()
            raise
    return target


def wait_for_grpc(address: str, timeout: float, target: TargetProcess | None = None,
                  attempt: float = 0.5) -> float:
    """Poll `address` until a gRPC connection is READY; returns the seconds it took.

    Each attempt is bounded by `attempt` seconds; a target process that exits meanwhile
    ends the wait at once with its output in the error."""
    start = time.monotonic()
    deadline = start + timeout
    last = "no attempt"
    while True:
        if target is not None and not target.running():
            raise TargetError(
                f"{target.kind} target exited with status {target.process.returncode} before "
                f"{address} answered; command: {' '.join(target.command)}\n"
                f"{target.output_tail()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            tail = f"\n{target.output_tail()}" if target is not None else ""
            raise TargetError(f"gRPC server {address} not ready after {timeout:.1f}s "
                              f"({last}){tail}")
        channel = grpc.insecure_channel(address)
        try:
            grpc.channel_ready_future(channel).result(timeout=min(attempt, remaining))
            return time.monotonic() - start
        except grpc.FutureTimeoutError:
            last = "connection not ready"
        finally:
            channel.close()
