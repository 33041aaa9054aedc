#!/usr/bin/env python3
"""Run every benchmark in bench/ and print one summary: each number next to its target (the
issues' "Speed" sections) and next to reference figures of the field (hardware BFD, bmv2,
XDP; sources in REFERENCES below). Ratios are from this one run and are never asserted: a
missed target is reported, not a failure. A bench that crashes is a failure (exit 1).

    python bench/run_all.py                  # run bench/bench_*.py one at a time, then summarize
    python bench/run_all.py --only xdp read  # just those (bench_xdp.py, bench_read.py)
    python bench/run_all.py --summary-only   # summarize bench/results/*.json as they are
    python bench/run_all.py --max-load 3     # before each bench, wait (polling, bounded) until
                                             # the 1-minute load average is below 3

Writes bench/results/summary.json (the table, the run's date, machine and per-bench status).
Most benches need root (namespaces, BPF); `make bench` runs this.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
RESULTS = BENCH_DIR / "results"
SUMMARY = RESULTS / "summary.json"

# A path step: a dict key, a list index, or a dict of key -> value that picks the first list
# element with those values.
Step = str | int | dict[str, Any]


@dataclass(frozen=True)
class Reference:
    """A figure to compare with: `value` in the metric's unit; `better` says which way is
    better for the metric ("higher" or "lower")."""

    name: str
    value: float
    source: str


@dataclass(frozen=True)
class Metric:
    result: str  # bench/results/<result>.json
    label: str
    unit: str
    path: tuple[Step, ...] = ()
    better: str = "higher"  # or "lower"
    # instead of `path`: (this result, the results directory) -> value
    derive: Callable[[dict[str, Any], Path], float | None] | None = None
    target: Reference | None = None
    references: tuple[Reference, ...] = ()


# -- reference figures (/work/shared/anchors.md, with its sources) ---------------------------

XDP_NIC_DROP = Reference("XDP drop on a real NIC, one core", 24.0,
                         "XDP paper, CoNEXT 2018")
XDP_NIC_NS = Reference("XDP count-then-pass on a real NIC", 13.0, "XDP paper, CoNEXT 2018")
BMV2_PPS = Reference("bmv2 simple_switch, tuned build (80-100 kpps)", 0.1,
                     "p4lang/behavioral-model docs/performance.md; p4lang/tutorials#303")
LOOKUP_BATCH = Reference("BPF_MAP_LOOKUP_BATCH at batch 1,000", 0.3,
                         "bpf mailing-list cover letter for batch ops")
LOOKUP_ONE = Reference("BPF map lookup, one syscall per entry", 1.35,
                       "bpf mailing-list cover letter for batch ops")
# FRR bfdd: 128 sessions at 100 ms x 5 drove it to ~90 % CPU: 128 x 10 / 0.9 heartbeats per
# CPU-second (its own sends and receives; ours are the data plane's, so this shows offload).
FRR_HB_PER_CPU_S = Reference("FRR bfdd, 128 sessions at 100 ms (~90 % CPU)", 128 * 10 / 0.9,
                             "FRR doc/user/bfd.rst; SONiC BFD scale-enhancement design")
# detection time = interval x multiplier
ASR9K_DETECT = Reference("Cisco ASR 9000 hardware BFD, 3.3 ms x 3", 9.9,
                         "ASR 9000 routing configuration guide 5.1.x")
EXOS_DETECT = Reference("Extreme EXOS BFD hardware assist, 3 ms x 3", 9.0,
                        "Extreme switch engine docs")
FRR_DETECT = Reference("FRR bfdd at its 10 ms floor, x 3", 30.0, "FRR doc/user/bfd.rst")
SONIC_BGP_DETECT = Reference("SONiC hardware BFD for BGP, 300 ms x 3", 900.0,
                             "sonic-net/SONiC doc/bfd BFD HW Offload HLD")
OVS_DETECT = Reference("OVS BFD at its 100 ms floor, x 3", 300.0, "openvswitch lib/bfd.c")
SONIC_SESSIONS = Reference("SONiC SAI hardware BFD sessions", 4000, "SONiC BFD HW Offload HLD")
ASR9K_SESSIONS = Reference("ASR 9000 sessions per line card (>= 50 ms)", 8000,
                           "ASR 9000 routing configuration guide 5.1.x")
PY_UDP_TUNED = Reference("Python blocking recv loop, one core (>= 150 kpps)", 150_000,
                         "measured on this machine kind (anchors.md)")
PY_UDP_ASYNCIO = Reference("Python asyncio datagram endpoint (10-18 kpps)", 18_000,
                           "measured on this machine kind (anchors.md)")
# issue 9: a plain Python monitor doing hbmon's job at 4,096 peers x 10 Hz on this machine
# kind (user 0.11 + sys 0.29); the goal is hbmon's user-space CPU <= 1/20 of it
PLAIN_MONITOR = Reference("plain Python monitor, 4,096 peers x 10 Hz", 0.41, "issue 9")
OFFLOAD_GOAL = Reference("issue 9: <= 1/20 of the plain monitor", round(0.41 / 20, 4),
                         "issue 9")


def _offload(monitor: str, peers: int, rate: float, key: str) -> tuple[Step, ...]:
    return ("rows", {"monitor": monitor, "peers": peers, "rate_hz": rate}, key)


def _per_entry_us(method: str, peers: int,
                  ) -> Callable[[dict[str, Any], Path], float | None]:
    def derive(data: dict[str, Any], results: Path) -> float | None:
        row = select(data, ("results", {"peers": peers}))
        ms = select(row, (method, "median_ms")) if row is not None else None
        if ms is None:
            return None
        return float(ms) * 1000.0 / (peers * int(row.get("registers", 14)))
    return derive


def _heartbeats_per_cpu_s(rate: str) -> Callable[[dict[str, Any], Path], float | None]:
    def derive(data: dict[str, Any], results: Path) -> float | None:
        peers = select(data, ("cpu", "peers"))
        cpu = select(data, ("cpu", "kernel_target", rate, "cpu_s_per_s"))
        hz = float(rate.removesuffix("Hz"))
        if peers is None or not cpu:
            return None
        return float(peers) * hz / float(cpu)
    return derive


def _bmv2_over_xdp(data: dict[str, Any], results: Path) -> float | None:
    bmv2_us = select(data, ("run", "bmv2_us_per_packet"))
    try:
        xdp = json.loads((results / "xdp.json").read_text())
    except (OSError, ValueError):
        return None
    xdp_ns = select(xdp, ("veth_flood", "xdp_ns_per_packet_on_veth"))
    if not bmv2_us or not xdp_ns:
        return None
    return float(bmv2_us) * 1000.0 / float(xdp_ns)


# issue 9: a verdict within 1 s of its data-plane evidence; rounds within +-1 ms of the period
FRESH_1S = Reference("issue 9: within 1 s of the evidence", 1000.0, "issue 9")
PERIOD_1MS = Reference("issue 9: within +-1 ms of the period", 1.0, "issue 9")


def _detect(case: str, series: str, pct: str) -> tuple[Step, ...]:
    return ("cases", case, "down", series, pct)


def _bfd_held(case: str) -> Callable[[dict[str, Any], Path], float | None]:
    """The case's session count if they all stayed Up through the window (none: 0)."""
    def derive(data: dict[str, Any], results: Path) -> float | None:
        got = select(data, ("cases", case))
        if not isinstance(got, dict) or "sessions" not in got:
            return None
        return float(got["sessions"]) if got.get("held") else 0.0
    return derive


def _bfd_metrics(case: str, label: str, detect_ref: Reference) -> tuple[Metric, ...]:
    """bench_bfd.py: hbmon's BFD sessions against FRR bfdd (issue 13), one case."""
    interval, mult = (float(x.removesuffix("ms")) for x in case.split("_x"))
    # RFC 5880 6.8.4: Down once a detection time has passed since the last packet, found
    # within a check's granularity (the default BFD tick, a tenth of the interval)
    detect = Reference(f"RFC 5880 detection time + one tick, {label}",
                       interval * mult + interval / 10, "RFC 5880 6.8.4; docs/bfd.md")
    return (
        Metric("bfd", f"BFD sessions with FRR held, {label}", "sessions",
               derive=_bfd_held(case), references=(SONIC_SESSIONS,)),
        Metric("bfd", f"BFD last packet -> DOWN in the data plane, {label}, p50", "ms",
               ("cases", case, "detection_ms", "last_packet_to_down", "p50"), better="lower",
               target=detect, references=(detect_ref,)),
        Metric("bfd", f"BFD last packet -> DOWN in the data plane, {label}, max", "ms",
               ("cases", case, "detection_ms", "last_packet_to_down", "max"), better="lower",
               target=detect),
        Metric("bfd", f"BFD cause (link cut / bfdd stopped) -> our DOWN, {label}, p50", "ms",
               ("cases", case, "detection_ms", "all", "p50"), better="lower"),
        Metric("bfd", f"hbmon user CPU per BFD session, {label}", "ms/s",
               ("cases", case, "cpu", "hbmon_user_ms_per_s_per_session"), better="lower"),
        Metric("bfd", f"FRR bfdd CPU (user) per session, {label}", "ms/s",
               ("cases", case, "cpu", "frr_user_ms_per_s_per_session"), better="lower"),
        Metric("bfd", f"FRR bfdd user CPU / hbmon user CPU, same sessions, {label}", "x",
               ("cases", case, "cpu", "frr_user_over_hbmon_user")),
        Metric("bfd", f"FRR bfdd CPU / hbmon CPU (user + system), {label}", "x",
               ("cases", case, "cpu", "frr_total_over_hbmon_total")),
    )


METRICS: tuple[Metric, ...] = (
    Metric("xdp", "XDP responses, known peer (BPF_PROG_TEST_RUN)", "Mpps/core",
           ("prog_test_run", "known_peer_duplicate", "mpps_per_core"),
           target=Reference("issue 4: >= 1 Mpps per core", 1.0, "issue 4"),
           references=(XDP_NIC_DROP, BMV2_PPS)),
    Metric("xdp", "XDP responses recorded on veth (receiver's own cost)", "Mpps/core",
           ("veth_flood", "xdp_mpps_per_core_on_veth"),
           target=Reference("issue 4: >= 1 Mpps per core", 1.0, "issue 4"),
           references=(XDP_NIC_DROP, BMV2_PPS)),
    Metric("xdp", "XDP cost per response on veth", "ns/packet",
           ("veth_flood", "xdp_ns_per_packet_on_veth"), better="lower",
           target=Reference("issue 4: 1 Mpps per core = 1,000 ns", 1000.0, "issue 4"),
           references=(XDP_NIC_NS,)),
    Metric("xdp", "veth flood end to end (generator + receiver, one core)", "Mpps",
           ("veth_flood", "end_to_end_mpps_one_core_gen_plus_rx"),
           target=Reference("issue 4: >= 1 Mpps per core", 1.0, "issue 4"),
           references=(BMV2_PPS,)),
    Metric("bmv2", "bmv2 responses recorded per second (p4src/, this build)", "pps",
           ("run", "responses_per_s"),
           references=(Reference(BMV2_PPS.name, BMV2_PPS.value * 1e6, BMV2_PPS.source),)),
    Metric("bmv2", "bmv2 CPU per packet", "us/packet", ("run", "bmv2_us_per_packet"),
           better="lower"),
    Metric("bmv2", "bmv2 CPU per packet / XDP on veth per packet (same machine)", "x",
           derive=_bmv2_over_xdp, better="lower"),
    Metric("read", "whole-structure read, 65,536 peers (mmap)", "ms",
           ("results", {"peers": 65536}, "mmap", "median_ms"), better="lower",
           target=Reference("issue 4: <= 50 ms", 50.0, "issue 4")),
    Metric("read", "whole-structure read, 4,096 peers (mmap)", "ms",
           ("results", {"peers": 4096}, "mmap", "median_ms"), better="lower"),
    Metric("read", "batched lookup syscalls, per entry (65,536 peers)", "us/entry",
           derive=_per_entry_us("batch_syscalls", 65536), better="lower",
           references=(LOOKUP_BATCH,)),
    Metric("read", "one lookup syscall per entry (65,536 peers)", "us/entry",
           derive=_per_entry_us("per_entry_syscalls", 65536), better="lower",
           references=(LOOKUP_ONE,)),
    Metric("controller", "controller CPU, 4,096 peers x 10 Hz (kernel target)", "CPU-s/s",
           ("cpu", "kernel_target", "10Hz", "cpu_s_per_s"), better="lower"),
    Metric("controller", "controller CPU, 4,096 peers x 100 Hz (kernel target)", "CPU-s/s",
           ("cpu", "kernel_target", "100Hz", "cpu_s_per_s"), better="lower"),
    Metric("controller", "CPU at 100 Hz / CPU at 10 Hz (kernel target)", "x",
           ("cpu", "kernel_target", "ratio_100Hz_to_10Hz"), better="lower",
           # "must stay flat": read here as 10x the rate for at most 25 % more CPU
           target=Reference("issue 5: flat (<= 1.25)", 1.25, "issue 5")),
    Metric("controller", "controller CPU, 4,096 peers x 10 Hz (fake target: its own cost)",
           "CPU-s/s", ("cpu", "fake_target", "10Hz", "cpu_s_per_s"), better="lower"),
    Metric("controller", "CPU at 100 Hz / CPU at 10 Hz (fake target)", "x",
           ("cpu", "fake_target", "ratio_100Hz_to_10Hz"), better="lower",
           target=Reference("issue 5: flat (<= 1.25)", 1.25, "issue 5")),
    Metric("controller", "kernel target's P4Runtime server CPU, 4,096 peers x 10 Hz",
           "CPU-s/s", ("cpu", "kernel_target", "10Hz", "target_server_cpu_s_per_s"),
           better="lower"),
    Metric("controller", "peer heartbeats per controller CPU-second (10 Hz)", "hb/CPU-s",
           derive=_heartbeats_per_cpu_s("10Hz"), references=(FRR_HB_PER_CPU_S,)),
    Metric("controller", "peers monitored in that run", "peers", ("cpu", "peers"),
           references=(SONIC_SESSIONS, ASR9K_SESSIONS)),
    Metric("controller", "detection, kernel target 10 ms x 3, p50", "ms",
           ("detection_latency", "kernel_10ms_x3", "event_published", "p50_ms"),
           better="lower", target=Reference("issue 5: <= 35 ms", 35.0, "issue 5"),
           references=(ASR9K_DETECT, EXOS_DETECT, FRR_DETECT, OVS_DETECT, SONIC_BGP_DETECT)),
    Metric("controller", "detection, kernel target 10 ms x 3, p95", "ms",
           ("detection_latency", "kernel_10ms_x3", "event_published", "p95_ms"),
           better="lower", target=Reference("issue 5: <= 35 ms", 35.0, "issue 5"),
           references=(ASR9K_DETECT, FRR_DETECT)),
    Metric("controller", "detection decided in the kernel data plane (10 ms x 3), p50", "ms",
           ("detection_latency", "kernel_10ms_x3", "dataplane_decision", "p50_ms"),
           better="lower", target=Reference("issue 5: <= 35 ms", 35.0, "issue 5"),
           references=(ASR9K_DETECT, FRR_DETECT)),
    Metric("controller", "detection, bmv2 100 ms x 3, p50", "ms",
           ("detection_latency", "bmv2_100ms_x3", "event_published", "p50_ms"),
           better="lower", target=Reference("issue 5: <= 350 ms", 350.0, "issue 5"),
           references=(OVS_DETECT, SONIC_BGP_DETECT)),
    Metric("controller", "detection, bmv2 100 ms x 3, p95", "ms",
           ("detection_latency", "bmv2_100ms_x3", "event_published", "p95_ms"),
           better="lower", target=Reference("issue 5: <= 350 ms", 350.0, "issue 5")),
    Metric("api", "GET /api/v1/peers, 4,096 peers, p99 (controller, 1 client)", "ms",
           ("results", {"service": "fabric", "variant": "inventory, identity"}, "p99_ms"),
           better="lower"),
    Metric("api", "GET /api/v1/peers, 4,096 peers, p99 (controller, cold: after a change)",
           "ms", ("results", {"service": "fabric", "variant": "inventory, identity, cold"},
                  "p99_ms"), better="lower"),
    Metric("api", "GET /api/v1/peers, 4,096 peers, p99 (controller, gzip)", "ms",
           ("results", {"service": "fabric", "variant": "inventory, gzip"}, "p99_ms"),
           better="lower"),
    Metric("offload", "hbmon user-space CPU (controller + target), 4,096 peers x 10 Hz",
           "CPU-s/s", _offload("hbmon", 4096, 10.0, "user_cpu_s_per_s"), better="lower",
           target=OFFLOAD_GOAL, references=(PLAIN_MONITOR,)),
    Metric("offload", "hbmon user-space CPU, 4,096 peers x 1 Hz", "CPU-s/s",
           _offload("hbmon", 4096, 1.0, "user_cpu_s_per_s"), better="lower",
           target=OFFLOAD_GOAL),
    Metric("offload", "hbmon user-space CPU, 4,096 peers x 100 Hz", "CPU-s/s",
           _offload("hbmon", 4096, 100.0, "user_cpu_s_per_s"), better="lower",
           target=OFFLOAD_GOAL),
    Metric("offload", "hbmon user CPU at 100 Hz / at 1 Hz (4,096 peers)", "x",
           ("goal", "hbmon_100Hz_over_1Hz"), better="lower",
           # "flat from 1 Hz to 100 Hz": read as 100x the rate for at most 25 % more CPU
           target=Reference("issue 9: flat (<= 1.25)", 1.25, "issue 9")),
    Metric("offload", "hbmon user-space CPU, 65,536 peers x 10 Hz", "CPU-s/s",
           _offload("hbmon", 65536, 10.0, "user_cpu_s_per_s"), better="lower",
           target=OFFLOAD_GOAL),
    Metric("offload", "hbmon data-plane BPF CPU (kernel, bpf_stats), 4,096 peers x 10 Hz",
           "CPU-s/s", _offload("hbmon", 4096, 10.0, "bpf_cpu_s_per_s"), better="lower"),
    Metric("offload", "DOWN in the API after the data-plane deadline, 4,096 x 10 Hz", "s",
           _offload("hbmon", 4096, 10.0, "down_freshness_s"), better="lower",
           target=Reference("issue 9: within 1 s", 1.0, "issue 9")),
    Metric("offload", "hbmon rows passing the freshness check (all UP, muted peer DOWN)",
           "fraction", ("goal", "hbmon_fresh_fraction"),
           target=Reference("issue 9: every row", 1.0, "issue 9")),
    Metric("offload", "baseline monitor (tuned Python) CPU, 4,096 peers x 10 Hz", "CPU-s/s",
           _offload("baseline-tuned", 4096, 10.0, "user_cpu_s_per_s"), better="lower",
           # the baseline must be at least as fast as the plain one, or it flatters hbmon
           references=(PLAIN_MONITOR,)),
    Metric("offload", "baseline monitor (asyncio) CPU, 4,096 peers x 10 Hz", "CPU-s/s",
           _offload("baseline-asyncio", 4096, 10.0, "user_cpu_s_per_s"), better="lower",
           references=(PLAIN_MONITOR,)),
    Metric("offload", "tuned baseline CPU / hbmon user CPU, 4,096 peers x 10 Hz", "x",
           ("comparison", "4096x10Hz", "baseline_tuned_over_hbmon"),
           target=Reference("issue 9: >= 20x", 20.0, "issue 9")),
    Metric("detection", "last answer -> SSE DOWN, kernel 10 ms x 3, 1,024 peers, p50", "ms",
           _detect("kernel_10ms_x3", "end_to_end_ms", "p50"), better="lower",
           target=Reference("issue 9: <= 31 ms", 31.0, "issue 9"),
           references=(FRR_DETECT, ASR9K_DETECT)),
    Metric("detection", "last answer -> SSE DOWN, kernel 10 ms x 3, 1,024 peers, p99", "ms",
           _detect("kernel_10ms_x3", "end_to_end_ms", "p99"), better="lower",
           target=Reference("issue 9: <= 35 ms", 35.0, "issue 9")),
    Metric("detection", "DOWN decided in the data plane (digest time_us), 10 ms x 3, p50",
           "ms", _detect("kernel_10ms_x3", "dataplane_decision_ms", "p50"), better="lower",
           references=(FRR_DETECT,)),
    Metric("detection", "last answer -> SSE DOWN, kernel 3.3 ms x 3, 1,024 peers, p99", "ms",
           _detect("kernel_3.3ms_x3", "end_to_end_ms", "p99"), better="lower",
           target=Reference("issue 9: <= 12 ms", 12.0, "issue 9"),
           references=(ASR9K_DETECT, EXOS_DETECT)),
    Metric("detection", "last answer -> SSE DOWN, bmv2 100 ms x 3, p50", "ms",
           _detect("bmv2_100ms_x3", "end_to_end_ms", "p50"), better="lower",
           target=Reference("issue 9: <= 305 ms", 305.0, "issue 9"),
           references=(OVS_DETECT,)),
    Metric("detection", "peer reports DEGRADED -> SSE DEGRADED (10 ms x 3), max", "ms",
           ("cases", "kernel_10ms_x3", "degraded_status", "from_evidence_ms", "max"),
           better="lower", target=FRESH_1S),
    Metric("detection", "50 % loss evidence -> SSE DEGRADED (10 ms x 3), max", "ms",
           ("cases", "kernel_10ms_x3", "degraded_loss", "from_evidence_ms", "max"),
           better="lower", target=FRESH_1S),
    Metric("rounds_load", "round period at a peer, kernel 10 ms: max |deviation|, idle / "
           "1k req/s / 50 MB bodies", "ms",
           ("summary", "kernel_10ms", "worst_max_abs_deviation_ms"), better="lower",
           target=PERIOD_1MS),
    Metric("rounds_load", "round period at a peer, kernel 10 ms, API at ~1k req/s: max "
           "|deviation|", "ms", ("summary", "kernel_10ms", "by_condition", "get",
                                  "max_abs_deviation_ms"), better="lower", target=PERIOD_1MS),
    Metric("rounds_load", "round period at a peer, kernel 10 ms, 50 MB bodies: max "
           "|deviation|", "ms", ("summary", "kernel_10ms", "by_condition", "bulk",
                                 "max_abs_deviation_ms"), better="lower", target=PERIOD_1MS),
    Metric("rounds_load", "round period at a peer, kernel 100 ms: max |deviation|, all "
           "conditions", "ms", ("summary", "kernel_100ms", "worst_max_abs_deviation_ms"),
           better="lower", target=PERIOD_1MS),
    Metric("rounds_load", "round period at a peer, controller-paced PacketOut (old way) "
           "10 ms: max |deviation|", "ms",
           ("summary", "controller_10ms", "worst_max_abs_deviation_ms"), better="lower",
           target=PERIOD_1MS),
    Metric("responder", "responder answers per CPU-second (batched)", "answers/CPU-s",
           ("batched", "answers_per_cpu_s"), references=(PY_UDP_TUNED, PY_UDP_ASYNCIO)),
    Metric("responder", "responder answers per CPU-second (one datagram per syscall)",
           "answers/CPU-s", ("per_datagram", "answers_per_cpu_s"),
           references=(PY_UDP_TUNED, PY_UDP_ASYNCIO)),
    *_bfd_metrics("300ms_x3", "300 ms x 3", SONIC_BGP_DETECT),
    *_bfd_metrics("50ms_x3", "50 ms x 3", OVS_DETECT),
)


def select(data: Any, path: Sequence[Step]) -> Any:
    """Follow `path` into nested JSON; None where it leads nowhere."""
    cur = data
    for step in path:
        if isinstance(step, dict):
            if not isinstance(cur, list):
                return None
            cur = next((row for row in cur if isinstance(row, dict)
                        and all(row.get(k) == v for k, v in step.items())), None)
        elif isinstance(step, int):
            cur = cur[step] if isinstance(cur, list) and -len(cur) <= step < len(cur) else None
        else:
            cur = cur.get(step) if isinstance(cur, dict) else None
        if cur is None:
            return None
    return cur


# -- running ----------------------------------------------------------------------------------


@dataclass
class BenchRun:
    name: str  # "xdp" for bench_xdp.py
    script: str
    status: str = "not run"  # ok | failed (exit N) | timeout | not run
    seconds: float = 0.0
    load_before: float | None = None
    output_tail: str = ""


@dataclass
class Row:
    metric: Metric
    value: float | None
    stale: str | None = None  # the result file predates this run
    comparisons: list[dict[str, Any]] = field(default_factory=list)


def discover() -> list[tuple[str, Path]]:
    return [(p.stem.removeprefix("bench_"), p) for p in sorted(BENCH_DIR.glob("bench_*.py"))]


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_load(limit: float, deadline_s: float) -> float:
    """Poll the 1-minute load average until it is below `limit` or the deadline passes."""
    start = time.monotonic()
    said = -1e9
    while True:
        now = load1()
        waited = time.monotonic() - start
        if now < limit or waited > deadline_s:
            return now
        if waited - said >= 120:  # say it now and then, not every poll
            print(f"   load {now:.2f} >= {limit}: waiting ({waited:.0f}s of at most "
                  f"{deadline_s:.0f}s)", flush=True)
            said = waited
        time.sleep(15)


def run_bench(name: str, script: Path, args: argparse.Namespace) -> BenchRun:
    run = BenchRun(name, str(script.relative_to(ROOT)))
    if args.max_load is not None:
        wait_for_load(args.max_load, args.load_wait)
    run.load_before = round(load1(), 2)
    print(f"== {run.script} (load {run.load_before})", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        run.seconds = round(time.monotonic() - started, 1)
        run.status = f"timeout after {args.timeout}s"
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        run.output_tail = "\n".join(out.splitlines()[-20:])
        print(run.output_tail)
        return run
    run.seconds = round(time.monotonic() - started, 1)
    run.status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    run.output_tail = "\n".join(proc.stdout.splitlines()[-20:])
    print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n")
    print(f"   {run.status} in {run.seconds}s", flush=True)
    return run


# -- summarizing ------------------------------------------------------------------------------


def ratio_text(value: float, ref: Reference, better: str) -> str:
    """value / reference, said the way that reads right for the metric."""
    if ref.value == 0 or value == 0:
        return "n/a"
    r = value / ref.value
    if better == "higher":
        return f"{r:.2f}x" if r >= 0.995 else f"{r:.3f}x (below)"
    # lower is better: a ratio below 1 is good; say how many times better or worse
    return f"{r:.3f}x ({1 / r:.1f}x better)" if r < 1 else f"{r:.2f}x ({r:.1f}x worse)"


def meets(value: float, ref: Reference, better: str) -> bool:
    return value >= ref.value if better == "higher" else value <= ref.value


def summarize(started: float | None, results: Path = RESULTS) -> list[Row]:
    rows: list[Row] = []
    cache: dict[str, tuple[dict[str, Any] | None, float]] = {}
    for m in METRICS:
        if m.result not in cache:
            path = results / f"{m.result}.json"
            try:
                cache[m.result] = (json.loads(path.read_text()), path.stat().st_mtime)
            except (OSError, ValueError):
                cache[m.result] = (None, 0.0)
        data, mtime = cache[m.result]
        value: float | None = None
        if data is not None:
            raw = m.derive(data, results) if m.derive else select(data, m.path)
            value = float(raw) if isinstance(raw, int | float) else None
        row = Row(m, value)
        if data is not None and started is not None and mtime < started:
            row.stale = dt.datetime.fromtimestamp(mtime).isoformat(timespec="minutes")
        if value is not None:
            for ref, kind in ([(m.target, "target")] if m.target else []) + \
                    [(r, "reference") for r in m.references]:
                row.comparisons.append({
                    "kind": kind, "name": ref.name, "value": ref.value, "source": ref.source,
                    "ratio": round(value / ref.value, 4) if ref.value else None,
                    "text": ratio_text(value, ref, m.better),
                    **({"meets": meets(value, ref, m.better)} if kind == "target" else {}),
                })
        rows.append(row)
    return rows


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(rows: list[Row], results: Path = RESULTS) -> None:
    print()
    print("Summary (one run on this machine; ratios = measured / reference, never asserted)")
    current = None
    for row in rows:
        m = row.metric
        if m.result != current:
            current = m.result
            print(f"\n[{current}]  bench/results/{current}.json")
        stale = f"  (stale: result from {row.stale})" if row.stale else ""
        print(f"  {m.label}: {fmt(row.value)} {m.unit}{stale}")
        if row.value is None:
            print("      no value in the result file (bench not run, skipped, or its output "
                  "changed)")
        for c in row.comparisons:
            verdict = ""
            if c["kind"] == "target":
                verdict = "  MEETS" if c["meets"] else "  MISSES"
            print(f"      vs {c['kind']} {c['name']} ({fmt(c['value'])}): {c['text']}{verdict}")
    known = {m.result for m in METRICS}
    others = sorted(p.stem for p in results.glob("*.json")
                    if p.stem not in known and p.name != SUMMARY.name)
    if others:
        print(f"\nresult files without summary rules here: {', '.join(others)}")


def write_summary(rows: list[Row], runs: list[BenchRun], results: Path = RESULTS) -> Path:
    out = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "load_avg_now": round(load1(), 2)},
        "runs": [r.__dict__ for r in runs],
        "metrics": [{
            "result": r.metric.result, "label": r.metric.label, "unit": r.metric.unit,
            "value": r.value, "better": r.metric.better, "stale_since": r.stale,
            "comparisons": r.comparisons,
        } for r in rows],
        "note": "ratios from one run on a shared machine; never asserted",
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / SUMMARY.name
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help="bench names to run (xdp for bench_xdp.py, ...)")
    ap.add_argument("--skip", nargs="+", metavar="NAME", default=[])
    ap.add_argument("--summary-only", action="store_true",
                    help="run nothing; summarize the result files as they are")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="with --summary-only: read result files from (and write summary.json "
                         "to) this directory; the benches always write bench/results")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per bench, seconds")
    ap.add_argument("--max-load", type=float, default=None,
                    help="wait before each bench until the 1-minute load is below this")
    ap.add_argument("--load-wait", type=float, default=600.0,
                    help="longest wait for --max-load, seconds (then run anyway)")
    args = ap.parse_args(argv)

    benches = discover()
    names = {n for n, _ in benches}
    if args.results != RESULTS and not args.summary_only:
        ap.error("--results only goes with --summary-only")
    unknown = [n for n in [*(args.only or []), *args.skip] if n not in names]
    if unknown:
        ap.error(f"unknown bench {unknown}; known: {sorted(names)}")
    runs: list[BenchRun] = []
    started: float | None = None
    if not args.summary_only:
        if not benches:
            print("run_all: no bench/bench_*.py", file=sys.stderr)
            return 1
        started = time.time()
        for name, script in benches:
            if (args.only and name not in args.only) or name in args.skip:
                continue
            runs.append(run_bench(name, script, args))
    rows = summarize(started, args.results)
    print_table(rows, args.results)
    if runs:
        print("\nbench runs:")
        for r in runs:
            print(f"  {r.script}: {r.status}, {r.seconds}s (load before {r.load_before})")
    written = write_summary(rows, runs, args.results)
    print(f"\nwritten: {written}")
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        print(f"run_all: {len(failed)} bench(es) did not finish: "
              f"{', '.join(r.script for r in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
