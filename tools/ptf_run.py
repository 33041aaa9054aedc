#!/usr/bin/env python3
"""Run the PTF data-plane suite (ptf_tests/) against one target: bmv2 or the kernel target.

    tools/ptf_run.py --target bmv2|kernel [--ptf-arg ARG ...] [TEST_SPEC ...]

What it does, and undoes whatever happens (failure, Ctrl-C, SIGTERM):
  1. makes a network namespace `hbptf<pid>` and, inside it, one veth pair per port of
     ptf_tests/portmap.json (the target's end and PTF's end; IPv6 off so the kernel sends
     nothing of its own on them);
  2. enters the namespace (so the target's gRPC/Thrift ports on 127.0.0.1 are private to
     this run and never collide with anything else on the machine);
  3. starts the target (`simple_switch_grpc --no-p4 ...` or `hbmon-kernel-target`) with the
     same port list, device id 1 and CPU port 255, and waits for its gRPC server by polling;
  4. runs the stock `ptf` runner from the venv with the port list and --test-params;
  5. stops the target by PID and deletes the namespace (and with it the veths).

Without simple_switch_grpc, TARGET=bmv2 prints "SKIPPED: ..." naming what is missing and
exits 0: nothing was tested and it says so.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))  # hbmon, also when run outside the venv's path

from hbmon.dataplane import targets  # noqa: E402

PTF_DIR = ROOT / "ptf_tests"
PORTMAP = PTF_DIR / "portmap.json"
P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
BMV2_JSON = ROOT / "p4src" / "build" / "heartbeat.json"
LOG_DIR = ROOT / "build" / "ptf"
CLONE_NEWNET = 0x40000000


def say(msg: str) -> None:
    print(f"ptf_run: {msg}", flush=True)


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")


def load_portmap(path: Path) -> tuple[list[tuple[int, int]], int]:
    """[(ptf_port, p4_port)], cpu_port — validated (a bad file is a clear error)."""
    try:
        data = json.loads(path.read_text())
        pairs = [(int(p["ptf_port"]), int(p["p4_port"])) for p in data["ports"]]
        cpu_port = int(data.get("cpu_port", targets.DEFAULT_CPU_PORT))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"ptf_run: bad port map {path}: {exc}") from exc
    if not pairs or len({p for p, _ in pairs}) != len(pairs) \
            or len({q for _, q in pairs}) != len(pairs):
        raise SystemExit(f"ptf_run: port map {path}: ports must be non-empty and unique")
    return pairs, cpu_port


class Lab:
    """The namespace and veth pairs of one run; `close()` removes them (idempotent)."""

    def __init__(self, tag: str, p4_ports: Sequence[int]) -> None:
        self.netns = f"hbptf{tag}"
        # IFNAMSIZ is 16: "hb" + pid (<= 7 digits) + s/p + port (<= 3 digits) fits.
        self.switch_ifaces = {p: f"hb{tag}s{p}" for p in p4_ports}
        self.ptf_ifaces = {p: f"hb{tag}p{p}" for p in p4_ports}
        self.created = False
        self._home_fd: int | None = None

    def create(self) -> None:
        run("ip", "netns", "add", self.netns)
        self.created = True
        ns = ("ip", "-n", self.netns)
        run(*ns, "link", "set", "lo", "up")
        # no IPv6 means no router/neighbour solicitations appearing on the test ports
        run("ip", "netns", "exec", self.netns, "sysctl", "-q", "-w",
            "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for port, sw in self.switch_ifaces.items():
            pt = self.ptf_ifaces[port]
            run(*ns, "link", "add", sw, "type", "veth", "peer", "name", pt)
            for iface in (sw, pt):
                run(*ns, "link", "set", "dev", iface, "up")

    def enter(self) -> None:
        """Move this (single-threaded) process into the namespace; children inherit it."""
        libc = ctypes.CDLL(None, use_errno=True)
        self._home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.netns}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def leave(self) -> None:
        if self._home_fd is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(self._home_fd, CLONE_NEWNET)
        os.close(self._home_fd)
        self._home_fd = None

    def close(self) -> None:
        self.leave()
        if self.created:
            # the veths live in the namespace: deleting it deletes them
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", self.netns)
            self.created = False


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` below runs."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def summarize(output: str, rc: int) -> str:
    ran = re.findall(r"^Ran (\d+) tests? in ([\d.]+)s", output, flags=re.M)
    verdict = re.findall(r"^(OK.*|FAILED \(.*\))$", output, flags=re.M)
    if not ran:
        return f"no test summary from ptf (exit {rc})"
    count, seconds = ran[-1]
    return f"{count} tests in {seconds}s: {verdict[-1] if verdict else '?'} (ptf exit {rc})"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=targets.KINDS, default=targets.BMV2)
    ap.add_argument("--grpc-port", type=int, default=9559)
    ap.add_argument("--thrift-port", type=int, default=targets.DEFAULT_THRIFT_PORT)
    ap.add_argument("--device-id", type=int, default=targets.DEFAULT_DEVICE_ID)
    ap.add_argument("--start-timeout", type=float, default=60.0,
                    help="seconds to wait for the target's gRPC server")
    ap.add_argument("--bmv2-log", action="store_true",
                    help="also write bmv2's packet trace (slow) to build/ptf/")
    ap.add_argument("--p4info", type=Path, default=P4INFO,
                    help="P4Info to push (default: the committed one)")
    ap.add_argument("--bmv2-json", type=Path, default=BMV2_JSON,
                    help="bmv2 JSON to push as device config (default: the committed one)")
    ap.add_argument("--ptf-arg", action="append", default=[],
                    help="extra argument for ptf (repeatable), e.g. --ptf-arg=--failfast")
    ap.add_argument("tests", nargs="*", help="ptf test specs (default: all)")
    args = ap.parse_args(argv)

    kind: str = args.target
    try:
        program = targets.require(kind)
    except targets.TargetMissing as exc:
        if kind == targets.BMV2:
            say(f"SKIPPED: PTF suite on bmv2 not run: {exc}")
            return 0
        say(f"ERROR: {exc}")
        return 2
    p4info, bmv2_json = args.p4info.resolve(), args.bmv2_json.resolve()
    for path in (p4info, bmv2_json):
        if not path.is_file():
            say(f"ERROR: {path} missing (p4src/build/ holds the committed output of "
                "`make p4-build`)")
            return 2
    ptf = Path(sys.executable).with_name("ptf")
    if not ptf.is_file():
        say(f"ERROR: {ptf} missing (pip install -e '.[dev]' installs ptf)")
        return 2
    if os.geteuid() != 0:
        say("ERROR: needs root (creates a network namespace and veth pairs)")
        return 2

    pairs, cpu_port = load_portmap(PORTMAP)
    tag = str(os.getpid())
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    grpc_addr = f"127.0.0.1:{args.grpc_port}"
    lab = Lab(tag, [p4 for _, p4 in pairs])
    target: targets.TargetProcess | None = None
    proc: subprocess.Popen[str] | None = None
    rc = 1
    with terminate_as_interrupt():
        try:
            lab.create()
            lab.enter()
            say(f"namespace {lab.netns}, ports "
                + ", ".join(f"{p4}@{lab.switch_ifaces[p4]}" for _, p4 in pairs))
            started = time.monotonic()
            target = targets.start_target(
                kind, lab.switch_ifaces, grpc_addr=grpc_addr, device_id=args.device_id,
                cpu_port=cpu_port, thrift_port=args.thrift_port, program=program,
                output_path=LOG_DIR / f"{kind}-target.out",
                log_file=LOG_DIR / f"{kind}-bmv2.log" if args.bmv2_log else None,
                wait=args.start_timeout,
            )
            say(f"{kind} target pid {target.pid} ready on {grpc_addr} after "
                f"{time.monotonic() - started:.2f}s")
            params = ";".join([
                f"grpcaddr='{grpc_addr}'",
                f"p4info='{p4info}'",
                f"bmv2_json='{bmv2_json}'",
                f"target='{kind}'",
                f"thrift_port={args.thrift_port}",
                f"device_id={args.device_id}",
                f"cpu_port={cpu_port}",
                f"port_map='{PORTMAP}'",
            ])
            cmd = [str(ptf), "--test-dir", str(PTF_DIR),
                   "--log-file", str(LOG_DIR / f"ptf-{kind}.log"),
                   "--test-params", params, *args.ptf_arg]
            for ptf_port, p4 in pairs:
                cmd += ["-i", f"{ptf_port}@{lab.ptf_ifaces[p4]}"]
            cmd += args.tests
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=LOG_DIR)
            assert proc.stdout is not None
            lines: list[str] = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line)
            rc = proc.wait()
            say(f"PTF on {kind}: {summarize(''.join(lines), rc)}")
            if target.running() is False:
                say(f"ERROR: the {kind} target exited during the run:\n{target.output_tail()}")
                rc = rc or 1
        except KeyboardInterrupt:
            say("interrupted")
            rc = 130
        except (targets.TargetError, RuntimeError, OSError) as exc:
            say(f"ERROR: {exc}")
            rc = 2
        finally:
            if proc is not None:
                targets.stop_process(proc)
            if target is not None:
                target.stop()
            lab.close()
            say(f"cleaned up (ptf and target stopped, namespace {lab.netns} deleted); "
                f"logs in {LOG_DIR.relative_to(ROOT)}/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
