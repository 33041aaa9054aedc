"""FRR's bfdd as the far end of BFD sessions in a namespace lab (RFC 5880/5881 interop).

`FrrBfd(lab)` runs Debian's FRR `bfdd` (8.4) for the BFD peers of a STAR `NetnsLab`
topology (`PeerSpec.bfd` set, e.g. `star(0, bfd_peers=8)`): one bfdd per peer namespace, its
session `peer <monitor address> local-address <peer address>` with the peer's timers, so the
far end of every session is hbmon's data plane. `Bfdd` is one such process with any sessions
(`tests/lab/test_bfd_lab.py` points two of them at each other to prove the lab itself).

One bfdd per session, not one bfdd for many local addresses: FRR 8.4 keys a single-hop
session by (peer, interface, VRF), not by local address (measured: a second `peer 198.18.0.1
local-address B` block in the same bfdd re-configures the first session instead of adding
one), and an interface needs zebra. Several bfdd cannot share a namespace either (each binds
UDP 3784). A bfdd is ~8 MB resident, so a few hundred sessions fit.

How bfdd runs here (no systemd, no watchfrr, no zebra):

- `ip netns exec NS /usr/lib/frr/bfdd -N <pathspace> -f <conf> -i <pid> -P 0 --log stdout`:
  `-N` puts its sockets in /var/run/frr/<pathspace>/ (`bfdd.vty`, `bfdd.sock`), which is also
  where `vtysh -N <pathspace>` looks; `-P 0` opens no vty TCP port. The directory (owned by
  `frr`, as bfdd drops to that user before making its sockets) is registered with the lab,
  so it goes with it, also after a kill -9 (`python -m hbmon_topo.netns cleanup`).
- bfdd runs as its default user `frr`: `-u root` is refused (root is not in `frrvty`).
- Without zebra bfdd knows no interfaces, so `peer ... interface eth0` stays down
  ("specified interface eth0 doesn't exist"); a single-hop session bound by
  `local-address` alone works (bfdd binds its socket to that address, TTL 255).
- bfdd is the lab's child (`lab.popen`), stopped by PID: SIGTERM makes it exit without
  sending AdminDown, so the far end finds out by detection time, like a crash.
- Timers change at run time through `vtysh -N <pathspace> -c 'configure terminal' ...`;
  bfdd then runs a Poll Sequence (RFC 5880 section 6.8.3).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import BfdTimers, Layout, PeerSpec
from .netns import NetnsLab

BFDD = Path("/usr/lib/frr/bfdd")
FRR_RUN = Path("/var/run/frr")
FRR_USER = "frr"


class BfdLabError(RuntimeError):
    """bfdd did not start, or vtysh did not answer; the message has bfdd's log tail."""


def frr_missing() -> list[str]:
    """What this machine lacks to run the FRR lab (empty: all there)."""
    missing = []
    if not os.access(BFDD, os.X_OK):
        missing.append(f"{BFDD} (Debian package frr)")
    if shutil.which("vtysh") is None:
        missing.append("vtysh (Debian package frr)")
    try:
        pwd.getpwnam(FRR_USER)
    except KeyError:
        missing.append(f"the {FRR_USER} user (Debian package frr)")
    return missing


@dataclass(frozen=True, slots=True)
class BfdSessionSpec:
    """One session in bfdd's configuration: `peer <peer> local-address <local>`."""

    peer: str
    local: str
    timers: BfdTimers = field(default_factory=BfdTimers)

    def config_lines(self) -> list[str]:
        t = self.timers
        return [f" peer {self.peer} local-address {self.local}",
                f"  receive-interval {t.required_min_rx_ms}",
                f"  transmit-interval {t.desired_min_tx_ms}",
                f"  detect-multiplier {t.detect_mult}",
                " exit"]


def bfdd_config(sessions: Iterable[BfdSessionSpec]) -> str:
    """bfdd's configuration file for `sessions` (FRR's `bfd` node)."""
    lines = ["bfd"]
    for session in sessions:
        lines += session.config_lines()
    return "\n".join([*lines, "exit", ""])


class Bfdd:
    """One bfdd in one lab host's namespace, with its sessions. Stopped by PID (the lab also
    stops it when it stops); its run directory goes with the lab."""

    def __init__(self, lab: NetnsLab, host: str, sessions: Iterable[BfdSessionSpec]) -> None:
        self.lab = lab
        self.host = host
        self.sessions = list(sessions)
        self.pathspace = f"{lab.prefix}-{host}"
        self.rundir = FRR_RUN / self.pathspace
        self.log_path = lab.workdir / f"bfdd-{host}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BfdLabError(f"bfdd in {self.host} is not running")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, timeout: float = 30.0, wait: bool = True) -> None:
        """Write the configuration, start bfdd, wait until vtysh lists every session."""
        user = pwd.getpwnam(FRR_USER)
        self.lab.add_cleanup_path(self.rundir)
        self.rundir.mkdir(parents=True, exist_ok=True)
        os.chown(self.rundir, user.pw_uid, user.pw_gid)
        conf = self.rundir / "bfdd.conf"
        conf.write_text(bfdd_config(self.sessions))
        conf.chmod(0o644)  # read by bfdd after it dropped to frr
        argv = [str(BFDD), "-N", self.pathspace, "-f", str(conf),
                "-i", str(self.rundir / "bfdd.pid"), "-P", "0", "--log", "stdout",
                "--limit-fds", str(max(1024, 4 * len(self.sessions) + 256))]
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.popen(self.host, argv, stdout=log, stderr=subprocess.STDOUT)
        if wait:
                self.wait(lambda peers: len(peers) >= len(self.sessions), timeout,
                      f"bfdd to list its {len(self.sessions)} sessions")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM by PID (SIGKILL after `timeout`): bfdd exits without an AdminDown."""
        if self.proc is None:
            return None
        code = self.lab.stop_process(self.proc, timeout=timeout)
        self.proc = None
        return code

    def restart(self, *, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no bfdd log)"
        return "\n".join(text[-lines:])

    # ---- vtysh -------------------------------------------------------------------------

    def vtysh(self, *commands: str, timeout: float = 10.0) -> str:
        """Run vtysh commands against this bfdd; returns stdout. (vtysh -N warns on stderr
        that /etc/frr/<pathspace>/vtysh.conf is missing: harmless, ignored.)"""
        argv = ["vtysh", "-N", self.pathspace]
        for command in commands:
            argv += ["-c", command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        errors = [line for line in proc.stderr.splitlines() if "vtysh.conf" not in line]
        if proc.returncode != 0 or errors or proc.stdout.lstrip().startswith("%"):
            raise BfdLabError(f"vtysh {' / '.join(commands)} ({self.pathspace}): exit "
                              f"{proc.returncode}: {proc.stdout.strip()} "
                              f"{' '.join(errors)}\n{self.log_tail()}")
        return proc.stdout

    def peers(self) -> list[dict[str, Any]]:
        """`show bfd peers json`: one dict per session (status, id, remote-id, intervals)."""
        rows: list[dict[str, Any]] = json.loads(self.vtysh("show bfd peers json") or "[]")
        return rows

    def counters(self) -> list[dict[str, Any]]:
        """`show bfd peers counters json`: packets in/out, session up/down counts."""
        rows: list[dict[str, Any]] = json.loads(
            self.vtysh("show bfd peers counters json") or "[]")
        return rows

    def session(self, peer: str, local: str | None = None) -> dict[str, Any]:
        for row in self.peers():
            if row.get("peer") == peer and local in (None, row.get("local")):
                return row
        raise BfdLabError(f"bfdd {self.pathspace} has no session to {peer} from {local}")

    def set_timers(self, session: BfdSessionSpec, timers: BfdTimers) -> BfdSessionSpec:
        """Change one session's timers at run time (bfdd starts a Poll Sequence); returns
        the session with its new timers (also kept for a restart)."""
        t = timers
        self.vtysh("configure terminal", "bfd",
                   f"peer {session.peer} local-address {session.local}",
                   f"receive-interval {t.required_min_rx_ms}",
                   f"transmit-interval {t.desired_min_tx_ms}",
                   f"detect-multiplier {t.detect_mult}")
        new = BfdSessionSpec(session.peer, session.local, timers)
        self.sessions = [new if s == session else s for s in self.sessions]
        return new

    def wait(self, ready: Callable[[list[dict[str, Any]]], bool], timeout: float,
             what: str) -> list[dict[str, Any]]:
        """Poll `show bfd peers json` until `ready(rows)`; returns the rows."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        last = ""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise BfdLabError(f"bfdd in {self.host} exited with {self.proc.returncode}:\n"
                                  + self.log_tail())
            try:
                rows = self.peers()
                if ready(rows):
                    return rows
            except (BfdLabError, ValueError, subprocess.TimeoutExpired) as exc:
                last = str(exc)  # the vty socket is not there yet
            if time.monotonic() > deadline:
                raise BfdLabError(f"timed out after {timeout:g}s waiting for {what} "
                                  f"({self.pathspace}): {last or rows}\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu_ticks(self) -> tuple[int, int]:
        """(utime, stime) of bfdd in clock ticks (/proc/<pid>/stat fields 14, 15)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return int(fields[11]), int(fields[12])


class FrrBfd:
    """bfdd for every BFD peer of a running STAR `NetnsLab`, one per peer namespace: each
    session points at the monitor address (hbmon's data plane) from the peer's address,
    with the peer's timers."""

    def __init__(self, lab: NetnsLab) -> None:
        missing = frr_missing()
        if missing:
            raise BfdLabError("cannot run FRR here; missing: " + "; ".join(missing))
        topo = lab.topology
        if topo.layout is not Layout.STAR:
            raise BfdLabError("FRR BFD peers need a STAR lab: one bfdd holds one session to "
                              "the monitor (FRR keys single-hop sessions without the local "
                              "address)")
        self.lab = lab
        self.peers: dict[str, PeerSpec] = {p.name: p for p in topo.bfd_peers}
        # by peer name = host
        self.daemons: dict[str, Bfdd] = {
            p.name: Bfdd(lab, p.name, [
                BfdSessionSpec(topo.monitor_address, p.address, p.bfd or BfdTimers())])
            for p in self.peers.values()}

    def __enter__(self) -> FrrBfd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, timeout: float = 60.0) -> None:
        """Start every bfdd that is not running, then wait until each lists its session
        (started all first: a bfdd takes a moment to come up, and they overlap)."""
        waiting = [d for d in self.daemons.values() if not d.running()]
        for daemon in waiting:
            daemon.start(wait=False)
        deadline = time.monotonic() + timeout
        for daemon in waiting:
            daemon.wait(lambda rows: len(rows) >= 1, max(0.1, deadline - time.monotonic()),
                        "bfdd to list its session")

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()

    def bfdd(self, peer: str) -> Bfdd:
        """The bfdd holding `peer`'s session."""
        return self.daemons[peer]

    def spec(self, peer: str) -> BfdSessionSpec:
        local = self.peers[peer].address
        return next(s for s in self.bfdd(peer).sessions if s.local == local)

    def session(self, peer: str) -> dict[str, Any]:
        """FRR's view of `peer`'s session (a `show bfd peers json` row)."""
        return self.bfdd(peer).session(self.lab.topology.monitor_address,
                                       self.peers[peer].address)

    def sessions(self) -> dict[str, dict[str, Any]]:
        """FRR's view of every session, by peer name (one vtysh call per bfdd)."""
        out: dict[str, dict[str, Any]] = {}
        for name, daemon in self.daemons.items():
            for row in daemon.peers():
                if row.get("local") == self.peers[name].address:
                    out[name] = row
        return out

    def set_timers(self, peer: str, timers: BfdTimers) -> None:
        self.bfdd(peer).set_timers(self.spec(peer), timers)

    def cut_link(self, peer: str) -> None:
        self.lab.set_link(peer, up=False)

    def restore_link(self, peer: str) -> None:
        self.lab.set_link(peer, up=True)

    def wait_status(self, expected: Mapping[str, str | set[str]], timeout: float
                    ) -> dict[str, dict[str, Any]]:
        """Poll until every named peer's FRR status ("up", "down", "init", "shutdown") is the
        expected one; returns the sessions. BfdLabError names those that did not get there."""
        want = {n: {s} if isinstance(s, str) else set(s) for n, s in expected.items()}
        deadline = time.monotonic() + timeout
        while True:
            rows = self.sessions()
            wrong = {n: rows.get(n, {}).get("status", "?") for n, ok in want.items()
                     if rows.get(n, {}).get("status") not in ok}
            if not wrong:
                return rows
            if time.monotonic() > deadline:
                raise BfdLabError(f"FRR sessions not in the expected state after {timeout:g}s: "
                                  + ", ".join(f"{n}={s} (want {'/'.join(sorted(want[n]))})"
                                              for n, s in sorted(wrong.items())))
            time.sleep(0.1)

    def cpu_ticks(self) -> int:
        """utime + stime of every bfdd, in clock ticks."""
        return sum(sum(d.cpu_ticks()) for d in self.daemons.values() if d.running())
