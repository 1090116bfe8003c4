/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* TLS record header recognition on the first bytes of a direction. The bytes
 * may arrive split over several segments: each check works on however many
 * bytes are known and answers yes, no, or "need more". A byte that already
 * rules TLS out answers no at once, so plaintext trickled one byte a segment
 * is caught on its first byte. */
#ifndef SSLWALL_TLS_H
#define SSLWALL_TLS_H

#define TLS_NEED_MORE (-1)
#define TLS_NO 0
#define TLS_YES 1

#define TLS_CT_CHANGE_CIPHER_SPEC 20
#define TLS_CT_APPLICATION_DATA 23
#define TLS_CT_HANDSHAKE 22
#define TLS_HS_CLIENT_HELLO 1
#define TLS_HS_SERVER_HELLO 2
#define TLS_MAX_RECORD (16384 + 2048)	/* RFC 8446 5.2: ciphertext may exceed 2^14 by 256; 5.2 of 5246 by 2048 */
#define TLS_HELLO_HDR_LEN 6		/* record header (5) + handshake type (1) */
#define TLS_RECORD_HDR_LEN 5

/* First record of a fresh direction: a handshake record, version 3.x
 * (SSL 3.0 to TLS 1.3 all put 3 in the major byte), carrying hs_type. */
static __always_inline int tls_hello_prefix(const __u8 *b, __u32 n, __u8 hs_type)
{
	if (n >= 1 && b[0] != TLS_CT_HANDSHAKE)
		return TLS_NO;
	if (n >= 2 && b[1] != 3)
		return TLS_NO;
	if (n >= 3 && b[2] > 4)
		return TLS_NO;
	if (n >= 5) {
		__u32 len = ((__u32)b[3] << 8) | b[4];

		if (len < 4 || len > TLS_MAX_RECORD)
			return TLS_NO;
	}
	if (n >= TLS_HELLO_HDR_LEN)
		return b[5] == hs_type ? TLS_YES : TLS_NO;
	return TLS_NEED_MORE;
}

/* A flow already running when we started: any record type counts. */
static __always_inline int tls_record_prefix(const __u8 *b, __u32 n)
{
	if (n >= 1 && (b[0] < TLS_CT_CHANGE_CIPHER_SPEC || b[0] > TLS_CT_APPLICATION_DATA))
		return TLS_NO;
	if (n >= 2 && b[1] != 3)
		return TLS_NO;
	if (n >= 3 && b[2] > 4)
		return TLS_NO;
	if (n >= TLS_RECORD_HDR_LEN) {
		__u32 len = ((__u32)b[3] << 8) | b[4];

		return len > 0 && len <= TLS_MAX_RECORD ? TLS_YES : TLS_NO;
	}
	return TLS_NEED_MORE;
}

#endif /* SSLWALL_TLS_H */
