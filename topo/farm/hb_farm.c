// SPDX-License-Identifier: Apache-2.0
/* Peer farm (lab/bench tool, not part of the monitor): answers heartbeat REQUESTs for every
 * address of one IPv4 prefix from a single XDP program, rewriting each request frame in place
 * into the RESPONSE of docs/protocol.md ("Building a response from a request") and sending it
 * back out of the interface it came in on (XDP_TX). Python side: hbmon_topo.farm.PeerFarm.
 *
 * Per-address faults live in farm_peers, keyed by the IPv4 address in NETWORK byte order (the
 * 4 bytes as on the wire, socket.inet_aton), so the fast path needs no byte swap for the
 * lookup. An address of the prefix without an entry is a healthy peer with the default
 * status/load of farm_config. Only what the farm answers or deliberately drops (mute, loss)
 * is consumed; everything else goes to the host stack untouched (XDP_PASS), so a farm
 * namespace can still run ordinary services or an `hbmon responder` for addresses outside
 * the farm's range. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "hb_consts.h"
#include "hb_structs.h"

#define IP_DF 0x4000
#define HB_SEND_TTL 255 /* hbmon.protocol.SEND_TTL */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* farm_counters index: one per outcome (hbmon_topo.farm.FarmCounters mirrors these) */
enum farm_outcome {
	FARM_ANSWERED = 0,    /* rewritten into a RESPONSE and sent back (XDP_TX) */
	FARM_MUTED = 1,       /* address muted: dropped, no answer */
	FARM_LOST = 2,        /* lost to the address's loss probability: dropped */
	FARM_NOT_REQUEST = 3, /* UDP to 9190 but not a valid REQUEST: passed, not answered */
	FARM_OUTSIDE = 4,     /* valid REQUEST to an address the farm does not own: passed */
	FARM_SUNK = 5,        /* hb_farm_sink: frames a bench's far end counted and dropped */
	FARM_OUTCOMES = 8,
};

/* farm_peer.flags */
#define FARM_F_MUTE 0x01     /* never answer */
#define FARM_F_ABSENT 0x02   /* not a farm address (e.g. the monitor's): counted OUTSIDE */
#define FARM_F_LOSS_ALL 0x04 /* loss probability 1 (does not fit the 32-bit threshold) */

struct farm_peer {
	__u32 loss;  /* drop the answer when bpf_get_prandom_u32() < loss: p = loss / 2^32 */
	__u8 flags;  /* FARM_F_* */
	__u8 status; /* reported status (0 healthy, 1 degraded, 2 draining) */
	__u8 load;   /* reported load 0..255 */
	__u8 pad;
};

struct farm_config {
	__u32 net;  /* the farm's prefix, host byte order */
	__u32 mask; /* its netmask, host byte order; 0 with net 0 = every address */
	__u8 default_status;
	__u8 default_load;
	__u8 enabled; /* 0 until the loader has written the config: answer nothing before */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct farm_config);
	__uint(max_entries, 1);
} farm_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* IPv4 address, network byte order */
	__type(value, struct farm_peer);
	__uint(max_entries, 65536); /* resized by the loader */
} farm_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, FARM_OUTCOMES);
} farm_counters SEC(".maps");

static __always_inline int outcome(__u32 which, int action)
{
	__u64 *n = bpf_map_lookup_elem(&farm_counters, &which);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
	return action;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u32 ipv4_sum(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return sum;
}

SEC("xdp")
int hb_farm(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udp;
	struct hb_hdr *hb;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	/* a reply must come from a unicast MAC: the request's destination becomes its source */
	if (eth->h_dest[0] & 1)
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return XDP_PASS; /* a fragment is never a whole heartbeat */
	udp = (void *)(iph + 1);
	if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(HB_REQUEST_PORT))
		return XDP_PASS;

	/* UDP to the heartbeat port: from here on every frame is counted under one outcome.
	 * The IPv4 header checksum is checked (the host stack drops a bad one, so `hbmon
	 * responder` never answers it); the UDP checksum is not: a Linux sender on a veth
	 * leaves it to offload, the frame carries only the pseudo-header sum, and the stack
	 * trusts such frames (CHECKSUM_PARTIAL). */
	hb = (void *)(udp + 1);
	if ((void *)(hb + 1) > data_end || udp->len != bpf_htons(HB_UDP_LEN) ||
	    iph->tot_len != bpf_htons(HB_IPV4_TOTAL_LEN) || hb->magic != bpf_htons(HB_MAGIC) ||
	    hb->version != HB_VERSION || hb->type != HB_TYPE_REQUEST ||
	    fold(ipv4_sum(iph)) != 0xffff)
		return outcome(FARM_NOT_REQUEST, XDP_PASS);

	struct farm_config *cfg = bpf_map_lookup_elem(&farm_config, &zero);
	__u32 dst = iph->daddr; /* network order: the farm_peers key */

	if (!cfg || !cfg->enabled || (bpf_ntohl(dst) & cfg->mask) != cfg->net)
		return outcome(FARM_OUTSIDE, XDP_PASS);

	__u8 status = cfg->default_status, load = cfg->default_load;
	struct farm_peer *peer = bpf_map_lookup_elem(&farm_peers, &dst);

	if (peer) {
		if (peer->flags & FARM_F_ABSENT)
			return outcome(FARM_OUTSIDE, XDP_PASS);
		if (peer->flags & FARM_F_MUTE)
			return outcome(FARM_MUTED, XDP_DROP);
		if ((peer->flags & FARM_F_LOSS_ALL) ||
		    (peer->loss && bpf_get_prandom_u32() < peer->loss))
			return outcome(FARM_LOST, XDP_DROP);
		status = peer->status;
		load = peer->load;
	}

	/* Ethernet: back to the sender, from the MAC the request was sent to */
	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	/* IPv4: a fresh header as the Linux stack writes it for `hbmon responder`'s UDP
	 * socket: TOS 0, DF, TTL 255 (docs/protocol.md responder rule, RFC 5082: a monitor with
	 * GTSM on counts only answers that crossed no router); id 0 as docs/protocol.md's
	 * example (Linux writes a per-packet id; the protocol leaves it free). The header
	 * checksum is recomputed below over the new TTL and addresses. */
	__u32 src = iph->saddr;

	iph->tos = 0;
	iph->id = 0;
	iph->frag_off = bpf_htons(IP_DF);
	iph->ttl = HB_SEND_TTL;
	iph->saddr = dst;
	iph->daddr = src;
	iph->check = 0;
	iph->check = ~fold(ipv4_sum(iph));

	/* UDP: from the heartbeat port to the request's source port; checksum 0 (none) */
	udp->dest = udp->source;
	udp->source = bpf_htons(HB_REQUEST_PORT);
	udp->check = 0;

	/* heartbeat: magic, version, peer_id, sequence, nonce, tx timestamp echoed unchanged
	 * (the monitor checks the nonce against the one its request to this peer carried) */
	hb->type = HB_TYPE_RESPONSE;
	hb->status = status;
	hb->load = load;
	hb->reserved = 0;
	return outcome(FARM_ANSWERED, XDP_TX);
}

/* For the other end of a veth in labs: native XDP_TX into a veth is only received when the
 * receiving veth runs an XDP program (or has GRO on), so labs without a monitor attach this. */
SEC("xdp")
int hb_farm_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The far end for benches: counts (FARM_SUNK) and drops what the farm sends back, so the
 * answers cost neither the host stack nor a socket. */
SEC("xdp")
int hb_farm_sink(struct xdp_md *ctx)
{
	return outcome(FARM_SUNK, XDP_DROP);
}

/* Bench traffic generator (bench/bench_farm.py), run with BPF_PROG_TEST_RUN in
 * BPF_F_TEST_XDP_LIVE_FRAMES mode: writes the whole REQUEST template into each frame (live
 * frames are recycled pages, and the farm rewrote the last one into a RESPONSE), gives it
 * the next sequence number and one of n_addrs consecutive destination addresses, and
 * redirects it out of `ifindex` (into the farm at the other end of the veth). */
struct farm_gen {
	__u32 ifindex;
	__u32 n_addrs; /* destinations: template's daddr + 0 .. n_addrs - 1 (0: template's) */
	__u32 seq;     /* next sequence number */
	__u32 pad;
	__u8 frame[HB_FRAME_LEN + 6]; /* the REQUEST template, HB_FRAME_LEN bytes used */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct farm_gen);
	__uint(max_entries, 1);
} farm_gen SEC(".maps");

SEC("xdp")
int hb_farm_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct farm_gen *gen = bpf_map_lookup_elem(&farm_gen, &zero);

	if (!gen || data + HB_FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, gen->frame, HB_FRAME_LEN);

	struct iphdr *iph = data + sizeof(struct ethhdr);
	struct hb_hdr *hb = data + sizeof(struct ethhdr) + sizeof(struct iphdr) +
			    sizeof(struct udphdr);
	__u32 seq = __sync_fetch_and_add(&gen->seq, 1);

	hb->sequence = bpf_htonl(seq);
	if (gen->n_addrs > 1) {
		iph->daddr = bpf_htonl(bpf_ntohl(iph->daddr) + seq % gen->n_addrs);
		iph->check = 0;
		iph->check = ~fold(ipv4_sum(iph));
	}
	return bpf_redirect(gen->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
