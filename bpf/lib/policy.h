/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* What the config in force says about a new flow: is it bypassed (port role, peer CIDR,
 * bypass cgroup), and which endpoint is the server of a flow seen midway. */
#ifndef SSLWALL_POLICY_H
#define SSLWALL_POLICY_H

#include "shared.h"
#include "maps.h"

static __always_inline int in_bypass_cgroup(struct __sk_buff *skb, const struct sslwall_config *cfg)
{
	return cfg->bypass_cgroup_id &&
	       bpf_skb_ancestor_cgroup_id(skb, cfg->bypass_cgroup_level) == cfg->bypass_cgroup_id;
}

/*
 * Is the peer's address (the key's hi endpoint when the local one is lo) in a bypass CIDR?
 * A global function, checked once by the verifier: inlined into open_flow, whose every path is
 * checked again, its key build was some 20,000 of the classifier's instructions verified
 * (docs/bench.md, hot_swap). Hence the whole key as argument (the verifier sizes a global
 * function's memory by the pointed type), which may be NULL.
 */
__noinline int peer_in_bypass_cidr(__u32 gen, const struct sslwall_flow_key *key, int local_lo)
{
	struct sslwall_cidr_key k;

	if (!key)
		return 0;
	/* Zeroed whole: the key's 2 bytes of tail padding go to the map too, and a
	 * designated initializer need not clear padding. */
	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 16 + (key->family == SSLWALL_FAMILY_IPV4 ? 32 : 128);
	k.gen = gen;
	k.family = key->family;
	__builtin_memcpy(k.addr, local_lo ? key->addr_hi : key->addr_lo, 16);
	return bpf_map_lookup_elem(&sslwall_bypass_cidrs, &k) != NULL;
}

/* The bypass rules that need no socket: the server port's role (bypassed everywhere, or only
 * where this host is the server: local_lo != client_is_lo) and the peer's CIDR. One rule for
 * the classifier's new flows and for open connections registered by lifecycle.bpf.c; each adds
 * the bypass cgroup test its program type can make. */
static __always_inline int bypassed_by_port_or_peer(__u32 gen, const __u8 *role, const struct sslwall_flow_key *k,
						    int local_lo, int client_is_lo)
{
	return (role && (*role & SSLWALL_ROLE_BYPASS)) ||
	       (role && (*role & SSLWALL_ROLE_LOCAL_BYPASS) && local_lo != client_is_lo) ||
	       peer_in_bypass_cidr(gen, k, local_lo);
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

#endif /* SSLWALL_POLICY_H */
