"""Cost of one whole-structure read (all 14 registers, every slot) on the kernel target,
for 4,096 and 65,536 peers (issue 4 target: 65,536 peers <= 50 ms). Reported, never asserted.

Compares the three ways of reading BPF array maps from user space:
  mmap        Datapath.register_read_all (BPF_F_MMAPABLE arrays, one memoryview slice each)
  batch       BPF_MAP_LOOKUP_BATCH, 4,096 entries per syscall
  per-entry   one BPF_MAP_LOOKUP_ELEM per register and slot (what the issue forbids)

and the same data through P4Runtime (issue 9 targets: a whole-structure read of 65,536
peers <= 100 ms server + client; a poll of 4,096 peers x 14 registers by index in a few ms
of CPU): the real kernel target's P4Runtime server (KernelDevice + gRPC, in this process,
on loopback) answering a real gRPC client, which decodes as the controller does
(P4RuntimeClient.read_raw + hbmon.dataplane.registers.decode_cells):
  p4runtime_whole      one ReadRequest, a wildcard RegisterEntry per register
  p4runtime_indexed    the controller's detail poll: one ReadRequest listing 14 x 4,096
                       cells (the same bytes every poll, so the target reuses its plan)
  p4runtime_indexed_verdict  the verdict poll (every 800 ms): the 7 verdict registers x
                       4,096 cells by index
CPU is split per side with thread CPU clocks: server = the gRPC handler thread (plan,
register copy, encode), client = the calling thread (gRPC receive + decode); cells hold
random values of each register's full width (the longest encoding).

  codec                the two ends of the wire alone, in process, no gRPC: the target's
                       CellEncoder.encode + ResponseChunker and the controller's
                       decode_cells over the verdict poll's 7 x 4,096 cells, ns per cell

Usage: python bench/bench_read.py [--rounds N]   (root)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from hbmon.dataplane.registers import decode_cells  # noqa: E402
from hbmon.p4 import P4Schema, wire  # noqa: E402
from hbmon.p4.client import P4RuntimeClient  # noqa: E402
from hbmon.protocol import REGISTERS  # noqa: E402
from hbmon_kernel.datapath import Datapath  # noqa: E402
from hbmon_kernel.p4rt_device import KernelDevice  # noqa: E402
from hbmon_kernel.server import P4RuntimeService, service_handler  # noqa: E402
from results_io import write_result  # noqa: E402

P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"


# The same bench before the C codec (hbmon._cells), medians in ms (codec: ns per cell too),
# kept for the comparison in results/read.json.
BEFORE_C_CODEC: dict[str, object] = {
    "commit": "69b4b01 (numpy encoder and decoder)",
    "codec": {"encode_ns_per_cell": 51.3, "encode_ms": 1.472,
              "decode_ns_per_cell": 65.0, "decode_ms": 1.863},
    "p4runtime_indexed": {"server_cpu": 3.57, "client_cpu": 4.315,
                          "server_plus_client_cpu": 7.853},
    "p4runtime_indexed_verdict": {"server_cpu": 1.703, "client_cpu": 2.304,
                                  "server_plus_client_cpu": 3.983},
    "p4runtime_whole_4096": {"server_cpu": 54.426, "client_cpu": 63.564,
                             "server_plus_client_cpu": 119.648},
}


def timed(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
        "rounds": rounds,
    }


def bench(peers: int, rounds: int) -> dict[str, object]:
    with Datapath({}, max_peers=peers) as dp:
        rng = random.Random(peers)
        for name, width in REGISTERS.items():  # non-trivial contents
            for i in rng.sample(range(peers), min(peers, 1000)):
                dp.register_write(name, i, rng.randrange(1 << width))

        def via_mmap() -> dict[str, list[int]]:
            return {name: dp.register_read_all(name) for name in REGISTERS}

        maps = {name: dp._map(name) for name in REGISTERS}

        def via_batch() -> None:
            for bmap in maps.values():
                bmap.lookup_batch(chunk=4096)

        keys = [struct.pack("=I", i) for i in range(peers)]

        def via_per_entry() -> None:
            for bmap in maps.values():
                for k in keys:
                    bmap.lookup(k)

        # same answer both ways
        snapshot = via_mmap()
        fmt = {64: "=Q", 32: "=I", 8: "=B"}
        for name, bmap in maps.items():
            batch = [struct.unpack(fmt[REGISTERS[name]], v)[0] for _, v in bmap.lookup_batch()]
            assert batch == snapshot[name], name

        result: dict[str, object] = {
            "peers": peers,
            "registers": len(REGISTERS),
            "mmap": timed(via_mmap, rounds),
            "batch_syscalls": timed(via_batch, max(3, rounds // 4)),
            "per_entry_syscalls": timed(via_per_entry, 1 if peers > 8192 else 3),
        }
        m = result["mmap"]["median_ms"]  # type: ignore[index]
        b = result["batch_syscalls"]["median_ms"]  # type: ignore[index]
        p = result["per_entry_syscalls"]["median_ms"]  # type: ignore[index]
        result["batch_over_mmap"] = round(b / m, 1)
        result["per_entry_over_mmap"] = round(p / m, 1)
        return result


class _TimedService(P4RuntimeService):
    """The real service, with the handler thread's CPU time per Read recorded (the gRPC
    handler runs the plan, the register copy and the encoding on one thread)."""

    def __init__(self, device: KernelDevice) -> None:
        super().__init__(device)
        self.cpu_s: list[float] = []

    def Read(self, request: bytes, context: Any) -> Iterator[bytes]:
        spent = 0.0
        inner = super().Read(request, context)
        while True:
            t0 = time.thread_time()
            try:
                chunk = next(inner)
            except StopIteration:
                spent += time.thread_time() - t0
                break
            spent += time.thread_time() - t0
            yield chunk
        self.cpu_s.append(spent)


def _stats(samples: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in samples]
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3),
            "max_ms": round(max(ms), 3)}


def per_cell_python(ids: list[int], indexes: list[int], expected: dict[str, Any],
                    names: list[str]) -> dict[str, object]:
    """What the indexed poll cost before the vectorised path (in process, no gRPC), for
    the ratio: the target encoding cell by cell (hbmon.p4.wire.register_fields) and the
    controller decoding with the protobuf classes, entity by entity."""
    from p4.v1 import p4runtime_pb2

    t0 = time.thread_time()
    chunker = wire.ResponseChunker()
    responses: list[bytes] = []
    for rid, name in zip(ids, names, strict=True):
        column = expected[name]
        for i in indexes:
            responses += chunker.add(wire.register_fields(rid, [int(column[i])], i))
    responses.append(chunker.flush())
    t1 = time.thread_time()
    position = {index: k for k, index in enumerate(indexes)}
    columns = {rid: [0] * len(indexes) for rid in ids}
    for raw in responses:
        for e in p4runtime_pb2.ReadResponse.FromString(raw).entities:
            entry = e.register_entry
            columns[entry.register_id][position[entry.index.index]] = int.from_bytes(
                entry.data.bitstring, "big")
    t2 = time.thread_time()
    return {"server_encode_ms": round((t1 - t0) * 1000, 3),
            "client_decode_ms": round((t2 - t1) * 1000, 3)}


def bench_codec(peers: int, rounds: int) -> dict[str, object]:
    """ns per cell of encoding (target) and decoding (controller) the verdict poll's cells,
    with the values of each register's full width (the longest encoding)."""
    from hbmon.config import HealthConfig

    schema = P4Schema.load(P4INFO)
    names = [f"hb_{f}" for f in HealthConfig().verdict_fields]
    ids = [schema.register(n).id for n in names]
    size = schema.register(names[0]).size
    rng = np.random.default_rng(peers)
    indexes = np.arange(peers, dtype=np.intp)
    values = np.concatenate([rng.integers(0, (1 << REGISTERS[n]) - 1, peers, dtype=np.uint64,
                                          endpoint=True) for n in names])
    encoder = wire.CellEncoder(np.repeat(np.array(ids, np.uint64), peers),
                               np.tile(indexes, len(ids)))
    cells = len(values)

    def encode() -> list[bytes]:
        chunker = wire.ResponseChunker()
        blob, ends = encoder.encode(values)
        out = list(chunker.add_block(blob, ends))
        if chunker.pending:
            out.append(chunker.flush())
        return out

    responses = encode()
    columns = decode_cells(responses, ids, indexes, [size] * len(ids))
    assert np.array_equal(np.concatenate(columns), values)
    samples: dict[str, list[float]] = {"encode": [], "decode": []}
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        encode()
        t1 = time.thread_time_ns()
        decode_cells(responses, ids, indexes, [size] * len(ids))
        t2 = time.thread_time_ns()
        samples["encode"].append(t1 - t0)
        samples["decode"].append(t2 - t1)
    out: dict[str, object] = {"peers": peers, "registers": len(ids), "cells": cells,
                              "response_bytes": sum(map(len, responses)), "rounds": rounds}
    for side, ns in samples.items():
        out[f"{side}_ns_per_cell"] = round(statistics.median(ns) / cells, 1)
        out[f"{side}_ms"] = round(statistics.median(ns) / 1e6, 3)
    return out


def bench_p4runtime(peers: int, rounds: int) -> dict[str, object]:
    """Whole-structure and indexed reads through the kernel target's P4Runtime server."""
    import grpc

    pipeline = P4Schema.load(P4INFO)
    schema = P4Schema.load(P4INFO)
    names = list(REGISTERS)
    ids = [schema.register(n).id for n in names]
    size = schema.register(names[0]).size
    out: dict[str, object] = {"peers": peers, "registers": len(names)}
    with Datapath({}, max_peers=size) as dp:
        device = KernelDevice(dp, pipeline, device_id=1, ports={})
        service = _TimedService(device)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_send_message_length", 256 << 20),
                                      ("grpc.max_receive_message_length", 256 << 20)])
        server.add_generic_rpc_handlers((service_handler(service),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        client = P4RuntimeClient(f"127.0.0.1:{port}", 1, election_id=1, schema=schema)
        try:
            assert client.connect(timeout=10), client.last_error
            client.set_pipeline(schema, b"{}")
            # after set_pipeline (VERIFY_AND_COMMIT clears the registers)
            rng = np.random.default_rng(peers)
            expected = {}
            for name, width in REGISTERS.items():
                values = rng.integers(0, (1 << width) - 1 if width < 64 else (1 << 63) - 1,
                                      size, dtype=np.uint64, endpoint=True)
                values[peers:] = 0
                for i in range(peers):
                    dp.register_write(name, i, int(values[i]))
                expected[name] = values
            from p4.v1 import p4runtime_pb2
            whole_req = p4runtime_pb2.ReadRequest(device_id=1, entities=[
                p4runtime_pb2.Entity(register_entry=p4runtime_pb2.RegisterEntry(register_id=r))
                for r in ids]).SerializeToString()
            indexes = list(range(peers))
            indexed_req = wire.register_cells_request(ids, indexes, 1)
            from hbmon.config import HealthConfig
            verdict = [names.index(f"hb_{f}") for f in HealthConfig().verdict_fields]
            verdict_req = wire.register_cells_request([ids[k] for k in verdict], indexes, 1)

            def measure(request: bytes, idx: list[int] | None, label: str,
                        which: list[int] | None = None) -> None:
                which = list(range(len(ids))) if which is None else which
                asked = [ids[k] for k in which]
                wall: list[float] = []
                client_cpu: list[float] = []
                service.cpu_s.clear()
                nbytes = 0
                for _ in range(rounds):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    responses = client.read_raw(request)
                    columns = decode_cells(responses, asked, idx, [size] * len(asked))
                    client_cpu.append(time.thread_time() - c0)
                    wall.append(time.perf_counter() - t0)
                    nbytes = sum(map(len, responses))
                for name, column in zip([names[k] for k in which], columns,
                                        strict=True):  # the last round's
                    want = expected[name] if idx is None else expected[name][idx]
                    assert np.array_equal(column, want), name
                server_cpu = service.cpu_s[-rounds:]
                total = [a + b for a, b in zip(server_cpu, client_cpu, strict=True)]
                out[label] = {
                    "cells": len(asked) * (size if idx is None else len(idx)),
                    "response_bytes": nbytes, "rounds": rounds,
                    "wall": _stats(wall), "server_cpu": _stats(server_cpu),
                    "client_cpu": _stats(client_cpu), "server_plus_client_cpu": _stats(total),
                }

            measure(whole_req, None, "p4runtime_whole")
            if peers * 4 < size:  # the controller reads by index below a quarter of the slots
                measure(indexed_req, indexes, "p4runtime_indexed")
                measure(verdict_req, indexes, "p4runtime_indexed_verdict", verdict)
                out["per_cell_python_indexed"] = per_cell_python(ids, indexes, expected, names)
        finally:
            client.close()
            server.stop(None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    runs = [bench(n, args.rounds) for n in (4096, 65536)]
    p4rt = [bench_p4runtime(n, max(5, args.rounds // 3)) for n in (4096, 65536)]
    codec = bench_codec(4096, args.rounds)
    result = {
        "bench": "whole_structure_read",
        "target_ms_65536": 50,
        "p4runtime_target_ms_65536": 100,
        "p4runtime": p4rt,
        "codec": codec,
        "before_c_codec": BEFORE_C_CODEC,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": runs,
        "note": "shared 2-core VM; numbers vary with load from other jobs",
    }
    write_result("read", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
