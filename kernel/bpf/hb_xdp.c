// SPDX-License-Identifier: Apache-2.0
/* HbIngress for heartbeat responses and BFD control packets: classify what arrives on UDP
 * 9191 exactly as docs/protocol.md "How a monitor classifies" (same order, same reasons),
 * record fresh responses in the peer's slot, raise UP events; classify what arrives on UDP
 * 3784 as docs/bfd.md "Receive" and record it in the session's slot, raising bfd_event_t
 * records on changes. Both are consumed; everything else goes on to tc (l2_forward) and the
 * host stack untouched.
 * (DOWN deadlines, last answer + detect_mult x period, are swept in hb_tc.c.) */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "hb_maps.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define REG(map, idx) ((void *)bpf_map_lookup_elem(&(map), &(idx)))

static __always_inline int consume(__u32 reason, __u64 bytes)
{
	hb_count(reason, 1, bytes);
	return XDP_DROP;
}

/* The checks for a matched peer, in the order of p4src/ingress.p4 (TTL, nonce, future
 * sequence, duplicate, old), then the recording of a fresh response. */
static __always_inline int record(const struct peer_entry *peer, __u8 ttl,
				  const struct hb_hdr *hb, __u64 bytes)
{
	__u32 index = peer->index;
	__u32 *rx = REG(hb_rx_count, index);
	__u32 *tx = REG(hb_tx_count, index);
	__u32 *last_tx_seq = REG(hb_last_tx_seq, index);
	__u32 *dup = REG(hb_dup_count, index);
	__u32 *miss = REG(hb_miss_count, index);
	__u32 *last_seq = REG(hb_last_seq, index);
	__u64 *last_rx = REG(hb_last_rx_us, index);
	__u32 *rtt_last = REG(hb_rtt_last_us, index);
	__u32 *rtt_min = REG(hb_rtt_min_us, index);
	__u32 *rtt_max = REG(hb_rtt_max_us, index);
	__u32 *rtt_ewma = REG(hb_rtt_ewma_us, index);
	__u8 *status = REG(hb_peer_status, index);
	__u8 *load = REG(hb_peer_load, index);
	__u8 *state = REG(hb_state, index);

	if (!rx || !tx || !last_tx_seq || !dup || !miss || !last_seq || !last_rx || !rtt_last ||
	    !rtt_min || !rtt_max || !rtt_ewma || !status || !load || !state)
		return consume(HB_UNKNOWN_PEER, bytes); /* index beyond max_peers */

	__u32 seq = bpf_ntohl(hb->sequence);
	__u32 first = *rx == 0; /* nothing recorded in this slot yet: no "last one" to compare */
	__u32 ahead = seq - *last_tx_seq;

	/* GTSM (RFC 5082): an answer that crossed a router is not from the peer */
	if (ttl < peer->min_ttl)
		return consume(HB_BAD_TTL, bytes);
	/* not the nonce of that round's request: the sender never saw the request */
	if (bpf_ntohl(hb->nonce) != (peer->nonce_key ^ seq))
		return consume(HB_BAD_NONCE, bytes);
	/* answers a request not sent yet: recording it would make every real answer up to that
	 * sequence OLD_SEQUENCE (the lockout of issue 11). Like the two above, no register moves. */
	if (*tx == 0 || (ahead != 0 && ahead < 0x80000000u))
		return consume(HB_FUTURE_SEQUENCE, bytes);
	if (!first) {
		__u32 diff = seq - *last_seq; /* RFC 1982 on 32 bits, as hbmon.protocol.seq_newer */

		if (diff == 0) {
			__sync_fetch_and_add(dup, 1);
			return consume(HB_DUPLICATE, bytes);
		}
		if (diff >= 0x80000000u) {
			__sync_fetch_and_add(dup, 1);
			return consume(HB_OLD_SEQUENCE, bytes);
		}
	}

	__u64 now = hb_now_us();
	__u64 tx_us = ((__u64)bpf_ntohl(hb->tx_us_hi) << 32) | bpf_ntohl(hb->tx_us_lo);
	__u32 rtt;

	/* as p4src/ingress.p4: a time this target never wrote gives 0, a huge one saturates */
	if (tx_us > now)
		rtt = 0;
	else if (now - tx_us > 0xffffffffull)
		rtt = 0xffffffff;
	else
		rtt = (__u32)(now - tx_us);

	*last_seq = seq;
	*last_rx = now;
	*rtt_last = rtt;
	if (first || rtt < *rtt_min)
		*rtt_min = rtt;
	if (rtt > *rtt_max)
		*rtt_max = rtt;
	*rtt_ewma = first ? rtt : (__u32)((7ull * *rtt_ewma + rtt) >> 3);
	*status = hb->status;
	*load = hb->load;
	*miss = 0;
	__sync_fetch_and_add(rx, 1);
	hb_count(HB_RESPONSE_RECORDED, 1, bytes);

	if (*state != HB_STATE_UP) {
		*state = HB_STATE_UP;
		hb_notify(index, HB_STATE_UP, seq, now);
		hb_count(HB_PEER_UP_EVENT, 1, bytes);
	}
	return XDP_DROP;
}

/* docs/bfd.md "Receive" checks 5-7 and the recording, for the session at `index`: the
 * registers before and after, and a bfd_event_t record when something the controller acts
 * on changed (state, diag, mult, discriminator, timers), on a Final, or when the slot was
 * not UP. Steady Up/Up traffic writes the same values and raises nothing. */
static __always_inline int bfd_record(__u32 index, const struct bfd_hdr *bfd, __u64 bytes,
				      __u32 miss_reason)
{
	__u32 *rx = REG(hb_rx_count, index);
	__u64 *last_rx = REG(hb_last_rx_us, index);
	__u8 *state = REG(hb_state, index);
	__u8 *r_state = REG(bfd_remote_state, index);
	__u8 *r_diag = REG(bfd_remote_diag, index);
	__u8 *r_mult = REG(bfd_remote_mult, index);
	__u32 *r_disc = REG(bfd_remote_disc, index);
	__u32 *r_tx = REG(bfd_remote_min_tx_us, index);
	__u32 *r_rx = REG(bfd_remote_min_rx_us, index);
	__u8 *final_due = REG(bfd_final_due, index);

	if (!rx || !last_rx || !state || !r_state || !r_diag || !r_mult || !r_disc || !r_tx ||
	    !r_rx || !final_due)
		return consume(miss_reason, bytes); /* index beyond max_peers */

	__u8 st = bfd->state_flags >> 6;
	__u8 flags = bfd->state_flags & 0x3f;
	__u8 diag = bfd->vers_diag & 0x1f;
	__u8 mult = bfd->detect_mult;
	__u32 disc = bpf_ntohl(bfd->my_disc);
	__u32 tx = bpf_ntohl(bfd->desired_min_tx_us);
	__u32 rxi = bpf_ntohl(bfd->required_min_rx_us);
	__u64 now = hb_now_us();
	int changed = *r_state != st || *r_diag != diag || *r_mult != mult || *r_disc != disc ||
		      *r_tx != tx || *r_rx != rxi || (flags & HB_BFD_FLAG_F) ||
		      *state != HB_STATE_UP;

	__sync_fetch_and_add(rx, 1);
	*last_rx = now;
	*r_state = st;
	*r_diag = diag;
	*r_mult = mult;
	*r_disc = disc;
	*r_tx = tx;
	*r_rx = rxi;
	if (flags & HB_BFD_FLAG_P)
		*final_due = 1; /* the next packet we send carries F (RFC 5880 section 6.5) */
	hb_count(HB_BFD_RECORDED, 1, bytes);
	if (changed) {
		struct hb_bfd_event ev = {
			.time_us = now,
			.my_disc = disc,
			.index = (__u16)index,
			.state = st,
			.kind = HB_EVENT_BFD,
			.desired_min_tx_us = tx,
			.required_min_rx_us = rxi,
			.diag = diag,
			.flags = flags,
			.detect_mult = mult,
		};

		*state = HB_STATE_UP;
		bpf_ringbuf_output(&hb_events, &ev, sizeof(ev), 0);
		hb_count(HB_BFD_EVENT, 1, bytes);
	}
	return XDP_DROP;
}

/* docs/bfd.md "Receive": a UDP 3784 datagram (unfragmented IPv4, IHL 5, untagged) is BFD,
 * consumed and counted once, checks in the contract's order. */
static __always_inline int bfd_rx(struct xdp_md *ctx, const struct iphdr *iph,
				  const struct udphdr *udp, void *data_end, __u64 bytes)
{
	const struct bfd_hdr *bfd = (const void *)(udp + 1);

	if ((void *)(bfd + 1) > data_end)
		return consume(HB_BFD_TRUNCATED, bytes);
	if (bfd->vers_diag >> 5 != HB_BFD_VERSION)
		return consume(HB_BFD_BAD_VERSION, bytes);

	__u8 st = bfd->state_flags >> 6;
	__u32 your_disc = bpf_ntohl(bfd->your_disc);
	int udp_len = bpf_ntohs(udp->len);

	if (bfd->length < HB_BFD_LEN || (int)bfd->length > udp_len - 8 || bfd->detect_mult == 0 ||
	    (bfd->state_flags & (HB_BFD_FLAG_M | HB_BFD_FLAG_A)) || bfd->my_disc == 0 ||
	    (your_disc == 0 && (st == HB_BFD_STATE_INIT || st == HB_BFD_STATE_UP)))
		return consume(HB_BFD_MALFORMED, bytes);
	if (iph->ttl != HB_BFD_TTL)
		return consume(HB_BFD_BAD_TTL, bytes);

	struct bfd_session *sess;

	if (your_disc) {
		sess = bpf_map_lookup_elem(&bfd_sessions, &your_disc);
		if (!sess)
			return consume(HB_BFD_UNKNOWN_DISCRIMINATOR, bytes);
		return bfd_record(sess->index, bfd, bytes, HB_BFD_UNKNOWN_DISCRIMINATOR);
	}
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *port = bpf_map_lookup_elem(&port_numbers, &ifindex);
	struct bfd_peer_key key = {
		.src_addr = bpf_ntohl(iph->saddr),
		.port = port ? *port : 0xffffffff, /* not a port of ours: no session matches */
	};

	sess = bpf_map_lookup_elem(&bfd_peers, &key);
	if (!sess)
		return consume(HB_BFD_UNKNOWN_PEER, bytes);
	return bfd_record(sess->index, bfd, bytes, HB_BFD_UNKNOWN_PEER);
}

/* xdp.frags: attachable to jumbo-MTU ports too; a heartbeat always sits in the first buffer */
SEC("xdp.frags")
int hb_xdp_rx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = bpf_xdp_get_buff_len(ctx); /* whole frame, multi-buffer too */
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	struct hb_hdr *hb;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	/* only an unfragmented datagram carries a heartbeat (same as p4src/parser.p4) */
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return XDP_PASS;
	udp = (void *)(iph + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	if (udp->dest == bpf_htons(HB_BFD_PORT))
		return bfd_rx(ctx, iph, udp, data_end, bytes);
	if (udp->dest != bpf_htons(HB_RESPONSE_PORT))
		return XDP_PASS;

	/* From here on it is a heartbeat: counted under exactly one reason and consumed. */
	hb = (void *)(udp + 1);
	if ((void *)(hb + 1) > data_end)
		return consume(HB_TRUNCATED, bytes);
	if (hb->magic != bpf_htons(HB_MAGIC))
		return consume(HB_BAD_MAGIC, bytes);
	if (hb->version != HB_VERSION)
		return consume(HB_BAD_VERSION, bytes);
	if (hb->type != HB_TYPE_RESPONSE)
		return consume(HB_BAD_TYPE, bytes);
	if (udp->len != bpf_htons(HB_UDP_LEN) || iph->tot_len != bpf_htons(HB_IPV4_TOTAL_LEN))
		return consume(HB_BAD_LENGTH, bytes);

	struct peer_key key = {
		.src_addr = bpf_ntohl(iph->saddr),
		.peer_id = bpf_ntohl(hb->peer_id),
	};
	struct peer_entry *peer = bpf_map_lookup_elem(&peers, &key);

	if (!peer) {
		if (bpf_map_lookup_elem(&peer_ids, &key.peer_id))
			return consume(HB_SPOOFED, bytes);
		return consume(HB_UNKNOWN_PEER, bytes);
	}
	return record(peer, iph->ttl, hb, bytes);
}

char _license[] SEC("license") = "GPL";
