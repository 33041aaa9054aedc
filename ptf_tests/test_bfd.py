"""BFD (issue 13, docs/bfd.md): control packets received (checks 1-7 in order, the session's
slot and bfd_* registers, the bfd_event_t digest) and sent (the group-2 fan-out: one control
packet per due session, your discriminator learned, F after a Poll, detection time).

Frames are built with hbmon.bfd_packet (the one codec); each malformed case is also run
through its `classify`, so the codec and the data plane are held to the same reason. A
session is programmed as docs/bfd.md "P4Info additions" says: one bfd_sessions entry (our
discriminator), one bfd_peers entry (remote address, port), one bfd_requests entry and one
replica (port, instance = index) in group 2.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import hb_examples as ex
from hb_base import MONITOR_IP, MONITOR_MAC, SWITCH_MAC, HbTest, ipv4_of, peer_mac
from hbmon.bfd_packet import (
    FANOUT_GROUP,
    PORT,
    SEND_TTL,
    SOURCE_PORT_BASE,
    BfdError,
    ControlPacket,
    Flag,
    State,
    classify,
    source_port,
    template_payload,
)
from hbmon.p4 import DigestEntry, MulticastGroup, Replica, TableEntry
from hbmon.protocol import BFD_REGISTERS, Reason

A_IP, B_IP = "198.18.2.2", "198.18.2.3"
A_DISC, B_DISC = 0x5A5A0001, 0x5A5A0002  # our discriminators (the bfd_sessions keys)
REMOTE_DISC = 0x0BFD0001  # the remote's (its my_disc)
SLOW_US = 30_000_000  # a TX interval no tick of a test ever reaches (due-gating is checked)
# The template's tick: 0 = this round only (docs/dataplane.md "The round period in the
# template"; a kernel target would otherwise go on sending rounds by itself, across tests).
TICK_US = 0


def bfd_ipv4(payload: bytes, *, src: str, dst: str = MONITOR_IP, ttl: int = SEND_TTL,
             sport: int = SOURCE_PORT_BASE, udp_len: int | None = None) -> bytes:
    """IPv4 (no options, DF, valid checksum) / UDP to 3784 (checksum 0) / `payload`; the UDP
    length field may lie (`udp_len`)."""
    length = 8 + len(payload)
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, ttl, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed))
    struct.pack_into("!H", header, 10, ex.ipv4_checksum(bytes(header)))
    udp = struct.pack("!HHHH", sport, PORT, length if udp_len is None else udp_len, 0)
    return bytes(header) + udp + payload


def control(**fields: Any) -> bytes:
    """A remote's control packet payload: Down, its discriminator, ours unknown (0)."""
    return ControlPacket(**{"state": State.DOWN, "my_disc": REMOTE_DISC, **fields}).pack()


def template(tick_us: int = TICK_US) -> bytes:
    """The group-2 template of docs/bfd.md "Transmit" (what the controller sends)."""
    return ex.frame("00:00:00:00:00:00", MONITOR_MAC,
                    bfd_ipv4(template_payload(tick_us), src=MONITOR_IP, dst="0.0.0.0"))


class BfdTest(HbTest):
    """HbTest plus BFD sessions, their registers and digests. (No runTest: not collected.)"""

    def setUp(self) -> None:
        HbTest.setUp(self)
        # the slot is hb_* and bfd_* registers alike (hbmon.dataplane.registers.slot_registers):
        # use_slot and tearDown zero both, and slot()/snapshot() read both
        missing = set(BFD_REGISTERS) - set(self.s.registers.names)
        self.assertFalse(missing, f"register access lacks {sorted(missing)}")

    def add_session(self, index: int, *, address: str, port: int, my_disc: int,
                    state: State = State.DOWN, diag: int = 0, flags: int = 0,
                    detect_mult: int = 3, desired_min_tx_us: int = 1_000_000,
                    required_min_rx_us: int = 1_000_000, tx_interval_us: int = SLOW_US,
                    detect_time_us: int = 0, requests: bool = True) -> dict[str, Any]:
        """A session as docs/bfd.md programs it; returns the bfd_control params."""
        self.use_slot(index)
        self.insert(f"bfd_sessions {my_disc:#x}", TableEntry(
            "HbIngress.bfd_sessions", {"your_disc": my_disc}, "HbIngress.set_bfd_session",
            {"index": index}))
        self.insert(f"bfd_peers {address}/{port}", TableEntry(
            "HbIngress.bfd_peers", {"src_addr": address, "port": port},
            "HbIngress.set_bfd_session", {"index": index}))
        params: dict[str, Any] = {"dst_mac": peer_mac(index), "dst_addr": address,
                  "src_port": source_port(index), "my_disc": my_disc, "state": int(state),
                  "diag": diag, "flags": flags, "detect_mult": detect_mult,
                  "desired_min_tx_us": desired_min_tx_us,
                  "required_min_rx_us": required_min_rx_us, "tx_interval_us": tx_interval_us,
                  "detect_time_us": detect_time_us}
        if requests:
            self.insert(f"bfd_requests {index}", TableEntry(
                "HbEgress.bfd_requests", {"index": index}, "HbEgress.bfd_control", params))
        return params

    def add_bfd_group(self, replicas: list[tuple[int, int]]) -> None:
        group = MulticastGroup(FANOUT_GROUP, tuple(Replica(p, i) for p, i in replicas))
        self.insert("BFD fan-out group", group.encode(self.s.schema))

    def enable_bfd_digests(self) -> None:
        self.enable_digests()  # peer_event_t: the DOWN of detection
        self.insert("bfd digest config", DigestEntry("bfd_event_t", max_timeout_ns=0,
                                                     max_list_size=1, ack_timeout_ns=10**9))

    def send_template(self) -> None:
        self.packet_out(template(), mcast_grp=FANOUT_GROUP)

    def send_bfd(self, port: int, payload: bytes, *, src: str = A_IP, **kw: Any) -> bytes:
        frame = ex.frame(SWITCH_MAC, peer_mac(0xEE), bfd_ipv4(payload, src=src, **kw))
        self.send(port, frame)
        return frame

    def expected_control(self, params: dict[str, Any], *, your_disc: int = 0,
                         final: bool = False) -> bytes:
        """The frame a session's replica must become (docs/bfd.md "Transmit", rewrite)."""
        payload = ControlPacket(
            State(params["state"]), params["my_disc"], your_disc, params["diag"],
            params["flags"] | (Flag.F if final else 0), params["detect_mult"],
            params["desired_min_tx_us"], params["required_min_rx_us"], 0).pack()
        return ex.frame(str(params["dst_mac"]), MONITOR_MAC, bfd_ipv4(
            payload, src=MONITOR_IP, dst=str(params["dst_addr"]), sport=params["src_port"]))

    def bfd_digest(self, index: int) -> dict[str, int]:
        msg = self.next_digest(index)
        self.assertEqual(msg.name, "bfd_event_t", f"expected bfd_event_t, got {msg}")
        self.ack(msg)
        self.assertEqual(len(msg.data), 1)
        return msg.data[0]

    def down_digest(self, index: int) -> dict[str, int]:
        msg = self.next_digest(index)
        self.assertEqual(msg.name, "peer_event_t", f"expected peer_event_t DOWN, got {msg}")
        self.ack(msg)
        self.assertEqual(len(msg.data), 1)
        return msg.data[0]


# -------------------------------------------------------------------------------------------
# receive: one test per reason of checks 1-6 (docs/bfd.md "Receive")


class _Discarded(BfdTest):
    """One discarded control packet: counted by its reason only, no register (hb_* or bfd_*)
    touched, nothing forwarded. The session it would otherwise reach is programmed (A, port
    1, our discriminator A_DISC), so only the check under test stands in its way."""

    reason: Reason
    payload: bytes
    kw: dict[str, Any]

    def check(self) -> None:
        p = self.s.ports
        self.add_session(40, address=A_IP, port=p[0], my_disc=A_DISC)
        self.add_l2(SWITCH_MAC, p[2])  # a control packet that were forwarded shows up here
        kw = dict(self.kw)
        port = p[int(kw.pop("port_no", 0))]
        # checks 1-4 are the codec's too (all but a lying UDP length: it sees a payload only)
        if self.reason <= Reason.BFD_BAD_TTL and "udp_len" not in kw:
            with self.assertRaises(BfdError) as caught:
                classify(self.payload, kw.get("ttl", SEND_TTL))
            self.assertEqual(caught.exception.reason, self.reason, "hbmon.bfd_packet disagrees")
        regs_before = self.snapshot()
        before = self.reasons()
        self.send_bfd(port, self.payload, **kw)
        self.wait_reasons(before, {self.reason: 1})
        self.assertEqual(self.snapshot(), regs_before)
        self.assert_nothing_else(p, sender=p[3])


_UP = {"state": State.UP, "your_disc": A_DISC}
DISCARDED: dict[str, tuple[Reason, bytes, dict[str, Any]]] = {
    "TruncatedEmpty": (Reason.BFD_TRUNCATED, b"", {}),
    "Truncated23": (Reason.BFD_TRUNCATED, control(**_UP)[:23], {}),
    "TruncatedBeatsBadVersion": (
        Reason.BFD_TRUNCATED, control(version=0, **_UP)[:12], {}),
    "BadVersion0": (Reason.BFD_BAD_VERSION, control(version=0, **_UP), {}),
    "BadVersion2": (Reason.BFD_BAD_VERSION, control(version=2, **_UP), {}),
    "BadVersionBeatsMalformed": (
        Reason.BFD_BAD_VERSION, control(version=7, detect_mult=0, **_UP), {}),
    "MalformedLength23": (Reason.BFD_MALFORMED, control(length=23, **_UP), {}),
    "MalformedLengthBeyondUdp": (Reason.BFD_MALFORMED, control(length=25, **_UP), {}),
    # the size is right, the UDP length field says 22 bytes of payload: length 24 > 22
    "MalformedUdpLengthField": (Reason.BFD_MALFORMED, control(**_UP), {"udp_len": 30}),
    "MalformedDetectMult0": (Reason.BFD_MALFORMED, control(detect_mult=0, **_UP), {}),
    "MalformedMultipoint": (Reason.BFD_MALFORMED, control(flags=Flag.M, **_UP), {}),
    "MalformedAuthentication": (Reason.BFD_MALFORMED, control(flags=Flag.A, **_UP), {}),
    "MalformedMyDisc0": (Reason.BFD_MALFORMED, control(my_disc=0, your_disc=A_DISC), {}),
    "MalformedInitYourDisc0": (Reason.BFD_MALFORMED, control(state=State.INIT), {}),
    "MalformedUpYourDisc0": (Reason.BFD_MALFORMED, control(state=State.UP), {}),
    "MalformedBeatsBadTtl": (
        Reason.BFD_MALFORMED, control(detect_mult=0, **_UP), {"ttl": 254}),
    "BadTtl254": (Reason.BFD_BAD_TTL, control(**_UP), {"ttl": 254}),
    "BadTtl1": (Reason.BFD_BAD_TTL, control(your_disc=A_DISC), {"ttl": 1}),
    "BadTtlBeatsUnknownDiscriminator": (
        Reason.BFD_BAD_TTL, control(state=State.UP, your_disc=0x777), {"ttl": 64}),
    "UnknownDiscriminator": (
        Reason.BFD_UNKNOWN_DISCRIMINATOR, control(state=State.UP, your_disc=A_DISC + 1), {}),
    # from the session's own address and port: your_disc != 0 is looked up by discriminator
    # only (check 5), never by (source, port)
    "UnknownDiscriminatorFromKnownPeer": (
        Reason.BFD_UNKNOWN_DISCRIMINATOR, control(state=State.INIT, your_disc=0x777), {}),
    "UnknownPeerSource": (Reason.BFD_UNKNOWN_PEER, control(), {"src": "198.18.2.99"}),
    # RFC 5881 section 3: a single-hop session is (source, interface): A on another port
    "UnknownPeerPort": (Reason.BFD_UNKNOWN_PEER, control(), {"port_no": 1}),
}

for _name, (_reason, _payload, _kw) in DISCARDED.items():
    globals()[f"Bfd{_name}"] = type(
        f"Bfd{_name}", (_Discarded,),
        {"reason": _reason, "payload": _payload, "kw": _kw, "runTest": _Discarded.check,
         "__doc__": f"BFD control packet ({_name}): counted {_reason.name}, nothing changes."},
    )
del _name, _reason, _payload, _kw


# -------------------------------------------------------------------------------------------
# receive: recorded


class BfdRecordedByDiscriminator(BfdTest):
    """your_disc = our discriminator: recorded in exactly its slot (hb_rx_count,
    hb_last_rx_us, hb_state UP, the bfd_* registers = the packet's fields), consumed, a
    bfd_event_t digest with the packet's fields (and no peer_event_t UP); an identical second
    packet is recorded but raises nothing; a changed field, or F, raises again; P alone
    raises nothing but sets bfd_final_due."""

    def runTest(self) -> None:
        p = self.s.ports
        index = 41
        self.add_session(index, address=A_IP, port=p[0], my_disc=A_DISC)
        self.add_session(42, address=B_IP, port=p[1], my_disc=B_DISC)
        self.add_l2(SWITCH_MAC, p[2])
        self.enable_bfd_digests()
        regs_before = self.snapshot()
        before = self.reasons()

        pkt = dict(state=State.INIT, your_disc=A_DISC, diag=3, detect_mult=5,
                   desired_min_tx_us=300_000, required_min_rx_us=250_000)
        self.send_bfd(p[0], control(**pkt))
        self.wait_reasons(before, {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1})
        event = self.bfd_digest(index)
        after = self.snapshot()
        self.assert_changed_only(regs_before, after, {index})
        slot = {name: cells[index] for name, cells in after.items()}
        rx_us = slot["hb_last_rx_us"]
        self.assertGreater(rx_us, 0)
        self.assertEqual(slot, {
            **dict.fromkeys(self.s.registers.names, 0), "hb_rx_count": 1,
            "hb_last_rx_us": rx_us, "hb_state": 1,
            "bfd_remote_state": State.INIT, "bfd_remote_diag": 3, "bfd_remote_mult": 5,
            "bfd_remote_disc": REMOTE_DISC, "bfd_remote_min_tx_us": 300_000,
            "bfd_remote_min_rx_us": 250_000, "bfd_final_due": 0})
        self.assertEqual(event, {
            "index": index, "state": State.INIT, "diag": 3, "flags": 0, "detect_mult": 5,
            "my_disc": REMOTE_DISC, "desired_min_tx_us": 300_000,
            "required_min_rx_us": 250_000, "time_us": rx_us})
        self.assert_nothing_else(p, sender=p[3])

        # the same packet again: recorded, nothing to tell the controller
        counted = self.send_and_count(pkt, {Reason.BFD_RECORDED: 1})
        slot = self.slot(index)
        self.assertEqual((slot["hb_rx_count"], slot["hb_state"]), (2, 1))
        self.assertGreaterEqual(slot["hb_last_rx_us"], rx_us)
        self.no_digest_pending(index)

        # each field the controller acts on raises the digest when it changes
        for change in ({"state": State.UP}, {"diag": 0}, {"detect_mult": 3},
                       {"desired_min_tx_us": 50_000}, {"required_min_rx_us": 60_000}):
            pkt.update(change)
            counted = self.send_and_count(pkt, {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1},
                                          counted)
            event = self.bfd_digest(index)
            key = next(iter(change))
            self.assertEqual(event[key], change[key], f"digest after {change}")
        # the remote's discriminator too (a remote that restarted)
        counted = self.send_and_count({**pkt, "my_disc": REMOTE_DISC + 1},
                                      {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1}, counted)
        self.assertEqual(self.bfd_digest(index)["my_disc"], REMOTE_DISC + 1)
        self.assertEqual(self.s.registers.read("bfd_remote_disc", index), REMOTE_DISC + 1)

        # P alone: the data plane owes a Final, the controller is not told
        pkt["my_disc"] = REMOTE_DISC + 1
        counted = self.send_and_count({**pkt, "flags": Flag.P}, {Reason.BFD_RECORDED: 1},
                                      counted)
        self.assertEqual(self.s.registers.read("bfd_final_due", index), 1)
        self.no_digest_pending(index)
        # F (the end of our Poll Sequence) always raises, with the flags as received
        counted = self.send_and_count({**pkt, "flags": Flag.F | Flag.C},
                                      {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1}, counted)
        self.assertEqual(self.bfd_digest(index)["flags"], Flag.F | Flag.C)
        self.no_digest_pending(index)
        self.assertEqual(self.slot(42), dict.fromkeys(self.s.registers.names, 0))

    def send_and_count(self, pkt: dict[str, Any], expected: dict[Reason, int],
                       before: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        before = before if before is not None else self.reasons()
        self.send_bfd(self.s.ports[0], control(**pkt))
        return self.wait_reasons(before, expected)


class BfdRecordedByPeer(BfdTest):
    """your_disc = 0 (the remote does not know us yet): found by (source, ingress port) in
    bfd_peers and recorded in that slot; an hb_state that is not UP raises the digest even
    when the fields equal the (zeroed) registers."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_session(43, address=A_IP, port=p[0], my_disc=A_DISC)
        self.add_session(44, address=B_IP, port=p[1], my_disc=B_DISC)
        self.enable_bfd_digests()
        regs_before = self.snapshot()
        before = self.reasons()
        self.send_bfd(p[1], control(state=State.ADMIN_DOWN, diag=7, desired_min_tx_us=0,
                                    required_min_rx_us=0), src=B_IP)
        self.wait_reasons(before, {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1})
        event = self.bfd_digest(44)
        self.assert_changed_only(regs_before, self.snapshot(), {44})
        slot = self.slot(44)
        self.assertEqual((slot["hb_rx_count"], slot["hb_state"], slot["bfd_remote_state"],
                          slot["bfd_remote_diag"], slot["bfd_remote_disc"]),
                         (1, 1, State.ADMIN_DOWN, 7, REMOTE_DISC))
        self.assertEqual((event["index"], event["state"], event["diag"], event["time_us"]),
                         (44, State.ADMIN_DOWN, 7, slot["hb_last_rx_us"]))
        self.no_digest_pending(43)


# -------------------------------------------------------------------------------------------
# transmit: the group-2 fan-out


class BfdFanOut(BfdTest):
    """One template -> one control packet per due session with the session's fields (port
    49152 + index, TTL 255, IPv4 checksum, UDP checksum 0, echo 0), your_disc 0 until a
    packet taught us the remote's; a replica without bfd_requests is REQUEST_NO_PEER;
    hb_tx_count / hb_last_tx_us follow. Then: a Poll from the remote makes the next template
    send F at once although the interval has not passed (bfd_final_due cleared), and a
    template right after sends nothing to it (not due: tx_interval 30 s)."""

    def runTest(self) -> None:
        p = self.s.ports
        a = self.add_session(45, address=A_IP, port=p[0], my_disc=A_DISC, state=State.DOWN,
                             diag=1, detect_mult=4, desired_min_tx_us=1_000_000,
                             required_min_rx_us=200_000)
        b = self.add_session(46, address=B_IP, port=p[1], my_disc=B_DISC, state=State.UP,
                             flags=Flag.P, desired_min_tx_us=50_000, required_min_rx_us=50_000,
                             tx_interval_us=0)  # 0: due on every tick
        self.use_slot(47)  # a replica with no session behind it
        self.add_bfd_group([(p[0], 45), (p[1], 46), (p[2], 47)])
        regs_before = self.snapshot()

        before = self.reasons()
        self.send_template()
        got_a, got_b = self.receive(p[0]), self.receive(p[1])
        self.wait_reasons(before, {Reason.BFD_SENT: 2, Reason.REQUEST_NO_PEER: 1})
        self.assert_nothing_else(p, sender=p[3])
        self.assertEqual(got_a.hex(), self.expected_control(a).hex())
        self.assertEqual(got_b.hex(), self.expected_control(b).hex())
        ipv4 = ipv4_of(got_a)
        self.assertEqual((ipv4[8], struct.unpack_from("!H", ipv4, 20)[0]),
                         (255, SOURCE_PORT_BASE + 45))
        self.assertEqual(ex.ipv4_checksum(ipv4[:20]), 0, "IPv4 header checksum")
        self.assert_changed_only(regs_before, self.snapshot(), {45, 46})
        slot_a = self.slot(45)
        self.assertEqual(slot_a["hb_tx_count"], 1)
        self.assertGreater(slot_a["hb_last_tx_us"], 0)
        self.assertEqual(self.slot(47), dict.fromkeys(self.s.registers.names, 0))

        # the remote polls: our next packet carries F and its discriminator, at once
        self.send_bfd(p[0], control(state=State.INIT, your_disc=A_DISC, flags=Flag.P))
        self.wait_slot(45, lambda s: s["hb_rx_count"] == 1)
        self.assertEqual(self.s.registers.read("bfd_final_due", 45), 1)
        before = self.reasons()
        self.send_template()
        got_a, got_b = self.receive(p[0]), self.receive(p[1])
        self.wait_reasons(before, {Reason.BFD_SENT: 2, Reason.REQUEST_NO_PEER: 1})
        self.assertEqual(got_a.hex(), self.expected_control(a, your_disc=REMOTE_DISC,
                                                            final=True).hex())
        self.assertEqual(got_b.hex(), self.expected_control(b).hex())
        slot_a = self.slot(45)
        self.assertEqual((slot_a["hb_tx_count"], slot_a["bfd_final_due"]), (2, 0))
        last_tx = slot_a["hb_last_tx_us"]

        # not due: B (due on every tick) is sent, A is not, and nothing counts A's replica
        before = self.reasons()
        self.send_template()
        self.assertEqual(self.receive(p[1]).hex(), self.expected_control(b).hex())
        self.wait_reasons(before, {Reason.BFD_SENT: 1, Reason.REQUEST_NO_PEER: 1})
        self.assert_nothing_else(p, sender=p[3])
        slot_a = self.slot(45)
        self.assertEqual((slot_a["hb_tx_count"], slot_a["hb_last_tx_us"]), (2, last_tx))
        self.assertEqual(self.slot(46)["hb_tx_count"], 3)


class BfdBadTemplate(BfdTest):
    """A group-2 PacketOut that is not a valid BFD template (docs/bfd.md "Transmit": UDP
    3784, IPv4 total length 52, UDP length 32, version 1, length 24) is BAD_TEMPLATE and
    nothing is sent, no slot changes."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_session(48, address=A_IP, port=p[0], my_disc=A_DISC, tx_interval_us=0)
        self.add_bfd_group([(p[0], 48)])
        regs_before = self.snapshot()
        good = bfd_ipv4(template_payload(TICK_US), src=MONITOR_IP, dst="0.0.0.0")

        def frame(ipv4: bytes) -> bytes:
            return ex.frame("00:00:00:00:00:00", MONITOR_MAC, ipv4)

        def with_byte(offset: int, value: int) -> bytes:
            out = bytearray(good)
            out[28 + offset] = value
            return bytes(out)

        broken = [
            frame(with_byte(0, 0x40)),  # version 2
            frame(with_byte(3, 23)),  # length 23
            frame(bfd_ipv4(template_payload(TICK_US) + b"\0\0\0\0", src=MONITOR_IP,
                           dst="0.0.0.0")),  # 28 bytes: lengths 56 / 36
            frame(bfd_ipv4(template_payload(TICK_US), src=MONITOR_IP, dst="0.0.0.0",
                           udp_len=40)),
            frame(bfd_ipv4(template_payload(TICK_US)[:20], src=MONITOR_IP, dst="0.0.0.0")),
        ]
        before = self.reasons()
        for f in broken:
            self.packet_out(f, mcast_grp=FANOUT_GROUP)
        self.wait_reasons(before, {Reason.BAD_TEMPLATE: len(broken)})
        self.assert_nothing_else(p, sender=p[3])
        self.assertEqual(self.snapshot(), regs_before)


class BfdDetection(BfdTest):
    """detect_time_us = 1: after a recorded packet (UP), the next template finds the
    detection time expired: hb_state DOWN and a peer_event_t DOWN (time_us = the replica's
    egress time, after the packet), PEER_DOWN_EVENT counted once; a due replica still leaves,
    one that is not due is dropped after raising it. Either way bfd_remote_disc is zeroed
    (RFC 5880 section 6.8.1: bfd.RemoteDiscr is zeroed when a Detection Time passes), so the
    due replica of the detecting pass (detection comes before the rewrite, docs/bfd.md
    "Transmit" 1 then 3) and the next packet after a detection while not due carry your
    discriminator 0. B (never heard from, detection off) is sent on every tick and never
    raises anything."""

    def runTest(self) -> None:
        p = self.s.ports
        index = 49
        params = self.add_session(index, address=A_IP, port=p[0], my_disc=A_DISC,
                                  detect_time_us=1)
        self.add_session(50, address=B_IP, port=p[1], my_disc=B_DISC, tx_interval_us=0)
        self.add_bfd_group([(p[0], index), (p[1], 50)])
        self.enable_bfd_digests()
        start = self.reasons()

        self.send_bfd(p[0], control(state=State.INIT, your_disc=A_DISC))
        self.bfd_digest(index)
        rx_us = self.slot(index)["hb_last_rx_us"]

        self.assertEqual(self.slot(index)["bfd_remote_disc"], REMOTE_DISC)

        # due (nothing sent yet) and expired: the control packet leaves AND DOWN is raised;
        # the packet already carries your discriminator 0
        self.send_template()
        self.assertEqual(self.receive(p[0]).hex(),
                         self.expected_control(params, your_disc=0).hex())
        self.receive(p[1])
        down = self.down_digest(index)
        slot = self.slot(index)
        self.assertEqual((slot["hb_state"], slot["bfd_remote_disc"]), (2, 0))
        self.assertEqual((down["index"], down["state"], down["last_seq"]), (index, 2, 0))
        self.assertGreater(down["time_us"], rx_us)
        self.assertEqual(down["time_us"], slot["hb_last_tx_us"])
        self.wait_reasons(start, {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1,
                                  Reason.BFD_SENT: 2, Reason.PEER_DOWN_EVENT: 1})

        # DOWN is raised once: the next template (A not due) raises nothing
        self.send_template()
        self.receive(p[1])
        self.wait_reasons(start, {Reason.BFD_RECORDED: 1, Reason.BFD_EVENT: 1,
                                  Reason.BFD_SENT: 3, Reason.PEER_DOWN_EVENT: 1})
        self.no_digest_pending(index)

        # heard again: UP (a digest: hb_state was not UP, and the discriminator is back);
        # expired again while not due: DOWN raised, the replica dropped, the discriminator 0
        self.send_bfd(p[0], control(state=State.INIT, your_disc=A_DISC))
        digest = self.bfd_digest(index)
        self.assertEqual((digest["state"], digest["my_disc"]), (State.INIT, REMOTE_DISC))
        slot = self.slot(index)
        self.assertEqual((slot["hb_state"], slot["bfd_remote_disc"]), (1, REMOTE_DISC))
        self.send_template()
        self.receive(p[1])
        down = self.down_digest(index)
        self.assertEqual((down["index"], down["state"]), (index, 2))
        self.wait_reasons(start, {Reason.BFD_RECORDED: 2, Reason.BFD_EVENT: 2,
                                  Reason.BFD_SENT: 4, Reason.PEER_DOWN_EVENT: 2})
        self.assert_nothing_else(p, sender=p[3])
        slot = self.slot(index)
        self.assertEqual((slot["hb_state"], slot["hb_tx_count"], slot["bfd_remote_disc"]),
                         (2, 1, 0))

        # the next control packet (made due by a Final owed, as a remote's Poll would, but
        # written here: a Poll would teach the discriminator again) carries 0
        self.s.registers.write("bfd_final_due", index, 1)
        self.send_template()
        self.assertEqual(self.receive(p[0]).hex(),
                         self.expected_control(params, your_disc=0, final=True).hex())
        self.receive(p[1])
        self.wait_reasons(start, {Reason.BFD_RECORDED: 2, Reason.BFD_EVENT: 2,
                                  Reason.BFD_SENT: 6, Reason.PEER_DOWN_EVENT: 2})
        self.assert_nothing_else(p, sender=p[3])
        slot = self.slot(index)
        self.assertEqual((slot["hb_state"], slot["hb_tx_count"], slot["bfd_remote_disc"]),
                         (2, 2, 0))
        self.no_digest_pending(index)
        self.no_digest_pending(50)
        self.assertEqual(self.slot(50)["hb_state"], 0)
