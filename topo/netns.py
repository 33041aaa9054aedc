"""Namespace-only lab runner (iproute2): makes a `Topology` real, removes it on exit.

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

Links, addresses and neighbours are made with iproute2 batches (`ip -n NS -batch -`): one
process per namespace, and no netlink socket that could silently end up in the wrong
namespace (pyroute2 0.9 opens its sockets lazily, in whatever namespace the opening thread
is in at that moment).
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

from .model import Layout, PeerSpec, Topology

STATE_DIR = Path("/run/hbmon-lab")
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
        self._extra_paths: list[str] = []
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

    def access_link(self, peer: str | PeerSpec) -> tuple[str | None, str]:
        """(namespace, interface) of the link whose loss cuts `peer` off the monitor: its
        fabric-side veth end in a STAR lab (the peer's own eth0 stays up, as when a cable
        breaks mid-way), the peers' end of the monitor link in a MULTI lab (all peers)."""
        spec = peer if isinstance(peer, PeerSpec) else self.topology.peer(peer)
        if self.topology.layout is Layout.MULTI:
            return self.peer_ns(spec), "eth0"
        return self.fabric_ns, f"p{self.topology.peers.index(spec) + 1}"

    def set_link(self, peer: str | PeerSpec, up: bool) -> None:
        """Cut (`up=False`) or restore `peer`'s access link (`access_link`)."""
        ns, ifname = self.access_link(peer)
        _ip_batch(ns, [f"link set {ifname} {'up' if up else 'down'}"])

    def add_cleanup_path(self, path: str | Path) -> None:
        """A directory outside the work directory (e.g. FRR's /var/run/frr/<pathspace>)
        removed with the lab, also by `cleanup_stale` after a kill -9."""
        self._extra_paths.append(str(path))
        self._write_state()

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    @property
    def processes(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """(host, process) of everything started with `popen` and still tracked."""
        with self._lock:
            return list(self._procs)

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
            _remove(self._namespaces, self._root_links)
            self._namespaces.clear()
            self._root_links.clear()
            shutil.rmtree(self.workdir, ignore_errors=True)
            for path in self._extra_paths:
                shutil.rmtree(path, ignore_errors=True)
            self._extra_paths.clear()
            with contextlib.suppress(FileNotFoundError):
                (STATE_DIR / f"{self.run_id}.json").unlink()
            self._restore_signal_handlers()

    # ---- building ----------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        if os.path.exists(f"/run/netns/{name}"):
            raise LabError(f"namespace {name} already exists (run id clash?)")
        self._namespaces.append(name)
        self._write_state()
        _ip("netns", "add", name)
        run_in_netns(name, _disable_ipv6_here)

    def _add_monitor_links(self, peer_ns: str, peer_ifname: Callable[[int], str]) -> None:
        """Root ends `hb<rid>m<port>` (no address, monitor MAC) <-> `peer_ifname(port)`."""
        batch: list[str] = []
        for port in self.topology.ports:
            name = self.monitor_iface(port.number)
            if os.path.exists(f"/sys/class/net/{name}"):
                raise LabError(f"interface {name} already exists (run id clash?)")
            self._root_links.append(name)
            batch += [f"link add {name} address {port.mac} type veth "
                      f"peer name {peer_ifname(port.number)} netns {peer_ns}"]
        self._write_state()
        _ip_batch(None, batch)
        for name in self._root_links:
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")
        _ip_batch(None, [f"link set {name} up" for name in self._root_links])

    def _build_star(self) -> None:
        topo = self.topology
        fab = self.fabric_ns
        self._add_ns(fab)
        self._add_monitor_links(fab, lambda port: f"mon{port}")
        fab_batch = ["link set lo up"]
        for port in topo.ports:
            fab_batch += [f"link add br{port.number} type bridge",
                          f"link set mon{port.number} master br{port.number}",
                          f"link set mon{port.number} up", f"link set br{port.number} up"]
        _ip_batch(fab, fab_batch)
        fab_batch = []
        for i, peer in enumerate(topo.peers):
            ns = self.peer_ns(peer)
            self._add_ns(ns)
            fab_batch += [f"link add p{i + 1} type veth peer name eth0 netns {ns}",
                          f"link set p{i + 1} master br{peer.port}", f"link set p{i + 1} up"]
        _ip_batch(fab, fab_batch)
        for peer in topo.peers:
            self._configure_peer_ns(self.peer_ns(peer), peer.mac, [peer.address], peer.port)

    def _build_multi(self) -> None:
        topo = self.topology
        ns = f"{self.prefix}-peers"
        self._add_ns(ns)
        self._add_monitor_links(ns, lambda port: "eth0")
        self._configure_peer_ns(ns, topo.peers[0].mac, [p.address for p in topo.peers], 1)

    def _configure_peer_ns(self, ns: str, mac: str, addresses: Sequence[str], port: int) -> None:
        topo = self.topology
        batch = ["link set lo up", f"link set eth0 address {mac}"]
        batch += [f"address add {a}/{topo.prefixlen} dev eth0" for a in addresses]
        batch += ["link set eth0 up",
                  f"neigh replace {topo.monitor_address} lladdr {topo.port(port).mac} "
                  f"dev eth0 nud permanent"]
        _ip_batch(ns, batch)

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
        self._write_state()
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

    # ---- responders --------------------------------------------------------------------

    def ctl_path(self, peer: str) -> str:
        """Control socket of the responder answering for `peer` (MULTI: one for all)."""
        if self.topology.layout is Layout.MULTI:
            return str(self.workdir / "peers.sock")
        self.topology.peer(peer)
        return str(self.workdir / f"{peer}.sock")

    def start_responders(self, extra_args: Sequence[str] = (), *, timeout: float = 20.0,
                         log: bool = True) -> dict[str, str]:
        """Start `hbmon responder` for every peer with its topology faults; wait until ready.

        Returns peer name -> control socket path. Output goes to <workdir>/<host>.log.
        """
        from hbmon_responder.responder import ControlClient

        hosts: list[tuple[str, list[str]]] = []
        heartbeat = self.topology.heartbeat_peers  # BFD sessions have bfdd, no responder
        if self.topology.layout is Layout.MULTI:
            hosts += [("peers", [])] if heartbeat else []
        else:
            hosts += [(p.name, p.faults.responder_args()) for p in heartbeat]
        started: list[str] = []
        for host, fault_args in hosts:
            ctl = self.ctl_path(heartbeat[0].name if host == "peers" else host)
            argv = [sys.executable, "-m", "hbmon_responder.cli", "--ctl", ctl,
                    *fault_args, *extra_args]
            if log:
                with open(self.workdir / f"{host}.log", "wb") as out:
                    self.popen(host, argv, stdout=out, stderr=subprocess.STDOUT)
            else:
                self.popen(host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append(ctl)
        deadline = time.monotonic() + timeout
        for ctl in started:
            ControlClient(ctl).wait_ready(timeout=max(0.1, deadline - time.monotonic()))
        return {p.name: self.ctl_path(p.name) for p in heartbeat}

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
        procs = [[p.pid, _start_time(p.pid)] for _, p in self._procs if p.poll() is None]
        state = {"pid": os.getpid(), "namespaces": self._namespaces,
                 "links": self._root_links, "workdir": str(self.workdir), "procs": procs,
                 "paths": self._extra_paths}
        tmp = STATE_DIR / f".{self.run_id}.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(STATE_DIR / f"{self.run_id}.json")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _ip_batch(ns: str | None, commands: Sequence[str]) -> None:
    """Run iproute2 commands in one `ip -batch` (in namespace `ns`); LabError names the line."""
    if not commands:
        return
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                          text=True)
    if proc.returncode != 0:
        where = f" in {ns}" if ns else ""
        raise LabError(f"ip -batch{where}: {proc.stderr.strip()}")


def _remove(namespaces: Sequence[str], links: Sequence[str]) -> None:
    """Delete root-namespace links and namespaces; whatever is already gone is fine."""
    for name in links:
        if os.path.exists(f"/sys/class/net/{name}"):
            subprocess.run(["ip", "link", "del", name], capture_output=True,
                           stdin=subprocess.DEVNULL)
    for ns in reversed(namespaces):
        if os.path.exists(f"/run/netns/{ns}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                           stdin=subprocess.DEVNULL)


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


def _start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks (/proc/PID/stat field 22): tells PID reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


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
        for pid, started in state.get("procs", []):
            # only the very process the lab started (same start time), never a reused PID
            if started is not None and _start_time(pid) == started:
                _signal_group(pid, signal.SIGKILL)
        _remove(state.get("namespaces", []), state.get("links", []))
        for extra in [state.get("workdir"), *state.get("paths", [])]:
            if extra:
                shutil.rmtree(extra, ignore_errors=True)
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

