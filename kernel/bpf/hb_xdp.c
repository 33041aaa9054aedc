// SPDX-License-Identifier: Apache-2.0
/* HbIngress for heartbeat responses: classify what arrives on UDP 9191 exactly as
 * docs/protocol.md "How a monitor classifies" (same order, same reasons), record fresh
 * responses in the peer's slot, raise UP events. Heartbeats are consumed; everything else
 * goes on to tc (l2_forward) and the host stack untouched.
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
	if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(HB_RESPONSE_PORT))
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
