"""p4runtime-shell, the ecosystem's P4Runtime client, against the kernel target.

p4runtime-shell pins an old protobuf, so it lives in its own virtual environment
(build/p4rt-shell-venv, created on first use exactly as `hbmon shell` does; never in .venv).
A small script run by that venv's python drives `p4runtime_sh.shell` non-interactively and
prints what it read as JSON:

* as a read-only backup next to the project's controller: the P4Info comes from the
  target (GetForwardingPipelineConfig), the `peers` entries and `hb_reason` counters the
  controller and real traffic produced are read back;
* on its own as primary: it pushes the pipeline (`FwdPipeConfig(p4info, json)`), inserts a
  `peers` entry with the shell's own API and reads it and the counters back.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hbmon.cli.controller import SHELL_VENV, ensure_shell_venv
from hbmon.p4 import CounterRead, P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient
from hbmon.protocol import REASON_COUNT, Reason

from .bpf_lab import Lab, ip_int, response_frame
from .server_harness import P4INFO, KernelTarget, wait_for

pytestmark = pytest.mark.netns

SHELL_SCRIPT = textwrap.dedent('''
    import json, sys
    from google.protobuf import json_format
    import p4runtime_sh.shell as sh

    addr, mode = sys.argv[1], sys.argv[2]
    if mode == "backup":
        sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1), verbose=False)
    else:
        sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1), verbose=False,
                 config=sh.FwdPipeConfig(sys.argv[3], sys.argv[4]))
        te = sh.TableEntry("HbIngress.peers")(action="HbIngress.set_peer_index")
        te.match["src_addr"] = "198.18.7.7"
        te.match["peer_id"] = "77"
        te.action["index"] = "12"
        te.action["nonce_key"] = "0x5eed1234"
        te.action["min_ttl"] = "255"
        te.insert()
    out = {
        "peers": [json_format.MessageToDict(e.msg())
                  for e in sh.TableEntry("HbIngress.peers").read()],
        "peers_text": [str(e) for e in sh.TableEntry("HbIngress.peers").read()],
        "hb_reason": {c.index: [c.packet_count, c.byte_count]
                      for c in sh.CounterEntry("hb_reason").read()},
    }
    sh.teardown()
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def shell_python() -> Path:
    venv = ensure_shell_venv(SHELL_VENV, echo=print)
    python = venv / "bin" / "python"
    # the shell's own protobuf, not the project's: proof it runs in its own environment
    proc = subprocess.run([str(python), "-c", "import google.protobuf as p; print(p.__version__)"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("3."), proc.stdout
    return python


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(1) as lab:
        yield lab


@pytest.fixture
def target(lab: Lab) -> Iterator[KernelTarget]:
    with KernelTarget(lab.ports) as t:
        yield t


def run_shell(python: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    script = tmp_path / "shell_read.py"
    script.write_text(SHELL_SCRIPT)
    proc = subprocess.run([str(python), str(script), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"p4runtime-shell failed:\n{proc.stdout}\n{proc.stderr}"
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def as_int(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64), "big")


def peers_of(result: dict[str, Any]) -> set[tuple[int, ...]]:
    """(src_addr, peer_id, index, nonce_key, min_ttl) of each peers entry the shell read."""
    out = set()
    for entry in result["peers"]:
        match = {m["fieldId"]: as_int(m["exact"]["value"]) for m in entry["match"]}
        params = {p["paramId"]: as_int(p["value"]) for p in entry["action"]["action"]["params"]}
        out.add((match[1], match[2], *(params[i] for i in sorted(params))))
    return out


def test_shell_reads_peers_and_counters_as_backup(shell_python: Path, target: KernelTarget,
                                                  lab: Lab, tmp_path: Path) -> None:
    assert target.address is not None
    schema = P4Schema.load(P4INFO)
    with P4RuntimeClient(target.address, 1, election_id=10, schema=schema) as ctl:
        assert ctl.connect(timeout=10)
        ctl.set_pipeline(schema, b"{}")
        peers = {(ip_int("198.18.1.2"), 42, 3, 0x5EED0003, 0),
                 (ip_int("198.18.1.9"), 43, 4, 0x5EED0004, 255)}
        ctl.insert([TableEntry("HbIngress.peers", {"src_addr": a, "peer_id": p},
                               "HbIngress.set_peer_index",
                               {"index": i, "nonce_key": k, "min_ttl": t})
                     for a, p, i, k, t in peers])
        # real traffic for the counters: two responses from a peer nobody programmed
        frame = response_frame(peer_ip=ip_int("198.18.9.9"), monitor_ip=ip_int("198.18.0.1"),
                               peer_id=999, seq=1, tx_us=1)
        sender = lab.sender(1)
        sender.send(frame)
        sender.send(frame)

        def unknown_peer() -> int:
            for e in ctl.read([CounterRead("hb_reason")]):
                if e.counter_entry.index.index == Reason.UNKNOWN_PEER:
                    return int(e.counter_entry.data.packet_count)
            return 0

        assert wait_for(lambda: unknown_peer() == 2)
        result = run_shell(shell_python, tmp_path, target.address, "backup")
        assert ctl.primary  # the shell stayed a backup
    assert peers_of(result) == peers
    # the shell names what it shows from the P4Info it fetched from the target
    assert len(result["peers_text"]) == 2
    assert all('("src_addr")' in t and '("HbIngress.set_peer_index")' in t
               for t in result["peers_text"]), result["peers_text"]
    counters = {int(k): v for k, v in result["hb_reason"].items()}
    assert sorted(counters) == list(range(REASON_COUNT))
    assert counters[Reason.UNKNOWN_PEER] == [2, 2 * len(frame)]
    assert all(v == [0, 0] for k, v in counters.items() if k != Reason.UNKNOWN_PEER)


def test_shell_pushes_pipeline_and_writes(shell_python: Path, target: KernelTarget,
                                          tmp_path: Path) -> None:
    assert target.address is not None
    device_config = tmp_path / "device.json"
    device_config.write_text("{}")  # bmv2's JSON would go here; the kernel target ignores it
    result = run_shell(shell_python, tmp_path, target.address, "primary", str(P4INFO),
                       str(device_config))
    assert peers_of(result) == {(ip_int("198.18.7.7"), 77, 12, 0x5EED1234, 255)}
    assert len(result["hb_reason"]) == REASON_COUNT



REGISTER_SCRIPT = textwrap.dedent('''
    import json, sys
    import p4runtime_sh.shell as sh
    from p4.v1 import p4runtime_pb2

    addr, rids, indexes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1), verbose=False)

    def cells(responses):
        out, sizes = [], []
        for resp in responses:
            sizes.append(resp.ByteSize())
            out += [[e.register_entry.register_id, e.register_entry.index.index,
                     int.from_bytes(e.register_entry.data.bitstring, "big")]
                    for e in resp.entities]
        return {"cells": out, "sizes": sizes}

    def entity(rid, index=None):
        e = p4runtime_pb2.Entity()
        e.register_entry.register_id = rid
        if index is not None:
            e.register_entry.index.index = index
        return e

    # by index: every register x every index in one ReadRequest (the controller's poll)
    req = p4runtime_pb2.ReadRequest(device_id=1)
    req.entities.extend(entity(r, i) for r in rids for i in indexes)
    out = {"indexed": cells(sh.client.stub.Read(req)),
           "one": cells(sh.client.read_one(entity(rids[0], indexes[1]))),
           "wildcard": cells(sh.client.read_one(entity(rids[0])))}
    sh.teardown()
    print("RESULT " + json.dumps(out))
''')


def test_shell_reads_registers_by_index_and_wildcard(shell_python: Path, target: KernelTarget,
                                                     tmp_path: Path) -> None:
    """More than 1 MiB of RegisterEntry cells each way, read by the ecosystem's client in
    its own protobuf (3.x) runtime: every value as written, no message over the limit."""
    from hbmon.p4.wire import MAX_RESPONSE_BYTES
    from hbmon.protocol import REGISTERS
    from p4.v1 import p4runtime_pb2

    assert target.address is not None
    schema = P4Schema.load(P4INFO)
    rng = random.Random(4)
    indexes = [0, *rng.sample(range(1, 65536), 8999)]
    expected: dict[int, dict[int, int]] = {}
    with P4RuntimeClient(target.address, 1, election_id=10, schema=schema,
                         batch_size=4096) as ctl:
        assert ctl.connect(timeout=10)
        ctl.set_pipeline(schema, b"{}")
        updates = []
        for name, width in REGISTERS.items():
            rid = schema.register(name).id
            fill = p4runtime_pb2.Entity()
            fill.register_entry.register_id = rid
            fill.register_entry.data.bitstring = b"\xff" * (width // 8)  # every cell
            updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=fill))
            cells = expected[rid] = {}
            for i in indexes[:1500]:
                cells[i] = rng.randrange(1 << width)
                e = p4runtime_pb2.Entity()
                e.register_entry.register_id = rid
                e.register_entry.index.index = i
                e.register_entry.data.bitstring = cells[i].to_bytes(width // 8, "big")
                updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=e))
        ctl.write(updates)
        rids = [schema.register(n).id for n in REGISTERS]
        top = {schema.register(n).id: (1 << w) - 1 for n, w in REGISTERS.items()}

        def value(rid: int, index: int) -> int:
            return expected[rid].get(index, top[rid])

        result = run_shell_script(shell_python, tmp_path, REGISTER_SCRIPT, target.address,
                                  json.dumps(rids), json.dumps(indexes))
    indexed = result["indexed"]
    assert sum(indexed["sizes"]) > 1 << 20 and len(indexed["sizes"]) > 1
    assert indexed["cells"] == [[r, i, value(r, i)] for r in rids for i in indexes]
    assert result["one"]["cells"] == [[rids[0], indexes[1], value(rids[0], indexes[1])]]
    wildcard = result["wildcard"]
    assert sum(wildcard["sizes"]) > 1 << 20 and len(wildcard["sizes"]) > 1
    assert sorted(map(tuple, wildcard["cells"])) == \
        [(rids[0], i, value(rids[0], i)) for i in range(65536)]
    assert max(indexed["sizes"] + wildcard["sizes"]) <= MAX_RESPONSE_BYTES


def run_shell_script(python: Path, tmp_path: Path, script_text: str,
                     *args: str) -> dict[str, Any]:
    script = tmp_path / "shell_script.py"
    script.write_text(script_text)
    proc = subprocess.run([str(python), str(script), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, f"p4runtime-shell failed:\n{proc.stdout}\n{proc.stderr}"
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result
