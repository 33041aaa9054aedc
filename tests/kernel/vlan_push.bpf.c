// SPDX-License-Identifier: Apache-2.0
/* Test helper for tests/kernel/test_bpf_vlan.py (issue 11): on the egress of a peer's
 * interface, give frames marked by the sending socket (SO_MARK) a VLAN tag in skb metadata,
 * out of the frame, as a VLAN device or a bridge does (this kernel has no 8021q module).
 * Whether the tag stays in metadata or is written into the frame is then up to the
 * interface's tx VLAN offload, exactly as for a VLAN device. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MARK_8021Q 0x48425131  /* "HBQ1" */
#define MARK_8021AD 0x48425141 /* "HBQA" */
#define VID 100

SEC("tc")
int vlan_push(struct __sk_buff *skb)
{
	if (skb->mark == MARK_8021Q)
		bpf_skb_vlan_push(skb, bpf_htons(0x8100), VID);
	else if (skb->mark == MARK_8021AD)
		bpf_skb_vlan_push(skb, bpf_htons(0x88A8), VID);
	return 0; /* TC_ACT_OK */
}

char _license[] SEC("license") = "GPL";
