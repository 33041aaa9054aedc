/*
 * hbmon data plane: constants shared by every block.
 *
 * Wire numbers come from docs/protocol.md, object numbers (reason codes, states, the fan-out
 * group, the CPU port) from docs/dataplane.md; controller/hbmon/protocol.py carries the same
 * values for Python code, and a change here must be made there too.
 */
#ifndef HB_CONSTANTS_P4
#define HB_CONSTANTS_P4

/* ---- Ethernet / IPv4 / UDP ---- */
const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<8>  IP_PROTO_UDP   = 17;

/* ---- heartbeat protocol (docs/protocol.md) ---- */
const bit<16> HB_REQUEST_PORT   = 9190;   /* peers listen here */
const bit<16> HB_RESPONSE_PORT  = 9191;   /* the monitor's request source port; responses arrive here */
const bit<16> HB_MAGIC          = 0x4842; /* "HB" */
const bit<8>  HB_VERSION        = 2;      /* 2: the nonce field (protocol.md "Version history") */
const bit<8>  HB_TYPE_REQUEST   = 1;
const bit<8>  HB_TYPE_RESPONSE  = 2;
const bit<16> HB_UDP_LEN        = 36;     /* 8 (UDP) + 28 (heartbeat) */
const bit<16> HB_IPV4_TOTAL_LEN = 56;     /* 20 (IPv4, no options) + 36 */

/* ---- BFD (docs/bfd.md: RFC 5880 asynchronous mode, RFC 5881 single hop IPv4) ---- */
const bit<16> BFD_PORT            = 3784;  /* RFC 5881 section 4: control packets to this port */
const bit<3>  BFD_VERSION         = 1;
const bit<8>  BFD_LEN             = 24;    /* no authentication section */
const bit<16> BFD_UDP_LEN         = 32;    /* 8 (UDP) + 24: the template's */
const bit<16> BFD_IPV4_TOTAL_LEN  = 52;    /* 20 (IPv4, no options) + 32: the template's */
const bit<8>  BFD_TTL             = 255;   /* RFC 5881 section 5: anything else crossed a router */
const bit<2>  BFD_STATE_INIT      = 2;     /* Init (2) and Up (3) need a your discriminator */
/* The low six bits of byte 1 (hdr.bfd.flags). */
const bit<6>  BFD_FLAG_P          = 0x20;  /* Poll: the remote asks for a Final */
const bit<6>  BFD_FLAG_F          = 0x10;  /* Final: answers our Poll */
const bit<6>  BFD_FLAG_A          = 0x04;  /* Authentication present: none is configured */
const bit<6>  BFD_FLAG_M          = 0x01;  /* Multipoint: must be zero */

/* ---- target ---- */
const bit<9>  CPU_PORT = 255;  /* simple_switch_grpc --cpu-port 255 */
/* The fan-out groups are multicast group 1 (heartbeat requests) and 2 (BFD control packets);
 * the data plane only sees them as a PacketOut's nonzero mcast_grp and tells the two kinds of
 * template apart by their contents, so it needs no constant here. */

/* Peer slots: index 0 .. 65535 (bmv2's replication id egress_rid is 16 bits). */
#define HB_MAX_PEERS 65536
typedef bit<16> peer_index_t;

/* ---- hb_state values ---- */
const bit<8> STATE_UNKNOWN = 0;   /* no fresh response since the slot was reset */
const bit<8> STATE_UP      = 1;
const bit<8> STATE_DOWN    = 2;

/* ---- hb_reason counter indexes ---- */
#define HB_REASON_COUNT 32  /* room for new reasons without resizing the counter again */
typedef bit<8> reason_t;
const reason_t REASON_RESPONSE_RECORDED = 0;
const reason_t REASON_REQUEST_SENT      = 1;
const reason_t REASON_TRUNCATED         = 2;
const reason_t REASON_BAD_MAGIC         = 3;
const reason_t REASON_BAD_VERSION       = 4;
const reason_t REASON_BAD_TYPE          = 5;
const reason_t REASON_BAD_LENGTH        = 6;
const reason_t REASON_UNKNOWN_PEER      = 7;
const reason_t REASON_SPOOFED           = 8;
const reason_t REASON_DUPLICATE         = 9;
const reason_t REASON_OLD_SEQUENCE      = 10;
const reason_t REASON_REQUEST_NO_PEER   = 11;
const reason_t REASON_BAD_TEMPLATE      = 12;
const reason_t REASON_PEER_DOWN_EVENT   = 13;
const reason_t REASON_PEER_UP_EVENT     = 14;
const reason_t REASON_FUTURE_SEQUENCE   = 15;  /* after the last request sent (or none sent) */
const reason_t REASON_BAD_NONCE         = 16;  /* not the nonce the peer's request carried */
const reason_t REASON_BAD_TTL           = 17;  /* IPv4 TTL below the peer's min_ttl (GTSM) */
/* BFD (docs/bfd.md "Receive" checks 1-7, "Transmit", the bfd_event_t digest) */
const reason_t REASON_BFD_RECORDED              = 18;
const reason_t REASON_BFD_SENT                  = 19;
const reason_t REASON_BFD_TRUNCATED             = 20;  /* fewer than 24 bytes after UDP */
const reason_t REASON_BFD_BAD_VERSION           = 21;
const reason_t REASON_BFD_MALFORMED             = 22;
const reason_t REASON_BFD_BAD_TTL               = 23;  /* TTL != 255 */
const reason_t REASON_BFD_UNKNOWN_DISCRIMINATOR = 24;  /* your_disc names no session */
const reason_t REASON_BFD_UNKNOWN_PEER          = 25;  /* your_disc 0, (source, port) unknown */
const reason_t REASON_BFD_EVENT                 = 26;  /* bfd_event_t digests raised */

/* ---- v1model instance types (bmv2 simple_switch) ---- */
const bit<32> INSTANCE_TYPE_RECIRC      = 4;
const bit<32> INSTANCE_TYPE_REPLICATION = 5;

/* Field list carried by the DOWN-event recirculation (metadata_t fields tagged with it).
 * A macro, not a const: @field_list() needs a literal. */
#define FL_PEER_EVENT 1

/* Receiver argument of digest(); bmv2 ignores it, P4Runtime names the digest by its type. */
const bit<32> DIGEST_RECEIVER = 1;

#endif  /* HB_CONSTANTS_P4 */
