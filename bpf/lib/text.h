/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Scanning a plaintext preamble copied into a scratch buffer of SCAN_MAX bytes.
 * Every index goes through sslwall_scan_idx (lib/verifier.h). */
#ifndef SSLWALL_TEXT_H
#define SSLWALL_TEXT_H

#include "verifier.h"

/* Case-insensitive literal at pos, followed by space or end of line. Only
 * letters, digits and spaces may appear in w (| 0x20 folds case of letters).
 * One length test for the whole word and the byte after it, not one per byte: the same answer,
 * and each test was a branch the verifier walked for all 18 words: one test took 10,625 of
 * the instructions it processes off each program (docs/bench.md, hot_swap). */
static __always_inline int text_word_at(const __u8 *buf, __u32 n, __u32 pos, const char *w, __u32 wlen)
{
	__u32 i;

	if (pos + wlen >= n)
		return 0;
#pragma unroll
	for (i = 0; i < wlen; i++) {
		if ((buf[sslwall_scan_idx(pos + i)] | 0x20) != (w[i] | 0x20))
			return 0;
	}
	__u8 c = buf[sslwall_scan_idx(pos + wlen)];
	return c == ' ' || c == '\r' || c == '\n';
}

#define WORD_AT(buf, n, pos, lit) text_word_at(buf, n, pos, lit, sizeof(lit) - 1)

/* The 1 KiB scans below run as bpf_loop() callbacks, not as for loops: the verifier walks a
 * bounded loop once per iteration, and these two were a third of the classifier's verification
 * (about 190,000 of 583,000 instructions processed per program, ~0.3 s of every load and so of
 * every agent restart; docs/bench.md, hot_swap). A callback is verified once, and the kernel
 * inlines bpf_loop with a constant callback into a plain loop that calls it. Only a preamble
 * segment (STARTTLS, CONNECT) is scanned, never a TLS packet. */
struct scan_state {
	const __u8 *buf;	/* the scratch buffer: a map value of SCAN_MAX bytes */
	__u32 n;		/* bytes in it */
	__u32 window;		/* text_header_block: the last four bytes seen */
	__u32 hit;		/* set by the step that stops the scan */
};

/* A '\n' before the last byte ends the scan with hit = 1. */
static long single_line_step(__u64 i, void *data)
{
	struct scan_state *s = data;

	if (i + 1 >= s->n)
		return 1;
	if (s->buf[sslwall_scan_idx(i)] == '\n') {
		s->hit = 1;
		return 1;
	}
	return 0;
}

/* The payload is exactly one line: its only '\n' is its last byte. Stops a
 * permitted command from smuggling a second, forbidden one in the same segment. */
static __noinline int text_single_line(const __u8 *buf, __u32 n)
{
	struct scan_state s = { .buf = buf, .n = n };

	if (n == 0 || n > SCAN_MAX)
		return 0;
	bpf_loop(SCAN_MAX, single_line_step, &s, 0);
	if (s.hit)
		return 0;
	return buf[sslwall_scan_idx(n - 1)] == '\n';
}

/* The first blank line ends the scan: hit = 1 when it ends the payload, 2 when bytes follow. */
static long header_block_step(__u64 i, void *data)
{
	struct scan_state *s = data;

	if (i >= s->n)
		return 1;
	s->window = (s->window << 8) | s->buf[sslwall_scan_idx(i)];
	if (s->window == 0x0d0a0d0a) {
		s->hit = i + 1 == s->n ? 1 : 2;
		return 1;
	}
	return 0;
}

/* An HTTP header block whose first blank line ends the payload: nothing may
 * ride after the CONNECT request in the same segment. */
static __noinline int text_header_block(const __u8 *buf, __u32 n)
{
	struct scan_state s = { .buf = buf, .n = n };

	if (n < 4 || n > SCAN_MAX)
		return 0;
	bpf_loop(SCAN_MAX, header_block_step, &s, 0);
	return s.hit == 1;
}

/* Offset just past an IMAP tag ("a001 "), or 0 when there is none. */
static __noinline __u32 text_skip_tag(const __u8 *buf, __u32 n)
{
	__u32 i;

	for (i = 1; i < 32; i++) {
		if (i >= n)
			return 0;
		if (buf[sslwall_scan_idx(i)] == ' ')
			return i + 1;
	}
	return 0;
}

#endif /* SSLWALL_TEXT_H */
