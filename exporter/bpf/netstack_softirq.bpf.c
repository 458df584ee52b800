// SPDX-License-Identifier: GPL-2.0
/*
 * netstack_softirq: CPU time and invocations of the NET_RX and NET_TX softirqs per CPU, the default
 * part of the netstack collector.
 *
 * Hooks: tp_btf/softirq_entry and softirq_exit; both return at once for other softirqs. Entry stamps
 * `softirq_state` (also what netstack_rx_stacks.bpf.c reads to know a sample is inside NET_RX); exit
 * charges the time since the stamp to `totals` and pauses the CPU's syscall clock by as much (read
 * only by netstack_syscalls.bpf.c, when --collector.netstack.syscalls loads it: a softirq that runs
 * inline in a send/receive syscall counts as softirq only). One bpf_ktime_get_ns() per program run.
 * Maps in netstack_shared.h.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "netstack_shared.h"

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec)
{
	__u32 zero = 0;
	struct softirq_state *state;

	if (vec != NET_RX_SOFTIRQ && vec != NET_TX_SOFTIRQ)
		return 0;
	state = bpf_map_lookup_elem(&softirq_state, &zero);
	if (state) {
		state->vec = vec;
		state->start = bpf_ktime_get_ns();
	}
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit, unsigned int vec)
{
	__u32 zero = 0;
	struct softirq_state *state;
	struct syscall_clock *clock;
	__u64 start, length;

	if (vec != NET_RX_SOFTIRQ && vec != NET_TX_SOFTIRQ)
		return 0;
	state = bpf_map_lookup_elem(&softirq_state, &zero);
	if (!state || !state->start)  /* entered before we attached */
		return 0;
	start = state->start;
	state->start = 0;
	length = bpf_ktime_get_ns() - start;
	charge(vec == NET_RX_SOFTIRQ ? NET_RX_SOFTIRQ_ENTRY : NET_TX_SOFTIRQ_ENTRY, length, 1);
	/* If it ran inline in a task's syscall, that syscall did not run meanwhile. */
	clock = bpf_map_lookup_elem(&cpu_clock, &zero);
	if (clock)
		clock->paused += length;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
