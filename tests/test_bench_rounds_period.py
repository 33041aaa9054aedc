"""bench/bench_rounds_load.py's period arithmetic (pure: request records made up here, no lab)
and bench/product_lab.py's percentiles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def rounds() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the bench imports its sibling modules by name
    spec = importlib.util.spec_from_file_location("bench_rounds_load",
                                                  BENCH / "bench_rounds_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_sequences_turn_a_lost_capture_into_periods(rounds: ModuleType) -> None:
    # (arrival ns, sequence, tx_timestamp_us): rounds every 10 ms, round 3 never seen,
    # round 5 arrives 1.5 ms late
    at = {1: 0.0, 2: 10.0, 4: 30.0, 5: 41.5, 6: 50.0}
    records = [(int(ms * 1e6), seq, int(ms * 1e3)) for seq, ms in at.items()]
    out = rounds.period_stats(records, 10.0)
    assert out["sequence"] == "+1 per round"
    arrival = out["arrival_at_peer"]
    assert arrival["rounds_missing"] == 1
    assert arrival["periods"] == 4  # 2-1, 4-2 (counted as two periods of 10), 5-4, 6-5
    assert arrival["max_abs_deviation_ms"] == pytest.approx(1.5)
    assert arrival["within_1ms"] == pytest.approx(0.5)


def test_wall_clock_sequences_show_a_skipped_slot_as_one_long_period(
        rounds: ModuleType) -> None:
    # the controller numbers rounds by wall-clock ms: steps of ~10, a skipped slot is 20 ms
    times = [0.0, 10.0, 20.0, 40.0, 50.0]
    records = [(int(t * 1e6), 1000 + int(t), int(t * 1e3)) for t in times]
    out = rounds.period_stats(records, 10.0)
    assert out["sequence"] == "wall-clock ms"
    arrival = out["arrival_at_peer"]
    assert arrival["rounds_missing"] == 1
    assert arrival["max_abs_deviation_ms"] == pytest.approx(10.0)


def test_percentiles_are_nearest_rank() -> None:
    sys.path.insert(0, str(BENCH))
    from product_lab import percentiles

    d = percentiles([float(x) for x in range(1, 101)])
    assert (d["n"], d["p1"], d["p50"], d["p99"], d["max"]) == (100, 1.0, 50.0, 99.0, 100.0)
    assert percentiles([]) == {"n": 0}
