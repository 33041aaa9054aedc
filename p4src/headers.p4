/*
 * hbmon data plane: headers, the controller headers, the digest and the metadata.
 */
#ifndef HB_HEADERS_P4
#define HB_HEADERS_P4

#include "constants.p4"

/* Prepended by the P4Runtime server to every PacketOut (ingress port CPU_PORT).
 * mcast_grp = 0: send the frame unchanged out of egress_port.
 * mcast_grp = 1 (the fan-out group): the frame is a REQUEST template, replicated to every peer.
 * mcast_grp = 2 (the BFD fan-out): a BFD control packet template, one replica per session. */
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

/* The 24-byte BFD control packet without authentication (RFC 5880 section 4.1; docs/bfd.md
 * "Wire"), network byte order. */
header bfd_t {
    bit<3>  version;                  /* 1 */
    bit<5>  diag;
    bit<2>  state;                    /* 0 AdminDown, 1 Down, 2 Init, 3 Up */
    bit<6>  flags;                    /* P F C A D M: 0x20 .. 0x01 */
    bit<8>  detect_mult;
    bit<8>  length;                   /* 24 */
    bit<32> my_disc;
    bit<32> your_disc;
    bit<32> desired_min_tx_us;
    bit<32> required_min_rx_us;
    bit<32> required_min_echo_rx_us;  /* we send 0; the template carries the tick period */
}

struct headers_t {
    packet_out_t packet_out;
    packet_in_t  packet_in;
    ethernet_t   ethernet;
    ipv4_t       ipv4;
    udp_t        udp;
    heartbeat_t  hb;
    bfd_t        bfd;
}

/* The notification the controller receives (P4Runtime DigestList "peer_event_t"). */
struct peer_event_t {
    bit<16> index;     /* peer index (slot) */
    bit<8>  state;     /* new hb_state: 1 UP, 2 DOWN */
    bit<32> last_seq;  /* hb_last_seq at the time of the event */
    bit<64> time_us;   /* target time of the event, microseconds */
}

/* A BFD control packet that changed something the controller acts on (P4Runtime DigestList
 * "bfd_event_t"; docs/bfd.md "Receive": when it is raised). */
struct bfd_event_t {
    bit<16> index;               /* the session's slot */
    bit<8>  state;               /* remote state (0 AdminDown, 1 Down, 2 Init, 3 Up) */
    bit<8>  diag;                /* remote diag */
    bit<8>  flags;               /* byte 1 & 0x3f as received (P 0x20, F 0x10, C 0x08, ...) */
    bit<8>  detect_mult;         /* remote detect mult */
    bit<32> my_disc;             /* the remote's discriminator */
    bit<32> desired_min_tx_us;   /* remote */
    bit<32> required_min_rx_us;  /* remote */
    bit<64> time_us;             /* target time of the packet (= hb_last_rx_us) */
}

struct metadata_t {
    bit<1>       from_cpu;     /* parser: the frame came with a packet_out header */
    bit<1>       fanout;       /* ingress: a valid REQUEST template sent to the fan-out group */
    bit<1>       resend;       /* ingress: a recirculated DOWN carrier, send it as it is */
    peer_index_t index;        /* ingress: the peer's slot, from `peers` */
    bit<32>      nonce_key;    /* ingress: the peer's nonce key, from `peers` */
    bit<8>       min_ttl;      /* ingress: the peer's GTSM floor, from `peers` (0: off) */
    bit<8>       detect_mult;  /* egress: from `peer_requests` */
    bit<1>       bfd_fanout;   /* ingress: a valid BFD template sent to a fan-out group */
    bit<32>      bfd_tx_interval_us;  /* egress: from `bfd_requests` (due-gating) */
    bit<32>      bfd_detect_time_us;  /* egress: from `bfd_requests` (detection, 0: off) */

    /* A pending peer_event_t. Ingress raises the digest when ev_state != 0. A DOWN event is
     * found in egress, where bmv2 cannot raise digests, so these fields (and ev_port, where
     * the carrying request must still go) survive the recirculation back to ingress.
     * ev_send: 1 = the carrier is a finished packet, send it on to ev_port; 0 = it only
     * carries the event (a BFD replica that was not due: its DOWN must still be raised, but
     * the packet must not leave; egress cannot drop it, as bmv2 does not recirculate a
     * packet marked to drop). */
    @field_list(FL_PEER_EVENT) bit<16> ev_index;
    @field_list(FL_PEER_EVENT) bit<8>  ev_state;
    @field_list(FL_PEER_EVENT) bit<32> ev_last_seq;
    @field_list(FL_PEER_EVENT) bit<64> ev_time_us;
    @field_list(FL_PEER_EVENT) bit<9>  ev_port;
    @field_list(FL_PEER_EVENT) bit<1>  ev_send;
}

#endif  /* HB_HEADERS_P4 */
