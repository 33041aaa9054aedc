"""The real product in a MULTI namespace lab, for the timing benches (bench_detection.py,
bench_rounds_load.py): `hbmon-kernel-target` on the monitor port, `hbmon serve` with its
REST/SSE API on loopback, an XDP peer farm answering every peer address, a live SSE reader
and a side P4Runtime reader of single register cells.

Clocks: the kernel target stamps the slots with bpf_ktime_get_ns() (CLOCK_MONOTONIC), the
same clock as time.monotonic() here, so a register's microseconds and an event's arrival
here subtract directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
HBMON = str(Path(sys.executable).with_name("hbmon"))


def p4info_path() -> Path:
    from hbmon.config import DEFAULT_P4INFO

    return Path(os.environ.get("HBMON_P4INFO") or DEFAULT_P4INFO)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `cond` until it holds or `timeout` passes (a bounded poll, not a fixed wait)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            return False
        tick.wait(interval)
    return True


def percentiles(values: list[float], digits: int = 3) -> dict[str, Any]:
    """n, min, p50, p95, p99, max, mean of `values` (nearest-rank percentiles)."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]

    return {"n": len(s), "min": round(s[0], digits), "p1": round(rank(1), digits),
            "p50": round(rank(50), digits), "p95": round(rank(95), digits),
            "p99": round(rank(99), digits), "max": round(s[-1], digits),
            "mean": round(sum(s) / len(s), digits)}


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False).stdout.strip()


# ---- hbmon serve ---------------------------------------------------------------------------


def serve_config(topo: Any, grpc_addr: str, api_port: int, interval_ms: float,
                 detect_mult: int, workdir: Path, **switch: Any) -> dict[str, Any]:
    """A one-switch `hbmon serve` config for the lab (kind kernel, default poll cadence)."""
    return {
        "interval_ms": interval_ms, "detect_mult": detect_mult,
        "monitor": {"mac": topo.port(1).mac, "ip": topo.monitor_address},
        "store": f"sqlite:///{workdir / f'hbmon-{time.monotonic_ns()}.db'}",
        "api": {"host": "127.0.0.1", "port": api_port},
        "switches": [{"name": "s1", "grpc": grpc_addr, "p4info": str(p4info_path()),
                      **switch}],
        "peers": topo.peer_dicts("s1"),
    }


@contextlib.contextmanager
def serve(config: dict[str, Any], workdir: Path, *, env: dict[str, str] | None = None,
          command: list[str] | None = None, args: tuple[str, ...] = (),
          ) -> Iterator[subprocess.Popen[bytes]]:
    """`hbmon serve [args]` (or `command`) on `config`, stopped by its pid on exit."""
    path = workdir / f"hbmon-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = (command or [HBMON]) + ["serve", *args, "-c", str(path), "--log-level", "warning"]
    with (workdir / "serve.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Api:
    """Reads of the REST API on loopback."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], workdir: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.proc, self.workdir = proc, workdir
        self.client = httpx.Client(base_url=self.base, timeout=30)

    def get(self, path: str) -> Any:
        if self.proc.poll() is not None:
            raise RuntimeError("hbmon serve exited: "
                               + (self.workdir / "serve.log").read_text()[-2000:])
        r = self.client.get(path)
        r.raise_for_status()
        return r.json()

    def states(self) -> dict[str, int]:
        try:
            return dict(self.get("/api/v1/health")["states"])
        except httpx.HTTPError:
            return {}

    def wait_all_up(self, n: int, timeout: float) -> float | None:
        t0 = time.monotonic()
        ok = wait_for(lambda: self.states().get("UP", 0) == n, timeout, 0.25)
        return round(time.monotonic() - t0, 2) if ok else None

    def indexes(self) -> dict[str, int]:
        """Peer name -> slot index (the controller allocates them)."""
        data = self.get("/api/v1/peers")
        items = data["peers"] if isinstance(data, dict) else data
        return {p["name"]: int(p["index"]) for p in items}

    def close(self) -> None:
        self.client.close()


# ---- the live event stream -----------------------------------------------------------------


@dataclass
class SeenEvent:
    arrival: float  # time.monotonic() when the event's data line was read
    peer: str | None
    new_state: str | None
    data: dict[str, Any] = field(default_factory=dict)


class SseWatcher:
    """Reads GET /api/v1/events in a thread and stamps every transition at arrival."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/api/v1/events?kind=transition"
        self.events: list[SeenEvent] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sse", daemon=True)

    def __enter__(self) -> SseWatcher:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"SSE stream did not open: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=None)) as client, \
                    client.stream("GET", self.url) as resp:
                resp.raise_for_status()
                self._ready.set()
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line.startswith("data:"):
                        continue
                    now = time.monotonic()  # first, before parsing
                    data = json.loads(line[5:])
                    with self._cond:
                        self.events.append(SeenEvent(now, data.get("peer"),
                                                     data.get("new_state"), data))
                        self._cond.notify_all()
        except Exception as exc:  # reported by the waiters
            self.error = f"{type(exc).__name__}: {exc}"
            self._ready.set()
            with self._cond:
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(self, peer: str, state: str, since: int, timeout: float) -> SeenEvent | None:
        """The first event after position `since` that moves `peer` to `state`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[since:]:
                    if ev.peer == peer and ev.new_state == state:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    return None
                self._cond.wait(left)


# ---- side reads of single register cells ---------------------------------------------------


class CellReader:
    """Reads single register cells from the target over P4Runtime (a Read RPC needs no
    stream or mastership: this client never competes with the controller)."""

    def __init__(self, grpc_addr: str, names: list[str]) -> None:
        from hbmon.dataplane.registers import P4RuntimeRegisterAccess
        from hbmon.p4 import P4Schema
        from hbmon.p4.client import P4RuntimeClient

        schema = P4Schema.load(p4info_path())
        self.client = P4RuntimeClient(grpc_addr, 1, schema=schema)
        self.access = P4RuntimeRegisterAccess(self.client, schema, names)

    def read(self, name: str, index: int) -> int:
        return self.access.read(name, index)

    def slot(self, index: int) -> dict[str, int]:
        return self.access.read_slot(index)

    def close(self) -> None:
        self.client.close()
