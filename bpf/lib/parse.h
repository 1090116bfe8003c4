/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Ethernet (or no link header: tun, WireGuard, ipip) / IPv4 / IPv6 (with extension headers) /
 * TCP parsing with direct packet access: headers of TCP packets are in the linear area on
 * every path we attach to (local stack on egress, GRO on ingress); when they are not, one
 * bpf_skb_pull_data makes them so. Payload is read with bpf_skb_load_bytes, which also works
 * on paged data. What the parser does with input it cannot judge (fragments, long IPv6
 * header chains, length fields of 0) is docs/dataplane.md's "Parser policies". */
#ifndef SSLWALL_PARSE_H
#define SSLWALL_PARSE_H

#include "flow.h"
#include "verifier.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS 60
#define IPPROTO_AH 51
#define IPV6_MAX_EXT 6		/* extension headers walked; a longer chain is PARSE_EXT_LIMIT */
#define PARSE_PULL_LEN 256	/* headers (link to TCP) must start within these bytes */
#define L2_MAX 32		/* largest link header we accept before the network header */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_TCP = 1,	/* not ours: pass untouched */
	PARSE_TRUNCATED = 2,	/* headers shorter than they claim: pass, count */
	PARSE_FRAGMENT = 3,	/* a TCP fragment (first or later): never judged (policy in classify) */
	PARSE_EXT_LIMIT = 4,	/* IPv6 chain past what we walk: maybe TCP, unjudged (policy in classify) */
};

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/*
 * Where the network header starts, from skb->data: 14 on Ethernet, 0 on devices without a
 * link header (tun, WireGuard, ipip), where tc sees the IP header first. The kernel knows
 * (network_header, set by the IP layer on egress and by the receive path on ingress, which
 * also runs before tc); the packet does not say. head and data read through the kernel's
 * sk_buff are plain numbers to the verifier (pointers to bytes, not to a struct).
 */
static __always_inline __u64 network_offset(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);

	return (unsigned long)kskb->head + kskb->network_header - (unsigned long)kskb->data;
}

struct sslwall_pkt {
	struct sslwall_flow_key key;
	__u32 seq;
	__u32 ack;		/* acknowledgment number (meaningful with TCP_FLAG_ACK) */
	__u32 payload_off;
	__u32 payload_len;
	__u8 tcp_flags;
	__u8 sender_is_lo;	/* the packet's source is the key's lo endpoint */
};

static __always_inline int parse_tcp(void *data, void *data_end, __u32 l4_off, __u32 l4_len, int v6,
				     const void *saddr, const void *daddr, struct sslwall_pkt *p)
{
	struct tcphdr *tcp;
	__u32 doff;

	/* Headers past the first PARSE_PULL_LEN bytes are not looked for (fail open, counted);
	 * the constant bound also keeps the packet offset small for older verifiers. */
	if (l4_off > PARSE_PULL_LEN)
		return PARSE_TRUNCATED;
	tcp = data + l4_off;
	if ((void *)(tcp + 1) > data_end)
		return PARSE_TRUNCATED;
	doff = tcp->doff * 4;
	if (doff < sizeof(*tcp) || doff > l4_len)
		return PARSE_TRUNCATED;

	p->seq = bpf_ntohl(tcp->seq);
	p->ack = bpf_ntohl(tcp->ack_seq);
	p->tcp_flags = ((__u8 *)tcp)[13];
	p->payload_off = l4_off + doff;
	p->payload_len = l4_len - doff;
	if (v6)
		p->sender_is_lo = sslwall_key_v6(&p->key, saddr, bpf_ntohs(tcp->source), daddr, bpf_ntohs(tcp->dest));
	else
		p->sender_is_lo = sslwall_key_v4(&p->key, *(const __be32 *)saddr, bpf_ntohs(tcp->source),
						 *(const __be32 *)daddr, bpf_ntohs(tcp->dest));
	return PARSE_OK;
}

/* skb_len: the whole packet from the network header, for length fields of 0 (BIG TCP). */
static __always_inline int parse_ipv4(void *data, void *data_end, __u64 l2, __u32 skb_len, struct sslwall_pkt *p)
{
	struct iphdr *ip = data + l2;
	__u32 ihl, tot;

	if ((void *)(ip + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip->version != 4)
		return PARSE_NOT_TCP;
	if (ip->protocol != IPPROTO_TCP)
		return PARSE_NOT_TCP;
	/* MF or an offset: any fragment, the first included (its TCP payload is cut short). */
	if (ip->frag_off & bpf_htons(0x3fff))
		return PARSE_FRAGMENT;
	ihl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* BIG TCP for IPv4 (GSO packets over 64 KiB) sets tot_len 0: the packet's length rules. */
	if (tot == 0)
		tot = skb_len;
	if (ihl < sizeof(*ip) || tot < ihl)
		return PARSE_TRUNCATED;
	return parse_tcp(data, data_end, l2 + ihl, tot - ihl, 0, &ip->saddr, &ip->daddr, p);
}

static __always_inline int parse_ipv6(void *data, void *data_end, __u64 l2, __u32 skb_len, struct sslwall_pkt *p)
{
	struct ipv6hdr *ip6 = data + l2;
	__u32 off = l2 + sizeof(*ip6), len;
	__u8 next;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip6->version != 6)
		return PARSE_NOT_TCP;
	next = ip6->nexthdr;
	len = bpf_ntohs(ip6->payload_len);
	/* A jumbogram (RFC 2675) or BIG TCP for IPv6 says 0 here: the packet's length rules. */
	if (len == 0 && skb_len >= sizeof(*ip6))
		len = skb_len - sizeof(*ip6);

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 *ext;
		__u32 ext_len;

		if (next == IPPROTO_TCP)
			break;
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_FRAGMENT && next != IPPROTO_AH)
			return PARSE_NOT_TCP;
		/* A chain the sender padded past our window is not a reason to look away. */
		if (off > PARSE_PULL_LEN)
			return PARSE_EXT_LIMIT;
		ext = data + off;
		if ((void *)(ext + 8) > data_end)
			return PARSE_TRUNCATED;
		if (next == IPPROTO_FRAGMENT) {
			/* Fragments are never judged: a first fragment may carry TCP with its payload cut
			 * short. The fragment header names the next header in every fragment: TCP, or an
			 * extension header that may hide TCP, makes it ours; any other protocol's
			 * fragments (UDP's are common) are not. */
			__u8 up = ext[0];

			return up == IPPROTO_TCP || up == IPPROTO_HOPOPTS || up == IPPROTO_ROUTING || up == IPPROTO_DSTOPTS ||
				       up == IPPROTO_FRAGMENT || up == IPPROTO_AH
				   ? PARSE_FRAGMENT
				   : PARSE_NOT_TCP;
		}
		if (next == IPPROTO_AH)
			ext_len = ((__u32)ext[1] + 2) * 4;	/* RFC 4302: in 4-byte units, minus 2 */
		else
			ext_len = ((__u32)ext[1] + 1) * 8;
		if (ext_len > len)
			return PARSE_TRUNCATED;
		next = ext[0];
		off += ext_len;
		len -= ext_len;
	}
	if (next != IPPROTO_TCP || off > PARSE_PULL_LEN)
		return PARSE_EXT_LIMIT;	/* more extension headers (or bytes of them) than we walk */
	return parse_tcp(data, data_end, off, len, 1, &ip6->saddr, &ip6->daddr, p);
}

static __always_inline int parse_l3(struct __sk_buff *skb, struct sslwall_pkt *p)
{
	void *data, *data_end;
	/* 64 bits, tested as such: with a __u32, clang bounds a zero-extended copy and adds the
	 * original to the packet pointer: "R4 offset is outside of the packet". */
	__u64 l2 = network_offset(skb);
	__u32 skb_len;

	if (l2 > L2_MAX)
		return PARSE_NOT_TCP;	/* a link header we do not know (or no network header set) */
	skb_len = skb->len > l2 ? skb->len - l2 : 0;
	sslwall_skb_bounds(skb, &data, &data_end);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, data_end, l2, skb_len, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, data_end, l2, skb_len, p);
	return PARSE_NOT_TCP;
}

static __always_inline int parse_packet(struct __sk_buff *skb, struct sslwall_pkt *p)
{
	int r = parse_l3(skb, p);

	if (r != PARSE_TRUNCATED || skb->len <= skb->data_end - skb->data)
		return r;
	/* Headers in paged data (rare): make them linear once and parse again. */
	if (bpf_skb_pull_data(skb, skb->len < PARSE_PULL_LEN ? skb->len : PARSE_PULL_LEN) < 0)
		return PARSE_TRUNCATED;
	return parse_l3(skb, p);
}

#endif /* SSLWALL_PARSE_H */
