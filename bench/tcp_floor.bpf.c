// SPDX-License-Identifier: GPL-2.0
/*
 * tcp_floor: programs that do nothing on the kernel method's hooks, for bench_tcp.py. `iterate_nothing`
 * (iter/tcp) is what a pass of the socket iterator costs without work per socket (the kernel's walk of
 * the TCP hash tables and its locking); `sockops_nothing` and `state_nothing` are what the run-time
 * statistics themselves add per run of a sockops and a tp_btf/inet_sock_set_state program.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct bpf_iter__tcp;
struct sock;

SEC("iter/tcp")
int iterate_nothing(struct bpf_iter__tcp *ctx)
{
	return 0;
}

SEC("sockops")
int sockops_nothing(struct bpf_sock_ops *skops)
{
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_nothing, const struct sock *sk, const int oldstate, const int newstate)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
