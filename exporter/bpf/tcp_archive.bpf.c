// SPDX-License-Identifier: GPL-2.0
/*
 * tcp_archive: a final record for every TCP connection of one network namespace, at its close, for the
 * per-connection archive (exporter/archive/). A poll of sock_diag cannot see a connection that opens and
 * closes between two polls, nor what a connection did after the last poll; this hook sees each close.
 *
 * tp_btf/inet_sock_set_state fires on every TCP state change. The first change of a socket (CLOSE ->
 * SYN_SENT for connect(), LISTEN -> SYN_RECV for the child of an accepted connection) stamps its start
 * time in socket-local storage and sends a `struct start_record` (so the archive's header carries the
 * kernel's start time); the change to TCP_CLOSE (it happens once per socket: FIN_WAIT2 at
 * TIME_WAIT, LAST_ACK, CLOSING, a reset, a refused or timed-out connect) sends one `struct final_record`
 * with the socket's counters from struct tcp_sock (the fields tcp_get_info() reports them from) into the
 * ring buffer `finals`. At TCP_CLOSE the local port is already released (skc_num is 0): it comes from
 * inet_sport. A record that finds the ring buffer full is counted in `lost` (per CPU).
 * Listeners (changes to and from TCP_LISTEN) are not connections and are skipped.
 * `config[0]` holds the network namespace cookie to archive (user space sets its own; 0 archives none).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define IPPROTO_TCP 6
#define AF_INET6 10

/* Only the fields used; CO-RE relocates their offsets against the running kernel's BTF. */
struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; } __attribute__((preserve_access_index));
struct net { __u64 net_cookie; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } possible_net_t;
struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock { struct sock_common __sk_common; __u16 sk_protocol; } __attribute__((preserve_access_index));
struct inet_sock { __u16 inet_sport; } __attribute__((preserve_access_index));
struct minmax_sample { __u32 t; __u32 v; } __attribute__((preserve_access_index));
struct minmax { struct minmax_sample s[3]; } __attribute__((preserve_access_index));
struct tcp_sock {
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	__u64 bytes_retrans;
	__u32 segs_in;
	__u32 segs_out;
	__u32 data_segs_in;
	__u32 data_segs_out;
	__u32 total_retrans;
	__u32 srtt_us;
	__u32 mdev_us;
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 delivered;
	__u32 delivered_ce;
	__u32 dsack_dups;
	__u32 reord_seen;
	__u32 rcv_ooopack;
	struct minmax rtt_min;
} __attribute__((preserve_access_index));

/* Read by exporter/archive/kernel.py (START_RECORD, FINAL_RECORD; told apart by size): keep them in step. */
struct start_record {
	__u64 cookie;
	__u64 start_ns;
};

struct final_record {
	__u64 cookie;
	__u64 start_ns;  /* CLOCK_MONOTONIC at the socket's first state change; 0: before this program */
	__u64 end_ns;    /* CLOCK_MONOTONIC at TCP_CLOSE */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	__u64 bytes_retrans;
	__u32 segs_in;
	__u32 segs_out;
	__u32 data_segs_in;
	__u32 data_segs_out;
	__u32 total_retrans;
	__u32 rtt;       /* microseconds: srtt_us >> 3, as tcp_info's rtt */
	__u32 rttvar;    /* microseconds: mdev_us >> 2 */
	__u32 min_rtt;   /* microseconds */
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 delivered;
	__u32 delivered_ce;
	__u32 dsack_dups;
	__u32 reord_seen;
	__u32 rcv_ooopack;
	__u16 family;
	__u16 local_port;   /* host byte order */
	__u16 remote_port;  /* host byte order */
	__u8 old_state;
	__u8 unused;
	__u8 local_address[16];   /* IPv4: the first 4 bytes */
	__u8 remote_address[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* user space sets the size before loading */
} finals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64); /* start_ns */
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline __u16 swap16(__u16 value) { return value >> 8 | value << 8; }

/* A record that found the ring buffer full. */
static __always_inline int count_lost(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&lost, &zero);
	if (count)
		*count += 1;
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(archive_state, struct sock *sk, int old_state, int new_state)
{
	__u32 zero = 0;
	__u64 *wanted = bpf_map_lookup_elem(&config, &zero);
	if (!wanted || sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_net.net->net_cookie != *wanted)
		return 0;
	if (new_state == TCP_LISTEN || old_state == TCP_LISTEN)
		return 0; /* a listener is not a connection */
	if (new_state != TCP_CLOSE) {
		__u64 *start = bpf_sk_storage_get(&starts, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!start || *start)
			return 0;
		*start = bpf_ktime_get_ns();
		struct start_record *begun = bpf_ringbuf_reserve(&finals, sizeof(*begun), 0);
		if (!begun)
			return count_lost();
		begun->cookie = bpf_get_socket_cookie(sk);
		begun->start_ns = *start;
		bpf_ringbuf_submit(begun, 0);
		return 0;
	}
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	struct final_record *record = bpf_ringbuf_reserve(&finals, sizeof(*record), 0);
	if (!record)
		return count_lost();
	__u64 *start = bpf_sk_storage_get(&starts, sk, 0, 0);
	record->cookie = bpf_get_socket_cookie(sk);
	record->start_ns = start ? *start : 0;
	record->end_ns = bpf_ktime_get_ns();
	record->bytes_acked = tp->bytes_acked;
	record->bytes_received = tp->bytes_received;
	record->bytes_sent = tp->bytes_sent;
	record->bytes_retrans = tp->bytes_retrans;
	record->segs_in = tp->segs_in;
	record->segs_out = tp->segs_out;
	record->data_segs_in = tp->data_segs_in;
	record->data_segs_out = tp->data_segs_out;
	record->total_retrans = tp->total_retrans;
	record->rtt = tp->srtt_us >> 3;
	record->rttvar = tp->mdev_us >> 2;
	record->min_rtt = tp->rtt_min.s[0].v;
	record->snd_cwnd = tp->snd_cwnd;
	record->snd_ssthresh = tp->snd_ssthresh;
	record->delivered = tp->delivered;
	record->delivered_ce = tp->delivered_ce;
	record->dsack_dups = tp->dsack_dups;
	record->reord_seen = tp->reord_seen;
	record->rcv_ooopack = tp->rcv_ooopack;
	record->family = sk->__sk_common.skc_family;
	record->local_port = swap16(((struct inet_sock *)tp)->inet_sport);
	record->remote_port = swap16(sk->__sk_common.skc_dport);
	record->old_state = old_state;
	record->unused = 0;
	if (record->family == AF_INET6) {
		BPF_CORE_READ_INTO(&record->local_address, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&record->remote_address, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		__builtin_memset(record->local_address, 0, sizeof(record->local_address));
		__builtin_memset(record->remote_address, 0, sizeof(record->remote_address));
		__builtin_memcpy(record->local_address, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(record->remote_address, &sk->__sk_common.skc_daddr, 4);
	}
	bpf_ringbuf_submit(record, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
