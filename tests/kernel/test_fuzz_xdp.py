"""Fuzzing the kernel target's response path (issue 11): seeded mutated, truncated, spoofed,
replayed, tagged and fragmented frames through hb_xdp_rx, judged by an independent reading
of docs/protocol.md (tests/kernel/xdp_fuzz.py).

Volume goes through BPF_PROG_TEST_RUN (the real program on the real maps, one call per
frame: a call with `repeat` > 1 costs ~17 ms on this 6.18 kernel whatever the count, measured,
as the kernel swaps the XDP dispatcher in and out around it, while a single run costs ~6 us);
a slice goes through a real veth. After every chunk the hb_reason counter (packets
and bytes per reason) must equal the reference's, every slot register the contract fixes must
equal the model, and a slot's time-dependent registers may change only where a valid response
was recorded. HBMON_FUZZ_FRAMES (default 100,000; `make fuzz`: 1,000,000) and
HBMON_FUZZ_SEED choose the run; the per-class table is printed (pytest -s shows it).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hbmon.protocol import REASON_COUNT, REGISTERS, PlaneState, Reason
from hbmon_kernel.datapath import Datapath

from .bpf_lab import Lab, ip_int
from .xdp_fuzz import (
    CLASSES,
    EXACT_REGISTERS,
    TIMED_REGISTERS,
    UNTOUCHED_REGISTERS,
    Fuzzer,
    Model,
    PeerEntry,
    Response,
    classify,
    frame,
    heartbeat,
)

XDP_DROP, XDP_PASS = 1, 2
FRAMES = int(os.environ.get("HBMON_FUZZ_FRAMES", "100000"))
VETH_FRAMES = int(os.environ.get("HBMON_FUZZ_VETH_FRAMES", "20000"))
SEED = int(os.environ.get("HBMON_FUZZ_SEED", "20261205"))
MONITOR_IP = ip_int("198.18.0.1")
MAX_PEERS = 64
# 48 peers, each with its own nonce key; GTSM single-hop (255) on a third of them, a floor of
# 64 on another third, off on the rest
PEERS = {(ip_int(f"198.18.3.{i + 1}"), 7000 + i):
         PeerEntry(i, (0x9E3779B9 * (i + 1)) & 0xFFFFFFFF, (0, 255, 64)[i % 3]) for i in range(48)}
CHUNK = 1024  # frames between two full comparisons of counters and registers
# reasons the response path can count; the fuzz must reach every one (else it proves little)
INGRESS_REASONS = {Reason.RESPONSE_RECORDED, Reason.TRUNCATED, Reason.BAD_MAGIC,
                   Reason.BAD_VERSION, Reason.BAD_TYPE, Reason.BAD_LENGTH, Reason.UNKNOWN_PEER,
                   Reason.SPOOFED, Reason.DUPLICATE, Reason.OLD_SEQUENCE, Reason.PEER_UP_EVENT,
                   Reason.FUTURE_SEQUENCE, Reason.BAD_NONCE, Reason.BAD_TTL}


def prepare(dp: Datapath) -> None:
    """Empty tables, zeroed registers and counter, no events; then the fuzz peers."""
    for src, pid, *_ in dp.peers_items():
        dp.peers_delete(src, pid)
    for pid in dp.peer_ids_items():
        dp.peer_ids_delete(pid)
    for name in REGISTERS:
        dp.register_fill(name, 0)
    for i in range(REASON_COUNT):
        dp.counter_write("hb_reason", i, 0, 0)
    dp.poll_events(0)
    for (src, pid), entry in PEERS.items():
        dp.peers_set(src, pid, entry.index, entry.nonce_key, entry.min_ttl)
        dp.peer_ids_set(pid)


def play_egress(dp: Datapath, model: Model, fuzzer: Fuzzer) -> None:
    """Requests "sent" between chunks: the registers egress writes (hb_tx_count,
    hb_last_tx_seq), written as the model says (test_bpf_fanout.py checks egress itself)."""
    for index in fuzzer.egress():
        dp.register_write("hb_tx_count", index, model.slots[index].tx_count)
        dp.register_write("hb_last_tx_seq", index, model.slots[index].last_tx_seq)


class Checker:
    """Compares the data plane with the model after each chunk of frames."""

    def __init__(self, dp: Datapath, model: Model) -> None:
        self.dp = dp
        self.model = model
        self.before = self.snapshot()
        self.events_seen = 0

    def snapshot(self) -> dict[str, list[int]]:
        return {name: self.dp.register_read_all(name) for name in REGISTERS}

    def check(self, t0_us: int, t1_us: int, where: str) -> None:
        dp, model = self.dp, self.model
        after = self.snapshot()
        recorded = model.take_recorded()
        expected_counts = [tuple(c) for c in model.counts]
        assert dp.counter_read_all("hb_reason") == expected_counts, where
        for reg, attr in EXACT_REGISTERS.items():
            want = [getattr(slot, attr) for slot in model.slots]
            assert after[reg] == want, f"{where}: {reg}"
        for reg in UNTOUCHED_REGISTERS:
            assert after[reg] == self.before[reg], f"{where}: {reg}"
        for reg in TIMED_REGISTERS:
            changed = {i for i, (a, b) in enumerate(zip(self.before[reg], after[reg],
                                                        strict=True)) if a != b}
            assert changed <= recorded, f"{where}: {reg} changed without a recorded response"
        for i in recorded:
            rx = after["hb_last_rx_us"][i]
            assert t0_us <= rx <= t1_us, where
            tx = model.slots[i].last_tx_us
            rtt = 0 if tx > rx else min(rx - tx, 0xFFFFFFFF)  # docs/dataplane.md "RTT"
            assert after["hb_rtt_last_us"][i] == rtt, where
            assert after["hb_rtt_min_us"][i] <= rtt <= after["hb_rtt_max_us"][i], where
        events = dp.poll_events(0)
        want_up = model.up_events[self.events_seen:]
        self.events_seen = len(model.up_events)
        assert [(e.index, e.last_seq) for e in events] == want_up, where
        assert all(e.state == PlaneState.UP and t0_us <= e.time_us <= t1_us
                   for e in events), where
        self.before = after


def mute_some(dp: Datapath, model: Model, fuzzer: Fuzzer) -> None:
    """What the fan-out does to a muted peer: DOWN after detect_mult misses. A DOWN slot must
    stay DOWN until a fresh response from that peer (never a tagged, spoofed, stale one)."""
    for _ in range(2):
        index = fuzzer.rng.randrange(len(PEERS))
        dp.register_write("hb_state", index, PlaneState.DOWN)
        dp.register_write("hb_miss_count", index, 3)
        model.slots[index].state = PlaneState.DOWN
        model.slots[index].miss_count = 3


def report(title: str, seed: int, fuzzer: Fuzzer, by_class: dict[str, Counter[str]],
           seconds: float, extra: str = "") -> None:
    total = sum(fuzzer.sent.values())
    lines = [f"\n{title}: {total:,} frames, seed {seed}, {seconds:.1f} s "
             f"({total / seconds:,.0f} frames/s){extra}",
             f"{'class':<11} {'frames':>9}  outcomes"]
    for cls in sorted(by_class):
        outcomes = ", ".join(f"{k} {v:,}" for k, v in by_class[cls].most_common())
        lines.append(f"{cls:<11} {fuzzer.sent[cls]:>9,}  {outcomes}")
    print("\n".join(lines))


@pytest.fixture(scope="module")
def datapath() -> Iterator[Datapath]:
    with Datapath({}, max_peers=MAX_PEERS) as dp:
        yield dp


def test_fuzz_prog_test_run(datapath: Datapath) -> None:
    dp = datapath
    prepare(dp)
    model = Model(dict(PEERS), MAX_PEERS)
    fuzzer = Fuzzer(SEED, model, MONITOR_IP, dp.now_us())
    checker = Checker(dp, model)
    by_class: dict[str, Counter[str]] = {}
    tagged_would_record = 0
    start = time.monotonic()
    chunk = 0
    while sum(fuzzer.sent.values()) < FRAMES:
        chunk += 1
        t0 = dp.now_us()
        fuzzer.now_us = t0
        for _ in range(CHUNK):
            cls, data, repeat = fuzzer.draw()
            if cls == "tagged":
                inner = data[:12] + data[16:]
                while inner[12:14] in (b"\x81\x00", b"\x88\xa8"):
                    inner = inner[:12] + inner[16:]
                tagged_would_record += isinstance(classify(inner), Response)
            for _ in range(repeat):  # a replay: the same bytes `repeat` times in a row
                outcome = model.feed(data)
                tally = by_class.setdefault(cls, Counter())
                tally["passed" if outcome is None else outcome.name] += 1
                result = dp.prog_test_run("hb_xdp_rx", data)
                if outcome is None:
                    assert result.retval == XDP_PASS, f"{cls}: ordinary traffic dropped: " \
                        f"{data.hex()}"
                    assert result.data_out == data, f"{cls}: ordinary traffic changed"
                else:
                    assert result.retval == XDP_DROP, f"{cls}: heartbeat not consumed: " \
                        f"{data.hex()}"
        checker.check(t0, dp.now_us(), f"chunk {chunk} (seed {SEED})")
        mute_some(dp, model, fuzzer)
        play_egress(dp, model, fuzzer)
    seconds = time.monotonic() - start
    report("BPF_PROG_TEST_RUN fuzz", SEED, fuzzer, by_class, seconds,
           f"; {tagged_would_record:,} tagged frames would have been recorded untagged")
    reached = {Reason(i) for i, (packets, _) in enumerate(model.counts) if packets}
    assert reached >= INGRESS_REASONS, f"the fuzz never reached {INGRESS_REASONS - reached}"
    assert sum(fuzzer.sent.values()) >= FRAMES
    assert tagged_would_record > 0
    assert set(fuzzer.sent) == set(CLASSES), "a frame class was never drawn"


def test_fuzz_veth_slice() -> None:
    """The same classes through a real veth (native XDP on its root end), in order: the host
    stack's path, not only the test harness's. Every 64 frames a sentinel (a BAD_MAGIC
    heartbeat) is sent and awaited, so the veth's XDP ring never overflows and every frame
    before it has been judged when the registers are compared."""
    with Lab(1) as lab, Datapath(lab.ports, max_peers=MAX_PEERS) as dp:
        prepare(dp)
        model = Model(dict(PEERS), MAX_PEERS)
        fuzzer = Fuzzer(SEED + 1, model, MONITOR_IP, dp.now_us())
        checker = Checker(dp, model)
        sender = lab.sender(1)
        sentinel = frame(src=MONITOR_IP, dst=MONITOR_IP, payload=heartbeat(1, 1, magic=0xDEAD))
        by_class: dict[str, Counter[str]] = {}
        start = time.monotonic()
        batch = 0
        while sum(fuzzer.sent.values()) < VETH_FRAMES:
            batch += 1
            t0 = dp.now_us()
            fuzzer.now_us = t0
            for _ in range(64):
                cls, data, repeat = fuzzer.draw()
                for _ in range(repeat):
                    outcome = model.feed(data)
                    tally = by_class.setdefault(cls, Counter())
                    tally["passed" if outcome is None else outcome.name] += 1
                    sender.send(data)
            model.feed(sentinel)
            sender.send(sentinel)
            want = model.counts[Reason.BAD_MAGIC][0]
            deadline = time.monotonic() + 5.0
            while dp.counter_read("hb_reason", Reason.BAD_MAGIC)[0] < want:
                assert time.monotonic() < deadline, f"batch {batch}: sentinel never judged"
                time.sleep(0.001)  # polling the counter, not waiting a fixed time
            checker.check(t0, dp.now_us(), f"veth batch {batch} (seed {SEED + 1})")
            mute_some(dp, model, fuzzer)
            play_egress(dp, model, fuzzer)
        report("veth fuzz slice", SEED + 1, fuzzer, by_class, time.monotonic() - start)
        reached = {Reason(i) for i, (packets, _) in enumerate(model.counts) if packets}
        assert {Reason.RESPONSE_RECORDED, Reason.DUPLICATE, Reason.SPOOFED,
                Reason.TRUNCATED, Reason.FUTURE_SEQUENCE, Reason.BAD_NONCE,
                Reason.BAD_TTL} <= reached
