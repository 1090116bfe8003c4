/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Ethernet / IPv4 / IPv6 (with extension headers) / TCP parsing with direct
 * packet access: headers of TCP packets are in the linear area on every path
 * we attach to (local stack on egress, GRO on ingress); when they are not,
 * one bpf_skb_pull_data makes them so. Payload is read with
 * bpf_skb_load_bytes, which also works on paged data. */
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
#define IPV6_MAX_EXT 4		/* extension headers walked before giving up (fail open, counted) */
#define PARSE_PULL_LEN 256	/* enough for Ethernet + IPv6 + 4 extension headers + TCP with options */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_TCP = 1,	/* not ours: pass untouched */
	PARSE_TRUNCATED = 2,	/* headers shorter than they claim: pass, count */
	PARSE_FRAGMENT = 3,	/* non-first fragment: no TCP header to read: pass, count */
};

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

static __always_inline int parse_ipv4(void *data, void *data_end, struct sslwall_pkt *p)
{
	struct iphdr *ip = data + ETH_HLEN;
	__u32 ihl, tot;

	if ((void *)(ip + 1) > data_end)
		return PARSE_TRUNCATED;
	if (ip->protocol != IPPROTO_TCP)
		return PARSE_NOT_TCP;
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_FRAGMENT;
	ihl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (ihl < sizeof(*ip) || tot < ihl)
		return PARSE_TRUNCATED;
	return parse_tcp(data, data_end, ETH_HLEN + ihl, tot - ihl, 0, &ip->saddr, &ip->daddr, p);
}

static __always_inline int parse_ipv6(void *data, void *data_end, struct sslwall_pkt *p)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u32 off = ETH_HLEN + sizeof(*ip6), len;
	__u8 next;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_TRUNCATED;
	next = ip6->nexthdr;
	len = bpf_ntohs(ip6->payload_len);

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 *ext;
		__u32 ext_len;

		if (next == IPPROTO_TCP)
			break;
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_FRAGMENT)
			return PARSE_NOT_TCP;
		if (off > PARSE_PULL_LEN)
			return PARSE_TRUNCATED;
		ext = data + off;
		if ((void *)(ext + 8) > data_end)
			return PARSE_TRUNCATED;
		if (next == IPPROTO_FRAGMENT) {
			/* offset field (13 bits) in bytes 2-3; non-zero: not the first fragment */
			if ((((__u16)ext[2] << 8 | ext[3]) & 0xfff8) != 0)
				return PARSE_FRAGMENT;
			ext_len = 8;
		} else {
			ext_len = ((__u32)ext[1] + 1) * 8;
		}
		if (ext_len > len)
			return PARSE_TRUNCATED;
		next = ext[0];
		off += ext_len;
		len -= ext_len;
	}
	if (next != IPPROTO_TCP)
		return PARSE_TRUNCATED;	/* more extension headers than we walk */
	return parse_tcp(data, data_end, off, len, 1, &ip6->saddr, &ip6->daddr, p);
}

static __always_inline int parse_l3(struct __sk_buff *skb, struct sslwall_pkt *p)
{
	void *data, *data_end;

	sslwall_skb_bounds(skb, &data, &data_end);
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, data_end, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, data_end, p);
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
