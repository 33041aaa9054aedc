"""Responses arriving on port 9191: recorded, or counted by reason and never recorded.

A response counts only when it answers a request sent: tests mark what was "sent" to a slot
with mark_sent (the registers egress writes), test_fanout.py runs the real rounds."""

from __future__ import annotations

import hb_examples as ex
from hb_base import SWITCH_MAC, HbTest, expected_rtt
from hbmon.protocol import Reason

OTHER_IP = "198.18.1.3"
OTHER_ID = 43


class ValidResponse(HbTest):
    """The example response updates exactly its peer's slot, with the right values, raises
    an UP digest (UNKNOWN -> UP), is counted RESPONSE_RECORDED, and is consumed."""

    def runTest(self) -> None:
        p = self.s.ports
        # slots no other test uses: a late digest of another test cannot be mistaken
        self.add_peer(21, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        self.add_peer(22, address=OTHER_IP, peer_id=OTHER_ID, port=p[1])
        self.add_l2(SWITCH_MAC, p[2])  # a response that were forwarded would show up here
        self.enable_digests()
        self.mark_sent(21, ex.SEQUENCE)
        regs_before = self.snapshot()
        before = self.reasons()

        self.send_response(p[0], ex.RESPONSE)
        self.wait_reasons(before, {Reason.RESPONSE_RECORDED: 1, Reason.PEER_UP_EVENT: 1})

        after = self.snapshot()
        self.assert_changed_only(regs_before, after, {21})
        slot = {name: cells[21] for name, cells in after.items()}
        rx_us = slot["hb_last_rx_us"]
        self.assertGreater(rx_us, 0)
        rtt = expected_rtt(rx_us, ex.TX_TIMESTAMP_US)
        # every other register of the slot (the bfd_* ones where the P4Info has BFD) stays 0
        self.assertEqual(slot, {
            **dict.fromkeys(self.s.registers.names, 0),
            "hb_rx_count": 1,
            "hb_tx_count": 1,
            "hb_dup_count": 0,
            "hb_miss_count": 0,
            "hb_last_seq": ex.SEQUENCE,
            "hb_last_rx_us": rx_us,
            "hb_last_tx_us": 0,
            "hb_rtt_last_us": rtt,
            "hb_rtt_min_us": rtt,
            "hb_rtt_max_us": rtt,
            "hb_rtt_ewma_us": rtt,
            "hb_peer_status": ex.RESPONSE_STATUS,
            "hb_peer_load": ex.RESPONSE_LOAD,
            "hb_state": 1,
            "hb_last_tx_seq": ex.SEQUENCE,
        })

        digest = self.next_digest(21)
        self.assertEqual(digest.name, "peer_event_t")
        self.assertEqual(list(digest.data), [
            {"index": 21, "state": 1, "last_seq": ex.SEQUENCE, "time_us": rx_us}])
        self.ack(digest)
        self.no_digest_pending(21)
        self.no_digest_pending(22)
        self.assert_nothing_else(p, sender=p[0])


class UnknownPeer(HbTest):
    """Neither (source, id) nor id is registered: UNKNOWN_PEER, no register changes."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        regs_before = self.snapshot()
        before = self.reasons()
        self.send_response(p[0], ex.with_fields(ex.RESPONSE, peer_id=4242))
        self.send_response(p[0], ex.with_fields(ex.RESPONSE, src="198.18.7.7", peer_id=4243))
        self.wait_reasons(before, {Reason.UNKNOWN_PEER: 2})
        self.assertEqual(self.snapshot(), regs_before)


class SpoofedSource(HbTest):
    """A registered peer_id from a source it is not registered for: SPOOFED, even when that
    source is another registered peer's address."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        self.add_peer(9, address=OTHER_IP, peer_id=OTHER_ID, port=p[1])
        regs_before = self.snapshot()
        before = self.reasons()
        self.send_response(p[0], ex.with_fields(ex.RESPONSE, src="198.18.7.7"))
        self.send_response(p[1], ex.with_fields(ex.RESPONSE, src=OTHER_IP))
        self.wait_reasons(before, {Reason.SPOOFED: 2})
        self.assertEqual(self.snapshot(), regs_before)


class _Malformed(HbTest):
    """One malformed response: counted by its reason only, no register touched. (No
    runTest here, so ptf collects only the generated subclasses.)"""

    reason: Reason
    packet: bytes

    def check(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        regs_before = self.snapshot()
        before = self.reasons()
        self.send_response(p[0], self.packet)
        self.wait_reasons(before, {self.reason: 1})
        self.assertEqual(self.snapshot(), regs_before)


_R = ex.RESPONSE
MALFORMED: dict[str, tuple[Reason, bytes]] = {
    # fewer than 28 bytes after the UDP header (lengths consistent with the short datagram)
    "TruncatedEmpty": (Reason.TRUNCATED, ex.with_payload_length(_R, 0)),
    "Truncated10": (Reason.TRUNCATED, ex.with_payload_length(_R, 10)),
    "Truncated24": (Reason.TRUNCATED, ex.with_payload_length(_R, 24)),  # a v1 header's size
    "Truncated27": (Reason.TRUNCATED, ex.with_payload_length(_R, 27)),
    "TruncatedBeatsBadMagic": (
        Reason.TRUNCATED, ex.with_payload_length(ex.with_fields(_R, magic=0), 12)),
    "BadMagic": (Reason.BAD_MAGIC, ex.with_fields(_R, magic=0x4843)),
    "BadMagicBeatsBadVersion": (Reason.BAD_MAGIC, ex.with_fields(_R, magic=0, version=9)),
    "BadVersion0": (Reason.BAD_VERSION, ex.with_fields(_R, version=0)),
    "BadVersion1": (Reason.BAD_VERSION, ex.with_fields(_R, version=1)),
    "BadVersion3": (Reason.BAD_VERSION, ex.with_fields(_R, version=3)),
    "BadVersionBeatsBadType": (Reason.BAD_VERSION, ex.with_fields(_R, version=1, msg_type=1)),
    "BadTypeRequest": (Reason.BAD_TYPE, ex.with_fields(_R, msg_type=1)),
    "BadTypeUnknown": (Reason.BAD_TYPE, ex.with_fields(_R, msg_type=3)),
    "BadTypeBeatsBadLength": (
        Reason.BAD_TYPE, ex.with_payload_length(ex.with_fields(_R, msg_type=0), 34)),
    # 30 payload bytes, lengths consistent: not a 36-byte UDP datagram
    "BadLengthLonger": (Reason.BAD_LENGTH, ex.with_payload_length(_R, 30)),
    # the size is right, a length field lies
    "BadLengthUdpField": (Reason.BAD_LENGTH, ex.with_lengths(_R, udp_len=40)),
    "BadLengthIpField": (Reason.BAD_LENGTH, ex.with_lengths(_R, ip_total_len=60)),
}

for _name, (_reason, _packet) in MALFORMED.items():
    globals()[f"Malformed{_name}"] = type(
        f"Malformed{_name}", (_Malformed,),
        {"reason": _reason, "packet": _packet, "runTest": _Malformed.check,
         "__doc__": f"Malformed response ({_name}): counted {_reason.name}, slot untouched."},
    )
del _name, _reason, _packet


class DuplicateAndOldSequence(HbTest):
    """Serial-number arithmetic (RFC 1982): equal -> DUPLICATE, behind -> OLD_SEQUENCE (both
    counted in hb_dup_count, not recorded); ahead, also across the 2^32 wrap -> recorded."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        rec, dup, old = (Reason.RESPONSE_RECORDED, Reason.DUPLICATE, Reason.OLD_SEQUENCE)
        steps = [
            # (sequence, reason, last_seq after, rx_count after, dup_count after)
            (7, rec, 7, 1, 0),
            (7, dup, 7, 1, 1),
            (6, old, 7, 1, 2),
            (7 + 0x80000000, old, 7, 1, 3),  # exactly half the space away: not newer
            (8, rec, 8, 2, 3),
            (0xFFFFFFF0, old, 8, 2, 4),
            (8 + 0x7FFFFFFF, rec, 8 + 0x7FFFFFFF, 3, 4),  # the farthest that is newer
            (0xFFFFFFFF, rec, 0xFFFFFFFF, 4, 4),
            (2, rec, 2, 5, 4),  # wraps
            (0xFFFFFFFF, old, 2, 5, 5),
        ]
        for i, (seq, reason, last_seq, rx_count, dup_count) in enumerate(steps):
            if reason is rec:  # request `seq` went out; the others answer earlier ones
                self.mark_sent(5, seq, count=i + 1)
            before = self.reasons()
            self.send_response(p[0], ex.answer(ex.RESPONSE, seq))
            expected = {reason: 1}
            if i == 0:
                expected[Reason.PEER_UP_EVENT] = 1
            self.wait_reasons(before, expected)
            slot = self.slot(5)
            self.assertEqual(
                (slot["hb_last_seq"], slot["hb_rx_count"], slot["hb_dup_count"]),
                (last_seq, rx_count, dup_count), f"after step {i}: sequence {seq:#x}")


class ReasonCounterBytes(HbTest):
    """hb_reason counts bytes as well as packets: the whole frame, once."""

    def runTest(self) -> None:
        p = self.s.ports
        before = self.reasons()
        frame = self.send_response(p[0], ex.with_fields(ex.RESPONSE, peer_id=4242))
        after = self.wait_reasons(before, {Reason.UNKNOWN_PEER: 1})
        self.assertEqual(after[Reason.UNKNOWN_PEER][1] - before[Reason.UNKNOWN_PEER][1],
                         len(frame))
        self.assertEqual(after[Reason.RESPONSE_RECORDED], before[Reason.RESPONSE_RECORDED])


class FutureSequence(HbTest):
    """The lockout of issue 11: a response ahead of the last request sent (by 1, by 2^30, or
    2^31-1 itself) is FUTURE_SEQUENCE and changes no register, so the real answer to the
    last request is still recorded; with nothing sent yet, any answer is in the future."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        before, regs_before = self.reasons(), self.snapshot()
        self.send_response(p[0], ex.RESPONSE)  # nothing sent to slot 5 yet
        self.wait_reasons(before, {Reason.FUTURE_SEQUENCE: 1})
        self.assertEqual(self.snapshot(), regs_before)

        self.mark_sent(5, ex.SEQUENCE)
        regs_before = self.snapshot()
        before = self.reasons()
        forged = [ex.SEQUENCE + 1, ex.SEQUENCE + (1 << 30), 0x7FFFFFFF]
        for seq in forged:  # nonce right: only the sequence window stops these
            self.send_response(p[0], ex.answer(ex.RESPONSE, seq))
        self.wait_reasons(before, {Reason.FUTURE_SEQUENCE: len(forged)})
        self.assertEqual(self.snapshot(), regs_before)

        before = self.reasons()
        self.send_response(p[0], ex.RESPONSE)
        self.wait_reasons(before, {Reason.RESPONSE_RECORDED: 1, Reason.PEER_UP_EVENT: 1})
        self.assertEqual(self.slot(5)["hb_last_seq"], ex.SEQUENCE)


class BadNonce(HbTest):
    """Everything right but the nonce (what an off-path forger can guess): BAD_NONCE, no
    register changes; BAD_NONCE is decided before FUTURE_SEQUENCE."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0])
        self.add_peer(9, address=OTHER_IP, peer_id=OTHER_ID, port=p[1],
                      nonce_key=ex.NONCE_KEY ^ 0x00010000)
        self.mark_sent(5, ex.SEQUENCE)
        self.mark_sent(9, ex.SEQUENCE)
        regs_before = self.snapshot()
        before = self.reasons()
        forged = [
            ex.with_fields(ex.RESPONSE, nonce=0),
            ex.with_fields(ex.RESPONSE, nonce=ex.SEQUENCE),  # the v1 guess: no key
            ex.with_fields(ex.RESPONSE, nonce=ex.NONCE ^ 0x80000000),
            ex.with_fields(ex.RESPONSE, sequence=ex.SEQUENCE + 1),  # the nonce of round 7
            ex.with_fields(ex.RESPONSE, src=OTHER_IP, peer_id=OTHER_ID),  # another peer's key
        ]
        for packet in forged:
            self.send_response(p[0], packet)
        self.wait_reasons(before, {Reason.BAD_NONCE: len(forged)})
        self.assertEqual(self.snapshot(), regs_before)


class BadTtl(HbTest):
    """GTSM (RFC 5082): with min_ttl 255 an answer that crossed a router (TTL 254, or 64 as
    an ordinary host sends) is BAD_TTL, decided before the nonce, and changes no register;
    TTL 255 is recorded. A peer with min_ttl 0 (GTSM off) takes any TTL."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(5, address=ex.PEER_IP, peer_id=ex.PEER_ID, port=p[0], min_ttl=255)
        self.add_peer(9, address=OTHER_IP, peer_id=OTHER_ID, port=p[1], min_ttl=0)
        self.mark_sent(5, ex.SEQUENCE)
        self.mark_sent(9, ex.SEQUENCE)
        regs_before = self.snapshot()
        before = self.reasons()
        for packet in (ex.with_fields(ex.RESPONSE, ttl=254), ex.with_fields(ex.RESPONSE, ttl=64),
                       ex.with_fields(ex.RESPONSE, ttl=1, nonce=0)):
            self.send_response(p[0], packet)
        self.wait_reasons(before, {Reason.BAD_TTL: 3})
        self.assertEqual(self.snapshot(), regs_before)

        before = self.reasons()
        self.send_response(p[0], ex.RESPONSE)  # TTL 255
        self.send_response(p[1], ex.with_fields(ex.RESPONSE, src=OTHER_IP, peer_id=OTHER_ID,
                                                ttl=1))
        self.wait_reasons(before, {Reason.RESPONSE_RECORDED: 2, Reason.PEER_UP_EVENT: 2})
        self.assertEqual((self.slot(5)["hb_rx_count"], self.slot(9)["hb_rx_count"]), (1, 1))
