"""`hbmon demo`: the whole product on one machine, in a lab it builds and removes.

16 peers in network namespaces (a few of them faulty), the data-plane target on the
monitor port, the controller with its REST API and dashboard on 127.0.0.1, and a live
table in the terminal. Ctrl-C stops and removes everything. With `--bfd`, FRR's bfdd runs
in a few more namespaces and hbmon holds a BFD session with each (docs/bfd.md).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

STATE_STYLE = {"UP": "green", "DEGRADED": "yellow", "DOWN": "bold red", "UNKNOWN": "dim",
               "ADMIN_DOWN": "blue"}


def _fault_text(peer: Any) -> str:
    if peer.bfd is not None:
        t = peer.bfd
        return f"FRR bfdd {t.desired_min_tx_ms}/{t.required_min_rx_ms} ms x{t.detect_mult}"
    faults = peer.faults
    parts = []
    if faults.mute:
        parts.append("stopped")
    if faults.loss_pct:
        parts.append(f"loss {faults.loss_pct:g}%")
    if faults.delay_ms:
        parts.append(f"+{faults.delay_ms:g}ms")
    if faults.flap_s:
        parts.append(f"flap {faults.flap_s:g}s")
    if faults.status != "healthy":
        parts.append(f"says {faults.status}")
    return ", ".join(parts)


def _table(topology: Any, rows: list[dict[str, Any]], title: str) -> Table:
    by_name = {r["name"]: r for r in rows}
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for col, justify in (("peer", "left"), ("address", "left"), ("state", "left"),
                         ("since", "right"), ("rtt µs", "right"), ("loss", "right"),
                         ("rx/tx", "right"), ("says", "left"), ("injected", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    now = time.time()
    for peer in topology.peers:
        row = by_name.get(peer.name, {})
        state = str(row.get("state", "?"))
        since = row.get("since") or 0
        session = row.get("bfd") or {}
        if peer.bfd is not None:  # a BFD session: no RTT nor loss; "says" is its state
            rtt, loss = "-", "-"
            says = f"bfd {str(session.get('remote_state') or '-').lower()}"
        else:
            rtt = str(row.get("rtt_last_us", "-"))
            loss = f"{100 * row['loss_ratio']:.0f}%" if "loss_ratio" in row else "-"
            says = {0: "ok", 1: "degr", 2: "drain"}.get(row.get("reported_status", -1), "-")
        table.add_row(
            peer.name, peer.address, f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            f"{now - since:.0f}s" if since else "-", rtt, loss,
            f"{row.get('rx_count', 0)}/{row.get('tx_count', 0)}", says, _fault_text(peer),
        )
    return table


@click.command()
@click.option("--target", type=click.Choice(["kernel", "bmv2"]), default="kernel",
              show_default=True, help="Data plane to run on.")
@click.option("--peers", "n_peers", type=click.IntRange(4, 512), default=16, show_default=True)
@click.option("--mininet", is_flag=True,
              help="Build the lab with Mininet instead of plain namespaces.")
@click.option("--cli", "mininet_cli", is_flag=True,
              help="With --mininet: Mininet's mininet> CLI instead of the live table "
                   "(pingall, xterm peer01, peer01 ping ..., health); exit ends the demo.")
@click.option("--api-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="REST API / dashboard port on 127.0.0.1 (0: any free port).")
@click.option("--interval-ms", type=click.FloatRange(1, 10_000), default=100.0,
              show_default=True, help="Heartbeat interval.")
@click.option("--detect-mult", type=click.IntRange(1, 255), default=3, show_default=True)
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Run this many seconds, then check the states and exit (no TTY needed).")
@click.option("--once", is_flag=True,
              help="Exit as soon as every peer shows its expected state (exit 1 on timeout).")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="With --once: how long to wait for the expected states.")
@click.option("--bfd", "bfd", is_flag=True,
              help="Also run FRR's bfdd in --bfd-peers namespaces: BFD sessions (RFC 5880) "
                   "next to the heartbeat peers.")
@click.option("--bfd-peers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --bfd: how many FRR peers.")
@click.option("--bfd-tx-ms", type=click.IntRange(1, 60_000), default=300, show_default=True,
              help="With --bfd: desired min TX and required min RX of both ends (ms).")
def demo(target: str, n_peers: int, mininet: bool, mininet_cli: bool, api_port: int,
         interval_ms: float, detect_mult: int, duration: float | None, once: bool,
         timeout: float, bfd: bool, bfd_peers: int, bfd_tx_ms: int) -> None:
    """Run hbmon end to end in a throw-away lab (needs root)."""
    from hbmon_topo.model import BfdTimers
    from hbmon_topo.model import demo as demo_topology
    from hbmon_topo.netns import LabError, NetnsLab
    from hbmon_topo.stack import Stack, StackError, StackOptions, expected_states, missing_for

    console = Console()
    if os.geteuid() != 0:
        raise click.ClickException("the demo builds network namespaces and loads BPF: run it "
                                   "as root (sudo make demo)")
    missing = missing_for(target)
    if mininet:
        from hbmon_topo.mn import mininet_available

        problem = mininet_available()
        if problem:
            missing.append(problem)
    if mininet_cli and not mininet:
        raise click.UsageError("--cli is Mininet's CLI: add --mininet")
    if mininet_cli and (once or duration is not None):
        raise click.UsageError("--cli runs until you type exit: drop --once / --duration")
    if bfd and mininet:
        raise click.UsageError("--bfd runs FRR in plain namespaces: drop --mininet")
    if bfd:
        from hbmon_topo.bfd import frr_missing

        missing += frr_missing()
    if missing:
        raise click.ClickException(f"cannot run the demo on {target}: missing\n  - "
                                   + "\n  - ".join(missing))
    topology = demo_topology(n_peers, bfd_peers=bfd_peers if bfd else 0,
                             bfd=BfdTimers(bfd_tx_ms, bfd_tx_ms, 3))
    if mininet and target == "bmv2":
        # one switch port per peer, as a P4 switch would be cabled
        from hbmon_topo.model import DEMO_FAULTS, star

        topology = star(n_peers, ports=n_peers, name="demo",
                        faults={i: f for i, f in DEMO_FAULTS.items() if i < n_peers})
    options = StackOptions(target=target, interval_ms=interval_ms, detect_mult=detect_mult,
                           api_port=api_port)
    lab: Any
    if mininet:
        from hbmon_topo.mn import MininetLab
        from hbmon_topo.stack import free_tcp_port

        lab = MininetLab(topology, target=target, grpc_addr=f"127.0.0.1:{free_tcp_port()}",
                         thrift_port=free_tcp_port())
    else:
        lab = NetnsLab(topology)
    expected = expected_states(topology)
    stopper = _Stopper().install()
    ok = True
    try:
        with console.status("building the lab"):
            lab.start()
            console.print(f"lab: {len(topology.peers)} peers, monitor ports "
                          + ", ".join(f"{p}@{i}" for p, i in sorted(lab.port_map.items())))
            ctl = lab.start_responders()
            console.print(f"responders answering (control sockets in {lab.workdir})")
            frr = None
            if bfd:
                from hbmon_topo.bfd import FrrBfd

                frr = FrrBfd(lab)
                frr.start()
                console.print(f"FRR bfdd running for {', '.join(frr.peers)}")
        stack = Stack(lab, options, target_running=mininet and target == "bmv2")
        try:
            with console.status("starting target and controller"):
                stack.start(on_step=lambda msg: console.print(f"[dim]{msg}[/]"))
            # from here on a signal only sets the event: raised mid-print, KeyboardInterrupt
            # would leave rich's output buffer half-written (--once waits inside the stack,
            # so there it still raises)
            if not once and not mininet_cli:  # Mininet's CLI handles Ctrl-C itself
                stopper.defer()
            console.print(f"\n[bold]dashboard:[/] {stack.url}/   REST API: {stack.url}/api/v1/"
                          f"   (write token: {stack.token_file})")
            muted = next((p.name for p in topology.peers if p.faults.mute),
                         topology.peers[0].name)
            console.print(f"inject a fault:  hbmon responder --ctl {ctl[muted]} start   "
                          f"(or stop | set loss=30 | set status=draining)")
            if frr is not None:
                first = frr.bfdd(next(iter(frr.peers)))
                console.print(
                    f"BFD sessions: {stack.url}/api/v1/health/peers (kind bfd);  FRR's side: "
                    f"vtysh -N {first.pathspace} -c 'show bfd peers'  (one pathspace per "
                    f"peer: {lab.prefix}-bfd01 ...);  stop one: kill {first.pid}")
            if mininet_cli:
                console.print("Mininet's CLI: pingall, peer01 ping peer02, xterm peer01, "
                              "health (hbmon's table); exit ends the demo")
                lab.cli(health=lambda: console.print(
                    _table(topology, stack.health(), "peer health")))
            else:
                ok = _run(console, stack, topology, expected, duration, once, timeout,
                          stopper.event)
            if stopper.event.is_set():
                console.print("\ninterrupted")
        finally:
            with console.status("stopping the controller and the target"):
                stack.stop()
    except (StackError, LabError) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        console.print("\ninterrupted")
    finally:
        # a second Ctrl-C (or the rest of a group's SIGINT) must not leave the lab half-removed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with console.status("removing the lab"):
            lab.stop()
        console.print("lab removed")
    if not ok:
        sys.exit(1)


class _Stopper:
    """SIGINT stops the demo cleanly, whoever sends it. Installed explicitly:
    a process started in the background by a non-interactive shell (a supervisor, a CI
    script's `make demo &`) inherits SIGINT *ignored*, so Python's Ctrl-C handler is not
    there, while the controller the demo starts (uvicorn sets its own handlers) would still
    die of a group's SIGINT and leave the demo polling a dead API. While the lab is built
    a signal raises KeyboardInterrupt; once `defer()`red it only sets `event`. (SIGTERM and
    SIGHUP are the lab's: they unwind with LabInterrupted, exit status 143.)"""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._deferred = False

    def install(self) -> _Stopper:
        signal.signal(signal.SIGINT, self)
        return self

    def defer(self) -> None:
        self._deferred = True
        if self.event.is_set():
            raise KeyboardInterrupt

    def __call__(self, signum: int, frame: object) -> None:
        self.event.set()
        if not self._deferred:
            raise KeyboardInterrupt


def _run(console: Console, stack: Any, topology: Any, expected: dict[str, set[str]],
         duration: float | None, once: bool, timeout: float, stop: threading.Event) -> bool:
    """Show the live table; returns whether the states matched (always True interactively)."""
    from hbmon_topo.stack import StackError

    if once:
        try:
            stack.wait_for(expected, timeout)
        except StackError as exc:
            console.print(_table(topology, stack.health(), "peer health (timed out)"))
            console.print(f"[red]{exc}[/]")
            return False
        console.print(_table(topology, stack.health(), "peer health"))
        console.print("[green]every peer shows its expected state[/]")
        return True
    end = time.monotonic() + duration if duration is not None else None
    title = f"peer health — {stack.url}/ — Ctrl-C to stop"
    if console.is_terminal and duration is None:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                live.update(_table(topology, stack.health(), title))
                if stop.wait(0.5):
                    return True
    while end is None or time.monotonic() < end:
        if stop.wait(min(5.0, max(0.0, end - time.monotonic())) if end else 5.0):
            return True
        console.print(_table(topology, stack.health(), title))
    states = stack.states()
    wrong = {n: states.get(n) for n, ok in expected.items() if states.get(n) not in ok}
    if wrong:
        console.print(f"[red]unexpected states: {wrong}[/]")
        return False
    console.print("[green]every peer shows its expected state[/]")
    return True
