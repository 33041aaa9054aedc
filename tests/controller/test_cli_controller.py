"""`hbmon serve` end to end (subprocess, REST API, SIGTERM) against `hbmon-kernel-target
--datapath memory` (the kernel target's P4Runtime server over its in-memory data plane, a
subprocess too), and `hbmon shell` helpers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml
from click.testing import CliRunner
from hbmon.cli import main
from hbmon.cli.controller import shell_command
from hbmon.p4 import P4Schema
from hbmon.p4.client import P4RuntimeClient
from p4.v1 import p4runtime_pb2

P4INFO = Path(__file__).resolve().parents[2] / "p4src" / "build" / "heartbeat.p4info.txtpb"
HBMON = str(Path(sys.executable).with_name("hbmon"))
TARGET = str(Path(sys.executable).with_name("hbmon-kernel-target"))


def _start_memory_target() -> tuple[subprocess.Popen[bytes], int]:
    """`hbmon-kernel-target --datapath memory` on a free port: the process and its port."""
    proc = subprocess.Popen([TARGET, "--datapath", "memory", "--grpc-addr", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # the target prints it once serving
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if m is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"hbmon-kernel-target did not start: {line!r}")
    return proc, int(m.group(1))


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "hbmon.yaml"
    path.write_text(yaml.safe_dump({
        "interval_ms": 50, "poll_interval_ms": 100,
        "store": "sqlite:///hb.db",
        "api": {"port": 0},
        "switches": [{"name": "s1", "grpc": f"127.0.0.1:{port}", "p4info": str(P4INFO)}],
        "peers": [{"name": "web1", "address": "198.18.1.1", "peer_id": 1,
                   "mac": "02:00:00:00:01:01", "port": 1}],
    }))
    return path


def test_serve_runs_controller_and_api(tmp_path: Path) -> None:
    target, port = _start_memory_target()
    env = dict(os.environ, HBMON_API_TOKEN="test-token-123")
    proc = subprocess.Popen([HBMON, "serve", "-c", str(_config(tmp_path, port))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        url: list[str] = []
        found = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                lines.append(line)
                m = re.search(r"API: (http://\S+?)/api/v1", line)
                if m:
                    url.append(m.group(1))
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        assert found.wait(30), "".join(lines)
        base = url[0]
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=base, timeout=5) as http:
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "".join(lines)
                threading.Event().wait(0.05)
            peers = http.get("/api/v1/peers").json()
            assert [p["name"] for p in peers["peers"]] == ["web1"]
            r = http.post("/api/v1/peers", json={
                "name": "web2", "address": "198.18.1.2", "peer_id": 2,
                "mac": "02:00:00:00:01:02", "port": 1},
                headers={"Authorization": "Bearer test-token-123"})
            assert r.status_code == 201, r.text
            assert r.json()["index"] == 1
            switches = http.get("/api/v1/switches").json()["switches"]
            assert switches[0]["connected"] and switches[0]["primary"]
        # what the target holds, read by a client without an election id (spec 5.3 / 15.3.1:
        # a backup may read): two peers' ingress, id and request entries
        with P4RuntimeClient(f"127.0.0.1:{port}", 1, None,
                             schema=P4Schema.load(P4INFO)) as reader:
            assert reader.connect(timeout=10) is False  # a backup: not primary
            assert len(reader.read_all([p4runtime_pb2.Entity(
                table_entry=p4runtime_pb2.TableEntry())])) == 6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        for p in (proc, target):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert (tmp_path / "hb.db").exists()


def test_serve_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("switches: [{name: s1, grpc: nope}]\n")
    result = CliRunner().invoke(main, ["serve", "-c", str(bad)])
    assert result.exit_code != 0
    assert "switches[0].grpc" in result.output


def test_shell_command_never_pushes_a_pipeline(tmp_path: Path) -> None:
    cmd = shell_command(tmp_path, "127.0.0.1:9559", 1, 9)
    assert cmd[:3] == [str(tmp_path / "bin" / "python"), "-m", "p4runtime_sh"]
    assert "--config" not in cmd
    assert cmd[cmd.index("--election-id") + 1] == "0,9"


def test_shell_needs_a_switch_choice(tmp_path: Path) -> None:
    cfg = tmp_path / "two.yaml"
    cfg.write_text("switches: [{name: a, grpc: 'h:1'}, {name: b, grpc: 'h:2'}]\n")
    result = CliRunner().invoke(main, ["shell", "-c", str(cfg)])
    assert result.exit_code != 0 and "--switch" in result.output
    result = CliRunner().invoke(main, ["shell", "-c", str(cfg), "--switch", "zz"])
    assert "no switch named 'zz'" in result.output


def test_entry_point_lists_controller_commands() -> None:
    out = subprocess.run([HBMON, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in out and "shell" in out
