/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Maps shared by every program family. Each object that includes this header
 * declares the same maps; the agent pins them under its bpffs folder and every
 * later object (or a newer agent) reuses the pinned ones, so flow state
 * survives program replacement.
 */
#ifndef SSLWALL_MAPS_H
#define SSLWALL_MAPS_H

#include "shared.h"

#define SSLWALL_MAX_FLOWS 65536
#define SSLWALL_PORTS 65536
/* Handshakes in flight at once: a listener's backlog is at most 4096 by default (somaxconn). */
#define SSLWALL_MAX_HALF_OPEN 16384

/* flows4: key = struct sslwall_flow_key4 (IPv4 flows: both endpoints, sorted, so both
 * directions find one entry); value = struct sslwall_flow (class, verdict, judgement state, and
 * the owner: the local process and cgroup, recorded at this host's SYN or SYN-ACK).
 * flows: the same for IPv6 flows, key = struct sslwall_flow_key (builds before flows4 kept both
 * families here; the agent moves their IPv4 entries over at its first start, agent/migrate.ts).
 * Two maps, because a hash map hashes and compares its whole key on every lookup: IPv4's 12
 * bytes instead of the 40 an IPv6 flow needs take 20-80 ns off a connection's SYN (its insert;
 * a ClientHello's lookup shows no change outside the noise: docs/bench.md, tc_first_packet_ns). Every reader and writer here goes through the
 * helpers below, which take the full key and pick the map.
 * Connections this host opened (from its SYN) or established (moved from half_open), and
 * flows seen midway. Written by the classifier (insert, judge), the lifecycle tracepoint
 * (promotion from half_open), the register iterator and the agent (verdict rewrite on a
 * mode switch); deleted by the lifecycle tracepoint on close. Read by the classifier on
 * every packet, the iterators and the agent (`sslwall flows`, verdict rewrite).
 * LRU hash with the common LRU list (not BPF_F_NO_COMMON_LRU, which splits max_entries
 * per CPU, so one busy CPU would evict at max_entries / CPUs): an insert that finds no free
 * node evicts the least recently used flow of its family instead of failing. Each CPU keeps up
 * to 128 free nodes of its own, so eviction can start about 128 x CPUs entries short of
 * max_entries (docs/dataplane.md). Nothing that does not hold a socket here enters it (no
 * inbound SYN does), so evictions = created - closed - live (the agent, over both maps) stays
 * at 0 unless the host really has that many connections of one family. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_MAX_FLOWS);
	__type(key, struct sslwall_flow_key4);
	__type(value, struct sslwall_flow);
} sslwall_flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_MAX_FLOWS);
	__type(key, struct sslwall_flow_key);
	__type(value, struct sslwall_flow);
} sslwall_flows SEC(".maps");

/* half_open: key = struct sslwall_flow_key; value = struct sslwall_flow. Inbound
 * handshakes this host answered with a SYN-ACK (or a TCP Fast Open SYN carrying data), until
 * the kernel establishes the connection: then the lifecycle tracepoint moves the entry into
 * flows. Written by the classifier (insert on egress SYN-ACK or ingress TFO SYN, judge,
 * delete on RST) and the tracepoint (delete on promotion and close). Read by the classifier's
 * slow path when flows misses. LRU hash apart from flows: a SYN flood answered by SYN
 * cookies or request sockets that never complete has no close event, so its entries can only
 * age out; here they evict each other, never an established flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_MAX_HALF_OPEN);
	__type(key, struct sslwall_flow_key);
	__type(value, struct sslwall_flow);
} sslwall_half_open SEC(".maps");

/* self_flows: key = struct sslwall_flow_key; value = 1. The agent's own connections
 * (etcd, engine, TTLS, its metrics listener's peers), never judged whatever the mode.
 * Written by the classifier (an egress SYN sent by the agent's process) and by the agent
 * (its sockets found in /proc at apply and attach time); deleted by the lifecycle
 * tracepoint on close. Read by the classifier when it opens a flow. A plain hash, not an
 * LRU, and apart from flows: a flood of other flows must never evict the agent's own (an
 * evicted agent flow would be judged midstream and could be blocked). Full: the SYN is
 * still bypassed in flows and SSLWALL_CNT_SELF_INSERT_FAILED counts it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct sslwall_flow_key);
	__type(value, __u8);
} sslwall_self_flows SEC(".maps");

/* active_gen: key = 0; value = the config slot (0 or 1) in force. Written by the agent,
 * last in an apply, after the inactive slot is complete: the switch is one u32 store.
 * Read by the classifier's slow path. Array of one: a single always-present value. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sslwall_active_gen SEC(".maps");

/* config: key = slot (0 or 1); value = struct sslwall_config (mode, budget, bypass
 * cgroup). Written by the agent (the inactive slot of an apply). Read by the classifier's
 * slow path, at the slot active_gen names. Array: two dense keys, always present. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sslwall_config);
} sslwall_config SEC(".maps");

/* port_roles: key = slot << 16 | server port; value = enum sslwall_port_role_bits.
 * Written by the agent (all 65536 ports of the inactive slot, one batch). Read by the
 * classifier at flow creation and for the midstream server guess. An array, not a hash:
 * the key space is small and dense, and an array lookup is inlined by the verifier into
 * an address computation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SSLWALL_PORTS);
	__type(key, __u32);
	__type(value, __u8);
} sslwall_port_roles SEC(".maps");

/* bypass_cidrs: key = struct sslwall_cidr_key (slot and family in the prefix, then the
 * address); value = 1. Peer networks that are never classified. Written by the agent
 * (the inactive slot's CIDRs of an apply). Read by the classifier at flow creation.
 * LPM trie: longest-prefix match is what a CIDR lookup is; no prealloc since most
 * configs list few CIDRs. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	/* Both generations are present during a switch: twice the 4000 CIDRs a config may hold. */
	__uint(max_entries, 8192);
	__type(key, struct sslwall_cidr_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sslwall_bypass_cidrs SEC(".maps");

/* counters: key = enum sslwall_counter; value = u64 per CPU. Written by the classifier
 * and the lifecycle tracepoint; read (summed over CPUs) by the agent for /metrics and
 * health. Per-CPU array: a small fixed key space, and the fast path never contends. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SSLWALL_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sslwall_counters SEC(".maps");

/* events: no key; records are struct sslwall_event, one per violation. Written by the
 * classifier; read by the agent (log lines, socket sweep). Ring buffer: one ordered
 * stream shared by all CPUs, read on its own agent thread. Full buffer: the event is
 * dropped and counted (SSLWALL_CNT_EVENTS_LOST); the verdict in the flows map holds. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} sslwall_events SEC(".maps");

static __always_inline void sslwall_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sslwall_counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void sslwall_count_class(__u8 cls, __u8 verdict)
{
	sslwall_count(SSLWALL_CNT_CLASS_BASE + (__u32)cls * SSLWALL_VERDICT_COUNT + verdict);
}

/* A flow's key in flows4: the first 4 bytes of each address, and the ports. */
static __always_inline void sslwall_key4_of(const struct sslwall_flow_key *key, struct sslwall_flow_key4 *k4)
{
	__builtin_memcpy(k4->addr_lo, key->addr_lo, 4);
	__builtin_memcpy(k4->addr_hi, key->addr_hi, 4);
	k4->port_lo = key->port_lo;
	k4->port_hi = key->port_hi;
}

/*
 * The flow of a key, from the map of its family. Each map must keep a call instruction of its
 * own: clang merges the two branches' calls into one that takes either map, and the verifier
 * then neither inlines the lookup nor calls the map's own function (the map pointer is
 * "poisoned": bpf_map_lookup_elem through the map's ops, a few ns more a packet). The empty asm
 * after the IPv4 call makes the branches end differently, so there is nothing to merge.
 */
#define SSLWALL_KEEP_CALL(r) asm volatile("" : "+r"(r))

static __always_inline struct sslwall_flow *sslwall_flow_lookup(const struct sslwall_flow_key *key)
{
	struct sslwall_flow_key4 k4;
	struct sslwall_flow *f;

	if (key->family == SSLWALL_FAMILY_IPV4) {
		sslwall_key4_of(key, &k4);
		f = bpf_map_lookup_elem(&sslwall_flows4, &k4);
		SSLWALL_KEEP_CALL(f);
		return f;
	}
	return bpf_map_lookup_elem(&sslwall_flows, key);
}

static __always_inline long sslwall_flow_update(const struct sslwall_flow_key *key, const struct sslwall_flow *f, __u64 flags)
{
	struct sslwall_flow_key4 k4;
	long r;

	if (key->family == SSLWALL_FAMILY_IPV4) {
		sslwall_key4_of(key, &k4);
		r = bpf_map_update_elem(&sslwall_flows4, &k4, f, flags);
		SSLWALL_KEEP_CALL(r);
		return r;
	}
	return bpf_map_update_elem(&sslwall_flows, key, f, flags);
}

static __always_inline long sslwall_flow_delete(const struct sslwall_flow_key *key)
{
	struct sslwall_flow_key4 k4;
	long r;

	if (key->family == SSLWALL_FAMILY_IPV4) {
		sslwall_key4_of(key, &k4);
		r = bpf_map_delete_elem(&sslwall_flows4, &k4);
		SSLWALL_KEEP_CALL(r);
		return r;
	}
	return bpf_map_delete_elem(&sslwall_flows, key);
}

/* Insert a new flow; with replace, over whatever flow the tuple held (the kernel accepted a new
 * handshake there, so that connection is over). NOEXIST first: another CPU may have inserted it
 * meanwhile. A replaced flow counts as a close and a create, so that created - closed - live
 * still counts evictions (the agent's flow-table stats). 0 when stored; otherwise nothing is
 * counted, and the caller says what a failure means. */
static __always_inline int sslwall_flow_insert(const struct sslwall_flow_key *key, const struct sslwall_flow *f, int replace)
{
	if (sslwall_flow_update(key, f, BPF_NOEXIST) == 0) {
		sslwall_count(SSLWALL_CNT_FLOWS_CREATED);
		return 0;
	}
	if (replace && sslwall_flow_update(key, f, BPF_EXIST) == 0) {
		sslwall_count(SSLWALL_CNT_FLOWS_CLOSED);
		sslwall_count(SSLWALL_CNT_FLOWS_CREATED);
		return 0;
	}
	return -1;
}

#endif /* SSLWALL_MAPS_H */
