"""bench/run_all.py's summary logic (pure: result files written here, no bench is run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "run_all.py"


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_select_follows_keys_indexes_and_row_filters(run_all: ModuleType) -> None:
    data = {"results": [{"peers": 4096, "mmap": {"median_ms": 1.5}},
                        {"peers": 65536, "mmap": {"median_ms": 20.0}}]}
    assert run_all.select(data, ("results", {"peers": 65536}, "mmap", "median_ms")) == 20.0
    assert run_all.select(data, ("results", 0, "peers")) == 4096
    assert run_all.select(data, ("results", {"peers": 1}, "mmap")) is None
    assert run_all.select(data, ("results", 5)) is None
    assert run_all.select(data, ("nope", "x")) is None


def test_ratios_read_the_right_way_round(run_all: ModuleType) -> None:
    ref = run_all.Reference("r", 50.0, "s")
    assert run_all.ratio_text(20.0, ref, "lower") == "0.400x (2.5x better)"
    assert run_all.ratio_text(100.0, ref, "lower") == "2.00x (2.0x worse)"
    assert run_all.ratio_text(100.0, ref, "higher") == "2.00x"
    assert run_all.ratio_text(25.0, ref, "higher") == "0.500x (below)"
    assert run_all.meets(50.0, ref, "lower") and not run_all.meets(50.1, ref, "lower")
    assert run_all.meets(50.0, ref, "higher") and not run_all.meets(49.9, ref, "higher")


def test_summary_only_uses_the_result_files(tmp_path: Path) -> None:
    (tmp_path / "read.json").write_text(json.dumps({"results": [
        {"peers": 65536, "registers": 14, "mmap": {"median_ms": 100.0},
         "batch_syscalls": {"median_ms": 917.504}}]}))
    (tmp_path / "mystery.json").write_text("{}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--summary-only", "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "whole-structure read, 65,536 peers (mmap): 100.0 ms" in out
    assert "2.00x (2.0x worse)  MISSES" in out  # target 50 ms: reported, exit status 0
    assert "batched lookup syscalls, per entry (65,536 peers): 1 us/entry" in out
    assert "without summary rules here: mystery" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_label = {m["label"]: m for m in summary["metrics"]}
    read = by_label["whole-structure read, 65,536 peers (mmap)"]
    assert read["value"] == 100.0
    assert read["comparisons"][0]["meets"] is False
    assert by_label["XDP cost per response on veth"]["value"] is None


def test_unknown_bench_name_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown bench ['nosuch']" in proc.stderr


def test_offload_rows_pick_the_monitor_peers_and_rate(tmp_path: Path) -> None:
    rows = [{"monitor": m, "peers": 4096, "rate_hz": hz, "user_cpu_s_per_s": cpu,
             "down_freshness_s": 0.2}
            for m, hz, cpu in (("hbmon", 1.0, 0.01), ("hbmon", 10.0, 0.04),
                               ("hbmon", 100.0, 0.05), ("baseline-tuned", 10.0, 0.3))]
    (tmp_path / "offload.json").write_text(json.dumps({
        "rows": rows, "goal": {"hbmon_100Hz_over_1Hz": 5.0, "hbmon_fresh_fraction": 0.5},
        "comparison": {"4096x10Hz": {"baseline_tuned_over_hbmon": 7.5}}}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--summary-only", "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    by_label = {m["label"]: m for m in json.loads(
        (tmp_path / "summary.json").read_text())["metrics"]}
    ten = by_label["hbmon user-space CPU (controller + target), 4,096 peers x 10 Hz"]
    assert ten["value"] == 0.04
    goal = next(c for c in ten["comparisons"] if c["kind"] == "target")
    assert goal["value"] == 0.0205 and goal["meets"] is False
    assert by_label["hbmon user-space CPU, 4,096 peers x 1 Hz"]["value"] == 0.01
    assert by_label["baseline monitor (tuned Python) CPU, 4,096 peers x 10 Hz"]["value"] == 0.3
    ratio = by_label["tuned baseline CPU / hbmon user CPU, 4,096 peers x 10 Hz"]
    assert ratio["value"] == 7.5 and ratio["comparisons"][0]["meets"] is False
    assert by_label["hbmon user CPU at 100 Hz / at 1 Hz (4,096 peers)"]["value"] == 5.0
    assert by_label["hbmon user-space CPU, 65,536 peers x 10 Hz"]["value"] is None
    fresh = by_label["hbmon rows passing the freshness check (all UP, muted peer DOWN)"]
    assert fresh["value"] == 0.5 and fresh["comparisons"][0]["meets"] is False


def test_detection_and_rounds_rows_read_their_results(tmp_path: Path) -> None:
    down = {"end_to_end_ms": {"p50": 32.5, "p99": 34.0},
            "dataplane_decision_ms": {"p50": 30.0}}
    (tmp_path / "detection.json").write_text(json.dumps({"cases": {
        "kernel_10ms_x3": {"down": down, "degraded_status": {"from_evidence_ms": {"max": 800}}},
        "bmv2_100ms_x3": {"skipped": "skipped: no bmv2"}}}))
    (tmp_path / "rounds_load.json").write_text(json.dumps({"summary": {"kernel_10ms": {
        "worst_max_abs_deviation_ms": 0.4,
        "by_condition": {"get": {"max_abs_deviation_ms": 0.3}}}}}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--summary-only", "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    by_label = {m["label"]: m for m in json.loads(
        (tmp_path / "summary.json").read_text())["metrics"]}
    p50 = by_label["last answer -> SSE DOWN, kernel 10 ms x 3, 1,024 peers, p50"]
    assert p50["value"] == 32.5 and p50["comparisons"][0]["meets"] is False  # goal 31 ms
    assert by_label["last answer -> SSE DOWN, bmv2 100 ms x 3, p50"]["value"] is None
    status = by_label["peer reports DEGRADED -> SSE DEGRADED (10 ms x 3), max"]
    assert status["value"] == 800 and status["comparisons"][0]["meets"] is True
    worst = by_label["round period at a peer, kernel 10 ms: max |deviation|, idle / "
                     "1k req/s / 50 MB bodies"]
    assert worst["value"] == 0.4 and worst["comparisons"][0]["meets"] is True
    assert by_label["round period at a peer, kernel 10 ms, API at ~1k req/s: max "
                    "|deviation|"]["value"] == 0.3
