"""hbmon-kernel-target's life: refusing to start (exit 2, a clear message) on a missing
interface, without BPF permission, with bad arguments or a bad P4Info; a fresh target's
answers before any pipeline; and a clean exit on SIGTERM/SIGINT that leaves no program,
tc hook or CPU-port veth behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .bpf_lab import Lab, ip
from .server_harness import KernelTarget, RawStream, target_program

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2) as lab:
        yield lab


def refused(ports: dict[int, str], *extra: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """Exit status and output of a target that must not start."""
    cmd = [*prefix, target_program(), *[a for p, i in ports.items() for a in ("-i", f"{p}@{i}")],
           "--grpc-addr", "127.0.0.1:0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_missing_interface_refused(lab: Lab) -> None:
    missing = f"hbnx{os.getpid() % 100000}"
    rc, out = refused({1: lab.ports[1], 2: missing})
    assert rc == 2, out
    assert f"interface '{missing}' (port 2) does not exist" in out
    assert "listening" not in out


def test_bpf_not_permitted_refused(lab: Lab) -> None:
    # root without capabilities: bpf() is refused as it is for an ordinary user
    rc, out = refused(lab.ports, prefix=("setpriv", "--bounding-set=-all", "--inh-caps=-all",
                                         "--"))
    assert rc == 2, out
    assert "BPF is not permitted" in out and "CAP_BPF" in out


@pytest.mark.parametrize(("args", "message"), [
    (("-i", "1@a", "-i", "1@b"), "port 1 given twice"),
    (("-i", "1@a", "-i", "2@a"), "interface a given twice"),
    (("-i", "600@a",), "port 600 outside 0..511"),
    (("-i", "x@a",), "port 'x' is not a number"),
    (("-i", "255@a",), "port 255 is the CPU port"),
    (("-i", "1",), "expected PORT@INTERFACE"),
    ((), "the following arguments are required: -i/--interface"),
])
def test_bad_arguments_refused(args: tuple[str, ...], message: str) -> None:
    proc = subprocess.run([target_program(), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_bad_p4info_refused(lab: Lab, tmp_path: Path) -> None:
    rc, out = refused(lab.ports, "--p4info", str(tmp_path / "none.txtpb"))
    assert rc == 2 and "cannot load the P4Info" in out
    other = tmp_path / "other.p4info.txtpb"
    other.write_text('tables { preamble { id: 1 name: "t" } }')
    rc, out = refused(lab.ports, "--p4info", str(other))
    assert rc == 2 and "does not fit the kernel data plane" in out and "HbIngress.peers" in out


def _xdp_attached(iface: str) -> bool:
    link = json.loads(ip("-j", "link", "show", "dev", iface))[0]
    return "xdp" in link


def _tc_filters(iface: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", iface, "ingress"],
                          capture_output=True, text=True, check=False).stdout.strip()


def _cpu_ports(pid: int) -> list[str]:
    names = [link["ifname"] for link in json.loads(ip("-j", "link", "show"))]
    return [n for n in names if re.fullmatch(rf"hbc{pid}x\d+[abcd]", n)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_clean_exit_on_signal(lab: Lab, signum: int) -> None:
    target = KernelTarget(lab.ports).start()
    try:
        pid = target.pid
        assert all(_xdp_attached(i) for i in lab.ports.values())
        assert all(_tc_filters(i) for i in lab.ports.values())
        assert len(_cpu_ports(pid)) == 4  # two veth pairs: packet-out + round pacer, bursts
        target.signal(signum)
        assert target.wait() == 0, target.output
    finally:
        target.stop()
    assert not any(_xdp_attached(i) for i in lab.ports.values())
    assert not any(_tc_filters(i) for i in lab.ports.values())
    assert _cpu_ports(pid) == []


def test_fresh_target_before_any_pipeline(lab: Lab) -> None:
    with KernelTarget(lab.ports, device_id=3) as target:
        assert target.address is not None
        with RawStream(target.address) as s:
            s.arbitrate(3, 1)
            msg = s.next("arbitration")
            assert msg is not None and msg.arbitration.device_id == 3
            stub = p4runtime_pb2_grpc.P4RuntimeStub(s.channel)
            got = stub.GetForwardingPipelineConfig(
                p4runtime_pb2.GetForwardingPipelineConfigRequest(device_id=3))
            assert not got.HasField("config")  # spec: unset while none is known
            read = p4runtime_pb2.ReadRequest(device_id=3)
            read.entities.add().table_entry.SetInParent()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Read(read))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            write = p4runtime_pb2.WriteRequest(device_id=3)
            write.election_id.low = 1
            write.updates.add(type=p4runtime_pb2.Update.INSERT).entity.table_entry.table_id = 1
            with pytest.raises(grpc.RpcError) as err:
                stub.Write(write)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            pkt = p4runtime_pb2.StreamMessageRequest()
            pkt.packet.payload = b"\x00" * 60
            s.send(pkt)
            err_msg = s.next("error")
            assert err_msg is not None
            assert err_msg.error.canonical_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
