"""Requests: one PacketOut template fanned out by multicast group 1 and rewritten per peer;
tx/miss accounting, RTT, and the DOWN / UP digests."""

from __future__ import annotations

import time

import hb_examples as ex
from hb_base import MONITOR_MAC, HbTest, expected_rtt, ipv4_of, peer_mac
from hbmon.protocol import Reason

A_IP, A_ID = ex.PEER_IP, ex.PEER_ID
B_IP, B_ID = "198.18.1.3", 43


B_KEY = 0x0BADC0DE  # B's nonce key (A has the examples')


def expected_request(index: int, address: str, peer_id: int, sequence: int,
                     tx_us: int, nonce_key: int = ex.NONCE_KEY) -> bytes:
    """The request a peer must receive: the example request, for this peer and round (its
    nonce is the peer's key XOR the round's sequence)."""
    return ex.frame(peer_mac(index), MONITOR_MAC, ex.answer(
        ex.REQUEST, sequence, nonce_key, dst=address, peer_id=peer_id, tx_timestamp_us=tx_us))


def answer_to(request: bytes, **fields: int) -> bytes:
    """A peer's response to an IPv4 request: id, sequence, nonce and timestamp echoed."""
    return ex.with_fields(ex.RESPONSE, src=ex.PEER_IP, peer_id=ex.field(request, "peer_id"),
                          sequence=ex.field(request, "sequence"),
                          nonce=ex.field(request, "nonce"),
                          tx_timestamp_us=ex.field(request, "tx_timestamp_us"), **fields)


class FanOut(HbTest):
    """One template -> exactly one correctly rewritten request per peer replica (its peer's
    nonce for the round), nothing on ports without a replica, a replica without peer_requests
    dropped (REQUEST_NO_PEER); hb_tx_count / hb_miss_count / hb_last_tx_us / hb_last_tx_seq
    follow, other slots untouched."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(3, address=A_IP, peer_id=A_ID, port=p[0])
        self.add_peer(4, address=B_IP, peer_id=B_ID, port=p[1], nonce_key=B_KEY)
        self.use_slot(7)  # a replica with no peer behind it
        self.add_fanout_group([(p[0], 3), (p[1], 4), (p[2], 7)])
        regs_before = self.snapshot()

        last_tx = {3: 0, 4: 0}
        for round_no, seq in enumerate((100, 101), start=1):
            before = self.reasons()
            self.packet_out(self.template(seq))
            got = {3: self.receive(p[0]), 4: self.receive(p[1])}
            self.wait_reasons(before, {Reason.REQUEST_SENT: 2, Reason.REQUEST_NO_PEER: 1})
            self.assert_nothing_else(p, sender=p[3])

            for index, address, peer_id, key in ((3, A_IP, A_ID, ex.NONCE_KEY),
                                                 (4, B_IP, B_ID, B_KEY)):
                slot = self.slot(index)
                tx_us = ex.field(ipv4_of(got[index]), "tx_timestamp_us")
                self.assertEqual(got[index].hex(),
                                 expected_request(index, address, peer_id, seq, tx_us,
                                                  key).hex(),
                                 f"request to peer {index}, round {round_no}")
                self.assertEqual(slot["hb_last_tx_seq"], seq)
                self.assertEqual(slot["hb_last_tx_us"], tx_us)
                self.assertGreater(tx_us, last_tx[index])
                last_tx[index] = tx_us
                self.assertEqual((slot["hb_tx_count"], slot["hb_miss_count"]),
                                 (round_no, round_no))
                self.assertEqual((slot["hb_rx_count"], slot["hb_state"]), (0, 0))
            self.assertEqual(self.slot(7), dict.fromkeys(self.s.registers.names, 0))
        self.assert_changed_only(regs_before, self.snapshot(), {3, 4})


class PacketOutDirect(HbTest):
    """A PacketOut with mcast_grp 0 leaves unchanged through its egress_port, nothing else."""

    def runTest(self) -> None:
        p = self.s.ports
        before = self.reasons()
        frame = ex.frame(peer_mac(1), MONITOR_MAC, ex.with_fields(ex.REQUEST, sequence=5))
        self.packet_out(frame, mcast_grp=0, egress_port=p[2])
        self.assertEqual(self.receive(p[2]).hex(), frame.hex())
        self.assert_nothing_else(p, sender=p[0])
        self.assertEqual(self.reasons(), before)


class BadTemplate(HbTest):
    """A fan-out PacketOut that is not a valid REQUEST is dropped and counted BAD_TEMPLATE;
    no peer receives anything and no slot changes."""

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(3, address=A_IP, peer_id=A_ID, port=p[0])
        self.add_fanout_group([(p[0], 3)])
        regs_before = self.snapshot()
        before = self.reasons()
        broken = [
            self.template(1, magic=0x4843),
            self.template(2, version=1),
            self.template(5, version=3),
            self.template(3, msg_type=2),
            ex.frame("00:00:00:00:00:00", MONITOR_MAC,
                     ex.with_payload_length(ex.with_fields(ex.REQUEST, dst="0.0.0.0"), 24)),
            ex.frame("00:00:00:00:00:00", MONITOR_MAC,
                     ex.with_lengths(ex.with_fields(ex.REQUEST, dst="0.0.0.0"), udp_len=32)),
        ]
        for frame in broken:
            self.packet_out(frame)
        self.wait_reasons(before, {Reason.BAD_TEMPLATE: len(broken)})
        self.assert_nothing_else(p, sender=p[3])
        self.assertEqual(self.snapshot(), regs_before)


class RoundTripTime(HbTest):
    """rtt_last = arrival - echoed tx timestamp, bounded by what the host saw; min/max/EWMA
    over two samples as the contract says."""

    def one_round(self, seq: int) -> tuple[dict[str, int], int]:
        p = self.s.ports
        started = time.monotonic()
        self.packet_out(self.template(seq))
        request = ipv4_of(self.receive(p[0]))
        tx_us = ex.field(request, "tx_timestamp_us")
        self.send_response(p[0], answer_to(request))
        slot = self.wait_slot(8, lambda s: s["hb_last_seq"] == seq)
        elapsed_us = (time.monotonic() - started) * 1e6
        self.assertEqual(slot["hb_last_seq"], seq, "response not recorded")
        self.assertEqual(slot["hb_last_tx_us"], tx_us)
        rtt = slot["hb_rtt_last_us"]
        self.assertEqual(rtt, expected_rtt(slot["hb_last_rx_us"], tx_us))
        self.assertGreater(rtt, 0)
        # both target times fall between the host's send and its read
        self.assertLessEqual(rtt, elapsed_us)
        return slot, rtt

    def runTest(self) -> None:
        p = self.s.ports
        self.add_peer(8, address=A_IP, peer_id=A_ID, port=p[0])
        self.add_fanout_group([(p[0], 8)])
        slot1, rtt1 = self.one_round(500)
        self.assertEqual((slot1["hb_rtt_min_us"], slot1["hb_rtt_max_us"],
                          slot1["hb_rtt_ewma_us"]), (rtt1, rtt1, rtt1))
        slot2, rtt2 = self.one_round(501)
        self.assertEqual(slot2["hb_rtt_min_us"], min(rtt1, rtt2))
        self.assertEqual(slot2["hb_rtt_max_us"], max(rtt1, rtt2))
        self.assertEqual(slot2["hb_rtt_ewma_us"], (7 * rtt1 + rtt2) >> 3)
        self.assertEqual((slot2["hb_rx_count"], slot2["hb_miss_count"], slot2["hb_tx_count"]),
                         (2, 0, 2))


class MissDownUp(HbTest):
    """detect_mult = 2: requests 1 and 2 unanswered raise nothing; request 3 finds 2 misses:
    DOWN digest (once), and the request still reaches the peer; request 4 raises nothing
    new; the answer to request 4 brings an UP digest and resets the misses."""

    def runTest(self) -> None:
        p = self.s.ports
        index = 26  # a slot no other test uses: no late digest of another test can match
        self.add_peer(index, address=A_IP, peer_id=A_ID, port=p[0], detect_mult=2)
        self.add_fanout_group([(p[0], index)])
        self.enable_digests()
        start = self.reasons()

        requests = {}
        for seq in (1, 2):
            self.packet_out(self.template(seq))
            requests[seq] = ipv4_of(self.receive(p[0]))
            slot = self.slot(index)
            self.assertEqual((slot["hb_miss_count"], slot["hb_state"]), (seq, 0))
        # the DOWN carrier would reach the port only after its event was counted
        self.wait_reasons(start, {Reason.REQUEST_SENT: 2})
        self.no_digest_pending(index)
        last_tx_round2 = self.slot(index)["hb_last_tx_us"]

        self.packet_out(self.template(3))
        requests[3] = ipv4_of(self.receive(p[0]))
        self.assertEqual(ex.field(requests[3], "sequence"), 3)
        down = self.next_digest(index)
        slot = self.slot(index)
        self.assertEqual(list(down.data), [
            {"index": index, "state": 2, "last_seq": 0, "time_us": slot["hb_last_tx_us"]}])
        self.assertGreater(down.data[0]["time_us"], last_tx_round2)
        self.ack(down)
        self.assertEqual((slot["hb_miss_count"], slot["hb_state"], slot["hb_tx_count"]),
                         (3, 2, 3))
        self.wait_reasons(start, {Reason.REQUEST_SENT: 3, Reason.PEER_DOWN_EVENT: 1})

        self.packet_out(self.template(4))
        requests[4] = ipv4_of(self.receive(p[0]))
        slot = self.slot(index)
        self.assertEqual((slot["hb_miss_count"], slot["hb_state"]), (4, 2))
        self.wait_reasons(start, {Reason.REQUEST_SENT: 4, Reason.PEER_DOWN_EVENT: 1})
        self.no_digest_pending(index)

        tx4 = ex.field(requests[4], "tx_timestamp_us")
        self.send_response(p[0], answer_to(requests[4]))
        up = self.next_digest(index)
        slot = self.slot(index)
        self.assertEqual(list(up.data), [
            {"index": index, "state": 1, "last_seq": 4, "time_us": slot["hb_last_rx_us"]}])
        self.ack(up)
        self.assertEqual((slot["hb_miss_count"], slot["hb_state"], slot["hb_rx_count"],
                          slot["hb_last_seq"]), (0, 1, 1, 4))
        self.assertEqual(slot["hb_rtt_last_us"], expected_rtt(slot["hb_last_rx_us"], tx4))
        self.wait_reasons(start, {Reason.REQUEST_SENT: 4, Reason.PEER_DOWN_EVENT: 1,
                                  Reason.RESPONSE_RECORDED: 1, Reason.PEER_UP_EVENT: 1})
        self.no_digest_pending(index)
        self.assert_nothing_else(p, sender=p[1])
