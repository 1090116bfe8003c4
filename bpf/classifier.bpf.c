// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * tc classifier: one verdict per TCP flow, on egress and ingress of the
 * interfaces the agent names. See docs/dataplane.md for the rules.
 *
 * Failure policy (both hooks): fail open where the filter cannot see, and count it:
 * packets it cannot parse (truncated), payload it cannot read, no config loaded, a flow
 * it cannot store all pass. What a sender can choose to hide behind (TCP fragments, IPv6
 * header chains longer than the parser walks) is not a blind spot: passed and counted in
 * passive mode, dropped in active mode (parse_policy). An outage of the filter's own state must
 * not cut a host off the network. It fails closed only on evidence: a flow whose
 * payload was seen to break a rule, in active mode. A full flow map evicts its least
 * recently used flow (LRU); a full event ring drops the event, never the verdict.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "shared.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/judge.h"
#include "lib/policy.h"
#include "lib/events.h"

/* tcx and cls_bpf both read -1 as "no opinion: next program, then pass" and 2 as drop. */
#define VERDICT_PASS (-1)
#define VERDICT_DROP 2

static __always_inline int classify_slow(struct __sk_buff *skb, struct sslwall_pkt *p, struct sslwall_flow *f, int egress);
static __noinline int parse_policy(int r);

/* sslwall_sk_allowed: the sockets whose flow is decided with a class whose verdict no mode
 * changes (tls, starttls, connect, bypass, midstream_unknown). A direct-mapped table of socket
 * cookies, indexed by the socket's own hash (sk->skc_hash, the kernel's hash of its 4-tuple) and
 * holding the cookie of the socket last remembered in that slot; 0: none. Written by the
 * classifier on egress (set when a packet of the socket finds its flow decided so in
 * sslwall_flows, cleared at the socket's SYN); read by the classifier on egress, first thing.
 *
 * Why an array of cookies rather than socket storage (docs/bench.md, tc_fastpath_ns): a packet
 * leaving a local socket already points to it (skb->sk), and from there the verdict is two loads
 * away here (the socket's hash and cookie, then the slot), where socket storage is three (the
 * storage, the map's cache slot, the value) and cost ~2.5 ns more a packet.
 *
 * Why a global (.bss) array rather than an array map: the slot's address is then the array's,
 * a constant the loader patches in, plus the masked hash times 8; the verifier proves the
 * index in bounds from the mask alone (umax 65535 * 8 < the 512 KiB value). An array map's
 * lookup, even inlined, spills the key to the stack and reloads it, and checks the index and a
 * NULL result again: ~1.1 ns a packet on the 2026-12-03 VM (1.32-1.36x -> 1.25-1.27x).
 *
 * It stays exact without invalidation:
 * - a socket cookie is unique for the boot and never reused, so a slot left behind by a closed
 *   socket, or taken by another socket of the same hash, can never match a socket it was not
 *   written for: a miss only means the packet takes the flow map;
 * - a plaintext flow, whose verdict the agent rewrites on a mode switch, is never remembered;
 * - the one socket that can carry a second connection (connect(AF_UNSPEC), then connect()
 *   again) keeps its cookie, but its hash is its new tuple's from the SYN on, which the fast path
 *   leaves to the slow path (SYN_SENT), and the SYN clears the slot of that hash if it holds the
 *   socket: the slot the new connection reads. A slot of its old tuple that still holds it is
 *   read only by a connection on a tuple of that hash, whose own SYN clears it first.
 * Two busy sockets of one slot take turns at it, each miss a flow-map lookup: correct, slower.
 * 65536 slots of 8 bytes, the size of the flow table. A u64 is written and read whole (aligned),
 * so CPUs sharing a slot never see half a cookie. Private to each loaded classifier (its .bss
 * map, zeroed at load, never pinned: the agent pins only the maps it names): a replaced
 * program starts with none, which costs each socket one flow-map lookup. */
#define SK_SLOTS 65536
__u64 sslwall_sk_allowed[SK_SLOTS];

/* The slot of a socket: never NULL. skc_hash and skc_cookie are in sock_common, which request
 * and time-wait socks share, so reading them is safe for any skb->sk. */
static __always_inline __u64 *sk_slot(struct sock *sk)
{
	__u32 h = sk->__sk_common.skc_hash & (SK_SLOTS - 1);

	return &sslwall_sk_allowed[h];
}

/* The socket's slot if it holds this socket's mark, else NULL. A socket whose cookie was never
 * made (0) is never marked. */
static __always_inline __u64 *sk_marked(struct sock *sk)
{
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	__u64 *slot = sk_slot(sk);

	return cookie && *slot == cookie ? slot : NULL;
}

/*
 * The egress fast path: the sending socket's flow is known to be allowed. Not while the socket
 * is in SYN_SENT: its SYN (a reconnect) opens a new flow on the slow path. Not for request and
 * time-wait socks, which take the flow map as they always did (a time-wait sock inherits its
 * socket's cookie).
 */
static __always_inline int sk_allowed(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sock *sk = kskb->sk;
	__u8 state;

	if (!sk)
		return 0;
	state = sk->__sk_common.skc_state;
	if (state == BPF_TCP_SYN_SENT || state == BPF_TCP_TIME_WAIT || state == BPF_TCP_NEW_SYN_RECV)
		return 0;
	return sk_marked(sk) != NULL;
}

/* Is this the flow's own socket, the one that sends only this flow's segments? A TCP stream
 * socket is; the kernel's control sockets (SOCK_RAW: RSTs and ACKs for any tuple), raw and
 * packet sockets (whatever a CAP_NET_RAW process crafts) are not. Type 0 is BPF_PROG_TEST_RUN's
 * stand-in socket, which the unit tests and benches run with: socket(2) creates no IP socket
 * of type 0, so no sender can have one. */
static __always_inline int own_flow_socket(struct bpf_sock *sk)
{
	return (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) || (sk->type == 0 && sk->protocol == 0);
}

/* Only the flow's own full socket is remembered (bpf_get_socket_cookie makes its cookie if it
 * had none). */
static __always_inline void remember_allowed(struct __sk_buff *skb, const struct sslwall_flow *f)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct bpf_sock *sk = skb->sk;
	struct sock *ks = kskb->sk;

	if (!sk || !ks || f->cls == SSLWALL_CLASS_PLAINTEXT)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk || !own_flow_socket(sk))
		return;
	*sk_slot(ks) = bpf_get_socket_cookie(skb);
}

/* A socket's SYN: whatever flow it carried before is over. Only a slot holding this socket is
 * cleared (another socket's mark there stays). */
static __always_inline void forget_allowed(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sock *sk = kskb->sk;
	__u64 *slot;

	if (!sk)
		return;
	slot = sk_marked(sk);
	if (slot)
		*slot = 0;
}

static __always_inline int is_syn(const struct sslwall_pkt *p)
{
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline int is_synack(const struct sslwall_pkt *p)
{
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
}

/* The verdict of a decided flow for one packet. */
static __always_inline int decided(const struct sslwall_flow *f, const struct sslwall_pkt *p)
{
	if (f->verdict != SSLWALL_VERDICT_BLOCKED || (p->tcp_flags & (TCP_FLAG_RST | TCP_FLAG_SYN)))
		return VERDICT_PASS;
	sslwall_count(SSLWALL_CNT_PKT_DROPPED);
	return VERDICT_DROP;
}

static __always_inline int classify_packet(struct __sk_buff *skb, int egress)
{
	struct sslwall_pkt p = {};
	struct sslwall_flow *f;
	int r = parse_packet(skb, &p);

	if (r != PARSE_OK) {
		if (r == PARSE_TRUNCATED)
			sslwall_count(SSLWALL_CNT_PKT_TRUNCATED);
		if (r == PARSE_FRAGMENT || r == PARSE_EXT_LIMIT)
			return parse_policy(r);
		return VERDICT_PASS;
	}

	/* Map fast path (ingress, and egress without a remembered socket): a decided flow costs
	 * this one lookup. A blocked flow's RST
	 * still passes so the peer fails fast instead of retransmitting. Only a
	 * handshake this host sends (its SYN: connect() found the 4-tuple free; its
	 * SYN-ACK: no socket holds the tuple any more, a live one would have answered
	 * with an ACK) starts a new flow over a decided one: it takes the slow path.
	 * An arriving SYN never replaces a decided flow (anyone can forge one); it
	 * passes, also on a blocked flow, so that the kernel decides. egress is a
	 * constant in each program: the test costs nothing on ingress. */
	if (egress && is_syn(&p)) {
		/* This host's SYN opens a new flow whatever the map holds (classify_slow, open_flow):
		 * the lookup would only cost the connection a cold miss. */
		forget_allowed(skb);
		f = NULL;
	} else {
		f = sslwall_flow_lookup(&p.key);
		if (f && f->cls != SSLWALL_CLASS_PENDING && !(egress && (p.tcp_flags & TCP_FLAG_SYN))) {
			if (egress)
				remember_allowed(skb, f);
			return decided(f, &p);
		}
	}
	return classify_slow(skb, &p, f, egress);
}

/* Egress fast path: a packet of a local socket whose flow is decided and allowed costs a
 * read of its slot in sslwall_sk_allowed, before any parsing (docs/dataplane.md, "Fast
 * path"). Ingress, where tc sees no socket yet, starts with the flow map. A function apart so
 * that the packet struct is not even zeroed on this path. */
SEC("tc")
int sslwall_classify_egress(struct __sk_buff *skb)
{
	if (sk_allowed(skb))
		return VERDICT_PASS;
	return classify_packet(skb, 1);
}

SEC("tc")
int sslwall_classify_ingress(struct __sk_buff *skb)
{
	return classify_packet(skb, 0);
}

/*
 * TCP the parser cannot judge because of how the sender framed it: a fragment (the first one's
 * payload is cut short, the later ones have no TCP header), or an IPv6 header chain longer
 * than we walk. TCP never needs either (it segments to the path MTU with DF set, and no
 * stack chains that many headers), so in active mode they are dropped; in passive mode (and
 * without a config) they pass. Counted either way. Called only for such packets: the mode
 * lookups stay off the fast path.
 */
static __noinline int parse_policy(int r)
{
	struct sslwall_config *cfg;
	__u32 zero = 0, *genp, gen;

	sslwall_count(r == PARSE_FRAGMENT ? SSLWALL_CNT_FRAGMENTS : SSLWALL_CNT_EXT_HDR_LIMIT);
	genp = bpf_map_lookup_elem(&sslwall_active_gen, &zero);
	if (!genp)
		return VERDICT_PASS;
	gen = *genp & 1;
	cfg = bpf_map_lookup_elem(&sslwall_config, &gen);
	if (!cfg || cfg->mode != SSLWALL_MODE_ACTIVE)
		return VERDICT_PASS;
	sslwall_count(SSLWALL_CNT_PARSE_DROPPED);
	sslwall_count(SSLWALL_CNT_PKT_DROPPED);
	return VERDICT_DROP;
}

/* The slow path: unknown or pending flows. */

/* Is the local endpoint of this packet the key's lo endpoint? */
static __always_inline int local_is_lo(const struct sslwall_pkt *p, int egress)
{
	return egress ? p->sender_is_lo : !p->sender_is_lo;
}

/*
 * Is this flow the agent's own? Remembered ones are (sslwall_self_flows: seeded by the agent,
 * or recorded here), whatever the packet: a SYN retransmitted from a timer, a segment after
 * the flow was evicted from sslwall_flows. A new one is a SYN leaving this host in the agent
 * process's context, to a control-plane port (role SELF: not every connection of the agent is
 * its own, the TTLS proxy relays applications' bytes): connect() sends the SYN synchronously
 * from the caller (tcx egress runs before any qdisc). Not when a flow opened by another SYN is already on this tuple: that
 * SYN is a retransmission from timer (softirq) context, where the current task is whoever
 * happened to run, perhaps the agent, and the flow belongs to its first SYN's sender.
 */
static __always_inline int self_flow(const struct sslwall_pkt *p, const struct sslwall_config *cfg, const __u8 *role,
				     int egress, int syn)
{
	const struct sslwall_flow *old;
	__u8 one = 1;

	/* This host's SYN to a port that is not the control plane's: no agent flow can be on it (the
	 * agent seeds only its sockets to those ports and its listener's, agent/self.ts, and records
	 * only SYNs to them), so a connection's SYN pays no lookup here (docs/bench.md, flow open). */
	if (egress && syn && !(role && (*role & SSLWALL_ROLE_SELF)))
		return 0;
	if (bpf_map_lookup_elem(&sslwall_self_flows, &p->key))
		return 1;
	if (!egress || !syn || !cfg->self_tgid || (bpf_get_current_pid_tgid() >> 32) != cfg->self_tgid)
		return 0;
	/* Looked up here, not passed in: open_flow already takes the most arguments a BPF call may. */
	old = sslwall_flow_lookup(&p->key);
	if (old && (old->flags & SSLWALL_FLOW_SYN_SEEN))
		return 0;
	if (bpf_map_update_elem(&sslwall_self_flows, &p->key, &one, BPF_ANY))
		sslwall_count(SSLWALL_CNT_SELF_INSERT_FAILED);
	return 1;
}

/* The server's sequence starts at its SYN-ACK: what the client's ACK must acknowledge. The
 * client's starts where the SYN-ACK acknowledges (no state was kept from its SYN), unless a
 * Fast Open SYN's data already fixed it: the client's stream is judged in order from there. */
static __always_inline void note_synack(struct sslwall_flow *f, const struct sslwall_pkt *p)
{
	f->seq_next[1] = p->seq + 1;
	f->flags |= SSLWALL_FLOW_SEQ_SERVER;
	if (!(f->flags & SSLWALL_FLOW_SEQ_CLIENT)) {
		f->seq_next[0] = p->ack;
		f->flags |= SSLWALL_FLOW_SEQ_CLIENT;
	}
}

/*
 * The client's ACK of our SYN-ACK: it acknowledges exactly the SYN-ACK's sequence number + 1
 * (or data the server sent after it), which only someone who saw the SYN-ACK can know. The
 * handshake is then complete, also for a server in another namespace behind this host, where
 * no state change of a local socket would ever tell (lifecycle.bpf.c promotes local ones too).
 */
static __always_inline int completes_handshake(const struct sslwall_pkt *p, const struct sslwall_flow *f)
{
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_ACK &&
	       (f->flags & SSLWALL_FLOW_SEQ_SERVER) && p->sender_is_lo == f->client_is_lo && p->ack == f->seq_next[1];
}

/* Move an established inbound flow from half_open into flows, replacing whatever flow the tuple
 * had (the host answered this new handshake, so the old connection is over). Returns the
 * entry to go on with: the new one, or the half-open one if flows refused the insert (counted). */
static __noinline struct sslwall_flow *promote(const struct sslwall_pkt *p, struct sslwall_flow *half)
{
	struct sslwall_flow copy = *half, *stored;

	sslwall_flow_insert(&p->key, &copy, 1);
	stored = sslwall_flow_lookup(&p->key);
	if (!stored) {
		sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
		return half;
	}
	bpf_map_delete_elem(&sslwall_half_open, &p->key);
	sslwall_count(SSLWALL_CNT_HALF_OPEN_PROMOTED);
	return stored;
}

/*
 * A local server's SYN-ACK: the first packet that carries its socket (the request socket, whose
 * full socket for bpf_skb_cgroup_id is the listener), so the service that accepted the flow is
 * known by its cgroup. No pid: the SYN-ACK is sent from softirq, not by the server process.
 */
static __always_inline void record_server_owner(struct __sk_buff *skb, struct sslwall_flow *f)
{
	f->owner.cgroup_id = bpf_skb_cgroup_id(skb);
}

static __noinline struct sslwall_flow *open_flow(struct __sk_buff *skb, const struct sslwall_pkt *p,
						 const struct sslwall_config *cfg, __u32 gen, int egress)
{
	int syn = is_syn(p);
	int synack = is_synack(p);
	struct sslwall_flow f = {};
	struct sslwall_flow *stored;
	__u16 server_port;
	__u32 idx;
	__u8 *role;

	if (!syn && !synack && p->payload_len == 0)
		return NULL;	/* an ACK or FIN of a flow we never saw: nothing to judge yet */
	/* An arriving SYN without data (a scan, a flood, a port nobody listens on) leaves no
	 * state: the flow starts when this host answers it (its SYN-ACK, on egress). */
	if (syn && !egress && p->payload_len == 0)
		return NULL;

	if (syn)
		f.client_is_lo = p->sender_is_lo;
	else if (synack)
		f.client_is_lo = !p->sender_is_lo;
	else
		f.client_is_lo = guess_client_is_lo(&p->key, gen);
	server_port = f.client_is_lo ? p->key.port_hi : p->key.port_lo;

	idx = gen << 16 | server_port;
	role = bpf_map_lookup_elem(&sslwall_port_roles, &idx);
	f.first_seen_ns = bpf_ktime_get_coarse_ns();
	f.proto = role ? (*role & SSLWALL_ROLE_PROTO_MASK) : 0;
	if (syn || synack) {
		f.flags = SSLWALL_FLOW_SYN_SEEN;
		f.stage = f.proto ? SSLWALL_STAGE_NEGOTIATE : SSLWALL_STAGE_HELLO;
	} else {
		f.stage = SSLWALL_STAGE_MIDSTREAM;
	}

	if (bypassed_by_port_or_peer(gen, role, &p->key, local_is_lo(p, egress), f.client_is_lo) ||
	    (egress && in_bypass_cgroup(skb, cfg)) ||
	    self_flow(p, cfg, role, egress, syn)) {
		f.cls = SSLWALL_CLASS_BYPASS;
		sslwall_count_class(SSLWALL_CLASS_BYPASS, SSLWALL_VERDICT_ALLOWED);
	}

	/* A SYN leaving this host is sent by connect() (or sendto with MSG_FASTOPEN)
	 * in the caller's context, after the source port is chosen: the current task
	 * owns the flow. (The state tracepoint fires before the port is assigned.)
	 * The cgroup is the socket's (bpf_skb_cgroup_id), not the current task's: a SYN
	 * retransmitted from a timer runs in whatever task happened to be current.
	 * Written into the flow before its insert: it costs the connection no map
	 * operation of its own. */
	if (egress && syn) {
		f.owner.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(f.owner.comm, sizeof(f.owner.comm));
		f.owner.cgroup_id = bpf_skb_cgroup_id(skb);
	}
	if (egress && synack)
		record_server_owner(skb, &f);

	/* An inbound handshake (our SYN-ACK, or a Fast Open SYN whose data must be judged now)
	 * waits in half_open until the kernel establishes it. NOEXIST there: a retransmitted
	 * SYN-ACK must not reset what a Fast Open SYN's data already taught. */
	if (egress ? synack : syn) {
		if (bpf_map_update_elem(&sslwall_half_open, &p->key, &f, BPF_NOEXIST) == 0)
			sslwall_count(SSLWALL_CNT_HALF_OPEN_CREATED);
		stored = bpf_map_lookup_elem(&sslwall_half_open, &p->key);
		if (!stored) {
			sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
			return NULL;
		}
		if (synack)
			note_synack(stored, p);
		return stored;
	}
	/* This host's SYN fixes where the client's bytes start (classify_slow would set the same
	 * after the insert): set here, a SYN without data has nothing left to do with the stored
	 * flow, and the connection pays no lookup after its insert (docs/bench.md, flow open). */
	if (syn) {
		f.seq_next[sslwall_dir_idx(DIR_CLIENT)] = p->seq + 1;
		f.flags |= SSLWALL_FLOW_SEQ_CLIENT;
	}
	/* Our own SYN replaces a flow already there (connect() found the 4-tuple free: the old
	 * flow's close was missed); anything else keeps what another CPU may have inserted. */
	if (sslwall_flow_insert(&p->key, &f, syn) && syn) {
		sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
		return NULL;
	}
	if (syn && p->payload_len == 0)
		return NULL;	/* stored, pending: passes (classify_slow) */
	stored = sslwall_flow_lookup(&p->key);
	if (!stored)
		sslwall_count(SSLWALL_CNT_FLOW_INSERT_FAILED);
	return stored;
}

/* Inlined, at one call site: each program gets its own copy with egress a constant, and a cold
 * packet pays no call (docs/bench.md, tc_first_packet_ns). */
static __always_inline int classify_slow(struct __sk_buff *skb, struct sslwall_pkt *p, struct sslwall_flow *f, int egress)
{
	struct sslwall_config *cfg;
	__u32 zero = 0, *genp, gen, d, di, seq, len, pending;
	__u8 seq_flag;
	int j;

	genp = bpf_map_lookup_elem(&sslwall_active_gen, &zero);
	if (!genp) {
		sslwall_count(SSLWALL_CNT_NO_CONFIG);
		return VERDICT_PASS;
	}
	gen = *genp & 1;
	cfg = bpf_map_lookup_elem(&sslwall_config, &gen);
	if (!cfg) {
		sslwall_count(SSLWALL_CNT_NO_CONFIG);
		return VERDICT_PASS;
	}
	if (cfg->mode == SSLWALL_MODE_OFF)
		return VERDICT_PASS;

	/* This host answers a new handshake on the tuple: the flow there before is over. */
	if (f && egress && is_synack(p)) {
		if (sslwall_flow_delete(&p->key) == 0)
			sslwall_count(SSLWALL_CNT_FLOWS_CLOSED);
		f = NULL;
	}
	/* An inbound handshake not yet established is judged where it waits. Not looked for on
	 * a SYN of ours (it opens a flow of its own) or an arriving SYN without data (it changes
	 * nothing either way): a new connection pays no second lookup, and a flood neither. */
	if (!f && !(is_syn(p) && (egress || p->payload_len == 0))) {
		f = bpf_map_lookup_elem(&sslwall_half_open, &p->key);
		if (f && (p->tcp_flags & TCP_FLAG_RST)) {
			/* A reset handshake never completes (a SYN scanner's RST, a refused SYN-ACK).
			 * An established flow's entry goes when the kernel, which checks the RST's
			 * sequence number, closes the socket: a forged RST must not remove it. */
			bpf_map_delete_elem(&sslwall_half_open, &p->key);
			return VERDICT_PASS;
		}
		if (f && egress && is_synack(p))
			note_synack(f, p);	/* answering a Fast Open SYN, whose data made the entry */
		if (f && completes_handshake(p, f))
			f = promote(p, f);
		if (f && f->cls != SSLWALL_CLASS_PENDING && !(egress && is_syn(p)))
			return decided(f, p);	/* a retransmitted SYN-ACK of a decided handshake too */
	}
	if (f && !egress && is_syn(p))
		return VERDICT_PASS;	/* a SYN on a known flow, forged or retransmitted: state stays as it was */
	if (!f || (egress && is_syn(p))) {
		f = open_flow(skb, p, cfg, gen, egress);
		if (!f || f->cls != SSLWALL_CLASS_PENDING)
			return VERDICT_PASS;
	} else if (egress && in_bypass_cgroup(skb, cfg)) {
		/* A bypassed server: its SYN came in before any socket was known; its SYN-ACK names the listener's cgroup. */
		f->cls = SSLWALL_CLASS_BYPASS;
		sslwall_count_class(SSLWALL_CLASS_BYPASS, SSLWALL_VERDICT_ALLOWED);
		return VERDICT_PASS;
	} else if (egress && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		record_server_owner(skb, f);
	}

	d = (p->sender_is_lo == f->client_is_lo) ? DIR_CLIENT : DIR_SERVER;
	di = sslwall_dir_idx(d);
	seq_flag = d == DIR_CLIENT ? SSLWALL_FLOW_SEQ_CLIENT : SSLWALL_FLOW_SEQ_SERVER;
	seq = p->seq;
	if (p->tcp_flags & TCP_FLAG_SYN) {
		/* The handshake fixes where each direction's bytes start (ISN + 1; data in a SYN,
		 * TCP Fast Open, starts there too). Only the first SYN of a direction: a later one
		 * with another ISN is one the peer's stack ignores, and must not move the stream. */
		seq++;
		if (f->stage != SSLWALL_STAGE_MIDSTREAM && !(f->flags & seq_flag)) {
			f->seq_next[di] = seq;
			f->flags |= seq_flag;
		}
		if (p->payload_len)
			f->flags |= SSLWALL_FLOW_FASTOPEN;
	}
	p->seq = seq;
	len = p->payload_len;
	if (len == 0)
		return VERDICT_PASS;

	/* Judged in stream order, so no segment the receiver discards can stand in for the bytes it
	 * keeps (docs/dataplane.md, "Stream order"). A flow joined midway has no known start: every
	 * segment gets its own look there (judge_payload). */
	if (f->stage != SSLWALL_STAGE_MIDSTREAM && (f->flags & seq_flag)) {
		__s32 ahead = seq - f->seq_next[di];

		if ((__s32)(seq + len - f->seq_next[di]) <= 0) {
			/* All bytes already judged: a retransmission passes as before, unless it rewrites
			 * the hello bytes we judged (the first copy was one the receiver dropped). */
			if (!rewrites_header(skb, f, p, d))
				return VERDICT_PASS;
			j = JUDGE_VIOLATION;
			goto judged;
		}
		if (ahead > 0) {
			/* Out of order: the receiver holds these bytes until the gap before them fills,
			 * and that segment is judged. A client's bytes past what its hello may hold are a
			 * violation wherever they sit: the gap could be filled by a hello that passes. */
			sslwall_count(SSLWALL_CNT_OUT_OF_ORDER);
			if (d != DIR_CLIENT || !client_over_limit(f, seq + len))
				return VERDICT_PASS;
			j = JUDGE_VIOLATION;
			goto judged;
		}
		if (ahead < 0) {
			/* Overlaps judged bytes: those must match, the rest is new. */
			if (rewrites_header(skb, f, p, d)) {
				j = JUDGE_VIOLATION;
				goto judged;
			}
			p->payload_off -= ahead;
			p->payload_len += ahead;
			p->seq = f->seq_next[di];
			seq = p->seq;
			len = p->payload_len;
		}
	}

	pending = f->pending_bytes + len;
	f->pending_bytes = pending > 0xffff ? 0xffff : pending;
	if (pending > PENDING_MAX && f->stage != SSLWALL_STAGE_MIDSTREAM)
		j = JUDGE_VIOLATION;	/* undecided for too long: no TLS answer ever came */
	else
		j = judge_payload(skb, f, cfg, p, d);
	if (j == JUDGE_UNREAD)
		return VERDICT_PASS;	/* not seen, so not marked judged: a retransmission gets its look */

judged:
	if (j == JUDGE_VIOLATION) {
		f->cls = SSLWALL_CLASS_PLAINTEXT;
		f->verdict = verdict_for(cfg);
		int client_local = local_is_lo(p, egress) == f->client_is_lo;

		sslwall_count_class(f->cls, f->verdict);
		/* A remote peer's connection to a port here (a scanner, a stray client) is counted
		 * apart as well: the rollout judges a cohort by its own clients. */
		if (!client_local)
			sslwall_count(f->verdict == SSLWALL_VERDICT_BLOCKED ? SSLWALL_CNT_REMOTE_BLOCKED : SSLWALL_CNT_REMOTE_REPORTED);
		report_violation(skb, p, f, egress, client_local);
		if (f->verdict == SSLWALL_VERDICT_BLOCKED) {
			sslwall_count(SSLWALL_CNT_PKT_DROPPED);
			return VERDICT_DROP;
		}
		return VERDICT_PASS;
	}
	if (f->stage != SSLWALL_STAGE_MIDSTREAM) {
		f->seq_next[di] = seq + len;
		f->flags |= seq_flag;
	}
	if (j == JUDGE_DECIDED)
		sslwall_count_class(f->cls, SSLWALL_VERDICT_ALLOWED);
	return VERDICT_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
