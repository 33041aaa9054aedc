"""bmv2 integration: register access against a real simple_switch_grpc, and the whole PTF
suite through tools/ptf_run.py. Skips, naming what is missing, without simple_switch_grpc."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hbmon.dataplane import targets
from hbmon.dataplane.registers import (
    Bmv2ThriftRegisterAccess,
    RegisterAccess,
    RegisterAccessError,
    open_register_access,
)
from hbmon.p4 import P4Schema
from hbmon.p4.client import P4RuntimeClient
from hbmon.protocol import BFD_REGISTERS, REGISTERS

ROOT = Path(__file__).resolve().parents[1]
P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
BMV2_JSON = ROOT / "p4src" / "build" / "heartbeat.json"

pytestmark = [
    pytest.mark.bmv2,
    pytest.mark.skipif(
        targets.find_simple_switch_grpc() is None,
        reason="simple_switch_grpc not found on PATH or $SIMPLE_SWITCH_GRPC (bmv2 is built "
               "by hand; e.g. `source /opt/p4/env.sh`)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[targets.TargetProcess, P4RuntimeClient, P4Schema]]:
    out = tmp_path_factory.mktemp("bmv2") / "bmv2.out"
    target = targets.start_target(
        targets.BMV2, {}, grpc_addr=f"127.0.0.1:{free_port()}", thrift_port=free_port(),
        output_path=out, wait=60)
    schema = P4Schema.load(P4INFO)
    client = P4RuntimeClient(target.grpc_addr, target.device_id)
    try:
        assert client.connect(timeout=10)
        client.set_pipeline(schema, BMV2_JSON.read_bytes())
        yield target, client, schema
    finally:
        client.close()
        target.stop()


@pytest.fixture
def access(switch: tuple[targets.TargetProcess, P4RuntimeClient, P4Schema],
           ) -> Iterator[RegisterAccess]:
    target, client, schema = switch
    acc = open_register_access(None, client=client, schema=schema,
                               thrift_port=target.thrift_port or 9090, bmv2_json=BMV2_JSON)
    yield acc
    acc.close()


def test_auto_choice_is_thrift_because_pi_says_unimplemented(access: RegisterAccess) -> None:
    assert isinstance(access, Bmv2ThriftRegisterAccess)


def test_every_register_round_trips_its_full_width(access: RegisterAccess) -> None:
    top = 65535
    # the slot's registers: hb_* and, with BFD in the P4Info (issue 13), bfd_*
    widths = {**REGISTERS, **BFD_REGISTERS}
    assert access.names == list(widths)
    for name, width in widths.items():
        biggest = (1 << min(width, 63)) - 1  # Thrift's i64: see Bmv2ThriftRegisterAccess
        access.write(name, top, biggest)
        assert access.read(name, top) == biggest, name
        access.write(name, 1, 1)
    with pytest.raises(RegisterAccessError, match="below 2"):
        access.write("hb_last_rx_us", 2, 1 << 63)
    cells = access.read_all("hb_last_rx_us")
    assert len(cells) == 65536
    assert cells[top] == (1 << 63) - 1 and cells[1] == 1 and cells[2] == 0
    access.reset_slot(top)
    access.reset_slot(1)
    assert access.read_slot(top) == dict.fromkeys(widths, 0)
    assert all(v == 0 for cells in access.snapshot().values() for v in cells)


def test_bad_register_name_is_a_clear_error(access: RegisterAccess) -> None:
    with pytest.raises(Exception, match="unknown register"):
        access.read("hb_nope", 0)


@pytest.mark.netns
def test_ptf_suite_passes_on_bmv2() -> None:
    if os.geteuid() != 0:
        pytest.fail("the PTF run needs root (network namespace, veths)")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ptf_run.py"),
                           "--target", "bmv2"], capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summary = re.search(r"PTF on bmv2: (\d+) tests .*: OK", output)
    assert summary, output[-3000:]
    # 31 heartbeat tests and 28 BFD ones (ptf_tests/test_bfd.py): fewer means tests were lost
    assert int(summary.group(1)) >= 59, output[-3000:]
