"""Controller cost and end-to-end detection latency (issue 5). Reported, never asserted.

1. CPU: controller CPU seconds per wall second (utime + stime of an `hbmon serve --no-api`
   process from /proc, over a steady window) with 4,096 peers at 10 Hz and at 100 Hz (10x).
   The data plane replicates one request template per interval and the controller reads the
   structure per poll, so the two numbers should be about equal ("flat").
   Target "kernel": the kernel target with a MULTI lab (one namespace, one responder for every
   address). Target "fake": the in-memory P4Runtime test server (tests/controller), which
   answers the same RPCs without a data plane; it isolates the controller's own cost.
2. Detection latency: peer stops (its responder is muted) -> DOWN event, on the kernel target
   at 10 ms x 3 (goal <= 35 ms), and on bmv2 at 100 ms x 3 (goal <= 350 ms) when bmv2 is
   installed.

Usage: python bench/bench_controller.py [--cpu-window S] [--trials N] [--skip-cpu]
       [--skip-latency] [--cpu-target kernel|fake|both]   (root)
Results: bench/results/controller.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hbmon.config import DEFAULT_BMV2_JSON, DEFAULT_P4INFO, parse_config  # noqa: E402
from hbmon.controller.fabric import Fabric  # noqa: E402
from hbmon.dataplane import targets  # noqa: E402
from hbmon.model import Event, EventKind, Health  # noqa: E402
from hbmon.store.events import EventBus  # noqa: E402
from hbmon.store.sql import open_store  # noqa: E402
from hbmon_kernel.memory import MemoryTarget, serve_memory_target  # noqa: E402
from hbmon_responder.responder import ControlClient  # noqa: E402
from hbmon_topo.model import multi, star  # noqa: E402
from hbmon_topo.netns import NetnsLab  # noqa: E402
from product_lab import serve  # noqa: E402

HBMON = str(Path(sys.executable).with_name("hbmon"))
P4INFO = Path(os.environ.get("HBMON_P4INFO") or DEFAULT_P4INFO)
BMV2_JSON = Path(os.environ.get("HBMON_BMV2_JSON") or DEFAULT_BMV2_JSON)
RESULTS = ROOT / "bench" / "results" / "controller.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        tick.wait(0.02)


def cpu_run(config: dict[str, Any], workdir: Path, warmup: float, window: float,
            ready: Callable[[], bool], target_pid: int | None = None) -> dict[str, float]:
    with serve(config, workdir, args=("--no-api",)) as proc:
        wait_for(lambda: ready() or proc.poll() is not None, 120, "controller programmed")
        if proc.poll() is not None:
            raise RuntimeError((workdir / "serve.log").read_text()[-2000:])
        threading.Event().wait(warmup)  # steady state: programming and first polls done
        c0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        s0 = proc_cpu_seconds(target_pid) if target_pid else 0.0
        threading.Event().wait(window)
        c1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
        s1 = proc_cpu_seconds(target_pid) if target_pid else 0.0
    out = {"cpu_s_per_s": round((c1 - c0) / (t1 - t0), 4), "window_s": round(t1 - t0, 2)}
    if target_pid:
        # the target's P4Runtime server process (not the BPF programs, which run in softirq)
        out["target_server_cpu_s_per_s"] = round((s1 - s0) / (t1 - t0), 4)
    return out


def bench_cpu_fake(peers: int, rates: list[float], warmup: float, window: float,
                   workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    topo = multi(peers)
    for rate in rates:
        # the kernel target's device over its in-memory data plane: no packets, so the CPU
        # counted is the controller's
        server = serve_memory_target()
        try:
            config = {
                "interval_ms": 1000.0 / rate, "poll_interval_ms": 500, "detect_mult": 3,
                "store": f"sqlite:///{workdir / f'fake-{rate}.db'}",
                "switches": [{"name": "s1", "grpc": f"127.0.0.1:{server.port}",
                              "p4info": str(P4INFO)}],
                "peers": topo.peer_dicts("s1"),
            }

            def programmed(server: MemoryTarget = server) -> bool:
                if not server.device.pipeline_set:
                    return False
                tables = ("HbIngress.peers", "HbIngress.peer_ids", "HbEgress.peer_requests")
                return (sum(len(server.table_entries(t)) for t in tables) >= 3 * peers
                        and server.multicast_group(1) is not None)

            result = cpu_run(config, workdir, warmup, window, programmed)
            result["packet_outs"] = server.datapath.packet_out_count
            out[f"{rate:g}Hz"] = result
        finally:
            server.stop()
    return out


def bench_cpu_kernel(peers: int, rates: list[float], warmup: float, window: float,
                     workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    topo = multi(peers)
    with NetnsLab(topo) as lab:
        lab.start_responders(log=False)
        grpc_addr = f"127.0.0.1:{free_port()}"
        with targets.start_target("kernel", lab.port_map, grpc_addr=grpc_addr,
                                  output_path=workdir / "kernel-target.log",
                                  wait=60) as target:
            for rate in rates:
                config = {
                    "interval_ms": 1000.0 / rate, "poll_interval_ms": 500, "detect_mult": 3,
                    "monitor": {"mac": topo.port(1).mac, "ip": topo.monitor_address},
                    "store": f"sqlite:///{workdir / f'kernel-{rate}.db'}",
                    "switches": [{"name": "s1", "grpc": grpc_addr,
                                  "p4info": str(P4INFO)}],
                    "peers": topo.peer_dicts("s1"),
                }
                ctl = ControlClient(lab.ctl_path(topo.peers[0].name))
                base = ctl.get()["stats"]["answered"]

                def answering(base: int = base, ctl: ControlClient = ctl) -> bool:
                    return bool(ctl.get()["stats"]["answered"] > base + peers)

                result = cpu_run(config, workdir, warmup, window, answering, target.pid)
                stats = ctl.get()["stats"]
                result["responder_answered_total"] = stats["answered"]
                out[f"{rate:g}Hz"] = result
    return out


# ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.cond = threading.Condition()

    def __call__(self, events: Any) -> None:
        now = time.monotonic()
        with self.cond:
            self.events.extend((now, e) for e in events)
            self.cond.notify_all()


def detection_latency(kind: str, interval_ms: float, detect: int, trials: int,
                      workdir: Path) -> dict[str, Any]:
    topo = star(2)
    samples: list[float] = []
    engine_samples: list[float] = []
    plane_samples: list[float] = []
    with NetnsLab(topo) as lab:
        lab.start_responders(log=False)
        grpc_addr = f"127.0.0.1:{free_port()}"
        thrift = free_port()
        sw: dict[str, Any] = {"name": "s1", "kind": kind, "grpc": grpc_addr,
                              "p4info": str(P4INFO)}
        if kind == "bmv2":
            sw.update(thrift_port=thrift, bmv2_json=str(BMV2_JSON))
        with targets.start_target(kind, lab.port_map, grpc_addr=grpc_addr, thrift_port=thrift,
                                  output_path=workdir / f"{kind}-latency.log", wait=60):
            config = parse_config({
                "interval_ms": interval_ms, "detect_mult": detect, "poll_interval_ms": 100,
                "monitor": {"mac": topo.port(1).mac, "ip": topo.monitor_address},
                "health": {"flap_count": 1_000_000, "hold_down_s": 0},
                "switches": [sw], "peers": topo.peer_dicts("s1"),
            })
            store = open_store(f"sqlite:///{workdir / f'{kind}-latency.db'}")
            bus = EventBus(store)
            rec = Recorder()
            bus.add_listener(rec)
            fabric = Fabric(config, store, bus)
            fabric.start()
            ctl = ControlClient(lab.ctl_path("peer01"))
            try:
                if not fabric.wait_ready(60):
                    raise RuntimeError(f"{kind}: controller not ready: {fabric.switches()}")
                for _ in range(trials):
                    wait_for(lambda: fabric.health("peer01").state == Health.UP, 30, "UP")
                    # let a few fresh answers land so the silence starts from a clean slot
                    rx = fabric.health("peer01").slot.rx_count
                    wait_for(lambda rx=rx: fabric.health("peer01").slot.rx_count >= rx + 2,
                             10, "answers")
                    with rec.cond:
                        start_index = len(rec.events)
                    t0_wall, t0 = time.time(), time.monotonic()
                    ctl.set(mute=True)

                    def down(start_index: int = start_index) -> bool:
                        return any(e.kind == EventKind.TRANSITION and e.peer == "peer01"
                                   and e.new_state == Health.DOWN
                                   for _, e in rec.events[start_index:])
                    with rec.cond:
                        if not rec.cond.wait_for(down, timeout=30):
                            raise TimeoutError("no DOWN event")
                        seen, event = next(
                            (t, e) for t, e in rec.events[start_index:]
                            if e.peer == "peer01" and e.new_state == Health.DOWN)
                    samples.append((seen - t0) * 1000)  # published (store + fan-out done)
                    engine_samples.append((event.time - t0_wall) * 1000)  # engine decided
                    if kind == "kernel" and event.details.get("source") == "digest":
                        # the kernel target's clock is CLOCK_MONOTONIC, like time.monotonic
                        plane_samples.append(event.details["time_us"] / 1000 - t0 * 1000)
                    ctl.set(mute=False)
            finally:
                fabric.stop()
                store.close()
    samples.sort()
    engine_samples.sort()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(values), 2),
            "p95_ms": round(values[min(len(values) - 1, int(len(values) * 0.95))], 2),
            "min_ms": round(values[0], 2), "max_ms": round(values[-1], 2),
        }

    result: dict[str, Any] = {
        "interval_ms": interval_ms, "detect_mult": detect, "trials": trials,
        "theory_ms": [interval_ms * detect, interval_ms * (detect + 1)],
        "event_published": summary(samples),
        "engine_transition": summary(engine_samples),
    }
    if plane_samples:
        plane_samples.sort()
        result["dataplane_decision"] = summary(plane_samples)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4096)
    parser.add_argument("--cpu-window", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--cpu-target", choices=["kernel", "fake", "both"], default="both")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0 and not (args.skip_latency and args.cpu_target == "fake"):
        print("needs root (namespace labs, kernel target)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    if RESULTS.exists():
        with contextlib.suppress(ValueError):
            results = json.loads(RESULTS.read_text())
    results["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                          "python": platform.python_version()}
    rates = [10.0, 100.0]
    with tempfile.TemporaryDirectory(prefix="hbmon-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_cpu:
            cpu: dict[str, Any] = {"peers": args.peers, "poll_interval_ms": 500}
            if args.cpu_target in ("fake", "both"):
                cpu["fake_target"] = bench_cpu_fake(args.peers, rates, args.warmup,
                                                    args.cpu_window, workdir)
                print("cpu (fake target):", cpu["fake_target"], flush=True)
            if args.cpu_target in ("kernel", "both"):
                cpu["kernel_target"] = bench_cpu_kernel(args.peers, rates, args.warmup,
                                                        args.cpu_window, workdir)
                print("cpu (kernel target):", cpu["kernel_target"], flush=True)
            for key in ("fake_target", "kernel_target"):
                if key in cpu:
                    lo, hi = cpu[key]["10Hz"]["cpu_s_per_s"], cpu[key]["100Hz"]["cpu_s_per_s"]
                    cpu[key]["ratio_100Hz_to_10Hz"] = round(hi / lo, 2) if lo else None
            results["cpu"] = cpu
        if not args.skip_latency:
            latency: dict[str, Any] = {}
            latency["kernel_10ms_x3"] = detection_latency("kernel", 10, 3, args.trials,
                                                          workdir)
            latency["kernel_10ms_x3"]["goal_ms"] = 35
            print("latency kernel:", latency["kernel_10ms_x3"], flush=True)
            if targets.find_simple_switch_grpc() is not None and BMV2_JSON.exists():
                latency["bmv2_100ms_x3"] = detection_latency("bmv2", 100, 3,
                                                             max(5, args.trials // 2), workdir)
                latency["bmv2_100ms_x3"]["goal_ms"] = 350
                print("latency bmv2:", latency["bmv2_100ms_x3"], flush=True)
            else:
                latency["bmv2_100ms_x3"] = {"skipped": "simple_switch_grpc or "
                                            f"{BMV2_JSON.name} missing"}
            results["detection_latency"] = latency
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
