/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps the netstack objects share. Each object declares the ones it uses; user space loads
 * netstack_softirq first and hands its map fds to the others (bpf_map__reuse_fd), so each map exists
 * once:
 *   softirq_state  which NET softirq each CPU runs now and since when
 *                  (netstack_softirq writes it, netstack_rx_stacks reads it)
 *   totals         {nanoseconds, invocations} per CPU and entry (netstack_softirq: the two softirq
 *                  entries; netstack_syscalls, loaded only with --collector.netstack.syscalls: the two
 *                  syscall entries)
 *   cpu_clock      the syscall clock of the task running on each CPU (netstack_syscalls keeps it;
 *                  netstack_softirq pauses it by the length of every NET softirq, so the entries stay
 *                  exclusive in time; without netstack_syscalls nothing reads it)
 */
#ifndef NETSTACK_SHARED_H
#define NETSTACK_SHARED_H

#define NET_TX_SOFTIRQ 2
#define NET_RX_SOFTIRQ 3

/* Index into `totals`; ENTRIES in exporter/collectors/netstack/programs.py has the same order. */
enum { NET_RX_SOFTIRQ_ENTRY, NET_TX_SOFTIRQ_ENTRY, TX_SYSCALL_ENTRY, RX_SYSCALL_ENTRY, ENTRIES };

struct softirq_state { __u64 start; __u32 vec; __u32 unused; };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_state);
} softirq_state SEC(".maps");

struct totals { __u64 nanoseconds; __u64 invocations; };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ENTRIES);
	__type(key, __u32);
	__type(value, struct totals);
} totals SEC(".maps");

struct syscall_clock {
	__u64 start;        /* syscall entry, or the last charge within this syscall; 0: none */
	__u64 paused;       /* NET softirq and switched-out time since `start` */
	__u64 switched_out; /* in task storage: when the task was switched out */
	__u32 counted;      /* this syscall's invocation is counted already */
	__u32 unused;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syscall_clock);
} cpu_clock SEC(".maps");

static __always_inline void charge(__u32 entry, __u64 nanoseconds, int invocation)
{
	struct totals *total = bpf_map_lookup_elem(&totals, &entry);

	if (!total)
		return;
	/* Atomic: a preempted program and its successor on this CPU may update the same slot. */
	__sync_fetch_and_add(&total->nanoseconds, nanoseconds);
	if (invocation)
		__sync_fetch_and_add(&total->invocations, 1);
}

#endif
