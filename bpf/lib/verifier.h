/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Shapes the verifier needs to see, each named and each with the rejection it avoids.
 * Rejections were reproduced on kernel 6.18 with Debian's clang 14 by undoing the
 * workaround and loading the object; where undoing it still loaded, the comment says so. */
#ifndef SSLWALL_VERIFIER_H
#define SSLWALL_VERIFIER_H

/*
 * Size argument of bpf_skb_load_bytes into a buffer of max bytes: len clamped to max,
 * 0 meaning "read nothing" (callers test it before the call).
 *
 * In 64 bits on purpose, and so must be the caller's len: with __u32, clang tests the
 * bounds on a zero-extended copy (r1 <<= 32; r1 >>= 32) and passes the original register,
 * which the verifier does not know to be bounded. Rejected as
 *   "R4 invalid zero-sized read: u64=[0,5]"                              (buffer_header)
 *   "R4 unbounded memory access, use 'var &= const' or 'if (var < const)'" (looks_like_text)
 * An empty asm barrier between the two tests, tried before, does not help: with __u32 the
 * second rejection stays.
 */
static __always_inline __u64 sslwall_load_len(__u64 len, __u64 max)
{
	return len > max ? max : len;
}

/*
 * skb->data and skb->data_end, read here once and passed down as pointers. Reading them
 * in the parse helpers lets clang fold the ctx offset into a modified pointer, which the
 * verifier refuses: "dereference of modified ctx ptr R3 off=76 disallowed".
 */
static __always_inline void sslwall_skb_bounds(struct __sk_buff *skb, void **data, void **data_end)
{
	*data = (void *)(long)skb->data;
	*data_end = (void *)(long)skb->data_end;
}

/*
 * Index of a direction (0 client, 1 server) into the flow's two-slot arrays. d is 0 or 1
 * by construction; the mask proves it. Undoing it loads on 6.18 (the verifier tracks the
 * range of d through the call); kept for the older verifiers the agent supports (6.6 up),
 * where an index the verifier cannot bound is "invalid access to map value". Not checked
 * there: no such kernel here.
 */
static __always_inline __u32 sslwall_dir_idx(__u32 d)
{
	return d & 1;
}

/*
 * Index into the 1 KiB scan buffer (a per-CPU map value): masked so every access is
 * provably inside it. Undoing it loads on 6.18, whose verifier carries the loop bounds;
 * kept for the same older verifiers, which reject an index they cannot bound as
 * "R1 unbounded memory access" (not checked there).
 */
#define SCAN_MAX 1024	/* power of two; also the largest preamble payload accepted */
static __always_inline __u32 sslwall_scan_idx(__u32 i)
{
	return i & (SCAN_MAX - 1);
}

/* Index into a flow's 16-byte hdr[] buffer (rewrites_header: an offset from a sequence number
 * difference), masked like sslwall_scan_idx for the same older verifiers. Written with the mask;
 * not tried without it. */
static __always_inline __u32 sslwall_hdr_idx(__u32 i)
{
	return i & 15;
}

#endif /* SSLWALL_VERIFIER_H */
