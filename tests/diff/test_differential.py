"""Differential test: one recorded trace (trace.json) played into bmv2 and into the kernel
target gives the same registers, reason counters and digests.

- The trace file is what trace.py generates, and its declared reasons are the contract's
  (model.py, from the bytes): pure checks, always run.
- The kernel target plays the trace and is judged against the model (always: the kernel
  target is what every machine has).
- bmv2 plays the same trace; it is judged against the model and against the kernel target's
  run, step by step. Skips, naming what is missing, without simple_switch_grpc (PATH or
  $SIMPLE_SWITCH_GRPC) or p4src/build/heartbeat.json.

Observations are written to build/diff/observation-<target>.json for a human to read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hbmon.dataplane import targets
from hbmon.p4 import P4Schema
from hbmon.protocol import Reason

from . import trace as trace_mod
from .compare import check_model, check_requests, compare_targets, run_model, summary
from .model import Model, template_ok
from .player import (
    BMV2_JSON,
    P4INFO,
    ROOT,
    Observation,
    bfd_frame,
    play,
    response_for,
    template_frame,
)

LOG_DIR = ROOT / "build" / "diff"
MAX_SHOWN = 40


def bmv2_missing() -> str | None:
    if targets.find_simple_switch_grpc() is None:
        return ("bmv2 missing: simple_switch_grpc not on PATH and $SIMPLE_SWITCH_GRPC unset "
                "(built by hand; e.g. `source /opt/p4/env.sh`)")
    if not BMV2_JSON.is_file():
        return (f"bmv2 program missing: {BMV2_JSON.relative_to(ROOT)} (compile p4src/ with "
                "p4c: `make p4-build`)")
    return None


BMV2_MISSING = bmv2_missing()


def report(diffs: list[str]) -> str:
    shown = diffs[:MAX_SHOWN]
    more = f"\n... and {len(diffs) - MAX_SHOWN} more" if len(diffs) > MAX_SHOWN else ""
    return "\n".join(shown) + more + f"\n(observations in {LOG_DIR})"


@pytest.fixture(scope="module")
def trace() -> dict[str, Any]:
    return trace_mod.load()


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.load(P4INFO)


@pytest.fixture(scope="module")
def kernel_run(trace: dict[str, Any], schema: P4Schema) -> Iterator[Observation]:
    if os.geteuid() != 0:
        pytest.fail("the differential test needs root (network namespaces, veths, BPF)")
    yield play(targets.KERNEL, trace, schema, LOG_DIR)


# -- the trace itself ---------------------------------------------------------------------------


def test_trace_file_is_what_the_generator_writes() -> None:
    path = trace_mod.TRACE_PATH
    assert path.read_text() == trace_mod.render(), \
        f"{path} is stale: run python {Path(trace_mod.__file__).relative_to(ROOT)}"


def _fake_rounds(trace: dict[str, Any]) -> dict[str, Any]:
    """Request records with made-up tx times, for building frames without a target."""
    from .player import Request, Round

    rounds: dict[str, Any] = {}
    for step in trace["steps"]:
        if step["op"] == "round":
            reqs = {p["name"]: Request(p["name"], p["port"], step["seq"], 10**9, b"")
                    for p in trace["peers"]}
            rounds[step["round"]] = Round(step["round"], step["seq"], 0, 0, reqs)
    return rounds


def test_declared_reasons_are_the_contracts(trace: dict[str, Any]) -> None:
    """Each packet's `expect` is what the model derives from its bytes and the history; and
    the trace reaches every reason and both digest kinds."""
    from .model import Digest, Span

    model = Model(trace)
    rounds = _fake_rounds(trace)
    peers = {p["name"]: p for p in trace["peers"]}
    seen: set[str] = set()
    states: set[int] = set()
    wrong = []
    for i, step in enumerate(trace["steps"]):
        digests: list[Digest] = []
        if step["op"] == "round":
            model.fan_out(step["seq"], {p["index"]: 10**9 for p in trace["peers"]}, digests)
            for pkt in step["packets"]:
                _, frame, echoed = response_for(trace, pkt, rounds)
                arrival = Span(10**9 + 1, 10**9 + 2)
                got = model.response(frame, arrival, echoed, digests)
                name = "ORDINARY" if got is None else got.name
                seen.add(name)
                if name != pkt["expect"]:
                    wrong.append(f"step {i} {step['round']}: {pkt} -> {name}")
        elif step["op"] == "bfd":
            for pkt in step["packets"]:
                port, frame = bfd_frame(trace, pkt)
                got = model.bfd(frame, port, Span(10**9 + 1, 10**9 + 2))
                name = "ORDINARY" if got is None else got.name
                seen.add(name)
                if name != pkt["expect"]:
                    wrong.append(f"step {i} bfd: {pkt} -> {name}")
            model.expected(digests, [])  # the step's bfd_event_t digests end with it
        elif step["op"] == "bfd_round":
            model.bfd_fan_out(Span(10**9 + 5, 10**9 + 6), digests)
            model.expected(digests, [])
        elif step["op"] == "bad_templates":
            for spec in step["templates"]:
                assert not template_ok(template_frame(trace, step["seq"], spec)), spec
                model.bad_template()
        elif step["op"] == "reset_slot":
            model.reset_slot(peers[step["peer"]]["index"])
        elif step["op"] == "delete":
            model.delete_peer(peers[step["peer"]], [step["table"]])
        elif step["op"] == "insert":
            model.insert_peer(peers[step["peer"]], [step["table"]])
        states |= {d.state for d in digests}
    assert not wrong, "\n".join(wrong)
    assert not _unpaced_ordinary(trace)
    missing = [r for r in Reason if model.reasons[r] == 0]
    assert not missing, f"the trace never reaches {[r.name for r in missing]}"
    assert {1, 2} <= states
    assert "ORDINARY" in seen
    assert template_ok(template_frame(trace, 5))  # the valid template the rounds send


def _unpaced_ordinary(trace: dict[str, Any]) -> list[str]:
    """The player waits for each heartbeat to be counted; ordinary frames are counted
    nowhere, so at most 6 in a row, then a heartbeat from the same port (bmv2's capture ring
    holds about 8 frames)."""
    peers = {p["name"]: p for p in (*trace["peers"], *trace["bfd_sessions"])}
    bad = []
    for step in trace["steps"]:
        run: list[int] = []
        for pkt in step.get("packets", []):
            port = pkt.get("port", peers[pkt["from"]]["port"])
            if pkt["expect"] == "ORDINARY":
                run.append(port)
            elif run:
                if len(run) > 6 or set(run) != {port}:
                    bad.append(f"{step['round']}: {len(run)} ordinary frames on {set(run)}, "
                               f"then a heartbeat on port {port}")
                run = []
        if run:
            bad.append(f"{step['round']}: ends with ordinary frames")
    return bad


# -- the targets ---------------------------------------------------------------------------------


@pytest.mark.netns
def test_kernel_target_follows_the_contract(trace: dict[str, Any],
                                            kernel_run: Observation) -> None:
    expected = run_model(trace, kernel_run)
    diffs = check_model(trace, kernel_run, expected) + check_requests(trace, kernel_run)
    assert not diffs, report(diffs)
    assert len(kernel_run.steps) == len(trace["steps"]), summary(kernel_run)


@pytest.mark.bmv2
@pytest.mark.netns
@pytest.mark.skipif(BMV2_MISSING is not None, reason=BMV2_MISSING or "")
def test_bmv2_and_kernel_target_agree(trace: dict[str, Any], schema: P4Schema,
                                      kernel_run: Observation) -> None:
    bmv2_run = play(targets.BMV2, trace, schema, LOG_DIR)
    diffs = compare_targets(bmv2_run, kernel_run)
    diffs += check_model(trace, bmv2_run, run_model(trace, bmv2_run))
    diffs += check_requests(trace, bmv2_run)
    assert not diffs, report(diffs)
    assert summary(bmv2_run)["reasons"] == summary(kernel_run)["reasons"]
