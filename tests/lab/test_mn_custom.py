"""Mininet's own `mn` with topo/hbmon_mn.py (issue 14): `sudo mn --custom topo/hbmon_mn.py
--topo hbstar,N --switch hbkernel --controller none` brings up the kernel target, `hbmon
serve` and a responder per host; the peers go UP on the API, a host muted from Mininet's CLI
goes DOWN, and `exit` stops everything the switch started. (bmv2: `--switch hbbmv2`, skipped
without simple_switch_grpc.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hbmon.dataplane import targets
from hbmon_topo.stack import free_tcp_port

pytestmark = pytest.mark.netns

CUSTOM = Path(__file__).resolve().parents[2] / "topo" / "hbmon_mn.py"


def states(port: int) -> dict[str, str]:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/api/v1/peers", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {p["name"]: p["state"] for p in body["peers"]}


def run_mn(switch: str, n: int, mute: str) -> None:
    assert shutil.which("mn"), "install the Debian package 'mininet' (make setup does)"
    port = free_tcp_port()
    proc = subprocess.Popen(
        ["mn", "--custom", str(CUSTOM), "--topo", f"hbstar,{n}",
         "--switch", f"{switch},api_port={port}", "--controller", "none"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HBMON_BIN": str(Path(sys.executable).parent)})
    assert proc.stdin is not None
    try:
        deadline = time.monotonic() + 90
        want = {f"h{i}": "UP" for i in range(1, n + 1)}
        while states(port) != want:
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"{states(port)}\n{proc.communicate(timeout=30)[0]}"
            time.sleep(0.2)  # polling the API with a deadline
        sock = next(Path("/tmp").glob(f"hbmon-mn-s1-{proc.pid}/{mute}.sock"))
        proc.stdin.write(f"{mute} {Path(sys.executable).parent}/hbmon responder "
                         f"--ctl {sock} stop\n")
        proc.stdin.flush()
        want[mute] = "DOWN"
        while states(port) != want:
            assert proc.poll() is None and time.monotonic() < deadline, states(port)
            time.sleep(0.2)  # polling the API with a deadline
        out, _ = proc.communicate("exit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Caught exception" not in out, out
    assert states(port) == {}  # hbmon serve stopped with the switch
    left = subprocess.run(["pgrep", "-f", f"hbmon-mn-s1-{proc.pid}"], capture_output=True,
                          text=True).stdout.split()
    assert left == [], f"processes left: {left}"


def test_mn_custom_kernel_target() -> None:
    run_mn("hbkernel", 3, "h2")


@pytest.mark.bmv2
@pytest.mark.skipif(targets.find_simple_switch_grpc() is None,
                    reason="simple_switch_grpc not found on PATH or $SIMPLE_SWITCH_GRPC (bmv2 "
                           "is built by hand)")
def test_mn_custom_bmv2() -> None:
    run_mn("hbbmv2", 3, "h3")
