"""`hbmon responder` as a user runs it: a process, its control sub-commands, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hbmon.protocol import SEND_TTL, Heartbeat, MsgType, PeerStatus, request_nonce
from hbmon_responder.responder import ControlClient

from .test_responder import IP_RECVTTL, _recv_ttl

HBMON = str(Path(sys.executable).with_name("hbmon"))


def hbmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HBMON, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def served(tmp_path: Path, free_udp_port: Callable[[], int]) -> Iterator[tuple[int, str,
                                                                             subprocess.Popen[str]]]:
    port = free_udp_port()
    ctl = str(tmp_path / "resp.sock")
    proc = subprocess.Popen(
        [HBMON, "responder", "--bind", "127.0.0.1", "--port", str(port), "--ctl", ctl,
         "--status", "degraded", "--load", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        ControlClient(ctl).wait_ready(timeout=20)
        yield port, ctl, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def ask(port: int, seq: int) -> Heartbeat:
    """One v2 request; the answer must echo its nonce and arrive with TTL 255 (docs/protocol.md
    responder rule; loopback does not decrement)."""
    nonce = request_nonce(0xC0FF_EE00, seq)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.sendto(Heartbeat(MsgType.REQUEST, 5, seq, 1, nonce=nonce).pack(), ("127.0.0.1", port))
        data, ttl = _recv_ttl(s)
    answer = Heartbeat.unpack(data, expect=MsgType.RESPONSE)
    assert (answer.version, answer.nonce, ttl) == (2, nonce, SEND_TTL)
    return answer


def test_serve_control_and_terminate(served: tuple[int, str, subprocess.Popen[str]]) -> None:
    port, ctl, proc = served
    answer = ask(port, 1)
    assert (answer.sequence, answer.status, answer.load) == (1, PeerStatus.DEGRADED, 12)

    out = hbmon("responder", "--ctl", ctl, "set", "status=draining", "load=3", "delay_ms=1")
    assert out.returncode == 0, out.stderr
    assert "status=draining" in out.stdout and "delay_ms=1.0" in out.stdout
    answer = ask(port, 2)
    assert (answer.status, answer.load) == (PeerStatus.DRAINING, 3)

    out = hbmon("responder", "--ctl", ctl, "--json", "get")
    reply = json.loads(out.stdout)
    assert reply["stats"]["answered"] == 2 and reply["faults"]["load"] == 3

    assert hbmon("responder", "--ctl", ctl, "stop").returncode == 0
    assert ControlClient(ctl).get()["faults"]["mute"] is True
    assert hbmon("responder", "--ctl", ctl, "start").returncode == 0
    assert ControlClient(ctl).get()["faults"]["mute"] is False

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout is not None
    assert f"answering on 127.0.0.1:{port}" in proc.stdout.read()
    assert not Path(ctl).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "loss=abc"], "loss: not a number"),
        (["set", "loss=150"], "loss: must be 0 .. 100"),
        (["set", "colour=red"], "colour: unknown setting"),
        (["set", "loss"], "expected KEY=VALUE"),
        (["set"], "set needs KEY=VALUE"),
        (["get", "loss=1"], "takes no KEY=VALUE"),
    ],
)
def test_control_errors_name_the_problem(served: tuple[int, str, subprocess.Popen[str]],
                                         args: list[str], message: str) -> None:
    _, ctl, _ = served
    before = ControlClient(ctl).get()["faults"]
    out = hbmon("responder", "--ctl", ctl, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert ControlClient(ctl).get()["faults"] == before


def test_control_needs_a_socket_and_a_live_responder(tmp_path: Path) -> None:
    out = hbmon("responder", "get")
    assert out.returncode != 0 and "needs --ctl" in out.stderr
    out = hbmon("responder", "--ctl", str(tmp_path / "nobody.sock"), "get")
    assert out.returncode != 0 and "cannot reach responder" in out.stderr


def test_port_in_use_is_reported(served: tuple[int, str, subprocess.Popen[str]]) -> None:
    port, _, _ = served
    out = hbmon("responder", "--bind", "127.0.0.1", "--port", str(port))
    assert out.returncode != 0
    assert f"cannot bind UDP 127.0.0.1:{port}" in out.stderr
