/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Maps and helpers of the transparent-TLS programs (bpf/ttls.bpf.c). None of these maps is
 * shared with the classifier: the ttls object is loaded on its own and its maps are pinned
 * under <bpffs>/maps with the sslwall_ttls_ prefix.
 */
#ifndef SSLWALL_TTLS_H
#define SSLWALL_TTLS_H

#include "shared.h"

#define SSLWALL_TTLS_PORTS 65536
#define SSLWALL_TTLS_MAX_CONNS 65536
#define SSLWALL_TTLS_MAX_TLS_DSTS 16384

/* ttls_active_gen: key = 0; value = the slot (0 or 1) of ttls_config, ttls_ports and
 * ttls_cidrs in force. Written by the agent, last in an apply, once the other slot is
 * complete. Read by connect4/connect6 on every TCP connect() in the cgroup. Array of one:
 * a single always-present value. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sslwall_ttls_active_gen SEC(".maps");

/* ttls_config: key = slot; value = struct sslwall_ttls_config (enabled, proxy port, agent
 * tgid, bypass cgroup). Written by the agent (the inactive slot). Read by connect4/6.
 * Array: two dense keys, always present. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sslwall_ttls_config);
} sslwall_ttls_config SEC(".maps");

/* ttls_ports: key = slot << 16 | destination port; value = 1 if ttls.ports lists it.
 * Written by the agent (the ports that changed, one batch). Read by connect4/6: the first
 * test after the config, so a connect() to an unlisted port costs two array lookups.
 * An array, not a hash: 65536 dense keys, and an array lookup is an address computation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SSLWALL_TTLS_PORTS);
	__type(key, __u32);
	__type(value, __u8);
} sslwall_ttls_ports SEC(".maps");

/* ttls_cidrs: key = struct sslwall_cidr_key (slot and family in the prefix, IPv4 and IPv6
 * in one trie); value = 1. The destination networks of ttls.cidrs. Written by the agent
 * (the inactive slot). Read by connect4/6 for a listed port. LPM trie: a CIDR lookup is a
 * longest-prefix match; no prealloc, most configs list few. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	/* Both slots are present during a switch: twice the 4000 CIDRs a config may hold. */
	__uint(max_entries, 8192);
	__type(key, struct sslwall_cidr_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sslwall_ttls_cidrs SEC(".maps");

/* ttls_speaks_tls: key = struct sslwall_ttls_addr (a destination address and port);
 * value = 1. Destinations a wrapped client was seen speaking TLS to: never wrapped again.
 * Written by the agent (the proxy saw a ClientHello); read by connect4/6 before a redirect.
 * LRU hash of 16384: the key space is every address and port, and a forgotten entry only
 * costs one more connection through the proxy, which finds it again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_TTLS_MAX_TLS_DSTS);
	__type(key, struct sslwall_ttls_addr);
	__type(value, __u8);
} sslwall_ttls_speaks_tls SEC(".maps");

/* ttls_by_cookie: key = socket cookie (u64); value = struct sslwall_ttls_orig. Written by
 * connect4/6 when they redirect (dst, pid) and by sockops once established (local); deleted
 * by sockops when the socket closes. Read by sockops. LRU hash: cookies are unbounded;
 * entries are deleted on close (the state callback is armed at TCP_CONNECT_CB), and the LRU
 * is only the backstop for a connect() that fails between the hook and the SYN (no TCP
 * callback ever runs for it). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_TTLS_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct sslwall_ttls_orig);
} sslwall_ttls_by_cookie SEC(".maps");

/* ttls_by_local: key = struct sslwall_ttls_addr, the client's local endpoint (which is the
 * remote endpoint of the proxy's accepted socket); value = struct sslwall_ttls_orig.
 * Written by sockops at ACTIVE_ESTABLISHED (before the client's ACK leaves, so before the
 * proxy can accept); deleted by sockops on close. Read by the agent (originalDestination,
 * `sslwall flows`). LRU hash, same size and reasons as ttls_by_cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_TTLS_MAX_CONNS);
	__type(key, struct sslwall_ttls_addr);
	__type(value, struct sslwall_ttls_orig);
} sslwall_ttls_by_local SEC(".maps");

/* ttls_counters: key = enum sslwall_ttls_counter; value = u64 per CPU. Written by the
 * programs; read (summed) by the agent. Per-CPU array: small fixed key space, no contention. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SSLWALL_TTLS_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sslwall_ttls_counters SEC(".maps");

static __always_inline void sslwall_ttls_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sslwall_ttls_counters, &idx);

	if (v)
		*v += 1;
}

/* The config slot in force, or NULL (array maps: does not happen in practice). */
static __always_inline const struct sslwall_ttls_config *sslwall_ttls_cfg(__u32 *gen)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&sslwall_ttls_active_gen, &zero);

	if (!g)
		return NULL;
	*gen = *g & 1;
	return bpf_map_lookup_elem(&sslwall_ttls_config, gen);
}

static __always_inline int sslwall_ttls_port_listed(__u32 gen, __u16 port)
{
	__u32 idx = gen << 16 | port;
	__u8 *v = bpf_map_lookup_elem(&sslwall_ttls_ports, &idx);

	return v && *v;
}

static __always_inline int sslwall_ttls_in_cidrs(__u32 gen, const struct sslwall_ttls_addr *dst)
{
	struct sslwall_cidr_key k;

	/* Zeroed whole: the key's tail padding goes to the map too (as in policy.h). */
	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 16 + (dst->family == SSLWALL_FAMILY_IPV4 ? 32 : 128);
	k.gen = gen;
	k.family = dst->family;
	__builtin_memcpy(k.addr, dst->addr, 16);
	return bpf_map_lookup_elem(&sslwall_ttls_cidrs, &k) != NULL;
}

/* Whether a connect() to dst, by the current task, is wrapped. Cheapest tests first: most
 * connects leave at the port. The bypass cgroup is the caller's (connect() runs in the
 * calling task), which is also the cgroup its socket was created in unless it moved since. */
static __always_inline int sslwall_ttls_wrapped(const struct sslwall_ttls_config *cfg, __u32 gen,
						const struct sslwall_ttls_addr *dst)
{
	if (!cfg->enabled || !cfg->proxy_port)
		return 0;
	if (!sslwall_ttls_port_listed(gen, dst->port))
		return 0;
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == cfg->agent_tgid)
		return 0;
	if (!sslwall_ttls_in_cidrs(gen, dst))
		return 0;
	if (cfg->bypass_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(cfg->bypass_cgroup_level) == cfg->bypass_cgroup_id)
		return 0;
	if (bpf_map_lookup_elem(&sslwall_ttls_speaks_tls, dst)) {
		sslwall_ttls_count(SSLWALL_TTLS_CNT_TLS_DIRECT);
		return 0;
	}
	return 1;
}

/* Store where a socket was going, by cookie; 0 on success. */
static __always_inline int sslwall_ttls_remember(void *ctx, const struct sslwall_ttls_addr *dst)
{
	struct sslwall_ttls_orig o;
	__u64 cookie = bpf_get_socket_cookie(ctx);

	/* Zeroed whole: local must read as "not established yet" (family 0) until sockops
	 * fills it, and the pad bytes reach user space. Not a verifier workaround: it loads
	 * without (6.18, root may read uninitialised stack); unprivileged-era verifiers said
	 * "invalid indirect read from stack", which Merbridge met with the same memset. */
	__builtin_memset(&o, 0, sizeof(o));
	o.dst = *dst;
	o.pid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_update_elem(&sslwall_ttls_by_cookie, &cookie, &o, BPF_ANY);
}

#endif /* SSLWALL_TTLS_H */
