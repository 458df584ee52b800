// SPDX-License-Identifier: GPL-2.0
/*
 * drops: every packet the kernel drops, counted by reason and device (and, if asked, where).
 *
 * Hook: tp_btf/kfree_skb (skb, location, reason[, rx_sk]), which the kernel fires for drops only:
 * kfree_skb_reason() and its kin trace a freed skb here unless the reason is SKB_CONSUMED, which
 * goes to the consume_skb tracepoint instead (net/core/skbuff.c __sk_skb_reason_drop, since 6.2;
 * 5.17-6.1 sent SKB_CONSUMED here too, so it is skipped). SKB_DROP_REASON_NOT_SPECIFIED is a drop
 * all the same: it is what a plain kfree_skb() says, and kfree_skb() means "dropped" (consume_skb()
 * is the call for packets that were used). One run per drop; freed packets that were not dropped
 * never run it.
 *
 * Namespace: only drops in the exporter's own network namespace (config.netns, the inode number of
 * that namespace) are counted, so other namespaces' drops (a node's containers) can neither fill
 * the table nor appear. A drop on a device of this namespace is ours, counted with that device (its
 * ifindex). Otherwise a drop of a socket of this namespace is ours, counted with no device, except
 * when the packet was received on a device of another namespace (dev->ifindex == skb->skb_iif): a
 * packet that crossed a veth pair keeps its sender's socket (skb_scrub_packet keeps skb->sk since
 * 4.19), and dropped over there it is the other namespace's. The device pointer of a packet queued
 * on a socket is reused for other things (TCP's rb-tree node, UDP's dev_scratch), which is why a
 * device of another namespace does not simply disown a drop. Drops with neither a socket nor a
 * device belong to no namespace: they count (ifindex 0, "none") only where config.flags has
 * UNATTRIBUTED, which user space sets in the host's namespace.
 *
 * Tables: `drops`, a per-CPU hash {location, ifindex, reason} -> packets (location is 0 unless
 * config.flags has LOCATIONS), and in front of it `recent`, a direct-mapped cache of config.slots
 * slots per CPU (an array, CPU n's slots at n * slots): a key's slot on this CPU is a multiplicative
 * hash of it; a slot whose key matches counts the drop, an empty one (no packets) is claimed for the
 * key, and a slot that holds another key leaves the drop to the hash. A run that hits its slot skips
 * the hash lookup and its jhash of 16 bytes (~20 ns of ~75 a run here). A key's packets are its
 * slots' plus its hash entries', summed by user space; neither ever moves, so every read is exact.
 * No atomics: only CPU n writes CPU n's slots and values (user space empties only the slots of a
 * device that is gone), and the kernel never nests a run of this program on a CPU where it is
 * running (tracepoints run with preemption off; a run from an interrupt is skipped and counted:
 * recursion_misses, which the exporter reports). When the table is full, a new key's drops count
 * in `overflow` by reason alone (device "other"); it holds 1024 reasons, more than the kernel defines.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* Only the fields used; CO-RE relocates their offsets against the running kernel's BTF. */
struct ns_common { unsigned int inum; } __attribute__((preserve_access_index));
struct net { struct ns_common ns; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } __attribute__((preserve_access_index)) possible_net_t;
struct net_device { int ifindex; possible_net_t nd_net; } __attribute__((preserve_access_index));
struct sock_common { possible_net_t skc_net; } __attribute__((preserve_access_index));
struct sock { struct sock_common __sk_common; } __attribute__((preserve_access_index));
struct sk_buff { struct net_device *dev; struct sock *sk; int skb_iif; } __attribute__((preserve_access_index));
enum skb_drop_reason { SKB_CONSUMED = 1 };  /* the value is relocated from the kernel's enum */

#define MAX_ENTRIES 4096
#define CACHE_ENTRIES 1  /* user space sizes `recent` to config.slots * CPUs before the load */
#define OVERFLOW_ENTRIES 1024
#define LOCATIONS 1     /* config.flags: key drops by location too */
#define UNATTRIBUTED 2  /* config.flags: count drops of no namespace */

struct config { __u32 netns; __u32 flags; __u32 slots; };  /* slots: a power of two, or 0: no cache */
struct drop_key { __u64 location; __u32 ifindex; __u32 reason; };
struct slot { struct drop_key key; __u64 packets; };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CACHE_ENTRIES);
	__type(key, __u32);
	__type(value, struct slot);
} recent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, OVERFLOW_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

/* Count one in map[key]; 0, or the error of an insert into a full table. */
static __always_inline long count(void *map, void *key)
{
	__u64 one = 1, *packets = bpf_map_lookup_elem(map, key);
	long error;

	if (packets) {
		*packets += 1;
		return 0;
	}
	error = bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
	if (error == -17) {  /* EEXIST: another CPU inserted it first; our slot is still 0 */
		packets = bpf_map_lookup_elem(map, key);
		if (packets)
			*packets += 1;
		return 0;
	}
	return error;
}

/* Count one in this CPU's slot for key, if it is the key's or free; 0 if another key holds it. */
static __always_inline int count_recent(const struct drop_key *key, __u32 slots)
{
	__u32 mixed = (key->reason ^ key->ifindex << 10 ^ (__u32)key->location ^ (__u32)(key->location >> 32))
		      * 0x9E3779B1u;  /* 2^32 / golden ratio: the high bits mix all of the key's */
	__u32 index = bpf_get_smp_processor_id() * slots + (mixed >> 16 & (slots - 1));
	struct slot *slot = bpf_map_lookup_elem(&recent, &index);

	if (!slot)
		return 0;
	if (!slot->packets) {
		slot->key = *key;
	} else if (slot->key.reason != key->reason || slot->key.ifindex != key->ifindex ||
		   slot->key.location != key->location) {
		return 0;
	}
	slot->packets += 1;
	return 1;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, unsigned int reason)
{
	__u32 zero = 0, device_netns = 0, socket_netns = 0;
	struct config *settings = bpf_map_lookup_elem(&config, &zero);
	struct drop_key key = {};
	struct net_device *dev;
	struct sock *sk;

	if (!settings)
		return 0;
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
		return 0;
	dev = skb->dev;
	if (dev)
		device_netns = dev->nd_net.net->ns.inum;
	if (dev && device_netns == settings->netns) {
		key.ifindex = dev->ifindex;
	} else {
		sk = skb->sk;
		if (sk)
			socket_netns = sk->__sk_common.skc_net.net->ns.inum;
		if (socket_netns == settings->netns) {
			if (device_netns && dev->ifindex == skb->skb_iif)
				return 0;  /* ours, but received and dropped in another namespace */
		} else if (socket_netns || device_netns || !(settings->flags & UNATTRIBUTED)) {
			return 0;
		}
	}
	key.reason = reason;
	if (settings->flags & LOCATIONS)
		key.location = (__u64)location;
	if (settings->slots && count_recent(&key, settings->slots))
		return 0;
	if (count(&drops, &key) != 0)
		count(&overflow, &key.reason);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
