"""The XDP peer farm (hbmon_topo.farm): table-driven in the kernel with BPF_PROG_TEST_RUN,
then on a real veth into a namespace: byte for byte against `hbmon responder` for the same
request frames, faults (mute, loss, status/load, addresses it does not own) on the wire."""

from __future__ import annotations

import ipaddress
import json
import math
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from hbmon.protocol import MsgType
from hbmon_topo.farm import FarmCounters, Fault, PassProgram, PeerFarm
from hbmon_topo.model import multi
from hbmon_topo.netns import NetnsLab

from .farm_lab import (
    EX,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    Wire,
    expected_response,
    ipv4_checksum,
    is_answer,
    sequence_of,
    udp_checksum_ok,
    with_ip_header,
    with_options,
    with_udp_checksum,
)

MONITOR_MAC = "02:48:42:ff:00:01"
FARM_MAC = "02:48:42:00:00:01"
PREFIX = "198.18.0.0/16"
MONITOR_IP = "198.18.0.1"


def req(*, mac_dst: str = FARM_MAC, **fields: object) -> bytes:
    """The doc's REQUEST example as an Ethernet frame, with some fields replaced."""
    packet = EX.with_fields(EX.REQUEST, **fields) if fields else EX.REQUEST
    return bytes(EX.frame(mac_dst, MONITOR_MAC, packet))


def req_ip(mangle: Callable[[bytes], bytes], **fields: object) -> bytes:
    """A request whose IPv4 packet is changed by `mangle`."""
    packet = EX.with_fields(EX.REQUEST, **fields) if fields else EX.REQUEST
    return bytes(EX.frame(FARM_MAC, MONITOR_MAC, mangle(packet)))


def eth(ethertype: int, body: bytes) -> bytes:
    return bytes(EX.mac_bytes(FARM_MAC) + EX.mac_bytes(MONITOR_MAC)) + struct.pack(
        "!H", ethertype) + body


# ---------------------------------------------------------------------------------------
# BPF_PROG_TEST_RUN, table-driven


@pytest.fixture(scope="module")
def loaded() -> Iterator[PeerFarm]:
    with PeerFarm(None, None, PREFIX, exclude=[MONITOR_IP], attach=False) as farm:
        yield farm


@pytest.fixture()
def farm(loaded: PeerFarm) -> PeerFarm:
    """The module's farm with no faults but the monitor's exclusion and zeroed counters."""
    for address in loaded.faults():
        if str(address) != MONITOR_IP:
            loaded.clear_fault(address)
    loaded.reset_counters()
    return loaded


@dataclass(frozen=True)
class Row:
    name: str
    frame: Callable[[], bytes]
    outcome: str | None  # FarmCounters field; None: not heartbeat traffic, not counted
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    answer: tuple[int, int] = (0, 0)  # (status, load) of the expected response


MUTED: dict[str, dict[str, Any]] = {"198.18.1.2": {"mute": True}}
ROWS = [
    # ---- answered: the response is exactly what docs/protocol.md prescribes
    Row("doc-example", lambda: req(), "answered",
        {"198.18.1.2": {"status": 1, "load": 37}}, (1, 37)),
    Row("no-entry-defaults", lambda: req(), "answered"),
    Row("extreme-values", lambda: req(peer_id=0xFFFFFFFF, sequence=0xFFFFFFFF,
                                      nonce=0xFFFFFFFF, tx_timestamp_us=2**64 - 1), "answered"),
    Row("nonce-echoed", lambda: req(nonce=0x5A5A_C3C3), "answered"),
    Row("nonce-zero", lambda: req(nonce=0), "answered"),
    Row("other-source-port", lambda: req(sport=40000), "answered"),
    Row("other-monitor-address", lambda: req(src="198.18.0.77"), "answered"),
    Row("last-address-of-prefix", lambda: req(dst="198.18.255.254"), "answered"),
    Row("request-carries-status-load-reserved", lambda: req(status=2, load=99, reserved=7),
        "answered", {"198.18.1.2": {"status": 0, "load": 5}}, (0, 5)),
    Row("draining-unknown-load", lambda: req(), "answered",
        {"198.18.1.2": {"status": 2, "load": 255}}, (2, 255)),
    Row("ip-fields-normalised", lambda: req_ip(
        lambda p: with_ip_header(p, tos=0xB8, ident=0x1234, frag=0, ttl=3)), "answered"),
    Row("valid-udp-checksum", lambda: req_ip(with_udp_checksum), "answered"),
    Row("loss-zero-entry", lambda: req(), "answered",
        {"198.18.1.2": {"loss": 0.0, "load": 1}}, (0, 1)),
    Row("unmuted-entry", lambda: req(), "answered", {"198.18.1.2": {"mute": False}}),
    Row("fault-of-another-address", lambda: req(), "answered", {"198.18.1.3": {"mute": True}}),
    # ---- faults: consumed, no answer
    Row("muted", lambda: req(), "muted", MUTED),
    Row("muted-beats-loss", lambda: req(), "muted", {"198.18.1.2": {"mute": True, "loss": 1.0}}),
    Row("loss-one", lambda: req(), "lost", {"198.18.1.2": {"loss": 1.0}}),
    # ---- not the farm's address: passed to the host stack
    Row("outside-prefix", lambda: req(dst="198.19.0.1"), "outside"),
    Row("outside-ten", lambda: req(dst="10.0.0.1"), "outside"),
    Row("excluded-monitor-address", lambda: req(dst=MONITOR_IP), "outside"),
    Row("absent-at-run-time", lambda: req(), "outside", {"198.18.1.2": {"absent": True}}),
    # ---- UDP to 9190 but not a valid REQUEST: passed, counted, never answered
    Row("bad-magic", lambda: req(magic=0x4843), "not_request"),
    Row("bad-version-0", lambda: req(version=0), "not_request"),
    Row("bad-version-1", lambda: req(version=1), "not_request"),  # a v1 header, v2 length
    Row("bad-version-3", lambda: req(version=3), "not_request"),
    Row("type-response", lambda: req(msg_type=MsgType.RESPONSE), "not_request"),
    Row("type-0", lambda: req(msg_type=0), "not_request"),
    Row("type-3", lambda: req(msg_type=3), "not_request"),
    Row("truncated-27", lambda: req_ip(lambda p: EX.with_payload_length(p, 27)), "not_request"),
    Row("v1-length-24", lambda: req_ip(lambda p: EX.with_payload_length(p, 24)), "not_request"),
    Row("too-long-29", lambda: req_ip(lambda p: EX.with_payload_length(p, 29)), "not_request"),
    Row("empty", lambda: req_ip(lambda p: EX.with_payload_length(p, 0)), "not_request"),
    Row("udp-length-field", lambda: req_ip(lambda p: EX.with_lengths(p, udp_len=40)),
        "not_request"),
    Row("ip-length-field", lambda: req_ip(lambda p: EX.with_lengths(p, ip_total_len=60)),
        "not_request"),
    Row("bad-ipv4-checksum", lambda: req_ip(lambda p: with_ip_header(p, bad_checksum=True)),
        "not_request"),
    Row("udp-checksum-not-verified", lambda: req_ip(lambda p: with_udp_checksum(p, 0x1234)),
        "answered"),
    Row("bad-magic-muted", lambda: req(magic=0), "not_request", MUTED),
    # ---- not heartbeat traffic at all: passed untouched, not counted
    Row("to-9191", lambda: req(dport=9191), None),
    Row("to-53", lambda: req(dport=53), None),
    Row("first-fragment", lambda: req_ip(lambda p: with_ip_header(p, frag=0x2000)), None),
    Row("later-fragment", lambda: req_ip(lambda p: with_ip_header(p, frag=0x0010)), None),
    Row("ipv4-options", lambda: req_ip(with_options), None),
    Row("tcp-to-9190", lambda: req_ip(lambda p: with_ip_header(p, proto=6)), None),
    Row("broadcast-mac", lambda: req(mac_dst="ff:ff:ff:ff:ff:ff"), None),
    Row("multicast-mac", lambda: req(mac_dst="01:00:5e:12:01:02"), None),
    Row("arp", lambda: eth(0x0806, bytes(28)), None),
    Row("ipv6", lambda: eth(0x86DD, bytes(60)), None),
    Row("ipv4-header-cut", lambda: req()[:14 + 12], None),
    Row("udp-header-cut", lambda: req()[:14 + 20 + 4], None),
    Row("heartbeat-cut", lambda: req()[:14 + 28 + 10], "not_request"),
]

RETVAL = {"answered": XDP_TX, "muted": XDP_DROP, "lost": XDP_DROP, "not_request": XDP_PASS,
          "outside": XDP_PASS, None: XDP_PASS}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_outcome(farm: PeerFarm, row: Row) -> None:
    for address, settings in row.faults.items():
        farm.set_fault(address, **settings)
    frame = row.frame()
    result = farm.test_run(frame)
    assert result.retval == RETVAL[row.outcome]
    expected = {name: 0 for name in FarmCounters.__dataclass_fields__}
    if row.outcome is not None:
        expected[row.outcome] = 1
    assert farm.counters() == FarmCounters(**expected)
    if row.outcome == "answered":
        assert result.data_out == expected_response(frame, *row.answer)
    else:
        assert result.data_out == frame, "what the farm does not answer it leaves untouched"


def test_doc_example_is_the_rule() -> None:
    """The independent rule the table checks against gives the doc's RESPONSE bytes."""
    frame = req()
    assert expected_response(frame, 1, 37) == EX.frame(MONITOR_MAC, FARM_MAC, EX.RESPONSE)


def test_default_status_and_load_of_the_farm() -> None:
    with PeerFarm(None, None, "198.18.1.0/24", default_status=1, default_load=37,
                  attach=False) as farm:
        out = farm.test_run(req())
        assert out.retval == XDP_TX
        assert out.data_out == EX.frame(MONITOR_MAC, FARM_MAC, EX.RESPONSE)
        assert farm.test_run(req(dst="198.18.2.1")).retval == XDP_PASS  # outside the /24
        assert farm.counters() == FarmCounters(1, 0, 0, 0, 1)


def test_set_fault_merges_and_clear_restores(farm: PeerFarm) -> None:
    assert farm.set_fault("198.18.1.2", status=1) == Fault(status=1)
    assert farm.set_fault("198.18.1.2", load=80, loss=0.25) == Fault(loss=0.25, status=1,
                                                                      load=80)
    assert farm.fault("198.18.1.2") == Fault(loss=0.25, status=1, load=80)
    assert farm.clear_fault("198.18.1.2") is True
    assert farm.clear_fault("198.18.1.2") is False
    assert farm.fault("198.18.1.2") == Fault()
    assert farm.test_run(req()).data_out == expected_response(req(), 0, 0)
    farm.set_faults({"198.18.1.5": Fault(mute=True),
                     ipaddress.IPv4Address("198.18.1.6"): Fault(load=3)})
    assert farm.faults()[ipaddress.IPv4Address("198.18.1.5")].mute


@pytest.mark.parametrize("bad", [{"status": 3}, {"load": 256}, {"load": -1}, {"loss": 1.5},
                                 {"loss": -0.1}])
def test_invalid_settings_are_refused(farm: PeerFarm, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        farm.set_fault("198.18.1.2", **bad)
    assert farm.fault("198.18.1.2") == Fault(), "nothing written"


def test_prefix_must_be_a_network() -> None:
    with pytest.raises(ValueError):
        PeerFarm(None, None, "198.18.1.2/16", attach=False)


# ---------------------------------------------------------------------------------------
# on the wire: a veth from the root namespace into a namespace holding the peer addresses

@dataclass
class WireLab:
    lab: NetnsLab
    wire: Wire
    farm_ns: str

    def farm(self, **kw: Any) -> PeerFarm:
        return PeerFarm("eth0", self.farm_ns, PREFIX, exclude=[MONITOR_IP], **kw)

    def exchange(self, frames: list[bytes], marker_seq: int) -> dict[int, bytes]:
        """Send `frames`, then a valid marker request; answers by sequence.

        Frames travel one veth queue and one responder in order, so once the marker's
        answer is in, an answer to any earlier frame would have been seen too.
        """
        self.wire.drain()
        for frame in frames:
            self.wire.send(frame)
        self.wire.send(req(sequence=marker_seq))
        got = self.wire.receive(lambda a: any(sequence_of(f) == marker_seq for f in a))
        answers = {sequence_of(f): f for f in got}
        assert marker_seq in answers, "the marker request was not answered"
        del answers[marker_seq]
        return answers


@pytest.fixture(scope="module")
def wire_lab() -> Iterator[WireLab]:
    lab = NetnsLab(multi(4))  # root hb<rid>m1 (monitor MAC) <-> eth0 198.18.1.1-4 (FARM_MAC)
    lab.start()
    try:
        iface = lab.monitor_iface(1)
        # native XDP_TX into a veth is only received when the receiving end runs XDP
        with PassProgram(iface):
            wire = Wire(iface)
            try:
                yield WireLab(lab, wire, str(lab.host_ns("peers")))
            finally:
                wire.close()
    finally:
        lab.stop()


# valid requests: (name, frame) each with its own sequence number
def _variants() -> list[tuple[str, bytes]]:
    return [
        ("doc-example", req(sequence=101)),
        ("nonce", req(sequence=109, nonce=0xDEAD_BEEF)),
        ("other-peer", req(sequence=102, dst="198.18.1.3", peer_id=0xFFFFFFFF)),
        ("big-timestamp", req(sequence=103, tx_timestamp_us=2**64 - 2)),
        ("source-port-40000", req(sequence=104, sport=40000)),
        ("request-status-load-reserved", req(sequence=105, status=2, load=9, reserved=0xFFFF)),
        ("ip-fields", req_ip(lambda p: with_ip_header(p, tos=0x10, ident=77, frag=0, ttl=9),
                             sequence=106)),
        ("valid-udp-checksum", req_ip(with_udp_checksum, sequence=107)),
        ("last-address", req(sequence=108, dst="198.18.1.4")),
    ]


def _invalid() -> list[tuple[str, bytes]]:
    return [
        ("bad-magic", req(sequence=201, magic=0x1111)),
        ("bad-version", req(sequence=202, version=1)),
        ("type-response", req(sequence=203, msg_type=MsgType.RESPONSE)),
        ("too-long", req_ip(lambda p: EX.with_payload_length(p, 30), sequence=204)),
        ("too-short", req_ip(lambda p: EX.with_payload_length(p, 24), sequence=205)),
        ("to-9191", req(sequence=206, dport=9191)),
        ("first-fragment", req_ip(lambda p: with_ip_header(p, frag=0x2000), sequence=207)),
        ("later-fragment", req_ip(lambda p: with_ip_header(p, frag=0x0003), sequence=208)),
    ]


@pytest.mark.netns
def test_matches_hbmon_responder_byte_for_byte(wire_lab: WireLab) -> None:
    variants, invalid = _variants(), _invalid()
    frames = [f for _, f in variants] + [f for _, f in invalid]

    # 1. hbmon responder (the reference) in the namespace, reporting degraded at 37 %; UDP
    #    checksum offload off, else a veth carries only the pseudo-header sum on the wire
    wire_lab.lab.run("peers", ["ethtool", "-K", "eth0", "tx", "off"])
    wire_lab.lab.start_responders(["--status", "degraded", "--load", "37"])
    try:
        reference = wire_lab.exchange(frames, marker_seq=999)
    finally:
        for _host, proc in wire_lab.lab.processes:
            wire_lab.lab.stop_process(proc)

    # 2. the farm, same frames, same defaults
    with wire_lab.farm(default_status=1, default_load=37) as farm:
        answers = wire_lab.exchange(frames, marker_seq=998)
        counts = farm.counters()

    for name, frame in variants:
        seq = sequence_of(frame)
        assert seq in reference, f"{name}: hbmon responder did not answer"
        assert seq in answers, f"{name}: the farm did not answer"
        ref, got = reference[seq], answers[seq]
        # Identical: Ethernet, IPv4 version/IHL, TOS 0, total length, DF, TTL 255, protocol,
        # addresses, UDP ports and length, and the 28 heartbeat bytes (nonce echoed).
        free = {18, 19, 24, 25, 40, 41}  # IPv4 id and (so) its checksum, UDP checksum
        differ = [i for i in range(len(ref)) if i not in free and got[i] != ref[i]]
        assert len(got) == len(ref) and not differ, f"{name}: bytes {differ} differ"
        # Fields the protocol leaves to the sender: Linux gives an unconnected UDP socket's
        # DF datagrams a per-packet IPv4 id and a valid UDP checksum; the farm writes id 0
        # (as docs/protocol.md's example) and no UDP checksum (0, "responders may send 0").
        assert got[18:20] == b"\0\0" and got[40:42] == b"\0\0"
        assert ipv4_checksum(got[14:34]) == 0 and ipv4_checksum(ref[14:34]) == 0
        assert udp_checksum_ok(ref[14:])
        assert got == expected_response(frame, 1, 37), name
        assert ref[22] == got[22] == 255, f"{name}: TTL (RFC 5082)"
        assert ref[54:58] == got[54:58] == frame[54:58], f"{name}: nonce echoed"
    for name, frame in invalid:
        seq = sequence_of(frame)
        assert seq not in reference, f"{name}: hbmon responder answered"
        assert seq not in answers, f"{name}: the farm answered"
    # every valid request and the marker answered; invalid ones to 9190 counted as such
    assert counts.answered == len(variants) + 1
    assert counts.not_request == 5  # magic, version, type, two lengths
    assert counts.muted == counts.lost == counts.outside == 0


@pytest.mark.netns
def test_faults_on_the_wire(wire_lab: WireLab) -> None:
    with wire_lab.farm() as farm:
        farm.set_fault("198.18.1.3", mute=True)
        farm.set_fault("198.18.1.4", status=2, load=90)
        frames = [
            req(sequence=301, dst="198.18.1.3"),          # muted
            req(sequence=302, dst="198.18.1.4"),          # draining, 90
            req(sequence=303, dst="198.19.0.5"),          # outside the prefix
            req(sequence=304, dst=MONITOR_IP),            # excluded
            req(sequence=305, dst="198.18.200.7"),        # no entry, no address: defaults
        ]
        answers = wire_lab.exchange(frames, marker_seq=399)
        assert set(answers) == {302, 305}
        assert answers[302] == expected_response(frames[1], 2, 90)
        assert answers[305] == expected_response(frames[4], 0, 0)
        assert farm.counters() == FarmCounters(answered=3, muted=1, lost=0, not_request=0,
                                               outside=2)
        # unmuted: answers again
        farm.set_fault("198.18.1.3", mute=False)
        answers = wire_lab.exchange([req(sequence=306, dst="198.18.1.3")], marker_seq=398)
        assert set(answers) == {306}


@pytest.mark.netns
def test_loss_rate_on_the_wire(wire_lab: WireLab) -> None:
    p, n, burst = 0.25, 8000, 128
    with wire_lab.farm() as farm:
        farm.set_fault("198.18.1.2", loss=p)
        wire_lab.wire.drain()
        received: list[bytes] = []
        for start in range(0, n, burst):
            end = min(n, start + burst)
            for seq in range(start, end):
                wire_lab.wire.send(req(sequence=10_000 + seq))
            # pace by the farm's own counters: never more than one burst in the veth ring
            assert _wait(partial(_seen_at_least, farm, end)), f"farm saw {_seen(farm)} of {end}"
            received += wire_lab.wire.receive(lambda a: False, timeout_s=0)
        c = farm.counters()
        assert c.answered + c.lost == n
        rate = c.lost / n
        # binomial: 6 standard deviations (a false failure about once in 10^9 runs)
        bound = 6 * math.sqrt(p * (1 - p) / n)
        assert abs(rate - p) < bound, f"loss {rate:.4f}, expected {p} +- {bound:.4f}"
        missing = c.answered - len(received)
        received += wire_lab.wire.receive(lambda a: len(a) >= missing)
        assert len(received) == c.answered, "every answer counted reached the monitor side"
        assert all(is_answer(f) for f in received)


def _seen(farm: PeerFarm) -> int:
    c = farm.counters()
    return c.answered + c.lost


def _seen_at_least(farm: PeerFarm, n: int) -> bool:
    return _seen(farm) >= n


def _wait(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # polling interval, not a fixed wait
    return True


def test_ipv4_checksum_helper_agrees_with_doc() -> None:
    """Guards the test's own rule: the doc's packets carry valid header checksums."""
    assert ipv4_checksum(EX.REQUEST[:20]) == 0
    assert ipv4_checksum(EX.RESPONSE[:20]) == 0


@pytest.mark.netns
def test_cli_runs_a_farm_until_sigterm(wire_lab: WireLab) -> None:
    argv = [sys.executable, "-m", "hbmon_topo.farm", "--ifname", "eth0", "--netns",
            wire_lab.farm_ns, "--prefix", PREFIX, "--exclude", MONITOR_IP,
            "--mute", "198.18.1.3", "--status", "198.18.1.4=2", "--interval", "60"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the farm is attached
        assert json.loads(first)["answered"] == 0, first
        frames = [req(sequence=501, dst="198.18.1.3"), req(sequence=502, dst="198.18.1.4")]
        answers = wire_lab.exchange(frames, marker_seq=599)
        assert set(answers) == {502}
        assert answers[502] == expected_response(frames[1], 2, 0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"answered": 2, "muted": 1, "lost": 0,
                                                "not_request": 0, "outside": 0}
    link = subprocess.run(["ip", "-n", wire_lab.farm_ns, "-j", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    assert "xdp" not in json.loads(link)[0], "the farm detached on exit"


def test_bench_generator_writes_fresh_requests(loaded: PeerFarm) -> None:
    """hb_farm_gen (bench/bench_farm.py): whatever the recycled frame holds, it becomes the
    template with the next sequence and the next of n_addrs destinations, redirected."""
    from hbmon_kernel import libbpf as lb
    from hbmon_kernel.datapath import default_bpf_dir

    XDP_REDIRECT = 4
    gen = lb.BpfObject(default_bpf_dir() / "hb_farm.o")
    try:
        gen.load()
        fd = gen.program_fd("hb_farm_gen")
        template = req(sequence=0, dst="198.18.0.2")
        # struct farm_gen: ifindex, n_addrs, seq, pad, frame[HB_FRAME_LEN + 6]
        gen.map("farm_gen").update(struct.pack("=I", 0), struct.pack(
            f"=IIII{len(template) + 6}s", 1, 3, 41, 0, template))
        stale = expected_response(template, 2, 9)  # what the farm left in the page
        outs = [lb.prog_test_run(fd, stale) for _ in range(4)]
    finally:
        gen.close()
    assert [o.retval for o in outs] == [XDP_REDIRECT] * 4
    for i, out in enumerate(outs):
        seq = 41 + i
        dst = f"198.18.0.{2 + seq % 3}"
        assert out.data_out == req(sequence=seq, dst=dst), f"frame {i}"
        assert loaded.test_run(out.data_out).retval == XDP_TX
