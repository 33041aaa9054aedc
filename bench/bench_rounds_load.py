"""Request rounds under API load (issue 9, goal 6): the period seen at a peer stays within
+-1 ms while the REST API is busy.

The real product in a MULTI namespace lab: `hbmon-kernel-target` (rounds kept by the
kernel, docs/dataplane.md "Rounds kept by the target") + `hbmon serve` (API on loopback) +
the XDP peer farm answering every peer. One peer is the observer: the farm leaves its
address alone (XDP_PASS instead of an answer), so its requests reach an AF_PACKET socket in
the peers' namespace, which stamps each arrival in the kernel (SO_TIMESTAMPNS: the honest
"seen at a peer" time). Each request also carries tx_timestamp_us, written by the target at
send time; both give a period series. That peer goes DOWN (it never answers): requests keep
going to DOWN peers, so its rounds are everyone's rounds.

Conditions, >= 20 s each, at each interval:
- idle: no API client;
- get: ~1,000 requests/s of GET /api/v1/peers and GET /api/v1/health from a pool of
  keep-alive clients in another process (paced, bounded in count and time);
- bulk: 50 MB bodies POSTed to /api/v1/peers/bulk without a token, a few in parallel
  (bounded); the API refuses them (no token), after reading as much as it reads.

Modes:
- kernel: the product as it is (the target keeps time);
- controller (the old way, for comparison): the same `hbmon serve`, with its switch driver
  told that the target does not keep time (`target_keeps_time = False`, set by a wrapper at
  start-up), so it sends one PacketOut per round from its heartbeat thread, the bmv2 path,
  which the kernel target runs as single rounds. bmv2 itself is not on this machine.

Per condition: period mean, deviation percentiles (p1/p99) and max |deviation| in ms, the
share of periods within +-1 ms, rounds missing (sequence gaps), the achieved API load and
the controller's CPU. Numbers are reported, never asserted. Result:
bench/results/rounds_load.json.

Usage: python bench/bench_rounds_load.py [--peers 1024] [--intervals 10 100] [--window 20]
       [--modes kernel controller] [--conditions idle get bulk]   (root)
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from product_lab import (  # noqa: E402
    Api,
    free_port,
    git_commit,
    percentiles,
    serve,
    serve_config,
    wait_for,
)
from results_io import write_result  # noqa: E402

DETECT_MULT = 3
ETH_P_IP = 0x0800
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
REQUEST_PORT = 9190  # requests go to the peer's port 9190 (docs/protocol.md)
IPV4_TOTAL_LEN = 56  # a version-2 heartbeat's IPv4 packet (docs/protocol.md)
BULK_MB = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")

# `hbmon serve` whose switch drivers send one PacketOut per round (the bmv2 path): the
# controller-paced rounds this bench compares the kernel's own rounds with
OLD_WAY = (
    "import sys, hbmon.controller.driver as c\n"
    "init = c.SwitchDriver.__init__\n"
    "def paced(self, *a, **k):\n"
    "    init(self, *a, **k)\n"
    "    self.target_keeps_time = False\n"
    "c.SwitchDriver.__init__ = paced\n"
    "from hbmon.cli import main\n"
    "sys.argv[0] = 'hbmon'\n"
    "sys.exit(main())\n"
)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---- the observer ---------------------------------------------------------------------------


class Capture:
    """Requests to one address, seen in the peers' namespace: (kernel arrival ns (realtime),
    sequence, tx_timestamp_us)."""

    def __init__(self, netns: str, ifname: str, address: str) -> None:
        from hbmon_topo.netns import run_in_netns

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            s.bind((ifname, 0))
            return s

        self.sock = run_in_netns(netns, make)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.dst = socket.inet_aton(address)
        self.records: list[tuple[int, int, int]] = []
        self.recording = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            data, anc, _, addr = self.sock.recvmsg(2048, 64)
            if addr[2] == socket.PACKET_OUTGOING or len(data) < 14 + IPV4_TOTAL_LEN:
                continue
            # IPv4 / UDP to the request port, to the observed address
            if data[23] != 17 or data[30:34] != self.dst or \
                    struct.unpack_from("!H", data, 36)[0] != REQUEST_PORT:
                continue
            ts = 0
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    ts = sec * 1_000_000_000 + nsec
            seq, tx_us = struct.unpack_from("!I4xQ", data, 42 + 8)  # sequence, (nonce), tx
            if self.recording:
                with self._lock:
                    self.records.append((ts, seq, tx_us))

    def window(self, seconds: float) -> list[tuple[int, int, int]]:
        with self._lock:
            self.records = []
        self.recording = True
        threading.Event().wait(seconds)
        self.recording = False
        with self._lock:
            out, self.records = self.records, []
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def period_stats(records: list[tuple[int, int, int]], interval_ms: float) -> dict[str, Any]:
    """Periods between consecutive requests seen. Where the sequence counts rounds (+1 a
    round: the kernel keeps time), a gap of k sequences is k periods (a lost capture); the
    controller numbers rounds by wall-clock milliseconds, so there a skipped round is one
    long period, counted missing when it is over 1.5 intervals."""
    out: dict[str, Any] = {"requests_seen": len(records)}
    steps_all = sorted((cur[1] - prev[1]) & 0xFFFFFFFF
                       for prev, cur in itertools.pairwise(records))
    counts_rounds = bool(steps_all) and steps_all[len(steps_all) // 2] == 1
    out["sequence"] = "+1 per round" if counts_rounds else "wall-clock ms"
    for name, at in (("arrival_at_peer", lambda r: r[0] / 1e6),  # ms
                     ("tx_timestamp", lambda r: r[2] / 1e3)):
        periods: list[float] = []
        gaps = 0
        for prev, cur in itertools.pairwise(records):
            steps = (cur[1] - prev[1]) & 0xFFFFFFFF
            if steps == 0 or steps > 1_000_000:
                continue  # a duplicate or a restart of the sequence
            period = at(cur) - at(prev)
            if counts_rounds:
                gaps += steps - 1
                period /= steps
            elif period > 1.5 * interval_ms:
                gaps += round(period / interval_ms) - 1
            periods.append(period)
        dev = [p - interval_ms for p in periods]
        d = percentiles(dev, 4)
        out[name] = {
            "periods": len(periods),
            "mean_ms": round(sum(periods) / len(periods), 4) if periods else None,
            "deviation_ms": {k: d.get(k) for k in ("p1", "p50", "p99")},
            "max_abs_deviation_ms": round(max((abs(x) for x in dev), default=0.0), 4),
            "within_1ms": round(sum(1 for x in dev if abs(x) <= 1.0) / len(dev), 5)
            if dev else None,
            "rounds_missing": gaps,
        }
    return out


# ---- API load (run in a child process: its CPU is not the bench's) -------------------------


def load_get(port: int, rate: float, duration: float, workers: int, limit: int
             ) -> dict[str, Any]:
    """Paced GETs of /api/v1/peers and /api/v1/health over keep-alive connections."""
    paths = ["/api/v1/peers", "/api/v1/health"]
    done = [0] * workers
    errors = [0] * workers
    nbytes = [0] * workers
    lat: list[list[float]] = [[] for _ in range(workers)]
    start = time.monotonic()
    end = start + duration
    per_worker = rate / workers

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        k = 0
        while done[w] + errors[w] < limit / workers:
            due = start + (k + w / workers) / per_worker
            now = time.monotonic()
            if due >= end or now >= end:
                break
            if due > now:
                time.sleep(due - now)
            t0 = time.monotonic()
            try:
                conn.request("GET", paths[k % len(paths)])
                resp = conn.getresponse()
                nbytes[w] += len(resp.read())
                done[w] += 1 if resp.status == 200 else 0
                errors[w] += 0 if resp.status == 200 else 1
            except (OSError, http.client.HTTPException):
                errors[w] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            lat[w].append((time.monotonic() - t0) * 1000)
            k += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    return {"requests_ok": sum(done), "errors": sum(errors), "seconds": round(took, 2),
            "achieved_per_s": round(sum(done) / took, 1), "asked_per_s": rate,
            "mbytes_read": round(sum(nbytes) / 1e6, 1),
            "latency_ms": percentiles([x for w in lat for x in w], 2)}


def load_bulk(port: int, duration: float, parallel: int, limit: int, mbytes: int
              ) -> dict[str, Any]:
    """POST /api/v1/peers/bulk with a `mbytes` MB body and no token, `parallel` at a time."""
    body = b'{"peers": [' + b'{"name": "x", "address": "198.18.0.9"}, ' * (
        mbytes * 1_000_000 // 40) + b"{}]}"
    sent = [0] * parallel
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    end = start + duration
    took: list[float] = []

    def worker(w: int) -> None:
        n = 0
        while time.monotonic() < end and n < limit:
            n += 1
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/api/v1/peers/bulk", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                key = str(resp.status)
                sent[w] += 1
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__  # the server may answer and close mid-body
            finally:
                conn.close()
            with lock:
                statuses[key] = statuses.get(key, 0) + 1
                took.append((time.monotonic() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"posts": sum(statuses.values()), "statuses": statuses, "body_mb": len(body) / 1e6,
            "parallel": parallel, "seconds": round(time.monotonic() - start, 2),
            "per_post_ms": percentiles(took, 1)}


def load_child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["get", "bulk"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--limit", type=int, default=40_000)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--mbytes", type=int, default=BULK_MB)
    a = ap.parse_args(argv)
    if a.kind == "get":
        res = load_get(a.port, a.rate, a.duration, a.workers, a.limit)
    else:
        res = load_bulk(a.port, a.duration, a.parallel, min(a.limit, 50), a.mbytes)
    print(json.dumps(res))
    return 0


# ---- one lab -------------------------------------------------------------------------------


def measure(condition: str, capture: Capture, port: int, interval_ms: float, pid: int,
            args: argparse.Namespace) -> dict[str, Any]:
    child = None
    if condition != "idle":
        extra = ["--rate", str(args.rate)] if condition == "get" else \
            ["--parallel", str(args.bulk_parallel)]
        child = subprocess.Popen(
            [sys.executable, __file__, "--load", condition, "--port", str(port),
             "--duration", str(args.window + 2), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Event().wait(1.0)  # the load is running before the window opens
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    records = capture.window(args.window)
    cpu = (proc_cpu(pid) - cpu0) / (time.monotonic() - t0)
    out: dict[str, Any] = {"condition": condition, "interval_ms": interval_ms,
                           "window_s": args.window, "controller_cpu_s_per_s": round(cpu, 3),
                           "load1": round(os.getloadavg()[0], 2)}
    out.update(period_stats(records, interval_ms))
    if child is not None:
        text, _ = child.communicate(timeout=args.window + 120)
        try:
            out["api_load"] = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out["api_load"] = {"error": text[-1000:]}
    a = out["arrival_at_peer"]
    print(f"   {condition:5} {interval_ms:g} ms: mean {a['mean_ms']} ms, dev p1 "
          f"{a['deviation_ms']['p1']} p99 {a['deviation_ms']['p99']}, max |dev| "
          f"{a['max_abs_deviation_ms']} ms, within 1 ms {a['within_1ms']}, missing "
          f"{a['rounds_missing']}; api {json.dumps(out.get('api_load', {}))[:160]}", flush=True)
    return out


def run_mode(mode: str, interval_ms: float, args: argparse.Namespace, workdir: Path,
             lab: Any, topo: Any, farm: Any, capture: Capture) -> list[dict[str, Any]]:
    from hbmon.dataplane import targets

    grpc_addr = f"127.0.0.1:{free_port()}"
    api_port = free_port()
    command = [sys.executable, "-c", OLD_WAY] if mode == "controller" else None
    rows = []
    print(f"== {mode} rounds, {interval_ms:g} ms, {len(topo.peers)} peers", flush=True)
    with targets.start_target("kernel", lab.port_map, grpc_addr=grpc_addr,
                              output_path=workdir / f"target-{mode}-{interval_ms:g}.log",
                              wait=120), \
            serve(serve_config(topo, grpc_addr, api_port, interval_ms, DETECT_MULT, workdir),
                  workdir, command=command) as proc:
        api = Api(api_port, proc, workdir)
        try:
            up = api.wait_all_up(len(topo.peers) - 1, args.setup_timeout)
            # the observer never answers: it is DOWN, every other peer UP
            wait_for(lambda: capture.window(0.3) != [], 10, 0.1)
            for condition in args.conditions:
                row = measure(condition, capture, api_port, interval_ms, proc.pid, args)
                row.update({"mode": mode, "peers": len(topo.peers), "all_up_s": up})
                rows.append(row)
        finally:
            api.close()
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode and interval: the worst max |deviation| over the conditions, vs +-1 ms."""
    out: dict[str, Any] = {}
    for r in rows:
        key = f"{r['mode']}_{r['interval_ms']:g}ms"
        a = r["arrival_at_peer"]
        entry = out.setdefault(key, {"goal_ms": 1.0, "by_condition": {}})
        entry["by_condition"][r["condition"]] = {
            "max_abs_deviation_ms": a["max_abs_deviation_ms"],
            "p1_ms": a["deviation_ms"]["p1"], "p99_ms": a["deviation_ms"]["p99"],
            "within_1ms": a["within_1ms"], "rounds_missing": a["rounds_missing"]}
        worst = max(v["max_abs_deviation_ms"] for v in entry["by_condition"].values())
        entry["worst_max_abs_deviation_ms"] = worst
        entry["ratio_to_goal"] = round(worst / 1.0, 3)
        entry["meets"] = worst <= 1.0
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        return load_child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=1024)
    ap.add_argument("--intervals", type=float, nargs="+", default=[10.0, 100.0])
    ap.add_argument("--window", type=float, default=20.0, help="seconds per condition")
    ap.add_argument("--modes", nargs="+", choices=["kernel", "controller"],
                    default=["kernel", "controller"])
    ap.add_argument("--conditions", nargs="+", choices=["idle", "get", "bulk"],
                    default=["idle", "get", "bulk"])
    ap.add_argument("--rate", type=float, default=1000.0, help="GET requests/s asked")
    ap.add_argument("--bulk-parallel", type=int, default=3)
    ap.add_argument("--setup-timeout", type=float, default=90.0)
    ap.add_argument("--max-load", type=float, default=2.5,
                    help="wait (polling, at most --load-wait s) until the 1-min load is below")
    ap.add_argument("--load-wait", type=float, default=300.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespace lab, kernel target, XDP farm)", file=sys.stderr)
        return 2
    from hbmon_topo.farm import PeerFarm
    from hbmon_topo.model import multi
    from hbmon_topo.netns import NetnsLab

    # other people's jobs share the 2 cores: wait (bounded) for a quieter machine
    t_wait = time.monotonic()
    wait_for(lambda: os.getloadavg()[0] < args.max_load, args.load_wait, 5.0)
    load_at_start = round(os.getloadavg()[0], 2)
    print(f"load {load_at_start} after {time.monotonic() - t_wait:.0f} s", flush=True)
    started = time.time()
    topo = multi(args.peers)
    observer = topo.peers[-1]  # in the round's last burst: it sees every burst gap too
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hbmon-rounds-") as tmp, NetnsLab(topo) as lab, \
            PeerFarm("eth0", lab.host_ns("peers"), "198.18.0.0/16",
                     exclude=[topo.monitor_address]) as farm:
        farm.set_fault(observer.address, absent=True)  # passed to the stack: captured
        ns = lab.host_ns("peers")
        assert ns is not None
        capture = Capture(ns, "eth0", observer.address)
        try:
            for mode in args.modes:
                for interval in args.intervals:
                    try:
                        rows += run_mode(mode, interval, args, Path(tmp), lab, topo, farm,
                                         capture)
                    except Exception as exc:
                        print(f"   {mode} {interval:g} ms failed: {exc}", flush=True)
                        rows.append({"mode": mode, "interval_ms": interval,
                                     "error": f"{type(exc).__name__}: {exc}"})
        finally:
            capture.close()
    good = [r for r in rows if "error" not in r]
    result = {
        "bench": "rounds_load",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "load_avg_at_start": load_at_start,
                    "load_avg_at_end": round(os.getloadavg()[0], 2)},
        "peers": args.peers, "observer": observer.name,
        "observed_by": "AF_PACKET socket in the peers' namespace, SO_TIMESTAMPNS (kernel "
                       "arrival time); the farm passes the observer's requests to the stack",
        "modes": {"kernel": "the kernel target keeps time (one template asking for a period)",
                  "controller": "the old way: hbmon serve sends one PacketOut per round "
                                "(its bmv2 path, forced by a start-up wrapper); the kernel "
                                "target runs each as a single round"},
        "rows": rows,
        "summary": summary(good),
        "note": "deviation = period - interval, from the peer's kernel arrival stamps "
                "(arrival_at_peer) and from the tx_timestamp_us the target wrote "
                "(tx_timestamp). Reported, never asserted.",
    }
    write_result("rounds_load", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
