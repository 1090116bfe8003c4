/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The judgement of an undecided flow: fed one payload at a time, it answers pending,
 * decided (an allowed class was set) or violation. The rules are docs/dataplane.md's.
 *
 * Failure policy: a payload the judge cannot read (the segment is shorter than its
 * headers claim, or the scratch buffer is missing) is not judged: it passes, the flow
 * stays as it was, and it is counted in SSLWALL_CNT_PKT_TRUNCATED. Only bytes seen to
 * break a rule make a violation; the size limits (a preamble segment over SCAN_MAX bytes,
 * PENDING_MAX undecided bytes, the negotiation budget) are rules, not blind spots.
 */
#ifndef SSLWALL_JUDGE_H
#define SSLWALL_JUDGE_H

#include "shared.h"
#include "maps.h"
#include "verifier.h"
#include "tls.h"
#include "starttls.h"
#include "connect.h"
#include "parse.h"

#define DIR_CLIENT 0	/* payload travelling client -> server */
#define DIR_SERVER 1
#define PENDING_MAX 60000	/* bytes an undecided flow may carry (a preamble, then the hellos) */
#define PAYLOAD_OFF_MAX (PARSE_PULL_LEN + 60)	/* where parse_tcp may put a payload: TCP headers are <= 60 bytes */

/* scratch: key = 0, value = a copy of the preamble segment being scanned (1 KiB does not
 * fit the 512-byte BPF stack). Written and read only by judge_client_command, within one
 * packet. Per-CPU array of one slot: tc programs do not nest on a CPU, and an array slot
 * always exists. Private to each loaded classifier: never pinned or shared. */
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
	JUDGE_UNREAD = 3,	/* the payload could not be read: passed unjudged (fail open, counted) */
};

static __always_inline __u8 verdict_for(const struct sslwall_config *cfg)
{
	return cfg->mode == SSLWALL_MODE_ACTIVE ? SSLWALL_VERDICT_BLOCKED : SSLWALL_VERDICT_REPORTED;
}

/* The first buffered byte of a direction's header: the sequence number its hello starts at. */
static __always_inline void note_header_start(struct sslwall_flow *f, __u32 d, const struct sslwall_pkt *p)
{
	f->hdr_seq[sslwall_dir_idx(d)] = p->seq;
	if (d == DIR_CLIENT)
		f->flags |= SSLWALL_FLOW_HELLO_SEQ;
}

/* Append up to TLS_HELLO_HDR_LEN leading bytes of this direction to the flow,
 * so a record header split across segments is judged whole. Returns how many
 * bytes are buffered; on a read failure, those buffered before (counted). */
static __always_inline __u32 buffer_header(struct __sk_buff *skb, struct sslwall_flow *f, __u32 d,
					   const struct sslwall_pkt *p)
{
	__u8 tmp[TLS_HELLO_HDR_LEN] = {};
	__u64 have = f->hdr_len[sslwall_dir_idx(d)], want, i;

	if (have >= TLS_HELLO_HDR_LEN)
		return TLS_HELLO_HDR_LEN;
	want = sslwall_load_len(p->payload_len, TLS_HELLO_HDR_LEN - have);
	if (want == 0)
		return have;
	/* The common case, a whole header in one segment's linear area (a local stack's hello
	 * always is): copied straight from the packet. bpf_skb_load_bytes and the byte-wise merge
	 * below were a third of a cold ClientHello's cost (docs/bench.md, tc_first_packet_ns). */
	if (have == 0 && want == TLS_HELLO_HDR_LEN) {
		void *data, *data_end;
		__u64 off = p->payload_off;

		sslwall_skb_bounds(skb, &data, &data_end);
		/* The bound is for the verifier (a payload_off read back from the stack is unbounded):
		 * without it "invalid access to packet, off=10 size=1 ... R1 offset is outside of the
		 * packet". */
		if (off <= PAYLOAD_OFF_MAX && data + off + TLS_HELLO_HDR_LEN <= data_end) {
			__u8 *src = data + off, *dst = f->hdr[sslwall_dir_idx(d)];

			/* Word loads, not __builtin_memcpy: clang copies a pointer of unknown alignment
			 * byte by byte, 22 instructions for 11 bytes. The verifier accepts unaligned
			 * packet loads where the CPU does them (x86-64, arm64: the agent's targets). */
			*(__u32 *)dst = *(__u32 *)src;
			*(__u32 *)(dst + 4) = *(__u32 *)(src + 4);
			*(__u16 *)(dst + 8) = *(__u16 *)(src + 8);
			dst[10] = src[10];
			note_header_start(f, d, p);
			f->hdr_len[sslwall_dir_idx(d)] = TLS_HELLO_HDR_LEN;
			return TLS_HELLO_HDR_LEN;
		}
	}
	if (bpf_skb_load_bytes(skb, p->payload_off, tmp, want) < 0) {
		sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		return have;
	}
	if (have == 0)
		note_header_start(f, d, p);
	/* have + want <= TLS_HELLO_HDR_LEN (want was clamped to it): the mask only shows the verifier
	 * the index stays inside hdr[]. Stopping at want, rather than testing every byte against
	 * both bounds, gives the verifier one exit per byte instead of paths it must walk on. A
	 * loop, not unrolled (clang cannot unroll one with a break): the verifier bounds it. */
	for (i = 0; i < TLS_HELLO_HDR_LEN; i++) {
		if (i >= want)
			break;
		f->hdr[sslwall_dir_idx(d)][sslwall_hdr_idx(have + i)] = tmp[i];
	}
	f->hdr_len[sslwall_dir_idx(d)] = have + want;
	return have + want;
}

static __always_inline int judge_hello(struct __sk_buff *skb, struct sslwall_flow *f, __u32 d,
				       const struct sslwall_pkt *p)
{
	__u8 hs_type = d == DIR_CLIENT ? TLS_HS_CLIENT_HELLO : TLS_HS_SERVER_HELLO;
	__u32 n = buffer_header(skb, f, d, p);

	/* The whole header known, the common case: a copy of the checks with n constant, which
	 * drop their length tests (a shorter path for a cold hello, docs/bench.md). */
	if (n == TLS_HELLO_HDR_LEN)
		return tls_hello_prefix(f->hdr[sslwall_dir_idx(d)], TLS_HELLO_HDR_LEN, hs_type);
	return tls_hello_prefix(f->hdr[sslwall_dir_idx(d)], n, hs_type);
}

/*
 * Before the server answers with TLS, the client may send its hello record and nothing more:
 * the length that record declared once its header is known, else the most a hello record may
 * be (from the next byte expected). A client that does not wait (TLS 1.3 0-RTT data, or
 * plaintext behind a fake hello header) breaks the rule. end: sequence number past the
 * segment's last byte.
 */
static __always_inline int client_over_limit(const struct sslwall_flow *f, __u32 end)
{
	__u32 limit;

	if (f->flags & SSLWALL_FLOW_SERVER_TLS)
		return 0;
	if (f->flags & SSLWALL_FLOW_CLIENT_TLS) {
		/* A pending entry carried over from an older build knows no hello position: the
		 * pending limit alone holds it, as it did there. */
		if (!(f->flags & SSLWALL_FLOW_HELLO_SEQ))
			return 0;
		limit = f->hdr_seq[0] + TLS_RECORD_HDR_LEN + tls_record_len(f->hdr[0]);
	} else
		limit = f->seq_next[0] + TLS_RECORD_HDR_LEN + TLS_MAX_PLAIN_RECORD;
	return (__s32)(end - limit) > 0;
}

/*
 * Does a segment that covers bytes already judged carry other bytes there than the hello
 * header we judged? TCP retransmits the same bytes; a different copy means the one we judged
 * was one the receiver discarded (a bad checksum, out of its window), sent to make us judge
 * bytes the receiver never gets. Unreadable bytes are not a rewrite (fail open, counted).
 */
static __noinline int rewrites_header(struct __sk_buff *skb, struct sslwall_flow *f, const struct sslwall_pkt *p,
				      __u32 d)
{
	__u32 di = sslwall_dir_idx(d), n = f->hdr_len[di], skip, from, i;
	__u8 tmp[TLS_HELLO_HDR_LEN] = {};
	__s32 rel = p->seq - f->hdr_seq[di];	/* segment start, relative to the header's */
	__u64 cnt;

	if (n == 0 || n > TLS_HELLO_HDR_LEN || rel >= (__s32)n || (__s64)rel + p->payload_len <= 0)
		return 0;
	skip = rel < 0 ? -rel : 0;
	from = rel < 0 ? 0 : rel;
	cnt = n - from;
	if (cnt > p->payload_len - skip)
		cnt = p->payload_len - skip;
	cnt = sslwall_load_len(cnt, TLS_HELLO_HDR_LEN);
	if (cnt == 0)
		return 0;
	if (bpf_skb_load_bytes(skb, p->payload_off + skip, tmp, cnt) < 0) {
		sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		return 0;
	}
#pragma unroll
	for (i = 0; i < TLS_HELLO_HDR_LEN; i++) {
		if (i < cnt && tmp[i] != f->hdr[di][sslwall_hdr_idx(from + i)])
			return 1;
	}
	return 0;
}

/* Spend plaintext preamble bytes; 0 once the budget is exceeded. */
static __always_inline int spend_budget(struct sslwall_flow *f, const struct sslwall_config *cfg, __u32 len)
{
	__u32 spent = f->plain_bytes + len;

	f->plain_bytes = spent > 0xffff ? 0xffff : spent;
	return spent <= cfg->negotiation_budget;
}

/* A client command of the preamble. Fails open where it cannot read the bytes (see the
 * header): it used to answer violation there, dropping in active mode a segment nobody
 * had looked at. A segment longer than SCAN_MAX is a violation: no allowed command is.
 *
 * A global function (not static): the verifier checks it once, on its own, where a static
 * one is checked again for every path that reaches its call, and the command parsers below it
 * were a third of the classifier's verification (docs/bench.md, hot_swap). In exchange it
 * sees f as memory that may be NULL (tested first) and returns a plain int. */
__noinline int judge_client_command(struct __sk_buff *skb, struct sslwall_flow *f, __u32 off, __u64 len)
{
	__u32 zero = 0;
	__u8 *buf;
	int cmd;

	if (!f)
		return JUDGE_UNREAD;
	if (len > SCAN_MAX)
		return JUDGE_VIOLATION;
	len = sslwall_load_len(len, SCAN_MAX);
	buf = bpf_map_lookup_elem(&sslwall_scratch, &zero);
	if (!buf || len == 0 || bpf_skb_load_bytes(skb, off, buf, len) < 0) {
		sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		return JUDGE_UNREAD;
	}
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
 * Unreadable bytes are not text (fail open, counted). */
#define TEXT_SAMPLE 32
/* Global, checked once by the verifier (see judge_client_command). */
__noinline int looks_like_text(struct __sk_buff *skb, __u32 off, __u64 len)
{
	__u8 buf[TEXT_SAMPLE] = {};
	__u32 i, bad = 0;

	len = sslwall_load_len(len, TEXT_SAMPLE);
	if (len == 0)
		return 0;
	if (bpf_skb_load_bytes(skb, off, buf, len) < 0) {
		sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		return 0;
	}
#pragma unroll
	for (i = 0; i < TEXT_SAMPLE; i++) {
		__u8 c = buf[i];

		if (i < len && !((c >= 0x20 && c < 0x7f) || c == '\r' || c == '\n' || c == '\t'))
			bad = 1;
	}
	return !bad;
}

/* First payload byte is a TLS handshake record's content type. An unreadable byte is not. */
static __always_inline int starts_handshake(struct __sk_buff *skb, __u32 off)
{
	__u8 b = 0;

	return bpf_skb_load_bytes(skb, off, &b, 1) == 0 && b == TLS_CT_HANDSHAKE;
}

/* The state machine of an undecided flow, fed one payload at a time. Inlined into its one
 * caller: a call of its own cost a cold ClientHello ~15 ns (docs/bench.md). */
static __always_inline int judge_payload(struct __sk_buff *skb, struct sslwall_flow *f, const struct sslwall_config *cfg,
				    const struct sslwall_pkt *p, __u32 d)
{
	__u32 off = p->payload_off, len = p->payload_len;
	int r;

	if (f->stage == SSLWALL_STAGE_MIDSTREAM) {
		/* We joined late: text says plaintext; a record header says TLS for that direction,
		 * and the flow is tls once both directions said so (one end alone cannot make it
		 * tls); anything else may be the middle of a TLS record, so wait for more (never
		 * block blindly). A flow that stays undecided past the pending budget is let be, as
		 * midstream_unknown: reported as what it is, never taken for tls. */
		__u32 n = buffer_header(skb, f, d, p);
		__u8 tls_flag = d == DIR_CLIENT ? SSLWALL_FLOW_CLIENT_TLS : SSLWALL_FLOW_SERVER_TLS;

		r = tls_record_prefix(f->hdr[sslwall_dir_idx(d)], n);
		f->hdr_len[sslwall_dir_idx(d)] = 0;	/* the next payload gets its own look */
		if (r == TLS_YES) {
			f->flags |= tls_flag;
			if ((f->flags & (SSLWALL_FLOW_CLIENT_TLS | SSLWALL_FLOW_SERVER_TLS)) ==
			    (SSLWALL_FLOW_CLIENT_TLS | SSLWALL_FLOW_SERVER_TLS)) {
				f->cls = SSLWALL_CLASS_TLS;
				return JUDGE_DECIDED;
			}
		} else if (looks_like_text(skb, off, len)) {
			return JUDGE_VIOLATION;
		}
		if (f->pending_bytes >= PENDING_MAX) {
			f->cls = SSLWALL_CLASS_MIDSTREAM_UNKNOWN;
			return JUDGE_DECIDED;
		}
		return JUDGE_PENDING;
	}

	if (d == DIR_CLIENT) {
		if (f->flags & SSLWALL_FLOW_CLIENT_TLS)	/* rest of the ClientHello, up to its declared length */
			return client_over_limit(f, p->seq + len) ? JUDGE_VIOLATION : JUDGE_PENDING;
		if (f->stage != SSLWALL_STAGE_NEGOTIATE || f->hdr_len[0] > 0 || starts_handshake(skb, off)) {
			r = judge_hello(skb, f, d, p);
			if (r == TLS_NO)
				return JUDGE_VIOLATION;
			if (r == TLS_YES) {
				f->flags |= SSLWALL_FLOW_CLIENT_TLS;
				if (client_over_limit(f, p->seq + len))
					return JUDGE_VIOLATION;
			}
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
	    !starts_handshake(skb, off)) {
		/* The answer to STARTTLS / SSLRequest / CONNECT ("220", "S", "HTTP/1.1 200"),
		 * which may come after a client that did not wait for it sent its hello. */
		f->flags |= SSLWALL_FLOW_UPGRADE_REPLIED;
		return spend_budget(f, cfg, len) ? JUDGE_PENDING : JUDGE_VIOLATION;
	}
	if (f->flags & SSLWALL_FLOW_CLIENT_TLS) {
		r = judge_hello(skb, f, d, p);
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
	/* Has the client spoken? Its payload either spent budget or started its hello buffer. */
	if (!proto_server_first(f->proto) && f->plain_bytes == 0 && f->hdr_len[0] == 0)
		return JUDGE_VIOLATION;
	return spend_budget(f, cfg, len) ? JUDGE_PENDING : JUDGE_VIOLATION;
}

#endif /* SSLWALL_JUDGE_H */
