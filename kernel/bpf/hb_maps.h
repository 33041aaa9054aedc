/* SPDX-License-Identifier: Apache-2.0 */
/* Every map of the pipeline. Both objects (hb_xdp.o, hb_tc.o) include this file; the loader
 * creates the maps with hb_xdp.o and hands the same fds to hb_tc.o (bpf_map__reuse_fd). */
#ifndef HB_MAPS_H
#define HB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hb_consts.h"
#include "hb_structs.h"

/* ---- tables ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct peer_key);
	__type(value, struct peer_entry);
	__uint(max_entries, HB_MAX_PEERS);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* peer_id */
	__type(value, __u8);
	__uint(max_entries, HB_MAX_PEERS);
} peer_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l2_key);
	__type(value, struct l2_action);
	__uint(max_entries, HB_L2_SIZE);
} l2_forward SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct peer_request);
	__uint(max_entries, HB_MAX_PEERS);
} peer_requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* your discriminator (= our discriminator of the session) */
	__type(value, struct bfd_session);
	__uint(max_entries, HB_MAX_PEERS);
} bfd_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct bfd_peer_key);
	__type(value, struct bfd_session);
	__uint(max_entries, HB_MAX_PEERS);
} bfd_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct bfd_request);
	__uint(max_entries, HB_MAX_PEERS);
} bfd_requests SEC(".maps");

/* ifindex -> P4 port number (the ingress port of bfd_peers); filled by the loader */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HB_MAX_PORTS);
} port_numbers SEC(".maps");

/* P4 port number -> ifindex (0 = no such port); filled by the loader */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HB_MAX_PORTS);
} ports SEC(".maps");

/* Packet replication engine: group -> replica count, (group, position) -> replica */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mcast_group);
	__uint(max_entries, HB_MAX_GROUPS);
} mcast_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mcast_key);
	__type(value, struct mcast_replica);
	__uint(max_entries, 2 * HB_MAX_PEERS);
} mcast_replicas SEC(".maps");

/* The round schedules (HB_SCHEDULE_*), and the loader's CPU-port facts */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* the target process replaces a template in place */
	__type(key, __u32);
	__type(value, struct hb_round);
	__uint(max_entries, HB_SCHEDULES);
} hb_rounds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct hb_config);
	__uint(max_entries, 1);
} hb_config SEC(".maps");

/* The DOWN-deadline sweeper's timer (one, running while rounds are periodic) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct hb_sweeper);
	__uint(max_entries, 1);
} hb_sweeper SEC(".maps");

/* ---- registers: one mmap-able array per register, indexed by peer index ---- */

#define HB_REGISTER(name, vtype)                      \
	struct {                                      \
		__uint(type, BPF_MAP_TYPE_ARRAY);     \
		__uint(map_flags, BPF_F_MMAPABLE);    \
		__type(key, __u32);                   \
		__type(value, vtype);                 \
		__uint(max_entries, HB_MAX_PEERS);    \
	} name SEC(".maps")

HB_REGISTER(hb_rx_count, __u32);
HB_REGISTER(hb_tx_count, __u32);
HB_REGISTER(hb_dup_count, __u32);
HB_REGISTER(hb_miss_count, __u32);
HB_REGISTER(hb_last_seq, __u32);
HB_REGISTER(hb_last_rx_us, __u64);
HB_REGISTER(hb_last_tx_us, __u64);
HB_REGISTER(hb_rtt_last_us, __u32);
HB_REGISTER(hb_rtt_min_us, __u32);
HB_REGISTER(hb_rtt_max_us, __u32);
HB_REGISTER(hb_rtt_ewma_us, __u32);
HB_REGISTER(hb_peer_status, __u8);
HB_REGISTER(hb_peer_load, __u8);
HB_REGISTER(hb_state, __u8);
HB_REGISTER(hb_last_tx_seq, __u32);
/* BFD sessions (docs/bfd.md) */
HB_REGISTER(bfd_remote_state, __u8);
HB_REGISTER(bfd_remote_diag, __u8);
HB_REGISTER(bfd_remote_mult, __u8);
HB_REGISTER(bfd_remote_disc, __u32);
HB_REGISTER(bfd_remote_min_tx_us, __u32);
HB_REGISTER(bfd_remote_min_rx_us, __u32);
HB_REGISTER(bfd_final_due, __u8);

/* ---- counter and notifications ---- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct reason_count);
	__uint(max_entries, HB_REASON_COUNT);
} hb_reason SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HB_EVENTS_BYTES);
} hb_events SEC(".maps");

/* ---- helpers shared by the programs ---- */

static __always_inline void hb_count(__u32 reason, __u64 packets, __u64 bytes)
{
	struct reason_count *c = bpf_map_lookup_elem(&hb_reason, &reason);

	if (c) {
		c->packets += packets;
		c->bytes += bytes;
	}
}

static __always_inline __u64 hb_now_us(void)
{
	return bpf_ktime_get_ns() / 1000;
}

static __always_inline void hb_notify(__u32 index, __u8 state, __u32 last_seq, __u64 now)
{
	struct hb_event ev = {
		.time_us = now,
		.last_seq = last_seq,
		.index = (__u16)index,
		.state = state,
		.kind = HB_EVENT_PEER,
	};

	bpf_ringbuf_output(&hb_events, &ev, sizeof(ev), 0);
}

#endif
