"""BFD receive in the XDP program, run in the kernel with BPF_PROG_TEST_RUN (table-driven,
as test_bpf_xdp.py): every check of docs/bfd.md "Receive" in its order with its reason,
the registers a recorded control packet writes and the bfd_event_t records it raises.

The expected reason of every malformed row comes from `hbmon.bfd_packet.classify` (the
contract's checks 1-4 written once in Python), not from the BPF code."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hbmon import bfd_packet
from hbmon.bfd_packet import ControlPacket, Flag, State
from hbmon.protocol import BFD_REGISTERS, REASON_COUNT, REGISTERS, PlaneState, Reason
from hbmon_kernel.datapath import BfdEvent, Datapath, PeerEvent

from .bpf_lab import heartbeat_frame, ip_int

XDP_DROP, XDP_PASS = 1, 2
MONITOR_IP = ip_int("198.18.0.1")
PEER_IP = ip_int("198.18.2.1")
OTHER_IP = ip_int("198.18.2.2")
MAX_PEERS = 64
INDEX = 9
PORT = 3  # the P4 port BPF_PROG_TEST_RUN's frames arrive on (see `datapath`)
OUR_DISC = bfd_packet.local_discriminator(0x5A5A0000, INDEX)
THEIR_DISC = 0x0BADF00D
ALL_REGISTERS = {**REGISTERS, **BFD_REGISTERS}


@pytest.fixture(scope="module")
def datapath() -> Iterator[Datapath]:
    with Datapath({}, max_peers=MAX_PEERS) as dp:
        # BPF_PROG_TEST_RUN runs an XDP program on the loopback device's receive queue, so
        # its ingress ifindex is lo's: make lo "port PORT" for the bfd_peers lookup (what
        # the loader writes for each real port; the module has no real port to attach to)
        dp._map("port_numbers").update(socket.if_nametoindex("lo").to_bytes(4, "little"),
                                       PORT.to_bytes(4, "little"))
        yield dp


@pytest.fixture()
def dp(datapath: Datapath) -> Datapath:
    """Empty BFD tables, zeroed registers and counters, no pending events."""
    datapath.bfd_sessions_delete(OUR_DISC)
    for src in (PEER_IP, OTHER_IP):
        for port in (PORT, PORT + 1):
            datapath.bfd_peers_delete(src, port)
    for name in ALL_REGISTERS:
        datapath.register_fill(name, 0)
    for i in range(REASON_COUNT):
        datapath.counter_write("hb_reason", i, 0, 0)
    datapath.poll_events(0)
    return datapath


def install(dp: Datapath, *, port: int = PORT) -> None:
    """A session as the controller programs it: our discriminator and (address, port)."""
    dp.bfd_sessions_set(OUR_DISC, INDEX)
    dp.bfd_peers_set(PEER_IP, port, INDEX)


def ctl(**kw: int) -> ControlPacket:
    """An Up packet of the session (their discriminator, ours as your discriminator)."""
    args: dict[str, int] = {"state": State.UP, "my_disc": THEIR_DISC, "your_disc": OUR_DISC,
                            "desired_min_tx_us": 300_000, "required_min_rx_us": 300_000,
                            "detect_mult": 3}
    args.update(kw)
    return ControlPacket(**args)  # type: ignore[arg-type]


def frame(payload: bytes | ControlPacket, *, src: int = PEER_IP, ttl: int = 255,
          dport: int = bfd_packet.PORT, **ip_kw: int) -> bytes:
    if isinstance(payload, ControlPacket):
        payload = payload.pack()
    return heartbeat_frame(src_mac=0x02AA00000002, dst_mac=0x02BB00000001, src_ip=src,
                           dst_ip=MONITOR_IP, sport=bfd_packet.source_port(5), dport=dport,
                           payload=payload, ttl=ttl, **ip_kw)


def with_bytes(pkt: ControlPacket, at: int, value: int) -> bytes:
    raw = bytearray(pkt.pack())
    raw[at] = value
    return bytes(raw)


def contract_reason(payload: bytes, ttl: int) -> Reason:
    """Checks 1-4 as hbmon.bfd_packet says (the session lookup, 5-6, is the row's)."""
    try:
        bfd_packet.classify(payload, ttl)
    except bfd_packet.BfdError as exc:
        return exc.reason
    return Reason.BFD_RECORDED


@dataclass(frozen=True)
class Row:
    name: str
    frame: Callable[[], bytes]
    reason: Reason | None  # None: not BFD, passed untouched and not counted
    installed: bool = True


ROWS = [
    # ---- not BFD (docs/bfd.md: only untagged IPv4, IHL 5, unfragmented, UDP 3784)
    Row("udp-to-3785", lambda: frame(ctl(), dport=3785), None),
    Row("udp-to-4784-multihop", lambda: frame(ctl(), dport=4784), None),
    Row("ipv4-options", lambda: frame(ctl(), ihl=6), None),
    Row("first-fragment", lambda: frame(ctl(), frag_off=0x2000), None),
    Row("tcp-to-3784", lambda: frame(ctl(), proto=6), None),
    # ---- 1: truncated
    Row("truncated-empty", lambda: frame(b""), Reason.BFD_TRUNCATED),
    Row("truncated-23", lambda: frame(ctl().pack()[:23]), Reason.BFD_TRUNCATED),
    Row("truncated-before-version", lambda: frame(bytes(8)), Reason.BFD_TRUNCATED),
    # ---- 2: version
    Row("bad-version-0", lambda: frame(ctl(version=0)), Reason.BFD_BAD_VERSION),
    Row("bad-version-2", lambda: frame(ctl(version=2)), Reason.BFD_BAD_VERSION),
    Row("bad-version-before-malformed", lambda: frame(ctl(version=7, detect_mult=0)),
        Reason.BFD_BAD_VERSION),
    # ---- 3: malformed
    Row("length-23", lambda: frame(ctl(length=23)), Reason.BFD_MALFORMED),
    Row("length-beyond-udp", lambda: frame(ctl(length=25)), Reason.BFD_MALFORMED),
    Row("length-beyond-udp-length-field", lambda: frame(ctl(), udp_len=8 + 23,
                                                        ip_total_len=52),
        Reason.BFD_MALFORMED),
    Row("detect-mult-0", lambda: frame(ctl(detect_mult=0)), Reason.BFD_MALFORMED),
    Row("multipoint", lambda: frame(ctl(flags=Flag.M)), Reason.BFD_MALFORMED),
    Row("authentication", lambda: frame(ctl(flags=Flag.A)), Reason.BFD_MALFORMED),
    Row("my-disc-0", lambda: frame(ctl(my_disc=0)), Reason.BFD_MALFORMED),
    Row("your-disc-0-up", lambda: frame(ctl(your_disc=0)), Reason.BFD_MALFORMED),
    Row("your-disc-0-init", lambda: frame(ctl(your_disc=0, state=State.INIT)),
        Reason.BFD_MALFORMED),
    Row("malformed-before-ttl", lambda: frame(ctl(detect_mult=0), ttl=1), Reason.BFD_MALFORMED),
    # ---- 4: TTL (RFC 5881 section 5)
    Row("ttl-254", lambda: frame(ctl(), ttl=254), Reason.BFD_BAD_TTL),
    Row("ttl-1", lambda: frame(ctl(), ttl=1), Reason.BFD_BAD_TTL),
    Row("ttl-before-lookup", lambda: frame(ctl(your_disc=12345), ttl=64), Reason.BFD_BAD_TTL),
    # ---- 5, 6: the session lookup
    Row("unknown-discriminator", lambda: frame(ctl(your_disc=OUR_DISC + 1)),
        Reason.BFD_UNKNOWN_DISCRIMINATOR),
    Row("unknown-discriminator-empty-tables", lambda: frame(ctl()),
        Reason.BFD_UNKNOWN_DISCRIMINATOR, installed=False),
    Row("discriminator-wins-over-address", lambda: frame(ctl(your_disc=7), src=PEER_IP),
        Reason.BFD_UNKNOWN_DISCRIMINATOR),
    Row("unknown-peer-address", lambda: frame(ctl(your_disc=0, state=State.DOWN), src=OTHER_IP),
        Reason.BFD_UNKNOWN_PEER),
    Row("unknown-peer-empty-tables", lambda: frame(ctl(your_disc=0, state=State.DOWN)),
        Reason.BFD_UNKNOWN_PEER, installed=False),
    # ---- 7: recorded
    Row("recorded-by-discriminator", lambda: frame(ctl()), Reason.BFD_RECORDED),
    Row("recorded-by-address-down", lambda: frame(ctl(your_disc=0, state=State.DOWN)),
        Reason.BFD_RECORDED),
    Row("recorded-by-address-admin-down",
        lambda: frame(ctl(your_disc=0, state=State.ADMIN_DOWN)), Reason.BFD_RECORDED),
    Row("recorded-with-padding", lambda: frame(ctl().pack() + bytes(4)), Reason.BFD_RECORDED),
    Row("recorded-poll", lambda: frame(ctl(flags=Flag.P)), Reason.BFD_RECORDED),
    Row("recorded-demand-bit-ignored", lambda: frame(ctl(flags=Flag.D)), Reason.BFD_RECORDED),
    Row("recorded-dont-fragment", lambda: frame(ctl(), frag_off=0x4000), Reason.BFD_RECORDED),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_classification(dp: Datapath, row: Row) -> None:
    if row.installed:
        install(dp)
    before = {name: dp.register_read_all(name) for name in ALL_REGISTERS}
    data = row.frame()
    result = dp.prog_test_run("hb_xdp_rx", data)
    counts = dp.reason_counts()
    events = dp.poll_events(0)
    if row.reason is None:
        assert result.retval == XDP_PASS
        assert result.data_out == data
        assert counts == {} and events == []
        return
    assert result.retval == XDP_DROP, "BFD is consumed whatever its fate"
    payload = data[42:]
    if row.reason in (Reason.BFD_TRUNCATED, Reason.BFD_BAD_VERSION, Reason.BFD_MALFORMED,
                      Reason.BFD_BAD_TTL) and row.name != "length-beyond-udp-length-field":
        # the contract's Python statement of checks 1-4 agrees with the row
        assert contract_reason(payload, data[22]) is row.reason
    recorded = row.reason is Reason.BFD_RECORDED
    expected = {row.reason.value: (1, len(data))}
    if recorded:  # the first packet of a slot that is not UP raises a record
        expected[Reason.BFD_EVENT.value] = (1, len(data))
    assert counts == expected
    touched = {n for n in ALL_REGISTERS if dp.register_read_all(n) != before[n]}
    if recorded:
        assert touched >= {"hb_rx_count", "hb_last_rx_us", "hb_state", "bfd_remote_disc"}
        assert [type(e) for e in events] == [BfdEvent]
    else:  # checks 1-6 change no register and raise nothing
        assert touched == set()
        assert events == []


def regs(dp: Datapath, index: int = INDEX) -> dict[str, int]:
    return {name: dp.register_read(name, index) for name in ALL_REGISTERS}


def run(dp: Datapath, data: bytes) -> list[PeerEvent | BfdEvent]:
    assert dp.prog_test_run("hb_xdp_rx", data).retval == XDP_DROP
    return dp.poll_events(0)


def test_recorded_slot_and_record(dp: Datapath) -> None:
    """A recorded packet writes the session's registers (docs/bfd.md "Receive") and raises
    one bfd_event_t with the packet's fields; never a peer_event_t UP."""
    install(dp)
    pkt = ctl(state=State.INIT, diag=3, detect_mult=5, desired_min_tx_us=50_000,
              required_min_rx_us=70_000, flags=Flag.C)
    t0 = dp.now_us()
    events = run(dp, frame(pkt))
    t1 = dp.now_us()
    r = regs(dp)
    assert t0 <= r["hb_last_rx_us"] <= t1
    assert r == {**r, "hb_rx_count": 1, "hb_state": PlaneState.UP, "bfd_remote_state": 2,
                 "bfd_remote_diag": 3, "bfd_remote_mult": 5, "bfd_remote_disc": THEIR_DISC,
                 "bfd_remote_min_tx_us": 50_000, "bfd_remote_min_rx_us": 70_000,
                 "bfd_final_due": 0, "hb_tx_count": 0, "hb_last_seq": 0}
    assert events == [BfdEvent(index=INDEX, state=2, diag=3, flags=Flag.C, detect_mult=5,
                               my_disc=THEIR_DISC, desired_min_tx_us=50_000,
                               required_min_rx_us=70_000, time_us=r["hb_last_rx_us"])]
    assert all(v == 0 for i, v in enumerate(dp.register_read_all("hb_rx_count")) if i != INDEX)


def test_steady_up_raises_nothing(dp: Datapath) -> None:
    install(dp)
    assert len(run(dp, frame(ctl()))) == 1
    first_rx = dp.register_read("hb_last_rx_us", INDEX)
    for _ in range(5):
        assert run(dp, frame(ctl())) == []
    assert dp.register_read("hb_rx_count", INDEX) == 6
    assert dp.register_read("hb_last_rx_us", INDEX) >= first_rx
    counts = dp.reason_counts()
    assert counts[Reason.BFD_RECORDED][0] == 6 and counts[Reason.BFD_EVENT][0] == 1


CHANGES: dict[str, dict[str, Any]] = {
    "state": {"state": State.DOWN, "your_disc": 0},
    "diag": {"diag": 1},
    "detect_mult": {"detect_mult": 4},
    "my_disc": {"my_disc": THEIR_DISC + 1},
    "desired_min_tx": {"desired_min_tx_us": 50_000},
    "required_min_rx": {"required_min_rx_us": 50_000},
    "final": {"flags": Flag.F},
}


@pytest.mark.parametrize("change", list(CHANGES), ids=str)
def test_each_change_raises_a_record(dp: Datapath, change: str) -> None:
    install(dp)
    run(dp, frame(ctl()))
    pkt = dataclasses.replace(ctl(), **CHANGES[change])
    events = run(dp, frame(pkt))
    assert len(events) == 1 and isinstance(events[0], BfdEvent)
    ev = events[0]
    assert (ev.state, ev.diag, ev.detect_mult, ev.my_disc, ev.desired_min_tx_us,
            ev.required_min_rx_us, ev.flags) == (
        pkt.state, pkt.diag, pkt.detect_mult, pkt.my_disc, pkt.desired_min_tx_us,
        pkt.required_min_rx_us, pkt.flags)
    if change != "final":  # the registers now hold the new value: the next one is steady
        assert run(dp, frame(pkt)) == []


def test_poll_sets_final_due_and_is_not_a_change(dp: Datapath) -> None:
    install(dp)
    run(dp, frame(ctl()))
    assert run(dp, frame(ctl(flags=Flag.P))) == []
    assert dp.register_read("bfd_final_due", INDEX) == 1
    # a later packet without P leaves it for egress to clear
    run(dp, frame(ctl()))
    assert dp.register_read("bfd_final_due", INDEX) == 1


def test_slot_not_up_raises_again(dp: Datapath) -> None:
    """After detection (egress or the sweeper wrote DOWN), the next packet is news even if
    its fields are the same."""
    install(dp)
    run(dp, frame(ctl()))
    dp.register_write("hb_state", INDEX, PlaneState.DOWN)
    events = run(dp, frame(ctl()))
    assert [type(e) for e in events] == [BfdEvent]
    assert dp.register_read("hb_state", INDEX) == PlaneState.UP


def test_peer_lookup_is_by_ingress_port(dp: Datapath) -> None:
    """bfd_peers is keyed by (source, ingress port): the same address on another port is
    another session (docs/bfd.md check 6)."""
    install(dp, port=PORT + 1)
    run(dp, frame(ctl(your_disc=0, state=State.DOWN)))
    assert dp.reason_counts() == {Reason.BFD_UNKNOWN_PEER: (1, 66)}
    dp.bfd_peers_set(PEER_IP, PORT, INDEX)
    events = run(dp, frame(ctl(your_disc=0, state=State.DOWN)))
    assert [e.index for e in events] == [INDEX]


def test_tables_round_trip_and_checks(dp: Datapath) -> None:
    install(dp)
    assert dp.bfd_sessions_get(OUR_DISC) == INDEX
    assert dp.bfd_peers_get(PEER_IP, PORT) == INDEX
    assert dp.bfd_peers_get(PEER_IP, PORT + 1) is None
    assert dp.bfd_sessions_delete(OUR_DISC) and not dp.bfd_sessions_delete(OUR_DISC)
    with pytest.raises(ValueError, match="index"):
        dp.bfd_sessions_set(1, MAX_PEERS)
    with pytest.raises(ValueError, match="port"):
        dp.bfd_peers_set(PEER_IP, 512, 1)
    params = {"dst_mac": 0x02AA00000002, "dst_addr": PEER_IP, "src_port": 49161,
              "my_disc": OUR_DISC, "state": 1, "diag": 0, "flags": 0, "detect_mult": 3,
              "desired_min_tx_us": 1_000_000, "required_min_rx_us": 300_000,
              "tx_interval_us": 1_000_000, "detect_time_us": 900_000}
    dp.bfd_requests_set(INDEX, **params)
    assert dp.bfd_requests_get(INDEX) == params
    with pytest.raises(ValueError, match="state"):
        dp.bfd_requests_set(INDEX, **{**params, "state": 4})
    assert dp.bfd_requests_delete(INDEX) and dp.bfd_requests_get(INDEX) is None
