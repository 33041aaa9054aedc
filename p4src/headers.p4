/*
 * hbmon data plane: headers, the controller headers, the digest and the metadata.
 */
#ifndef HB_HEADERS_P4
#define HB_HEADERS_P4

#include "constants.p4"

/* Prepended by the P4Runtime server to every PacketOut (ingress port CPU_PORT).
 * mcast_grp = 0: send the frame unchanged out of egress_port.
 * mcast_grp = 1 (the fan-out group): the frame is a REQUEST template, replicated to every peer. */
@controller_header("packet_out")
header packet_out_t {
    bit<9>  egress_port;
    bit<7>  _pad;
    bit<16> mcast_grp;
}

/* Reserved for future punts: nothing is sent to the CPU port today. */
@controller_header("packet_in")
header packet_in_t {
    bit<9> ingress_port;
    bit<7> _pad;
}

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<6>  dscp;
    bit<2>  ecn;
    bit<16> total_len;
    bit<16> identification;
    bit<3>  flags;
    bit<13> frag_offset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

header udp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

/* The 28-byte heartbeat header (docs/protocol.md, version 2), network byte order. */
header heartbeat_t {
    bit<16> magic;
    bit<8>  version;
    bit<8>  msg_type;
    bit<32> peer_id;
    bit<32> sequence;
    bit<32> nonce;            /* nonce_key ^ sequence, set per replica by egress, echoed */
    bit<64> tx_timestamp_us;  /* monitor's clock at transmission, echoed by the peer */
    bit<8>  status;           /* 0 HEALTHY, 1 DEGRADED, 2 DRAINING */
    bit<8>  load;             /* 0-255 */
    bit<16> reserved;
}

struct headers_t {
    packet_out_t packet_out;
    packet_in_t  packet_in;
    ethernet_t   ethernet;
    ipv4_t       ipv4;
    udp_t        udp;
    heartbeat_t  hb;
}

/* The notification the controller receives (P4Runtime DigestList "peer_event_t"). */
struct peer_event_t {
    bit<16> index;     /* peer index (slot) */
    bit<8>  state;     /* new hb_state: 1 UP, 2 DOWN */
    bit<32> last_seq;  /* hb_last_seq at the time of the event */
    bit<64> time_us;   /* target time of the event, microseconds */
}

struct metadata_t {
    bit<1>       from_cpu;     /* parser: the frame came with a packet_out header */
    bit<1>       fanout;       /* ingress: a valid REQUEST template sent to the fan-out group */
    bit<1>       resend;       /* ingress: a recirculated DOWN carrier, send it as it is */
    peer_index_t index;        /* ingress: the peer's slot, from `peers` */
    bit<32>      nonce_key;    /* ingress: the peer's nonce key, from `peers` */
    bit<8>       min_ttl;      /* ingress: the peer's GTSM floor, from `peers` (0: off) */
    bit<8>       detect_mult;  /* egress: from `peer_requests` */

    /* A pending peer_event_t. Ingress raises the digest when ev_state != 0. A DOWN event is
     * found in egress, where bmv2 cannot raise digests, so these fields (and ev_port, where
     * the carrying request must still go) survive the recirculation back to ingress. */
    @field_list(FL_PEER_EVENT) bit<16> ev_index;
    @field_list(FL_PEER_EVENT) bit<8>  ev_state;
    @field_list(FL_PEER_EVENT) bit<32> ev_last_seq;
    @field_list(FL_PEER_EVENT) bit<64> ev_time_us;
    @field_list(FL_PEER_EVENT) bit<9>  ev_port;
}

#endif  /* HB_HEADERS_P4 */
