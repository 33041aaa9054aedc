/*
 * hbmon data plane: egress (request fan-out and miss detection).
 *
 * The controller sends ONE REQUEST template per interval to multicast group 1 (the fan-out
 * group). Each replica carries egress_rid = its peer's index; peer_requests[index] says where and
 * to whom it goes. The rewrite stamps tx_timestamp_us with the egress time, so the RTT the
 * response yields covers the wire and the peer, not the controller, and writes the peer's
 * nonce (nonce_key ^ sequence) that its response must echo. The IPv4 TTL is the template's
 * (the controller sends 255, so peers can check GTSM too).
 *
 * Miss detection: before counting the request, hb_miss_count[index] (requests since the
 * last fresh response) is compared with detect_mult; reaching it while the peer is not DOWN
 * marks it DOWN. The digest for that must come from ingress (bmv2 raises digests only
 * there), so the request itself is recirculated with the event in the FL_PEER_EVENT field
 * list; ingress raises the digest and sends the request on to its peer. A detect_mult of 0
 * disables detection for the peer.
 *
 * BFD (docs/bfd.md "Transmit"), the twin of the above for multicast group 2: the controller
 * sends one BFD template per tick; each replica (egress_rid = the session's slot) looks up
 * bfd_requests[index] and, in this order, (1) checks the detection time (RFC 5880 section
 * 6.8.4: UP and nothing recorded for detect_time_us -> DOWN, raised like a heartbeat DOWN by
 * recirculation, and the remote's discriminator zeroed, section 6.8.1), (2) decides whether the session is due (RFC 5880 section 6.8.7: its TX
 * interval less a random jitter of up to a quarter has passed, or it owes a Final, or it has
 * never sent), (3) when due, leaves as the session's control packet; a replica that is not
 * due is dropped (or, when it carries a DOWN, recirculated with ev_send 0 and dropped by
 * ingress after the digest).
 */
#ifndef HB_EGRESS_P4
#define HB_EGRESS_P4

#include "headers.p4"
#include "registers.p4"

control HbEgress(inout headers_t hdr,
                 inout metadata_t meta,
                 inout standard_metadata_t std_meta) {

    /* nonce_key: the same key as the peer's `peers` entry; the nonce changes every round
     * with the sequence, and the key itself is never on the wire alone. */
    @id(0x01000006)
    action rewrite_request(bit<48> dst_mac, bit<32> dst_addr, bit<32> peer_id,
                           bit<8> detect_mult, bit<32> nonce_key) {
        hdr.ethernet.dst_addr = dst_mac;
        hdr.ipv4.dst_addr = dst_addr;
        hdr.udp.checksum = 0;  /* allowed for IPv4, and the payload just changed */
        hdr.hb.peer_id = peer_id;
        hdr.hb.nonce = nonce_key ^ hdr.hb.sequence;
        hdr.hb.tx_timestamp_us = (bit<64>)std_meta.egress_global_timestamp;
        meta.detect_mult = detect_mult;
    }

    /* A replica for an index without a peer: nobody to send it to. */
    @id(0x01000007)
    action drop_request() {
        mark_to_drop(std_meta);
    }

    /* The session's control packet: everything but what the slot's registers decide (F, your
     * discriminator) is the controller's (its state machine and timer negotiation). The
     * header writes are kept only when the replica is due; tx_interval_us and detect_time_us
     * steer apply{}. flags: what the controller sets besides the state (P during a Poll). */
    @id(0x01000009)
    action bfd_control(bit<48> dst_mac, bit<32> dst_addr, bit<16> src_port, bit<32> my_disc,
                       bit<8> state, bit<8> diag, bit<8> flags, bit<8> detect_mult,
                       bit<32> desired_min_tx_us, bit<32> required_min_rx_us,
                       bit<32> tx_interval_us, bit<32> detect_time_us) {
        hdr.ethernet.dst_addr = dst_mac;
        hdr.ipv4.dst_addr = dst_addr;
        hdr.udp.src_port = src_port;  /* RFC 5881 section 4: constant per session */
        hdr.udp.checksum = 0;         /* allowed for IPv4, and the payload just changed */
        hdr.bfd.version = BFD_VERSION;
        hdr.bfd.diag = (bit<5>)diag;
        hdr.bfd.state = (bit<2>)state;
        hdr.bfd.flags = (bit<6>)flags;
        hdr.bfd.detect_mult = detect_mult;
        hdr.bfd.length = BFD_LEN;
        hdr.bfd.my_disc = my_disc;
        hdr.bfd.desired_min_tx_us = desired_min_tx_us;
        hdr.bfd.required_min_rx_us = required_min_rx_us;
        hdr.bfd.required_min_echo_rx_us = 0;  /* no echo function (the template's tick) */
        meta.bfd_tx_interval_us = tx_interval_us;
        meta.bfd_detect_time_us = detect_time_us;
    }

    @id(0x02000004)
    table peer_requests {
        key = {
            std_meta.egress_rid: exact @name("index");
        }
        actions = {
            rewrite_request;
            @defaultonly drop_request;
        }
        default_action = drop_request();
        size = HB_MAX_PEERS;
    }

    @id(0x02000007)
    table bfd_requests {
        key = {
            std_meta.egress_rid: exact @name("index");
        }
        actions = {
            bfd_control;
            @defaultonly drop_request;
        }
        default_action = drop_request();
        size = HB_MAX_PEERS;
    }

    apply {
        /* meta.resend (a recirculated DOWN carrier) is already a finished request. */
        if (meta.fanout == 1 && std_meta.instance_type == INSTANCE_TYPE_REPLICATION) {
            if (peer_requests.apply().hit) {
                peer_index_t index = std_meta.egress_rid;
                bit<64> now = (bit<64>)std_meta.egress_global_timestamp;
                bit<32> misses;
                bit<8> state;
                hb_miss_count.read(misses, index);
                hb_state.read(state, index);
                if (meta.detect_mult != 0 && misses >= (bit<32>)meta.detect_mult
                        && state != STATE_DOWN) {
                    hb_state.write(index, STATE_DOWN);
                    bit<32> last_seq;
                    hb_last_seq.read(last_seq, index);
                    meta.ev_index = index;
                    meta.ev_state = STATE_DOWN;
                    meta.ev_last_seq = last_seq;
                    meta.ev_time_us = now;
                    meta.ev_port = std_meta.egress_port;
                    meta.ev_send = 1;
                    recirculate_preserving_field_list(FL_PEER_EVENT);
                }

                bit<32> sent;
                hb_tx_count.read(sent, index);
                hb_tx_count.write(index, sent + 1);
                hb_last_tx_us.write(index, now);
                /* the upper bound of what a response may answer (ingress FUTURE_SEQUENCE) */
                hb_last_tx_seq.write(index, hdr.hb.sequence);
                if (misses != 0xFFFFFFFF) {
                    hb_miss_count.write(index, misses + 1);
                }
                hb_reason.count(REASON_REQUEST_SENT);
            } else {
                hb_reason.count(REASON_REQUEST_NO_PEER);
            }
        } else if (meta.bfd_fanout == 1 && std_meta.instance_type == INSTANCE_TYPE_REPLICATION) {
            if (bfd_requests.apply().hit) {
                peer_index_t index = std_meta.egress_rid;
                bit<64> now = (bit<64>)std_meta.egress_global_timestamp;
                bit<8> state;
                bit<64> last_rx;
                hb_state.read(state, index);
                hb_last_rx_us.read(last_rx, index);

                /* 1. Detection (RFC 5880 section 6.8.4): nothing recorded for the detection
                 * time. Checked on every tick, due or not, so DOWN lands within a tick of
                 * the deadline (bmv2 has no timer; the kernel target's sweeper also checks). */
                bool down = false;
                if (meta.bfd_detect_time_us != 0 && state == STATE_UP
                        && now - last_rx > (bit<64>)meta.bfd_detect_time_us) {
                    down = true;
                    hb_state.write(index, STATE_DOWN);
                    /* RFC 5880 section 6.8.1: a Detection Time without a valid packet zeroes
                     * bfd.RemoteDiscr, so this very replica (rewritten below) and every later
                     * one carry your_disc 0 until the remote is heard again. */
                    bfd_remote_disc.write(index, 0);
                    bit<32> last_seq;
                    hb_last_seq.read(last_seq, index);
                    meta.ev_index = index;
                    meta.ev_state = STATE_DOWN;
                    meta.ev_last_seq = last_seq;
                    meta.ev_time_us = now;
                    meta.ev_port = std_meta.egress_port;
                }

                /* 2. Due? (RFC 5880 section 6.8.7: a jitter of up to 25% below the interval,
                 * drawn per packet, so sessions started together drift apart.) */
                bit<32> sent;
                bit<8> final_due;
                bit<64> last_tx;
                bit<32> jitter;
                hb_tx_count.read(sent, index);
                bfd_final_due.read(final_due, index);
                hb_last_tx_us.read(last_tx, index);
                random<bit<32>>(jitter, 0, meta.bfd_tx_interval_us >> 2);
                bool due = sent == 0 || final_due == 1
                    || now - last_tx >= (bit<64>)meta.bfd_tx_interval_us - (bit<64>)jitter;

                if (due) {
                    /* 3. The control packet: the action wrote the controller's fields; the
                     * slot adds the remote's discriminator and the Final we owe. */
                    bit<32> remote_disc;
                    bfd_remote_disc.read(remote_disc, index);
                    hdr.bfd.your_disc = remote_disc;
                    if (final_due == 1) {
                        hdr.bfd.flags = hdr.bfd.flags | BFD_FLAG_F;
                        bfd_final_due.write(index, 0);
                    }
                    hb_tx_count.write(index, sent + 1);
                    hb_last_tx_us.write(index, now);
                    hb_reason.count(REASON_BFD_SENT);
                }

                if (down) {
                    /* The digest must come from ingress; a replica that is not due rides
                     * along only to carry it (bmv2 does not recirculate a dropped packet). */
                    meta.ev_send = due ? 1w1 : 1w0;
                    recirculate_preserving_field_list(FL_PEER_EVENT);
                } else if (!due) {
                    /* Not counted: a tick is much shorter than an interval. */
                    mark_to_drop(std_meta);
                }
            } else {
                hb_reason.count(REASON_REQUEST_NO_PEER);
            }
        }
    }
}

#endif  /* HB_EGRESS_P4 */
