"""bench/baseline_monitor.py's real I/O paths (epoll + recvmmsg/sendmmsg, and asyncio) in a
namespace lab against `hbmon responder`: every peer UP, a muted peer DOWN, nothing but
recorded answers. The bench's CPU numbers mean nothing if the baseline did not really
monitor; this is where that is checked (tests/test_baseline_monitor.py covers the logic)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hbmon_topo.model import Topology, multi
from hbmon_topo.netns import NetnsLab

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "bench" / "baseline_monitor.py"


def bench_offload() -> Any:
    spec = importlib.util.spec_from_file_location("bench_offload",
                                                  ROOT / "bench" / "bench_offload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_offload"] = module
    spec.loader.exec_module(module)
    return module


def poll(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.05)
    return True


@pytest.mark.parametrize("variant", ["tuned", "asyncio"])
def test_baseline_sees_every_peer_up_and_a_muted_one_down(
        netns_lab: Callable[[Topology], NetnsLab], tmp_path: Path, variant: str) -> None:
    topo = multi(6)
    lab = netns_lab(topo)
    lab.start_responders(log=False)
    ns = bench_offload().monitor_namespace(lab, topo)  # the monitor port + address, own ns
    peers_file = tmp_path / "peers.json"
    peers_file.write_text(json.dumps([{"name": p.name, "address": p.address,
                                       "peer_id": p.peer_id} for p in topo.peers]))
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(BASELINE), "--monitor-ip",
         topo.monitor_address, "--peers-file", str(peers_file), "--interval-ms", "50",
         "--detect-mult", "3", "--eval-ms", "100", "--variant", variant,
         "--status-file", str(status)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def report() -> dict[str, Any]:
        try:
            return dict(json.loads(status.read_text()))
        except (OSError, ValueError):
            return {}

    try:
        assert poll(lambda: report().get("states", {}).get("UP") == 6, 20), report()
        muted = topo.peers[-1]
        lab.run("peers", ["ip", "addr", "del", f"{muted.address}/{topo.prefixlen}", "dev",
                          "eth0"])
        assert poll(lambda: report().get("down_peers") == [muted.name], 10), report()
        now = report()
        assert now["states"] == {"UNKNOWN": 0, "UP": 5, "DEGRADED": 0, "DOWN": 1}
        # every datagram that arrived was a fresh answer of a known peer
        assert now["received"] == now["recorded"] > 0
        assert now["rounds"] > 0 and now["recorded"] <= 6 * now["rounds"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    final = json.loads(out.decode().strip().splitlines()[-1])  # its report on exit
    assert final["recorded"] >= now["recorded"]
