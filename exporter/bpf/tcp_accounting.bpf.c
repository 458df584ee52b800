// SPDX-License-Identifier: GPL-2.0
/*
 * tcp_accounting: every TCP socket's tcp_info counters, summed in the kernel, short-lived sockets included.
 *
 * Totals are `aggregates` alone, keyed by (netns cookie, local-port bucket). A socket's storage
 * (`contributions`, socket-local storage) records what the socket has already added; a socket without a
 * record has added nothing. Whoever meets the socket adds what its counters moved since then
 * (current - contributed). The visitors:
 *   tcp_sockops  sockops on the cgroup v2 root as user space sees it (the hierarchy's, or a cgroup
 *                namespace's): enrols each socket at connect(), listen() and accept
 *                (BPF_SOCK_OPS_STATE_CB_FLAG), then accounts it at TCP_CLOSE: its final counters and the
 *                close. A cgroup program is called directly by tcp_set_state(), never skipped.
 *   tcp_close    tp_btf/inet_sock_set_state: accounts the closes tcp_sockops does not (sockets without the
 *                flag, closes from LISTEN and SYN_RECV, all of them while tcp_sockops is not attached:
 *                `settings.sockops`), and moves a record on when a closed socket starts a new life. A tracing program is skipped
 *                when it fires on a CPU where it is already running (a softirq closing a socket during its
 *                run; measured here under load with RPS: 34-51 of 20,000 connections' runs), which the
 *                kernel counts in recursion_misses: sockops does not have that hole.
 *   tcp_live     iter/tcp, run by user space at every scrape over the opener's network namespace: adds
 *                the live sockets' moves (making their records), enrols the sockets tcp_sockops does not
 *                follow yet (TCP_BPF_SOCK_OPS_CB_FLAGS), and tallies states and the RTT of established
 *                sockets per bucket for this pass (`live`).
 * Why each byte and each close counts exactly once (net/ipv4/tcp.c, af_inet.c, inet_connection_sock.c):
 *   - One socket's visits never interleave: the iterator holds the socket lock (lock_sock_fast) while
 *     its program runs and skips unhashed sockets; every state change runs under that lock too, and
 *     TCP_CLOSE unhashes the socket under it. So the record is read and written by one visitor at a
 *     time, and the iterator never meets a socket after its close (until it is hashed again).
 *   - Every close of a connection goes through tcp_set_state(sk, TCP_CLOSE) (tcp_done(), tcp_disconnect(),
 *     __tcp_close(), a failed connect()), which calls sockops (STATE_CB) if and only if the socket's
 *     bpf_sock_ops_cb_flags has the flag, and then inet_sk_state_store(), the tracepoint, which reads the
 *     same flag under the same lock: exactly one of the two accounts the close. The flag comes from
 *     tcp_sockops (connect, listen; a child is a clone of its listener and has its flags), from tcp_live,
 *     or from another sockops program (one that cleared it in its own STATE_CB at a close would have that
 *     close counted twice). On the hierarchy's root tcp_sockops runs for every socket with the flag; below
 *     it (`SOCKOPS_BELOW_ROOT`), only for those of its cgroup tree, which a socket never leaves: there it
 *     records each socket's cgroup in `followed_cgroups` before it accounts a close, and the tracepoint
 *     leaves a close with the flag to it only if the socket's cgroup is recorded (cgroup ids are never
 *     reused). A cgroup that does not fit in the map is left to the tracepoint.
 *     No socket-local storage is made at a close: a socket the iterator never met has contributed nothing.
 *   - Two closes bypass tcp_set_state() and sockops: inet_csk_listen_start() puts a socket back to
 *     TCP_CLOSE with inet_sk_set_state() when listen() fails, and inet_ehash_nolisten() so closes a new
 *     child (SYN_RECV) that lost a race for its hash slot. So the closes from LISTEN and SYN_RECV are the
 *     tracepoint's alone (sockops leaves them); a listener moves no bytes, and a connection rarely ends
 *     in SYN_RECV. CLOSE -> CLOSE is no close.
 *   - A socket that tcp_disconnect() closed can connect or listen again (CLOSE -> SYN_SENT or LISTEN).
 *     tcp_disconnect() zeroes the byte and segment counters but keeps chrono_stat (busy, rwnd- and
 *     sndbuf-limited time, already counted at the close), so the new life starts with a record at its
 *     counters then (start_life(): made only when the socket has one or kept some time). A record whose
 *     close is counted (`closed`) stands for a life whose start nobody saw: it is left alone, never
 *     counted from (no double count; that life is lost, as a skipped tracepoint run would lose it).
 *   - Totals never decrease: each visit adds a non-negative difference (32-bit counters modulo 2^32).
 * Sockets already open when user space starts count from zero: until `settings.counting` is set (after
 * user space's first pass), a socket met for the first time only gets a record of its current counters,
 * and a close without a record adds nothing to the counters.
 * Ports: `port_buckets` (filled by user space) maps a local port to its bucket; 0, every port not
 * listed, is `other` (or everything, without a port list). At TCP_CLOSE the port is already released
 * (skc_num is 0): closes take it from inet_sport.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define STATES 16
#define USEC_PER_SEC 1000000
#define SOL_TCP 6
#define TCP_BPF_SOCK_OPS_CB_FLAGS 1008  /* include/uapi/linux/bpf.h (Linux 6.10) */

extern unsigned int CONFIG_HZ __kconfig;

/* Only the fields used; CO-RE relocates their offsets against the running kernel's BTF. */
struct net { __u64 net_cookie; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } __attribute__((preserve_access_index)) possible_net_t;
struct sock_common {
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
} __attribute__((preserve_access_index));
struct kernfs_node { __u64 id; } __attribute__((preserve_access_index));
struct cgroup { struct kernfs_node *kn; } __attribute__((preserve_access_index));
struct sock_cgroup_data { struct cgroup *cgroup; } __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	struct sock_cgroup_data sk_cgrp_data;
} __attribute__((preserve_access_index));
struct inet_sock { struct sock sk; __be16 inet_sport; } __attribute__((preserve_access_index));
struct inet_connection_sock { struct inet_sock icsk_inet; } __attribute__((preserve_access_index));
struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 segs_in, segs_out, total_retrans, srtt_us;
	__u64 bytes_received, bytes_acked, bytes_sent, bytes_retrans;
	__u8 chrono_type;
	__u8 bpf_sock_ops_cb_flags;
	__u32 chrono_start;
	__u32 chrono_stat[3];
} __attribute__((preserve_access_index));
struct bpf_iter_meta { __u64 seq_num; } __attribute__((preserve_access_index));
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

/* In the order of the exporter's TCP_INFO_COUNTER_NAMES; 32-bit in the kernel: the first, 4th and 5th. */
enum { TOTAL_RETRANS, BYTES_ACKED, BYTES_RECEIVED, SEGS_OUT, SEGS_IN, BUSY_TIME, RWND_LIMITED,
       SNDBUF_LIMITED, BYTES_SENT, BYTES_RETRANS, COUNTERS };

struct aggregate_key { __u64 netns_cookie; __u32 bucket; __u32 unused; };
struct totals { __u64 counters[COUNTERS]; __u64 closed; };
struct contribution { __u64 counters[COUNTERS]; __u8 closed; __u8 unused[7]; };
/* counting: set after user space's first pass; sockops: how tcp_sockops accounts closes. */
struct settings { __u64 pass; __u32 counting; __u32 sockops; };
enum { SOCKOPS_OFF, SOCKOPS_ROOT, SOCKOPS_BELOW_ROOT };  /* not attached; on the root; on a cgroup below it */

/* RTT buckets (tcpi_rtt microseconds, upper bounds inclusive; the last is +Inf), as the exporter's. */
#define RTT_BOUNDS 19
static const __u32 rtt_bounds_us[RTT_BOUNDS] = {
	10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
	100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000 };
struct live { __u64 pass; __u32 states[STATES]; __u32 rtt[RTT_BOUNDS + 1]; __u64 rtt_sum_us; };

/* Per CPU: closes on both CPUs never share a cache line; the adds stay atomic because a close in softirq
 * may interrupt the iterator's add on the same CPU. User space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct aggregate_key);
	__type(value, struct totals);
} aggregates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct contribution);
} contributions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} port_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

/* Below the root: the cgroups (by id, never reused) of the sockets whose close tcp_sockops accounted, so
 * of cgroups it follows. Full, tcp_sockops leaves the closes of new cgroups to the tracepoint. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} followed_cgroups SEC(".maps");

/* One entry per bucket (user space sizes it); an entry whose pass is not the current one is stale. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct live);
} live SEC(".maps");

static __always_inline __u32 bucket_of(__u16 port)
{
	__u32 key = port;
	__u32 *bucket = bpf_map_lookup_elem(&port_buckets, &key);
	return bucket ? *bucket : 0;
}

static __always_inline struct totals *totals_of(__u64 netns_cookie, __u32 bucket)
{
	struct aggregate_key key = { .netns_cookie = netns_cookie, .bucket = bucket };
	struct totals *totals = bpf_map_lookup_elem(&aggregates, &key);
	if (totals)
		return totals;
	struct totals zero = {};
	bpf_map_update_elem(&aggregates, &key, &zero, BPF_NOEXIST);  /* lost a race: the lookup finds it */
	return bpf_map_lookup_elem(&aggregates, &key);
}

/* The counters as tcp_info reports them (tcp_get_info() and tcp_get_info_chrono_stats(), net/ipv4/tcp.c). */
static __always_inline void read_counters(const struct tcp_sock *tp, __u64 *now)
{
	__u64 busy = tp->chrono_stat[0], rwnd = tp->chrono_stat[1], sndbuf = tp->chrono_stat[2];
	__u8 running = tp->chrono_type;  /* TCP_CHRONO_BUSY 1, RWND_LIMITED 2, SNDBUF_LIMITED 3; 0 none */
	__u32 usec_per_jiffy = USEC_PER_SEC / CONFIG_HZ;

	if (running) {
		__u32 elapsed = (__u32)bpf_jiffies64() - tp->chrono_start;
		if (running == 1)
			busy += elapsed;
		else if (running == 2)
			rwnd += elapsed;
		else if (running == 3)
			sndbuf += elapsed;
	}
	now[TOTAL_RETRANS] = tp->total_retrans;
	now[BYTES_ACKED] = tp->bytes_acked;
	now[BYTES_RECEIVED] = tp->bytes_received;
	now[SEGS_OUT] = tp->segs_out;
	now[SEGS_IN] = tp->segs_in;
	now[BUSY_TIME] = (busy + rwnd + sndbuf) * usec_per_jiffy;
	now[RWND_LIMITED] = rwnd * usec_per_jiffy;
	now[SNDBUF_LIMITED] = sndbuf * usec_per_jiffy;
	now[BYTES_SENT] = tp->bytes_sent;
	now[BYTES_RETRANS] = tp->bytes_retrans;
}

/* What counter `index` moved since `base` (NULL: nothing contributed yet). */
static __always_inline __u64 moved(const __u64 *now, const __u64 *base, int index)
{
	if (!base)
		return now[index];
	if (index == TOTAL_RETRANS || index == SEGS_OUT || index == SEGS_IN)
		return (__u32)(now[index] - base[index]);
	return now[index] > base[index] ? now[index] - base[index] : 0;
}

static __always_inline int changed(const __u64 *now, const __u64 *base)
{
	__u64 difference = 0;
#pragma unroll
	for (int index = 0; index < COUNTERS; index++)
		difference |= now[index] ^ base[index];
	return difference != 0;
}

/* Add what the counters moved since `base` to `totals`. */
static __always_inline void contribute(struct totals *totals, const __u64 *now, const __u64 *base)
{
#pragma unroll
	for (int index = 0; index < COUNTERS; index++) {
		__u64 delta = moved(now, base, index);
		if (delta)
			__sync_fetch_and_add(&totals->counters[index], delta);
	}
}

static __always_inline struct settings *settings_now(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline __u64 netns_cookie_of(const struct sock_common *skc)
{
	return skc->skc_net.net->net_cookie;
}

static __always_inline __u64 cgroup_of(const struct tcp_sock *tp)
{
	return tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup->kn->id;
}

/* Whether tcp_sockops accounts this socket's closes (it has just run, for a close, if so): it runs for
 * sockets with the flag, of the cgroups below the one it is attached to. */
static __always_inline int followed(const struct tcp_sock *tp, const struct settings *current)
{
	if (!current->sockops || !(tp->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		return 0;
	if (current->sockops == SOCKOPS_ROOT)
		return 1;  /* every socket */
	__u64 cgroup = cgroup_of(tp);
	return bpf_map_lookup_elem(&followed_cgroups, &cgroup) != NULL;
}

/* tcp_sockops, at a close: whether it accounts it. Below the root it first records the socket's cgroup
 * as followed (the tracepoint looks it up just after, in the same tcp_set_state()). */
static __always_inline int follow(const struct tcp_sock *tp, const struct settings *current)
{
	if (current->sockops != SOCKOPS_BELOW_ROOT)
		return current->sockops == SOCKOPS_ROOT;
	__u64 cgroup = cgroup_of(tp);
	__u8 yes = 1;
	return bpf_map_lookup_elem(&followed_cgroups, &cgroup) ||
	       !bpf_map_update_elem(&followed_cgroups, &cgroup, &yes, BPF_ANY);
}

/* Account a socket's close: its final counters (what they moved since its record; in full without one,
 * once counting) and the close. */
static __always_inline void account_close(struct tcp_sock *tp, const struct settings *current)
{
	struct contribution *seen = bpf_sk_storage_get(&contributions, tp, 0, 0);
	if (seen && seen->closed)
		return;  /* a life whose start nobody saw (see the header) */
	struct totals *totals = totals_of(netns_cookie_of(&tp->inet_conn.icsk_inet.sk.__sk_common),
					  bucket_of(bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)));
	if (!totals)
		return;
	__u64 now[COUNTERS];
	read_counters(tp, now);
	if (seen) {
		contribute(totals, now, seen->counters);
		__builtin_memcpy(seen->counters, now, sizeof(now));
		seen->closed = 1;
	} else if (current->counting) {
		contribute(totals, now, NULL);
	}
	__sync_fetch_and_add(&totals->closed, 1);
}

/* A closed socket connects or listens again: its new life counts from its counters now (zero but for the
 * times tcp_disconnect() keeps). Nothing to do for a new socket (no record, all zero). */
static __always_inline void start_life(struct tcp_sock *tp)
{
	struct contribution *seen = bpf_sk_storage_get(&contributions, tp, 0, 0);
	if (!seen) {
		if (!(tp->chrono_stat[0] | tp->chrono_stat[1] | tp->chrono_stat[2]))
			return;
		seen = bpf_sk_storage_get(&contributions, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!seen)
			return;
	}
	read_counters(tp, seen->counters);
	seen->closed = 0;
}

SEC("sockops")
int tcp_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;  /* most calls are for other operations (RTO, window, ECN): they return at once */
	if (op == BPF_SOCK_OPS_STATE_CB) {
		__u32 oldstate = skops->args[0];
		if (skops->args[1] != TCP_CLOSE || oldstate == TCP_LISTEN || oldstate == TCP_SYN_RECV ||
		    oldstate == TCP_CLOSE)
			return 1;  /* the closes from LISTEN and SYN_RECV are the tracepoint's (see the header) */
		struct settings *current = settings_now();
		struct tcp_sock *tp = skops->sk ? bpf_skc_to_tcp_sock(skops->sk) : NULL;
		if (current && tp && follow(tp, current))
			account_close(tp, current);
		return 1;
	}
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {  /* also the tracepoint's; here never skipped */
		struct tcp_sock *tp = skops->sk ? bpf_skc_to_tcp_sock(skops->sk) : NULL;
		if (tp)
			start_life(tp);
	}
	if (!(skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))  /* a child has its listener's */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_close, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != TCP_CLOSE && oldstate != TCP_CLOSE)
		return 0;  /* most state changes */
	if (oldstate == newstate || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		return 0;
	if (oldstate == TCP_CLOSE) {
		start_life(tp);
		return 0;
	}
	struct settings *current = settings_now();
	if (!current)
		return 0;
	if (oldstate != TCP_LISTEN && oldstate != TCP_SYN_RECV && followed(tp, current))
		return 0;  /* tcp_sockops accounted it, just before (tcp_set_state()) */
	account_close(tp, current);
	return 0;
}

SEC("iter/tcp")
int tcp_live(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	__u32 zero = 0;
	if (!skc)
		return 0;
	struct settings *current = bpf_map_lookup_elem(&settings, &zero);
	if (!current)
		return 0;
	__u32 bucket = bucket_of(skc->skc_num);
	struct live *tally = bpf_map_lookup_elem(&live, &bucket);
	if (!tally)
		return 0;
	if (tally->pass != current->pass) {  /* first socket of this bucket in this pass */
		__builtin_memset(tally, 0, sizeof(*tally));
		tally->pass = current->pass;
	}
	unsigned char state = skc->skc_state;
	if (state < STATES)
		tally->states[state]++;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;  /* TIME_WAIT and request sockets: no counters */
	if (state == TCP_ESTABLISHED) {
		__u32 rtt = tp->srtt_us >> 3, index = RTT_BOUNDS;
#pragma unroll
		for (int bound = RTT_BOUNDS - 1; bound >= 0; bound--)
			if (rtt <= rtt_bounds_us[bound])
				index = bound;
		tally->rtt[index]++;
		tally->rtt_sum_us += rtt;
	}
	if (current->sockops && !(tp->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG)) {
		int flags = tp->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG;  /* opened before tcp_sockops came */
		bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags, sizeof(flags));
	}
	__u64 now[COUNTERS];
	read_counters(tp, now);
	struct contribution *seen = bpf_sk_storage_get(&contributions, tp, 0, 0);
	if (!seen) {  /* met for the first time */
		seen = bpf_sk_storage_get(&contributions, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!seen)
			return 0;
		if (!current->counting) {  /* the baseline: counts from here on */
			__builtin_memcpy(seen->counters, now, sizeof(now));
			return 0;
		}
	} else if (seen->closed || !changed(now, seen->counters)) {
		return 0;  /* a life whose start nobody saw (see the header), or idle since the last pass */
	}
	struct totals *totals = totals_of(netns_cookie_of(skc), bucket);
	if (!totals)
		return 0;  /* no room for the aggregate: the record waits, its moves count at a later visit */
	contribute(totals, now, seen->counters);
	__builtin_memcpy(seen->counters, now, sizeof(now));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
