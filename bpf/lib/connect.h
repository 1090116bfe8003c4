/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* HTTP CONNECT on a proxy port: the request (alone in its segment, headers
 * included) is the upgrade; a plain proxied request (GET http://...) is not
 * allowed, since its content travels in clear. */
#ifndef SSLWALL_CONNECT_H
#define SSLWALL_CONNECT_H

#include "text.h"
#include "starttls.h"

static __noinline int connect_command(const __u8 *b, __u32 n)
{
	/* "CONNECT " is upper case by RFC 9110 (methods are case-sensitive). */
	if (n < 8 || b[0] != 'C' || b[1] != 'O' || b[2] != 'N' || b[3] != 'N' || b[4] != 'E' || b[5] != 'C' ||
	    b[6] != 'T' || b[7] != ' ')
		return CMD_FORBIDDEN;
	return text_header_block(b, n) ? CMD_UPGRADE : CMD_FORBIDDEN;
}

#endif /* SSLWALL_CONNECT_H */
