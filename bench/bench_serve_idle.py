"""CPU of an idle `hbmon serve` (API on, no client) with N peers, per thread group.

The target is `hbmon-kernel-target --datapath memory` (the kernel target's P4Runtime device
over its in-memory data plane) in a process of its own: no packets leave it, so every CPU
second counted here is the controller's own: the poll (register
read and decode, health engine), the heartbeat PacketOut, gRPC, the API server and the RTT
history. Two poll cadences: the default (verdict registers every poll_interval_ms, all
registers every detail_interval_ms) and `all` (every register every poll, as before).
Reported, never asserted. Python threads share the OS name "hbmon"; `--spy` adds a py-spy
profile by Python thread name (py-spy must be installed in the venv).

Usage: python bench/bench_serve_idle.py [--peers 4096] [--seconds 20] [--spy]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from results_io import write_result  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds per thread id (with the thread's OS name)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _spy(pid: int, seconds: float, out: Path) -> dict[str, int]:
    """py-spy samples per Python thread name (active samples only)."""
    spy = ROOT / ".venv" / "bin" / "py-spy"
    subprocess.run([str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50",
                    "-f", "raw", "-o", str(out), "--threads", "--nonblocking"],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: collections.Counter[str] = collections.Counter()
    if out.exists():
        for line in out.read_text().splitlines():
            stack, n = line.rsplit(" ", 1)
            thread = stack.split(";", 1)[0].split(": ", 1)[-1]
            leafs = stack.split(";")
            where = next((f for f in reversed(leafs) if "hbmon/" in f), leafs[-1])
            samples[f"{thread} | {where.split(' (')[0]}"] += int(n)
    return dict(samples.most_common(12))


def run(peers: int, seconds: float, cadence: str, spy: bool, work: Path) -> dict[str, Any]:
    grpc_port, api_port = _free_port(), _free_port()
    server = subprocess.Popen([str(Path(PYTHON).with_name("hbmon-kernel-target")),
                               "--datapath", "memory", "--answering",
                               "--grpc-addr", f"127.0.0.1:{grpc_port}", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL)
    config: dict[str, Any] = {
        "interval_ms": 100,
        "switches": [{"name": "s1", "grpc": f"127.0.0.1:{grpc_port}",
                      "p4info": str(ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb")}],
        "peers": [{"name": f"p{i}", "address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                   "peer_id": i + 1, "mac": "02:00:00:00:00:02", "port": 1}
                  for i in range(peers)],
        "store": f"sqlite:///{work / f'{cadence}.db'}", "api": {"port": api_port},
    }
    if cadence == "all":
        config["detail_interval_ms"] = 1  # every poll reads every register
    path = work / f"{cadence}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (work / f"{cadence}.log").open("w")
    serve = subprocess.Popen([str(ROOT / ".venv" / "bin" / "hbmon"), "serve", "--config",
                              str(path)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError(f"hbmon serve not ready (see {work / f'{cadence}.log'})")
            time.sleep(0.5)
        time.sleep(5)  # settle: the first polls' transitions are stored
        before = _thread_cpu(serve.pid)
        started = time.monotonic()
        time.sleep(seconds)
        after = _thread_cpu(serve.pid)
        elapsed = time.monotonic() - started
        per_name: dict[str, float] = {}
        for tid, (name, cpu) in after.items():
            per_name[name] = per_name.get(name, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
        result: dict[str, Any] = {
            "cadence": cadence, "peers": peers, "seconds": round(elapsed, 1),
            "cpu_s_per_s": round(sum(per_name.values()) / elapsed, 4),
            "by_os_thread_name": {k: round(v / elapsed, 4) for k, v in
                                  sorted(per_name.items(), key=lambda kv: -kv[1]) if v > 0},
        }
        if spy:
            result["py_spy_samples_50hz"] = _spy(serve.pid, 15, work / f"{cadence}.spy")
        return result
    finally:
        serve.terminate()
        serve.wait(15)
        server.terminate()
        server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--spy", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hbmon-idle-") as tmp:
        runs = [run(args.peers, args.seconds, cadence, args.spy, Path(tmp))
                for cadence in ("default", "all")]
    write_result("controller_idle", {
        "bench": "controller_idle",
        "what": "CPU-s/s of an idle hbmon serve (API on) against the P4Runtime test server",
        "host": platform.node(), "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    })


if __name__ == "__main__":
    main()
