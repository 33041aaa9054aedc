"""BFD offload against FRR's bfdd (issue 13): sessions held, detection time, CPU per session.

One run, the real product on both ends: a STAR namespace lab with N FRR peers (one bfdd per
namespace: FRR 8.4 keys single-hop sessions without the local address, docs/labs.md "BFD
lab"), `hbmon-kernel-target` on the monitor port and `hbmon serve` holding a BFD session
with each (docs/bfd.md). Per case (300 ms x 3, then 50 ms x 3, both ends configured alike):

- **held**: every session Up on both sides (our API, `show bfd peers json`) and still Up
  after the CPU window, with FRR's session-down counters unchanged (no flap);
- **CPU** over a steady window: user (and system) time of hbmon's processes (`hbmon serve`
  + the kernel target, /proc/<pid>/stat utime/stime) against the bfdd processes' time for
  the same sessions (bfdd does all of BFD in user space: timers, sends, receives), per
  session and as the ratio FRR / hbmon. hbmon's own packets are sent, received and timed
  in the kernel's BPF programs, so that CPU is not in any process: it is the point of the
  offload. FRR's per-session cost is measured at one session per process, its best case
  for a per-process runtime but with N event loops;
- **detection**: a session's cause (its link cut; its bfdd stopped, SIGTERM: no AdminDown)
  -> our DOWN (the controller's transition time `since`, wall clock), as a distribution; and
  the data plane's own wait, last packet recorded -> DOWN on the target's clock (RFC 5880
  6.8.4: the detection time itself, plus the check's granularity).

Reported, never asserted (docs/benchmarks.md). Writes bench/results/bfd.json.

Usage: python bench/bench_bfd.py [--sessions 128] [--seconds 20] [--samples 12]
                                 [--cases 300x3@128,50x3@128]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from product_lab import git_commit, percentiles, wait_for  # noqa: E402
from results_io import write_result  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (/proc/<pid>/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def parse_case(text: str, sessions: int) -> tuple[int, int, int]:
    """"300x3" or "300x3@128" (sessions for this case) -> (interval ms, mult, sessions)."""
    case, _, n = text.partition("@")
    interval, _, mult = case.partition("x")
    return int(interval.removesuffix("ms")), int(mult or 3), int(n or sessions)


class Api:
    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10.0)

    def rows(self) -> dict[str, dict[str, Any]]:
        response = self.client.get("/api/v1/health/peers")
        response.raise_for_status()
        return {r["name"]: r for r in response.json()["peers"]}

    def downs(self, since: float, until: float) -> list[dict[str, Any]]:
        """Our DOWN transitions between two wall-clock times (newest 1,000 events)."""
        response = self.client.get("/api/v1/events/history",
                                   params={"kind": "transition", "limit": 1000})
        response.raise_for_status()
        return [e for e in response.json()["events"]
                if since <= e["time"] <= until and e["new_state"] == "DOWN"]

    def plane_wait_ms(self, name: str, since: float) -> float | None:
        """How long the data plane waited from the session's last recorded packet to its
        DOWN (RFC 5880 6.8.4), on the target's clock: the DOWN digest's time_us minus the
        slot's last_rx_us as a poll after the DOWN read it. None: no such digest."""
        response = self.client.get(f"/api/v1/peers/{name}/history",
                                   params={"kind": "transition", "limit": 20})
        response.raise_for_status()
        down = next((e for e in response.json()["events"] if e["new_state"] == "DOWN"
                     and e["details"].get("source") == "digest"), None)
        if down is None or not wait_for(lambda: self.row(name)["sampled_at"] > since, 5, 0.05):
            return None
        last_rx_us = self.row(name)["bfd"]["last_rx_us"]
        return (down["details"]["time_us"] - last_rx_us) / 1000

    def state_is(self, name: str, state: str) -> Callable[[], bool]:
        return lambda: self.row(name)["state"] == state

    def row(self, name: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/peers/{name}/health")
        response.raise_for_status()
        row: dict[str, Any] = response.json()
        return row


def run_case(n: int, interval_ms: int, mult: int, seconds: float, samples: int
             ) -> dict[str, Any]:
    from hbmon_topo.bfd import FrrBfd
    from hbmon_topo.model import BfdTimers, star
    from hbmon_topo.netns import NetnsLab
    from hbmon_topo.stack import Stack, StackOptions

    timers = BfdTimers(interval_ms, interval_ms, mult)
    topo = star(0, bfd_peers=n, bfd=timers, name=f"bench-bfd-{interval_ms}")
    names = [p.name for p in topo.peers]
    out: dict[str, Any] = {"sessions": n, "interval_ms": interval_ms, "detect_mult": mult,
                           "detect_time_ms": timers.detect_time_ms}
    t_build = time.monotonic()
    with NetnsLab(topo) as lab:
        frr = FrrBfd(lab)
        frr.start(timeout=120 + n)
        with Stack(lab, StackOptions(target="kernel", api_port=0)) as stack:
            api = Api(stack.url)
            out["setup_s"] = round(time.monotonic() - t_build, 1)
            t_up = time.monotonic()
            all_up = wait_for(lambda: all(r["state"] == "UP" for r in api.rows().values())
                              and len(api.rows()) == n, 60 + n / 4, 0.25)
            frr_up = all_up and wait_for(
                lambda: all(s.get("status") == "up" for s in frr.sessions().values()), 60,
                0.5)
            out["all_up_s"] = round(time.monotonic() - t_up, 1)
            out["all_up"] = bool(all_up and frr_up)
            if not out["all_up"]:
                rows = api.rows()
                out["not_up"] = sorted(k for k, r in rows.items() if r["state"] != "UP")[:20]
                print(f"{interval_ms} ms x {mult}: not every session came Up: "
                      f"{out['not_up']}", flush=True)
                return out
            # ---- CPU over a steady window -----------------------------------------------
            assert stack.serve is not None and stack.target is not None
            hb_pids = {"serve": stack.serve.pid, "kernel_target": stack.target.pid}
            bfdd_pids = [d.pid for d in frr.daemons.values()]
            downs_before = {c.get("local"): c.get("session-down") for d in frr.daemons.values()
                            for c in d.counters()}
            hb0 = {k: proc_times(p) for k, p in hb_pids.items()}
            fr0 = [proc_times(p) for p in bfdd_pids]
            t0, w0 = time.monotonic(), time.time()
            time.sleep(seconds)  # the measuring window itself (not a wait for a condition)
            wall = time.monotonic() - t0
            hb1 = {k: proc_times(p) for k, p in hb_pids.items()}
            fr1 = [proc_times(p) for p in bfdd_pids]
            rows = api.rows()
            held_ours = all(r["state"] == "UP" for r in rows.values())
            held_frr = all(s.get("status") == "up" for s in frr.sessions().values())
            downs_after = {c.get("local"): c.get("session-down") for d in frr.daemons.values()
                           for c in d.counters()}
            ours_down = api.downs(w0, time.time())
            frr_down = sum((downs_after.get(k) or 0) - (downs_before.get(k) or 0)
                           for k in downs_after)
            out["held"] = held_ours and held_frr and not ours_down and frr_down == 0
            # who dropped sessions in the window: our DOWN events (and why), FRR's
            # session-down counters (FRR missed our packets)
            out["flaps"] = {"ours_down_events": len(ours_down),
                            "ours_down_peers": len({e["peer"] for e in ours_down}),
                            "ours_reasons": sorted({e["reason"] for e in ours_down})[:5],
                            "frr_session_down": frr_down}
            hb_user = {k: (hb1[k][0] - hb0[k][0]) / wall for k in hb_pids}
            hb_sys = {k: (hb1[k][1] - hb0[k][1]) / wall for k in hb_pids}
            frr_user = sum(b[0] - a[0] for a, b in zip(fr0, fr1, strict=True)) / wall
            frr_sys = sum(b[1] - a[1] for a, b in zip(fr0, fr1, strict=True)) / wall
            hbmon_user = sum(hb_user.values())
            hbmon_total = hbmon_user + sum(hb_sys.values())
            out["cpu"] = {
                "window_s": round(wall, 1),
                "hbmon_user_cpu_s_per_s": {k: round(v, 5) for k, v in hb_user.items()},
                "hbmon_sys_cpu_s_per_s": {k: round(v, 5) for k, v in hb_sys.items()},
                "hbmon_user_ms_per_s_per_session": round(1000 * hbmon_user / n, 4),
                "hbmon_total_ms_per_s_per_session": round(1000 * hbmon_total / n, 4),
                "frr_user_ms_per_s_per_session": round(1000 * frr_user / n, 4),
                "frr_total_ms_per_s_per_session": round(1000 * (frr_user + frr_sys) / n, 4),
                "frr_user_over_hbmon_user": round(frr_user / hbmon_user, 2)
                if hbmon_user else None,
                "frr_total_over_hbmon_total": round((frr_user + frr_sys) / hbmon_total, 2)
                if hbmon_total else None,
            }
            # ---- detection --------------------------------------------------------------
            cut: list[float] = []
            stopped: list[float] = []
            plane: list[float] = []
            limit = timers.detect_time_ms / 1000 + 10
            for i in range(min(samples, n)):
                name = names[i % n]
                by_stop = i % 2 == 1
                t_cause = time.time()
                if by_stop:
                    frr.bfdd(name).stop()
                else:
                    frr.cut_link(name)
                try:
                    if not wait_for(api.state_is(name, "DOWN"), limit, 0.02):
                        print(f"{name}: not DOWN within {limit:g}s", flush=True)
                        continue
                    since = api.row(name)["since"]
                    (stopped if by_stop else cut).append(1000 * (since - t_cause))
                    waited = api.plane_wait_ms(name, since)
                    if waited is not None:
                        plane.append(waited)
                finally:
                    if by_stop:
                        frr.bfdd(name).start()
                    else:
                        frr.restore_link(name)
                wait_for(api.state_is(name, "UP"), 60, 0.1)
            out["detection_ms"] = {"link_cut": percentiles(cut, 1),
                                   "bfdd_stopped": percentiles(stopped, 1),
                                   "all": percentiles(cut + stopped, 1),
                                   # last packet recorded -> DOWN, on the target's clock
                                   "last_packet_to_down": percentiles(plane, 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=128,
                        help="sessions per case unless the case says (300x3@128)")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window per case")
    parser.add_argument("--samples", type=int, default=12, help="detection samples per case")
    # the most this 2-vCPU machine held without a flap in 20 s (docs/benchmarks.md): at
    # 50 ms x 3, 128 bfdd processes (~1 CPU) let one FRR session time out
    parser.add_argument("--cases", default="300x3@128,50x3@128")
    args = parser.parse_args()
    from hbmon_topo.bfd import frr_missing
    from hbmon_topo.stack import missing_for

    missing = frr_missing() + missing_for("kernel")
    if os.geteuid() != 0:
        missing.append("root")
    result: dict[str, Any] = {
        "bench": "bfd", "commit": git_commit(), "machine": platform.node(),
        "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "cases": {}}
    if missing:
        result["skipped"] = "missing: " + "; ".join(missing)
        write_result("bfd", result)
        return 0
    for case in args.cases.split(","):
        interval_ms, mult, n = parse_case(case, args.sessions)
        key = f"{interval_ms}ms_x{mult}"
        print(f"== {n} sessions at {interval_ms} ms x {mult}", flush=True)
        result["cases"][key] = run_case(n, interval_ms, mult, args.seconds, args.samples)
    write_result("bfd", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
