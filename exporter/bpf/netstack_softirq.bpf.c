// SPDX-License-Identifier: GPL-2.0
/*
 * netstack_softirq: CPU time and invocations of the NET_RX and NET_TX softirqs per CPU, the default
 * part of the netstack collector.
 *
 * Hooks: tp_btf/softirq_entry and softirq_exit; both return at once for other softirqs. Entry stamps
 * the CPU's `softirq_state` (also what netstack_rx_stacks.bpf.c reads to know a sample is inside
 * NET_RX); exit adds the time since the stamp and one invocation to the same per-CPU struct: one
 * lookup and one bpf_ktime_get_ns() per program run, plain adds. Plain adds are safe: only
 * softirq_exit writes the totals, on its own CPU's copy, and it cannot be interleaved with itself
 * there: softirqs do not nest on a CPU (a hardirq that interrupts one returns without running
 * softirqs), and the kernel skips (and counts as missed) a run of a program that would nest in a
 * run of the same program on that CPU. User space only reads. netstack_syscalls.bpf.c reads the
 * nanoseconds to keep its syscall times exclusive. Maps in netstack_shared.h.
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
	struct totals *total;

	if (vec != NET_RX_SOFTIRQ && vec != NET_TX_SOFTIRQ)
		return 0;
	state = bpf_map_lookup_elem(&softirq_state, &zero);
	if (!state || !state->start)  /* entered before we attached */
		return 0;
	total = &state->net[vec == NET_RX_SOFTIRQ ? NET_RX_SOFTIRQ_ENTRY : NET_TX_SOFTIRQ_ENTRY];
	total->nanoseconds += bpf_ktime_get_ns() - state->start;
	total->invocations += 1;
	state->start = 0;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
