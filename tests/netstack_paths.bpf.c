// SPDX-License-Identifier: GPL-2.0
/*
 * Test programs for tests/test_netstack_paths.py: what a small firewall's accounting does on each
 * packet (count it by IPv4 source and by destination address in a hash map), at tc/TCX ingress (`count_and_continue`,
 * then the next program runs; `drop` ends the chain) and at generic XDP (`xdp_count_and_drop`).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TCX_NEXT -1
#define TC_ACT_SHOT 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} packets_by_address SEC(".maps");

static __always_inline void count_address(__u32 address)
{
	__u64 one = 1, *count = bpf_map_lookup_elem(&packets_by_address, &address);

	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&packets_by_address, &address, &one, BPF_ANY);
}

static __always_inline void count_addresses(void *data, void *data_end)
{
	__u8 *frame = data;

	if (data + 14 + 20 > data_end || frame[12] != 0x08 || frame[13] != 0x00)  /* Ethernet, IPv4 */
		return;
	count_address(*(__u32 *)(frame + 14 + 12));  /* source */
	count_address(*(__u32 *)(frame + 14 + 16));  /* destination */
}

SEC("tc")
int count_and_continue(struct __sk_buff *skb)
{
	count_addresses((void *)(long)skb->data, (void *)(long)skb->data_end);
	return TCX_NEXT;
}

SEC("tc")
int drop(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

SEC("xdp")
int xdp_count_and_drop(struct xdp_md *ctx)
{
	count_addresses((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
