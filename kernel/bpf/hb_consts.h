/* SPDX-License-Identifier: Apache-2.0 */
/* Constants shared by the hbmon BPF programs; numbers are the contract of
 * docs/protocol.md and docs/dataplane.md (controller/hbmon/protocol.py mirrors them). */
#ifndef HB_CONSTS_H
#define HB_CONSTS_H

/* Heartbeat wire protocol (docs/protocol.md) */
#define HB_MAGIC 0x4842
#define HB_VERSION 2 /* 2: the nonce field (protocol.md "Version history") */
#define HB_TYPE_REQUEST 1
#define HB_TYPE_RESPONSE 2
#define HB_REQUEST_PORT 9190  /* peers listen here */
#define HB_RESPONSE_PORT 9191 /* responses arrive here */
#define HB_HDR_LEN 28
#define HB_UDP_LEN (8 + HB_HDR_LEN)
#define HB_IPV4_TOTAL_LEN (20 + HB_UDP_LEN)
#define HB_FRAME_LEN (14 + HB_IPV4_TOTAL_LEN) /* Ethernet + IPv4 + UDP + heartbeat = 70 */

/* BFD control packets (docs/bfd.md; RFC 5880 section 4.1, RFC 5881 single hop) */
#define HB_BFD_PORT 3784            /* UDP destination of single-hop control packets */
#define HB_BFD_SRC_PORT_BASE 49152  /* our source port: base + (index mod 16384) */
#define HB_BFD_VERSION 1
#define HB_BFD_LEN 24               /* no authentication section */
#define HB_BFD_UDP_LEN (8 + HB_BFD_LEN)
#define HB_BFD_IPV4_TOTAL_LEN (20 + HB_BFD_UDP_LEN)
#define HB_BFD_FRAME_LEN (14 + HB_BFD_IPV4_TOTAL_LEN) /* 66 */
#define HB_BFD_TTL 255              /* sent, and required on receipt (RFC 5881 section 5) */
#define HB_BFD_STATE_INIT 2
#define HB_BFD_STATE_UP 3
#define HB_BFD_FLAG_P 0x20
#define HB_BFD_FLAG_F 0x10
#define HB_BFD_FLAG_A 0x04
#define HB_BFD_FLAG_M 0x01

/* Sizes. Per-peer maps are resized by the loader (Datapath(max_peers=...)). */
#define HB_MAX_PEERS 65536
#define HB_MAX_PORTS 512 /* P4 port numbers are 9 bits */
#define HB_L2_SIZE 1024
#define HB_MAX_GROUPS 256
#define HB_REASON_COUNT 32
#define HB_EVENTS_BYTES (256 * 1024)
/* Periodic schedules the target keeps, one per kind of fan-out template (hb_rounds[i]):
 * heartbeat requests and BFD control packets, each with its own period and round pacer */
#define HB_SCHEDULES 2
#define HB_SCHEDULE_REQUEST 0
#define HB_SCHEDULE_BFD 1

/* Fan-out bursts and the round timer (docs/dataplane.md "Rounds kept by the target").
 * A burst is at most HB_BURST replicas: each clone lands in a 256-entry veth ring or the
 * per-CPU backlog, so a round is cut into bursts; the burst pacer (a tbf qdisc the loader
 * sets on the CPU port) spaces them so the receivers drain what the previous burst queued. */
#define HB_BURST 128
#define HB_PERIOD_MIN_US 100ULL             /* shortest round period a template may ask */
#define HB_PERIOD_MAX_US 3600000000ULL      /* longest: one hour */

/* hb_reason counter index = reason code (docs/dataplane.md "Counter") */
enum hb_reason {
	HB_RESPONSE_RECORDED = 0,
	HB_REQUEST_SENT = 1,
	HB_TRUNCATED = 2,
	HB_BAD_MAGIC = 3,
	HB_BAD_VERSION = 4,
	HB_BAD_TYPE = 5,
	HB_BAD_LENGTH = 6,
	HB_UNKNOWN_PEER = 7,
	HB_SPOOFED = 8,
	HB_DUPLICATE = 9,
	HB_OLD_SEQUENCE = 10,
	HB_REQUEST_NO_PEER = 11,
	HB_BAD_TEMPLATE = 12,
	HB_PEER_DOWN_EVENT = 13,
	HB_PEER_UP_EVENT = 14,
	HB_FUTURE_SEQUENCE = 15, /* after the last request sent (or none sent) */
	HB_BAD_NONCE = 16,       /* not the nonce the peer's request carried */
	HB_BAD_TTL = 17,         /* IPv4 TTL below the peer's min_ttl (GTSM) */
	/* BFD (docs/bfd.md "Receive" and "Transmit") */
	HB_BFD_RECORDED = 18,
	HB_BFD_SENT = 19,
	HB_BFD_TRUNCATED = 20,    /* fewer than 24 bytes after UDP */
	HB_BFD_BAD_VERSION = 21,  /* version != 1 */
	HB_BFD_MALFORMED = 22,    /* length, detect mult 0, M or A, discriminator rules */
	HB_BFD_BAD_TTL = 23,      /* TTL != 255 */
	HB_BFD_UNKNOWN_DISCRIMINATOR = 24, /* your discriminator names no session */
	HB_BFD_UNKNOWN_PEER = 25, /* your discriminator 0, no session for (source, port) */
	HB_BFD_EVENT = 26,        /* bfd_event_t records raised */
};

/* hb_events record kinds (the byte at offset 15 of every record) */
#define HB_EVENT_PEER 0 /* struct hb_event: peer_event_t */
#define HB_EVENT_BFD 1  /* struct hb_bfd_event: bfd_event_t */

/* hb_state values */
enum hb_plane_state {
	HB_STATE_UNKNOWN = 0,
	HB_STATE_UP = 1,
	HB_STATE_DOWN = 2,
};

/* l2_forward actions */
#define HB_L2_FORWARD 0
#define HB_L2_DROP 1

/* CPU port: every frame written by Datapath.packet_out() ends with struct hb_cpu_trailer
 * carrying this magic; anything else arriving there (e.g. the host's own chatter) is dropped. */
#define HB_CPU_TRAILER_MAGIC 0x48424350 /* "HBCP" */
/* skb->mark of the copy that empties the burst pacer; the CPU port drops it */
#define HB_PRIMER_MARK 0x48425052 /* "HBPR" */

/* tc return codes (linux/pkt_cls.h would drag in more than needed) */
#ifndef TC_ACT_OK
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#endif

#endif
