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

/* flows: key = direction-independent 5-tuple, value = classification state.
 * Written by the tc classifier (insert, classify), deleted by the lifecycle
 * tracepoint on close, read by the destroy iterator and by `sslwall flows`.
 * LRU so a flood of flows evicts the oldest instead of failing inserts;
 * evictions = created - closed - live, computed by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_MAX_FLOWS);
	__type(key, struct sslwall_flow_key);
	__type(value, struct sslwall_flow);
} sslwall_flows SEC(".maps");

/* flow_owners: pid/comm of the process that called connect(), written by the
 * classifier on the egress SYN, deleted by the lifecycle tracepoint on close,
 * read only when a violation is reported. A separate
 * LRU keeps the flows value small on the fast path. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SSLWALL_MAX_FLOWS);
	__type(key, struct sslwall_flow_key);
	__type(value, struct sslwall_owner);
} sslwall_owners SEC(".maps");

/* active_gen: [0] = which config slot (0 or 1) is in force. Written last by
 * the agent after the inactive slot is complete: the switch is one u32 store. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sslwall_active_gen SEC(".maps");

/* config: two slots of runtime knobs, indexed by active_gen. Array: two keys. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sslwall_config);
} sslwall_config SEC(".maps");

/* port_roles: key = gen << 16 | server port, value = enum sslwall_port_role_bits.
 * An array, not a hash: the key space is small and dense, and an array lookup
 * is inlined by the verifier into an address computation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SSLWALL_PORTS);
	__type(key, __u32);
	__type(value, __u8);
} sslwall_port_roles SEC(".maps");

/* bypass_cidrs: peer networks that are never classified, both generations. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	/* Both generations are present during a switch: twice the 4000 CIDRs a config may hold. */
	__uint(max_entries, 8192);
	__type(key, struct sslwall_cidr_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sslwall_bypass_cidrs SEC(".maps");

/* counters: enum sslwall_counter, per CPU so the fast path never contends. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SSLWALL_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sslwall_counters SEC(".maps");

/* events: violations to the agent. Full buffer: the event is dropped and
 * counted (SSLWALL_CNT_EVENTS_LOST); the verdict in the flows map still holds. */
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

#endif /* SSLWALL_MAPS_H */
