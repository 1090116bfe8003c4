/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* What a client may say in plaintext before TLS, per protocol. The rule is an
 * allow-list of commands, each alone in its segment; anything else from the
 * client is a violation. Server replies are not parsed: they are bounded by
 * the negotiation budget (the client's commands decide what the server may
 * reveal, and none of the allowed ones asks for data). */
#ifndef SSLWALL_STARTTLS_H
#define SSLWALL_STARTTLS_H

#include "text.h"

enum sslwall_command {
	CMD_FORBIDDEN = 0,
	CMD_ALLOWED = 1,
	CMD_UPGRADE = 2,	/* the protocol's "now switch to TLS" */
};

/* Server-first protocols greet before the client speaks; for the others a
 * server payload before any client payload is a violation. */
static __always_inline int proto_server_first(__u8 proto)
{
	return proto == SSLWALL_PROTO_SMTP || proto == SSLWALL_PROTO_IMAP || proto == SSLWALL_PROTO_POP3 ||
	       proto == SSLWALL_PROTO_FTP || proto == SSLWALL_PROTO_MYSQL;
}

/* Postgres SSLRequest: length 8, code 80877103 (0x04d2162f), RFC-less but fixed since 7.x.
 * GSSENCRequest (80877104) is allowed too: the server answers 'N' or starts GSS. */
static __always_inline int postgres_command(const __u8 *b, __u32 n)
{
	if (n != 8 || b[0] != 0 || b[1] != 0 || b[2] != 0 || b[3] != 8 || b[4] != 0x04 || b[5] != 0xd2 || b[6] != 0x16)
		return CMD_FORBIDDEN;
	if (b[7] == 0x2f)
		return CMD_UPGRADE;
	return b[7] == 0x30 ? CMD_ALLOWED : CMD_FORBIDDEN;
}

/* MySQL SSLRequest: a 32-byte packet (header: 3-byte length 32, sequence 1)
 * whose capability flags carry CLIENT_SSL (0x0800, second byte bit 3). The
 * full handshake response (with the user name) is longer, so it never matches. */
static __always_inline int mysql_command(const __u8 *b, __u32 n)
{
	if (n == 36 && b[0] == 32 && b[1] == 0 && b[2] == 0 && b[3] == 1 && (b[5] & 0x08))
		return CMD_UPGRADE;
	return CMD_FORBIDDEN;
}

static __noinline int starttls_command(const __u8 *b, __u32 n, __u8 proto)
{
	__u32 tag;

	if (proto == SSLWALL_PROTO_POSTGRES)
		return postgres_command(b, n);
	if (proto == SSLWALL_PROTO_MYSQL)
		return mysql_command(b, n);
	if (!text_single_line(b, n))
		return CMD_FORBIDDEN;

	switch (proto) {
	case SSLWALL_PROTO_SMTP:
		if (WORD_AT(b, n, 0, "STARTTLS"))
			return CMD_UPGRADE;
		if (WORD_AT(b, n, 0, "EHLO") || WORD_AT(b, n, 0, "HELO") || WORD_AT(b, n, 0, "NOOP") ||
		    WORD_AT(b, n, 0, "RSET") || WORD_AT(b, n, 0, "QUIT"))
			return CMD_ALLOWED;
		return CMD_FORBIDDEN;
	case SSLWALL_PROTO_IMAP:
		tag = text_skip_tag(b, n);
		if (!tag)
			return CMD_FORBIDDEN;
		if (WORD_AT(b, n, tag, "STARTTLS"))
			return CMD_UPGRADE;
		if (WORD_AT(b, n, tag, "CAPABILITY") || WORD_AT(b, n, tag, "NOOP") || WORD_AT(b, n, tag, "LOGOUT"))
			return CMD_ALLOWED;
		return CMD_FORBIDDEN;
	case SSLWALL_PROTO_POP3:
		if (WORD_AT(b, n, 0, "STLS"))
			return CMD_UPGRADE;
		if (WORD_AT(b, n, 0, "CAPA") || WORD_AT(b, n, 0, "QUIT"))
			return CMD_ALLOWED;
		return CMD_FORBIDDEN;
	case SSLWALL_PROTO_FTP:
		if (WORD_AT(b, n, 0, "AUTH TLS") || WORD_AT(b, n, 0, "AUTH SSL"))
			return CMD_UPGRADE;
		if (WORD_AT(b, n, 0, "FEAT") || WORD_AT(b, n, 0, "NOOP") || WORD_AT(b, n, 0, "QUIT"))
			return CMD_ALLOWED;
		return CMD_FORBIDDEN;
	}
	return CMD_FORBIDDEN;
}

#endif /* SSLWALL_STARTTLS_H */
