"""hbmon for Mininet's own `mn` command (a --custom file; Mininet's conventions).

    sudo mn --custom topo/hbmon_mn.py --topo hbstar,16 --switch hbkernel --controller none
    sudo mn --custom topo/hbmon_mn.py --topo hbstar,4 --switch hbbmv2 --controller none

`hbstar,N`: one switch and N peer hosts h1..hN (198.18.1.i/16, MAC 02:00:00:01:00:i) on
its ports 1..N. The switch is the monitor:

- `hbkernel`: `hbmon-kernel-target` (XDP/tc) on the switch's ports, in the root namespace;
- `hbbmv2`: bmv2's `simple_switch_grpc` on them (built by hand, on PATH or
  $SIMPLE_SWITCH_GRPC).

Either one also starts `hbmon serve` for its peers (API and dashboard on
http://127.0.0.1:8080 unless `--switch hbkernel,api_port=N`) and `hbmon responder` on every
attached host, and stops everything it started, by PID, when Mininet stops the switch. Then
Mininet's CLI is yours: `h1 ip addr`, `xterm h3`, `h4 <venv>/bin/hbmon responder --ctl
/tmp/hbmon-mn-s1-<pid>/h4.sock stop` (a muted peer: DOWN on the dashboard). The monitor is
not a learning switch: the kernel target hands ordinary traffic to its host's stack, so hosts
do not reach each other through it (`pingall` fails; bmv2 forwards only what l2_forward
holds).

This file runs in Mininet's interpreter (Debian's /usr/bin/python3), not in hbmon's venv: it
imports only Mininet and calls hbmon's commands (from $HBMON_BIN, else the checkout's .venv/bin,
else PATH).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from mininet.node import Switch
from mininet.topo import Topo

# `mn --custom` execs this file without __file__; the code object still knows its path
CHECKOUT = Path(inspect.currentframe().f_code.co_filename).resolve().parents[1]  # type: ignore[union-attr]
MONITOR_IP = "198.18.0.1"
MONITOR_MAC = "02:00:00:00:00:01"


def hbmon_bin(name: str) -> str:
    for base in (os.environ.get("HBMON_BIN"), str(CHECKOUT / ".venv" / "bin")):
        if base and Path(base, name).is_file():
            return str(Path(base, name))
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: set HBMON_BIN to the directory of hbmon's "
                           "commands (e.g. the checkout's .venv/bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HbStar(Topo):
    """hbstar,N: N peer hosts, one per port of the monitor switch."""

    def build(self, n: int = 4) -> None:
        s1 = self.addSwitch("s1")
        for i in range(1, int(n) + 1):
            h = self.addHost(f"h{i}", ip=f"198.18.1.{i}/16", mac=f"02:00:00:01:00:{i:02x}")
            self.addLink(h, s1, port2=i)


class _MonitorSwitch(Switch):
    """A monitor switch: the data plane on its ports, then hbmon serve and the responders."""

    kind = ""

    def __init__(self, name: str, api_port: int = 8080, interval_ms: int = 100,
                 **params: Any) -> None:
        params["inNamespace"] = False  # the target's gRPC and the API on 127.0.0.1
        super().__init__(name, **params)
        self.api_port = int(api_port)
        self.interval_ms = int(interval_ms)
        self.workdir = Path(f"/tmp/hbmon-mn-{name}-{os.getpid()}")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.grpc = f"127.0.0.1:{free_port()}"

    def ports_map(self) -> dict[int, Any]:
        return {port: intf for intf, port in self.ports.items()
                if intf.name != "lo" and port > 0}

    def _spawn(self, argv: list[str], log: str, node: Any = None) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "wb") as out:
            proc: subprocess.Popen[bytes] = (
                node.popen(argv, stdout=out, stderr=subprocess.STDOUT) if node is not None
                else subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
        self.procs.append(proc)
        return proc

    def _wait_log(self, log: str, text: str, proc: subprocess.Popen[bytes],
                  timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in (self.workdir / log).read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {log} shows no {text!r}:\n"
                                   + (self.workdir / log).read_text(errors="replace")[-2000:])
            time.sleep(0.05)  # polling a log with a deadline

    def start_target(self, ports: dict[int, Any]) -> None:
        raise NotImplementedError

    def start(self, controllers: Any) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = self.ports_map()
        for intf in ports.values():
            with open(f"/proc/sys/net/ipv6/conf/{intf.name}/disable_ipv6", "w") as f:
                f.write("1\n")
        self.start_target(ports)
        peers = []
        for port, intf in sorted(ports.items()):
            host = intf.link.intf1.node if intf.link.intf2 is intf else intf.link.intf2.node
            host.cmd(f"ip neigh replace {MONITOR_IP} lladdr {MONITOR_MAC} dev "
                     f"{host.defaultIntf().name} nud permanent")
            peers.append({"name": host.name, "address": host.IP(), "peer_id": port,
                          "mac": host.MAC(), "port": port})
            self._spawn([hbmon_bin("hbmon"), "responder", "--ctl",
                         str(self.workdir / f"{host.name}.sock")], f"{host.name}.log", host)
        switch: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "grpc": self.grpc, "device_id": 1,
            "ports": {p: i.name for p, i in ports.items()}}
        switch.update(self.switch_extra())
        config = {
            "interval_ms": self.interval_ms, "monitor": {"mac": MONITOR_MAC, "ip": MONITOR_IP},
            "store": f"sqlite:///{self.workdir / 'hbmon.db'}",
            "api": {"host": "127.0.0.1", "port": self.api_port,
                    "allow_anonymous_writes": True},
            "switches": [switch], "peers": peers,
        }
        (self.workdir / "hbmon.yaml").write_text(json.dumps(config, indent=2))  # YAML ⊃ JSON
        serve = self._spawn([hbmon_bin("hbmon"), "serve", "-c",
                             str(self.workdir / "hbmon.yaml")], "serve.log")
        self._wait_log("serve.log", "API:", serve)
        print(f"*** hbmon: dashboard http://127.0.0.1:{self.api_port}/  "
              f"(logs and control sockets in {self.workdir})")

    def switch_extra(self) -> dict[str, Any]:
        return {}

    def stop(self, deleteIntfs: bool = True) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        super().stop(deleteIntfs)


class KernelTargetSwitch(_MonitorSwitch):
    """--switch hbkernel: hbmon-kernel-target (XDP/tc) on the switch's ports."""

    kind = "kernel"

    def start_target(self, ports: dict[int, Any]) -> None:
        argv = [hbmon_bin("hbmon-kernel-target"), "--grpc-addr", self.grpc]
        for port, intf in sorted(ports.items()):
            argv += ["-i", f"{port}@{intf.name}"]
        target = self._spawn(argv, "target.log")
        self._wait_log("target.log", "listening on", target)


class Bmv2Switch(_MonitorSwitch):
    """--switch hbbmv2: bmv2's simple_switch_grpc on the switch's ports."""

    kind = "bmv2"

    def start_target(self, ports: dict[int, Any]) -> None:
        ssg = os.environ.get("SIMPLE_SWITCH_GRPC") or shutil.which("simple_switch_grpc")
        if not ssg:
            raise RuntimeError("simple_switch_grpc not found on PATH or $SIMPLE_SWITCH_GRPC "
                               "(bmv2 is built by hand)")
        self.thrift_port = free_port()
        argv = [ssg, "--no-p4", "--device-id", "1", "--thrift-port", str(self.thrift_port)]
        for port, intf in sorted(ports.items()):
            argv += ["-i", f"{port}@{intf.name}"]
        argv += ["--", "--grpc-server-addr", self.grpc, "--cpu-port", "255"]
        target = self._spawn(argv, "target.log")
        deadline = time.monotonic() + 60
        host, grpc_port = self.grpc.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(grpc_port)), timeout=1).close()
                return
            except OSError as exc:
                if target.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("simple_switch_grpc did not start:\n" + (
                        self.workdir / "target.log").read_text(errors="replace")[-2000:]
                    ) from exc
                time.sleep(0.1)  # polling a port with a deadline

    def switch_extra(self) -> dict[str, Any]:
        return {"thrift_port": self.thrift_port,
                "bmv2_json": str(CHECKOUT / "p4src" / "build" / "heartbeat.json")}


topos = {"hbstar": HbStar}
switches = {"hbkernel": KernelTargetSwitch, "hbbmv2": Bmv2Switch}
