/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps the netstack objects share. Each object declares the ones it uses; user space loads
 * netstack_softirq first and hands its map fds to the others (bpf_map__reuse_fd), so each map exists
 * once:
 *   softirq_state  per CPU: which NET softirq runs now and since when, and the NET_RX and NET_TX
 *                  totals {nanoseconds, invocations}: one lookup per softirq program run
 *                  (netstack_softirq writes it; netstack_rx_stacks reads the running softirq,
 *                  netstack_syscalls the nanoseconds)
 *   totals         {nanoseconds, invocations} per CPU of the two syscall entries (netstack_syscalls,
 *                  loaded only with --collector.netstack.syscalls)
 *   cpu_clock      the syscall clock of the task running on each CPU (netstack_syscalls only: it
 *                  subtracts the growth of the CPU's NET softirq nanoseconds from a syscall's time,
 *                  so the entries stay exclusive in time and the softirq programs do nothing for it)
 */
#ifndef NETSTACK_SHARED_H
#define NETSTACK_SHARED_H

#define NET_TX_SOFTIRQ 2
#define NET_RX_SOFTIRQ 3

struct totals { __u64 nanoseconds; __u64 invocations; };

/* Index of softirq_state's `net`, then of `totals` after them; ENTRIES in
 * exporter/collectors/netstack/programs.py has the same order. */
enum { NET_RX_SOFTIRQ_ENTRY, NET_TX_SOFTIRQ_ENTRY, SOFTIRQ_ENTRIES };
enum { TX_SYSCALL_ENTRY, RX_SYSCALL_ENTRY, SYSCALL_ENTRIES };

struct softirq_state {
	__u64 start;  /* entry of the NET softirq running now; 0: none */
	__u32 vec;
	__u32 unused;
	struct totals net[SOFTIRQ_ENTRIES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_state);
} softirq_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYSCALL_ENTRIES);
	__type(key, __u32);
	__type(value, struct totals);
} totals SEC(".maps");

struct syscall_clock {
	__u64 start;        /* syscall entry, or the last charge within this syscall; 0: none */
	__u64 paused;       /* switched-out time, and NET softirq time on CPUs left, since `start` */
	__u64 softirq;      /* the CPU's NET softirq nanoseconds at `start` (or when switched in) */
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

#endif
