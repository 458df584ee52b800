// SPDX-License-Identifier: GPL-2.0
/*
 * netstack_syscalls: CPU time and invocations of send/receive syscalls on IP sockets per CPU, loaded
 * only with --collector.netstack.syscalls (every syscall and context switch of the host pays for it).
 *
 * Entries (netstack_shared.h's `totals`, shared with netstack_softirq.bpf.c):
 *   tx_syscall, rx_syscall   tp_btf/sys_enter stamps the start of every syscall that can reach a
 *                            socket's sendmsg/recvmsg; tp_btf/sock_send_length / sock_recv_length
 *                            (they fire when sock_sendmsg/sock_recvmsg return, whatever the result)
 *                            charge the time since that stamp if the socket is AF_INET/AF_INET6.
 * Cost: sys_enter runs for every syscall of every task, so it only writes a per-CPU clock (no
 * hash or task-storage lookup), and reads the clock only for the syscalls in `network_syscalls`
 * (read/write and their vector forms, send and recv calls, sendfile, splice, io_uring_enter; user
 * space fills it for the architecture, native and 32-bit numbers). Any other syscall stops the
 * clock instead, so a socket call inside one would go uncharged rather than charged from a stale
 * stamp. Measured on the 6.18 VMs here (bench/hook_cost.bpf.c): attaching even an empty program
 * to sys_enter adds ~85 ns to every syscall, the per-CPU lookup and stores ~2 ns more,
 * bpf_ktime_get_ns() ~65 ns; the clock read is the one cost the other hooks cannot avoid, so each
 * reads it once.
 * The clock belongs to the task running on the CPU (`cpu_clock`): sched_switch saves it into the
 * outgoing task's task storage and restores the incoming task's, so a syscall that blocks or
 * migrates keeps its clock and the time switched out is paused out of it.
 * Exclusivity: NET softirqs that run inline (bh enable, irq exit) are left out: the clock notes the
 * CPU's NET softirq nanoseconds (netstack_softirq.bpf.c's softirq_state) when it starts, and a
 * charge subtracts their growth since (a switch adds the growth on the CPU left to `paused`), so
 * the softirq programs need not know this object exists.
 * Charging at the send/recv tracepoint instead of at sys_exit saves one program run per syscall;
 * it leaves uncounted the few instructions between the socket call's return and the syscall's
 * return. A syscall that calls the socket layer several times (sendmmsg) is charged in increments
 * and counted once.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "netstack_shared.h"

#define AF_INET 2
#define AF_INET6 10

/* Only the fields used; CO-RE relocates their offsets against the running kernel's BTF. */
struct sock_common { unsigned short skc_family; } __attribute__((preserve_access_index));
struct sock { struct sock_common __sk_common; } __attribute__((preserve_access_index));
struct task_struct { int pid; } __attribute__((preserve_access_index));
struct pt_regs;

/* Bit n set: syscall number n can reach a socket's sendmsg/recvmsg. Numbers past the set are
 * treated as if they could (never lose a network syscall to an unknown number). */
#define SYSCALL_SET_BITS 512
struct syscall_set { __u64 words[SYSCALL_SET_BITS / 64]; };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syscall_set);
} network_syscalls SEC(".maps");

/* The syscall clock of each task that is switched out. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_clock);
} task_clock SEC(".maps");

/* This CPU's NET_RX and NET_TX nanoseconds so far. */
static __always_inline __u64 softirq_nanoseconds(void)
{
	__u32 zero = 0;
	struct softirq_state *state = bpf_map_lookup_elem(&softirq_state, &zero);

	return state ? state->net[NET_RX_SOFTIRQ_ENTRY].nanoseconds + state->net[NET_TX_SOFTIRQ_ENTRY].nanoseconds : 0;
}

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

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	__u32 zero = 0;
	struct syscall_clock *clock = bpf_map_lookup_elem(&cpu_clock, &zero);
	struct syscall_set *network = bpf_map_lookup_elem(&network_syscalls, &zero);

	if (!clock)
		return 0;
	if (network && id >= 0 && id < SYSCALL_SET_BITS && !(network->words[id / 64] & (1ULL << (id % 64)))) {
		clock->start = 0;
		return 0;
	}
	clock->start = bpf_ktime_get_ns();
	clock->softirq = softirq_nanoseconds();
	clock->paused = 0;
	clock->counted = 0;
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct syscall_clock *clock = bpf_map_lookup_elem(&cpu_clock, &zero), *saved;
	__u64 now = 0, softirq = 0;  /* read only when a clock is saved or restored, and once */

	if (!clock)
		return 0;
	if (clock->start) {  /* prev is in (or made) a network-capable syscall: keep its clock */
		saved = bpf_task_storage_get(&task_clock, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (saved) {
			now = bpf_ktime_get_ns();
			softirq = softirq_nanoseconds();
			*saved = *clock;
			saved->switched_out = now;
			saved->paused += softirq - clock->softirq;
		}
	} else {
		saved = bpf_task_storage_get(&task_clock, prev, 0, 0);
		if (saved)
			saved->start = 0;
	}
	saved = bpf_task_storage_get(&task_clock, next, 0, 0);
	if (saved && saved->start) {
		if (!now) {
			now = bpf_ktime_get_ns();
			softirq = softirq_nanoseconds();
		}
		*clock = *saved;
		clock->paused += now - saved->switched_out;
		clock->softirq = softirq;
	} else {
		clock->start = 0;  /* kernel threads, idle, tasks not seen in a syscall */
	}
	return 0;
}

static __always_inline int charge_syscall(struct sock *sk, __u32 entry)
{
	__u32 zero = 0;
	struct syscall_clock *clock;
	unsigned short family;
	__u64 now, softirq, ran, paused;

	if (!sk)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	clock = bpf_map_lookup_elem(&cpu_clock, &zero);
	if (!clock || !clock->start)  /* a kernel thread's socket call: no syscall */
		return 0;
	now = bpf_ktime_get_ns();
	softirq = softirq_nanoseconds();
	ran = now - clock->start;
	paused = clock->paused + (softirq - clock->softirq);
	ran = ran > paused ? ran - paused : 0;
	clock->start = now;
	clock->softirq = softirq;
	clock->paused = 0;
	charge(entry, ran, !clock->counted);
	clock->counted = 1;
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send_length, struct sock *sk, int ret, int flags)
{
	return charge_syscall(sk, TX_SYSCALL_ENTRY);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv_length, struct sock *sk, int ret, int flags)
{
	return charge_syscall(sk, RX_SYSCALL_ENTRY);
}

char LICENSE[] SEC("license") = "GPL";
