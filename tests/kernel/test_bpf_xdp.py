"""The XDP response program, run in the kernel with BPF_PROG_TEST_RUN (table-driven, katran
style): every classification row of docs/protocol.md, register updates, UP events.

The fan-out (egress) is not run here: a test says what was "sent" to a slot by writing
hb_tx_count and hb_last_tx_seq as egress does (test_bpf_fanout.py checks egress writes them)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hbmon.protocol import (
    GTSM_MIN_TTL,
    HEADER_LEN,
    REASON_COUNT,
    REGISTERS,
    RESPONSE_PORT,
    VERSION,
    Heartbeat,
    MsgType,
    PlaneState,
    Reason,
    request_nonce,
    seq_newer,
)
from hbmon_kernel.datapath import Datapath, PeerEvent

from .bpf_lab import heartbeat_frame, ip_int, response_frame

XDP_DROP, XDP_PASS = 1, 2
MONITOR_IP = ip_int("198.18.0.1")
PEER_IP = ip_int("198.18.1.1")
OTHER_IP = ip_int("198.18.1.2")
PEER_ID = 1001
INDEX = 7
MAX_PEERS = 64
NONCE_KEY = 0x5EED1234  # the peer's nonce key (a controller derives it; any nonzero value)
FRAME_LEN = 14 + 20 + 8 + HEADER_LEN


@pytest.fixture(scope="module")
def datapath() -> Iterator[Datapath]:
    with Datapath({}, max_peers=MAX_PEERS) as dp:
        yield dp


@pytest.fixture()
def dp(datapath: Datapath) -> Datapath:
    """The module's data plane with empty tables, zeroed registers and counters, no events."""
    for src, pid, *_ in datapath.peers_items():
        datapath.peers_delete(src, pid)
    for pid in datapath.peer_ids_items():
        datapath.peer_ids_delete(pid)
    for name in REGISTERS:
        datapath.register_fill(name, 0)
    for i in range(REASON_COUNT):
        datapath.counter_write("hb_reason", i, 0, 0)
    datapath.poll_events(0)
    return datapath


def sent(dp: Datapath, seq: int, index: int = INDEX, count: int = 1) -> None:
    """What egress leaves in a slot after sending request `seq` (its `count`th)."""
    dp.register_write("hb_tx_count", index, count)
    dp.register_write("hb_last_tx_seq", index, seq % (1 << 32))


def install_peer(dp: Datapath, src: int = PEER_IP, peer_id: int = PEER_ID,
                 index: int = INDEX, *, nonce_key: int = NONCE_KEY, min_ttl: int = 0,
                 last_sent: int | None = 1) -> None:
    """The peer's entries, and (unless last_sent is None) requests up to `last_sent` sent."""
    dp.peers_set(src, peer_id, index, nonce_key, min_ttl)
    dp.peer_ids_set(peer_id)
    if last_sent is not None:
        sent(dp, last_sent, index)


def response(**kw: int | None) -> bytes:
    args: dict[str, int | None] = {
        "peer_ip": PEER_IP, "monitor_ip": MONITOR_IP, "peer_id": PEER_ID, "seq": 1,
        "tx_us": Datapath.now_us(), "nonce_key": NONCE_KEY}
    args.update(kw)
    return response_frame(**args)  # type: ignore[arg-type]


def raw_hb(payload: bytes, *, src: int = PEER_IP, dport: int = RESPONSE_PORT, **ip_kw: int
           ) -> bytes:
    return heartbeat_frame(src_mac=0x02AA00000001, dst_mac=0x02BB00000001, src_ip=src,
                           dst_ip=MONITOR_IP, sport=9190, dport=dport, payload=payload,
                           **ip_kw)


def hb(msg_type: int = MsgType.RESPONSE, *, peer_id: int = PEER_ID, seq: int = 1,
       version: int = VERSION, magic: int = 0x4842) -> bytes:
    return Heartbeat(msg_type, peer_id, seq, 0, nonce=request_nonce(NONCE_KEY, seq),  # type: ignore[arg-type]
                     version=version, magic=magic).pack()


@dataclass(frozen=True)
class Row:
    name: str
    frame: Callable[[], bytes]
    reason: Reason | None  # None: not a heartbeat, passed untouched and not counted
    peer_installed: bool = True
    min_ttl: int = 0  # the peer's GTSM floor
    last_sent: int | None = 1  # the last request sent to the slot (None: nothing sent yet)
    extra: Callable[[Datapath], None] = field(default=lambda dp: None)


def _eth(ethertype: int, body: bytes) -> bytes:
    return bytes.fromhex("02bb00000001 02aa00000001") + struct.pack("!H", ethertype) + body


CLASSIFICATION = [
    # ---- ordinary traffic: XDP_PASS, untouched, not counted
    Row("arp", lambda: _eth(0x0806, bytes(28)), None),
    Row("ipv6", lambda: _eth(0x86DD, bytes(60)), None),
    Row("tcp-to-9191", lambda: raw_hb(hb(), proto=6), None),
    Row("udp-to-9190", lambda: raw_hb(hb(), dport=9190), None),
    Row("udp-to-53", lambda: raw_hb(b"dns?", dport=53), None),
    Row("ipv4-options", lambda: raw_hb(hb(), ihl=6), None),
    Row("later-fragment", lambda: raw_hb(hb(), frag_off=0x0010), None),
    Row("first-fragment", lambda: raw_hb(hb(), frag_off=0x2000), None),
    Row("ipv4-header-cut", lambda: raw_hb(hb())[:14 + 12], None),
    Row("udp-header-cut", lambda: raw_hb(hb())[:14 + 20 + 4], None),
    # ---- heartbeats, in the order of docs/protocol.md; the first failing check decides
    Row("truncated-empty", lambda: raw_hb(b""), Reason.TRUNCATED),
    Row("truncated-27", lambda: raw_hb(hb()[:27]), Reason.TRUNCATED),
    Row("truncated-v1-length", lambda: raw_hb(hb()[:24]), Reason.TRUNCATED),
    Row("truncated-before-magic", lambda: raw_hb(b"XX" + hb()[2:10]), Reason.TRUNCATED),
    Row("bad-magic", lambda: raw_hb(hb(magic=0x4843)), Reason.BAD_MAGIC),
    Row("bad-magic-before-version", lambda: raw_hb(hb(magic=0, version=9)), Reason.BAD_MAGIC),
    Row("bad-version-0", lambda: raw_hb(hb(version=0)), Reason.BAD_VERSION),
    Row("bad-version-1", lambda: raw_hb(hb(version=1)), Reason.BAD_VERSION),
    Row("bad-version-before-type", lambda: raw_hb(hb(MsgType.REQUEST, version=3)),
        Reason.BAD_VERSION),
    Row("bad-type-request", lambda: raw_hb(hb(MsgType.REQUEST)), Reason.BAD_TYPE),
    Row("bad-type-0", lambda: raw_hb(hb(0)), Reason.BAD_TYPE),
    Row("bad-type-before-length", lambda: raw_hb(hb(3) + b"x"), Reason.BAD_TYPE),
    Row("bad-length-long-payload", lambda: raw_hb(hb() + b"\0"), Reason.BAD_LENGTH),
    Row("bad-length-udp-field", lambda: raw_hb(hb(), udp_len=40), Reason.BAD_LENGTH),
    Row("bad-length-ip-field", lambda: raw_hb(hb(), ip_total_len=60), Reason.BAD_LENGTH),
    Row("bad-length-before-peer", lambda: raw_hb(hb(peer_id=4242) + bytes(8)),
        Reason.BAD_LENGTH, peer_installed=False),
    Row("unknown-peer", lambda: response(peer_id=4242), Reason.UNKNOWN_PEER),
    Row("unknown-peer-empty-tables", lambda: response(), Reason.UNKNOWN_PEER,
        peer_installed=False),
    Row("spoofed", lambda: response(peer_ip=OTHER_IP), Reason.SPOOFED),
    Row("spoofed-before-ttl", lambda: response(peer_ip=OTHER_IP, ttl=1), Reason.SPOOFED,
        min_ttl=GTSM_MIN_TTL),
    # ---- a matched peer: TTL (GTSM), nonce, future sequence, then the slot's own checks
    Row("bad-ttl-254", lambda: response(ttl=254), Reason.BAD_TTL, min_ttl=GTSM_MIN_TTL),
    Row("bad-ttl-1", lambda: response(ttl=1), Reason.BAD_TTL, min_ttl=GTSM_MIN_TTL),
    Row("bad-ttl-below-a-custom-floor", lambda: response(ttl=63), Reason.BAD_TTL, min_ttl=64),
    Row("bad-ttl-before-nonce", lambda: response(ttl=64, nonce=0), Reason.BAD_TTL,
        min_ttl=GTSM_MIN_TTL),
    Row("bad-ttl-before-future", lambda: response(ttl=64, seq=2), Reason.BAD_TTL,
        min_ttl=GTSM_MIN_TTL),
    Row("ttl-255-passes-gtsm", lambda: response(ttl=255), Reason.RESPONSE_RECORDED,
        min_ttl=GTSM_MIN_TTL),
    Row("ttl-at-a-custom-floor", lambda: response(ttl=64), Reason.RESPONSE_RECORDED,
        min_ttl=64),
    Row("any-ttl-with-gtsm-off", lambda: response(ttl=1), Reason.RESPONSE_RECORDED),
    Row("bad-nonce-zero", lambda: response(nonce=0), Reason.BAD_NONCE),
    Row("bad-nonce-off-by-one", lambda: response(nonce=request_nonce(NONCE_KEY, 1) ^ 1),
        Reason.BAD_NONCE),
    Row("bad-nonce-is-the-sequence", lambda: response(nonce=1), Reason.BAD_NONCE),
    Row("bad-nonce-is-the-key", lambda: response(nonce=NONCE_KEY), Reason.BAD_NONCE),
    Row("bad-nonce-other-peers-key", lambda: response(nonce_key=NONCE_KEY ^ 0x100),
        Reason.BAD_NONCE),
    Row("bad-nonce-before-future", lambda: response(seq=2, nonce=0), Reason.BAD_NONCE),
    Row("future-nothing-sent", lambda: response(), Reason.FUTURE_SEQUENCE, last_sent=None),
    Row("future-by-1", lambda: response(seq=2), Reason.FUTURE_SEQUENCE),
    Row("future-lockout-2^30", lambda: response(seq=1 + (1 << 30)), Reason.FUTURE_SEQUENCE),
    Row("future-lockout-2^31-1", lambda: response(seq=0x7FFFFFFF), Reason.FUTURE_SEQUENCE),
    Row("future-across-the-wrap", lambda: response(seq=3), Reason.FUTURE_SEQUENCE,
        last_sent=0xFFFFFFFF),
    Row("recorded", lambda: response(), Reason.RESPONSE_RECORDED),
    Row("recorded-at-last-sent", lambda: response(seq=9), Reason.RESPONSE_RECORDED, last_sent=9),
    Row("recorded-before-last-sent", lambda: response(seq=3), Reason.RESPONSE_RECORDED,
        last_sent=9),
    Row("recorded-half-way-back", lambda: response(seq=1), Reason.RESPONSE_RECORDED,
        last_sent=0x80000001),
    Row("recorded-with-dont-fragment", lambda: raw_hb(hb(), frag_off=0x4000),
        Reason.RESPONSE_RECORDED),
]


@pytest.mark.parametrize("row", CLASSIFICATION, ids=lambda r: r.name)
def test_classification(dp: Datapath, row: Row) -> None:
    if row.peer_installed:
        install_peer(dp, min_ttl=row.min_ttl, last_sent=row.last_sent)
    before = {name: dp.register_read_all(name) for name in REGISTERS}
    frame = row.frame()
    result = dp.prog_test_run("hb_xdp_rx", frame)
    counts = dp.reason_counts()
    if row.reason is None:
        assert result.retval == XDP_PASS
        assert result.data_out == frame
        assert counts == {}
        return
    assert result.retval == XDP_DROP, "heartbeats are consumed, recorded or not"
    expected = {row.reason.value: (1, len(frame))}
    if row.reason is Reason.RESPONSE_RECORDED:
        expected[Reason.PEER_UP_EVENT.value] = (1, len(frame))
    assert counts == expected
    recorded = row.reason is Reason.RESPONSE_RECORDED
    assert dp.register_read("hb_rx_count", INDEX) == (1 if recorded else 0)
    # only a packet that passes every check touches the peer's slot (BAD_TTL, BAD_NONCE and
    # FUTURE_SEQUENCE included: a forger must not move any register)
    touched = {name for name in REGISTERS if dp.register_read_all(name) != before[name]}
    if not recorded:
        assert touched == set()


def test_truncated_counts_real_bytes_not_udp_length(dp: Datapath) -> None:
    install_peer(dp)
    frame = raw_hb(hb()[:20], udp_len=36, ip_total_len=56)  # claims 36, carries 28
    dp.prog_test_run("hb_xdp_rx", frame)
    assert dp.reason_counts() == {Reason.TRUNCATED: (1, len(frame))}


def run(dp: Datapath, frame: bytes) -> int:
    return dp.prog_test_run("hb_xdp_rx", frame).retval


def reg(dp: Datapath, index: int = INDEX) -> dict[str, int]:
    return {name: dp.register_read(name, index) for name in REGISTERS}


def test_recorded_slot_contents(dp: Datapath) -> None:
    install_peer(dp)
    dp.register_write("hb_miss_count", INDEX, 5)
    sent(dp, 77, count=9)
    tx_us = dp.now_us() - 1500
    before = dp.now_us()
    assert run(dp, response(seq=77, tx_us=tx_us, status=1, load=42)) == XDP_DROP
    after = dp.now_us()
    r = reg(dp)
    assert before <= r["hb_last_rx_us"] <= after
    rtt = r["hb_last_rx_us"] - tx_us
    assert rtt >= 1500
    assert r == {
        **r,
        "hb_rx_count": 1, "hb_tx_count": 9, "hb_dup_count": 0, "hb_miss_count": 0,
        "hb_last_seq": 77, "hb_last_tx_us": 0, "hb_rtt_last_us": rtt, "hb_rtt_min_us": rtt,
        "hb_rtt_max_us": rtt, "hb_rtt_ewma_us": rtt, "hb_peer_status": 1, "hb_peer_load": 42,
        "hb_state": PlaneState.UP, "hb_last_tx_seq": 77,
    }
    # other slots untouched
    assert all(v == 0 for i, v in enumerate(dp.register_read_all("hb_rx_count")) if i != INDEX)


def test_rtt_min_max_ewma(dp: Datapath) -> None:
    targets = [800, 300, 2000, 1000, 1000, 50, 4000]
    install_peer(dp, last_sent=len(targets))
    rtts: list[int] = []
    for seq, target in enumerate(targets, start=1):
        tx_us = dp.now_us() - target
        assert run(dp, response(seq=seq, tx_us=tx_us)) == XDP_DROP
        rtts.append(dp.register_read("hb_last_rx_us", INDEX) - tx_us)
        assert dp.register_read("hb_rtt_last_us", INDEX) == rtts[-1]
    ewma = rtts[0]
    for r in rtts[1:]:
        ewma = (7 * ewma + r) >> 3
    assert dp.register_read("hb_rtt_min_us", INDEX) == min(rtts)
    assert dp.register_read("hb_rtt_max_us", INDEX) == max(rtts)
    assert dp.register_read("hb_rtt_ewma_us", INDEX) == ewma
    assert dp.register_read("hb_rx_count", INDEX) == len(targets)


def test_rtt_from_a_future_timestamp_is_zero(dp: Datapath) -> None:
    """An echoed time this target never wrote yields no meaningful RTT: 0 (as the P4)."""
    install_peer(dp, last_sent=2)
    run(dp, response(seq=1, tx_us=dp.now_us() + 10_000_000))
    assert dp.register_read("hb_rtt_last_us", INDEX) == 0
    assert dp.register_read("hb_rtt_min_us", INDEX) == 0
    # an RTT beyond 32 bits saturates (reachable only after ~71 min of uptime; else exact)
    run(dp, response(seq=2, tx_us=0))
    rx = dp.register_read("hb_last_rx_us", INDEX)
    assert dp.register_read("hb_rtt_last_us", INDEX) == min(rx, 0xFFFFFFFF)
    assert dp.register_read("hb_rtt_min_us", INDEX) == 0, "a first sample of 0 is a minimum"


@dataclass(frozen=True)
class SeqRow:
    name: str
    last: int  # sequence recorded first
    seq: int  # then this one arrives
    reason: Reason
    sent: int | None = None  # the last request sent (None: the later of last and seq)


SEQUENCES = [
    SeqRow("duplicate", 10, 10, Reason.DUPLICATE),
    SeqRow("older", 10, 9, Reason.OLD_SEQUENCE),
    SeqRow("much-older", 10, 10 - 0x7FFFFFFF, Reason.OLD_SEQUENCE),
    SeqRow("newer", 10, 11, Reason.RESPONSE_RECORDED),
    SeqRow("newer-by-2^31-1", 10, 10 + 0x7FFFFFFF, Reason.RESPONSE_RECORDED),
    SeqRow("half-way-is-old", 10, 10 + 0x80000000, Reason.OLD_SEQUENCE),
    SeqRow("wrap-forward", 0xFFFFFFFF, 0, Reason.RESPONSE_RECORDED),
    SeqRow("wrap-backward", 0, 0xFFFFFFFF, Reason.OLD_SEQUENCE),
    SeqRow("duplicate-zero", 0, 0, Reason.DUPLICATE),
    # v2: in (last recorded, last sent] only
    SeqRow("newer-but-not-sent", 10, 11, Reason.FUTURE_SEQUENCE, sent=10),
    SeqRow("lockout-2^30", 10, 10 + (1 << 30), Reason.FUTURE_SEQUENCE, sent=11),
    SeqRow("lockout-2^31-1", 10, 0x7FFFFFFF, Reason.FUTURE_SEQUENCE, sent=11),
    SeqRow("newer-sent-later", 10, 11, Reason.RESPONSE_RECORDED, sent=20),
    SeqRow("older-than-last-sent-and-recorded", 10, 9, Reason.OLD_SEQUENCE, sent=20),
]


@pytest.mark.parametrize("row", SEQUENCES, ids=lambda r: r.name)
def test_sequence_serial_arithmetic(dp: Datapath, row: SeqRow) -> None:
    if row.sent is not None:
        last_sent = row.sent
    else:
        last_sent = row.seq if seq_newer(row.seq % (1 << 32), row.last) else row.last
    install_peer(dp, last_sent=row.last)
    assert run(dp, response(seq=row.last)) == XDP_DROP
    sent(dp, last_sent, count=2)
    first = reg(dp)
    frame = response(seq=row.seq % (1 << 32), status=2, load=99)
    assert run(dp, frame) == XDP_DROP
    counts = dp.reason_counts()
    assert counts[row.reason][0] == (2 if row.reason is Reason.RESPONSE_RECORDED else 1)
    r = reg(dp)
    if row.reason is Reason.RESPONSE_RECORDED:
        assert r["hb_rx_count"] == 2 and r["hb_last_seq"] == row.seq % (1 << 32)
        assert r["hb_dup_count"] == 0 and (r["hb_peer_status"], r["hb_peer_load"]) == (2, 99)
    else:
        # nothing but the not-recorded tally changes (and not even that for a future one)
        dups = 0 if row.reason is Reason.FUTURE_SEQUENCE else 1
        assert r == {**first, "hb_dup_count": dups}


def test_first_response_of_a_slot_is_recorded_whatever_its_sequence(dp: Datapath) -> None:
    """A reset slot has no "last recorded" sequence: 0 or a far-away one is fresh (as long
    as it was sent)."""
    install_peer(dp, index=1, last_sent=0)
    install_peer(dp, src=OTHER_IP, peer_id=2002, index=2, last_sent=0xC0000000)
    assert run(dp, response(seq=0)) == XDP_DROP
    assert run(dp, response(peer_ip=OTHER_IP, peer_id=2002, seq=0xC0000000)) == XDP_DROP
    assert dp.reason_counts()[Reason.RESPONSE_RECORDED] == (2, 2 * FRAME_LEN)
    assert dp.register_read("hb_last_seq", 1) == 0
    assert dp.register_read("hb_last_seq", 2) == 0xC0000000


def test_up_event_only_on_transition(dp: Datapath) -> None:
    install_peer(dp, last_sent=7)
    assert dp.poll_events(0) == []
    run(dp, response(seq=5))
    rx = dp.register_read("hb_last_rx_us", INDEX)
    assert dp.poll_events(100) == [PeerEvent(INDEX, PlaneState.UP, 5, rx)]
    run(dp, response(seq=6))
    assert dp.poll_events(0) == []
    # the fan-out declared it DOWN: the next fresh response raises UP again
    dp.register_write("hb_state", INDEX, PlaneState.DOWN)
    run(dp, response(seq=6))  # duplicate: not fresh, no event
    assert dp.poll_events(0) == []
    run(dp, response(seq=7))
    rx = dp.register_read("hb_last_rx_us", INDEX)
    assert dp.poll_events(100) == [PeerEvent(INDEX, PlaneState.UP, 7, rx)]
    assert dp.reason_counts()[Reason.PEER_UP_EVENT][0] == 2
    assert dp.register_read("hb_state", INDEX) == PlaneState.UP


def test_events_fd_becomes_readable(dp: Datapath) -> None:
    import select

    install_peer(dp)
    ep = dp.events_fd()
    assert select.select([ep], [], [], 0)[0] == []
    run(dp, response(seq=1))
    assert select.select([ep], [], [], 1.0)[0] == [ep]
    assert [e.state for e in dp.poll_events(0)] == [PlaneState.UP]


def test_many_peers_independent_slots(dp: Datapath) -> None:
    peers = [(ip_int(f"198.18.2.{i}"), 5000 + i, i) for i in range(MAX_PEERS)]
    for src, pid, index in peers:
        install_peer(dp, src, pid, index, nonce_key=NONCE_KEY + index, last_sent=100 + index)
    for src, pid, index in peers:
        run(dp, response(peer_ip=src, peer_id=pid, seq=100 + index, load=index,
                         nonce_key=NONCE_KEY + index))
    assert dp.register_read_all("hb_last_seq") == [100 + i for i in range(MAX_PEERS)]
    assert dp.register_read_all("hb_peer_load") == list(range(MAX_PEERS))
    assert dp.register_read_all("hb_state") == [PlaneState.UP] * MAX_PEERS
    events = dp.poll_events(100)
    assert sorted(e.index for e in events) == list(range(MAX_PEERS))
    # a peer's id answered from another peer's address is spoofed, not recorded
    run(dp, response(peer_ip=peers[0][0], peer_id=peers[1][1], seq=1000))
    assert dp.reason_counts()[Reason.SPOOFED] == (1, FRAME_LEN)
    # one peer's nonce is useless for another: its key differs
    run(dp, response(peer_ip=peers[1][0], peer_id=peers[1][1], seq=101, nonce_key=NONCE_KEY))
    assert dp.reason_counts()[Reason.BAD_NONCE] == (1, FRAME_LEN)


def test_deleted_peer_is_unknown_again(dp: Datapath) -> None:
    install_peer(dp)
    assert dp.peers_delete(PEER_IP, PEER_ID)
    run(dp, response())
    assert Reason.SPOOFED in dp.reason_counts()
    assert dp.peer_ids_delete(PEER_ID)
    run(dp, response())
    assert Reason.UNKNOWN_PEER in dp.reason_counts()
    assert not dp.peers_delete(PEER_IP, PEER_ID)


def test_reason_codes_match_bpf_header() -> None:
    """hb_consts.h and hbmon.protocol.Reason must agree (one contract, two languages)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "kernel/bpf/hb_consts.h").read_text()
    for reason in Reason:
        assert f"HB_{reason.name} = {reason.value}," in text, reason
    assert HEADER_LEN == 28
    assert f"#define HB_REASON_COUNT {REASON_COUNT}" in text
    assert f"#define HB_VERSION {VERSION} " in text
