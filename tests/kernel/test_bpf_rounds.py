"""Rounds kept by the kernel target, and DOWN deadlines (docs/dataplane.md "Rounds kept by the
target" and "Miss detection"), on real veths into namespaces made here.

A template whose tx_timestamp_us is P > 0 asks for a round every P us: the first now, the
next ones run by the kernel (the carrier circulating through the CPU port's tbf pacer) with
no further PacketOut. Periods are checked on the target's own timestamps (tx_timestamp_us of
the requests), with a tolerance that a loaded 2-core machine keeps; they are behaviour (the
period asked is the period run), not speed.
"""

from __future__ import annotations

import itertools
import statistics
import struct
from collections import defaultdict
from collections.abc import Iterator

import pytest
from hbmon.protocol import FANOUT_GROUP, Heartbeat, MsgType, PlaneState, Reason, request_nonce
from hbmon_kernel.datapath import Datapath, DatapathError, PeerEvent

from .bpf_lab import Capture, Lab, request_template, response_frame
from .test_bpf_fanout import MONITOR_IP, MONITOR_MAC, is_request, make_peers, program, wait_until

pytestmark = pytest.mark.netns

MAX_PEERS = 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2) as lab:
        yield lab


@pytest.fixture()
def dp(lab: Lab) -> Iterator[Datapath]:
    # a fresh data plane per test: a schedule outlives whatever a test does to the tables
    with Datapath(lab.ports, max_peers=MAX_PEERS) as datapath:
        yield datapath


@pytest.fixture()
def captures(lab: Lab, dp: Datapath) -> Iterator[dict[int, Capture]]:
    caps = {port: lab.capture(port) for port in (1, 2)}
    yield caps
    for cap in caps.values():
        cap.close()


def periodic(seq: int, period_us: int, mac: int = MONITOR_MAC) -> bytes:
    frame = bytearray(request_template(monitor_mac=mac, monitor_ip=MONITOR_IP, seq=seq))
    frame[58:66] = period_us.to_bytes(8, "big")  # tx_timestamp_us of the template
    return bytes(frame)


def collect(captures: dict[int, Capture], count: int, timeout_s: float = 10.0
            ) -> list[Heartbeat]:
    """Requests from both ports until `count` arrived (or the deadline)."""
    got: list[bytes] = []
    for cap in captures.values():
        got += cap.frames(lambda f: len(f) >= count // len(captures), is_request,
                          timeout_s=timeout_s)
    return [Heartbeat.unpack(f[42:], expect=MsgType.REQUEST) for f in got]


def by_round(requests: list[Heartbeat]) -> dict[int, list[Heartbeat]]:
    rounds: dict[int, list[Heartbeat]] = defaultdict(list)
    for hb in requests:
        rounds[hb.sequence].append(hb)
    return rounds


def test_periodic_template_runs_rounds_without_packet_outs(dp: Datapath,
                                                           captures: dict[int, Capture]) -> None:
    peers = make_peers(600)  # three bursts of at most 256 replicas per round
    program(dp, peers)
    dp.packet_out(periodic(1000, 20_000), 0, FANOUT_GROUP)
    requests = collect(captures, 600 * 8)
    rounds = by_round(requests)
    complete = sorted(s for s, reqs in rounds.items() if len(reqs) == 600)
    assert len(complete) >= 6, {s: len(r) for s, r in rounds.items()}
    # one PacketOut; the sequence goes up by one per round, from the template's
    assert complete[0] == 1000
    assert complete == list(range(1000, 1000 + len(complete)))
    keys = {p.peer_id: p.nonce_key for p in peers}
    for seq in complete:
        assert {hb.peer_id for hb in rounds[seq]} == {p.peer_id for p in peers}
        # the kernel's own rounds write each replica's nonce from that round's sequence
        assert all(hb.nonce == request_nonce(keys[hb.peer_id], seq) for hb in rounds[seq])
    # the period asked is the period run (target time of each round's first request)
    starts = [min(hb.tx_timestamp_us for hb in rounds[s]) for s in complete]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 15_000 <= statistics.median(gaps) <= 25_000, gaps
    state = dp.rounds()
    assert state["period_ns"] == 20_000_000 and state["group"] == FANOUT_GROUP
    assert dp.counter_read("hb_reason", Reason.BAD_TEMPLATE)[0] == 0


def test_same_period_again_keeps_phase_and_sequence(dp: Datapath,
                                                    captures: dict[int, Capture]) -> None:
    peers = make_peers(10)
    program(dp, peers)
    dp.packet_out(periodic(50, 30_000), 0, FANOUT_GROUP)
    collect(captures, 10 * 3)
    # a controller re-arming to be safe, with another template (a new source MAC)
    dp.packet_out(periodic(9_999_999, 30_000, mac=MONITOR_MAC + 1), 0, FANOUT_GROUP)
    got: list[bytes] = []
    for cap in captures.values():
        got += cap.frames(lambda f: len(f) >= 5 * 5, is_request, timeout_s=10)
    rounds: dict[int, set[bytes]] = defaultdict(set)
    counts: dict[int, int] = defaultdict(int)
    for f in got:
        hb = Heartbeat.unpack(f[42:], expect=MsgType.REQUEST)
        rounds[hb.sequence].add(f[6:12])
        counts[hb.sequence] += 1
    seqs = sorted(rounds)
    assert 9_999_999 not in rounds, "the same period again does not restart the schedule"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no round added or lost"
    assert all(counts[s] == 10 for s in seqs[:-1]), counts
    macs = [rounds[s] for s in seqs]
    assert any((MONITOR_MAC + 1).to_bytes(6, "big") in m for m in macs), \
        "the new template is used from a later round on"


def test_period_zero_runs_one_round_and_ends_the_schedule(dp: Datapath,
                                                          captures: dict[int, Capture]) -> None:
    peers = make_peers(4)
    program(dp, peers)
    dp.packet_out(periodic(10, 10_000), 0, FANOUT_GROUP)
    collect(captures, 4 * 3)
    dp.packet_out(periodic(77, 0), 0, FANOUT_GROUP)
    assert dp.rounds()["period_ns"] == 0
    tx_before = dp.register_read("hb_tx_count", 0)
    # the carrier ends at its next round (at most one more is in flight): over 20 periods
    # no further request is sent
    assert not wait_until(lambda: dp.register_read("hb_tx_count", 0) > tx_before + 1,
                          timeout_s=0.2)


def test_long_period_takes_several_laps(dp: Datapath, captures: dict[int, Capture]) -> None:
    peers = make_peers(2)
    program(dp, peers)
    dp.packet_out(periodic(1, 250_000), 0, FANOUT_GROUP)  # 3 laps of 83 ms
    assert dp.rounds()["laps"] == 3
    rounds = by_round(collect(captures, 2 * 4, timeout_s=5))
    starts = sorted(min(hb.tx_timestamp_us for hb in r) for r in rounds.values())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 3 and all(200_000 <= g <= 300_000 for g in gaps), gaps


def test_rounds_follow_the_group_without_the_controller(dp: Datapath,
                                                        captures: dict[int, Capture]) -> None:
    peers = make_peers(6)
    program(dp, peers[:3])
    dp.packet_out(periodic(5, 10_000), 0, FANOUT_GROUP)
    collect(captures, 3 * 3)
    program(dp, peers)  # three more peers join the group: no new template needed
    for cap in captures.values():
        cap.drain()
    rounds = by_round(collect(captures, 6 * 4))
    assert any(len(r) == 6 for r in rounds.values())


def test_out_of_range_period_is_refused(dp: Datapath) -> None:
    program(dp, make_peers(1))
    for period in (1, 99, 3_600_000_001):
        with pytest.raises(ValueError, match="round period"):
            dp.packet_out(periodic(1, period), 0, FANOUT_GROUP)
    assert dp.rounds()["period_ns"] == 0


def test_down_at_last_answer_plus_detection_time(dp: Datapath, lab: Lab,
                                                 captures: dict[int, Capture]) -> None:
    """DOWN comes from the peer's deadline (last fresh response + detect_mult x period), not
    from the request that would find the misses one period later."""
    period_us, mult = 50_000, 3
    peers = make_peers(2, ports=(1,), detect_mult=mult)
    program(dp, peers, detect_mult=mult)
    dp.packet_out(periodic(100, period_us), 0, FANOUT_GROUP)
    live, muted = peers
    sender = lab.sender(1)
    ups: list[PeerEvent] = []
    downs: list[PeerEvent] = []
    last_rx = 0
    # answer every request of both peers for a while, then stop answering for `muted`
    answered_muted = 0
    deadline_rounds = 12
    for _ in range(deadline_rounds * 4):
        frames = captures[1].frames(lambda f: len(f) >= 1, is_request, timeout_s=2)
        for f in frames:
            hb = Heartbeat.unpack(f[42:], expect=MsgType.REQUEST)
            peer = live if hb.peer_id == live.peer_id else muted
            if peer is muted:
                if answered_muted >= 3:
                    continue
                answered_muted += 1
            sender.send(response_frame(peer_ip=peer.addr, monitor_ip=MONITOR_IP,
                                       peer_id=peer.peer_id, seq=hb.sequence,
                                       tx_us=hb.tx_timestamp_us, nonce=hb.nonce))
            if peer is muted:
                want = answered_muted
                assert wait_until(lambda: dp.register_read("hb_rx_count", muted.index)
                                  == want)  # noqa: B023 - read before the next iteration
                last_rx = dp.register_read("hb_last_rx_us", muted.index)
        for ev in dp.poll_events(0):
            if isinstance(ev, PeerEvent):
                (ups if ev.state == PlaneState.UP else downs).append(ev)
        if downs:
            break
    for ev in dp.poll_events(50):
        if isinstance(ev, PeerEvent):
            (ups if ev.state == PlaneState.UP else downs).append(ev)
    assert [ev.index for ev in downs] == [muted.index], (ups, downs)
    down = downs[0]
    detection = mult * period_us
    # declared once the deadline passed, and before the next request would have found the
    # misses (that one leaves a whole period later)
    assert last_rx + detection <= down.time_us < last_rx + detection + period_us // 2
    assert dp.register_read("hb_state", muted.index) == PlaneState.DOWN
    assert dp.register_read("hb_state", live.index) == PlaneState.UP
    assert dp.counter_read("hb_reason", Reason.PEER_DOWN_EVENT)[0] == 1


def test_no_deadline_without_periodic_rounds(dp: Datapath, lab: Lab,
                                             captures: dict[int, Capture]) -> None:
    """Single rounds (the controller keeps time, as on bmv2): DOWN only when a request finds
    detect_mult misses, exactly as p4src does (the differential test's premise)."""
    peer = make_peers(1, ports=(1,))[0]
    program(dp, [peer], detect_mult=1)
    dp.packet_out(request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=1),
                  0, FANOUT_GROUP)
    f = captures[1].frames(lambda f: len(f) >= 1, is_request)[0]
    hb = Heartbeat.unpack(f[42:], expect=MsgType.REQUEST)
    lab.sender(1).send(response_frame(peer_ip=peer.addr, monitor_ip=MONITOR_IP,
                                      peer_id=peer.peer_id, seq=1, tx_us=hb.tx_timestamp_us,
                                      nonce=hb.nonce))
    assert wait_until(lambda: dp.register_read("hb_state", 0) == PlaneState.UP)
    dp.poll_events(0)
    # far beyond any deadline: still UP, no event, until a request finds the miss
    assert not wait_until(lambda: bool(dp.poll_events(0)), timeout_s=0.3)
    assert dp.register_read("hb_state", 0) == PlaneState.UP
    for seq in (2, 3):
        dp.packet_out(request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP,
                                       seq=seq), 0, FANOUT_GROUP)
    assert wait_until(lambda: dp.register_read("hb_state", 0) == PlaneState.DOWN)


def test_the_data_plane_refuses_to_start_without_its_pacer(lab: Lab,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no tc: no pacer, no round timer
    with pytest.raises(DatapathError, match="pacer"), Datapath(lab.ports, max_peers=8):
        pass


def test_registers_and_trailer_layout_agree_with_the_bpf_structs() -> None:
    # pure layout check: the Python view of struct hb_cpu_trailer / hb_round (kernel/bpf)
    from hbmon_kernel import datapath

    assert datapath._CPU_TRAILER.size == 20
    assert datapath._ROUND.size == 104 and datapath._ROUND_FRAME_AT == 28
    assert struct.calcsize("=QQIIHH") == datapath._ROUND_FRAME_AT
    assert datapath._CONFIG.size == 24  # struct hb_config
    assert datapath._BFD_REQUEST.size == 40  # struct bfd_request
    assert datapath._BFD_EVENT.size == 32  # struct hb_bfd_event


def test_map_value_layouts_agree_with_the_objects_btf() -> None:
    """The sizes the loader packs map keys and values with are the compiled structs' (read
    from the objects' BTF with bpftool), so a field added on one side only fails here."""
    import re
    import shutil
    import subprocess

    from hbmon_kernel import datapath

    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    sizes: dict[str, int] = {}
    for obj in ("hb_xdp.o", "hb_tc.o"):
        out = subprocess.run([bpftool, "btf", "dump", "file",
                              str(datapath.default_bpf_dir() / obj), "format", "raw"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        sizes.update((m[1], int(m[2])) for m in re.finditer(r"STRUCT '(\w+)' size=(\d+)", out))
    python = {"hb_round": datapath._ROUND, "hb_config": datapath._CONFIG,
              "bfd_request": datapath._BFD_REQUEST, "bfd_peer_key": datapath._BFD_PEER_KEY,
              "peer_request": datapath._PEER_REQUEST, "peer_entry": datapath._PEER_ENTRY,
              "peer_key": datapath._PEER_KEY}
    assert {name: sizes.get(name) for name in python} == {
        name: s.size for name, s in python.items()}
