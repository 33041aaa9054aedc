"""Mininet runners for the same `Topology` data: a kernel-target monitor host, or bmv2.

Mininet comes from Debian's `mininet` package (installed by `make setup`). Its Python
module lives in the system's dist-packages, outside our virtual environment; `load_mininet()`
loads just that package from there (nothing else of the system site-packages leaks into
the venv). Mininet needs root.

Shapes (one Mininet link per monitor port; a port with several peers gets a Linux bridge):

- kernel: a monitor host `m<rid>` in the ROOT namespace (so the kernel target, the
  controller and the dashboard on 127.0.0.1 reach it) whose interfaces `hb<rid>m<port>` are
  the XDP/tc ports; each peer a Mininet host (own namespace) running `hbmon responder`.
- bmv2: a `P4RuntimeSwitch` (simple_switch_grpc, root namespace, gRPC on 127.0.0.1) whose
  ports `hb<rid>s<port>` lead to the peers; the switch itself is the monitor.

Mininet keeps no state we do not remove: `MininetLab.stop()` (also on Ctrl-C / SIGTERM)
stops the responders and the switch by PID, then `net.stop()` removes hosts, links, bridges.
Never use `mn -c` next to other labs: it kills every Mininet-looking process by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import Any

from .model import Layout, Topology
from .netns import LabError, LabInterrupted, _set_sysctl, _sigint_deferred, new_run_id

MININET_DIRS = ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages")


class MininetMissing(LabError):
    """Debian's mininet package is not installed."""


def load_mininet() -> ModuleType:
    """Import the system's `mininet` package into this interpreter (venv or not)."""
    if "mininet" in sys.modules:
        return sys.modules["mininet"]
    with contextlib.suppress(ModuleNotFoundError):
        import mininet  # a venv made with --system-site-packages, or Mininet from pip

        return mininet
    for base in MININET_DIRS:
        init = Path(base, "mininet", "__init__.py")
        if init.is_file():
            spec = importlib.util.spec_from_file_location(
                "mininet", init, submodule_search_locations=[str(init.parent)])
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["mininet"] = module
            spec.loader.exec_module(module)
            return module
    raise MininetMissing("Mininet is not installed: `apt-get install mininet` (or `make setup`)")


def mininet_available() -> str | None:
    """None when Mininet can run here, else what is missing."""
    try:
        load_mininet()
    except MininetMissing as exc:
        return str(exc)
    for tool in ("mnexec", "brctl"):
        if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":")):
            return f"{tool} is not installed (`make setup` installs mininet and bridge-utils)"
    return None


def _p4runtime_switch_class() -> type:
    """A Mininet Switch that runs simple_switch_grpc on its ports (bmv2 target)."""
    load_mininet()
    from hbmon.dataplane import targets
    from mininet.node import Switch

    class P4RuntimeSwitch(Switch):
        """simple_switch_grpc on this switch's Mininet ports; ready when its gRPC answers.

        Params: grpc_addr, thrift_port, device_id, log_dir.
        """

        def __init__(self, name: str, *, grpc_addr: str, thrift_port: int,
                     device_id: int = 1, log_dir: str = "/tmp", **params: Any) -> None:
            params["inNamespace"] = False  # gRPC on the root namespace's 127.0.0.1
            super().__init__(name, **params)
            self.grpc_addr = grpc_addr
            self.thrift_port = thrift_port
            self.device_id = device_id
            self.log_dir = log_dir
            self.target: targets.TargetProcess | None = None

        @property
        def port_map(self) -> dict[int, str]:
            return {port: intf.name for intf, port in self.ports.items()
                    if intf.name != "lo" and port > 0}

        def start(self, controllers: Sequence[Any]) -> None:
            for intf in self.intfList():
                if intf.name != "lo":
                    _set_sysctl(f"/proc/sys/net/ipv6/conf/{intf.name}/disable_ipv6", "1")
            self.target = targets.start_target(
                targets.BMV2, self.port_map, grpc_addr=self.grpc_addr,
                device_id=self.device_id, thrift_port=self.thrift_port,
                output_path=Path(self.log_dir) / f"{self.name}.log", wait=60.0,
            )

        @property
        def pid_of_target(self) -> int | None:
            return self.target.pid if self.target is not None else None

        def stop(self, deleteIntfs: bool = True) -> None:
            if self.target is not None:
                self.target.stop()
                self.target = None
            super().stop(deleteIntfs)

    return P4RuntimeSwitch


class MininetLab:
    """`with MininetLab(topology, target="kernel") as lab:` — same surface as NetnsLab."""

    def __init__(self, topology: Topology, *, target: str = "kernel",
                 run_id: str | None = None, grpc_addr: str = "127.0.0.1:9559",
                 thrift_port: int = 9090) -> None:
        if target not in ("kernel", "bmv2"):
            raise ValueError("target must be 'kernel' or 'bmv2'")
        if topology.layout is not Layout.STAR:
            raise ValueError("Mininet labs take STAR topologies (one host per peer)")
        self.topology = topology
        self.target = target
        # Mininet names interfaces <node>-ethN: 4 hex digits keep every name within 15 chars
        self.run_id = (run_id or new_run_id())[:4]
        self.prefix = f"hb{self.run_id}"
        self.grpc_addr = grpc_addr
        self.thrift_port = thrift_port
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hbmon-mn-{self.run_id}-"))
        self.net: Any = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._old_handlers: dict[int, Any] = {}

    # ---- names, same as NetnsLab --------------------------------------------------------

    def monitor_iface(self, port: int = 1) -> str:
        self.topology.port(port)
        kind = "m" if self.target == "kernel" else "s"
        return f"{self.prefix}{kind}{port}"

    @property
    def port_map(self) -> dict[int, str]:
        return {p.number: self.monitor_iface(p.number) for p in self.topology.ports}

    def host_name(self, peer: str) -> str:
        return f"{self.prefix}p{self.topology.peers.index(self.topology.peer(peer)) + 1}"

    def ctl_path(self, peer: str) -> str:
        self.topology.peer(peer)
        return str(self.workdir / f"{peer}.sock")

    @property
    def switch(self) -> Any:
        """The bmv2 P4RuntimeSwitch node (target="bmv2")."""
        return self.net.get(f"{self.prefix}sw") if self.target == "bmv2" else None

    # ---- life cycle -------------------------------------------------------------------

    def __enter__(self) -> MininetLab:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError("Mininet needs root")
        missing = mininet_available()
        if missing:
            raise MininetMissing(missing)
        self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            self.stop()
            raise

    def _build(self) -> None:
        load_mininet()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import Host
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        topo = self.topology
        net = Mininet(topo=None, build=False, controller=None, switch=LinuxBridge, host=Host,
                      ipBase="198.18.0.0/16", autoSetMacs=False, autoStaticArp=False)
        self.net = net
        if self.target == "kernel":
            monitor = net.addHost(f"{self.prefix}mon", ip=None, inNamespace=False)
        else:
            monitor = net.addSwitch(f"{self.prefix}sw", cls=_p4runtime_switch_class(),
                                    grpc_addr=self.grpc_addr, thrift_port=self.thrift_port,
                                    log_dir=str(self.workdir), dpid="1")
        hosts = {}
        for i, peer in enumerate(topo.peers):
            hosts[peer.name] = net.addHost(f"{self.prefix}p{i + 1}",
                                           ip=f"{peer.address}/{topo.prefixlen}", mac=peer.mac)
        for port in topo.ports:
            on_port = topo.peers_on(port.number)
            iface = self.monitor_iface(port.number)
            if len(on_port) == 1:
                peer = on_port[0]
                net.addLink(monitor, hosts[peer.name], port1=port.number,
                            intfName1=iface, intfName2="eth0", addr1=port.mac, addr2=peer.mac)
            else:
                # LinuxBridge enslaves every interface whose name CONTAINS the bridge's
                # name: the trailing "_" keeps bridge 1 off bridge 10's interfaces.
                br = f"{self.prefix}b{port.number}_"
                bridge = net.addSwitch(br, cls=LinuxBridge, stp=False, dpid=f"{port.number:x}")
                net.addLink(monitor, bridge, port1=port.number, intfName1=iface,
                            intfName2=f"{br}u", addr1=port.mac)
                for peer in on_port:
                    j = topo.peers.index(peer) + 1
                    net.addLink(hosts[peer.name], bridge, intfName1="eth0",
                                intfName2=f"{br}{j}", addr1=peer.mac)
        net.build()
        if self.target == "kernel":
            for iface in self.port_map.values():
                _set_sysctl(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "1")
        for peer in topo.peers:
            host = hosts[peer.name]
            mac = topo.port(peer.port).mac
            host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
            host.cmd(f"ip neigh replace {topo.monitor_address} lladdr {mac} dev eth0 "
                     f"nud permanent")
        net.start()

    def stop(self) -> None:
        with _sigint_deferred():
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
            for proc in self._procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            self._procs.clear()
            if self.net is not None:
                net, self.net = self.net, None
                net.stop()
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
            self._old_handlers.clear()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            raise LabInterrupted(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, handler)

    # ---- processes --------------------------------------------------------------------

    def cli(self, health: Any = None, stdin: Any = None) -> None:
        """Mininet's own `mininet>` CLI on this lab (pingall, xterm, `<host> <command>`,
        ...), with the peers also reachable by their names (`peer01 ping ...`) and the
        monitor as `monitor`; `health` prints hbmon's table (calls `health()`)."""
        load_mininet()
        from mininet.cli import CLI
        from mininet.log import setLogLevel

        net = self.net
        aliases = {p.name: self.node(p.name) for p in self.topology.peers}
        aliases["monitor"] = net.get(f"{self.prefix}mon" if self.target == "kernel"
                                     else f"{self.prefix}sw")
        added = [name for name in aliases if name not in net.nameToNode]
        for name in added:
            net.nameToNode[name] = aliases[name]

        class HbmonCLI(CLI):
            prompt = "mininet> "

            def do_health(self, line: str) -> None:
                """health: hbmon's view of every peer (the demo's table)."""
                if health is not None:
                    health()

        setLogLevel("output")  # the lab builds quietly; the CLI prints at "output"
        try:
            HbmonCLI(net, stdin=stdin or sys.stdin)
        finally:
            setLogLevel("error")
            for name in added:
                net.nameToNode.pop(name, None)

    def node(self, host: str) -> Any:
        return self.net.get(self.host_name(host))

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` on a peer host (Mininet's mnexec); stopped by PID on exit."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = self.node(host).popen(list(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str]) -> str:
        out: str = self.node(host).cmd(*argv)
        return out

    def start_responders(self, extra_args: Sequence[str] = (), *,
                         timeout: float = 30.0) -> dict[str, str]:
        from hbmon_responder.responder import ControlClient

        for peer in self.topology.peers:
            argv = [sys.executable, "-m", "hbmon_responder.cli", "--ctl",
                    self.ctl_path(peer.name), *peer.faults.responder_args(), *extra_args]
            with open(self.workdir / f"{peer.name}.log", "wb") as out:
                self.popen(peer.name, argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for peer in self.topology.peers:
            ControlClient(self.ctl_path(peer.name)).wait_ready(
                timeout=max(0.1, deadline - time.monotonic()))
        return {p.name: self.ctl_path(p.name) for p in self.topology.peers}
