// SPDX-License-Identifier: GPL-2.0
/*
 * mac: per-client traffic on a gateway interface, counted at tc (one loaded copy per interface).
 *
 * Hooks: tc ingress (`mac_ingress`: a frame from a client is its source MAC's upload) and tc egress
 * (`mac_egress`: a frame to a client is its destination MAC's download), attached as TCX links or
 * as clsact bpf filters in direct-action mode. Both return TC_ACT_UNSPEC (TCX_NEXT): they only count.
 * Bytes are skb->len at tc: the L2 frame with its Ethernet header, without FCS.
 * Not clients: the interface's own MAC (`self`, written by user space before attaching), group
 * (multicast and broadcast) addresses. A client's last IPv4 and IPv6 source addresses are kept;
 * an IPv6 link-local address only until a wider one is seen.
 * A client that finds `clients` full is counted in `untracked`: entries are never evicted here,
 * so counters never go backwards; user space deletes clients idle longer than its timeout.
 */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define TC_ACT_UNSPEC (-1)
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct mac_key { __u8 addr[6]; __u8 pad[2]; };

struct client {
	__u64 upload_bytes;
	__u64 upload_packets;
	__u64 download_bytes;
	__u64 download_packets;
	__u64 last_seen_ns;     /* bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC_COARSE, tick resolution */
	__u32 ipv4;             /* network byte order; 0: none seen */
	__u8 ipv6[16];          /* all zero: none seen */
	__u8 ipv6_link_local;   /* ipv6 holds a link-local address */
	__u8 pad[3];
};

struct untracked { __u64 bytes; __u64 packets; };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* user space sets --collector.mac.max-entries before loading */
	__type(key, struct mac_key);
	__type(value, struct client);
} clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct untracked);
} untracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mac_key);
} self SEC(".maps");

static __always_inline int not_a_client(const struct mac_key *key)
{
	__u32 zero = 0;
	struct mac_key *own;

	if (key->addr[0] & 1) /* group bit: multicast or broadcast */
		return 1;
	own = bpf_map_lookup_elem(&self, &zero);
	return own && *(__u64 *)own->addr == *(__u64 *)key->addr; /* both padded with zeros */
}

static __always_inline struct client *client_of(const struct mac_key *key, __u64 bytes)
{
	struct client *client = bpf_map_lookup_elem(&clients, key);
	struct client fresh = {};
	struct untracked *lost;
	__u32 zero = 0;

	if (client)
		return client;
	fresh.last_seen_ns = bpf_ktime_get_coarse_ns(); /* never seen by user space as idle */
	/* -EEXIST: another CPU inserted it first; -E2BIG: the table is full */
	bpf_map_update_elem(&clients, key, &fresh, BPF_NOEXIST);
	client = bpf_map_lookup_elem(&clients, key);
	if (client)
		return client;
	lost = bpf_map_lookup_elem(&untracked, &zero);
	if (lost) {
		__sync_fetch_and_add(&lost->bytes, bytes);
		__sync_fetch_and_add(&lost->packets, 1);
	}
	return 0;
}

/* Copy `size` bytes at `offset` of the frame: straight from the linear data when they are there
 * (headers are, on every path we know), else through the helper. */
static __always_inline int load(struct __sk_buff *skb, __u32 offset, void *to, __u32 size)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;

	if (data + offset + size <= data_end) {
		__builtin_memcpy(to, data + offset, size);
		return 0;
	}
	return bpf_skb_load_bytes(skb, offset, to, size);
}

static __always_inline void remember_source_address(struct __sk_buff *skb, struct client *client)
{
	__u16 proto = bpf_ntohs(skb->protocol);

	if (proto == ETH_P_IP) {
		__u32 saddr;

		if (load(skb, ETH_HLEN + 12, &saddr, 4) == 0 && saddr != 0 && client->ipv4 != saddr)
			client->ipv4 = saddr;
	} else if (proto == ETH_P_IPV6) {
		__u8 saddr[16];
		__u64 *words = (__u64 *)saddr;
		int link_local;

		if (load(skb, ETH_HLEN + 8, saddr, 16) != 0 || (words[0] | words[1]) == 0)
			return;
		link_local = saddr[0] == 0xfe && (saddr[1] & 0xc0) == 0x80;
		if (link_local && !client->ipv6_link_local && (client->ipv6[0] | client->ipv6[1]) != 0)
			return; /* keep the wider address */
		__builtin_memcpy(client->ipv6, saddr, 16);
		client->ipv6_link_local = link_local;
	}
}

static __always_inline int count(struct __sk_buff *skb, int upload)
{
	struct mac_key key = {};
	struct client *client;
	__u64 now;

	/* ingress: the source MAC at offset 6; egress: the destination MAC at offset 0 */
	if (load(skb, upload ? 6 : 0, key.addr, 6) != 0 || not_a_client(&key))
		return TC_ACT_UNSPEC;
	client = client_of(&key, skb->len);
	if (!client)
		return TC_ACT_UNSPEC;
	if (upload) {
		__sync_fetch_and_add(&client->upload_bytes, skb->len);
		__sync_fetch_and_add(&client->upload_packets, 1);
		remember_source_address(skb, client);
	} else {
		__sync_fetch_and_add(&client->download_bytes, skb->len);
		__sync_fetch_and_add(&client->download_packets, 1);
	}
	/* The coarse clock is cheaper than bpf_ktime_get_ns() and plenty for an idle timeout in seconds;
	 * it moves once a tick, so the entry's timestamp is written at most once a tick. */
	now = bpf_ktime_get_coarse_ns();
	if (client->last_seen_ns != now)
		client->last_seen_ns = now;
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mac_ingress(struct __sk_buff *skb)
{
	return count(skb, 1);
}

SEC("tc")
int mac_egress(struct __sk_buff *skb)
{
	return count(skb, 0);
}

char LICENSE[] SEC("license") = "GPL";
