"""hbmon.dataplane.targets: command lines, program lookup, gRPC readiness polling, stop by PID; and
tools/ptf_run.py's behaviour when bmv2 is absent."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from hbmon.dataplane import targets

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bmv2_command_line() -> None:
    cmd = targets.target_command(targets.BMV2, {2: "vb", 1: "va"}, program="/x/ssg",
                                 grpc_addr="127.0.0.1:50001", device_id=1, cpu_port=255,
                                 thrift_port=9091)
    assert cmd == ["/x/ssg", "--no-p4", "--device-id", "1", "--thrift-port", "9091",
                   "-i", "1@va", "-i", "2@vb", "--",
                   "--grpc-server-addr", "127.0.0.1:50001", "--cpu-port", "255"]


def test_kernel_command_line_has_the_same_flags() -> None:
    cmd = targets.target_command(targets.KERNEL, {1: "va", 2: "vb"}, program="hkt",
                                 grpc_addr="127.0.0.1:50002", device_id=1, cpu_port=255)
    assert cmd == ["hkt", "-i", "1@va", "-i", "2@vb", "--grpc-addr", "127.0.0.1:50002",
                   "--device-id", "1", "--cpu-port", "255"]


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(targets.TargetError, match="unknown target kind"):
        targets.target_command("tofino", {}, program="x")


def test_find_program_prefers_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    prog = tmp_path / "simple_switch_grpc"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SIMPLE_SWITCH_GRPC", str(prog))
    assert targets.find_simple_switch_grpc() == prog
    monkeypatch.setenv("SIMPLE_SWITCH_GRPC", str(tmp_path / "nope"))
    assert targets.find_simple_switch_grpc() is None


def test_require_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMPLE_SWITCH_GRPC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(targets.TargetMissing) as err:
        targets.require(targets.BMV2)
    assert err.value.what == "simple_switch_grpc"
    assert "SIMPLE_SWITCH_GRPC" in str(err.value)


def test_wait_for_grpc_sees_a_real_server() -> None:
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        took = targets.wait_for_grpc(f"127.0.0.1:{port}", timeout=10)
        assert took < 10
    finally:
        server.stop(None)


def test_wait_for_grpc_gives_up_at_the_deadline() -> None:
    with pytest.raises(targets.TargetError, match=r"not ready after 1\.0s"):
        targets.wait_for_grpc(f"127.0.0.1:{free_port()}", timeout=1.0, attempt=0.2)


def test_a_target_that_exits_ends_the_wait_with_its_output(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    prog = tmp_path / "fake-target"
    prog.write_text("#!/bin/sh\necho 'cannot open port 1'\nexit 3\n")
    prog.chmod(0o755)
    with pytest.raises(targets.TargetError) as err:
        targets.start_target(targets.KERNEL, {1: "x"}, program=prog, output_path=out,
                             grpc_addr=f"127.0.0.1:{free_port()}", wait=30)
    assert "exited with status 3" in str(err.value)
    assert "cannot open port 1" in str(err.value)


def test_stop_by_pid_terminates_then_kills(tmp_path: Path) -> None:
    prog = tmp_path / "stubborn"
    # ignores SIGTERM: stop() must fall back to SIGKILL after its timeout
    prog.write_text("#!/bin/sh\ntrap '' TERM\necho ready\nwhile :; do sleep 1; done\n")
    prog.chmod(0o755)
    target = targets.start_target(targets.KERNEL, {}, program=prog, wait=None,
                                  output_path=tmp_path / "o")
    deadline = time.monotonic() + 10
    while "ready" not in target.output_tail() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the trap's installation, bounded by the deadline
    assert target.running()
    rc = target.stop(timeout=0.5)
    assert rc == -9
    assert not target.running()
    assert target.stop() == -9  # idempotent


def test_ptf_runner_skips_cleanly_without_bmv2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIMPLE_SWITCH_GRPC"}
    env["PATH"] = str(tmp_path)  # nothing to find: the runner must stop before using anything
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ptf_run.py"),
                           "--target", "bmv2"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIPPED: PTF suite on bmv2 not run: simple_switch_grpc not found" in proc.stdout
