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
#define TLS_MAX_PLAIN_RECORD 16384	/* RFC 8446 5.1: a plaintext record (a hello's) never exceeds 2^14 */
#define TLS_HELLO_HDR_LEN 11		/* record header (5) + handshake header (4) + legacy_version (2) */
#define TLS_RECORD_HDR_LEN 5
/* Smallest hello bodies: version, random, session id length, one suite (ClientHello: suites
 * length, one compression method and its length), compression (ServerHello). */
#define TLS_CLIENT_HELLO_MIN 41
#define TLS_SERVER_HELLO_MIN 38

static __always_inline __u32 tls_record_len(const __u8 *b)
{
	return ((__u32)b[3] << 8) | b[4];
}

/*
 * First record of a fresh direction: a handshake record (version 3.x: SSL 3.0 to TLS 1.3 all
 * put 3 in the major byte) of at most 2^14 bytes, whose first message is hs_type, with a
 * 24-bit length that fits the record (the hello is never spread over records: every client we
 * know writes it in one) and is no shorter than the smallest such hello, and a legacy_version
 * of 3.0 to 3.3. A fake 6-byte header followed by plaintext fails here, or is held to the
 * length it declared (judge.h).
 */
static __always_inline int tls_hello_prefix(const __u8 *b, __u32 n, __u8 hs_type)
{
	__u32 min = hs_type == TLS_HS_CLIENT_HELLO ? TLS_CLIENT_HELLO_MIN : TLS_SERVER_HELLO_MIN;

	if (n >= 1 && b[0] != TLS_CT_HANDSHAKE)
		return TLS_NO;
	if (n >= 2 && b[1] != 3)
		return TLS_NO;
	if (n >= 3 && b[2] > 4)
		return TLS_NO;
	if (n >= 5) {
		__u32 len = tls_record_len(b);

		if (len < 4 + min || len > TLS_MAX_PLAIN_RECORD)
			return TLS_NO;
	}
	if (n >= 6 && b[5] != hs_type)
		return TLS_NO;
	if (n >= 9) {
		__u32 hs_len = ((__u32)b[6] << 16) | ((__u32)b[7] << 8) | b[8];

		if (hs_len < min || hs_len + 4 > tls_record_len(b))
			return TLS_NO;
	}
	if (n >= 10 && b[9] != 3)
		return TLS_NO;
	if (n >= TLS_HELLO_HDR_LEN)
		return b[10] <= 3 ? TLS_YES : TLS_NO;
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
		__u32 len = tls_record_len(b);

		return len > 0 && len <= TLS_MAX_RECORD ? TLS_YES : TLS_NO;
	}
	return TLS_NEED_MORE;
}

#endif /* SSLWALL_TLS_H */
