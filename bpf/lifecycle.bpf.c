// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Flow lifecycle and enforcement on sockets:
 *  - sslwall_sock_state (tp_btf/inet_sock_set_state): moves an inbound handshake from
 *    half_open into flows when the kernel establishes it, and removes closed flows (and the
 *    agent's own flows) from the maps, so the flows map holds open flows.
 *    This kernel has no kprobes; the BTF tracepoint needs no tracefs mount.
 *  - sslwall_destroy_blocked (iter/tcp): aborts every local socket whose flow
 *    is blocked, so the application gets an error at once instead of hanging
 *    on dropped packets. The agent runs it after each blocked event.
 *  - sslwall_register_open (iter/tcp): gives every established connection the flows map
 *    does not know an entry joined midway, so that connections opened while the mode was off
 *    (or before the filter was attached) are counted at once, not at their next packet.
 *  - sslwall_seed_self (iter/tcp): marks the agent's own sockets (named by inode in
 *    sslwall_self_inodes) as its flows, bypassed, so that a connection the agent opened
 *    before the filter saw its SYN (before attach, in off mode) is never judged.
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
#include "lib/policy.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* Network namespace (inode) whose sockets this agent owns; 0 = all. The
 * tracepoint fires for every namespace, and the agent's maps describe only
 * the interfaces of its own. Set by the agent at load. */
const volatile __u32 netns_ino = 0;

/* self_inodes: key = socket inode number; value = 1. The agent's own sockets, from
 * /proc/self/fd. Written by the agent (cleared and refilled) before each run of
 * sslwall_seed_self; read only by it. This object's own map, never pinned: it means
 * something only during one run. A hash: inode numbers are sparse. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} sslwall_self_inodes SEC(".maps");

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The kernel established an inbound connection: its half-open entry (what the classifier
 * learnt from the handshake and any data that rode with it) becomes the flow, replacing any
 * older flow of the 4-tuple: the kernel accepted a new handshake there, so the old one is
 * gone. Not at the child's TCP_SYN_RECV: inet_csk_clone_lock sets that state before it
 * copies the addresses in, so the key could not be built there. */
static __always_inline void promote(const struct sslwall_flow_key *key)
{
	struct sslwall_flow *half = bpf_map_lookup_elem(&sslwall_half_open, key);
	struct sslwall_flow f;

	if (!half)
		return;
	f = *half;
	bpf_map_delete_elem(&sslwall_half_open, key);
	if (sslwall_flow_insert(key, &f, 1)) {
		sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
		return;
	}
	sslwall_count(SSLWALL_CNT_HALF_OPEN_PROMOTED);
}

/* Failure policy: a socket whose key cannot be built (not IPv4/IPv6) or whose flow is
 * not in the map (never seen, already evicted) is skipped; a close missed this way leaves
 * the flow to the LRU, which evicts it when room is needed (counted by the agent as
 * created - closed - live). A promotion that cannot insert (no free node and nothing to
 * evict) counts SSLWALL_CNT_FLOW_INSERT_FAILED; the flow is then judged as joined midway. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sslwall_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sslwall_flow_key key = {};
	int established = oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED;
	struct sslwall_flow *f;
	__u8 cls;

	if (newstate != TCP_CLOSE && !established)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (netns_ino && BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != netns_ino)
		return 0;
	/* Not skc_num: by the time the state becomes TCP_CLOSE the kernel has put an
	 * automatically chosen port back and zeroed skc_num; inet_sport survives. */
	if (sslwall_key_from_sock(&key, &sk->__sk_common, bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport))) < 0)
		return 0;
	if (established) {
		promote(&key);
		return 0;
	}

	/* Each close pays only the deletes its socket can need: a delete takes the bucket's lock
	 * even for a key that is not there, and this runs for both ends of every connection
	 * (docs/bench.md, connect_rate). The flow tells which: a half-open entry remains only for a
	 * handshake that died before it was established (a Fast Open child reset in SYN_RECV) or
	 * whose promotion was missed (no flow then); an agent flow is always a bypassed one, unless
	 * it was evicted from flows. */
	f = sslwall_flow_lookup(&key);
	cls = f ? f->cls : SSLWALL_CLASS_PENDING;	/* read before the delete frees the element */
	if (f && sslwall_flow_delete(&key) == 0)
		sslwall_count(SSLWALL_CNT_FLOWS_CLOSED);
	if (!f || oldstate == TCP_SYN_RECV)
		bpf_map_delete_elem(&sslwall_half_open, &key);
	if (!f || cls == SSLWALL_CLASS_BYPASS)
		bpf_map_delete_elem(&sslwall_self_flows, &key);
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
	f = sslwall_flow_lookup(&key);
	if (!f || f->verdict != SSLWALL_VERDICT_BLOCKED)
		return 0;
	if (bpf_sock_destroy(skc) == 0)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%u %u\n", key.port_lo, key.port_hi);
	return 0;
}

/* A socket's cgroup (v2): the one of the process that created it, or of the listener for an
 * accepted one. */
static __always_inline struct cgroup *sock_cgroup(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
}

/* Its id, what bpf_skb_cgroup_id gives the classifier for the socket's packets (0: none). */
static __always_inline __u64 sock_cgroup_id(struct sock *sk)
{
	struct cgroup *cg = sock_cgroup(sk);

	return cg ? BPF_CORE_READ(cg, kn, id) : 0;
}

/* The cgroup of a socket at a given depth (bpf_sk_ancestor_cgroup_id is for tc and socket
 * programs, not iterators); 0 when the socket's cgroup is shallower. */
static __always_inline __u64 sock_ancestor_cgroup_id(struct sock *sk, __u32 level)
{
	struct cgroup *cg = sock_cgroup(sk), *anc = NULL;

	if (!cg || level > (__u32)BPF_CORE_READ(cg, level) || level >= 64)
		return 0;
	bpf_probe_read_kernel(&anc, sizeof(anc), &cg->ancestors[level]);
	return anc ? BPF_CORE_READ(anc, kn, id) : 0;
}

/* Failure policy: fails open, as the classifier's own midway join does. A socket that cannot
 * be keyed, or whose entry cannot be inserted, is left to the classifier, which opens its
 * flow at the next packet; a flow already known (seen, seeded as the agent's own) is never
 * touched. The entry applies the policy the classifier applies when it opens a flow (port
 * roles, peer CIDRs, the bypass cgroup) and names its owner by the socket's cgroup (no pid: the
 * process that opened it is not known here); only what was registered is printed. */
SEC("iter/tcp")
int sslwall_register_open(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sslwall_flow_key key = {};
	struct sslwall_flow f = {};
	struct sslwall_config *cfg;
	struct tcp_sock *tp;
	__u32 zero = 0, *genp, gen, idx;
	__u8 *role, state;
	int local_lo;

	if (!skc)
		return 0;
	/* Connections that can still carry data; listeners, request and time-wait socks have no flow. */
	state = skc->skc_state;
	if (state != TCP_ESTABLISHED && state != TCP_FIN_WAIT1 && state != TCP_FIN_WAIT2 && state != TCP_CLOSE_WAIT)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	local_lo = sslwall_key_from_sock(&key, skc, BPF_CORE_READ(skc, skc_num));
	if (local_lo < 0)
		return 0;
	if (sslwall_flow_lookup(&key) || bpf_map_lookup_elem(&sslwall_self_flows, &key))
		return 0;
	genp = bpf_map_lookup_elem(&sslwall_active_gen, &zero);
	if (!genp)
		return 0;
	gen = *genp & 1;
	cfg = bpf_map_lookup_elem(&sslwall_config, &gen);
	if (!cfg || cfg->mode == SSLWALL_MODE_OFF)
		return 0;

	f.first_seen_ns = bpf_ktime_get_ns();
	f.stage = SSLWALL_STAGE_MIDSTREAM;
	f.owner.cgroup_id = sock_cgroup_id(&tp->inet_conn.icsk_inet.sk);
	f.client_is_lo = guess_client_is_lo(&key, gen);
	idx = gen << 16 | (f.client_is_lo ? key.port_hi : key.port_lo);
	role = bpf_map_lookup_elem(&sslwall_port_roles, &idx);
	f.proto = role ? (*role & SSLWALL_ROLE_PROTO_MASK) : 0;
	if (bypassed_by_port_or_peer(gen, role, &key, local_lo, f.client_is_lo) ||
	    (cfg->bypass_cgroup_id &&
	     sock_ancestor_cgroup_id(&tp->inet_conn.icsk_inet.sk, cfg->bypass_cgroup_level) == cfg->bypass_cgroup_id))
		f.cls = SSLWALL_CLASS_BYPASS;
	if (sslwall_flow_insert(&key, &f, 0))
		return 0;
	if (f.cls == SSLWALL_CLASS_BYPASS)
		sslwall_count_class(SSLWALL_CLASS_BYPASS, SSLWALL_VERDICT_ALLOWED);
	BPF_SEQ_PRINTF(ctx->meta->seq, "%u %u\n", key.port_lo, key.port_hi);
	return 0;
}

/* Failure policy: a socket that cannot be keyed, or whose entries cannot be written (a full
 * self_flows map), is left to the classifier's own rule for agent SYNs; only what was seeded
 * is printed, and the agent logs the count. Never blocks or destroys anything. */
SEC("iter/tcp")
int sslwall_seed_self(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sslwall_flow_key key = {};
	struct sslwall_flow f = {};
	struct tcp_sock *tp;
	__u64 ino;
	__u8 one = 1;
	int local_lo;

	if (!skc)
		return 0;
	/* Listeners have no peer, hence no flow; request and time-wait socks have no file. */
	if (skc->skc_state == TCP_LISTEN)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	ino = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_socket, file, f_inode, i_ino);
	if (!ino || !bpf_map_lookup_elem(&sslwall_self_inodes, &ino))
		return 0;
	local_lo = sslwall_key_from_sock(&key, skc, BPF_CORE_READ(skc, skc_num));
	if (local_lo < 0)
		return 0;
	if (bpf_map_update_elem(&sslwall_self_flows, &key, &one, BPF_ANY))
		return 0;
	/* Which side opened it is not known here; the local side is shown as the client. */
	f.first_seen_ns = bpf_ktime_get_ns();
	f.cls = SSLWALL_CLASS_BYPASS;
	f.stage = SSLWALL_STAGE_MIDSTREAM;
	f.client_is_lo = local_lo;
	sslwall_flow_update(&key, &f, BPF_ANY);
	BPF_SEQ_PRINTF(ctx->meta->seq, "%u %u\n", key.port_lo, key.port_hi);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
