/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What netstack_time.bpf.c and netstack_rx_stacks.bpf.c share: `softirq_state`, which NET softirq each
 * CPU runs now and since when. Both objects declare it; user space loads netstack_time first and
 * hands its map fd to netstack_rx_stacks, so there is one map.
 */
#ifndef NETSTACK_SHARED_H
#define NETSTACK_SHARED_H

#define NET_TX_SOFTIRQ 2
#define NET_RX_SOFTIRQ 3

struct softirq_state { __u64 start; __u32 vec; __u32 unused; };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_state);
} softirq_state SEC(".maps");

#endif
