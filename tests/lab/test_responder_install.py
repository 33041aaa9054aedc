"""The responder alone on a peer (issue 12): the `hbmon-responder` distribution
(responder/pyproject.toml) installs into a fresh venv from its wheel and a wheel of click,
with `pip install --no-index` in a network namespace of its own (no index, no network: had it
needed anything of the controller's dependencies, pip would fail). `pip list` then shows
the responder, click and the venv's own pip/setuptools, nothing else; the installed
`hbmon-responder` command answers a version-2 request (nonce echoed, TTL 255:
docs/protocol.md, responder rule) and is steered through its control socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hbmon.protocol import PeerStatus
from hbmon_responder.responder import ControlClient

from .test_cli_responder import ask
from .wheels import ROOT, build_wheel, wheel_of_installed

pytestmark = pytest.mark.netns  # unshare --net: a network namespace of its own (root)

VENV_OWN = {"pip", "setuptools"}  # what `python -m venv` puts in (ensurepip)


def _env() -> dict[str, str]:
    """No path to this checkout or its venv, no pip configuration (index URLs) of the host."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def peer_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv where only the responder wheel was installed, offline."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to install without network")
    tmp = tmp_path_factory.mktemp("peer")
    wheels = tmp / "wheels"
    wheels.mkdir()
    responder = build_wheel(ROOT / "responder", wheels)
    wheel_of_installed("click", wheels)
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    pip = str(tmp / "venv" / "bin" / "pip")
    proc = subprocess.run(
        ["unshare", "--net", pip, "install", "--no-index", "--find-links", str(wheels),
         str(responder)],
        capture_output=True, text=True, cwd=tmp, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "venv" / "bin"


def test_the_responder_installs_alone(peer_bin: Path, tmp_path: Path) -> None:
    listed = subprocess.run([str(peer_bin / "pip"), "list", "--format", "json"],
                            capture_output=True, text=True, check=True, cwd=tmp_path,
                            env=_env()).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert names - VENV_OWN == {"hbmon-responder", "click"}, names
    # the controller is not there, and what runs is the venv's copy, not the checkout's
    probe = ("import importlib.metadata as m, importlib.util as u, hbmon_responder.cli\n"
             "print(u.find_spec('hbmon') is None, hbmon_responder.cli.__file__)\n"
             "print(m.requires('hbmon-responder'))\n")
    out = subprocess.run([str(peer_bin / "python"), "-c", probe], capture_output=True,
                         text=True, check=True, cwd=tmp_path, env=_env()).stdout.splitlines()
    no_hbmon, where = out[0].split()
    assert no_hbmon == "True"
    assert where.startswith(str(peer_bin.parent / "lib"))
    assert out[1] == "['click>=8.1']"
    help_ = subprocess.run([str(peer_bin / "hbmon-responder"), "--help"], capture_output=True,
                           text=True, cwd=tmp_path, env=_env(), timeout=60)
    assert help_.returncode == 0 and "Answer hbmon heartbeats" in help_.stdout, help_.stderr
    version = subprocess.run([str(peer_bin / "hbmon-responder"), "--version"],
                             capture_output=True, text=True, cwd=tmp_path, env=_env(),
                             timeout=60)
    assert version.stdout.split()[-1] == _pyproject(ROOT / "responder")["version"]


def _pyproject(project: Path) -> dict[str, Any]:
    with (project / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["project"]
    return table


def test_hbmon_requires_the_responder_of_this_checkout() -> None:
    """hbmon requires exactly the version responder/pyproject.toml declares (the two are
    released together; a stale pin would make pip look for another hbmon-responder)."""
    responder = _pyproject(ROOT / "responder")
    assert (responder["name"], responder["dependencies"]) == ("hbmon-responder", ["click>=8.1"])
    assert f"hbmon-responder=={responder['version']}" in _pyproject(ROOT)["dependencies"]


def test_the_installed_responder_answers(peer_bin: Path, tmp_path: Path,
                                         free_udp_port: Callable[[], int]) -> None:
    port = free_udp_port()
    ctl = str(tmp_path / "peer.sock")
    command = str(peer_bin / "hbmon-responder")
    proc = subprocess.Popen(
        [command, "--bind", "127.0.0.1", "--port", str(port), "--ctl", ctl, "--load", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        cwd=tmp_path, env=_env())
    try:
        ControlClient(ctl).wait_ready(timeout=30)
        answer = ask(port, 1)
        assert (answer.sequence, answer.status, answer.load) == (1, PeerStatus.HEALTHY, 7)
        steer = subprocess.run([command, "--ctl", ctl, "set", "status=draining"],
                               capture_output=True, text=True, cwd=tmp_path, env=_env(),
                               timeout=60)
        assert steer.returncode == 0, steer.stderr
        assert ask(port, 2).status == PeerStatus.DRAINING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout is not None
        assert f"answering on 127.0.0.1:{port}" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
