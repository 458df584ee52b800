// SPDX-License-Identifier: GPL-2.0
/*
 * tcp_archive_changes: the archive's change detection in the kernel (exporter/archive/), built twice (see
 * tcp_sock_of below): tcp_archive_changes.bpf.c and, for kernels before 6.2, tcp_archive_changes_compat.bpf.c.
 * Every connection of one network namespace has a fingerprint in the socket-local storage `fingerprints`: given by
 * tp_btf/inet_sock_set_state (`enroll_new`) at a connection's first state change, and by one pass of the
 * iter/tcp program `enroll_existing` at start to the connections that are older. One pass of
 * `changed_sockets` per poll, an iterator over the storage map itself (so it visits the connections, not
 * the 2^18 buckets of the established hash an iter/tcp pass walks), compares each connection's
 * fingerprint with the stored one and, for each that changed (or is new), writes one ready-made sock_diag
 * request (struct nlmsghdr + struct inet_diag_req_v2, include/uapi/linux/{netlink,inet_diag}.h) asking for
 * exactly that socket: the 4-tuple, the bound device and the cookie. User space sends what a pass wrote,
 * as it is, in one sendmsg per batch; the answers are the kernel's own tcp_info (exporter/netlink/
 * connections.py compares them too, so a record still means a change). Listeners, request and TIME_WAIT
 * sockets have no storage; a socket in TCP_CLOSE is skipped (its final record comes from tcp_archive.bpf.c).
 *
 * The fingerprint: the fields of struct sock, inet_connection_sock and tcp_sock that tcp_get_info()
 * (net/ipv4/tcp.c), the memory info (sk_get_meminfo()) and INET_DIAG_CONG report from, or that move
 * with every segment in or out and every application read or write (segs_in, segs_out, copied_seq,
 * write_seq). Every other tcp_info field changes only together with one of these: ACK processing (ca_state,
 * unacked, sacked, pacing and delivery rates, delivered*, dsack_dups, reord_seen) moves segs_in; data
 * received (ato, rcv_mss, rcv_rtt, rcv_ssthresh, rcv_ooopack, received_*) moves segs_in; a retransmission
 * or probe moves segs_out; reads (rcv_space) move copied_seq; notsent_bytes is write_seq - snd_nxt. What a
 * change of this fingerprint can miss: busy_time, rwnd_limited, sndbuf_limited and total_rto_time are
 * clocks that advance with time alone while a socket is busy, limited or in RTO recovery (like the last_*
 * timers, which no path archives on their own); each record carries their value then. The fields are
 * read without the socket lock, so a pass may see a change half done; the next pass sees the rest. A
 * write that does not fit the pass's buffer leaves the stored fingerprint as it was, so the kernel's retry
 * of that socket in the next read() writes it again.
 * `config[0]` holds the network namespace cookie to archive and the request's idiag_ext (user space's
 * choice of INET_DIAG_* attributes).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define IPPROTO_TCP 6
#define AF_INET6 10
#define SOCK_DIAG_BY_FAMILY 20
#define NLM_F_REQUEST 1

typedef struct { int counter; } atomic_t;
typedef struct { atomic_t refs; } refcount_t;

/* Only the fields used; CO-RE relocates their offsets against the running kernel's BTF. */
struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; } __attribute__((preserve_access_index));
struct net { __u64 net_cookie; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } possible_net_t;
struct sock_common {
	possible_net_t skc_net;
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	struct { atomic_t rmem_alloc; int len; } sk_backlog;
	atomic_t sk_drops;
	int sk_rcvbuf;
	int sk_sndbuf;
	int sk_wmem_queued;
	int sk_forward_alloc;
	refcount_t sk_wmem_alloc;
	atomic_t sk_omem_alloc;
	unsigned long sk_pacing_rate;
	unsigned long sk_max_pacing_rate;
} __attribute__((preserve_access_index));
struct inet_sock { struct sock sk; } __attribute__((preserve_access_index));
struct tcp_congestion_ops { __u32 key; } __attribute__((preserve_access_index));
struct inet_connection_sock {
	struct inet_sock icsk_inet;
	const struct tcp_congestion_ops *icsk_ca_ops;
	__u32 icsk_rto;
	__u8 icsk_retransmits;
	__u8 icsk_backoff;
	__u8 icsk_probes_out;
} __attribute__((preserve_access_index));
struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 segs_in;
	__u32 segs_out;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 total_retrans;
	__u32 lost_out;
	__u32 retrans_out;
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 srtt_us;
	__u32 mdev_us;
	__u32 rcv_wnd;
	__u32 snd_wnd;
	__u32 mss_cache;
} __attribute__((preserve_access_index));
struct seq_file;
struct bpf_iter_meta { struct seq_file *seq; } __attribute__((preserve_access_index));
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));
struct bpf_iter__bpf_sk_storage_map {
	struct bpf_iter_meta *meta;
	struct sock *sk;
	void *value;
} __attribute__((preserve_access_index));

/* Every socket with a fingerprint is a full TCP socket (enroll_new and enroll_existing check before they
 * create one), so the iterator casts: bpf_rdonly_cast (a kfunc of kernel/bpf/helpers.c, Linux 6.2+) makes
 * no check, where bpf_skc_to_tcp_sock()'s check of sk_protocol waits for a cold cache line of its own
 * before the fingerprint's loads (~50 ns a connection). Older kernels load the compat build, which takes
 * the helper. */
#ifdef TCP_ARCHIVE_CHANGES_COMPAT
#define tcp_sock_of(sk) bpf_skc_to_tcp_sock(sk)
#else
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym;
#define tcp_sock_of(sk) ((struct tcp_sock *)bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock)))
#endif

#define WORDS 14
struct fingerprint { __u64 word[WORDS]; };

/* What user space sends back to the kernel: read as is by exporter/netlink/connections.py (REQUEST_SIZE). */
struct request {
	__u32 nlmsg_len;
	__u16 nlmsg_type;
	__u16 nlmsg_flags;
	__u32 nlmsg_seq;
	__u32 nlmsg_pid;
	__u8 sdiag_family;
	__u8 sdiag_protocol;
	__u8 idiag_ext;
	__u8 pad;
	__u32 idiag_states;
	__u16 idiag_sport;  /* network byte order, as sockid's */
	__u16 idiag_dport;
	__u8 idiag_src[16];
	__u8 idiag_dst[16];
	__u32 idiag_if;
	__u64 idiag_cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fingerprint);
} fingerprints SEC(".maps");

struct config { __u64 netns_cookie; __u32 extensions; __u32 unused; };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

static __always_inline __u64 pair(__u32 high, __u32 low) { return (__u64)high << 32 | low; }

static __always_inline void fingerprint_of(struct tcp_sock *tp, struct fingerprint *now)
{
	struct inet_connection_sock *icsk = &tp->inet_conn;
	struct sock *sk = &icsk->icsk_inet.sk;

	now->word[0] = pair(sk->__sk_common.skc_state | icsk->icsk_retransmits << 8 | icsk->icsk_backoff << 16
			    | icsk->icsk_probes_out << 24, icsk->icsk_rto);
	now->word[1] = pair(tp->segs_in, tp->segs_out);
	now->word[2] = pair(tp->copied_seq, tp->write_seq);
	now->word[3] = tp->bytes_acked;
	now->word[4] = tp->bytes_received;
	now->word[5] = pair(tp->total_retrans, tp->lost_out ^ tp->retrans_out << 16);
	now->word[6] = pair(tp->snd_cwnd, tp->snd_ssthresh);
	now->word[7] = pair(tp->srtt_us, tp->mdev_us);
	now->word[8] = pair(tp->rcv_wnd, tp->snd_wnd);
	now->word[9] = pair(sk->sk_backlog.rmem_alloc.counter, sk->sk_wmem_alloc.refs.counter);
	now->word[10] = pair(sk->sk_wmem_queued, sk->sk_forward_alloc);
	now->word[11] = pair(sk->sk_rcvbuf, sk->sk_sndbuf) ^ pair(sk->sk_drops.counter, sk->sk_backlog.len)
			^ pair(sk->sk_omem_alloc.counter, tp->mss_cache) << 1;
	now->word[12] = icsk->icsk_ca_ops->key;  /* a hash of the congestion control's name */
	now->word[13] = sk->sk_pacing_rate ^ sk->sk_max_pacing_rate << 1;
}

static __always_inline struct config *settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

/* A fingerprint of zeros: the next pass writes the connection's request. */
static __always_inline void enroll(struct sock *sk)
{
	bpf_sk_storage_get(&fingerprints, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(enroll_new, struct sock *sk, int old_state, int new_state)
{
	struct config *wanted = settings();
	if (!wanted || sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_net.net->net_cookie != wanted->netns_cookie)
		return 0;
	if (new_state == TCP_LISTEN || old_state == TCP_LISTEN || new_state == TCP_CLOSE)
		return 0; /* a listener is not a connection; a closed one is done */
	enroll(sk);
	return 0;
}

SEC("iter/tcp")
int enroll_existing(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc || skc->skc_state == TCP_LISTEN)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (tp)  /* else TIME_WAIT or a request socket */
		enroll(&tp->inet_conn.icsk_inet.sk);
	return 0;
}

SEC("iter/bpf_sk_storage_map")
int changed_sockets(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct fingerprint *last = ctx->value;
	struct sock *sk = ctx->sk;
	if (!sk || !last)
		return 0;
	struct tcp_sock *tp = tcp_sock_of(sk);
	struct config *wanted = settings();
	if (!tp || !wanted)
		return 0;
	struct sock_common *skc = &sk->__sk_common;
	struct fingerprint now;
	fingerprint_of(tp, &now);
	if (skc->skc_state == TCP_CLOSE)
		return 0;
	__u64 differ = 0;
#pragma unroll
	for (int word = 0; word < WORDS; word++)
		differ |= now.word[word] ^ last->word[word];
	if (!differ)
		return 0;

	struct request request = {
		.nlmsg_len = sizeof(request),
		.nlmsg_type = SOCK_DIAG_BY_FAMILY,
		.nlmsg_flags = NLM_F_REQUEST,
		.sdiag_family = skc->skc_family,
		.sdiag_protocol = IPPROTO_TCP,
		.idiag_ext = wanted->extensions,
		.idiag_states = ~0U,
		.idiag_sport = skc->skc_num >> 8 | (__u16)(skc->skc_num << 8),
		.idiag_dport = skc->skc_dport,
		.idiag_if = skc->skc_bound_dev_if,
		.idiag_cookie = bpf_get_socket_cookie(sk),
	};
	if (request.sdiag_family == AF_INET6) {
		__builtin_memcpy(request.idiag_src, skc->skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(request.idiag_dst, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		__builtin_memcpy(request.idiag_src, &skc->skc_rcv_saddr, 4);
		__builtin_memcpy(request.idiag_dst, &skc->skc_daddr, 4);
	}
	if (bpf_seq_write(ctx->meta->seq, &request, sizeof(request)) == 0)
		*last = now;  /* else the pass's buffer was full: the retry of this socket writes it again */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
