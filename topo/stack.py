"""The whole product on a lab: data-plane target + `hbmon serve` (controller, REST, dashboard).

`Stack(lab, options)` takes a running lab (`NetnsLab` or `MininetLab`) whose responders are
up, then

1. starts the target on the lab's monitor ports (`hbmon-kernel-target` or
   `simple_switch_grpc`, through `hbmon.dataplane.targets`), waiting for its gRPC port by polling —
   except a Mininet bmv2 lab, whose switch node already runs it;
2. writes the controller's YAML config from the topology (peers, monitor address, ports);
3. starts `hbmon serve --config FILE` as a child process and polls `/healthz`;
4. answers questions over the REST API (`health()`, `wait_for()`).

Everything it starts is stopped by PID in `stop()`. Both `make demo` and the end-to-end
tests use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from hbmon import assets

from .model import Topology

P4INFO = assets.p4_output(assets.P4INFO_NAME)
BMV2_JSON = assets.p4_output(assets.BMV2_JSON_NAME)
BPF_BUILD = assets.bpf_dir()


class StackError(RuntimeError):
    """A piece of the stack is missing or did not come up; the message says which."""


class Lab(Protocol):
    topology: Topology
    workdir: Path

    @property
    def port_map(self) -> dict[int, str]: ...


@dataclass(frozen=True, slots=True)
class StackOptions:
    target: str = "kernel"  # kernel | bmv2
    interval_ms: float = 100.0
    detect_mult: int = 3
    poll_interval_ms: float = 250.0
    api_host: str = "127.0.0.1"
    api_port: int = 8080  # 0: any free port
    grpc_port: int = 0  # 0: any free port
    thrift_port: int = 0  # bmv2 only; 0: any free port
    switch_name: str = "s1"
    gtsm: bool = False  # the switch's `gtsm` option: only answers with TTL 255 count


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def tcp_port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. With SO_REUSEADDR, as uvicorn
    binds: connections of a previous run left in TIME-WAIT do not make the port busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def missing_for(target: str) -> list[str]:
    """What this machine lacks to run `target` ("" items never; empty list: all there)."""
    from hbmon.dataplane import targets

    missing: list[str] = []
    if not P4INFO.is_file():
        missing.append(f"{P4INFO} (the P4Info; `make p4-build`)")
    if target == "kernel":
        if importlib.util.find_spec("hbmon_kernel.server") is None:
            missing.append("hbmon_kernel.server (the kernel target's P4Runtime server)")
        if targets.find_kernel_target() is None:
            missing.append("hbmon-kernel-target (run `make setup`)")
        if not any(BPF_BUILD.glob("*.o")):
            missing.append(f"BPF objects in {BPF_BUILD}/ "
                           "(`make setup` builds them with clang)")
    elif target == "bmv2":
        if targets.find_simple_switch_grpc() is None:
            missing.append("simple_switch_grpc (bmv2 with its P4Runtime server) on PATH or "
                           "in $SIMPLE_SWITCH_GRPC — e.g. `source /opt/p4/env.sh`, or use "
                           "the Vagrant lab")
        if not BMV2_JSON.is_file():
            missing.append(f"{BMV2_JSON} (p4c output; `make p4-build`)")
    else:
        missing.append(f"a target called {target!r} (kernel or bmv2)")
    return missing


def controller_config(topology: Topology, options: StackOptions, *, grpc_addr: str,
                      ports: Mapping[int, str], store: str, token_file: Path,
                      api_port: int, thrift_port: int | None) -> dict[str, Any]:
    """The `hbmon serve` YAML config (controller/hbmon/config.py) for a lab."""
    switch: dict[str, Any] = {
        "name": options.switch_name, "kind": options.target, "grpc": grpc_addr,
        "device_id": 1, "p4info": str(P4INFO), "ports": {int(k): v for k, v in ports.items()},
    }
    if options.gtsm:
        switch["gtsm"] = True
    if options.target == "bmv2":
        switch["thrift_port"] = thrift_port
        switch["bmv2_json"] = str(BMV2_JSON)
    return {
        "interval_ms": options.interval_ms,
        "detect_mult": options.detect_mult,
        "poll_interval_ms": options.poll_interval_ms,
        # requests leave with port 1's MAC: the peers' static neighbour entry for the
        # monitor address points there (other ports' peers answer through their own port)
        "monitor": {"mac": topology.ports[0].mac, "ip": topology.monitor_address},
        "store": store,
        "api": {"host": options.api_host, "port": api_port, "token_file": str(token_file)},
        "switches": [switch],
        "peers": topology.peer_dicts(options.switch_name),
    }


class Stack:
    def __init__(self, lab: Lab, options: StackOptions | None = None, *,
                 target_running: bool = False) -> None:
        """`target_running`: the lab already runs the target (Mininet's P4RuntimeSwitch)."""
        self.lab = lab
        self.options = options or StackOptions()
        self.target_running = target_running
        self.workdir = Path(lab.workdir)
        self.config_path = self.workdir / "hbmon.yaml"
        self.token = secrets.token_urlsafe(24)
        self.token_file = self.workdir / "token"
        self.grpc_addr = ""
        self.thrift_port: int | None = None
        self.api_port = 0
        self.target: Any = None
        self.serve: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.api_host}:{self.api_port}"

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, on_step: Callable[[str], None] = lambda msg: None,
              ready_timeout: float = 60.0) -> None:
        try:
            self._start(on_step, ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, on_step: Callable[[str], None], ready_timeout: float) -> None:
        from hbmon.dataplane import targets

        opts = self.options
        host = opts.api_host
        if opts.api_port and not tcp_port_free(host, opts.api_port):
            raise StackError(f"{host}:{opts.api_port} is in use: pass another API port "
                             "(e.g. --api-port 0 picks a free one)")
        self.api_port = opts.api_port or free_tcp_port(host)
        if self.target_running:
            switch = getattr(self.lab, "switch", None)
            if switch is None:
                raise StackError("target_running: the lab has no switch node running a target")
            self.grpc_addr = switch.grpc_addr
            self.thrift_port = switch.thrift_port
        else:
            missing = missing_for(opts.target)
            if missing:
                raise StackError(f"cannot run the {opts.target} target here; missing: "
                                 + "; ".join(missing))
            self.grpc_addr = f"127.0.0.1:{opts.grpc_port or free_tcp_port()}"
            if opts.target == "bmv2":
                self.thrift_port = opts.thrift_port or free_tcp_port()
            on_step(f"starting the {opts.target} target on "
                    + ", ".join(f"{p}@{i}" for p, i in sorted(self.lab.port_map.items())))
            try:
                self.target = targets.start_target(
                    opts.target, self.lab.port_map, grpc_addr=self.grpc_addr,
                    thrift_port=self.thrift_port or targets.DEFAULT_THRIFT_PORT,
                    output_path=self.workdir / "target.log", wait=60.0)
            except targets.TargetError as exc:
                raise StackError(str(exc)) from exc
        self.token_file.write_text(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        config = controller_config(
            self.lab.topology, opts, grpc_addr=self.grpc_addr, ports=self.lab.port_map,
            store=f"sqlite:///{self.workdir / 'hbmon.db'}", token_file=self.token_file,
            api_port=self.api_port, thrift_port=self.thrift_port)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        on_step(f"starting the controller: hbmon serve --config {self.config_path}")
        hbmon = Path(sys.executable).with_name("hbmon")
        with open(self.workdir / "serve.log", "wb") as log:
            # its own session: a SIGINT to the demo's process group (a supervisor, CI,
            # `kill -INT -PGID`) reaches the demo, which stops this process itself in order
            self.serve = subprocess.Popen(
                [str(hbmon), "serve", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self._client = httpx.Client(base_url=self.url, timeout=5.0)
        self._wait_http("/healthz", ready_timeout)
        on_step("waiting until the controller has programmed and read the target")
        self._wait_http("/readyz", ready_timeout)

    def _wait_http(self, path: str, timeout: float) -> None:
        assert self._client is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.serve is not None and self.serve.poll() is not None:
                raise StackError(f"hbmon serve exited with status {self.serve.returncode}:\n"
                                 + self.log_tail("serve.log"))
            if self.target is not None and not self.target.running():
                raise StackError("the target exited:\n" + self.log_tail("target.log"))
            try:
                response = self._client.get(path)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise StackError(f"{self.url}{path} not ready after {timeout:g}s ({last})\n"
                                 + self.log_tail("serve.log"))
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.workdir / name
        if not path.exists():
            return f"({name}: no output)"
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def health(self) -> list[dict[str, Any]]:
        """Every peer's health row (GET /api/v1/health/peers)."""
        assert self._client is not None
        response = self._client.get("/api/v1/health/peers")
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["peers"]
        return rows

    def states(self) -> dict[str, str]:
        return {row["name"]: row["state"] for row in self.health()}

    def wait_for(self, expected: Mapping[str, set[str]], timeout: float) -> dict[str, str]:
        """Poll until every named peer is in one of its expected states; returns the states.

        Raises StackError naming the peers that did not get there.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            wrong = {n: states.get(n, "?") for n, ok in expected.items()
                     if states.get(n) not in ok}
            if not wrong:
                return states
            if time.monotonic() > deadline:
                detail = ", ".join(f"{n}={s} (want {'/'.join(sorted(expected[n]))})"
                                   for n, s in sorted(wrong.items()))
                raise StackError(f"peers not in the expected state after {timeout:g}s: "
                                 f"{detail}")
            time.sleep(0.2)

    def stop(self) -> None:
        from hbmon.dataplane import targets

        if self._client is not None:
            self._client.close()
            self._client = None
        if self.serve is not None:
            targets.stop_process(self.serve, timeout=10.0)
            self.serve = None
        if self.target is not None:
            with contextlib.suppress(Exception):
                self.target.stop()
            self.target = None


def expected_states(topology: Topology) -> dict[str, set[str]]:
    """What a correct stack shows for each peer once settled (demo --once, tests).

    A healthy peer is UP; a silent one DOWN; a lossy, flapping or self-reported degraded one
    anything but UP/UNKNOWN (DEGRADED, or DOWN while a flap is silent).
    """
    expected: dict[str, set[str]] = {}
    for peer in topology.peers:
        f = peer.faults
        if peer.bfd is not None:  # an FRR bfdd session: Up once both sides agree
            expected[peer.name] = {"UP"}
        elif f.mute:
            expected[peer.name] = {"DOWN"}
        elif f.healthy:
            expected[peer.name] = {"UP"}
        elif f.status != "healthy" and not (f.loss_pct or f.flap_s or f.delay_ms):
            expected[peer.name] = {"DEGRADED"}
        else:
            expected[peer.name] = {"DEGRADED", "DOWN"}
    return expected
