// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Flow lifecycle and enforcement on sockets:
 *  - sslwall_sock_state (tp_btf/inet_sock_set_state): removes closed flows
 *    (and their owners) from the maps, so the flows map holds open flows.
 *    This kernel has no kprobes; the BTF tracepoint needs no tracefs mount.
 *  - sslwall_destroy_blocked (iter/tcp): aborts every local socket whose flow
 *    is blocked, so the application gets an error at once instead of hanging
 *    on dropped packets. The agent runs it after each blocked event.
 *
 * Failure policy: both hooks only ever remove state or abort sockets of flows
 * already blocked, so a failure of theirs never blocks anything new: each states below
 * what it does when a lookup or delete fails.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "shared.h"
#include "lib/maps.h"
#include "lib/flow.h"

#define TCP_ESTABLISHED 1
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* Network namespace (inode) whose sockets this agent owns; 0 = all. The
 * tracepoint fires for every namespace, and the agent's maps describe only
 * the interfaces of its own. Set by the agent at load. */
const volatile __u32 netns_ino = 0;

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Failure policy: a socket whose key cannot be built (not IPv4/IPv6) or whose flow is
 * not in the map (never seen, already evicted) is skipped; a close missed this way leaves
 * the flow to the LRU, which evicts it when room is needed. Nothing to count: the agent
 * estimates evictions as created - closed - live. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sslwall_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sslwall_flow_key key = {};

	if (newstate != TCP_CLOSE)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (netns_ino && BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != netns_ino)
		return 0;
	/* Not skc_num: by the time the state becomes TCP_CLOSE the kernel has put an
	 * automatically chosen port back and zeroed skc_num; inet_sport survives. */
	if (sslwall_key_from_sock(&key, &sk->__sk_common, bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport))) < 0)
		return 0;

	bpf_map_delete_elem(&sslwall_owners, &key);
	if (bpf_map_delete_elem(&sslwall_flows, &key) == 0)
		sslwall_count(SSLWALL_CNT_FLOWS_CLOSED);
	return 0;
}

/* Failure policy: fails open. A socket without a flow entry, or whose entry is not
 * blocked, is left alone; a socket bpf_sock_destroy refuses stays open (its packets are
 * still dropped by the classifier, so the application times out instead of failing
 * fast). Only what was destroyed is printed: the agent counts those lines. */
SEC("iter/tcp")
int sslwall_destroy_blocked(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sslwall_flow_key key = {};
	struct sslwall_flow *f;
	__u8 state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	/* Listeners have no peer; time-wait and request socks are not full sockets
	 * and bpf_sock_destroy refuses them. */
	if (state == TCP_LISTEN || state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return 0;
	/* Live sockets here: skc_num is the bound local port. */
	if (sslwall_key_from_sock(&key, skc, BPF_CORE_READ(skc, skc_num)) < 0)
		return 0;
	f = bpf_map_lookup_elem(&sslwall_flows, &key);
	if (!f || f->verdict != SSLWALL_VERDICT_BLOCKED)
		return 0;
	if (bpf_sock_destroy(skc) == 0)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%u %u\n", key.port_lo, key.port_hi);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
