"""How many heartbeats one `hbmon responder` process answers per CPU-second.

A MULTI lab (N peer addresses in one namespace, one responder for all of them); a burst of
N requests per round goes out of the monitor port (AF_PACKET), like one fan-out round of
the data plane. Reported: answers per CPU-second of the responder (its utime+stime), with
recvmmsg/sendmmsg batches and with one recvmsg/sendmsg per datagram. Never asserted.

Usage: python bench/bench_responder.py [--peers 4096] [--rounds 20]   (root)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from hbmon_responder.responder import ControlClient  # noqa: E402
from hbmon_topo.model import multi  # noqa: E402
from hbmon_topo.netns import NetnsLab  # noqa: E402
from hbmon_topo.probe import Probe, request_frame  # noqa: E402
from results_io import write_result  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(peers: int, rounds: int, batched: bool) -> dict[str, float]:
    topo = multi(peers)
    with NetnsLab(topo) as lab:
        extra = [] if batched else ["--no-batch"]
        lab.start_responders(extra)
        ctl = ControlClient(lab.ctl_path(topo.peers[0].name))
        pid = lab.processes[0][1].pid
        port = topo.port(1)
        frames = [request_frame(src_mac=port.mac, dst_mac=p.mac, src_ip=topo.monitor_address,
                                dst_ip=p.address, peer_id=p.peer_id, sequence=r + 1,
                                tx_timestamp_us=1)
                  for r in range(2) for p in topo.peers]
        with Probe(lab.monitor_iface(1), monitor_mac=port.mac,
                   monitor_ip=topo.monitor_address) as probe:
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            answers = 0
            for r in range(rounds):
                half = (r % 2) * peers
                for frame in frames[half:half + peers]:
                    probe.send_raw(frame)
                answers += len(probe.collect(until=peers, timeout=5.0))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        stats = ctl.get()["stats"]
    return {"answers": answers, "requests": peers * rounds, "answered": stats["answered"],
            "responder_cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "answers_per_cpu_s": round(stats["answered"] / max(cpu, 1e-6))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = {
        "bench": "responder", "peers": args.peers, "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "batched": run(args.peers, args.rounds, True),
        "per_datagram": run(args.peers, args.rounds, False),
    }
    ratio = result["batched"]["answers_per_cpu_s"] / max(
        1, result["per_datagram"]["answers_per_cpu_s"])
    result["ratio_batched_to_per_datagram"] = round(ratio, 2)
    write_result("responder", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
