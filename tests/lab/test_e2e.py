"""End to end: `hbmon demo` and a Mininet lab with the kernel target, controller and API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hbmon_responder.responder import ControlClient
from hbmon_topo.mn import MininetLab
from hbmon_topo.model import Faults, star
from hbmon_topo.stack import Stack, StackOptions, expected_states

pytestmark = pytest.mark.netns

HBMON = str(Path(sys.executable).with_name("hbmon"))


def leftovers(prefix: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [w for w in (ns + links).replace(":", " ").replace("@", " ").split()
            if w.startswith(prefix)]


def lab_prefix(output: str) -> str:
    match = re.search(r"monitor ports 1@(hb[0-9a-f]+)m1", output)
    assert match, f"no lab line in the demo's output:\n{output}"
    return match.group(1)


def test_demo_once_shows_healthy_up_and_faulty_down() -> None:
    proc = subprocess.run(
        [HBMON, "demo", "--once", "--api-port", "0", "--timeout", "90"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every peer shows its expected state" in out
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", out)
    assert re.search(r"peer04 .*DOWN", out) and re.search(r"peer01 .*UP", out)
    assert "lab removed" in out
    assert leftovers(lab_prefix(out)) == []


def test_demo_ctrl_c_removes_everything() -> None:
    proc = subprocess.Popen([HBMON, "demo", "--api-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    seen = ""
    try:
        deadline = time.monotonic() + 120
        while "dashboard:" not in seen:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail(f"demo did not come up:\n{seen}")
            seen += line
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        seen += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "lab removed" in seen, seen
    assert leftovers(lab_prefix(seen)) == []


def _as_a_background_job() -> None:
    """What a non-interactive shell does to `cmd &` (POSIX): SIGINT ignored; and a
    process group of its own, as a supervisor gives its service."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _demo_until_up(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([HBMON, "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=_as_a_background_job)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "dashboard:" not in seen:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"demo did not come up:\n{seen}")
        seen += line
    return proc, seen


def _until_exit(proc: subprocess.Popen[str], stop: Callable[[], None]) -> str:
    """Stop the demo with `stop()` and return what it printed until it exited."""
    try:
        stop()
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rest


def test_demo_sigint_to_its_process_group_without_a_tty() -> None:
    """Issue 14: a supervisor or CI sends SIGINT to the whole process group, with no
    terminal, to a demo started as a background job (SIGINT inherited ignored): the demo
    says so and removes the lab, with no traceback from the controller it started dying
    under it. SIGTERM (a supervisor's stop) removes the lab too and exits 143."""
    proc, seen = _demo_until_up(["--api-port", "0"])
    seen += _until_exit(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert "interrupted" in seen and "lab removed" in seen, seen
    assert "Traceback" not in seen, seen
    assert proc.returncode == 0, seen
    assert leftovers(lab_prefix(seen)) == []

    proc, seen = _demo_until_up(["--api-port", "0"])
    seen += _until_exit(proc, lambda: os.kill(proc.pid, signal.SIGTERM))
    assert "lab removed" in seen and "Traceback" not in seen, seen
    assert proc.returncode == 128 + signal.SIGTERM, seen
    assert leftovers(lab_prefix(seen)) == []


def test_demo_twice_back_to_back_on_port_8080() -> None:
    """Issue 14: the previous run's connections in TIME-WAIT do not make 8080 look busy
    (the pre-check binds with SO_REUSEADDR, as uvicorn does)."""
    # a dashboard left open on the first run: its keep-alive connection is closed by the
    # server when the demo stops, which leaves it in TIME-WAIT on 127.0.0.1:8080
    proc, seen = _demo_until_up(["--api-port", "8080"])
    with httpx.Client(base_url="http://127.0.0.1:8080", timeout=5) as browser:
        assert browser.get("/healthz").status_code == 200
        seen += _until_exit(proc, lambda: os.kill(proc.pid, signal.SIGINT))
    assert "lab removed" in seen, seen
    waiting = subprocess.run(["ss", "-Htan", "state", "time-wait", "( sport = :8080 )"],
                             capture_output=True, text=True, check=True).stdout
    assert waiting.strip(), "the first run left no TIME-WAIT on 8080: the test proves nothing"
    again = subprocess.run(
        [HBMON, "demo", "--once", "--api-port", "8080", "--timeout", "90"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"})
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "dashboard: http://127.0.0.1:8080/" in out, out


def test_demo_mininet_cli() -> None:
    """Issue 14: `hbmon demo --mininet --cli` is Mininet's own CLI on the running lab, with
    the peers reachable by name; `health` prints hbmon's table; `exit` removes the lab."""
    commands = "peer01 ping -c1 -W2 peer02\npeer03 ip -br addr show eth0\nhealth\nexit\n"
    proc = subprocess.run([HBMON, "demo", "--mininet", "--cli", "--api-port", "0"],
                          input=commands, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "COLUMNS": "200"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("mininet> ") >= 4, out
    assert "1 packets transmitted, 1 received" in out, out  # peer02 resolved to its address
    assert re.search(r"eth0\S*\s+UP\s+198\.18\.1\.3/", out), out
    assert re.search(r"peer01\s+198\.18\.1\.1\s+(UP|UNKNOWN)", out), out  # health's table
    assert "lab removed" in out and "Traceback" not in out, out
    assert leftovers(lab_prefix(out)) == []


def test_demo_on_bmv2_names_what_is_missing() -> None:
    env = {**os.environ, "SIMPLE_SWITCH_GRPC": "/nonexistent/simple_switch_grpc"}
    proc = subprocess.run([HBMON, "demo", "--target", "bmv2", "--once"], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "simple_switch_grpc" in proc.stderr and "missing" in proc.stderr


def test_mininet_kernel_topology_all_peers_up_then_one_down() -> None:
    topo = star(6, faults={5: Faults(status="draining")})
    with MininetLab(topo, target="kernel") as lab:
        ctl = lab.start_responders()
        with Stack(lab, StackOptions(api_port=0, interval_ms=50, poll_interval_ms=100)) as st:
            states = st.wait_for(expected_states(topo), timeout=60)
            assert [states[p.name] for p in topo.peers[:5]] == ["UP"] * 5
            ControlClient(ctl["peer02"]).set(mute=True)
            st.wait_for({"peer02": {"DOWN"}}, timeout=30)
            ControlClient(ctl["peer02"]).set(mute=False)
            st.wait_for({"peer02": {"UP"}}, timeout=30)
            rows = {r["name"]: r for r in st.health()}
            assert rows["peer01"]["rx_count"] > 0 and rows["peer01"]["tx_count"] > 0
            assert rows["peer06"]["reported_status"] == 2
        prefix = lab.prefix
    assert leftovers(prefix) == []


def _bmv2_or_skip() -> None:
    from hbmon_topo.stack import missing_for

    missing = missing_for("bmv2")
    if missing:
        pytest.skip("bmv2 lab needs: " + "; ".join(missing))


@pytest.mark.bmv2
def test_demo_once_on_bmv2() -> None:
    _bmv2_or_skip()
    proc = subprocess.run(
        [HBMON, "demo", "--target", "bmv2", "--once", "--api-port", "0", "--timeout", "120"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every peer shows its expected state" in out
    assert leftovers(lab_prefix(out)) == []


@pytest.mark.bmv2
def test_mininet_bmv2_topology_all_peers_up_then_one_down() -> None:
    _bmv2_or_skip()
    from hbmon_topo.stack import free_tcp_port

    topo = star(4, ports=4)  # one peer per switch port, as a P4 switch is cabled
    with MininetLab(topo, target="bmv2", grpc_addr=f"127.0.0.1:{free_tcp_port()}",
                    thrift_port=free_tcp_port()) as lab:
        ctl = lab.start_responders()
        options = StackOptions(target="bmv2", api_port=0, interval_ms=100,
                               poll_interval_ms=250)
        with Stack(lab, options, target_running=True) as st:
            st.wait_for({p.name: {"UP"} for p in topo.peers}, timeout=90)
            ControlClient(ctl["peer03"]).set(mute=True)
            st.wait_for({"peer03": {"DOWN"}}, timeout=30)
        prefix = lab.prefix
    assert leftovers(prefix) == []
