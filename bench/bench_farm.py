"""How many heartbeats the XDP peer farm (hbmon_topo.farm) answers per second on a veth, and
what that costs. Reported, never asserted.

A veth from the root namespace into a lab namespace: the farm on the namespace end, a sink
(hb_farm_sink: counts and drops) on the root end. A generator XDP program (hb_farm_gen in
topo/farm/hb_farm.c, BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) writes a fresh
REQUEST (sequence + 1 each, destinations cycling over --peers addresses) into every frame
and sends it out of the root end into the farm, which rewrites it into its RESPONSE and
bounces it back (XDP_TX) into the sink.

Generator, farm and sink all run in softirq/syscall context on the generator's CPU, so the
end-to-end rate understates the farm alone; BPF run-time stats give the farm program's own
cost per answer. The farm has no user-space process: its user-space CPU is 0.

Usage: python bench/bench_farm.py [--frames N] [--faults N]   (root)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hbmon_kernel import libbpf as lb  # noqa: E402
from hbmon_kernel.datapath import default_bpf_dir  # noqa: E402
from hbmon_topo.farm import Fault, PassProgram, PeerFarm  # noqa: E402
from hbmon_topo.model import multi  # noqa: E402
from hbmon_topo.netns import NetnsLab  # noqa: E402
from hbmon_topo.probe import request_frame  # noqa: E402
from results_io import write_result  # noqa: E402

FIRST_PEER = "198.18.0.2"  # .0.1 is the monitor's; peers .0.2 .. .255.254 fill the /16


def busy_jiffies() -> tuple[int, int]:
    """(all non-idle jiffies, softirq jiffies) over every CPU, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, softirq


def link_drops(ns: str | None, ifname: str) -> dict[str, int]:
    argv = ["ip", "-j", "-s", "link", "show", ifname]
    if ns:
        argv[1:1] = ["-n", ns]
    stats = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                      check=True).stdout)[0]["stats64"]
    return {"rx_dropped": stats["rx"]["dropped"], "tx_dropped": stats["tx"]["dropped"]}


def flood(frames: int, n_faults: int, n_peers: int) -> dict[str, object]:
    topo = multi(1)  # one namespace with the farm interface; addresses come from the farm
    with NetnsLab(topo) as lab:
        root_if = lab.monitor_iface(1)
        ns = str(lab.host_ns("peers"))
        port, peer = topo.port(1), topo.peers[0]
        with (
            PassProgram(root_if, sink=True) as sink,
            PeerFarm("eth0", ns, "198.18.0.0/16", exclude=[topo.monitor_address]) as farm,
        ):
            # a populated fault table, as in a lab with many steered peers (none is hit)
            base = int(ipaddress.IPv4Address("198.18.128.0"))
            farm.set_faults({ipaddress.IPv4Address(base + i): Fault(status=1, load=50)
                             for i in range(n_faults)})
            gen = lb.BpfObject(default_bpf_dir() / "hb_farm.o")
            stats_fd = -1
            try:
                gen.load()
                gen_fd = gen.program_fd("hb_farm_gen")
                root_idx = socket.if_nametoindex(root_if)
                template = request_frame(
                    src_mac=port.mac, dst_mac=peer.mac, src_ip=topo.monitor_address,
                    dst_ip=FIRST_PEER, peer_id=peer.peer_id, sequence=0, tx_timestamp_us=0)
                # struct farm_gen: ifindex, n_addrs, seq, pad, frame[HB_FRAME_LEN + 6]
                gen.map("farm_gen").update(struct.pack("=I", 0), struct.pack(
                    f"=IIII{len(template) + 6}s", root_idx, n_peers, 1, 0, template))
                ctx = lb.XdpMd(data=0, data_end=len(template), ingress_ifindex=root_idx)
                stats_fd = lb.enable_run_stats()
                rt0, cnt0 = lb.prog_run_stats(farm.prog_fd)
                busy0, soft0 = busy_jiffies()
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                lb.prog_test_run(gen_fd, template, repeat=frames, ctx=ctx,
                                 flags=lb.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64,
                                 out_size=0)
                # the NAPI polls may still be draining the rings: poll until the sink stops
                last, deadline = -1, time.monotonic() + 5
                while time.monotonic() < deadline:
                    now = sink.sunk()
                    if now == last:
                        break
                    last = now
                    time.sleep(0.01)
                wall = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                busy1, soft1 = busy_jiffies()
                rt1, cnt1 = lb.prog_run_stats(farm.prog_fd)
            finally:
                if stats_fd >= 0:
                    os.close(stats_fd)
                gen.close()
            counts = farm.counters()
            drops = {"root_end": link_drops(None, root_if), "farm_end": link_drops(ns, "eth0")}
    hz = os.sysconf("SC_CLK_TCK")
    runs = cnt1 - cnt0
    ns_per_answer = (rt1 - rt0) / runs if runs else float("nan")
    machine_cpu_s = (busy1 - busy0) / hz
    per_answer_s = machine_cpu_s / max(last, 1)
    return {
        "frames_generated": frames,
        "farm_answered": counts.answered,
        "farm_not_answered": {"outside": counts.outside, "not_request": counts.not_request,
                              "muted": counts.muted, "lost": counts.lost},
        "answers_received_by_sink": last,
        "fault_entries": n_faults,
        "peer_addresses": n_peers,
        "wall_s": round(wall, 3),
        "answers_per_s_end_to_end": round(last / wall),
        "farm_program_runs": runs,
        "farm_ns_per_answer_bpf_stats": round(ns_per_answer, 1),
        "farm_program_mpps_per_core": round(1000 / ns_per_answer, 2) if runs else 0.0,
        "bench_process_cpu_s": round(cpu, 3),
        "machine_busy_cpu_s": round(machine_cpu_s, 3),
        "machine_softirq_cpu_s": round((soft1 - soft0) / hz, 3),
        "machine_cpu_us_per_answer_gen_farm_sink": round(per_answer_s * 1e6, 3),
        # what answering 4,096 peers x 10 Hz would cost at that all-inclusive price
        "cpu_s_per_s_at_4096_peers_10hz_upper_bound": round(per_answer_s * 40960, 4),
        "farm_cpu_s_per_s_at_4096_peers_10hz_bpf_stats": round(ns_per_answer * 40960 / 1e9, 5),
        "farm_user_space_cpu_s": 0.0,
        "veth_drops": drops,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--faults", type=int, default=4096)
    ap.add_argument("--peers", type=int, default=65536 - 3,
                    help="destination addresses the requests cycle over")
    args = ap.parse_args()
    result = {
        "bench": "farm",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "flood": flood(args.frames, args.faults, args.peers),
        "note": "shared 2-core VM; generator, farm and sink share one CPU; numbers vary "
                "with load from other jobs",
    }
    write_result("farm", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
