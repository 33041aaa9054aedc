"""The tc programs for real, on veths into namespaces made here: request fan-out from one
template, miss detection and DOWN/UP events, packet-out to one port, l2_forward, and
ordinary traffic reaching the host stack untouched."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import pytest
from hbmon.protocol import (
    FANOUT_GROUP,
    HEADER_LEN,
    REASON_COUNT,
    REGISTERS,
    REQUEST_PORT,
    RESPONSE_PORT,
    Heartbeat,
    MsgType,
    PlaneState,
    Reason,
    request_nonce,
)
from hbmon_kernel.datapath import Datapath, PeerEvent

from .bpf_lab import (
    Capture,
    Lab,
    heartbeat_frame,
    in_netns,
    ip,
    ip_int,
    ipv4_checksum,
    mac_bytes,
    request_template,
    response_frame,
)

pytestmark = pytest.mark.netns

MONITOR_IP = ip_int("198.18.0.1")
MONITOR_MAC = 0x02DD00000001
MAX_PEERS = 4096
FRAME_LEN = 14 + 20 + 8 + HEADER_LEN


@dataclass(frozen=True)
class Peer:
    index: int
    port: int
    mac: int
    addr: int
    peer_id: int
    nonce_key: int


def make_peers(n: int, ports: tuple[int, ...] = (1, 2), detect_mult: int = 3,
               start: int = 0) -> list[Peer]:
    peers = []
    for i in range(start, start + n):
        port = ports[i % len(ports)]
        peers.append(Peer(i, port, 0x02CC00000000 + i, ip_int("198.18.16.0") + i, 100000 + i,
                          (0x9E3779B9 * (i + 1)) & 0xFFFFFFFF))  # distinct per peer
    return peers


def program(dp: Datapath, peers: list[Peer], detect_mult: int = 3,
            group: int = FANOUT_GROUP) -> None:
    for p in peers:
        dp.peer_requests_set(p.index, p.mac, p.addr, p.peer_id, detect_mult, p.nonce_key)
        dp.peers_set(p.addr, p.peer_id, p.index, p.nonce_key)
        dp.peer_ids_set(p.peer_id)
    dp.mcast_group_set(group, [(p.port, p.index) for p in peers])


def is_request(frame: bytes) -> bool:
    return (len(frame) >= FRAME_LEN and frame[12:14] == b"\x08\x00" and frame[23] == 17
            and frame[36:38] == struct.pack("!H", REQUEST_PORT))


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # polling interval, not a fixed wait
    return True


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2) as lab:
        yield lab


@pytest.fixture(scope="module")
def datapath(lab: Lab) -> Iterator[Datapath]:
    with Datapath(lab.ports, max_peers=MAX_PEERS) as dp:
        yield dp


@pytest.fixture(scope="module")
def captures(lab: Lab, datapath: Datapath) -> dict[int, Capture]:
    return {port: lab.capture(port) for port in (1, 2)}


@pytest.fixture()
def dp(datapath: Datapath, captures: dict[int, Capture]) -> Datapath:
    for group in list(datapath.mcast_groups()):
        datapath.mcast_group_delete(group)
    for src, pid, index, *_ in datapath.peers_items():
        datapath.peers_delete(src, pid)
        datapath.peer_requests_delete(index)
    for pid in datapath.peer_ids_items():
        datapath.peer_ids_delete(pid)
    for mac, _ in datapath.l2_items():
        datapath.l2_delete(mac)
    for name in REGISTERS:
        datapath.register_fill(name, 0)
    for i in range(REASON_COUNT):
        datapath.counter_write("hb_reason", i, 0, 0)
    datapath.poll_events(0)
    for cap in captures.values():
        cap.drain()
    return datapath


def counted(dp: Datapath, reason: Reason) -> int:
    return dp.counter_read("hb_reason", reason)[0]


def fan_out(dp: Datapath, seq: int, captures: dict[int, Capture], expect: dict[int, int],
            template: bytes | None = None) -> dict[int, list[bytes]]:
    """One round: inject the template, collect the requests each port's namespace receives."""
    frame = template or request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=seq)
    dp.packet_out(frame, 0, FANOUT_GROUP)
    got = {}
    for port, cap in captures.items():
        n = expect.get(port, 0)
        got[port] = cap.frames(partial(_at_least, n), is_request)
    return got


def _at_least(n: int, frames: list[bytes]) -> bool:
    return len(frames) >= n


def test_fanout_rewrites_one_request_per_peer(dp: Datapath, captures: dict[int, Capture]
                                              ) -> None:
    peers = make_peers(40)
    program(dp, peers)
    before = dp.now_us()
    got = fan_out(dp, 500, captures, {1: 20, 2: 20})
    after = dp.now_us()
    by_id = {p.peer_id: p for p in peers}
    seen: set[int] = set()
    for port, frames in got.items():
        assert len(frames) == 20, f"port {port}"
        for f in frames:
            assert len(f) == FRAME_LEN
            hb = Heartbeat.unpack(f[42:], expect=MsgType.REQUEST)
            peer = by_id[hb.peer_id]
            assert peer.port == port
            assert f[0:6] == mac_bytes(peer.mac)
            assert f[6:12] == mac_bytes(MONITOR_MAC)
            iph = f[14:34]
            assert ipv4_checksum(iph) == 0, "IPv4 checksum valid after the rewrite"
            assert int.from_bytes(iph[12:16], "big") == MONITOR_IP
            assert int.from_bytes(iph[16:20], "big") == peer.addr
            assert struct.unpack("!HHHH", f[34:42]) == (RESPONSE_PORT, REQUEST_PORT, 36, 0)
            assert iph[8] == 255, "the template's TTL (255, RFC 5082) is kept"
            assert hb.sequence == 500 and (hb.status, hb.load) == (0, 0)
            # each replica carries its own peer's nonce for this round; egress remembers
            # the sequence as the last one sent (the bound of FUTURE_SEQUENCE)
            assert hb.nonce == request_nonce(peer.nonce_key, 500)
            assert dp.register_read("hb_last_tx_seq", peer.index) == 500
            assert before <= hb.tx_timestamp_us <= after
            assert dp.register_read("hb_last_tx_us", peer.index) == hb.tx_timestamp_us
            seen.add(hb.peer_id)
    assert seen == set(by_id)
    n = len(peers)
    assert dp.register_read_all("hb_tx_count")[:n] == [1] * n
    assert dp.register_read_all("hb_miss_count")[:n] == [1] * n
    assert dp.register_read_all("hb_tx_count")[n:] == [0] * (MAX_PEERS - n)
    assert dp.counter_read("hb_reason", Reason.REQUEST_SENT) == (n, n * FRAME_LEN)
    assert len({Heartbeat.unpack(f[42:]).nonce for f in got[1] + got[2]}) == n
    assert dp.reason_counts().keys() == {Reason.REQUEST_SENT}


def test_two_thousand_replicas_all_leave(dp: Datapath, captures: dict[int, Capture]) -> None:
    peers = make_peers(2000, ports=(1,))
    program(dp, peers)
    got = fan_out(dp, 7, captures, {1: 2000}, )
    ids = [Heartbeat.unpack(f[42:]).peer_id for f in got[1]]
    assert len(ids) == 2000
    assert set(ids) == {p.peer_id for p in peers}
    assert counted(dp, Reason.REQUEST_SENT) == 2000
    assert dp.register_read_all("hb_tx_count")[:2000] == [1] * 2000


def test_replica_without_peer_request_is_not_sent(dp: Datapath, captures: dict[int, Capture]
                                                  ) -> None:
    peers = make_peers(5, ports=(2,))
    program(dp, peers)
    dp.peer_requests_delete(1)
    dp.peer_requests_delete(3)
    got = fan_out(dp, 9, captures, {2: 3})
    assert sorted(Heartbeat.unpack(f[42:]).peer_id for f in got[2]) == [
        100000, 100002, 100004]
    assert wait_until(lambda: counted(dp, Reason.REQUEST_NO_PEER) == 2)
    assert counted(dp, Reason.REQUEST_SENT) == 3
    assert dp.register_read_all("hb_tx_count")[:5] == [1, 0, 1, 0, 1]


def _bad(**kw: int) -> Callable[[], bytes]:
    return lambda: request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=1, **kw)


def _mutate(offset: int, data: bytes) -> Callable[[], bytes]:
    def make() -> bytes:
        f = bytearray(request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=1))
        f[offset:offset + len(data)] = data
        return bytes(f)
    return make


BAD_TEMPLATES = {
    "response-type": _bad(msg_type=MsgType.RESPONSE),
    "to-response-port": _bad(dport=RESPONSE_PORT),
    "from-other-port": _mutate(34, struct.pack("!H", 4000)),
    "fragment": _mutate(20, b"\x20"),
    "bad-magic": _mutate(42, b"XX"),
    "version-1": _mutate(44, b"\x01"),
    "version-3": _mutate(44, b"\x03"),
    "v1-udp-length": _mutate(38, b"\x00\x20"),
    "v1-ip-length": _mutate(16, b"\x00\x34"),
    "not-ipv4": _mutate(12, b"\x08\x06"),
    "not-udp": _mutate(23, b"\x06"),
    "ip-options": _mutate(14, b"\x46"),
    "short": lambda: _bad()()[:66],
}


@pytest.mark.parametrize("name", list(BAD_TEMPLATES))
def test_bad_template_counted_once_and_dropped(dp: Datapath, captures: dict[int, Capture],
                                               name: str) -> None:
    peers = make_peers(600)  # three injections: still one BAD_TEMPLATE
    program(dp, peers)
    template = BAD_TEMPLATES[name]()
    dp.packet_out(template, 0, FANOUT_GROUP)
    # a good round afterwards marks the end of whatever the bad one could have caused
    got = fan_out(dp, 2, captures, {1: 300, 2: 300})
    assert [len(got[1]), len(got[2])] == [300, 300]
    assert all(Heartbeat.unpack(f[42:]).sequence == 2 for f in got[1] + got[2])
    assert wait_until(lambda: counted(dp, Reason.BAD_TEMPLATE) >= 1)
    assert dp.counter_read("hb_reason", Reason.BAD_TEMPLATE) == (1, len(template))
    assert dp.register_read_all("hb_tx_count")[:600] == [1] * 600


def test_miss_detection_down_then_up(dp: Datapath, lab: Lab, captures: dict[int, Capture]
                                     ) -> None:
    fast, slow = make_peers(2, ports=(1,))
    program(dp, [fast, slow], detect_mult=3)
    dp.peer_requests_set(fast.index, fast.mac, fast.addr, fast.peer_id, 1, fast.nonce_key)
    dp.register_write("hb_last_seq", slow.index, 33)
    events: list[PeerEvent] = []
    expected_down = {1: [], 2: [fast.index], 3: [fast.index], 4: [fast.index, slow.index],
                     5: [fast.index, slow.index]}

    def down_events(n: int) -> bool:
        events.extend(e for e in dp.poll_events(0) if isinstance(e, PeerEvent))
        return len(events) >= n

    for rnd in range(1, 6):
        got = fan_out(dp, 1000 + rnd, captures, {1: 2})
        assert len(got[1]) == 2
        # the events were raised before the requests left: no waiting needed, but allowed
        wait_until(partial(down_events, len(expected_down[rnd])), timeout_s=1)
        assert [e.index for e in events] == expected_down[rnd], f"round {rnd}"
        assert all(e.state == PlaneState.DOWN for e in events)
        if rnd == 2:  # fast: 1 request unanswered before this one
            assert events[0] == PeerEvent(fast.index, PlaneState.DOWN, 0,
                                          dp.register_read("hb_last_tx_us", fast.index))
        if rnd == 4:  # slow: 3 requests unanswered before this one
            assert events[1] == PeerEvent(slow.index, PlaneState.DOWN, 33,
                                          dp.register_read("hb_last_tx_us", slow.index))
    assert len(events) == 2, "one DOWN per peer, not one per round"
    assert counted(dp, Reason.PEER_DOWN_EVENT) == 2
    assert dp.register_read("hb_state", fast.index) == PlaneState.DOWN
    assert dp.register_read("hb_miss_count", slow.index) == 5
    assert dp.register_read("hb_tx_count", slow.index) == 5

    # the peer answers the last request for real, through the port's XDP program; a forger
    # first, who knows everything but the nonce, then one a round ahead: neither counts
    last_tx = dp.register_read("hb_last_tx_us", slow.index)
    assert dp.register_read("hb_last_tx_seq", slow.index) == 1005
    answer = partial(response_frame, peer_ip=slow.addr, monitor_ip=MONITOR_IP,
                     peer_id=slow.peer_id, tx_us=last_tx, load=17, src_mac=slow.mac,
                     dst_mac=lab.root_mac(1))
    sender = lab.sender(1)
    sender.send(answer(seq=1005, nonce_key=fast.nonce_key))
    sender.send(answer(seq=1006, nonce_key=slow.nonce_key))
    assert wait_until(lambda: counted(dp, Reason.BAD_NONCE) == 1
                      and counted(dp, Reason.FUTURE_SEQUENCE) == 1)
    assert dp.poll_events(0) == [] and dp.register_read("hb_rx_count", slow.index) == 0
    sender.send(answer(seq=1005, nonce_key=slow.nonce_key))
    up: list[PeerEvent] = []

    def up_event() -> bool:
        up.extend(e for e in dp.poll_events(50) if isinstance(e, PeerEvent))
        return bool(up)

    assert wait_until(up_event)
    rx = dp.register_read("hb_last_rx_us", slow.index)
    assert up == [PeerEvent(slow.index, PlaneState.UP, 1005, rx)]
    assert dp.register_read("hb_miss_count", slow.index) == 0
    assert dp.register_read("hb_rtt_last_us", slow.index) == rx - last_tx
    assert dp.register_read("hb_peer_load", slow.index) == 17
    assert counted(dp, Reason.RESPONSE_RECORDED) == 1


def test_detect_mult_zero_never_down_and_miss_count_saturates(
        dp: Datapath, captures: dict[int, Capture]) -> None:
    never, full = make_peers(2, ports=(2,))
    program(dp, [never], detect_mult=0)
    program(dp, [never, full], detect_mult=200)
    dp.peer_requests_set(never.index, never.mac, never.addr, never.peer_id, 0, never.nonce_key)
    dp.register_write("hb_miss_count", never.index, 1000)
    dp.register_write("hb_miss_count", full.index, 0xFFFFFFFF)
    dp.register_write("hb_state", full.index, PlaneState.DOWN)  # already DOWN: no new event
    for rnd in range(3):
        assert len(fan_out(dp, 50 + rnd, captures, {2: 2})[2]) == 2
    assert dp.poll_events(0) == []
    assert dp.register_read("hb_miss_count", never.index) == 1003
    assert dp.register_read("hb_state", never.index) == PlaneState.UNKNOWN
    assert dp.register_read("hb_miss_count", full.index) == 0xFFFFFFFF
    assert dp.register_read("hb_tx_count", full.index) == 3


def test_packet_out_to_one_port_unchanged(dp: Datapath, captures: dict[int, Capture]) -> None:
    frame = heartbeat_frame(src_mac=MONITOR_MAC, dst_mac=0x02EE00000002, src_ip=MONITOR_IP,
                            dst_ip=ip_int("198.18.16.9"), sport=4000, dport=5555,
                            payload=os.urandom(300))
    dp.packet_out(frame, 2, 0)
    assert captures[2].frames(lambda fs: len(fs) >= 1, lambda f: f == frame) == [frame]
    # and a request template with mcast_grp 0 is not rewritten either
    template = request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=3)
    dp.packet_out(template, 1, 0)
    assert captures[1].frames(lambda fs: len(fs) >= 1, is_request) == [template]
    assert captures[2].frames(lambda fs: len(fs) >= 1, is_request, timeout_s=0.2) == []
    assert counted(dp, Reason.REQUEST_SENT) == 0


def test_group_membership_changes_apply(dp: Datapath, captures: dict[int, Capture]) -> None:
    peers = make_peers(10)
    program(dp, peers)
    keep = [p for p in peers if p.index % 3 != 0]
    dp.mcast_group_set(FANOUT_GROUP, [(p.port, p.index) for p in keep])
    n1 = sum(p.port == 1 for p in keep)
    got = fan_out(dp, 20, captures, {1: n1, 2: len(keep) - n1})
    ids = sorted(Heartbeat.unpack(f[42:]).peer_id for f in got[1] + got[2])
    assert ids == sorted(p.peer_id for p in keep)
    dp.mcast_group_delete(FANOUT_GROUP)
    dp.packet_out(request_template(monitor_mac=MONITOR_MAC, monitor_ip=MONITOR_IP, seq=21),
                  0, FANOUT_GROUP)
    dp.mcast_group_set(FANOUT_GROUP, [(1, peers[0].index)])
    got = fan_out(dp, 22, captures, {1: 1})
    assert [Heartbeat.unpack(f[42:]).sequence for f in got[1]] == [22]


@pytest.fixture()
def host_addr(lab: Lab, datapath: Datapath) -> Iterator[tuple[str, str]]:
    """A lab address on port 1's root end (the host) and one in its namespace."""
    net = 64 + os.getpid() % 128
    host, peer = f"198.18.{net}.1", f"198.18.{net}.2"
    iface = lab.ifaces[0]
    ip("addr", "add", f"{host}/30", "dev", iface)
    try:
        ip("-n", lab.ns(1), "addr", "add", f"{peer}/30", "dev", "eth0")
        ip("-n", lab.ns(1), "neigh", "replace", host, "lladdr",
           ":".join(f"{b:02x}" for b in mac_bytes(lab.root_mac(1))), "dev", "eth0")
        yield host, peer
    finally:
        ip("addr", "del", f"{host}/30", "dev", iface)
        ip("-n", lab.ns(1), "addr", "flush", "dev", "eth0")


def test_ordinary_traffic_reaches_host_stack_and_l2_drop(dp: Datapath, lab: Lab,
                                                         host_addr: tuple[str, str]) -> None:
    host, peer = host_addr
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]

    def send(payload: bytes) -> None:
        def go() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(payload, (host, port))
        in_netns(lab.ns(1), go)

    try:
        send(b"ordinary-1")
        data, src = rx.recvfrom(2048)
        assert (data, src[0]) == (b"ordinary-1", peer)
        dp.l2_set(lab.root_mac(1), None)  # drop frames to the host's MAC
        send(b"dropped")
        dp.l2_delete(lab.root_mac(1))
        send(b"ordinary-2")
        assert rx.recvfrom(2048)[0] == b"ordinary-2"
        assert dp.reason_counts() == {}, "not heartbeats: not counted"
    finally:
        rx.close()


def test_l2_forward_redirects_between_ports(dp: Datapath, lab: Lab,
                                            captures: dict[int, Capture]) -> None:
    dst = lab.peer_mac(2)
    frame = heartbeat_frame(src_mac=lab.peer_mac(1), dst_mac=dst, src_ip=ip_int("198.18.30.1"),
                            dst_ip=ip_int("198.18.30.2"), sport=1234, dport=4321,
                            payload=b"forward me" + os.urandom(8))
    sender = lab.sender(1)
    dp.l2_set(dst, 2)
    sender.send(frame)
    assert captures[2].frames(lambda fs: len(fs) >= 1, lambda f: f == frame) == [frame]
    # a heartbeat response is consumed by XDP before l2_forward sees it
    resp = response_frame(peer_ip=1, monitor_ip=MONITOR_IP, peer_id=5, seq=1, tx_us=1,
                          dst_mac=dst)
    sender.send(resp)
    sender.send(frame)
    got = captures[2].frames(lambda fs: len(fs) >= 1, lambda f: f in (frame, resp))
    assert got == [frame]
    assert wait_until(lambda: counted(dp, Reason.UNKNOWN_PEER) == 1)
    assert captures[1].frames(lambda fs: False, lambda f: f == frame, timeout_s=0.1) == []
