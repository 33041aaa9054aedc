"""End to end: the real kernel target's data plane (Datapath: XDP + tc on the monitor port,
request fan-out, response recording, DOWN/UP events) monitoring a few hundred peers that
one XDP peer farm answers for, in the namespace of a MULTI lab."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from hbmon.protocol import FANOUT_GROUP, Heartbeat, MsgType, PlaneState
from hbmon_kernel.datapath import Datapath, PeerEvent
from hbmon_topo.farm import PeerFarm
from hbmon_topo.model import LAB_SUBNET, Topology, multi
from hbmon_topo.netns import NetnsLab

pytestmark = pytest.mark.netns

# One fan-out burst, well under a veth XDP ring: its 256 slots are freed in batches, so a
# 250-replica burst can lose a few (docs/labs.md "Peer farm").
N_PEERS = 200
DETECT_MULT = 3
MUTED = 7  # peer index the test mutes


def mac_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ip_int(text: str) -> int:
    return int.from_bytes(bytes(int(x) for x in text.split(".")), "big")


def template(topo: Topology, seq: int) -> bytes:
    """The controller's fan-out template (per-peer fields 0, docs/dataplane.md "Fan-out");
    tx_timestamp_us 0: one round per packet-out, the test paces the rounds itself."""
    hb = Heartbeat(MsgType.REQUEST, 0, seq, 0).pack()
    udp = struct.pack("!HHHH", 9191, 9190, 8 + len(hb), 0) + hb
    iph = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                ip_int(topo.monitor_address).to_bytes(4, "big"), bytes(4)))
    total = sum(struct.unpack("!10H", bytes(iph)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", iph, 10, ~total & 0xFFFF)
    return bytes(6) + bytes.fromhex(topo.port(1).mac.replace(":", "")) + b"\x08\x00" + bytes(
        iph) + udp


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)  # polling interval, not a fixed wait
    return True


def test_kernel_target_monitors_a_farm(netns_lab: Callable[[Topology], NetnsLab]) -> None:
    topo = multi(N_PEERS)
    lab = netns_lab(topo)
    with (
        Datapath(lab.port_map, max_peers=512) as dp,
        PeerFarm("eth0", lab.host_ns("peers"), str(LAB_SUBNET),
                 exclude=[topo.monitor_address]) as farm,
    ):
        for index, peer in enumerate(topo.peers):
            # every peer shares the farm interface's MAC: no ARP, the farm answers from it
            dp.peer_requests_set(index, mac_int(peer.mac), ip_int(peer.address), peer.peer_id,
                                 DETECT_MULT)
            dp.peers_set(ip_int(peer.address), peer.peer_id, index)
            dp.peer_ids_set(peer.peer_id)
        dp.mcast_group_set(FANOUT_GROUP, [(1, index) for index in range(N_PEERS)])
        events: list[PeerEvent] = []
        seq = 0

        def one_round() -> None:
            nonlocal seq
            seq += 1
            seen = farm.counters().requests
            dp.packet_out(template(topo, seq), 0, FANOUT_GROUP)
            # the round is over when the farm has seen all its requests and every answer
            # the farm sent has been recorded (or, for a muted peer, not sent)
            assert wait_until(lambda: farm.counters().requests >= seen + N_PEERS
                              ), f"round {seq}: the farm did not see {N_PEERS} requests"
            assert wait_until(lambda: sum(dp.register_read_all("hb_rx_count")[:N_PEERS])
                              >= farm.counters().answered), f"round {seq}: answers missing"
            events.extend(dp.poll_events(0))

        # 1. every peer answers: rx_count grows for all, all UP, nothing lost on the way
        for _ in range(3):
            one_round()
        rx = dp.register_read_all("hb_rx_count")[:N_PEERS]
        assert rx == [3] * N_PEERS
        assert dp.register_read_all("hb_state")[:N_PEERS] == [PlaneState.UP] * N_PEERS
        assert dp.register_read_all("hb_last_seq")[:N_PEERS] == [seq] * N_PEERS
        assert sorted(e.index for e in events if e.state == PlaneState.UP) == list(range(N_PEERS))
        counts = farm.counters()
        assert (counts.answered, counts.muted, counts.outside) == (3 * N_PEERS, 0, 0)

        # 2. mute one peer in the farm: it goes DOWN after DETECT_MULT unanswered rounds,
        #    the others stay UP and keep counting
        events.clear()
        farm.set_fault(topo.peers[MUTED].address, mute=True)
        rounds = 0
        while not any(e.index == MUTED and e.state == PlaneState.DOWN for e in events):
            rounds += 1
            assert rounds <= DETECT_MULT + 2, f"peer {MUTED} never went DOWN: {events}"
            one_round()
        assert [(e.index, e.state) for e in events] == [(MUTED, PlaneState.DOWN)]
        state = dp.register_read_all("hb_state")[:N_PEERS]
        assert state[MUTED] == PlaneState.DOWN
        assert state[:MUTED] + state[MUTED + 1:] == [PlaneState.UP] * (N_PEERS - 1)
        rx = dp.register_read_all("hb_rx_count")[:N_PEERS]
        assert rx[MUTED] == 3, "a muted peer's slot records nothing"
        assert all(n == 3 + rounds for i, n in enumerate(rx) if i != MUTED)
        assert farm.counters().muted == rounds

        # 3. unmute: the next answer brings it back UP
        events.clear()
        farm.clear_fault(topo.peers[MUTED].address)
        one_round()
        assert [(e.index, e.state) for e in events] == [(MUTED, PlaneState.UP)]
        assert dp.register_read("hb_rx_count", MUTED) == 4

