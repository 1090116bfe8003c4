// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Transparent TLS, kernel side. Attached to the agent's --cgroup folder:
 *  - sslwall_ttls_connect4 / _connect6 (cgroup/connect4, cgroup/connect6): a TCP connect()
 *    to a wrapped destination (port in ttls.ports, address in ttls.cidrs) is rewritten to
 *    the local proxy, 127.0.0.1:proxy_port (IPv4), [::1]:proxy_port (IPv6) or
 *    [::ffff:127.0.0.1]:proxy_port (IPv4-mapped), and the original destination is kept by
 *    socket cookie.
 *  - sslwall_ttls_sockops (sockops): once such a socket is established, files its original
 *    destination under the client's local endpoint, which the proxy sees as the remote end
 *    of the socket it accepted; when the socket closes, deletes both entries.
 * Never wrapped: the agent's own process, processes under the sslwall-bypass cgroup,
 * destinations seen speaking TLS, anything while the config has no ttls member.
 * See docs/ttls-kernel.md.
 *
 * Failure policy: fail open. These hooks always return 1 (let the connect() proceed): a
 * missing config, or an original destination that cannot be stored, leaves the destination
 * untouched and the connection goes direct (counted). The classifier still judges it like
 * any other flow, so in active mode plaintext to that destination is blocked there, not here.
 * A wrapped socket whose entry cannot be filed for the proxy (PUBLISH_FAILED) reaches the
 * proxy, which finds no original destination and closes it: that one fails closed, since
 * nobody knows any more where it was going.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "shared.h"
#include "lib/ttls.h"

#define SOCK_STREAM 1
#define CONNECT_PROCEED 1

static __always_inline int tcp_stream(const struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

SEC("cgroup/connect4")
int sslwall_ttls_connect4(struct bpf_sock_addr *ctx)
{
	struct sslwall_ttls_addr dst = {};
	const struct sslwall_ttls_config *cfg;
	__u32 gen, ip4;

	if (!tcp_stream(ctx))
		return CONNECT_PROCEED;
	cfg = sslwall_ttls_cfg(&gen);
	if (!cfg)
		return CONNECT_PROCEED;
	ip4 = ctx->user_ip4;
	__builtin_memcpy(dst.addr, &ip4, 4);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	dst.family = SSLWALL_FAMILY_IPV4;
	if (!sslwall_ttls_wrapped(cfg, gen, &dst))
		return CONNECT_PROCEED;

	if (sslwall_ttls_remember(ctx, &dst)) {
		sslwall_ttls_count(SSLWALL_TTLS_CNT_REMEMBER_FAILED);
		return CONNECT_PROCEED;
	}
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->proxy_port);
	sslwall_ttls_count(SSLWALL_TTLS_CNT_REDIRECTED);
	return CONNECT_PROCEED;
}

SEC("cgroup/connect6")
int sslwall_ttls_connect6(struct bpf_sock_addr *ctx)
{
	struct sslwall_ttls_addr dst = {};
	const struct sslwall_ttls_config *cfg;
	__u32 gen, ip6[4];
	int mapped;

	if (!tcp_stream(ctx))
		return CONNECT_PROCEED;
	cfg = sslwall_ttls_cfg(&gen);
	if (!cfg)
		return CONNECT_PROCEED;
	/* One 4-byte load per word: the context allows no wider access to user_ip6. */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	/* ::ffff:a.b.c.d is IPv4 on the wire: matched against the IPv4 CIDRs, as the classifier
	 * keys its flow as IPv4. */
	mapped = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
	if (mapped) {
		__builtin_memcpy(dst.addr, &ip6[3], 4);
		dst.family = SSLWALL_FAMILY_IPV4;
	} else {
		__builtin_memcpy(dst.addr, ip6, 16);
		dst.family = SSLWALL_FAMILY_IPV6;
	}
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	if (!sslwall_ttls_wrapped(cfg, gen, &dst))
		return CONNECT_PROCEED;

	if (sslwall_ttls_remember(ctx, &dst)) {
		sslwall_ttls_count(SSLWALL_TTLS_CNT_REMEMBER_FAILED);
		return CONNECT_PROCEED;
	}
	/* An IPv4-mapped destination stays IPv4: a v4-only proxy listener still gets it. */
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(cfg->proxy_port);
	sslwall_ttls_count(SSLWALL_TTLS_CNT_REDIRECTED);
	return CONNECT_PROCEED;
}

/* The socket's local endpoint, IPv4-mapped folded to IPv4 like the proxy's view of it. */
static __always_inline void local_endpoint(const struct bpf_sock_ops *skops, struct sslwall_ttls_addr *a)
{
	__u32 ip6[4];

	a->port = skops->local_port;	/* host order in bpf_sock_ops, unlike remote_port */
	if (skops->family == 2 /* AF_INET */) {
		ip6[0] = skops->local_ip4;
		__builtin_memcpy(a->addr, &ip6[0], 4);
		a->family = SSLWALL_FAMILY_IPV4;
		return;
	}
	ip6[0] = skops->local_ip6[0];
	ip6[1] = skops->local_ip6[1];
	ip6[2] = skops->local_ip6[2];
	ip6[3] = skops->local_ip6[3];
	if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff)) {
		__builtin_memcpy(a->addr, &ip6[3], 4);
		a->family = SSLWALL_FAMILY_IPV4;
	} else {
		__builtin_memcpy(a->addr, ip6, 16);
		a->family = SSLWALL_FAMILY_IPV6;
	}
}

/* Failure policy: as the file says. Sockets this object did not redirect (no cookie entry)
 * cost one hash lookup per callback and are left alone; the proxy's own accepted sockets
 * (PASSIVE_ESTABLISHED) are not looked at. */
SEC("sockops")
int sslwall_ttls_sockops(struct bpf_sock_ops *skops)
{
	struct sslwall_ttls_orig *o;
	struct sslwall_ttls_addr local = {};
	__u64 cookie;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	o = bpf_map_lookup_elem(&sslwall_ttls_by_cookie, &cookie);
	if (!o)
		return 1;

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Armed here, before the SYN, so a connection that never establishes (proxy down,
		 * reset) is cleaned up too. The setter replaces the flags: keep the others. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		local_endpoint(skops, &local);
		o->local = local;
		if (bpf_map_update_elem(&sslwall_ttls_by_local, &local, o, BPF_ANY))
			sslwall_ttls_count(SSLWALL_TTLS_CNT_PUBLISH_FAILED);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1] is the new state. The callback runs before the kernel releases the
		 * socket's port, but the endpoint is taken from the entry anyway. */
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		if (o->local.family)
			bpf_map_delete_elem(&sslwall_ttls_by_local, &o->local);
		bpf_map_delete_elem(&sslwall_ttls_by_cookie, &cookie);
		sslwall_ttls_count(SSLWALL_TTLS_CNT_CLOSED);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
