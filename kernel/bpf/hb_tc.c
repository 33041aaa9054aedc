// SPDX-License-Identifier: Apache-2.0
/* tc programs:
 *  - hb_tc_l2:  ordinary forwarding (HbIngress.l2_forward) on every monitored port's ingress;
 *  - hb_tc_cpu: the CPU port (ingress of the loader's veth pair end): PacketOut delivery and
 *    the in-kernel request fan-out (packet replication engine + HbEgress.peer_requests), in
 *    bursts, and the round timer: the carrier of a periodic schedule keeps circulating
 *    through the CPU port, held by a tbf qdisc until its next round, with no user-space
 *    wake-up (docs/dataplane.md "Rounds kept by the target"). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "hb_maps.h"

#define REG(map, idx) ((void *)bpf_map_lookup_elem(&(map), &(idx)))

/* Frame offsets of the fields a replica rewrites (Ethernet 14 + IPv4 20 + UDP 8 + hb). */
#define OFF_IP 14
#define OFF_IP_CSUM (OFF_IP + 10)
#define OFF_IP_DST (OFF_IP + 16)
#define OFF_UDP (OFF_IP + 20)
#define OFF_UDP_CSUM (OFF_UDP + 6)
#define OFF_HB (OFF_UDP + 8)
#define OFF_HB_PEER_ID (OFF_HB + 4)
#define OFF_HB_SEQ (OFF_HB + 8)
#define OFF_HB_NONCE (OFF_HB + 12)
#define OFF_HB_TX_US (OFF_HB + 16)
/* ... and of a BFD control packet (docs/bfd.md "Transmit") */
#define OFF_UDP_SRC OFF_UDP
#define OFF_BFD OFF_HB
#define OFF_BFD_ECHO (OFF_BFD + 20) /* required min echo RX: the template's tick period */

static __always_inline __u32 port_ifindex(__u32 port)
{
	__u32 *ifindex = bpf_map_lookup_elem(&ports, &port);

	return ifindex ? *ifindex : 0;
}

SEC("tc")
int hb_tc_l2(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct l2_key key = {};
	struct l2_action *act;
	__u32 ifindex;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
	act = bpf_map_lookup_elem(&l2_forward, &key);
	if (!act)
		return TC_ACT_OK; /* the host is an end station: a miss goes to its stack */
	if (act->action == HB_L2_DROP)
		return TC_ACT_SHOT;
	ifindex = port_ifindex(act->port);
	if (!ifindex)
		return TC_ACT_SHOT; /* no such port */
	return bpf_redirect(ifindex, 0);
}

struct fanout {
	struct __sk_buff *skb;
	__u32 group;
	__u32 start;
	__u32 schedule; /* HB_SCHEDULE_REQUEST or HB_SCHEDULE_BFD: the kind of template */
	__u32 ip_sum; /* one's-complement sum of the template IPv4 header without csum and dst */
	__u32 seq;    /* the template's (the round's) sequence: each replica's nonce and
		       * hb_last_tx_seq derive from it */
	/* No per-round tallies here: constants the callback increments would keep the verifier
	 * from converging on bpf_loop's callback state; each replica counts itself instead. */
	__u8 frame[HB_FRAME_LEN + 2]; /* the template; +2 keeps the struct 8-byte sized */
};

static __always_inline __u16 ip_csum(__u32 sum, __u32 daddr)
{
	sum += daddr >> 16;
	sum += daddr & 0xffff;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void put_be32(__u8 *p, __u32 v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

/* One replica = one pass of HbEgress for egress_rid = instance. */
static long fanout_one(__u32 i, void *arg)
{
	struct fanout *f = arg;
	struct mcast_key mk = { .group = f->group, .pos = f->start + i };
	struct mcast_replica *rep = bpf_map_lookup_elem(&mcast_replicas, &mk);
	struct peer_request *req;
	__u32 index;

	if (!rep)
		return 0; /* group shrank while this round was in flight */
	index = rep->instance;
	req = bpf_map_lookup_elem(&peer_requests, &index);

	__u32 *tx = REG(hb_tx_count, index);
	__u32 *miss = REG(hb_miss_count, index);
	__u64 *last_tx = REG(hb_last_tx_us, index);
	__u32 *last_seq = REG(hb_last_seq, index);
	__u32 *last_tx_seq = REG(hb_last_tx_seq, index);
	__u8 *state = REG(hb_state, index);

	if (!req || !req->valid || !tx || !miss || !last_tx || !last_seq || !last_tx_seq ||
	    !state) {
		hb_count(HB_REQUEST_NO_PEER, 1, HB_FRAME_LEN);
		return 0;
	}

	__u64 now = hb_now_us();
	__u8 *fr = f->frame;

	__builtin_memcpy(fr, req->dst_mac, ETH_ALEN);
	put_be32(fr + OFF_IP_DST, req->dst_addr);
	__u16 csum = ip_csum(f->ip_sum, req->dst_addr);
	fr[OFF_IP_CSUM] = csum >> 8;
	fr[OFF_IP_CSUM + 1] = csum;
	put_be32(fr + OFF_HB_PEER_ID, req->peer_id);
	put_be32(fr + OFF_HB_NONCE, req->nonce_key ^ f->seq);
	put_be32(fr + OFF_HB_TX_US, now >> 32);
	put_be32(fr + OFF_HB_TX_US + 4, now);
	if (bpf_skb_store_bytes(f->skb, 0, fr, HB_FRAME_LEN, BPF_F_INVALIDATE_HASH))
		return 1; /* cannot write the skb: give up this injection */

	/* hb_last_tx_seq before hb_tx_count: the XDP program takes hb_tx_count != 0 as "the
	 * last sent sequence is valid"; both are written before the request leaves, so its
	 * answer always finds them */
	*last_tx_seq = f->seq;
	__sync_fetch_and_add(tx, 1);
	*last_tx = now;
	/* detect_mult earlier requests each went a whole interval unanswered (0: never) */
	__u32 misses = *miss;

	if (req->detect_mult && misses >= req->detect_mult && *state != HB_STATE_DOWN) {
		*state = HB_STATE_DOWN;
		hb_notify(index, HB_STATE_DOWN, *last_seq, now);
		hb_count(HB_PEER_DOWN_EVENT, 1, HB_FRAME_LEN);
	}
	if (misses != 0xffffffff) /* saturates, as p4src/egress.p4 */
		*miss = misses + 1;
	hb_count(HB_REQUEST_SENT, 1, HB_FRAME_LEN);

	__u32 ifindex = port_ifindex(rep->port);

	if (ifindex)
		bpf_clone_redirect(f->skb, ifindex, 0);
	return 0;
}

/* A BFD session's detection time passed (RFC 5880 section 6.8.4): DOWN, and bfd.RemoteDiscr
 * zeroed (section 6.8.1), so our packets carry your discriminator 0 until the remote is
 * heard again (a restarted remote with a new discriminator would discard the old one). The
 * discriminator is zeroed before DOWN, as hb_xdp.c bfd_record writes it before UP: a packet
 * recorded meanwhile on another CPU then mostly leaves its discriminator; where it does not,
 * the remote's next packet differs from the 0 and is recorded as a change. The caller raises
 * the event. */
static __always_inline void bfd_detected(__u32 *remote_disc, __u8 *state)
{
	*remote_disc = 0;
	*state = HB_STATE_DOWN;
}

/* One replica of the BFD fan-out = one pass of HbEgress with bfd_requests[egress_rid]
 * (docs/bfd.md "Transmit"): detection, due-gating with jitter, rewrite. */
static long bfd_one(__u32 i, void *arg)
{
	struct fanout *f = arg;
	struct mcast_key mk = { .group = f->group, .pos = f->start + i };
	struct mcast_replica *rep = bpf_map_lookup_elem(&mcast_replicas, &mk);
	struct bfd_request *req;
	__u32 index;

	if (!rep)
		return 0; /* group shrank while this round was in flight */
	index = rep->instance;
	req = bpf_map_lookup_elem(&bfd_requests, &index);

	__u32 *tx = REG(hb_tx_count, index);
	__u64 *last_tx = REG(hb_last_tx_us, index);
	__u64 *last_rx = REG(hb_last_rx_us, index);
	__u8 *state = REG(hb_state, index);
	__u8 *final_due = REG(bfd_final_due, index);
	__u32 *remote_disc = REG(bfd_remote_disc, index);

	if (!req || !req->valid || !tx || !last_tx || !last_rx || !state || !final_due ||
	    !remote_disc) {
		hb_count(HB_REQUEST_NO_PEER, 1, HB_BFD_FRAME_LEN);
		return 0;
	}

	__u64 now = hb_now_us();

	/* 1. detection time (RFC 5880 section 6.8.4) */
	if (req->detect_time_us && *state == HB_STATE_UP && now > *last_rx &&
	    now - *last_rx > req->detect_time_us) { /* (XDP on another CPU may be ahead) */
		bfd_detected(remote_disc, state);
		hb_notify(index, HB_STATE_DOWN, 0, now);
		hb_count(HB_PEER_DOWN_EVENT, 1, HB_BFD_FRAME_LEN);
	}
	/* 2. due? every tx_interval minus a jitter in [0, interval / 4] (section 6.8.7); a tick
	 * is much shorter than an interval, so a replica not due is dropped uncounted */
	__u8 final = *final_due;

	if (*tx != 0 && !final) {
		__u32 interval = req->tx_interval_us;
		__u32 jitter = bpf_get_prandom_u32() % (interval / 4 + 1);

		if (now - *last_tx < (__u64)(interval - jitter))
			return 0;
	}

	/* 3. rewrite */
	__u8 *fr = f->frame;

	__builtin_memcpy(fr, req->dst_mac, ETH_ALEN);
	put_be32(fr + OFF_IP_DST, req->dst_addr);
	__u16 csum = ip_csum(f->ip_sum, req->dst_addr);
	fr[OFF_IP_CSUM] = csum >> 8;
	fr[OFF_IP_CSUM + 1] = csum;
	fr[OFF_UDP_SRC] = req->src_port >> 8;
	fr[OFF_UDP_SRC + 1] = req->src_port;
	fr[OFF_BFD] = (HB_BFD_VERSION << 5) | (req->diag & 0x1f);
	fr[OFF_BFD + 1] = (req->state << 6) | (req->flags & 0x3f) | (final ? HB_BFD_FLAG_F : 0);
	fr[OFF_BFD + 2] = req->detect_mult;
	fr[OFF_BFD + 3] = HB_BFD_LEN;
	put_be32(fr + OFF_BFD + 4, req->my_disc);
	put_be32(fr + OFF_BFD + 8, *remote_disc);
	put_be32(fr + OFF_BFD + 12, req->desired_min_tx_us);
	put_be32(fr + OFF_BFD + 16, req->required_min_rx_us);
	put_be32(fr + OFF_BFD_ECHO, 0);
	if (bpf_skb_store_bytes(f->skb, 0, fr, HB_BFD_FRAME_LEN, BPF_F_INVALIDATE_HASH))
		return 1; /* cannot write the skb: give up this injection */
	*final_due = 0;
	__sync_fetch_and_add(tx, 1);
	*last_tx = now;
	hb_count(HB_BFD_SENT, 1, HB_BFD_FRAME_LEN);

	__u32 ifindex = port_ifindex(rep->port);

	if (ifindex)
		bpf_clone_redirect(f->skb, ifindex, 0);
	return 0;
}

/* A BFD fan-out template as docs/bfd.md "Transmit" describes it. */
static __always_inline int bfd_template_ok(const __u8 *fr)
{
	const struct ethhdr *eth = (const void *)fr;
	const struct iphdr *iph = (const void *)(fr + OFF_IP);
	const struct udphdr *udp = (const void *)(fr + OFF_UDP);
	const struct bfd_hdr *bfd = (const void *)(fr + OFF_BFD);

	return eth->h_proto == bpf_htons(ETH_P_IP) && iph->version == 4 && iph->ihl == 5 &&
	       iph->protocol == IPPROTO_UDP && iph->tot_len == bpf_htons(HB_BFD_IPV4_TOTAL_LEN) &&
	       !(iph->frag_off & bpf_htons(0x3fff)) && udp->dest == bpf_htons(HB_BFD_PORT) &&
	       udp->len == bpf_htons(HB_BFD_UDP_LEN) && bfd->vers_diag >> 5 == HB_BFD_VERSION &&
	       bfd->length == HB_BFD_LEN;
}

/* A REQUEST template as docs/dataplane.md "Fan-out" describes it. */
static __always_inline int template_ok(const __u8 *fr)
{
	const struct ethhdr *eth = (const void *)fr;
	const struct iphdr *iph = (const void *)(fr + OFF_IP);
	const struct udphdr *udp = (const void *)(fr + OFF_UDP);
	const struct hb_hdr *hb = (const void *)(fr + OFF_HB);

	return eth->h_proto == bpf_htons(ETH_P_IP) && iph->version == 4 && iph->ihl == 5 &&
	       iph->protocol == IPPROTO_UDP && iph->tot_len == bpf_htons(HB_IPV4_TOTAL_LEN) &&
	       !(iph->frag_off & bpf_htons(0x3fff)) &&
	       udp->source == bpf_htons(HB_RESPONSE_PORT) &&
	       udp->dest == bpf_htons(HB_REQUEST_PORT) && udp->len == bpf_htons(HB_UDP_LEN) &&
	       hb->magic == bpf_htons(HB_MAGIC) && hb->version == HB_VERSION &&
	       hb->type == HB_TYPE_REQUEST;
}

/* Send the carrier (this skb: a template plus its trailer) back into the CPU port through
 * one of its pacers (tbf qdiscs): it arrives again when the pacer lets it go, without waking
 * any user-space process. Every carrier is HB_FRAME_LEN bytes + trailer (a 66-byte BFD
 * template is padded), so one pacer rate fits both kinds. */
static __always_inline int carry_on(struct __sk_buff *skb, struct hb_cpu_trailer *tr,
				    int round_pacer)
{
	__u32 key = 0;
	struct hb_config *cfg = bpf_map_lookup_elem(&hb_config, &key);
	__u32 ifindex = 0;

	if (cfg)
		ifindex = !round_pacer ? cfg->burst_ifindex
			  : tr->schedule == HB_SCHEDULE_BFD ? cfg->round_ifindex[HB_SCHEDULE_BFD]
							     : cfg->round_ifindex[HB_SCHEDULE_REQUEST];

	if (!ifindex)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, HB_FRAME_LEN + sizeof(*tr), 0) ||
	    bpf_skb_store_bytes(skb, HB_FRAME_LEN, tr, sizeof(*tr), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(ifindex, 0);
}

/* Empty the burst pacer's bucket so the next burst waits a gap from now, the end of this
 * one (a bucket that filled up while this burst ran would let it go at once): a
 * trailer-less copy passes the pacer and is dropped on the other side. */
static __always_inline void prime_burst_pacer(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct hb_config *cfg = bpf_map_lookup_elem(&hb_config, &key);

	if (cfg && cfg->burst_ifindex) {
		skb->mark = HB_PRIMER_MARK;
		bpf_clone_redirect(skb, cfg->burst_ifindex, 0);
		skb->mark = 0;
	}
}

SEC("tc")
int hb_tc_cpu(struct __sk_buff *skb)
{
	struct hb_cpu_trailer tr;
	__u32 len = skb->len;

	if (len < ETH_HLEN + sizeof(tr) || skb->mark == HB_PRIMER_MARK)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, len - sizeof(tr), &tr, sizeof(tr)) ||
	    tr.magic != HB_CPU_TRAILER_MAGIC)
		return TC_ACT_SHOT; /* not a PacketOut (host chatter, a pacer primer) */
	len -= sizeof(tr);
	if (bpf_skb_change_tail(skb, len, 0))
		return TC_ACT_SHOT;

	if (tr.mcast_grp == 0) {
		__u32 ifindex = port_ifindex(tr.egress_port);

		return ifindex ? bpf_redirect(ifindex, 0) : TC_ACT_SHOT;
	}

	struct fanout f = {
		.skb = skb,
		.group = tr.mcast_grp,
		.start = tr.start,
	};
	struct hb_round *r = 0;
	__u32 frame_len = HB_FRAME_LEN;

	if (tr.generation) {
		__u32 sched = tr.schedule;

		if (sched >= HB_SCHEDULES)
			return TC_ACT_SHOT;
		f.schedule = sched;
		r = bpf_map_lookup_elem(&hb_rounds, &sched);
		/* a carrier whose schedule was replaced or stopped ends at a round boundary, so a
		 * round in progress always completes */
		if (!r)
			return TC_ACT_SHOT;
		if (tr.start == 0) {
			if (r->generation != tr.generation || !r->period_ns || r->group != tr.mcast_grp)
				return TC_ACT_SHOT;
			if (++tr.lap < r->laps) /* a long period: more laps before the round */
				return carry_on(skb, &tr, 1);
			tr.lap = 0;
			r->round_ns = bpf_ktime_get_ns();
			r->sequence++;
			/* the schedule's template, which the controller may have replaced */
			__builtin_memcpy(f.frame, r->frame, HB_FRAME_LEN);
			if (sched == HB_SCHEDULE_BFD)
				frame_len = HB_BFD_FRAME_LEN;
			else
				put_be32(f.frame + OFF_HB_SEQ, r->sequence);
			if (len < frame_len)
				return TC_ACT_SHOT;
			goto loaded;
		}
	}
	/* a heartbeat template is 70 bytes, a BFD one 66: load what there is of the first 70 */
	if (len >= HB_FRAME_LEN) {
		if (bpf_skb_load_bytes(skb, 0, f.frame, HB_FRAME_LEN))
			return TC_ACT_SHOT;
	} else if (len >= HB_BFD_FRAME_LEN) {
		if (bpf_skb_load_bytes(skb, 0, f.frame, HB_BFD_FRAME_LEN))
			return TC_ACT_SHOT;
	} else {
		goto bad;
	}
	if (bfd_template_ok(f.frame)) {
		f.schedule = HB_SCHEDULE_BFD;
		frame_len = HB_BFD_FRAME_LEN;
	} else if (len < HB_FRAME_LEN || !template_ok(f.frame)) {
		goto bad;
	}
	if (tr.generation && f.schedule != tr.schedule)
		return TC_ACT_SHOT; /* a carrier whose frame is not its schedule's kind */
	goto loaded;
bad:
	if (tr.start == 0) /* counted once per PacketOut, not per burst */
		hb_count(HB_BAD_TEMPLATE, 1, len);
	return TC_ACT_SHOT;
loaded:
	if (len > frame_len && bpf_skb_change_tail(skb, frame_len, 0))
		return TC_ACT_SHOT; /* Ethernet padding (or a BFD carrier's) */

	/* monitors send UDP checksum 0 (protocol.md); rewriting would invalidate any other */
	f.frame[OFF_UDP_CSUM] = 0;
	f.frame[OFF_UDP_CSUM + 1] = 0;
	f.frame[OFF_IP_CSUM] = 0;
	f.frame[OFF_IP_CSUM + 1] = 0;
	__u32 sum = 0;
	const __u16 *w = (const __u16 *)(f.frame + OFF_IP);

	/* words 0-7 (checksum word 5 now zero); words 8-9, the destination, per replica */
	for (int k = 0; k < 8; k++)
		sum += bpf_ntohs(w[k]);
	f.ip_sum = sum;
	f.seq = ((__u32)f.frame[OFF_HB_SEQ] << 24) | ((__u32)f.frame[OFF_HB_SEQ + 1] << 16) |
		((__u32)f.frame[OFF_HB_SEQ + 2] << 8) | f.frame[OFF_HB_SEQ + 3];

	struct mcast_group *grp = bpf_map_lookup_elem(&mcast_groups, &f.group);
	__u32 total = grp ? grp->count : 0;

	if (tr.start >= total) /* empty group: nothing this round (the schedule goes on) */
		goto next_round;
	__u32 n = total - tr.start;

	if (n > HB_BURST)
		n = HB_BURST;
	if (f.schedule == HB_SCHEDULE_BFD) {
		put_be32(f.frame + OFF_BFD_ECHO, 0); /* the tick period is not for the wire */
		bpf_loop(n, bfd_one, &f, 0);
	} else {
		bpf_loop(n, fanout_one, &f, 0);
	}

	tr.schedule = f.schedule;
	if (tr.start + n < total) { /* the rest of the round, one burst after the other */
		tr.start += n;
		prime_burst_pacer(skb);
		return carry_on(skb, &tr, 0);
	}
next_round:
	tr.schedule = f.schedule;
	if (tr.generation) {
		tr.start = 0;
		return carry_on(skb, &tr, 1);
	}
	return TC_ACT_SHOT; /* a single round is done */
}

/* ---- DOWN deadlines (docs/dataplane.md "Miss detection") ---- */

#ifndef CLOCK_MONOTONIC
#define CLOCK_MONOTONIC 1
#endif

struct sweep {
	__u64 now;       /* us */
	__u64 period_us; /* of the heartbeat schedule (0: none, no heartbeat deadlines) */
	__u32 bfd;       /* the BFD schedule runs: BFD deadlines too */
};

/* One slot: a heartbeat peer UP whose last fresh response is older than detect_mult x
 * period, or a BFD session UP whose last control packet is older than its detection time
 * (docs/bfd.md "Transmit" 1, between the rounds that also check it): DOWN. */
static long sweep_one(__u32 index, void *arg)
{
	struct sweep *s = arg;
	struct peer_request *req = bpf_map_lookup_elem(&peer_requests, &index);
	struct bfd_request *breq = bpf_map_lookup_elem(&bfd_requests, &index);
	__u8 *state = REG(hb_state, index);
	__u64 *last_rx = REG(hb_last_rx_us, index);
	__u32 *last_seq = REG(hb_last_seq, index);

	if (!req || !breq || !state || !last_rx || !last_seq)
		return 1; /* beyond max_peers */
	if (*state != HB_STATE_UP)
		return 0;
	if (s->period_us && req->valid && req->detect_mult &&
	    *last_rx + s->period_us * req->detect_mult <= s->now) {
		*state = HB_STATE_DOWN;
		hb_notify(index, HB_STATE_DOWN, *last_seq, s->now);
		hb_count(HB_PEER_DOWN_EVENT, 1, 0); /* no packet carries this event */
	} else if (s->bfd && breq->valid && breq->detect_time_us && s->now > *last_rx &&
		   s->now - *last_rx > breq->detect_time_us) {
		__u32 *remote_disc = REG(bfd_remote_disc, index);

		if (!remote_disc)
			return 1;
		bfd_detected(remote_disc, state);
		hb_notify(index, HB_STATE_DOWN, 0, s->now);
		hb_count(HB_PEER_DOWN_EVENT, 1, 0);
	}
	return 0;
}

static int sweep(void *map, __u32 *key, struct hb_sweeper *sw)
{
	__u32 zero = 0, one = HB_SCHEDULE_BFD;
	struct hb_round *r = bpf_map_lookup_elem(&hb_rounds, &zero);
	struct hb_round *rb = bpf_map_lookup_elem(&hb_rounds, &one);
	struct hb_config *cfg = bpf_map_lookup_elem(&hb_config, &zero);

	if (!r || !rb || !cfg || (!r->period_ns && !rb->period_ns) || !cfg->sweep_ns)
		return 0; /* no schedule, no deadlines: the next schedule starts the sweeper */
	struct sweep s = {
		.now = hb_now_us(),
		.period_us = r->period_ns / 1000,
		.bfd = rb->period_ns != 0,
	};

	bpf_loop(cfg->index_limit, sweep_one, &s, 0);
	bpf_timer_start(&sw->timer, cfg->sweep_ns, 0);
	return 0;
}

/* Run by the loader with BPF_PROG_TEST_RUN when a schedule starts: (re)starts the sweeper.
 * Returns 0, or the error of bpf_timer_init / bpf_timer_start. */
SEC("tc")
int hb_sweeper_start(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct hb_sweeper *sw = bpf_map_lookup_elem(&hb_sweeper, &zero);
	struct hb_config *cfg = bpf_map_lookup_elem(&hb_config, &zero);
	long err;

	if (!sw || !cfg)
		return 1;
	err = bpf_timer_init(&sw->timer, &hb_sweeper, CLOCK_MONOTONIC);
	if (err == 0)
		err = bpf_timer_set_callback(&sw->timer, sweep);
	if (err && err != -16) /* EBUSY: made by an earlier schedule */
		return -err;
	return -bpf_timer_start(&sw->timer, cfg->sweep_ns, 0);
}

char _license[] SEC("license") = "GPL";
