/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Scanning a plaintext preamble copied into a scratch buffer of SCAN_MAX bytes.
 * Every index goes through sslwall_scan_idx (lib/verifier.h). */
#ifndef SSLWALL_TEXT_H
#define SSLWALL_TEXT_H

#include "verifier.h"

/* Case-insensitive literal at pos, followed by space or end of line. Only
 * letters, digits and spaces may appear in w (| 0x20 folds case of letters). */
static __always_inline int text_word_at(const __u8 *buf, __u32 n, __u32 pos, const char *w, __u32 wlen)
{
	__u32 i;

#pragma unroll
	for (i = 0; i < wlen; i++) {
		if (pos + i >= n)
			return 0;
		if ((buf[sslwall_scan_idx(pos + i)] | 0x20) != (w[i] | 0x20))
			return 0;
	}
	if (pos + wlen >= n)
		return 0;
	__u8 c = buf[sslwall_scan_idx(pos + wlen)];
	return c == ' ' || c == '\r' || c == '\n';
}

#define WORD_AT(buf, n, pos, lit) text_word_at(buf, n, pos, lit, sizeof(lit) - 1)

/* The payload is exactly one line: its only '\n' is its last byte. Stops a
 * permitted command from smuggling a second, forbidden one in the same segment. */
static __noinline int text_single_line(const __u8 *buf, __u32 n)
{
	__u32 i;

	if (n == 0 || n > SCAN_MAX)
		return 0;
	for (i = 0; i < SCAN_MAX; i++) {
		if (i + 1 >= n)
			break;
		if (buf[sslwall_scan_idx(i)] == '\n')
			return 0;
	}
	return buf[sslwall_scan_idx(n - 1)] == '\n';
}

/* An HTTP header block whose first blank line ends the payload: nothing may
 * ride after the CONNECT request in the same segment. */
static __noinline int text_header_block(const __u8 *buf, __u32 n)
{
	__u32 i, window = 0;

	if (n < 4 || n > SCAN_MAX)
		return 0;
	for (i = 0; i < SCAN_MAX; i++) {
		if (i >= n)
			break;
		window = (window << 8) | buf[sslwall_scan_idx(i)];
		if (window == 0x0d0a0d0a)
			return i + 1 == n;
	}
	return 0;
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
