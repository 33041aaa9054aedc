/*
 * hbmon data plane: ingress.
 *
 * Five kinds of packet arrive here:
 *   - a PacketOut (ingress port CPU_PORT): sent unchanged out of one port, or, when it is a
 *     valid REQUEST template (group 1) or BFD template (group 2, docs/bfd.md "Transmit"),
 *     handed to the multicast engine (egress rewrites each replica for its peer or session,
 *     see egress.p4);
 *   - a heartbeat response (UDP to HB_RESPONSE_PORT): classified in the order of
 *     docs/protocol.md, counted by reason in hb_reason, recorded in the peer's slot only when
 *     every check passes, then consumed (dropped);
 *   - a BFD control packet (UDP to BFD_PORT): classified in the order of docs/bfd.md
 *     "Receive", counted, recorded in its session's slot when every check passes (raising a
 *     bfd_event_t digest when it changed something), then consumed (dropped);
 *   - a request or BFD replica recirculated by egress because it found its peer DOWN: it
 *     raises the DOWN digest here and goes on to its peer (or is dropped: ev_send 0);
 *   - anything else: ordinary traffic, switched by l2_forward.
 */
#ifndef HB_INGRESS_P4
#define HB_INGRESS_P4

#include "headers.p4"
#include "registers.p4"

control HbIngress(inout headers_t hdr,
                  inout metadata_t meta,
                  inout standard_metadata_t std_meta) {

    /* core.p4's NoAction cannot carry the contract's @id, so this one takes its name. */
    @id(0x01000001) @name(".NoAction")
    action no_action() { }

    /* nonce_key: what egress XORs with the sequence into the requests to this peer, so an
     * answer must echo nonce_key ^ sequence. min_ttl: the peer's GTSM floor (RFC 5082), 0 off,
     * 255 when the peer is one hop away and sends with TTL 255. */
    @id(0x01000002)
    action set_peer_index(bit<16> index, bit<32> nonce_key, bit<8> min_ttl) {
        meta.index = index;
        meta.nonce_key = nonce_key;
        meta.min_ttl = min_ttl;
    }

    /* A BFD session's slot, from either lookup (your_disc, or (source, port) while the remote
     * does not know our discriminator yet): the two tables are twins of `peers`. */
    @id(0x01000008)
    action set_bfd_session(bit<16> index) {
        meta.index = index;
    }

    /* Marks a peer_id as registered (for some source): tells SPOOFED from UNKNOWN_PEER. */
    @id(0x01000003)
    action peer_id_known() { }

    @id(0x01000004)
    action set_egress_port(bit<9> port) {
        std_meta.egress_spec = port;
    }

    @id(0x01000005)
    action drop() {
        mark_to_drop(std_meta);
    }

    /* (source IPv4, peer_id) -> peer index. */
    @id(0x02000001)
    table peers {
        key = {
            hdr.ipv4.src_addr: exact @name("src_addr");
            hdr.hb.peer_id:    exact @name("peer_id");
        }
        actions = {
            set_peer_index;
            @defaultonly no_action;
        }
        default_action = no_action();
        size = HB_MAX_PEERS;
    }

    /* Every registered peer_id, whatever its source. */
    @id(0x02000002)
    table peer_ids {
        key = {
            hdr.hb.peer_id: exact @name("peer_id");
        }
        actions = {
            peer_id_known;
            @defaultonly no_action;
        }
        default_action = no_action();
        size = HB_MAX_PEERS;
    }

    /* Our discriminator -> session (RFC 5880 section 6.8.6: the lookup when your_disc != 0). */
    @id(0x02000005)
    table bfd_sessions {
        key = {
            hdr.bfd.your_disc: exact @name("your_disc");
        }
        actions = {
            set_bfd_session;
            @defaultonly no_action;
        }
        default_action = no_action();
        size = HB_MAX_PEERS;
    }

    /* (source IPv4, ingress port) -> session: the lookup when your_disc = 0 (RFC 5881 section
     * 3: a single-hop session is identified by the source address and the interface). */
    @id(0x02000006)
    table bfd_peers {
        key = {
            hdr.ipv4.src_addr:     exact @name("src_addr");
            std_meta.ingress_port: exact @name("port");
        }
        actions = {
            set_bfd_session;
            @defaultonly no_action;
        }
        default_action = no_action();
        size = HB_MAX_PEERS;
    }

    /* Ordinary traffic: Ethernet destination -> port; a miss drops. */
    @id(0x02000003)
    table l2_forward {
        key = {
            hdr.ethernet.dst_addr: exact @name("dst_addr");
        }
        actions = {
            set_egress_port;
            drop;
        }
        default_action = drop();
        size = 1024;
    }

    apply {
        if (std_meta.instance_type == INSTANCE_TYPE_RECIRC) {
            /* A request that found its peer DOWN: the digest is raised below; the request
             * itself (already rewritten and checksummed) still goes to its peer, unless it was
             * a BFD replica that was not due (ev_send 0). */
            if (meta.ev_state == STATE_DOWN && meta.ev_send == 1) {
                std_meta.egress_spec = meta.ev_port;
                meta.resend = 1;
            } else {
                mark_to_drop(std_meta);
            }
        } else if (hdr.packet_out.isValid()) {
            if (hdr.packet_out.mcast_grp == 0) {
                std_meta.egress_spec = hdr.packet_out.egress_port;
            } else if (std_meta.parser_error == error.NoError
                       && hdr.hb.isValid()
                       && hdr.hb.magic == HB_MAGIC
                       && hdr.hb.version == HB_VERSION
                       && hdr.hb.msg_type == HB_TYPE_REQUEST
                       && hdr.udp.src_port == HB_RESPONSE_PORT
                       && hdr.udp.length == HB_UDP_LEN
                       && hdr.ipv4.total_len == HB_IPV4_TOTAL_LEN) {
                std_meta.mcast_grp = hdr.packet_out.mcast_grp;
                meta.fanout = 1;
            } else if (std_meta.parser_error == error.NoError
                       && hdr.bfd.isValid()
                       && hdr.bfd.version == BFD_VERSION
                       && hdr.bfd.length == BFD_LEN
                       && hdr.udp.length == BFD_UDP_LEN
                       && hdr.ipv4.total_len == BFD_IPV4_TOTAL_LEN) {
                /* The BFD fan-out template (docs/bfd.md "Transmit"); the parser took it only
                 * with UDP destination BFD_PORT. Egress writes every per-session field. */
                std_meta.mcast_grp = hdr.packet_out.mcast_grp;
                meta.bfd_fanout = 1;
            } else {
                /* Replicating a broken template would send garbage to every peer. */
                hb_reason.count(REASON_BAD_TEMPLATE);
                mark_to_drop(std_meta);
            }
            hdr.packet_out.setInvalid();
        } else if (hdr.udp.isValid() && hdr.udp.dst_port == HB_RESPONSE_PORT) {
            /* A response is consumed here whatever its fate; only its effects remain. */
            mark_to_drop(std_meta);
            reason_t reason;
            if (std_meta.parser_error == error.PacketTooShort || !hdr.hb.isValid()) {
                reason = REASON_TRUNCATED;
            } else if (hdr.hb.magic != HB_MAGIC) {
                reason = REASON_BAD_MAGIC;
            } else if (hdr.hb.version != HB_VERSION) {
                reason = REASON_BAD_VERSION;
            } else if (hdr.hb.msg_type != HB_TYPE_RESPONSE) {
                reason = REASON_BAD_TYPE;
            } else if (hdr.udp.length != HB_UDP_LEN || hdr.ipv4.total_len != HB_IPV4_TOTAL_LEN) {
                reason = REASON_BAD_LENGTH;
            } else if (peers.apply().hit) {
                bit<32> rx_count;
                bit<32> last_seq;
                bit<32> tx_count;
                bit<32> last_tx_seq;
                hb_rx_count.read(rx_count, meta.index);
                hb_last_seq.read(last_seq, meta.index);
                hb_tx_count.read(tx_count, meta.index);
                hb_last_tx_seq.read(last_tx_seq, meta.index);
                /* RFC 1982 on 32 bits: a is after b when 0 < a - b < 2^31. */
                bit<32> seq_diff = hdr.hb.sequence - last_seq;
                bit<32> ahead = hdr.hb.sequence - last_tx_seq;
                bool first = rx_count == 0;
                if (hdr.ipv4.ttl < meta.min_ttl) {
                    /* GTSM (RFC 5082): it crossed a router, so it is not from the peer. */
                    reason = REASON_BAD_TTL;
                } else if (hdr.hb.nonce != (meta.nonce_key ^ hdr.hb.sequence)) {
                    /* Not the nonce of that round's request: the sender never saw it. */
                    reason = REASON_BAD_NONCE;
                } else if (tx_count == 0 || (ahead != 0 && ahead < 0x80000000)) {
                    /* Answers a request not sent yet: recording it would make every real
                     * answer up to that sequence OLD_SEQUENCE (the lockout of issue 11). */
                    reason = REASON_FUTURE_SEQUENCE;
                } else if (!first && seq_diff == 0) {
                    reason = REASON_DUPLICATE;
                } else if (!first && seq_diff >= 0x80000000) {
                    reason = REASON_OLD_SEQUENCE;
                } else {
                    /* In (last recorded, last sent]; a slot without any response yet takes
                     * the first that passed the checks above. */
                    reason = REASON_RESPONSE_RECORDED;
                }

                if (reason == REASON_RESPONSE_RECORDED) {
                    bit<64> now = (bit<64>)std_meta.ingress_global_timestamp;
                    bit<64> echoed = hdr.hb.tx_timestamp_us;
                    bit<32> rtt;
                    if (echoed > now) {
                        rtt = 0;  /* not a time this target wrote: no meaningful RTT */
                    } else if (now - echoed > 0xFFFFFFFF) {
                        rtt = 0xFFFFFFFF;
                    } else {
                        rtt = (bit<32>)(now - echoed);
                    }

                    bit<32> rtt_min;
                    bit<32> rtt_max;
                    bit<32> rtt_ewma;
                    hb_rtt_min_us.read(rtt_min, meta.index);
                    hb_rtt_max_us.read(rtt_max, meta.index);
                    hb_rtt_ewma_us.read(rtt_ewma, meta.index);
                    if (first || rtt < rtt_min) {
                        rtt_min = rtt;
                    }
                    if (rtt > rtt_max) {
                        rtt_max = rtt;
                    }
                    if (first) {
                        rtt_ewma = rtt;
                    } else {
                        rtt_ewma = (bit<32>)(((bit<64>)rtt_ewma * 7 + (bit<64>)rtt) >> 3);
                    }

                    hb_rx_count.write(meta.index, rx_count + 1);
                    hb_last_seq.write(meta.index, hdr.hb.sequence);
                    hb_last_rx_us.write(meta.index, now);
                    hb_rtt_last_us.write(meta.index, rtt);
                    hb_rtt_min_us.write(meta.index, rtt_min);
                    hb_rtt_max_us.write(meta.index, rtt_max);
                    hb_rtt_ewma_us.write(meta.index, rtt_ewma);
                    hb_peer_status.write(meta.index, hdr.hb.status);
                    hb_peer_load.write(meta.index, hdr.hb.load);
                    hb_miss_count.write(meta.index, 0);

                    bit<8> state;
                    hb_state.read(state, meta.index);
                    if (state != STATE_UP) {
                        hb_state.write(meta.index, STATE_UP);
                        meta.ev_index = meta.index;
                        meta.ev_state = STATE_UP;
                        meta.ev_last_seq = hdr.hb.sequence;
                        meta.ev_time_us = now;
                    }
                } else if (reason == REASON_DUPLICATE || reason == REASON_OLD_SEQUENCE) {
                    /* BAD_TTL, BAD_NONCE and FUTURE_SEQUENCE change no register: a forger
                     * must not be able to move any of the peer's numbers. */
                    bit<32> dups;
                    hb_dup_count.read(dups, meta.index);
                    hb_dup_count.write(meta.index, dups + 1);
                }
            } else if (peer_ids.apply().hit) {
                reason = REASON_SPOOFED;
            } else {
                reason = REASON_UNKNOWN_PEER;
            }
            hb_reason.count(reason);
        } else if (hdr.udp.isValid() && hdr.udp.dst_port == BFD_PORT) {
            /* A BFD control packet is consumed here whatever its fate (docs/bfd.md "Receive",
             * checks 1-7 in order; 1-6 change no register). */
            mark_to_drop(std_meta);
            reason_t reason;
            if (std_meta.parser_error == error.PacketTooShort || !hdr.bfd.isValid()) {
                reason = REASON_BFD_TRUNCATED;
            } else if (hdr.bfd.version != BFD_VERSION) {
                reason = REASON_BFD_BAD_VERSION;
            } else if (hdr.bfd.length < BFD_LEN
                       || (bit<16>)hdr.bfd.length + 8 > hdr.udp.length
                       || hdr.bfd.detect_mult == 0
                       || (hdr.bfd.flags & (BFD_FLAG_M | BFD_FLAG_A)) != 0
                       || hdr.bfd.my_disc == 0
                       || (hdr.bfd.your_disc == 0 && hdr.bfd.state >= BFD_STATE_INIT)) {
                /* RFC 5880 section 6.8.6's discard rules (length compared without the
                 * subtraction, so a UDP length below 8 cannot wrap). */
                reason = REASON_BFD_MALFORMED;
            } else if (hdr.ipv4.ttl != BFD_TTL) {
                /* RFC 5881 section 5 (no authentication): not from the link. */
                reason = REASON_BFD_BAD_TTL;
            } else if (hdr.bfd.your_disc != 0) {
                if (bfd_sessions.apply().hit) {
                    reason = REASON_BFD_RECORDED;
                } else {
                    reason = REASON_BFD_UNKNOWN_DISCRIMINATOR;
                }
            } else if (bfd_peers.apply().hit) {
                reason = REASON_BFD_RECORDED;
            } else {
                reason = REASON_BFD_UNKNOWN_PEER;
            }

            if (reason == REASON_BFD_RECORDED) {
                bit<64> now = (bit<64>)std_meta.ingress_global_timestamp;
                bit<32> rx_count;
                hb_rx_count.read(rx_count, meta.index);
                hb_rx_count.write(meta.index, rx_count + 1);
                hb_last_rx_us.write(meta.index, now);

                /* What the remote said before, to raise the digest only on a change: the
                 * controller works on transitions, never on steady Up/Up traffic. */
                bit<8> old_state;
                bit<8> old_diag;
                bit<8> old_mult;
                bit<32> old_disc;
                bit<32> old_min_tx;
                bit<32> old_min_rx;
                bit<8> state;
                bfd_remote_state.read(old_state, meta.index);
                bfd_remote_diag.read(old_diag, meta.index);
                bfd_remote_mult.read(old_mult, meta.index);
                bfd_remote_disc.read(old_disc, meta.index);
                bfd_remote_min_tx_us.read(old_min_tx, meta.index);
                bfd_remote_min_rx_us.read(old_min_rx, meta.index);
                hb_state.read(state, meta.index);
                bfd_remote_state.write(meta.index, (bit<8>)hdr.bfd.state);
                bfd_remote_diag.write(meta.index, (bit<8>)hdr.bfd.diag);
                bfd_remote_mult.write(meta.index, hdr.bfd.detect_mult);
                bfd_remote_disc.write(meta.index, hdr.bfd.my_disc);
                bfd_remote_min_tx_us.write(meta.index, hdr.bfd.desired_min_tx_us);
                bfd_remote_min_rx_us.write(meta.index, hdr.bfd.required_min_rx_us);
                if ((hdr.bfd.flags & BFD_FLAG_P) != 0) {
                    /* RFC 5880 section 6.5: our next control packet answers with F. */
                    bfd_final_due.write(meta.index, 1);
                }

                if (old_state != (bit<8>)hdr.bfd.state
                        || old_diag != (bit<8>)hdr.bfd.diag
                        || old_mult != hdr.bfd.detect_mult
                        || old_disc != hdr.bfd.my_disc
                        || old_min_tx != hdr.bfd.desired_min_tx_us
                        || old_min_rx != hdr.bfd.required_min_rx_us
                        || (hdr.bfd.flags & BFD_FLAG_F) != 0
                        || state != STATE_UP) {
                    /* No peer_event_t UP for a BFD slot: this digest says it all. */
                    hb_state.write(meta.index, STATE_UP);
                    hb_reason.count(REASON_BFD_EVENT);
                    bfd_event_t event;
                    event.index = meta.index;
                    event.state = (bit<8>)hdr.bfd.state;
                    event.diag = (bit<8>)hdr.bfd.diag;
                    event.flags = (bit<8>)hdr.bfd.flags;
                    event.detect_mult = hdr.bfd.detect_mult;
                    event.my_disc = hdr.bfd.my_disc;
                    event.desired_min_tx_us = hdr.bfd.desired_min_tx_us;
                    event.required_min_rx_us = hdr.bfd.required_min_rx_us;
                    event.time_us = now;
                    digest<bfd_event_t>(DIGEST_RECEIVER, event);
                }
            }
            hb_reason.count(reason);
        } else {
            l2_forward.apply();
        }

        /* The one place a peer_event_t is raised: bmv2 sends digests only from ingress. (A
         * packet that raises bfd_event_t above never carries a peer_event_t: bmv2 keeps one
         * digest per packet.) */
        if (meta.ev_state != STATE_UNKNOWN) {
            if (meta.ev_state == STATE_UP) {
                hb_reason.count(REASON_PEER_UP_EVENT);
            } else {
                hb_reason.count(REASON_PEER_DOWN_EVENT);
            }
            peer_event_t event;
            event.index = meta.ev_index;
            event.state = meta.ev_state;
            event.last_seq = meta.ev_last_seq;
            event.time_us = meta.ev_time_us;
            digest<peer_event_t>(DIGEST_RECEIVER, event);
        }
    }
}

#endif  /* HB_INGRESS_P4 */
