"""Heartbeat responses recorded per second by bmv2 running p4src/ (the same program the kernel
target's XDP path implements), on this machine: the number to put next to bench_xdp.py's and
next to the "tuned bmv2: 80-100 kpps" reference. Reported, never asserted.

A one-port lab (a root veth, its peer end in a namespace); simple_switch_grpc on the root end,
programmed over P4Runtime with one peer and one l2_forward entry that sends a marker frame
back out of the same port. bmv2 captures with libpcap in immediate mode, whose ring holds only
about 8 frames of the default 256 KiB snap length: a burst longer than that is dropped before
bmv2 sees it. So the namespace sends --window fresh responses (sequence + 1 each) and a
marker, and waits for the marker to come back before the next window: bmv2 is kept busy
without losing anything, and no control-plane poll competes with it. Reported: responses per
second (wall) and bmv2 CPU (utime + stime from /proc) per packet it processed.

Without simple_switch_grpc (PATH or $SIMPLE_SWITCH_GRPC) or p4src/build/heartbeat.json it
says what is missing, writes that into the result and exits 0.

Usage: python bench/bench_bmv2.py [--responses N] [--window N]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hbmon.dataplane import targets  # noqa: E402
from hbmon.dataplane.registers import open_register_access  # noqa: E402
from hbmon.p4 import CounterRead, P4Schema, TableEntry  # noqa: E402
from hbmon.p4.client import P4RuntimeClient  # noqa: E402
from hbmon.protocol import Reason  # noqa: E402

from tests.kernel.bpf_lab import Lab, heartbeat_frame, ip_int, response_frame  # noqa: E402

P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
BMV2_JSON = ROOT / "p4src" / "build" / "heartbeat.json"
OUT = ROOT / "bench" / "results" / "bmv2.json"
MONITOR_IP = ip_int("198.18.0.1")
PEER_IP = ip_int("198.18.1.1")
PEER_ID = 1001
INDEX = 0
MARKER_MAC = 0x02AA0000FFFF


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorded(client: P4RuntimeClient) -> int:
    (e,) = client.read_all([CounterRead("hb_reason", Reason.RESPONSE_RECORDED)])
    return int(e.counter_entry.data.packet_count)


def measure(responses: int, window: int) -> dict[str, object]:
    schema = P4Schema.load(P4INFO)
    with Lab(1) as lab:
        target = targets.start_target(
            targets.BMV2, lab.ports, grpc_addr=f"127.0.0.1:{free_port()}",
            thrift_port=(thrift := free_port()), wait=60)
        client = P4RuntimeClient(target.grpc_addr, target.device_id, election_id=3,
                                 schema=schema)
        try:
            if not client.connect(timeout=30):
                raise RuntimeError(f"not primary: {client.last_error}")
            client.set_pipeline(schema, BMV2_JSON.read_bytes())
            client.insert([
                TableEntry("HbIngress.peers", {"src_addr": PEER_IP, "peer_id": PEER_ID},
                           "HbIngress.set_peer_index",
                           {"index": INDEX, "nonce_key": 0, "min_ttl": 0}),
                TableEntry("HbIngress.peer_ids", {"peer_id": PEER_ID},
                           "HbIngress.peer_id_known"),
                TableEntry("HbIngress.l2_forward", {"dst_addr": MARKER_MAC},
                           "HbIngress.set_egress_port", {"port": 1}),
            ])
            # protocol v2: only sequences already sent count; "requests 1 .. responses were
            # sent" (no fan-out runs here), and nonce key 0 is what response_frame echoes
            registers = open_register_access("bmv2", schema=schema, thrift_port=thrift,
                                             bmv2_json=BMV2_JSON)
            registers.write_many([("hb_tx_count", INDEX, responses),
                                  ("hb_last_tx_seq", INDEX, responses)])
            frames = [response_frame(peer_ip=PEER_IP, monitor_ip=MONITOR_IP, peer_id=PEER_ID,
                                     seq=seq, tx_us=0, dst_mac=lab.root_mac(1))
                      for seq in range(1, responses + 1)]
            marker = marker_frame()
            sender = lab.sender(1)
            capture = lab.capture(1)
            lost_markers = sent = 0
            cpu0 = cpu_seconds(target.pid)
            t0 = time.perf_counter()
            while sent < responses:
                for frame in frames[sent:sent + window]:
                    sender.send(frame)
                sent = min(sent + window, responses)
                sender.send(marker)
                back = capture.frames(lambda got: bool(got), lambda f: f == marker,
                                      timeout_s=2.0)
                lost_markers += not back
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(target.pid) - cpu0
            done = recorded(client)
        finally:
            client.close()
            target.stop()
    packets = sent + (sent + window - 1) // window  # responses + markers
    return {
        "responses_sent": sent,
        "responses_recorded": done,
        "window": window,
        "markers_lost": lost_markers,
        "wall_s": round(wall, 3),
        "bmv2_cpu_s": round(cpu, 2),
        "responses_per_s": round(done / wall),
        "bmv2_us_per_packet": round(cpu / packets * 1e6, 1),
        "packets_per_bmv2_cpu_s": round(packets / cpu) if cpu else None,
    }


def marker_frame() -> bytes:
    """Ordinary traffic that l2_forward sends back out of port 1 (not a heartbeat)."""
    return heartbeat_frame(src_mac=0x02AA00000001, dst_mac=MARKER_MAC, src_ip=PEER_IP,
                           dst_ip=MONITOR_IP, sport=7, dport=7, payload=b"marker")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=50_000)
    ap.add_argument("--window", type=int, default=6,
                    help="responses per marker (bmv2's capture ring holds about 8 frames)")
    args = ap.parse_args()
    result: dict[str, object] = {
        "bench": "bmv2_responses",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_avg_before": round(os.getloadavg()[0], 2),
    }
    program = targets.find_simple_switch_grpc()
    if program is None or not BMV2_JSON.is_file():
        what = ("simple_switch_grpc not on PATH and $SIMPLE_SWITCH_GRPC unset"
                if program is None else f"{BMV2_JSON.relative_to(ROOT)} missing")
        print(f"SKIPPED: bmv2 bench: {what}")
        result["skipped"] = what
    else:
        result["bmv2"] = str(program)
        result["run"] = measure(args.responses, args.window)
        result["note"] = ("bmv2 as built here (default configure: logging macros compiled in); "
                          "the sender shares the 2 vCPUs; windows of responses + a marker, "
                          "because a longer burst overflows bmv2's pcap ring")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
