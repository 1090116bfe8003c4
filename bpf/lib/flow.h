/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Building the direction-independent flow key. The tc classifier (from packet
 * headers), the lifecycle tracepoint and the destroy iterator (from sockets)
 * must produce byte-identical keys, so all three use these helpers. */
#ifndef SSLWALL_FLOW_H
#define SSLWALL_FLOW_H

#include "shared.h"

#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
#endif

/* Endpoints sort by address bytes, then port: any total order works as long
 * as every producer of keys uses this one. Returns 1 when a sorts lower. */
static __always_inline int sslwall_key_v4(struct sslwall_flow_key *key, __be32 a, __u16 pa, __be32 b, __u16 pb)
{
	__u32 ha = bpf_ntohl(a), hb = bpf_ntohl(b);
	int a_lo = ha < hb || (ha == hb && pa < pb);

	key->family = SSLWALL_FAMILY_IPV4;
	if (a_lo) {
		__builtin_memcpy(key->addr_lo, &a, 4);
		__builtin_memcpy(key->addr_hi, &b, 4);
		key->port_lo = pa;
		key->port_hi = pb;
	} else {
		__builtin_memcpy(key->addr_lo, &b, 4);
		__builtin_memcpy(key->addr_hi, &a, 4);
		key->port_lo = pb;
		key->port_hi = pa;
	}
	return a_lo;
}

static __always_inline int sslwall_key_v6(struct sslwall_flow_key *key, const __u8 *a, __u16 pa, const __u8 *b, __u16 pb)
{
	__u64 a0, a1, b0, b1;
	int a_lo;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	a0 = bpf_be64_to_cpu(a0);
	a1 = bpf_be64_to_cpu(a1);
	b0 = bpf_be64_to_cpu(b0);
	b1 = bpf_be64_to_cpu(b1);
	a_lo = a0 < b0 || (a0 == b0 && (a1 < b1 || (a1 == b1 && pa < pb)));

	key->family = SSLWALL_FAMILY_IPV6;
	if (a_lo) {
		__builtin_memcpy(key->addr_lo, a, 16);
		__builtin_memcpy(key->addr_hi, b, 16);
		key->port_lo = pa;
		key->port_hi = pb;
	} else {
		__builtin_memcpy(key->addr_lo, b, 16);
		__builtin_memcpy(key->addr_hi, a, 16);
		key->port_lo = pb;
		key->port_hi = pa;
	}
	return a_lo;
}

/* A socket's key: local and remote endpoints from sock_common, with the local
 * port given by the caller (see the callers for which field holds it). IPv4-mapped
 * IPv6 sockets send IPv4 packets, so they key as IPv4 like tc sees them. */
static __always_inline int sslwall_key_from_sock(struct sslwall_flow_key *key, const struct sock_common *skc, __u16 lport)
{
	__u16 family = BPF_CORE_READ(skc, skc_family);
	__u16 rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));

	if (family == AF_INET) {
		return sslwall_key_v4(key, BPF_CORE_READ(skc, skc_rcv_saddr), lport,
				      BPF_CORE_READ(skc, skc_daddr), rport);
	}
	if (family == AF_INET6) {
		struct in6_addr l = BPF_CORE_READ(skc, skc_v6_rcv_saddr);
		struct in6_addr r = BPF_CORE_READ(skc, skc_v6_daddr);

		if (r.in6_u.u6_addr32[0] == 0 && r.in6_u.u6_addr32[1] == 0 &&
		    r.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
			return sslwall_key_v4(key, l.in6_u.u6_addr32[3], lport, r.in6_u.u6_addr32[3], rport);
		return sslwall_key_v6(key, l.in6_u.u6_addr8, lport, r.in6_u.u6_addr8, rport);
	}
	return -1;
}

#endif /* SSLWALL_FLOW_H */
