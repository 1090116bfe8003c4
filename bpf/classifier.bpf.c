// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * tc classifier: one verdict per TCP flow, on egress and ingress of the
 * interfaces the agent names. See docs/dataplane.md for the rules.
 *
 * Failure policy: the filter fails open where it cannot see (packets it cannot
 * parse, no config loaded, flow map insert failing): such traffic passes and
 * is counted. It fails closed only on evidence: a flow whose payload was seen
 * to be plaintext, in active mode.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "shared.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/tls.h"
#include "lib/starttls.h"
#include "lib/connect.h"

/* tcx and cls_bpf both read -1 as "no opinion: next program, then pass" and 2 as drop. */
#define VERDICT_PASS (-1)
#define VERDICT_DROP 2

#define DIR_CLIENT 0	/* payload travelling client -> server */
#define DIR_SERVER 1
#define PENDING_MAX 60000	/* bytes an undecided flow may carry (a large ClientHello + 0-RTT) */

/* Plaintext preambles are copied here to be scanned: 1 KiB does not fit the
 * 512-byte BPF stack. Per CPU, one slot: tc programs do not nest on a CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[SCAN_MAX]);
} sslwall_scratch SEC(".maps");

enum judgement {
	JUDGE_PENDING = 0,
	JUDGE_DECIDED = 1,	/* f->cls was set to an allowed class */
	JUDGE_VIOLATION = 2,
};

static __always_inline __u8 verdict_for(const struct sslwall_config *cfg)
{
	return cfg->mode == SSLWALL_MODE_ACTIVE ? SSLWALL_VERDICT_BLOCKED : SSLWALL_VERDICT_REPORTED;
}

static __always_inline int in_bypass_cgroup(struct __sk_buff *skb, const struct sslwall_config *cfg)
{
	return cfg->bypass_cgroup_id &&
	       bpf_skb_ancestor_cgroup_id(skb, cfg->bypass_cgroup_level) == cfg->bypass_cgroup_id;
}

static __always_inline int in_bypass_cidr(__u32 gen, __u8 family, const __u8 *addr)
{
	struct sslwall_cidr_key k = {
		.prefixlen = 16 + (family == SSLWALL_FAMILY_IPV4 ? 32 : 128),
		.gen = gen,
		.family = family,
	};

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&sslwall_bypass_cidrs, &k) != NULL;
}

/* Append up to TLS_HELLO_HDR_LEN leading bytes of this direction to the flow,
 * so a record header split across segments is judged whole. Returns how many
 * bytes are buffered. */
static __always_inline __u32 buffer_header(struct __sk_buff *skb, struct sslwall_flow *f, __u32 d, __u32 off,
					   __u32 len)
{
	__u8 tmp[TLS_HELLO_HDR_LEN] = {};
	/* 64-bit on purpose: 32-bit values get zero-extended through copies
	 * whose bounds the verifier does not carry back to the size argument. */
	__u64 have = f->hdr_len[d & 1], want, i;

	if (have >= TLS_HELLO_HDR_LEN)
		return TLS_HELLO_HDR_LEN;
	want = TLS_HELLO_HDR_LEN - have;
	if (want > len)
		want = len;
	/* bpf_skb_load_bytes: "R4 invalid zero-sized read" unless 0 < want <= sizeof(tmp) is
	 * provable on the register itself; the barrier stops clang merging both tests
	 * into one (want - 1 > 5) on a copy the verifier does not link back. */
	if (want == 0)
		return have;
	asm volatile("" : "+r"(want));
	if (want > TLS_HELLO_HDR_LEN)
		return have;
	if (bpf_skb_load_bytes(skb, off, tmp, want) < 0)
		return have;
#pragma unroll
	for (i = 0; i < TLS_HELLO_HDR_LEN; i++) {
		__u32 at = have + i;

		if (i < want && at < TLS_HELLO_HDR_LEN)
			f->hdr[d & 1][at] = tmp[i];
	}
	f->hdr_len[d & 1] = have + want;
	return have + want;
}

static __always_inline int judge_hello(struct __sk_buff *skb, struct sslwall_flow *f, __u32 d, __u32 off, __u32 len)
{
	__u32 n = buffer_header(skb, f, d, off, len);

	return tls_hello_prefix(f->hdr[d & 1], n, d == DIR_CLIENT ? TLS_HS_CLIENT_HELLO : TLS_HS_SERVER_HELLO);
}

/* Spend plaintext preamble bytes; 0 once the budget is exceeded. */
static __always_inline int spend_budget(struct sslwall_flow *f, const struct sslwall_config *cfg, __u32 len)
{
	__u32 spent = f->plain_bytes + len;

	f->plain_bytes = spent > 0xffff ? 0xffff : spent;
	return spent <= cfg->negotiation_budget;
}

static __noinline int judge_client_command(struct __sk_buff *skb, struct sslwall_flow *f, __u32 off, __u64 len)
{
	__u32 zero = 0;
	__u8 *buf = bpf_map_lookup_elem(&sslwall_scratch, &zero);
	int cmd;

	if (!buf || len == 0)
		return JUDGE_VIOLATION;
	asm volatile("" : "+r"(len));	/* see buffer_header: keep both bounds on one register */
	if (len > SCAN_MAX)
		return JUDGE_VIOLATION;
	if (bpf_skb_load_bytes(skb, off, buf, len) < 0)
		return JUDGE_VIOLATION;
	if (f->proto == SSLWALL_PROTO_CONNECT)
		cmd = connect_command(buf, len);
	else
		cmd = starttls_command(buf, len, f->proto);
	if (cmd == CMD_FORBIDDEN)
		return JUDGE_VIOLATION;
	if (cmd == CMD_UPGRADE)
		f->stage = SSLWALL_STAGE_UPGRADE;
	return JUDGE_PENDING;
}

/* Printable ASCII in the first bytes: how plaintext looks when we join a flow
 * midway and see no record header. An encrypted byte is printable with p ~ 0.38,
 * so 32 of them in a row happen by chance about once in 10^13 segments.
 * The loop ORs a 0/1 flag instead of counting: a counter that differs on every
 * path defeats state pruning ("BPF program is too large. Processed 1000001 insn"). */
#define TEXT_SAMPLE 32
static __noinline int looks_like_text(struct __sk_buff *skb, __u32 off, __u64 len)
{
	__u8 buf[TEXT_SAMPLE] = {};
	__u32 i, bad = 0;

	if (len == 0)
		return 0;
	if (len > TEXT_SAMPLE)
		len = TEXT_SAMPLE;
	asm volatile("" : "+r"(len));	/* see buffer_header: keep both bounds on one register */
	if (len == 0 || len > TEXT_SAMPLE)
		return 0;
	if (bpf_skb_load_bytes(skb, off, buf, len) < 0)
		return 0;
#pragma unroll
	for (i = 0; i < TEXT_SAMPLE; i++) {
		__u8 c = buf[i];

		if (i < len && !((c >= 0x20 && c < 0x7f) || c == '\r' || c == '\n' || c == '\t'))
			bad = 1;
	}
	return !bad;
}

/* The state machine of an undecided flow, fed one payload at a time. */
static __noinline int judge_payload(struct __sk_buff *skb, struct sslwall_flow *f, const struct sslwall_config *cfg,
				    const struct sslwall_pkt *p, __u32 d)
{
	__u32 off = p->payload_off, len = p->payload_len;
	int r;

	if (f->stage == SSLWALL_STAGE_MIDSTREAM) {
		/* We joined late: a record header says TLS; text says plaintext; anything
		 * else may be the middle of a TLS record, so wait for more (never block
		 * blindly). A flow that stays binary past the pending budget is let be. */
		__u32 n = buffer_header(skb, f, d, off, len);

		r = tls_record_prefix(f->hdr[d & 1], n);
		if (r == TLS_YES) {
			f->cls = SSLWALL_CLASS_TLS;
			return JUDGE_DECIDED;
		}
		f->hdr_len[d & 1] = 0;	/* the next payload gets its own look */
		if (looks_like_text(skb, off, len))
			return JUDGE_VIOLATION;
		if (f->pending_bytes >= PENDING_MAX) {
			f->cls = SSLWALL_CLASS_TLS;
			return JUDGE_DECIDED;
		}
		return JUDGE_PENDING;
	}

	if (d == DIR_CLIENT) {
		if (f->flags & SSLWALL_FLOW_CLIENT_TLS)
			return JUDGE_PENDING;	/* rest of the ClientHello (or 0-RTT) before the server answers */
		if (f->stage != SSLWALL_STAGE_NEGOTIATE || f->hdr_len[0] > 0 ||
		    (bpf_skb_load_bytes(skb, off, &r, 1) == 0 && (r & 0xff) == TLS_CT_HANDSHAKE)) {
			r = judge_hello(skb, f, d, off, len);
			if (r == TLS_NO)
				return JUDGE_VIOLATION;
			if (r == TLS_YES)
				f->flags |= SSLWALL_FLOW_CLIENT_TLS;
			return JUDGE_PENDING;
		}
		if (!spend_budget(f, cfg, len))
			return JUDGE_VIOLATION;
		return judge_client_command(skb, f, off, len);
	}

	/* server -> client */
	if (f->stage == SSLWALL_STAGE_HELLO && !(f->flags & SSLWALL_FLOW_CLIENT_TLS))
		return JUDGE_VIOLATION;	/* a server speaking first on a TLS port: TLS servers never do */
	if (f->stage == SSLWALL_STAGE_UPGRADE && !(f->flags & SSLWALL_FLOW_UPGRADE_REPLIED) && f->hdr_len[1] == 0 &&
	    !(bpf_skb_load_bytes(skb, off, &r, 1) == 0 && (r & 0xff) == TLS_CT_HANDSHAKE)) {
		/* The answer to STARTTLS / SSLRequest / CONNECT ("220", "S", "HTTP/1.1 200"),
		 * which may come after a client that did not wait for it sent its hello. */
		f->flags |= SSLWALL_FLOW_UPGRADE_REPLIED;
		return spend_budget(f, cfg, len) ? JUDGE_PENDING : JUDGE_VIOLATION;
	}
	if (f->flags & SSLWALL_FLOW_CLIENT_TLS) {
		r = judge_hello(skb, f, d, off, len);
		if (r == TLS_NO)
			return JUDGE_VIOLATION;
		if (r == TLS_NEED_MORE)
			return JUDGE_PENDING;
		f->flags |= SSLWALL_FLOW_SERVER_TLS;
		if (f->stage == SSLWALL_STAGE_UPGRADE)
			f->cls = f->proto == SSLWALL_PROTO_CONNECT ? SSLWALL_CLASS_CONNECT : SSLWALL_CLASS_STARTTLS;
		else
			f->cls = SSLWALL_CLASS_TLS;	/* TLS from the first byte, even on a STARTTLS port */
		return JUDGE_DECIDED;
	}
	/* Greeting or reply during the preamble. */
	if (!proto_server_first(f->proto) && !(f->flags & SSLWALL_FLOW_SEQ_CLIENT))
		return JUDGE_VIOLATION;
	return spend_budget(f, cfg, len) ? JUDGE_PENDING : JUDGE_VIOLATION;
}

/* Not inlined: as a function taking the event struct it also anchors that
 * struct in the object's BTF, where tools/gen-shared-types.mjs reads it. */
static __noinline void event_fill(struct sslwall_event *e, const struct sslwall_pkt *p, const struct sslwall_flow *f)
{
	const struct sslwall_owner *owner;

	e->ts_ns = bpf_ktime_get_ns();
	e->type = SSLWALL_EVENT_VIOLATION;
	e->family = p->key.family;
	e->cls = f->cls;
	e->verdict = f->verdict;
	e->proto = f->proto;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	if (f->client_is_lo) {
		__builtin_memcpy(e->saddr, p->key.addr_lo, 16);
		__builtin_memcpy(e->daddr, p->key.addr_hi, 16);
		e->sport = p->key.port_lo;
		e->dport = p->key.port_hi;
	} else {
		__builtin_memcpy(e->saddr, p->key.addr_hi, 16);
		__builtin_memcpy(e->daddr, p->key.addr_lo, 16);
		e->sport = p->key.port_hi;
		e->dport = p->key.port_lo;
	}
	owner = bpf_map_lookup_elem(&sslwall_owners, &p->key);
	if (owner) {
		e->pid = owner->pid;
		__builtin_memcpy(e->comm, owner->comm, sizeof(e->comm));
	} else {
		e->pid = 0;
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
}

static __always_inline void report_violation(const struct sslwall_pkt *p, const struct sslwall_flow *f, int egress)
{
	struct sslwall_event *e = bpf_ringbuf_reserve(&sslwall_events, sizeof(*e), 0);

	if (!e) {
		sslwall_count(SSLWALL_CNT_EVENTS_LOST);
		return;
	}
	event_fill(e, p, f);
	e->egress = egress;
	bpf_ringbuf_submit(e, 0);
}

/* Which endpoint is the server of a flow we did not see open: the one whose
 * port has a role, else a well-known port, else the lower port. */
static __always_inline int guess_client_is_lo(const struct sslwall_flow_key *k, __u32 gen)
{
	__u32 lo_idx = gen << 16 | k->port_lo, hi_idx = gen << 16 | k->port_hi;
	__u8 *lo_role = bpf_map_lookup_elem(&sslwall_port_roles, &lo_idx);
	__u8 *hi_role = bpf_map_lookup_elem(&sslwall_port_roles, &hi_idx);

	if (lo_role && hi_role && (*lo_role != 0) != (*hi_role != 0))
		return *hi_role != 0;
	return k->port_hi <= k->port_lo;
}

static __noinline struct sslwall_flow *open_flow(struct __sk_buff *skb, const struct sslwall_pkt *p,
						 const struct sslwall_config *cfg, __u32 gen, int egress)
{
	int syn = (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	int synack = (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
	struct sslwall_flow f = {};
	struct sslwall_flow *stored;
	__u16 server_port;
	__u32 idx;
	__u8 *role, remote_is_lo;

	if (!syn && !synack && p->payload_len == 0)
		return NULL;	/* an ACK or FIN of a flow we never saw: nothing to judge yet */

	if (syn)
		f.client_is_lo = p->sender_is_lo;
	else if (synack)
		f.client_is_lo = !p->sender_is_lo;
	else
		f.client_is_lo = guess_client_is_lo(&p->key, gen);
	server_port = f.client_is_lo ? p->key.port_hi : p->key.port_lo;
	remote_is_lo = egress ? !p->sender_is_lo : p->sender_is_lo;

	idx = gen << 16 | server_port;
	role = bpf_map_lookup_elem(&sslwall_port_roles, &idx);
	f.first_seen_ns = bpf_ktime_get_ns();
	f.proto = role ? (*role & SSLWALL_ROLE_PROTO_MASK) : 0;
	if (syn || synack) {
		f.flags = SSLWALL_FLOW_SYN_SEEN;
		f.stage = f.proto ? SSLWALL_STAGE_NEGOTIATE : SSLWALL_STAGE_HELLO;
	} else {
		f.stage = SSLWALL_STAGE_MIDSTREAM;
	}

	if ((role && (*role & SSLWALL_ROLE_BYPASS)) ||
	    in_bypass_cidr(gen, p->key.family, remote_is_lo ? p->key.addr_lo : p->key.addr_hi) ||
	    (egress && in_bypass_cgroup(skb, cfg))) {
		f.cls = SSLWALL_CLASS_BYPASS;
		sslwall_count_class(SSLWALL_CLASS_BYPASS, SSLWALL_VERDICT_ALLOWED);
	}

	/* A SYN leaving this host is sent by connect() (or sendto with MSG_FASTOPEN)
	 * in the caller's context, after the source port is chosen: the current task
	 * owns the flow. (The state tracepoint fires before the port is assigned.)
	 * Failure policy: a full owner map evicts the oldest owner; its violations
	 * are then reported without pid/comm. */
	if (egress && syn) {
		struct sslwall_owner owner = { .pid = bpf_get_current_pid_tgid() >> 32 };

		bpf_get_current_comm(owner.comm, sizeof(owner.comm));
		bpf_map_update_elem(&sslwall_owners, &p->key, &owner, BPF_ANY);
	}

	/* A SYN always starts a new flow (the 4-tuple may be reused after a close we
	 * missed); otherwise NOEXIST: another CPU may have inserted it meanwhile. */
	if (bpf_map_update_elem(&sslwall_flows, &p->key, &f, syn ? BPF_ANY : BPF_NOEXIST) == 0)
		sslwall_count(SSLWALL_CNT_FLOWS_CREATED);
	stored = bpf_map_lookup_elem(&sslwall_flows, &p->key);
	if (!stored)
		sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
	return stored;
}

static __noinline int classify_slow(struct __sk_buff *skb, struct sslwall_pkt *p, struct sslwall_flow *f, int egress)
{
	struct sslwall_config *cfg;
	__u32 zero = 0, *genp, gen, d, seq, len;
	int j;

	genp = bpf_map_lookup_elem(&sslwall_active_gen, &zero);
	if (!genp) {
		sslwall_count(SSLWALL_CNT_NO_CONFIG);
		return VERDICT_PASS;
	}
	gen = *genp & 1;
	cfg = bpf_map_lookup_elem(&sslwall_config, &gen);
	if (!cfg || cfg->mode == SSLWALL_MODE_OFF)
		return VERDICT_PASS;

	if (!f || ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN && p->sender_is_lo == f->client_is_lo)) {
		f = open_flow(skb, p, cfg, gen, egress);
		if (!f || f->cls != SSLWALL_CLASS_PENDING)
			return VERDICT_PASS;
	} else if (egress && in_bypass_cgroup(skb, cfg)) {
		/* A bypassed server: its SYN came in before any socket was known; its SYN-ACK names the listener's cgroup. */
		f->cls = SSLWALL_CLASS_BYPASS;
		sslwall_count_class(SSLWALL_CLASS_BYPASS, SSLWALL_VERDICT_ALLOWED);
		return VERDICT_PASS;
	}

	len = p->payload_len;
	if (len == 0)
		return VERDICT_PASS;
	d = (p->sender_is_lo == f->client_is_lo) ? DIR_CLIENT : DIR_SERVER;
	/* Data in a SYN (TCP Fast Open) starts one past the SYN's sequence number. */
	seq = p->seq + ((p->tcp_flags & TCP_FLAG_SYN) ? 1 : 0);
	if (p->tcp_flags & TCP_FLAG_SYN)
		f->flags |= SSLWALL_FLOW_FASTOPEN;

	/* A retransmission carries bytes already judged: let it through as before. */
	if ((f->flags & (d == DIR_CLIENT ? SSLWALL_FLOW_SEQ_CLIENT : SSLWALL_FLOW_SEQ_SERVER)) &&
	    (__s32)(seq + len - f->seq_next[d & 1]) <= 0)
		return VERDICT_PASS;

	__u32 pending = f->pending_bytes + len;
	f->pending_bytes = pending > 0xffff ? 0xffff : pending;
	if (pending > PENDING_MAX && f->stage != SSLWALL_STAGE_MIDSTREAM)
		j = JUDGE_VIOLATION;	/* undecided for too long: no TLS answer ever came */
	else
		j = judge_payload(skb, f, cfg, p, d);

	if (j == JUDGE_VIOLATION) {
		f->cls = SSLWALL_CLASS_PLAINTEXT;
		f->verdict = verdict_for(cfg);
		sslwall_count_class(f->cls, f->verdict);
		report_violation(p, f, egress);
		if (f->verdict == SSLWALL_VERDICT_BLOCKED) {
			sslwall_count(SSLWALL_CNT_PKT_DROPPED);
			return VERDICT_DROP;
		}
		return VERDICT_PASS;
	}
	f->seq_next[d & 1] = seq + len;
	f->flags |= d == DIR_CLIENT ? SSLWALL_FLOW_SEQ_CLIENT : SSLWALL_FLOW_SEQ_SERVER;
	if (j == JUDGE_DECIDED)
		sslwall_count_class(f->cls, SSLWALL_VERDICT_ALLOWED);
	return VERDICT_PASS;
}

static __always_inline int classify(struct __sk_buff *skb, int egress)
{
	struct sslwall_pkt p = {};
	struct sslwall_flow *f;
	int r = parse_packet(skb, &p);

	if (r != PARSE_OK) {
		if (r == PARSE_TRUNCATED)
			sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		else if (r == PARSE_FRAGMENT)
			sslwall_count(SSLWALL_CNT_FRAGMENTS);
		return VERDICT_PASS;
	}

	/* Fast path: a decided flow costs this one lookup. A blocked flow's RST
	 * still passes so the peer fails fast instead of retransmitting. A SYN from
	 * the flow's client opens a new flow on the same 4-tuple (the close of the
	 * old one was missed): it takes the slow path. A SYN from the server side
	 * cannot start a connection on this tuple and is judged by the old flow. */
	f = bpf_map_lookup_elem(&sslwall_flows, &p.key);
	if (f && f->cls != SSLWALL_CLASS_PENDING &&
	    ((p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN || p.sender_is_lo != f->client_is_lo)) {
		if (f->verdict != SSLWALL_VERDICT_BLOCKED || (p.tcp_flags & TCP_FLAG_RST))
			return VERDICT_PASS;
		sslwall_count(SSLWALL_CNT_PKT_DROPPED);
		return VERDICT_DROP;
	}
	return classify_slow(skb, &p, f, egress);
}

SEC("tc")
int sslwall_classify_egress(struct __sk_buff *skb)
{
	return classify(skb, 1);
}

SEC("tc")
int sslwall_classify_ingress(struct __sk_buff *skb)
{
	return classify(skb, 0);
}

/* The baseline for benchmarks: same attach point, no work. */
SEC("tc")
int sslwall_empty(struct __sk_buff *skb)
{
	return VERDICT_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
