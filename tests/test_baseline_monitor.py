"""bench/baseline_monitor.py's per-peer logic (sequence, RTT, health): pure, no sockets.

The baseline is what issue 9 compares hbmon against; if its bookkeeping were wrong (e.g.
counting duplicates as answers) the comparison would be too. The I/O paths are exercised
for real by bench/bench_offload.py.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "baseline_monitor.py"
INTERVAL_US = 100_000


@pytest.fixture(scope="module")
def bm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_monitor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_monitor"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


PEERS = [{"name": "a", "address": "198.18.1.1", "peer_id": 1001},
         {"name": "b", "address": "198.18.1.2", "peer_id": 1002}]


KEYS = {1001: 0xA5A5_0001, 1002: 0x5A5A_0002}  # nonce keys the test tables use


def response(peer_id: int, seq: int, ts: int, status: int = 0, *, magic: int = 0x4842,
             msg_type: int = 2, nonce: int | None = None) -> bytes:
    """A version-2 RESPONSE; by default with the nonce the table's request carried."""
    if nonce is None:
        nonce = KEYS.get(peer_id, 0) ^ seq
    return struct.pack("!HBBIIIQBB2x", magic, 2, msg_type, peer_id, seq, nonce, ts, status, 7)


def table(bm: ModuleType, **rules: int | float) -> Any:
    t = bm.PeerTable(PEERS, bm.Rules(interval_us=INTERVAL_US, **rules))
    assert len(set(t.nonce_keys)) == 2 and 0 not in t.nonce_keys  # random, per peer
    t.nonce_keys = [KEYS[pid] for pid in t.peer_ids]
    return t


def feed(bm: ModuleType, t: Any, payloads: list[tuple[bytes, str]], now: int) -> None:
    """Through the batched path, laid out as recvmmsg leaves it (64-byte slots)."""
    slot = 64
    data = bytearray(slot * len(payloads))
    for i, (p, _) in enumerate(payloads):
        data[i * slot:i * slot + len(p)] = p
    t.ingest_batch(data, slot, [len(p) for p, _ in payloads],
                   [bm.ip_to_int(src) for _, src in payloads], len(payloads), now)


def test_serial_number_arithmetic_wraps(bm: ModuleType) -> None:
    assert bm.seq_newer(2, 1) and not bm.seq_newer(1, 2) and not bm.seq_newer(5, 5)
    assert bm.seq_newer(0, 0xFFFFFFFF)  # wrapped: 0 follows 2^32 - 1
    assert not bm.seq_newer(0xFFFFFFFF, 0)


@pytest.mark.parametrize("batched", [True, False])
def test_duplicates_old_spoofed_unknown_and_bad_are_not_answers(bm: ModuleType,
                                                                batched: bool) -> None:
    t = table(bm)
    t.rounds = 5  # the last request sent had sequence 5
    arrivals = [
        (response(1001, 5, 1_000), "198.18.1.1"),  # recorded
        (response(1001, 5, 1_000), "198.18.1.1"),  # duplicate
        (response(1001, 4, 900), "198.18.1.1"),  # old
        (response(1001, 6, 1_100), "198.18.1.2"),  # a's id from b's address: spoofed
        (response(4242, 1, 1), "198.18.1.1"),  # unknown peer
        (response(1002, 1, 1, magic=0x1234), "198.18.1.2"),  # bad magic
        (response(1002, 1, 1, msg_type=1), "198.18.1.2"),  # a REQUEST: bad type
        (response(1002, 1, 1) + b"x", "198.18.1.2"),  # bad length
        (response(1002, 0xFFFFFFFF, 1_500), "198.18.1.2"),  # recorded
        (response(1002, 0, 1_600), "198.18.1.2"),  # wrapped: newer, recorded
        (response(1001, 3, 800, nonce=KEYS[1001] ^ 4), "198.18.1.1"),  # wrong nonce
        (response(1001, 3, 800, nonce=3), "198.18.1.1"),  # the sequence alone: wrong nonce
        (response(1001, 6, 1_100), "198.18.1.1"),  # not sent yet: future
        (response(1001, 5 + 2**30, 1_100), "198.18.1.1"),  # issue 11's lockout: future
        (response(1001, 5 + 2**31, 1_100), "198.18.1.1"),  # exactly half-way: old, not future
    ]
    if batched:
        feed(bm, t, arrivals, now=2_000)
    else:
        for payload, src in arrivals:
            t.ingest_one(payload, src, 2_000)
    c = t.counters
    assert c == {"received": 15, "recorded": 3, "duplicate": 1, "old_sequence": 2, "bad": 3,
                 "unknown_peer": 1, "spoofed": 1, "bad_nonce": 2, "future_sequence": 2}
    assert t.rx == [1, 2] and t.last_seq == [5, 0]
    assert t.rtt_last_us == [1_000, 400]
    # EWMA alpha 1/8 as the data plane: the first sample sets it
    assert t.rtt_ewma_us == [1_000, (7 * 500 + 400) >> 3]
    assert t.load == [7, 7]


def test_health_unknown_up_down(bm: ModuleType) -> None:
    t = table(bm, detect_mult=3)
    assert t.evaluate(0) == {"UNKNOWN": 2, "UP": 0, "DEGRADED": 0, "DOWN": 0}
    # nothing sent yet: any answer is ahead of what was sent
    feed(bm, t, [(response(1001, 1, 0), "198.18.1.1")], now=500)
    assert t.counters["future_sequence"] == 1 and t.rx == [0, 0]
    t.rounds = 1
    feed(bm, t, [(response(1001, 1, 0), "198.18.1.1"),
                 (response(1002, 1, 0), "198.18.1.2")], now=1_000)
    assert t.evaluate(1_000)["UP"] == 2
    t.rounds = 2
    feed(bm, t, [(response(1001, 2, 100_000), "198.18.1.1")], now=101_000)
    # b's last answer is exactly detect_mult x interval old: still alive; one µs more: DOWN
    assert t.evaluate(301_000)["UP"] == 2
    assert t.evaluate(301_001) == {"UNKNOWN": 0, "UP": 1, "DEGRADED": 0,
                                   "DOWN": 1}
    assert t.state == ["UP", "DOWN"]


def test_degraded_on_status_rtt_and_loss(bm: ModuleType) -> None:
    t = table(bm, rtt_degraded_us=50_000, loss_degraded=0.2, loss_window=10,
              loss_min_requests=5)
    now = 0
    for seq in range(1, 11):  # a answers every round fast; b only every other round
        now = seq * INTERVAL_US
        t.rounds = seq
        arrivals = [(response(1001, seq, now - 1_000), "198.18.1.1")]
        if seq % 2:
            arrivals.append((response(1002, seq, now - 1_000), "198.18.1.2"))
        feed(bm, t, arrivals, now=now)
        t.evaluate(now)
    assert t.state == ["UP", "DEGRADED"]
    assert t.loss[1] == pytest.approx(0.5, abs=0.11)
    t2 = table(bm, rtt_degraded_us=50_000)
    t2.rounds = 1
    feed(bm, t2, [(response(1001, 1, 0), "198.18.1.1"),
                  (response(1002, 1, 0, status=2), "198.18.1.2")], now=60_000)
    t2.evaluate(60_000)
    assert t2.state == ["DEGRADED", "DEGRADED"]  # RTT; DRAINING


@pytest.mark.parametrize("seq", [1, 0x1234_5678, 0xFFFF_FFFF])
def test_sender_stamps_each_peers_nonce(bm: ModuleType, seq: int) -> None:
    """The tuned sender's one-XOR stamping gives every peer key ^ sequence (docs/protocol.md
    "Nonce"), lane by lane, and the request bytes its iovecs gather are a v2 REQUEST."""
    peers = [{"name": f"p{i}", "address": f"198.18.1.{i + 1}", "peer_id": 5000 + i}
             for i in range(50)]
    t = bm.PeerTable(peers, bm.Rules(interval_us=INTERVAL_US))
    t.nonce_keys[0] = 0xFFFF_FFFF  # all ones: a carry would show in the next lane
    sender = bm._Sender(t)
    sender.stamp(seq)
    for i, key in enumerate(t.nonce_keys):
        assert int.from_bytes(sender.nonces[4 * i:4 * i + 4], "big") == key ^ seq
    payload = (bytes(sender.heads[8 * 7:8 * 8]) + bytes(sender.seq)
               + bytes(sender.nonces[28:32]) + bytes(sender.tail))
    assert len(payload) == bm.HEADER_LEN == 28
    magic, version, mtype, pid, got_seq, nonce = struct.unpack_from("!HBBIII", payload)
    assert (magic, version, mtype, pid, got_seq, nonce) == (
        0x4842, 2, 1, 5007, seq, t.nonce_keys[7] ^ seq)
