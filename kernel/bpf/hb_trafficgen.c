// SPDX-License-Identifier: Apache-2.0
/* Bench-only traffic generator (bench/bench_xdp.py): run with BPF_PROG_TEST_RUN in
 * BPF_F_TEST_XDP_LIVE_FRAMES mode on the far end of a veth, it turns one heartbeat response
 * into a stream of fresh ones (sequence + 1 each, nonce = key ^ sequence) redirected into the
 * monitored veth. Protocol v2 counts an answer to a request never sent as FUTURE_SEQUENCE, so
 * the bench sets hb_tx_count / hb_last_tx_seq of the slot to cover the sequences it sends. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "hb_consts.h"
#include "hb_structs.h"

#define OFF_HB (14 + 20 + 8)

/* [0] = ifindex to redirect to, [1] = next sequence number, [2] = the peer's nonce key */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 3);
} gen_config SEC(".maps");

SEC("xdp")
int hb_trafficgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hb_hdr *hb = data + OFF_HB;

	__u32 k_ifindex = 0, k_seq = 1, k_key = 2;
	__u32 *ifindex = bpf_map_lookup_elem(&gen_config, &k_ifindex);
	__u32 *seq = bpf_map_lookup_elem(&gen_config, &k_seq);
	__u32 *key = bpf_map_lookup_elem(&gen_config, &k_key);

	if ((void *)(hb + 1) > data_end || !ifindex || !seq || !key)
		return XDP_ABORTED;
	__u32 s = __sync_fetch_and_add(seq, 1);

	hb->sequence = bpf_htonl(s);
	hb->nonce = bpf_htonl(*key ^ s);
	__u64 now = bpf_ktime_get_ns() / 1000;
	hb->tx_us_hi = bpf_htonl(now >> 32);
	hb->tx_us_lo = bpf_htonl((__u32)now);
	return bpf_redirect(*ifindex, 0);
}

char _license[] SEC("license") = "GPL";
