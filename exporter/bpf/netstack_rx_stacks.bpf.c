// SPDX-License-Identifier: GPL-2.0
/*
 * netstack_rx_stacks: kernel stacks sampled while a CPU runs the NET_RX softirq.
 *
 * Hook: a perf_event program on the software cpu-clock event of every CPU, with a fixed sample
 * period (user space opens the events; frequency mode under-samples idle CPUs). A sample looks at
 * `softirq_state` (netstack_shared.h, kept by netstack_softirq.bpf.c: user space hands this object its fd)
 * and, only inside NET_RX, copies the kernel stack into a zeroed buffer and counts it in a hash
 * keyed by the stack itself: identical stacks share an entry, different ones never collide
 * (a BPF stack-trace map would drop samples on hash collisions and fill up for good).
 * Two generations, `samples_0`/`samples_1`: user space flips `generation` at each scrape and
 * drains the other one with a batch lookup-and-delete, so the tables never fill up over time.
 * Samples that cannot be recorded are counted in `lost` by reason, never as a stack: LOST_TABLE_FULL
 * (more distinct stacks than MAX_STACKS between two scrapes), LOST_STACK_UNREADABLE (bpf_get_stack
 * failed). Recorded plus lost is every sample taken inside NET_RX.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "netstack_shared.h"

#define STACK_DEPTH 48   /* innermost frames kept: enough to reach net_rx_action */
#define MAX_STACKS 16384 /* distinct stacks per generation (per scrape interval) */

struct stack { __u64 frames[STACK_DEPTH]; };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack);
} scratch SEC(".maps");

#define SAMPLES_MAP(name) \
	struct { \
		__uint(type, BPF_MAP_TYPE_HASH); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__uint(max_entries, MAX_STACKS); \
		__type(key, struct stack); \
		__type(value, __u64); \
	} name SEC(".maps")
SAMPLES_MAP(samples_0);
SAMPLES_MAP(samples_1);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} generation SEC(".maps");

/* Index into `lost`; LOST_REASONS in exporter/collectors/netstack/programs.py has the same order. */
enum { LOST_TABLE_FULL, LOST_STACK_UNREADABLE, LOST_REASONS };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOST_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline int count_lost(__u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&lost, &reason);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

static __always_inline void count_stack(void *samples, struct stack *stack)
{
	__u64 one = 1, *count = bpf_map_lookup_elem(samples, stack);

	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	if (bpf_map_update_elem(samples, stack, &one, BPF_NOEXIST) == 0)
		return;
	count = bpf_map_lookup_elem(samples, stack);  /* another CPU inserted it first */
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		count_lost(LOST_TABLE_FULL);
}

SEC("perf_event")
int sample_net_rx(void *ctx)
{
	__u32 zero = 0, *current;
	struct softirq_state *state = bpf_map_lookup_elem(&softirq_state, &zero);
	struct stack *stack;
	int i;

	if (!state || !state->start || state->vec != NET_RX_SOFTIRQ)
		return 0;
	stack = bpf_map_lookup_elem(&scratch, &zero);
	current = bpf_map_lookup_elem(&generation, &zero);
	if (!stack || !current)
		return 0;
	for (i = 0; i < STACK_DEPTH; i++)  /* unused frames must be zero: the stack is the key */
		stack->frames[i] = 0;
	if (bpf_get_stack(ctx, stack->frames, sizeof(stack->frames), 0) <= 0)
		return count_lost(LOST_STACK_UNREADABLE);
	if (*current & 1)
		count_stack(&samples_1, stack);
	else
		count_stack(&samples_0, stack);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
