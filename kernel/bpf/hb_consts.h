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

/* Sizes. Per-peer maps are resized by the loader (Datapath(max_peers=...)). */
#define HB_MAX_PEERS 65536
#define HB_MAX_PORTS 512 /* P4 port numbers are 9 bits */
#define HB_L2_SIZE 1024
#define HB_MAX_GROUPS 256
#define HB_REASON_COUNT 32
#define HB_EVENTS_BYTES (256 * 1024)

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
};

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
