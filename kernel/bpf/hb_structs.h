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

/* The 24-byte BFD control packet (RFC 5880 section 4.1, no authentication). It starts at
 * frame offset 42: the 32-bit fields are only 2-byte aligned, read them with bpf_ntohl. */
struct bfd_hdr {
	__u8 vers_diag;   /* version << 5 | diag */
	__u8 state_flags; /* state << 6 | P F C A D M */
	__u8 detect_mult;
	__u8 length;
	__be32 my_disc;
	__be32 your_disc;
	__be32 desired_min_tx_us;
	__be32 required_min_rx_us;
	__be32 required_min_echo_rx_us; /* in the fan-out template: the tick period */
} __attribute__((packed));

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

/* HbIngress.bfd_sessions (your_disc -> ...) and HbIngress.bfd_peers value: the param of
 * set_bfd_session(index) */
struct bfd_session {
	__u32 index;
};

/* HbIngress.bfd_peers key: (IPv4 source, ingress P4 port) */
struct bfd_peer_key {
	__u32 src_addr;
	__u32 port;
};

/* HbEgress.bfd_requests value (array indexed by session index; valid = 0: no entry): the
 * params of bfd_control */
struct bfd_request {
	__u8 dst_mac[6];
	__u8 valid;
	__u8 state;
	__u8 diag;
	__u8 flags; /* byte 1's low bits the controller wants set (P during a Poll Sequence) */
	__u8 detect_mult;
	__u8 pad;
	__u16 src_port;
	__u16 pad2;
	__u32 dst_addr;
	__u32 my_disc;
	__u32 desired_min_tx_us;
	__u32 required_min_rx_us;
	__u32 tx_interval_us; /* a replica is due every tx_interval_us minus jitter */
	__u32 detect_time_us; /* 0: no detection */
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
	__u8 kind; /* HB_EVENT_PEER */
};

/* Ring-buffer record = docs/bfd.md bfd_event_t; the same ring as hb_event (so a session's
 * BFD records and its DOWN events are read in the order they happened), told apart by
 * `kind` at the same offset */
struct hb_bfd_event {
	__u64 time_us;
	__u32 my_disc; /* the remote's */
	__u16 index;
	__u8 state;    /* remote state */
	__u8 kind;     /* HB_EVENT_BFD */
	__u32 desired_min_tx_us;
	__u32 required_min_rx_us;
	__u8 diag;
	__u8 flags;    /* byte 1 & 0x3f as received */
	__u8 detect_mult;
	__u8 pad[5];
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
	__u32 schedule;    /* which hb_rounds entry (HB_SCHEDULE_*) a carrier drives */
};

/* A schedule of periodic rounds the kernel target keeps (hb_rounds[HB_SCHEDULE_*]: one for
 * heartbeat requests, one for BFD). The target process writes it when a template asks for a
 * period; the carrier runs the rounds. A BFD template (66 bytes) is kept zero-padded. */
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
	__u32 round_ifindex[HB_SCHEDULES]; /* per schedule: the CPU-port end whose tbf paces
					    * its rounds (one pass = one lap) */
	__u32 burst_ifindex; /* CPU-port end whose tbf spaces the bursts of a round */
	__u32 index_limit;   /* 1 + the highest index with a peer_requests/bfd_requests entry */
	__u64 sweep_ns;      /* how often the deadline sweeper runs */
};

/* The DOWN-deadline sweeper (hb_sweeper[0]): while rounds are periodic, a BPF timer that
 * every hb_config.sweep_ns checks each peer's deadline, last answer + detect_mult x period.
 * (One timer for all peers: per-peer timers would be allocated by bpf_timer_init, which on
 * 6.18 fails with -ENOMEM after a few hundred, in softirq and in process context alike.) */
struct hb_sweeper {
	struct bpf_timer timer;
};

#endif
