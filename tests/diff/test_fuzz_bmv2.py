"""The kernel target's fuzz corpus through bmv2 (issue 11: "the same corpus through bmv2 when
present"), judged by the same independent reading of docs/protocol.md
(tests/kernel/xdp_fuzz.py) as tests/kernel/test_fuzz_xdp.py.

bmv2 is slow and captures with a small libpcap ring (about 8 frames), so the slice is small
(HBMON_FUZZ_BMV2_FRAMES, default 3,000) and paced: at most 6 frames go out, then the player
waits, polling hb_reason with a deadline, until every heartbeat among them is counted (a
BAD_MAGIC sentinel closes a batch of ordinary frames). Every 32 batches the hb_reason counter
(packets and bytes per reason), every register the contract fixes exactly (over Thrift) and
the UP digests must equal the model's; the time-dependent registers may change only where a
response was recorded. Between those checks the test plays egress (hb_tx_count,
hb_last_tx_seq) and mutes peers (hb_state DOWN) with Thrift writes, as the kernel fuzz does.
Skips, naming what is missing, without simple_switch_grpc or p4src/build/heartbeat.json.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hbmon.p4 import DigestEntry, P4Schema, TableEntry
from hbmon.protocol import REASON_COUNT, PlaneState, Reason
from kernel.bpf_lab import Lab, ip_int
from kernel.test_fuzz_xdp import INGRESS_REASONS, PEERS, SEED, report
from kernel.xdp_fuzz import (
    CLASSES,
    EXACT_REGISTERS,
    TIMED_REGISTERS,
    UNTOUCHED_REGISTERS,
    Fuzzer,
    Model,
    frame,
    heartbeat,
)

from .player import P4INFO, ROOT, Bmv2Side, StepTimeout, lab_for_trace
from .test_differential import BMV2_MISSING

FRAMES = int(os.environ.get("HBMON_FUZZ_BMV2_FRAMES", "3000"))
MONITOR_IP = ip_int("198.18.0.1")
BATCH = 6  # frames in flight at most (bmv2's capture ring holds about 8)
CHECK_EVERY = 32  # batches between two full comparisons
DEADLINE_S = 15.0
LOG_DIR = ROOT / "build" / "diff"
INDEXES = sorted(e.index for e in PEERS.values())
CLASSIFIED = [r for r in Reason if r not in (Reason.REQUEST_SENT, Reason.REQUEST_NO_PEER,
                                              Reason.BAD_TEMPLATE, Reason.PEER_DOWN_EVENT,
                                              Reason.PEER_UP_EVENT)]

pytestmark = [pytest.mark.bmv2, pytest.mark.netns,
              pytest.mark.skipif(BMV2_MISSING is not None, reason=BMV2_MISSING or "")]


@pytest.fixture(scope="module")
def bmv2() -> Iterator[tuple[Bmv2Side, Lab]]:
    if os.geteuid() != 0:
        pytest.fail("the bmv2 fuzz slice needs root (network namespaces, veths)")
    schema = P4Schema.load(P4INFO)
    with lab_for_trace({"ports": [1]}) as lab:
        side = Bmv2Side(schema, lab, LOG_DIR)
        try:
            yield side, lab
        finally:
            side.close()


class Bmv2Run:
    """The fuzz peers programmed over P4Runtime; counters over P4Runtime, registers over
    Thrift (as the differential test reads them); the model it is held to."""

    def __init__(self, side: Bmv2Side, model: Model, fuzzer: Fuzzer) -> None:
        assert side.client is not None and side.registers is not None
        self.side, self.model, self.fuzzer = side, model, fuzzer
        self.registers = side.registers
        entities: list[Any] = []
        for (src, pid), entry in PEERS.items():
            entities.append(TableEntry(
                "HbIngress.peers", {"src_addr": src, "peer_id": pid}, "HbIngress.set_peer_index",
                {"index": entry.index, "nonce_key": entry.nonce_key, "min_ttl": entry.min_ttl}))
            entities.append(TableEntry("HbIngress.peer_ids", {"peer_id": pid},
                                       "HbIngress.peer_id_known"))
        entities.append(DigestEntry("peer_event_t", max_timeout_ns=0, max_list_size=1,
                                    ack_timeout_ns=10**9))
        side.client.insert(entities)
        for index in INDEXES:
            self.registers.reset_slot(index)
        self.before = self.cells()
        self.ups_seen = 0

    def classified(self) -> int:
        counts = self.side.reasons()
        return sum(counts[r][0] for r in CLASSIFIED)

    def cells(self) -> dict[str, list[int]]:
        names = [*EXACT_REGISTERS, *TIMED_REGISTERS, *UNTOUCHED_REGISTERS]
        return {n: [self.registers.read(n, i) for i in INDEXES] for n in names}

    def check(self, where: str) -> None:
        model = self.model
        assert self.side.reasons() == [tuple(c) for c in model.counts[:REASON_COUNT]], where
        after = self.cells()
        recorded = model.take_recorded()
        for reg, attr in EXACT_REGISTERS.items():
            assert after[reg] == [getattr(model.slots[i], attr) for i in INDEXES], \
                f"{where}: {reg}"
        for reg in UNTOUCHED_REGISTERS:
            assert after[reg] == self.before[reg], f"{where}: {reg}"
        for reg in TIMED_REGISTERS:
            changed = {INDEXES[k] for k, (a, b) in enumerate(zip(self.before[reg], after[reg],
                                                                 strict=True)) if a != b}
            assert changed <= recorded, f"{where}: {reg} changed without a recorded response"
        ups = model.up_events
        wait_for(f"{where}: {len(ups)} UP digests", lambda: len(self.side.digests()) >= len(ups))
        got = [(d["index"], d["last_seq"]) for d in self.side.digests()
               if d["state"] == PlaneState.UP]
        assert got[self.ups_seen:] == ups[self.ups_seen:], where
        self.ups_seen = len(ups)

    def between_checks(self) -> None:
        """Egress and the fan-out's DOWN, played as the kernel fuzz does (registers only)."""
        model, fuzzer = self.model, self.fuzzer
        for index in fuzzer.egress():
            self.registers.write_many([
                ("hb_tx_count", index, model.slots[index].tx_count),
                ("hb_last_tx_seq", index, model.slots[index].last_tx_seq)])
        for _ in range(2):
            index = fuzzer.rng.choice(INDEXES)
            self.registers.write_many([("hb_state", index, PlaneState.DOWN),
                                       ("hb_miss_count", index, 3)])
            model.slots[index].state = PlaneState.DOWN
            model.slots[index].miss_count = 3
        self.before = self.cells()


def wait_for(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise StepTimeout(f"{what} after {DEADLINE_S}s")
        time.sleep(0.002)  # polling with a deadline, not a fixed wait


def test_fuzz_bmv2_slice(bmv2: tuple[Bmv2Side, Lab]) -> None:
    side, lab = bmv2
    model = Model(dict(PEERS), max(INDEXES) + 1)
    fuzzer = Fuzzer(SEED + 2, model, MONITOR_IP, 0)
    run = Bmv2Run(side, model, fuzzer)
    run.between_checks()  # most slots have been sent a request before the first frame
    sender = lab.sender(1)
    sentinel = frame(src=MONITOR_IP, dst=MONITOR_IP, payload=heartbeat(1, 1, magic=0xDEAD))
    by_class: dict[str, Counter[str]] = {}
    heartbeats = 0
    start = time.monotonic()
    batch = 0
    while sum(fuzzer.sent.values()) < FRAMES:
        batch += 1
        out: list[tuple[bytes, bool]] = []  # (frame, is a heartbeat)
        while len(out) < BATCH:
            cls, data, repeat = fuzzer.draw()
            for _ in range(repeat):
                outcome = model.feed(data)
                by_class.setdefault(cls, Counter())[
                    "passed" if outcome is None else outcome.name] += 1
                out.append((data, outcome is not None))
        model.feed(sentinel)  # closes the batch: ordinary frames are counted nowhere
        out.append((sentinel, True))
        for at in range(0, len(out), BATCH):  # a long replay is paced like the rest
            chunk = out[at:at + BATCH]
            for data, _ in chunk:
                sender.send(data)
            heartbeats += sum(is_hb for _, is_hb in chunk)
            want = heartbeats
            wait_for(f"batch {batch}: {want} heartbeats counted",
                     lambda: run.classified() >= want)  # noqa: B023 - read before the next
        if batch % CHECK_EVERY == 0:
            run.check(f"bmv2 fuzz batch {batch} (seed {SEED + 2})")
            run.between_checks()
    run.check(f"bmv2 fuzz end (seed {SEED + 2})")
    report("bmv2 fuzz slice", SEED + 2, fuzzer, by_class, time.monotonic() - start)
    reached = {Reason(i) for i, (packets, _) in enumerate(model.counts) if packets}
    assert reached >= INGRESS_REASONS, f"the fuzz never reached {INGRESS_REASONS - reached}"
    assert set(fuzzer.sent) == set(CLASSES), "a frame class was never drawn"
