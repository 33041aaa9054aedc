"""Cost of one whole-structure read (all 14 registers, every slot) on the kernel target,
for 4,096 and 65,536 peers (issue 4 target: 65,536 peers <= 50 ms). Reported, never asserted.

Compares the three ways of reading BPF array maps from user space:
  mmap        Datapath.register_read_all (BPF_F_MMAPABLE arrays, one memoryview slice each)
  batch       BPF_MAP_LOOKUP_BATCH, 4,096 entries per syscall
  per-entry   one BPF_MAP_LOOKUP_ELEM per register and slot (what the issue forbids)

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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hbmon.protocol import REGISTERS  # noqa: E402
from hbmon_kernel.datapath import Datapath  # noqa: E402
from results_io import write_result  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    runs = [bench(n, args.rounds) for n in (4096, 65536)]
    result = {
        "bench": "whole_structure_read",
        "target_ms_65536": 50,
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
