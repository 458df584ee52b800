// SPDX-License-Identifier: GPL-2.0
/*
 * hook_cost: what a program on sys_enter costs every syscall, piece by piece (bench_netstack.py
 * attaches one at a time and times getppid()): `empty` is the tracepoint's dispatch alone, `store`
 * adds the per-CPU array lookup and the stores netstack_syscalls.bpf.c's sys_enter makes, `clock` adds its
 * bpf_ktime_get_ns(). `switch_empty`, on sched_switch, is what any program there costs a context
 * switch (timed with sched_yield() between two processes on one CPU). The other empty programs are the
 * floor of any program on their hook, its dispatch alone, run in the benchmarks' interleaved windows
 * like the collectors' programs: `drop_empty` on kfree_skb (bench_drops.py), `softirq_entry_empty` and
 * `softirq_exit_empty` on the softirq tracepoints the netstack default uses (bench_netstack.py).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct pt_regs;
struct task_struct;
struct sk_buff;
struct slot { __u64 start; __u64 paused; __u32 counted; __u32 unused; };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(empty, struct pt_regs *regs, long id)
{
	return 0;
}

/* The stores netstack_syscalls.bpf.c's sys_enter makes, with `start` as the value of the first. */
static __always_inline int stamp(__u64 start)
{
	__u32 zero = 0;
	struct slot *slot = bpf_map_lookup_elem(&slots, &zero);

	if (slot) {
		slot->start = start;
		slot->paused = 0;
		slot->counted = 0;
	}
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(store, struct pt_regs *regs, long id)
{
	return stamp(id);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(clock, struct pt_regs *regs, long id)
{
	return stamp(bpf_ktime_get_ns());
}

SEC("tp_btf/sched_switch")
int BPF_PROG(switch_empty, _Bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry_empty, unsigned int vec)
{
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit_empty, unsigned int vec)
{
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_empty, struct sk_buff *skb, void *location, unsigned int reason)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
