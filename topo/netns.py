"""Namespace-only lab runner (pyroute2): makes a `Topology` real, removes it on exit.

Shape (STAR layout, one bridge per monitor port)::

    root namespace                 hb<rid>-fab                    hb<rid>-peer01 ...
    hb<rid>m1 (monitor port 1) ==== mon1 -+- br1 -+- p1 ======== eth0 198.18.1.1/16
      (no address: the data plane        |       +- p2 ======== eth0 198.18.1.2/16  (hb<rid>-peer02)
       owns it, XDP/tc or bmv2 -i)        ...

MULTI layout: hb<rid>m1 ==== eth0 in hb<rid>-peers holding every peer address.

The monitor port stays in the root namespace without an IP address, so a kernel target
or simple_switch_grpc started normally can attach to it and serve gRPC on 127.0.0.1, and
concurrent labs never clash in the root routing table. Peers reach the monitor address
(198.18.0.1) through a static neighbour entry pointing at the monitor port's MAC.

Every name carries a run id (`hb<rid>`), so several labs can run at once. Everything is
removed on exit, on exceptions, on Ctrl-C and on SIGTERM/SIGHUP (turned into an exception
while the lab is up). A state file under /run/hbmon-lab/ lets `cleanup_stale()` (or
`python -m hbmon_topo.netns cleanup`) remove the leftovers of a process killed with -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as pr_netns

from .model import Layout, PeerSpec, Topology

STATE_DIR = Path("/run/hbmon-lab")
NUD_PERMANENT = 0x80
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class LabError(RuntimeError):
    """The lab could not be built (not root, name clash, netlink error)."""


class LabInterrupted(SystemExit):
    """SIGTERM/SIGHUP arrived while a lab was up; unwinds so the lab is removed."""


def new_run_id() -> str:
    return secrets.token_hex(3)


_libc = ctypes.CDLL(None, use_errno=True)


def run_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` with the calling context in namespace `ns` (in a helper thread).

    setns(CLONE_NEWNET) only moves the calling thread, so a throwaway thread keeps the
    caller's own thread untouched whatever `fn` does. Sockets made by `fn` stay in `ns`.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _set_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
        f.write(value)


def _disable_ipv6_here() -> None:
    # Router solicitations / MLD reports are noise on a monitor port; none of the lab needs v6.
    for conf in ("all", "default"):
        _set_sysctl(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "1")


class NetnsLab:
    """Context manager: `with NetnsLab(topology) as lab: ...`."""

    def __init__(self, topology: Topology, *, run_id: str | None = None) -> None:
        self.topology = topology
        self.run_id = run_id or new_run_id()
        self.prefix = f"hb{self.run_id}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hbmon-lab-{self.run_id}-"))
        self._namespaces: list[str] = []
        self._root_links: list[str] = []
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._old_handlers: dict[int, Any] = {}
        self._started = False
        self._lock = threading.Lock()

    # ---- names -------------------------------------------------------------------------

    def monitor_iface(self, port: int = 1) -> str:
        """Root-namespace interface of monitor port `port` (give it to the data plane)."""
        self.topology.port(port)
        return f"{self.prefix}m{port}"

    @property
    def port_map(self) -> dict[int, str]:
        """P4Runtime port number -> interface, as `-i PORT@IFACE` wants it."""
        return {p.number: self.monitor_iface(p.number) for p in self.topology.ports}

    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}-fab"

    def peer_ns(self, peer: str | PeerSpec) -> str:
        """Namespace holding a peer (all peers share one in the MULTI layout)."""
        spec = peer if isinstance(peer, PeerSpec) else self.topology.peer(peer)
        if self.topology.layout is Layout.MULTI:
            return f"{self.prefix}-peers"
        return f"{self.prefix}-{spec.name}"

    def host_ns(self, host: str) -> str | None:
        """Namespace of a host name: a peer, "fabric", "peers" (MULTI) or "root" (None)."""
        if host == "root":
            return None
        if host == "fabric" and self.topology.layout is Layout.STAR:
            return self.fabric_ns
        if host == "peers" and self.topology.layout is Layout.MULTI:
            return f"{self.prefix}-peers"
        return self.peer_ns(host)

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    # ---- life cycle --------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError("a namespace lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
        if self._started:
            raise LabError("lab already started")
        self._started = True
        self._install_signal_handlers()
        try:
            self._write_state()
            if self.topology.layout is Layout.STAR:
                self._build_star()
            else:
                self._build_multi()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process started here, remove every namespace and link. Idempotent."""
        with self._lock, _sigint_deferred():
            self._stop_processes()
            for ns in reversed(self._namespaces):
                with contextlib.suppress(OSError, FileNotFoundError):
                    pr_netns.remove(ns)
            self._namespaces.clear()
            if self._root_links:
                with IPRoute() as ipr:
                    for name in self._root_links:
                        for index in ipr.link_lookup(ifname=name):
                            with contextlib.suppress(Exception):
                                ipr.link("del", index=index)
                self._root_links.clear()
            shutil.rmtree(self.workdir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (STATE_DIR / f"{self.run_id}.json").unlink()
            self._restore_signal_handlers()

    # ---- building ----------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        if os.path.exists(f"/run/netns/{name}"):
            raise LabError(f"namespace {name} already exists (run id clash?)")
        pr_netns.create(name)
        self._namespaces.append(name)
        self._write_state()
        run_in_netns(name, _disable_ipv6_here)

    def _add_monitor_link(self, port: int, peer_ifname: str, peer_ns: str) -> None:
        """Root end `hb<rid>m<port>` (no address, monitor MAC) <-> `peer_ifname` in `peer_ns`."""
        name = self.monitor_iface(port)
        mac = self.topology.port(port).mac
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=name):
                raise LabError(f"interface {name} already exists (run id clash?)")
            self._root_links.append(name)
            self._write_state()
            ipr.link("add", ifname=name, kind="veth",
                     peer={"ifname": peer_ifname, "net_ns_fd": peer_ns})
            index = ipr.link_lookup(ifname=name)[0]
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")
            ipr.link("set", index=index, address=mac)
            ipr.link("set", index=index, state="up")

    def _build_star(self) -> None:
        topo = self.topology
        self._add_ns(self.fabric_ns)
        for port in topo.ports:
            self._add_monitor_link(port.number, f"mon{port.number}", self.fabric_ns)
        with NetNS(self.fabric_ns) as fab:
            for port in topo.ports:
                bridge = f"br{port.number}"
                fab.link("add", ifname=bridge, kind="bridge")
                br_index = fab.link_lookup(ifname=bridge)[0]
                mon_index = fab.link_lookup(ifname=f"mon{port.number}")[0]
                fab.link("set", index=mon_index, master=br_index)
                fab.link("set", index=mon_index, state="up")
                fab.link("set", index=br_index, state="up")
        for i, peer in enumerate(topo.peers):
            ns = self.peer_ns(peer)
            self._add_ns(ns)
            fab_ifname = f"p{i + 1}"
            with NetNS(self.fabric_ns) as fab:
                fab.link("add", ifname=fab_ifname, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": ns})
                index = fab.link_lookup(ifname=fab_ifname)[0]
                br_index = fab.link_lookup(ifname=f"br{peer.port}")[0]
                fab.link("set", index=index, master=br_index)
                fab.link("set", index=index, state="up")
            self._configure_peer_ns(ns, peer.mac, [peer.address], peer.port)

    def _build_multi(self) -> None:
        topo = self.topology
        ns = f"{self.prefix}-peers"
        self._add_ns(ns)
        self._add_monitor_link(1, "eth0", ns)
        self._configure_peer_ns(ns, topo.peers[0].mac, [p.address for p in topo.peers], 1)

    def _configure_peer_ns(self, ns: str, mac: str, addresses: Sequence[str], port: int) -> None:
        topo = self.topology
        with NetNS(ns) as net:
            lo = net.link_lookup(ifname="lo")[0]
            net.link("set", index=lo, state="up")
            index = net.link_lookup(ifname="eth0")[0]
            net.link("set", index=index, address=mac)
            if len(addresses) <= 64:
                for address in addresses:
                    net.addr("add", index=index, address=address, prefixlen=topo.prefixlen)
            net.link("set", index=index, state="up")
            net.neigh("add", dst=topo.monitor_address, lladdr=topo.port(port).mac,
                      ifindex=index, state=NUD_PERMANENT)
        if len(addresses) > 64:
            # Thousands of addresses: one `ip -batch` beats one netlink round trip each.
            script = "".join(f"address add {a}/{topo.prefixlen} dev eth0\n" for a in addresses)
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script.encode(), check=True)

    # ---- processes ---------------------------------------------------------------------

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host`'s namespace; it is stopped (by PID) when the lab stops.

        The process leads its own session so stopping it also stops what it started.
        """
        ns = self.host_ns(host)
        full = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            full, start_new_session=True, **kwargs
        )
        with self._lock:
            self._procs.append((host, proc))
        return proc

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 30.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in `host`'s namespace and return its output."""
        ns = self.host_ns(host)
        full = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              check=check, stdin=subprocess.DEVNULL)

    def in_netns(self, host: str, fn: Callable[[], T]) -> T:
        """Call `fn` inside `host`'s namespace (e.g. to open a socket there)."""
        ns = self.host_ns(host)
        return fn() if ns is None else run_in_netns(ns, fn)

    def stop_process(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        """SIGTERM the process (and its session), SIGKILL after `timeout`; returns its code."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # children left behind in the session (same PGID as the leader we started)
            os.killpg(proc.pid, signal.SIGKILL)
        with self._lock:
            self._procs = [(h, p) for h, p in self._procs if p is not proc]
        return proc.returncode

    def _stop_processes(self) -> None:
        procs = [p for _, p in self._procs]
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._procs.clear()

    # ---- signals and state -------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            raise LabInterrupted(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "namespaces": self._namespaces,
                 "links": self._root_links, "workdir": str(self.workdir)}
        tmp = STATE_DIR / f".{self.run_id}.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(STATE_DIR / f"{self.run_id}.json")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a second Ctrl-C until the clean-up that the first one started has finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if pending:
        raise KeyboardInterrupt


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(*, force_run_id: str | None = None) -> list[str]:
    """Remove labs whose owning process is gone (or the one `force_run_id` names).

    Returns the run ids removed.
    """
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for path in sorted(STATE_DIR.glob("*.json")):
        run_id = path.stem
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if run_id != force_run_id and _pid_alive(int(state.get("pid", 0))):
            continue
        for ns in reversed(state.get("namespaces", [])):
            with contextlib.suppress(OSError):
                pr_netns.remove(ns)
        with IPRoute() as ipr:
            for name in state.get("links", []):
                for index in ipr.link_lookup(ifname=name):
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=index)
        if state.get("workdir"):
            shutil.rmtree(state["workdir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        removed.append(run_id)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("cleanup", "list"):
        print("usage: python -m hbmon_topo.netns cleanup [RUN_ID] | list", file=sys.stderr)
        return 2
    if args[0] == "list":
        for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
            state = json.loads(path.read_text())
            alive = "running" if _pid_alive(int(state.get("pid", 0))) else "stale"
            print(f"{path.stem} pid={state.get('pid')} {alive} "
                  f"namespaces={len(state.get('namespaces', []))}")
        return 0
    removed = cleanup_stale(force_run_id=args[1] if len(args) > 1 else None)
    print(f"removed {len(removed)} lab(s): {' '.join(removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

