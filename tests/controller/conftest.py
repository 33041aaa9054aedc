"""The controller's tests run against the kernel target's real P4Runtime device over its
in-memory data plane (hbmon_kernel.memory), served over real gRPC in the test process: the
same arbitration, tables, registers and digests users get, without BPF or root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hbmon_kernel.memory import MemoryTarget, serve_memory_target


@pytest.fixture
def target() -> Iterator[MemoryTarget]:
    t = serve_memory_target()
    try:
        yield t
    finally:
        t.stop()
