"""BFD in the kernel target's in-memory data plane (`MemoryDatapath`), the back end the
controller's unit tests and `--datapath memory` run on: it must take the BPF data plane's
writes with the same checks (tests/kernel/test_server_backends.py compares the answers over
P4Runtime) and run BFD rounds as hb_tc.c `bfd_one` does. Pure logic on the product's own
back end: no kernel, no frames (what it does not model is in its docstring)."""

from __future__ import annotations

from typing import Any

import pytest
from hbmon import bfd_packet
from hbmon.bfd_packet import ControlPacket, Flag, State
from hbmon.protocol import PlaneState, Reason
from hbmon_kernel.datapath import BfdEvent, PeerEvent
from hbmon_kernel.memory import MemoryDatapath

from .bpf_lab import heartbeat_frame

GROUP = bfd_packet.FANOUT_GROUP
OURS = bfd_packet.local_discriminator(0x11110000, 4)


def params(**kw: int) -> dict[str, Any]:
    p = {"dst_mac": 0x02EE00000004, "dst_addr": 0xC6120204, "src_port": 49156,
         "my_disc": OURS, "state": State.DOWN, "diag": 0, "flags": 0, "detect_mult": 3,
         "desired_min_tx_us": 1_000_000, "required_min_rx_us": 300_000,
         "tx_interval_us": 1_000_000, "detect_time_us": 0}
    p.update(kw)
    return p


def template(tick_us: int) -> bytes:
    return heartbeat_frame(src_mac=1, dst_mac=0, src_ip=0xC6120001, dst_ip=0,
                           sport=bfd_packet.SOURCE_PORT_BASE, dport=bfd_packet.PORT,
                           payload=bfd_packet.template_payload(tick_us))


def dp_with_session(**kw: Any) -> MemoryDatapath:
    dp = MemoryDatapath((1, 2), max_peers=16, **kw)
    dp.bfd_sessions_set(OURS, 4)
    dp.bfd_peers_set(0xC6120204, 1, 4)
    dp.bfd_requests_set(4, **params())
    dp.mcast_group_set(GROUP, [(1, 4), (2, 5)])
    return dp


def test_same_checks_as_the_bpf_data_plane() -> None:
    dp = MemoryDatapath((1,), max_peers=16)
    with pytest.raises(ValueError, match="index"):
        dp.bfd_sessions_set(1, 16)
    with pytest.raises(ValueError, match="port"):
        dp.bfd_peers_set(1, 512, 1)
    with pytest.raises(ValueError, match="state"):
        dp.bfd_requests_set(1, **params(state=4))
    with pytest.raises(ValueError, match="dst_mac"):
        dp.bfd_requests_set(1, **params(dst_mac=1 << 48))
    dp.bfd_requests_set(1, **params())
    assert dp.bfd_requests_get(1) == params()
    assert dp.bfd_requests_delete(1) and dp.bfd_requests_get(1) is None


def test_round_counts_gating_and_final() -> None:
    dp = dp_with_session()
    dp.packet_out(template(5_000), 0, GROUP)  # the first round runs at the PacketOut
    assert dp.bfd_schedule is not None and dp.bfd_schedule.period_us == 5_000
    assert dp.counter_read("hb_reason", Reason.BFD_SENT)[0] == 1
    assert dp.counter_read("hb_reason", Reason.REQUEST_NO_PEER)[0] == 1  # index 5
    dp.run_bfd_rounds(5)  # 1 s interval: not due again within these ticks
    assert dp.register_read("hb_tx_count", 4) == 1
    dp.register_write("bfd_final_due", 4, 1)
    dp.run_bfd_rounds(1)
    assert (dp.register_read("hb_tx_count", 4), dp.register_read("bfd_final_due", 4)) == (2, 0)
    dp.packet_out(template(0), 0, GROUP)
    assert dp.bfd_schedule is None and dp.run_bfd_rounds(1) == 0


def test_record_rule_and_detection() -> None:
    dp = dp_with_session()
    dp.bfd_requests_set(4, **params(detect_time_us=1))
    pkt = ControlPacket(State.INIT, my_disc=77, your_disc=OURS)
    dp.bfd_receive(4, pkt)
    dp.bfd_receive(4, pkt)  # the same again: no record
    dp.bfd_receive(4, ControlPacket(State.INIT, my_disc=77, your_disc=OURS, flags=Flag.P))
    events = dp.poll_events(0)
    assert [type(e) for e in events] == [BfdEvent]
    assert dp.register_read("bfd_final_due", 4) == 1
    assert dp.register_read("hb_rx_count", 4) == 3
    dp.bfd_requests_set(4, **params(detect_time_us=60_000_000))  # not passed: kept
    dp.packet_out(template(0), 0, GROUP)
    assert dp.poll_events(0) == [] and dp.register_read("bfd_remote_disc", 4) == 77
    dp.bfd_requests_set(4, **params(detect_time_us=1))
    dp.register_write("hb_last_rx_us", 4, dp.now_us() - 10)  # older than detect_time
    dp.packet_out(template(0), 0, GROUP)
    assert [(type(e), e.state) for e in dp.poll_events(0)] == [(PeerEvent, PlaneState.DOWN)]
    # RFC 5880 section 6.8.1 (docs/bfd.md "Transmit" 1): bfd.RemoteDiscr zeroed with the DOWN
    assert dp.register_read("bfd_remote_disc", 4) == 0
    dp.bfd_receive(4, pkt)  # heard again: its discriminator is back
    assert dp.register_read("bfd_remote_disc", 4) == 77


def test_answering_remote_brings_the_session_up() -> None:
    """answering=True: the simulated remote follows our state (Down -> Init -> Up)."""
    dp = dp_with_session(answering=True)
    states = []
    for ours in (State.DOWN, State.INIT, State.UP):
        dp.bfd_requests_set(4, **params(state=ours, tx_interval_us=0))
        dp.packet_out(template(0), 0, GROUP)
        states.append(dp.register_read("bfd_remote_state", 4))
    assert states == [State.INIT, State.UP, State.UP]
    assert dp.register_read("bfd_remote_disc", 4) != 0
    dp.bfd_requests_set(4, **params(state=State.UP, flags=Flag.P, tx_interval_us=0))
    dp.packet_out(template(0), 0, GROUP)
    (final,) = [e for e in dp.poll_events(0) if isinstance(e, BfdEvent) and e.flags & Flag.F]
    assert final.index == 4
