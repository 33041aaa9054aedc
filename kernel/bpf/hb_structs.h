/* SPDX-License-Identifier: Apache-2.0 */
/* Map keys/values and wire structs. Every multi-byte map field is HOST byte order
 * (the Python loader packs them natively); wire structs are network byte order. */
#ifndef HB_STRUCTS_H
#define HB_STRUCTS_H

#include <linux/types.h>

/* The 28-byte heartbeat header (version 2). tx_timestamp_us sits at offset 16 but the
 * header itself starts at frame offset 42, 4-byte aligned at best, so it stays split in two
 * 32-bit halves. */
struct hb_hdr {
	__be16 magic;
	__u8 version;
	__u8 type;
	__be32 peer_id;
	__be32 sequence;
	__be32 nonce; /* nonce_key ^ sequence, written per replica, echoed by the peer */
	__be32 tx_us_hi;
	__be32 tx_us_lo;
	__u8 status;
	__u8 load;
	__be16 reserved;
};

/* HbIngress.peers key */
struct peer_key {
	__u32 src_addr;
	__u32 peer_id;
};

/* HbIngress.peers value: the params of set_peer_index(index, nonce_key, min_ttl) */
struct peer_entry {
	__u32 index;
	__u32 nonce_key; /* an answer must echo nonce_key ^ sequence */
	__u8 min_ttl;    /* GTSM floor (RFC 5082): 0 off, 255 single hop */
	__u8 pad[3];
};

/* HbIngress.l2_forward key: the 48-bit destination MAC, padded to 8 bytes */
struct l2_key {
	__u8 addr[6];
	__u8 pad[2];
};

struct l2_action {
	__u32 action; /* HB_L2_FORWARD or HB_L2_DROP */
	__u32 port;   /* P4 port number (ports map gives the ifindex) */
};

/* HbEgress.peer_requests value (array indexed by peer index; valid = 0 means no entry) */
struct peer_request {
	__u8 dst_mac[6];
	__u8 detect_mult;
	__u8 valid;
	__u32 dst_addr;
	__u32 peer_id;
	__u32 nonce_key; /* the request's nonce = nonce_key ^ sequence */
};

/* One replica of a multicast group at a position 0..count-1 */
struct mcast_key {
	__u32 group;
	__u32 pos;
};

struct mcast_replica {
	__u32 port;
	__u32 instance; /* = peer index */
};

struct mcast_group {
	__u32 count;
};

/* hb_reason value (per CPU) */
struct reason_count {
	__u64 packets;
	__u64 bytes;
};

/* Ring-buffer record = docs/dataplane.md peer_event_t */
struct hb_event {
	__u64 time_us;
	__u32 last_seq;
	__u16 index;
	__u8 state;
	__u8 pad;
};

/* Appended (not prepended: bpf_skb_adjust_room only handles IP frames) by
 * Datapath.packet_out() to every frame it writes into the CPU port, and kept by the
 * "carrier": the template frame that hb_tc_cpu sends back through a pacer of the CPU port
 * to run the next burst of a round, or the next round. */
struct hb_cpu_trailer {
	__u32 magic;       /* HB_CPU_TRAILER_MAGIC */
	__u16 egress_port; /* used when mcast_grp == 0 */
	__u16 mcast_grp;
	__u32 start;       /* first replica position of this burst (0: a round starts) */
	__u16 generation;  /* 0: a single round; else the schedule (hb_round) it drives */
	__u16 lap;         /* passes through the round pacer so far in this round */
};

/* The one schedule of periodic rounds the kernel target keeps (hb_rounds[0]). The target
 * process writes it when a template asks for a period; the carrier runs the rounds. */
struct hb_round {
	__u64 period_ns;  /* 0: no periodic rounds */
	__u64 round_ns;   /* when the current round started (CLOCK_MONOTONIC) */
	__u32 laps;       /* passes through the round pacer per round (long periods) */
	__u32 sequence;   /* sequence of the current round */
	__u16 generation; /* of the live carrier; a new schedule bumps it and the old carrier dies */
	__u16 group;      /* the multicast group the rounds fan out to */
	__u8 frame[HB_FRAME_LEN]; /* the request template */
	__u8 pad[6];
};

/* Facts the loader fills in (hb_config[0]) */
struct hb_config {
	__u32 round_ifindex; /* CPU-port end whose tbf paces rounds (one pass = one lap) */
	__u32 burst_ifindex; /* CPU-port end whose tbf spaces the bursts of a round */
	__u64 sweep_ns;      /* how often the deadline sweeper runs */
	__u32 index_limit;   /* 1 + the highest peer index with a peer_requests entry */
	__u32 pad;
};

/* The DOWN-deadline sweeper (hb_sweeper[0]): while rounds are periodic, a BPF timer that
 * every hb_config.sweep_ns checks each peer's deadline, last answer + detect_mult x period.
 * (One timer for all peers: per-peer timers would be allocated by bpf_timer_init, which on
 * 6.18 fails with -ENOMEM after a few hundred, in softirq and in process context alike.) */
struct hb_sweeper {
	struct bpf_timer timer;
};

#endif
