"""`pip install` of the built wheel into a fresh venv, run outside the repository (issue 14):
`hbmon`, `hbmon-kernel-target`, `hbmon serve` and `hbmon responder` from that venv monitor
real peers in a namespace lab, with the P4Info, the BPF objects and the P4Runtime stubs the
wheel carries (setup.py puts them in), not the checkout's. Every command runs with the
temporary directory as its working directory and without this venv on PYTHONPATH."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hbmon_topo.model import star
from hbmon_topo.netns import NetnsLab
from hbmon_topo.stack import StackOptions, controller_config, free_tcp_port

from .wheels import ROOT, build_wheel

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv with only the wheels (and their dependencies) installed: hbmon
    and the hbmon-responder it requires, both named so pip takes them, not an index's."""
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "dist").mkdir()
    wheels = [build_wheel(ROOT / "responder", tmp / "dist"), build_wheel(ROOT, tmp / "dist")]
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    subprocess.run([str(tmp / "venv" / "bin" / "pip"), "install", "-q", *map(str, wheels)],
                   check=True, cwd=tmp, capture_output=True, timeout=600)
    return tmp / "venv" / "bin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HBMON_BPF_DIR", "HBMON_P4INFO")}
    return env


def test_the_wheel_carries_what_the_commands_need(installed: Path, tmp_path: Path) -> None:
    probe = ("from hbmon import assets\n"
             "print(assets.in_checkout(), assets.p4_output(assets.P4INFO_NAME), "
             "assets.bpf_dir())\n"
             "from p4.v1 import p4runtime_pb2_grpc\n")
    out = subprocess.run([str(installed / "python"), "-c", probe], capture_output=True,
                         text=True, check=True, cwd=tmp_path, env=_env()).stdout.split()
    site = str(installed.parent / "lib")
    assert out[0] == "False"
    assert out[1].startswith(site) and out[1].endswith("hbmon/p4build/heartbeat.p4info.txtpb")
    assert out[2].startswith(site) and out[2].endswith("hbmon_kernel/bpf")
    assert (Path(out[1]).read_bytes()
            == (ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb").read_bytes())
    # the responder's packages are the hbmon-responder distribution's alone (issue 12)
    owners = ("import importlib.metadata as m\n"
              "for d in ('hbmon', 'hbmon-responder'):\n"
              "    print(d, sorted({f.parts[0] for f in m.files(d) if '.' not in f.parts[0]}))\n")
    out = subprocess.run([str(installed / "python"), "-c", owners], capture_output=True,
                         text=True, check=True, cwd=tmp_path, env=_env()).stdout.splitlines()
    assert out == ["hbmon ['hbmon', 'hbmon_kernel', 'hbmon_topo', 'p4']",
                   "hbmon-responder ['hbmon_responder', 'hbmon_wire']"], out


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    lab = NetnsLab(star(2, name="whl"))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def test_installed_commands_monitor_real_peers(installed: Path, lab: NetnsLab,
                                               tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for peer in lab.topology.peers:  # the installed responder on each peer host
            procs.append(lab.popen(peer.name, [str(installed / "hbmon"), "responder"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                   env=_env(), cwd=tmp_path))
        grpc_addr = f"127.0.0.1:{free_tcp_port()}"
        target_log = tmp_path / "target.log"
        with target_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(installed / "hbmon-kernel-target"), "--grpc-addr", grpc_addr,
                 *[a for p, i in sorted(lab.port_map.items()) for a in ("-i", f"{p}@{i}")]],
                stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path))
        deadline = time.monotonic() + 60
        while "listening on" not in target_log.read_text():
            assert procs[-1].poll() is None and time.monotonic() < deadline, \
                target_log.read_text()
            time.sleep(0.05)  # polling a log file with a deadline
        api_port = free_tcp_port()
        token = tmp_path / "token"
        token.write_text(secrets.token_hex(16))
        config = controller_config(lab.topology, StackOptions(), grpc_addr=grpc_addr,
                                   ports=lab.port_map, store=f"sqlite:///{tmp_path / 'db'}",
                                   token_file=token, api_port=api_port, thrift_port=None)
        del config["switches"][0]["p4info"]  # the packaged P4Info, not the checkout's
        (tmp_path / "hbmon.yaml").write_text(yaml.safe_dump(config))
        serve_log = tmp_path / "serve.log"
        with serve_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(installed / "hbmon"), "serve", "-c", str(tmp_path / "hbmon.yaml")],
                stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path))
        url = f"http://127.0.0.1:{api_port}/api/v1/peers"
        deadline = time.monotonic() + 60
        states: dict[str, str] = {}
        while set(states.values()) != {"UP"}:
            assert procs[-1].poll() is None and time.monotonic() < deadline, \
                f"{states}\n{serve_log.read_text()}"
            try:
                body = httpx.get(url, timeout=2).json()
                states = {p["name"]: p["state"] for p in body["peers"]}
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling the API with a deadline
        assert set(states) == {p.name for p in lab.topology.peers}
        assert not re.search(r"/work/|p4src/build", serve_log.read_text())
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_installed_demo_once_from_another_directory(installed: Path, tmp_path: Path) -> None:
    """The issue's check: the installed `hbmon demo --once` (its labs, target, controller
    and responders all from the wheel) from a directory that is not the checkout."""
    proc = subprocess.run(
        [str(installed / "hbmon"), "demo", "--once", "--api-port", "0", "--timeout", "90"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path,
        env={**_env(), "COLUMNS": "200"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every peer shows its expected state" in out and "lab removed" in out, out
