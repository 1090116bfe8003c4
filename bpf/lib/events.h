/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Violation events to the agent, through the sslwall_events ring buffer. */
#ifndef SSLWALL_EVENTS_H
#define SSLWALL_EVENTS_H

#include "shared.h"
#include "maps.h"
#include "parse.h"

/* Not inlined: as a function taking the event struct it also anchors that
 * struct in the object's BTF, where tools/gen-shared-types.mjs reads it. */
static __noinline void event_fill(struct sslwall_event *e, const struct sslwall_pkt *p, const struct sslwall_flow *f)
{
	/* Ring buffer memory is not zeroed by reserve: clear it all (pad, comm tail)
	 * so no stale kernel bytes reach user space. */
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->type = SSLWALL_EVENT_VIOLATION;
	e->family = p->key.family;
	e->cls = f->cls;
	e->verdict = f->verdict;
	e->proto = f->proto;
	if (f->client_is_lo) {
		__builtin_memcpy(e->saddr, p->key.addr_lo, 16);
		__builtin_memcpy(e->daddr, p->key.addr_hi, 16);
		e->sport = p->key.port_lo;
		e->dport = p->key.port_hi;
	} else {
		__builtin_memcpy(e->saddr, p->key.addr_hi, 16);
		__builtin_memcpy(e->daddr, p->key.addr_lo, 16);
		e->sport = p->key.port_hi;
		e->dport = p->key.port_lo;
	}
	/* No owner recorded (a flow seen midway, or older than the agent): pid 0, empty comm, cgroup 0. */
	e->pid = f->owner.pid;
	__builtin_memcpy(e->comm, f->owner.comm, sizeof(e->comm));
	e->cgroup_id = f->owner.cgroup_id;
}

/* A full ring buffer drops the event and counts it; the verdict in the flow holds. */
static __always_inline void report_violation(struct __sk_buff *skb, const struct sslwall_pkt *p, const struct sslwall_flow *f, int egress,
					     int client_local)
{
	struct sslwall_event *e = bpf_ringbuf_reserve(&sslwall_events, sizeof(*e), 0);

	if (!e) {
		sslwall_count(SSLWALL_CNT_EVENTS_LOST);
		return;
	}
	event_fill(e, p, f);
	e->egress = egress;
	e->client_local = client_local;
	/* No owner recorded (a flow seen midway): a packet leaving this host still carries the
	 * local socket; one coming in does not yet (tc ingress runs before the socket lookup). */
	if (!e->cgroup_id && egress)
		e->cgroup_id = bpf_skb_cgroup_id(skb);
	bpf_ringbuf_submit(e, 0);
}

#endif /* SSLWALL_EVENTS_H */
