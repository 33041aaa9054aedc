"""The systemd units in packaging/systemd/ as systemd would run them (issue 14).

No systemd is PID 1 here, so the test does what the unit tells systemd to do: it checks the
units with `systemd-analyze verify`, then runs each ExecStart= with the EnvironmentFile=
expanded as systemd expands `$VAR` (split on whitespace), a $NOTIFY_SOCKET of its own
(Type=notify: the service is started only once READY=1 arrives), and stops it with the
unit's KillSignal= within TimeoutStopSec=. Paths /usr/local/bin and /etc are the only
substitutions (to this venv and to files the test writes)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hbmon_topo.stack import free_tcp_port
from kernel.bpf_lab import Lab

from .test_responder import IP_RECVTTL, _recv_ttl

pytestmark = pytest.mark.netns

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
BIN = Path(sys.executable).parent


def unit(name: str) -> dict[str, str]:
    """Key -> value of a unit file (the last assignment wins, as for systemd's scalars)."""
    values: dict[str, str] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def exec_start(name: str, env: dict[str, str], etc: Path) -> list[str]:
    """ExecStart= as systemd would run it: `$VAR` is split on whitespace, `${VAR}` not."""
    line = unit(name)["ExecStart"].replace("/usr/local/bin/", f"{BIN}/")
    line = line.replace("/etc/", f"{etc}/")
    argv: list[str] = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$(\w+)", word)
        argv.extend(env.get(m.group(1), "").split() if m else [word])
    return argv


def environment_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


class Notifications:
    """The $NOTIFY_SOCKET a service manager listens on."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_for(self, assignment: str, timeout: float) -> str:
        self.sock.settimeout(timeout)
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                pytest.fail(f"no {assignment} within {timeout:.0f}s")
            if assignment in message.split("\n"):
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify.sock")
    yield n
    n.close()


ALL = ("hbmon-kernel-target.service", "hbmon.service", "hbmon-responder.service")


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in ALL:
        text = (UNITS / name).read_text().replace("/usr/local/bin/", f"{BIN}/")
        text = text.replace("/etc/default/hbmon-kernel-target",
                            str(UNITS / "hbmon-kernel-target.default"))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *(str(tmp_path / name) for name in ALL)],
                          capture_output=True, text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines()
            if "hbmon" in line]  # warnings about our files (parse errors, missing binaries)
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr
    for name in ALL:
        assert unit(name)["Type"] == "notify"


def run_until_ready(argv: list[str], notifications: Notifications, timeout: float,
                    log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": notifications.path,
                                     "HOME": "/nonexistent"})
    try:
        notifications.wait_for("READY=1", timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise AssertionError(log.read_text()) from None
    return proc


def stop_as_systemd(name: str, proc: subprocess.Popen[bytes], notifications: Notifications,
                    log: Path) -> None:
    u = unit(name)
    proc.send_signal(getattr(signal, u.get("KillSignal", "SIGTERM")))
    notifications.wait_for("STOPPING=1", float(u["TimeoutStopSec"]))
    try:
        code = proc.wait(float(u["TimeoutStopSec"]))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{name}: still running after TimeoutStopSec")
    assert code == 0, log.read_text()


def test_target_and_controller_units_start_notify_serve_and_stop(
        tmp_path: Path, notifications: Notifications) -> None:
    etc = tmp_path / "etc"
    (etc / "default").mkdir(parents=True)
    (etc / "hbmon").mkdir()
    grpc_port, api_port = free_tcp_port(), free_tcp_port()
    with Lab(1) as lab:
        # the example EnvironmentFile with this lab's port and a free gRPC port
        example = (UNITS / "hbmon-kernel-target.default").read_text()
        example = example.replace("1@eth1", f"1@{lab.ifaces[0]}")
        example = example.replace("127.0.0.1:9559", f"127.0.0.1:{grpc_port}")
        envfile = etc / "default" / "hbmon-kernel-target"
        envfile.write_text(example)
        target_unit = unit("hbmon-kernel-target.service")
        assert target_unit["EnvironmentFile"] == "/etc/default/hbmon-kernel-target"
        argv = exec_start("hbmon-kernel-target.service", environment_file(envfile), etc)
        target_log = tmp_path / "target.log"
        target = run_until_ready(argv, notifications, 60, target_log)
        try:
            (etc / "hbmon" / "hbmon.yaml").write_text(yaml.safe_dump({
                "store": f"sqlite:///{tmp_path / 'hbmon.db'}",
                "api": {"host": "127.0.0.1", "port": api_port},
                "monitor": {"mac": "02:00:00:00:00:01", "ip": "198.18.0.1"},
                "switches": [{"name": "s1", "kind": "kernel",
                              "grpc": f"127.0.0.1:{grpc_port}", "device_id": 1}],
            }))
            serve_log = tmp_path / "serve.log"
            serve = run_until_ready(exec_start("hbmon.service", {}, etc), notifications, 60,
                                    serve_log)
            try:
                # READY means serving: no retry loop needed
                got = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=5)
                assert got.status_code == 200, serve_log.read_text()
            finally:
                stop_as_systemd("hbmon.service", serve, notifications, serve_log)
        finally:
            stop_as_systemd("hbmon-kernel-target.service", target, notifications, target_log)


def test_responder_unit_answers_unprivileged(tmp_path: Path) -> None:
    """hbmon-responder.service claims no privilege (DynamicUser=, no capabilities): its
    ExecStart runs here as `nobody`, answers a version-2 request with the nonce echoed and
    TTL 255, and stops on SIGTERM."""
    from hbmon.protocol import Heartbeat, MsgType

    u = unit("hbmon-responder.service")
    assert u["DynamicUser"] == "yes" and u["CapabilityBoundingSet"] == ""
    port = free_udp_port()
    env = {"HBMON_RESPONDER_ARGS": f"--bind 127.0.0.1 --port {port}"}
    argv = exec_start("hbmon-responder.service", env, tmp_path)
    # the notify socket where the unprivileged user can reach it (pytest's tmp is root-only)
    shared = Path(tempfile.mkdtemp(prefix="hbmon-notify-"))
    os.chmod(shared, 0o755)
    notifications = Notifications(shared / "notify.sock")
    os.chmod(notifications.path, 0o777)
    log = tmp_path / "responder.log"
    try:
        proc = run_until_ready(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                "--clear-groups", "--inh-caps=-all", *argv], notifications, 30,
                               log)
    except BaseException:
        notifications.close()
        shutil.rmtree(shared)
        raise
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            s.settimeout(5)
            s.sendto(Heartbeat(MsgType.REQUEST, 7, 3, 99, nonce=0xA5A5A5A5).pack(),
                     ("127.0.0.1", port))
            data, ttl = _recv_ttl(s)
        answer = Heartbeat.unpack(data, expect=MsgType.RESPONSE)
        assert (answer.peer_id, answer.sequence, answer.nonce) == (7, 3, 0xA5A5A5A5)
        assert ttl == 255
    finally:
        try:
            stop_as_systemd("hbmon-responder.service", proc, notifications, log)
        finally:
            notifications.close()
            shutil.rmtree(shared)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
