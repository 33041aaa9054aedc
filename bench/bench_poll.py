"""The controller's CPU per poll once the cells are read: 4,096 and 65,536 peers, before/after.

Pure logic (no target): a `Fabric` with N peers is fed synthetic register columns as a poll
returns them, and the CPU time (process_time) of the rest of the poll is measured:

  before  the per-peer path as it was until the batch engine (commit 036ec29), replayed with
          the frozen per-peer engine (tests/controller/health_reference.py): the members
          sorted per poll, a `Slot` per peer, `HealthEngine.observe` per peer, `tick` over
          every peer; all 14 registers per poll, every 500 ms (the old default);
  after   `SwitchDriver.poll`'s tail today: cached members, one `observe_rows` per switch
          over numpy columns of the verdict registers (a full read every detail interval),
          `tick` over damped peers only; every 800 ms (the new default).

Also (`N_background`): the RTT history sample (every second) and a /metrics scrape, from
the engine's arrays and from a PeerHealth per peer (the generic path, as before), and the
controller's steady CPU-s/s from polls + RTT history + one scrape per 15 s.

Two inputs each: `steady` (every peer UP, counters advancing) and `churn` (1 % of the peers
change their reported status each poll, so they go through the per-peer verdict). The
read itself (gRPC / BPF maps) is not in these numbers: bench_read.py and bench_controller.py
measure it. Reported, never asserted.

Usage: python bench/bench_poll.py [--polls N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hbmon.api.metrics import ServiceMetrics  # noqa: E402
from hbmon.api.rtt import RttHistory  # noqa: E402
from hbmon.config import parse_config  # noqa: E402
from hbmon.controller.fabric import Fabric  # noqa: E402
from hbmon.model import (  # noqa: E402
    SLOT_FIELDS,
    Peer,
    Slot,
)
from hbmon.protocol import MAX_PEERS, REGISTERS, PeerStatus, PlaneState  # noqa: E402
from hbmon.store.sql import open_store  # noqa: E402
from results_io import write_result  # noqa: E402

from tests.controller import health_reference  # noqa: E402

P4INFO = ROOT / "p4src" / "build" / "heartbeat.p4info.txtpb"
BEFORE_POLL_S = 0.5  # the old default poll_interval_ms
SCRAPE_S = 15.0  # a usual Prometheus scrape interval
_F = {name: i for i, name in enumerate(SLOT_FIELDS)}


def columns_for(k: int, n: int, churn: bool) -> np.ndarray:
    """Poll k's register columns (all 14 fields, index order) for n peers."""
    cols = np.zeros((len(SLOT_FIELDS), n), np.uint64)
    cols[_F["rx_count"]] = cols[_F["tx_count"]] = 5 * k
    cols[_F["last_seq"]] = 5 * k
    cols[_F["last_rx_us"]] = cols[_F["last_tx_us"]] = 1_000_000 * k
    cols[_F["rtt_ewma_us"]] = cols[_F["rtt_last_us"]] = 300
    cols[_F["state"]] = PlaneState.UP
    if churn:  # a different 1 % reports DEGRADED each poll: 2 % change per poll
        step = 100
        cols[_F["peer_status"], (k % step)::step] = PeerStatus.DEGRADED
    return cols


def make_fabric(n: int, clock: Callable[[], float]) -> Fabric:
    switches = max(1, n // MAX_PEERS)
    cfg = parse_config({
        "switches": [{"name": f"s{s}", "grpc": f"127.0.0.1:{9 + s}", "p4info": str(P4INFO)}
                     for s in range(switches)]})
    fabric = Fabric(cfg, open_store("sqlite://:memory:"), None, clock=clock)
    per = n // switches
    fabric.add_peers([
        Peer(name=f"p{i}", address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
             peer_id=i % per + 1, mac="02:00:00:00:00:01", port=1, switch=f"s{i // per}")
        for i in range(n)])
    return fabric


def measure(fn: Callable[[int], float], polls: int) -> dict[str, float]:
    """`fn(k)` runs poll k and returns the CPU seconds of the part measured."""
    for k in range(1, 4):  # first polls: every peer UNKNOWN -> UP, baselines
        fn(k)
    samples = [fn(k) for k in range(4, 4 + polls)]
    samples.sort()
    return {"median_ms": round(samples[len(samples) // 2] * 1000, 3),
            "mean_ms": round(sum(samples) / len(samples) * 1000, 3),
            "min_ms": round(samples[0] * 1000, 3), "polls": polls}


def before(n: int, churn: bool, polls: int) -> dict[str, float]:
    """The per-peer path (old Fabric._observe and SwitchDriver.poll tail), replayed."""
    clock = [1000.0]
    fabric = make_fabric(n, lambda: clock[0])
    engine = health_reference.HealthEngine(fabric.config.health)  # type: ignore[arg-type]
    for name in fabric._peers:
        engine.add(name, fabric._peers[name].switch, now=clock[0])

    def poll(k: int) -> float:
        clock[0] += BEFORE_POLL_S
        now = clock[0]
        spent = 0.0
        for sw in fabric.drivers:
            full = columns_for(k, len(fabric._members_of(sw)), churn)
            cells = {name: full[_F[name[3:]]].tolist() for name in REGISTERS}  # as read
            t0 = time.process_time()
            members = fabric._members_of(sw)
            slots: dict[str, Slot] = {}
            columns = [cells[r] for r in REGISTERS]
            for pos, (name, _) in enumerate(members):
                slots[name] = Slot(*(col[pos] for col in columns))
            events = []
            for name, index in members:
                if fabric._by_index.get((sw, index)) != name:
                    continue
                events.extend(engine.observe(name, slots[name], now))
            events.extend(engine.tick(now))
            spent += time.process_time() - t0
        return spent

    return measure(poll, polls)


def after(n: int, churn: bool, polls: int, as_lists: bool) -> dict[str, float]:
    """SwitchDriver.poll's tail today: cached members, one batch per switch."""
    clock = [1000.0]
    fabric = make_fabric(n, lambda: clock[0])
    fields = fabric.engine.config.verdict_fields
    sel = [_F[f] for f in fields]

    def poll(k: int) -> float:
        clock[0] += fabric.drivers["s0"].config.poll_interval_s
        spent = 0.0
        for sw, driver in fabric.drivers.items():
            full = columns_for(k, len(fabric._poll_members(sw).indexes), churn)[sel]
            cells: dict[str, Any] = {f"hb_{f}": full[i].tolist() if as_lists else full[i]
                                        for i, f in enumerate(fields)}
            t0 = time.process_time()
            members = fabric._poll_members(sw)
            columns = np.empty((len(fields), len(members.indexes)), np.uint64)
            for i, f in enumerate(fields):
                columns[i] = cells[f"hb_{f}"]
            fabric._observe(driver, members, fields, columns)
            spent += time.process_time() - t0
        return spent

    return measure(poll, polls)


class _Generic:
    """The fabric without its array exports: what the API sees of any other service (and
    what the scrape and the RTT history cost before the array paths)."""

    def __init__(self, fabric: Fabric) -> None:
        self._fabric = fabric

    def __getattr__(self, name: str) -> object:
        if name in ("peer_columns", "rtt_sample"):
            raise AttributeError(name)
        return getattr(self._fabric, name)


def background(n: int, rounds: int) -> dict[str, float]:
    """What hbmon serve does besides polls with no client busy: the RTT history sample
    (every second) and a Prometheus scrape, each by arrays and by PeerHealth per peer."""
    fabric = make_fabric(n, time.time)
    for k in range(1, 4):
        for sw, driver in fabric.drivers.items():
            members = fabric._poll_members(sw)
            fabric._observe(driver, members, SLOT_FIELDS,
                            columns_for(k, len(members.indexes), False))
    out: dict[str, float] = {}
    generic = _Generic(fabric)
    for label, service in (("arrays", fabric), ("per_peer", generic)):
        scrape = ServiceMetrics(service)  # type: ignore[arg-type]
        rtt = RttHistory(service, 1.0, 120)  # type: ignore[arg-type]
        for what, fn in (("scrape", scrape.text), ("rtt_sample", rtt.sample)):
            fn()
            t0 = time.process_time()
            for _ in range(rounds):
                fn()
            out[f"{what}_ms_{label}"] = round((time.process_time() - t0) / rounds * 1000, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    poll_after_s = parse_config({"switches": [{"name": "s", "grpc": "h:1"}]}) \
        .switches[0].poll_interval_s
    rows: dict[str, object] = {}
    for n in (4096, 65536):
        polls = args.polls if n <= 4096 else max(3, args.polls // 4)
        for scenario in ("steady", "churn"):
            churn = scenario == "churn"
            old = before(n, churn, polls)
            new = after(n, churn, polls, as_lists=False)
            new_lists = after(n, churn, polls, as_lists=True)
            rows[f"{n}_{scenario}"] = {
                "peers": n,
                "before": {**old, "poll_interval_s": BEFORE_POLL_S,
                           "cpu_s_per_s": round(old["median_ms"] / 1000 / BEFORE_POLL_S, 5)},
                "after_numpy_columns": {
                    **new, "poll_interval_s": poll_after_s,
                    "cpu_s_per_s": round(new["median_ms"] / 1000 / poll_after_s, 5)},
                "after_list_columns": {
                    **new_lists, "poll_interval_s": poll_after_s,
                    "cpu_s_per_s": round(new_lists["median_ms"] / 1000 / poll_after_s, 5)},
                "per_poll_speedup": round(old["median_ms"] / max(new["median_ms"], 1e-3), 1),
            }
            print(n, scenario, old["median_ms"], new["median_ms"], new_lists["median_ms"],
                  file=sys.stderr)
        bg = background(n, 5 if n <= 4096 else 2)
        steady = rows[f"{n}_steady"]["after_numpy_columns"]  # type: ignore[index]
        rows[f"{n}_background"] = {
            "peers": n, **bg,
            "assumed": {"rtt_sample_interval_s": 1.0, "scrape_interval_s": SCRAPE_S},
            # poll (after) + RTT history + scrapes: the controller's share with no client busy
            "steady_cpu_s_per_s": round(steady["cpu_s_per_s"] + bg["rtt_sample_ms_arrays"] / 1000
                                        + bg["scrape_ms_arrays"] / 1000 / SCRAPE_S, 5),
            "steady_cpu_s_per_s_before": round(
                rows[f"{n}_steady"]["before"]["cpu_s_per_s"]  # type: ignore[index]
                + bg["rtt_sample_ms_per_peer"] / 1000
                + bg["scrape_ms_per_peer"] / 1000 / SCRAPE_S, 5),
        }
        print(n, "background", bg, file=sys.stderr)
    write_result("controller_poll", {
        "bench": "controller_poll",
        "what": "controller CPU per poll after the read (health engine + fabric), pure logic",
        "host": platform.node(), "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    })


if __name__ == "__main__":
    main()
