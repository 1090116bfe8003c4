/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Every struct and enum that crosses between the kernel programs and user space.
 * This header is the single source of truth: the TypeScript codecs in
 * agent/generated/shared.ts are generated from the BTF of the built objects
 * (tools/gen-shared-types.mjs), and test/bpf/layout.test.ts checks them against a
 * fresh compile of this header and against the BTF of the maps the kernel created.
 *
 * Rules for editing: fixed-width types only, explicit padding, no bitfields
 * (the generator reads byte offsets). A pinned map whose key or value size
 * no longer matches is replaced at the next start (its state is lost).
 */
#ifndef SSLWALL_SHARED_H
#define SSLWALL_SHARED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum sslwall_class {
	SSLWALL_CLASS_PENDING = 0,	/* payload not yet decisive */
	SSLWALL_CLASS_TLS = 1,		/* both directions opened with a TLS record */
	SSLWALL_CLASS_STARTTLS = 2,	/* allowed plaintext preamble, then TLS */
	SSLWALL_CLASS_CONNECT = 3,	/* HTTP CONNECT, its answer, then TLS */
	SSLWALL_CLASS_BYPASS = 4,	/* port, CIDR or bypass cgroup */
	SSLWALL_CLASS_PLAINTEXT = 5,	/* a violation */
	/* Joined midway and never showed TLS framing in both directions, nor text, within the
	 * pending budget: let be (binary, perhaps encrypted) but reported as what it is. */
	SSLWALL_CLASS_MIDSTREAM_UNKNOWN = 6,
	SSLWALL_CLASS_COUNT = 7,
};

enum sslwall_verdict {
	SSLWALL_VERDICT_ALLOWED = 0,
	SSLWALL_VERDICT_REPORTED = 1,
	SSLWALL_VERDICT_BLOCKED = 2,
	SSLWALL_VERDICT_COUNT = 3,
};

enum sslwall_mode {
	SSLWALL_MODE_OFF = 0,
	SSLWALL_MODE_PASSIVE = 1,
	SSLWALL_MODE_ACTIVE = 2,
};

/* Plaintext negotiation a server port allows (low nibble of a port role). */
enum sslwall_proto {
	SSLWALL_PROTO_NONE = 0,
	SSLWALL_PROTO_SMTP = 1,
	SSLWALL_PROTO_IMAP = 2,
	SSLWALL_PROTO_POP3 = 3,
	SSLWALL_PROTO_FTP = 4,
	SSLWALL_PROTO_POSTGRES = 5,
	SSLWALL_PROTO_MYSQL = 6,
	SSLWALL_PROTO_CONNECT = 7,
};

enum sslwall_port_role_bits {
	SSLWALL_ROLE_PROTO_MASK = 0x0f,
	/* Bypassed only when the server is this host (the agent's own metrics listener):
	 * this host's clients of the same port on other hosts are still judged. */
	SSLWALL_ROLE_LOCAL_BYPASS = 0x40,
	/* The agent's control plane (etcd): the agent's own connections to this server port are
	 * bypassed; other processes', and the agent's to other ports (the TTLS proxy relaying an
	 * application's bytes), are judged. */
	SSLWALL_ROLE_SELF = 0x20,
	SSLWALL_ROLE_BYPASS = 0x80,
};

/* Where a flow stands in its classification; only meaningful while pending. */
enum sslwall_stage {
	SSLWALL_STAGE_HELLO = 0,	/* expecting a TLS record first in each direction */
	SSLWALL_STAGE_NEGOTIATE = 1,	/* plaintext preamble of an allowed protocol */
	SSLWALL_STAGE_UPGRADE = 2,	/* upgrade asked for: the client's next payload must be TLS */
	SSLWALL_STAGE_MIDSTREAM = 3,	/* opened before we saw it: the next payload decides */
};

enum sslwall_flow_flags {
	SSLWALL_FLOW_SYN_SEEN = 1 << 0,
	SSLWALL_FLOW_CLIENT_TLS = 1 << 1,	/* client's first record after any preamble was TLS */
	SSLWALL_FLOW_SERVER_TLS = 1 << 2,
	SSLWALL_FLOW_SEQ_CLIENT = 1 << 3,	/* seq_next[0] is valid */
	SSLWALL_FLOW_SEQ_SERVER = 1 << 4,	/* seq_next[1] is valid */
	SSLWALL_FLOW_FASTOPEN = 1 << 5,		/* data rode in the SYN */
	SSLWALL_FLOW_UPGRADE_REPLIED = 1 << 6,	/* the server answered the upgrade command */
	SSLWALL_FLOW_HELLO_SEQ = 1 << 7,	/* hdr_seq[0] is valid (never in entries migrated from older builds) */
};

/* Indexes into the per-CPU counters array. Class/verdict pairs start at
 * SSLWALL_CNT_CLASS_BASE: index = base + class * SSLWALL_VERDICT_COUNT + verdict. */
enum sslwall_counter {
	SSLWALL_CNT_FLOWS_CREATED = 0,
	SSLWALL_CNT_FLOWS_CLOSED = 1,
	SSLWALL_CNT_FLOW_INSERT_FAILED = 2,
	SSLWALL_CNT_PKT_TRUNCATED = 3,
	SSLWALL_CNT_PKT_DROPPED = 4,
	SSLWALL_CNT_EVENTS_LOST = 5,
	SSLWALL_CNT_FRAGMENTS = 6,	/* TCP fragments (IPv4 or IPv6): never judged; dropped in active mode */
	SSLWALL_CNT_NO_CONFIG = 7,
	SSLWALL_CNT_CLASS_BASE = 8,
	/* Violations whose client is the remote side (a peer connecting to a port of this
	 * host): also counted in the class/verdict pairs, which stay totals. */
	SSLWALL_CNT_REMOTE_REPORTED = SSLWALL_CNT_CLASS_BASE + SSLWALL_CLASS_COUNT * SSLWALL_VERDICT_COUNT,
	SSLWALL_CNT_REMOTE_BLOCKED = SSLWALL_CNT_REMOTE_REPORTED + 1,
	/* Agent SYNs bypassed but not remembered in sslwall_self_flows (map full). */
	SSLWALL_CNT_SELF_INSERT_FAILED = SSLWALL_CNT_REMOTE_REPORTED + 2,
	/* IPv6 header chains longer than the parser walks (passed, or dropped in active mode). */
	SSLWALL_CNT_EXT_HDR_LIMIT = SSLWALL_CNT_REMOTE_REPORTED + 3,
	/* Of the TCP fragments and over-long chains, those dropped in active mode. */
	SSLWALL_CNT_PARSE_DROPPED = SSLWALL_CNT_REMOTE_REPORTED + 4,
	/* Segments of an undecided flow ahead of the next expected byte: passed unjudged. */
	SSLWALL_CNT_OUT_OF_ORDER = SSLWALL_CNT_REMOTE_REPORTED + 5,
	/* Inbound handshakes the host answered (SYN-ACK sent), kept in sslwall_half_open. */
	SSLWALL_CNT_HALF_OPEN_CREATED = SSLWALL_CNT_REMOTE_REPORTED + 6,
	/* Half-open entries moved into sslwall_flows when the handshake completed. */
	SSLWALL_CNT_HALF_OPEN_PROMOTED = SSLWALL_CNT_REMOTE_REPORTED + 7,
	SSLWALL_CNT_COUNT = SSLWALL_CNT_REMOTE_REPORTED + 8,
};

enum sslwall_event_type {
	SSLWALL_EVENT_VIOLATION = 1,
};

#define SSLWALL_FAMILY_IPV4 4
#define SSLWALL_FAMILY_IPV6 6
#define SSLWALL_COMM_LEN 16

/*
 * A TCP flow, independent of direction: the (address, port) endpoint that
 * sorts lower goes first, so both directions of a flow find one entry with
 * one lookup. IPv4 addresses use the first 4 bytes; ports in host order.
 */
struct sslwall_flow_key {
	__u8 addr_lo[16];
	__u8 addr_hi[16];
	__u16 port_lo;
	__u16 port_hi;
	__u8 family;
	__u8 pad[3];
};

/*
 * An IPv4 flow's key in sslwall_flows4: the first 4 bytes of each address of struct
 * sslwall_flow_key, and its ports, with the same names so that a migration copies them field by
 * field. 12 bytes rather than 40: the map hashes and compares the whole key on every lookup
 * (bpf/lib/maps.h). IPv6 flows keep the full key, in sslwall_flows.
 */
struct sslwall_flow_key4 {
	__u8 addr_lo[4];
	__u8 addr_hi[4];
	__u16 port_lo;
	__u16 port_hi;
};

/* The local side of a flow (struct sslwall_flow's owner): the process that opened it, recorded at
 * connect() (pid 0 and no comm for a local server), and the cgroup v2 id of the local socket,
 * the client's or the listener's (0: not known). */
struct sslwall_owner {
	__u32 pid;
	char comm[SSLWALL_COMM_LEN];
	__u8 pad[4];
	__u64 cgroup_id;
};

/* Classification state of a flow (value of the flows map). Index [0] is the
 * client-to-server direction, [1] server-to-client. */
struct sslwall_flow {
	/* CLOCK_MONOTONIC when the flow was opened: to a scheduler tick from the classifier
	 * (bpf_ktime_get_coarse_ns: the precise clock cost each SYN some 50-80 ns more here,
	 * docs/bench.md "flow open"), exact from the lifecycle iterators, off the packet path. An
	 * age, never a duration between two packets. */
	__u64 first_seen_ns;
	__u32 seq_next[2];	/* next byte expected in order (from the SYN / SYN-ACK when seen) */
	__u16 plain_bytes;	/* plaintext preamble bytes spent from the negotiation budget */
	__u16 pending_bytes;	/* payload bytes let through while undecided (saturates) */
	__u8 cls;		/* enum sslwall_class */
	__u8 verdict;		/* enum sslwall_verdict */
	__u8 proto;		/* enum sslwall_proto */
	__u8 stage;		/* enum sslwall_stage */
	__u8 flags;		/* enum sslwall_flow_flags */
	__u8 client_is_lo;	/* 1: the client is the key's lo endpoint */
	__u8 hdr_len[2];	/* bytes buffered in hdr[] while a record header is split */
	__u8 hdr[2][16];	/* first bytes of each direction's first record (11 used) */
	__u32 hdr_seq[2];	/* sequence number of hdr[d][0]: a retransmission must not rewrite it */
	/* Last: the packet paths read the fields above, and only a violation report reads this.
	 * In the flow rather than a map of its own: a second map would cost every connection
	 * another insert at its SYN and another delete at its close (docs/bench.md, connect_rate). */
	struct sslwall_owner owner;
};

/* Runtime knobs; two slots, the active one named by the active_gen map, so a
 * new config (with its port roles and CIDRs) takes effect in one write. */
struct sslwall_config {
	__u32 mode;			/* enum sslwall_mode */
	__u32 negotiation_budget;	/* plaintext bytes a STARTTLS/CONNECT preamble may use */
	__u64 bypass_cgroup_id;		/* 0: none */
	__u32 bypass_cgroup_level;	/* depth of that cgroup, for bpf_skb_ancestor_cgroup_id */
	__u32 self_tgid;		/* the agent's process: its connections are never judged (0: none) */
};

/* LPM trie key of the bypass CIDRs: gen and family are part of the prefix. */
struct sslwall_cidr_key {
	__u32 prefixlen;	/* 16 + CIDR bits */
	__u8 gen;
	__u8 family;
	__u8 addr[16];
};

/* A violation, sent through the events ring buffer. s = the side that opened the connection. */
struct sslwall_event {
	__u64 ts_ns;
	__u32 type;		/* enum sslwall_event_type */
	__u32 pid;		/* 0 when unknown (server side, flows older than the agent) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 cls;
	__u8 verdict;
	__u8 proto;
	__u8 egress;		/* 1: seen leaving this host */
	__u8 client_local;	/* 1: this host opened the connection; 0: a remote peer did */
	__u8 pad[6];
	char comm[SSLWALL_COMM_LEN];
	__u64 cgroup_id;	/* cgroup v2 id of the local socket (client or listener); 0 when unknown */
};

/* Transparent TLS (bpf/ttls.bpf.c). Indexes into sslwall_ttls_counters. */
enum sslwall_ttls_counter {
	SSLWALL_TTLS_CNT_REDIRECTED = 0,	/* connect() rewritten to the local proxy */
	SSLWALL_TTLS_CNT_REMEMBER_FAILED = 1,	/* original destination not stored: went direct */
	SSLWALL_TTLS_CNT_TLS_DIRECT = 2,	/* destination known to speak TLS: went direct */
	SSLWALL_TTLS_CNT_PUBLISH_FAILED = 3,	/* established, but not findable by the proxy */
	SSLWALL_TTLS_CNT_CLOSED = 4,		/* a wrapped socket closed and its entries went */
	SSLWALL_TTLS_CNT_COUNT = 5,
};

/* One TCP endpoint. IPv4 (also an IPv4-mapped IPv6 address) uses the first 4 bytes of
 * addr with family 4; the rest stays zero, so equal endpoints are equal bytes. Port in
 * host order. */
struct sslwall_ttls_addr {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* A wrapped connection: where the client asked to go, the client's own endpoint once
 * established (zero before), and the process that called connect(). */
struct sslwall_ttls_orig {
	struct sslwall_ttls_addr dst;
	struct sslwall_ttls_addr local;
	__u32 pid;
	__u32 pad;
};

/* Runtime knobs of the ttls programs; two slots, the one in force named by
 * sslwall_ttls_active_gen, as for sslwall_config. */
struct sslwall_ttls_config {
	__u32 enabled;			/* 0: the config has no ttls member; nothing is wrapped */
	__u32 agent_tgid;		/* the agent's own connects are never wrapped */
	__u64 bypass_cgroup_id;		/* 0: none */
	__u32 bypass_cgroup_level;	/* depth of that cgroup, for bpf_get_current_ancestor_cgroup_id */
	__u16 proxy_port;		/* the local proxy, on 127.0.0.1 and ::1 */
	__u16 pad;
};

#endif /* SSLWALL_SHARED_H */
