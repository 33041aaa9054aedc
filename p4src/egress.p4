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
        }
    }
}

#endif  /* HB_EGRESS_P4 */
