"""BFD in the tc programs for real, on veths into namespaces made here (docs/bfd.md
"Transmit"): the group-2 fan-out from one template (the bytes on the wire, your
discriminator from bfd_remote_disc, F when due), due-gating, detection in egress and in the
sweeper, the BFD schedule next to the heartbeat one (one schedule per group, each at its own
period, replacing one leaves the other alone), and receipt through a real port (bfd_peers
is keyed by the ingress port).

Periods are checked with the tolerance test_bpf_rounds.py uses (behaviour: the period asked
is the period run), never as a speed."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator

import pytest
from hbmon import bfd_packet
from hbmon.bfd_packet import ControlPacket, Flag, State
from hbmon.protocol import FANOUT_GROUP, Heartbeat, MsgType, PlaneState, Reason
from hbmon_kernel.datapath import SCHEDULE_BFD, SCHEDULE_REQUEST, Datapath, PeerEvent

from .bpf_lab import Capture, Lab, heartbeat_frame, ip_int, ipv4_checksum
from .test_bpf_fanout import MONITOR_IP, MONITOR_MAC, is_request, make_peers, program, wait_until
from .test_bpf_rounds import periodic

pytestmark = pytest.mark.netns

MAX_PEERS = 256
GROUP = bfd_packet.FANOUT_GROUP
DISC_KEY = 0x4D4D0000


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


def template(tick_us: int) -> bytes:
    """The controller's BFD template (docs/bfd.md "Transmit"): the tick in the echo field."""
    return heartbeat_frame(src_mac=MONITOR_MAC, dst_mac=0, src_ip=MONITOR_IP, dst_ip=0,
                           sport=bfd_packet.SOURCE_PORT_BASE, dport=bfd_packet.PORT,
                           payload=bfd_packet.template_payload(tick_us))


def session_addr(index: int) -> int:
    return ip_int("198.18.32.0") + index


def session(dp: Datapath, index: int, port: int, *, state: int = State.DOWN,
            flags: int = 0, tx_interval_us: int = 1_000_000, detect_time_us: int = 0,
            in_group: bool = True) -> None:
    """The three entries of a session (docs/bfd.md "P4Info additions"); the group-2
    replicas are set by the caller (all sessions at once)."""
    dp.bfd_sessions_set(bfd_packet.local_discriminator(DISC_KEY, index), index)
    dp.bfd_peers_set(session_addr(index), port, index)
    dp.bfd_requests_set(
        index, dst_mac=0x02EE00000000 + index, dst_addr=session_addr(index),
        src_port=bfd_packet.source_port(index),
        my_disc=bfd_packet.local_discriminator(DISC_KEY, index), state=state, diag=0,
        flags=flags, detect_mult=3, desired_min_tx_us=300_000, required_min_rx_us=200_000,
        tx_interval_us=tx_interval_us, detect_time_us=detect_time_us)


def is_bfd(frame: bytes) -> bool:
    return (len(frame) >= 66 and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and int.from_bytes(frame[36:38], "big") == bfd_packet.PORT)


def sent(dp: Datapath) -> int:
    return dp.counter_read("hb_reason", Reason.BFD_SENT)[0]


def test_one_round_on_the_wire(dp: Datapath, captures: dict[int, Capture], lab: Lab) -> None:
    """Every field docs/bfd.md "Transmit" 3 rewrites, from one template, per replica."""
    session(dp, 3, 1, state=State.INIT, flags=Flag.P)
    session(dp, 4, 2, state=State.UP)
    dp.mcast_group_set(GROUP, [(1, 3), (2, 4), (1, 99)])  # 99: no bfd_requests entry
    dp.register_write("bfd_remote_disc", 3, 0xAABBCCDD)
    dp.register_write("bfd_remote_disc", 4, 0x11223344)
    dp.register_write("bfd_final_due", 4, 1)
    t0 = dp.now_us()
    dp.packet_out(template(0), 0, GROUP)  # tick 0: one round, no schedule
    frames = {port: cap.frames(lambda f: len(f) >= 1, is_bfd) for port, cap in captures.items()}
    assert [len(f) for f in frames.values()] == [1, 1]
    for port, index, your, state, flags in ((1, 3, 0xAABBCCDD, State.INIT, Flag.P),
                                            (2, 4, 0x11223344, State.UP, Flag.F)):
        f = frames[port][0]
        assert len(f) == 66
        assert f[0:6] == (0x02EE00000000 + index).to_bytes(6, "big")
        assert f[6:12] == MONITOR_MAC.to_bytes(6, "big")
        assert ipv4_checksum(f[14:34]) == 0, "IPv4 checksum rewritten with the destination"
        assert f[22] == 255 and int.from_bytes(f[26:30], "big") == MONITOR_IP
        assert int.from_bytes(f[30:34], "big") == session_addr(index)
        assert int.from_bytes(f[34:36], "big") == bfd_packet.source_port(index)
        assert f[38:42] == bytes.fromhex("0020 0000"), "UDP length 32, checksum 0"
        pkt = bfd_packet.classify(f[42:])  # a valid control packet by the receive checks
        assert pkt == ControlPacket(
            state=state, my_disc=bfd_packet.local_discriminator(DISC_KEY, index),
            your_disc=your, diag=0, flags=flags, detect_mult=3, desired_min_tx_us=300_000,
            required_min_rx_us=200_000, required_min_echo_rx_us=0)
        assert dp.register_read("hb_tx_count", index) == 1
        assert dp.register_read("hb_last_tx_us", index) >= t0
        assert dp.register_read("bfd_final_due", index) == 0
    counts = dp.reason_counts()
    assert counts[Reason.BFD_SENT] == (2, 132)
    assert counts[Reason.REQUEST_NO_PEER][0] == 1
    assert Reason.BAD_TEMPLATE not in counts


@pytest.mark.parametrize("broken", ["udp-length", "bfd-length", "version", "ip-length"])
def test_bad_template_sends_nothing(dp: Datapath, broken: str) -> None:
    session(dp, 1, 1)
    dp.mcast_group_set(GROUP, [(1, 1)])
    frame = bytearray(template(0))
    at, value = {"udp-length": (39, 33), "bfd-length": (45, 25), "version": (42, 0x40),
                 "ip-length": (17, 53)}[broken]
    frame[at] = value
    dp.packet_out(bytes(frame), 0, GROUP)
    assert wait_until(lambda: dp.counter_read("hb_reason", Reason.BAD_TEMPLATE)[0] == 1)
    assert sent(dp) == 0 and dp.register_read("hb_tx_count", 1) == 0


def test_due_gating_sends_once_per_interval(dp: Datapath) -> None:
    """A 2 ms tick and a 40 ms interval: a session is sent its first packet at once, then
    about every interval minus jitter, never once per tick (docs/bfd.md "Transmit" 2)."""
    session(dp, 1, 1, tx_interval_us=40_000)
    dp.mcast_group_set(GROUP, [(1, 1)])
    start_us = dp.now_us()
    dp.packet_out(template(2_000), 0, GROUP)
    assert wait_until(lambda: dp.rounds(SCHEDULE_BFD)["sequence"] >= 100, timeout_s=30)
    dp.packet_out(template(0), 0, GROUP)  # stop
    state = dp.rounds(SCHEDULE_BFD)
    rounds, span_us = state["sequence"] + 1, state["round_ns"] // 1000 - start_us
    n = dp.register_read("hb_tx_count", 1)
    assert n == sent(dp)
    # one at once, then at most one per 0.75 interval of target time (whatever the ticks'
    # pace on a loaded machine), and far fewer than one per tick
    assert 2 <= n <= 2 + span_us / 30_000, (n, rounds, span_us)
    assert n < rounds / 2, (n, rounds)


def test_final_due_is_sent_at_the_next_tick(dp: Datapath) -> None:
    session(dp, 1, 1, tx_interval_us=10_000_000)  # would not be due for 10 s
    dp.mcast_group_set(GROUP, [(1, 1)])
    dp.packet_out(template(2_000), 0, GROUP)
    assert wait_until(lambda: sent(dp) == 1)
    dp.register_write("bfd_final_due", 1, 1)  # as XDP does on a received Poll
    assert wait_until(lambda: dp.register_read("bfd_final_due", 1) == 0)
    assert sent(dp) == 2


def _down_events(dp: Datapath, index: int, timeout_s: float = 5.0) -> list[PeerEvent]:
    got: list[PeerEvent] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not got:
        got += [e for e in dp.poll_events(50)
                if isinstance(e, PeerEvent) and e.index == index and e.state == PlaneState.DOWN]
    return got


def your_disc(frame: bytes) -> int:
    """The your discriminator field of a BFD frame on the wire (docs/bfd.md "Wire")."""
    return int.from_bytes(frame[50:54], "big")


def test_detection_in_egress(dp: Datapath, captures: dict[int, Capture]) -> None:
    """UP, and nothing received for longer than detect_time: DOWN with its peer_event_t
    and bfd_remote_disc zeroed, so the next control packet carries your discriminator 0
    (docs/bfd.md "Transmit" 1, RFC 5880 section 6.8.1); detect_time 0 never expires."""
    session(dp, 1, 1, state=State.UP, detect_time_us=30_000)
    session(dp, 2, 2, state=State.UP, detect_time_us=0)
    dp.mcast_group_set(GROUP, [(1, 1), (2, 2)])
    for index, disc in ((1, 0xAABBCCDD), (2, 0x11223344)):
        dp.register_write("hb_state", index, PlaneState.UP)
        dp.register_write("hb_last_rx_us", index, dp.now_us())
        dp.register_write("bfd_remote_disc", index, disc)
    dp.packet_out(template(5_000), 0, GROUP)
    events = _down_events(dp, 1)
    assert len(events) == 1
    assert events[0].time_us - dp.register_read("hb_last_rx_us", 1) > 30_000
    assert dp.register_read("hb_state", 1) == PlaneState.DOWN
    assert dp.register_read("hb_state", 2) == PlaneState.UP
    assert dp.counter_read("hb_reason", Reason.PEER_DOWN_EVENT)[0] == 1
    assert dp.register_read("bfd_remote_disc", 1) == 0
    assert dp.register_read("bfd_remote_disc", 2) == 0x11223344
    # the next packet of session 1 (a Final makes it due at the next tick) carries 0
    before = dp.register_read("hb_tx_count", 1)
    dp.register_write("bfd_final_due", 1, 1)
    assert wait_until(lambda: dp.register_read("hb_tx_count", 1) > before)
    total = dp.register_read("hb_tx_count", 1)
    frames = captures[1].frames(lambda f: len(f) >= total, is_bfd)
    assert len(frames) == total and your_disc(frames[-1]) == 0, [your_disc(f) for f in frames]
    others = captures[2].frames(lambda f: len(f) >= 1, is_bfd)
    assert others and {your_disc(f) for f in others} == {0x11223344}


def test_detection_and_rewrite_in_one_pass(dp: Datapath, captures: dict[int, Capture]) -> None:
    """Detection comes before the rewrite (docs/bfd.md "Transmit" 1 then 3): a replica that
    finds the detection time passed and is due leaves with your discriminator 0; one whose
    time has not passed keeps the remote's. One round (tick 0), no schedule."""
    session(dp, 1, 1, state=State.UP, detect_time_us=30_000)
    session(dp, 2, 2, state=State.UP, detect_time_us=60_000_000)
    dp.mcast_group_set(GROUP, [(1, 1), (2, 2)])
    now = dp.now_us()
    for index, disc, last_rx in ((1, 0xAABBCCDD, now - 100_000), (2, 0x11223344, now)):
        dp.register_write("hb_state", index, PlaneState.UP)
        dp.register_write("hb_last_rx_us", index, last_rx)
        dp.register_write("bfd_remote_disc", index, disc)
    dp.packet_out(template(0), 0, GROUP)
    frames = {port: cap.frames(lambda f: len(f) >= 1, is_bfd) for port, cap in captures.items()}
    assert [[your_disc(f) for f in frames[port]] for port in (1, 2)] == [[0], [0x11223344]]
    assert len(_down_events(dp, 1)) == 1
    assert [dp.register_read("bfd_remote_disc", i) for i in (1, 2)] == [0, 0x11223344]
    assert [dp.register_read("hb_state", i) for i in (1, 2)] == [PlaneState.DOWN, PlaneState.UP]


def test_sweeper_checks_bfd_deadlines(dp: Datapath, captures: dict[int, Capture]) -> None:
    """A session whose replica no round visits is still declared DOWN by the sweeper
    while the BFD schedule runs (hb_last_rx_us + detect_time_us), its bfd_remote_disc
    zeroed (RFC 5880 section 6.8.1): once in the group, its packet carries 0."""
    session(dp, 1, 1, tx_interval_us=1_000_000)
    session(dp, 5, 2, state=State.UP, detect_time_us=20_000)
    dp.mcast_group_set(GROUP, [(1, 1)])  # 5 is not in the group
    dp.register_write("hb_state", 5, PlaneState.UP)
    dp.register_write("hb_last_rx_us", 5, dp.now_us())
    dp.register_write("bfd_remote_disc", 5, 0x55667788)
    dp.packet_out(template(10_000), 0, GROUP)
    assert len(_down_events(dp, 5)) == 1
    assert dp.register_read("bfd_remote_disc", 5) == 0
    dp.mcast_group_set(GROUP, [(1, 1), (2, 5)])
    frames = captures[2].frames(lambda f: len(f) >= 1, is_bfd)
    assert [your_disc(f) for f in frames[:1]] == [0]


def test_receipt_through_a_real_port(dp: Datapath, lab: Lab) -> None:
    """A control packet with your discriminator 0 is found by (source, the port it came
    in on): the same packet on the other port is BFD_UNKNOWN_PEER."""
    session(dp, 7, 2)
    pkt = ControlPacket(State.DOWN, my_disc=0x1234, your_disc=0, detect_mult=3)
    frame = heartbeat_frame(src_mac=lab.peer_mac(1), dst_mac=lab.root_mac(1),
                            src_ip=session_addr(7), dst_ip=MONITOR_IP,
                            sport=bfd_packet.source_port(1), dport=bfd_packet.PORT,
                            payload=pkt.pack())
    lab.sender(1).send(frame)
    assert wait_until(lambda: dp.counter_read("hb_reason", Reason.BFD_UNKNOWN_PEER)[0] == 1)
    lab.sender(2).send(frame)
    assert wait_until(lambda: dp.register_read("hb_rx_count", 7) == 1)
    assert dp.register_read("bfd_remote_disc", 7) == 0x1234
    assert dp.counter_read("hb_reason", Reason.BFD_RECORDED)[0] == 1


def test_two_schedules_at_their_own_periods(dp: Datapath, captures: dict[int, Capture]) -> None:
    """Heartbeat rounds every 20 ms on group 1 and BFD ticks every 5 ms on group 2 at once
    (one schedule per group, docs/bfd.md "Transmit"); replacing the BFD schedule leaves the
    heartbeat one alone (its generation and sequence go on) and the other way round."""
    peers = make_peers(4)
    program(dp, peers)
    session(dp, 200, 1, tx_interval_us=1_000)
    dp.mcast_group_set(GROUP, [(1, 200)])
    dp.packet_out(periodic(500, 20_000), 0, FANOUT_GROUP)
    dp.packet_out(template(5_000), 0, GROUP)
    hb, bfd = dp.rounds(SCHEDULE_REQUEST), dp.rounds(SCHEDULE_BFD)
    assert (hb["period_ns"], hb["group"]) == (20_000_000, FANOUT_GROUP)
    assert (bfd["period_ns"], bfd["group"]) == (5_000_000, GROUP)

    def bfd_rate() -> float:
        """Target ns per BFD round, measured over at least 40 rounds."""
        a = dp.rounds(SCHEDULE_BFD)
        assert wait_until(lambda: dp.rounds(SCHEDULE_BFD)["sequence"] >= a["sequence"] + 40,
                          timeout_s=30)
        b = dp.rounds(SCHEDULE_BFD)
        return (b["round_ns"] - a["round_ns"]) / (b["sequence"] - a["sequence"])

    got: list[bytes] = []
    for cap in captures.values():
        got += cap.frames(lambda f: len(f) >= 2 * 8, is_request, timeout_s=10)
    reqs = [Heartbeat.unpack(f[42:], expect=MsgType.REQUEST) for f in got]
    starts = sorted({min(h.tx_timestamp_us for h in reqs if h.sequence == s)
                     for s in {h.sequence for h in reqs}})
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 15_000 <= statistics.median(gaps) <= 25_000, gaps
    # (the mean over 40 rounds: a stall of a loaded machine only lengthens it, so the upper
    # bounds are loose and the lower ones tell the periods apart)
    assert 3_750_000 <= bfd_rate() <= 12_500_000
    # replace the BFD schedule: the heartbeat one is not restarted
    hb_gen = dp.rounds(SCHEDULE_REQUEST)["generation"]
    dp.packet_out(template(8_000), 0, GROUP)
    seq = dp.rounds(SCHEDULE_REQUEST)["sequence"]
    assert wait_until(lambda: dp.rounds(SCHEDULE_REQUEST)["sequence"] >= seq + 3)
    assert dp.rounds(SCHEDULE_REQUEST)["generation"] == hb_gen
    assert dp.rounds(SCHEDULE_REQUEST)["period_ns"] == 20_000_000
    assert 6_000_000 <= bfd_rate() <= 20_000_000
    # and replacing (here: ending) the heartbeat schedule leaves BFD running
    bfd_gen = dp.rounds(SCHEDULE_BFD)["generation"]
    dp.packet_out(periodic(900, 0), 0, FANOUT_GROUP)
    assert dp.rounds(SCHEDULE_REQUEST)["period_ns"] == 0
    tx = sent(dp)
    assert wait_until(lambda: sent(dp) >= tx + 20, timeout_s=10)
    assert dp.rounds(SCHEDULE_BFD)["generation"] == bfd_gen


def test_template_kind_decides_the_table(dp: Datapath) -> None:
    """The group is not checked against the kind of template: a BFD template to the
    heartbeat group, or a request template to the BFD group, finds no entry for its
    replicas (REQUEST_NO_PEER) and sends nothing."""
    peers = make_peers(2)
    program(dp, peers)  # group 1: heartbeat peers 0 and 1
    session(dp, 10, 1)
    dp.mcast_group_set(GROUP, [(1, 10)])
    dp.packet_out(template(0), 0, FANOUT_GROUP)
    dp.packet_out(periodic(5, 0), 0, GROUP)
    assert wait_until(lambda: dp.counter_read("hb_reason", Reason.REQUEST_NO_PEER)[0] == 3)
    assert sent(dp) == 0 and dp.counter_read("hb_reason", Reason.REQUEST_SENT)[0] == 0
    assert [dp.register_read("hb_tx_count", i) for i in (0, 1, 10)] == [0, 0, 0]
