/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading IPv6 packets (extension headers included) and rewriting one
 * endpoint with every checksum kept right. IPv6 has no header checksum, so
 * an address change shows up only in the transport checksum, through its
 * pseudo-header (ICMPv6 has one too, unlike ICMP).
 */
#ifndef IPMASQ_PACKET6_H
#define IPMASQ_PACKET6_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "packet.h"

#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG   2
#define ICMPV6_TIME_EXCEED  3
#define ICMPV6_PARAMPROB    4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY   129

/* Extension headers walked before giving up on a packet (verifier bound).
 * Real traffic carries one or two. */
#define IPM_MAX_EXT_HEADERS 6

/* Offset of the addresses in struct ipv6hdr. */
#define IPV6_SADDR_OFF 8
#define IPV6_DADDR_OFF 24

/* struct flow4 for IPv6. */
struct flow6 {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 frag;     /* enum frag_kind */
	__be32 fragid; /* identification of the fragment header */
	__u32 l4_off;
	__u32 end; /* end of the IP packet: bytes after it (padding) are not ours */
	__be32 tcp_seq;
	__be32 tcp_ack;
	__be16 tcp_win;
	__u16 pad2;
};

static __always_inline bool is_icmp6_error(__u8 type)
{
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

static __always_inline bool addr6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr6_copy(__be32 *dst, const __be32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/*
 * Fills f from the IPv6 packet whose header starts at off (ETH_HLEN for a
 * packet, further in for the quote of an ICMPv6 error): addresses, then the
 * extension headers up to the transport header, then ports or the echo
 * identifier. A header is read with bpf_skb_load_bytes, which also works on
 * non-linear packets. A quote (quote = true) needs only 8 transport bytes,
 * and its length fields describe the original packet, not the quote.
 */
static __always_inline enum parse_result parse_ipv6_at(struct __sk_buff *skb, __u32 off,
						       struct flow6 *f, bool quote)
{
	struct ipv6hdr ip6;
	__u8 nexthdr;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
		return PARSE_MALFORMED;
	if (ip6.version != 6)
		return PARSE_MALFORMED;
	__builtin_memcpy(f->saddr, &ip6.saddr, 16);
	__builtin_memcpy(f->daddr, &ip6.daddr, 16);
	/* A quote's payload length is the original packet's: the caller
	 * bounds the quote. Length 0 is legal only for a BIG TCP super-packet
	 * (GSO). */
	if (quote) {
		f->end = skb->len;
	} else if (ip6.payload_len) {
		f->end = off + sizeof(ip6) + bpf_ntohs(ip6.payload_len);
		if (f->end > skb->len)
			f->end = skb->len;
	} else if (skb->gso_size) {
		f->end = skb->len;
	} else {
		return PARSE_MALFORMED;
	}
	nexthdr = ip6.nexthdr;
	off += sizeof(ip6);

	/* One more round than headers: the last one reaches the transport. */
	for (int i = 0; i <= IPM_MAX_EXT_HEADERS; i++) {
		__u8 ext[8];

		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, ext, 2))
				return PARSE_MALFORMED;
			nexthdr = ext[0];
			off += (ext[1] + 1) * 8;
			/* A header cut by the payload length is garbage. */
			if (off > f->end)
				return PARSE_MALFORMED;
			continue;
		case IPPROTO_FRAGMENT: {
			__u16 frag_off;

			if (off + 8 > f->end || bpf_skb_load_bytes(skb, off, ext, 8))
				return PARSE_MALFORMED;
			nexthdr = ext[0];
			frag_off = bpf_ntohs(*(__be16 *)&ext[2]);
			f->fragid = *(__be32 *)&ext[4];
			off += 8;
			if (frag_off & 0xfff8) {
				f->proto = nexthdr;
				f->frag = FRAG_LATER;
				return PARSE_FRAGMENT;
			}
			if (frag_off & 1)
				f->frag = FRAG_FIRST;
			continue;
		}
		default:
			goto transport;
		}
	}
	/* More extension headers than any real packet: leave it alone. */
	return PARSE_OTHER;

transport:
	f->proto = nexthdr;
	f->l4_off = off;
	switch (nexthdr) {
	case IPPROTO_TCP: {
		__u8 th[20] = {};
		/* The whole fixed header (the checksum sits at bytes 16-17),
		 * or the 8 bytes a quote is sure to have. */
		__u32 need = quote ? 8 : sizeof(th);

		if (off + need > f->end || bpf_skb_load_bytes(skb, off, th, need))
			return PARSE_MALFORMED;
		f->sport = *(__be16 *)&th[0];
		f->dport = *(__be16 *)&th[2];
		f->tcp_flags = th[13];
		f->tcp_seq = *(__be32 *)&th[4];
		f->tcp_ack = *(__be32 *)&th[8];
		f->tcp_win = *(__be16 *)&th[14];
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		__be16 ports[4];

		if (off + sizeof(ports) > f->end ||
		    bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return PARSE_MALFORMED;
		f->sport = ports[0];
		f->dport = ports[1];
		return PARSE_OK;
	}
	case IPPROTO_ICMPV6: {
		struct icmp_echo_hdr ih;

		if (off + sizeof(ih) > f->end || bpf_skb_load_bytes(skb, off, &ih, sizeof(ih)))
			return PARSE_MALFORMED;
		f->icmp_type = ih.type;
		if (is_icmp6_error(ih.type))
			return PARSE_ICMP_ERROR;
		/* Neighbour discovery, router solicitation and
		 * advertisement, MLD and the rest are never touched. */
		if ((ih.type != ICMPV6_ECHO_REQUEST && ih.type != ICMPV6_ECHO_REPLY) || ih.code)
			return PARSE_OTHER;
		if (ih.type == ICMPV6_ECHO_REQUEST)
			f->sport = ih.id;
		else
			f->dport = ih.id;
		return PARSE_OK;
	}
	default:
		return PARSE_OTHER;
	}
}

/* Where the transport checksum of a parsed packet sits, and whether a zero
 * there means "none" (UDP). */
static __always_inline __u32 csum_offset6(__u8 proto, __u32 l4_off, __u64 *zero_flag)
{
	*zero_flag = 0;
	switch (proto) {
	case IPPROTO_TCP:
		return l4_off + 16;
	case IPPROTO_UDP:
		*zero_flag = BPF_F_MARK_MANGLED_0;
		return l4_off + 6;
	default: /* ICMPv6 */
		return l4_off + 2;
	}
}

/* Offset of the port (ICMPv6 echo: identifier) of one endpoint. */
static __always_inline __u32 port_offset6(__u8 proto, __u32 l4_off, bool source)
{
	if (proto == IPPROTO_ICMPV6)
		return l4_off + 4;
	return l4_off + (source ? 0 : 2);
}

/*
 * Whether the transport checksum field of f holds a full checksum although
 * the helpers would take it for an offload's seed: a CHECKSUM_PARTIAL skb
 * whose pending checksum is an inner header's (a pod's UDP tunnel; the
 * kern-ctx build reads csum_start), or, where the state cannot be read, a
 * leaving UDP datagram whose field is not its own pseudo-header seed (see
 * udp_csum_is_full in packet.h).
 */
static __always_inline bool csum_full_despite_offload6(struct __sk_buff *skb, const struct flow6 *f,
						       bool source)
{
	enum csum_state state = skb_csum_state(skb);
	__be16 hdr[4];
	__u32 len;

	if (state == CSUM_PARTIAL)
		return !csum_partial_is_l4(skb, f->l4_off);
	if (state != CSUM_UNKNOWN || !source || f->proto != IPPROTO_UDP)
		return false;
	if (bpf_skb_load_bytes(skb, f->l4_off, hdr, sizeof(hdr)) || !hdr[3])
		return false;
	len = sum_words(f->saddr, 16) + sum_words(f->daddr, 16) + bpf_htons(IPPROTO_UDP) + hdr[2];
	if (hdr[3] != csum_fold32(len))
		return true;
	count_csum_ambiguous(FAMILY_IPV6);
	return false;
}

/* rewrite_endpoint6 for a field that holds a full checksum, with plain
 * arithmetic (RFC 1624) over the address and port changes. */
static __always_inline int rewrite_full6(struct __sk_buff *skb, const struct flow6 *f, bool source,
					 const __be32 *to_addr, __be16 to_port, __u32 csum_off)
{
	const __be32 *from = source ? f->saddr : f->daddr;
	__be16 from_port = source ? f->sport : f->dport;
	__be32 to[4];
	__u16 check;
	__u32 sum;

	addr6_copy(to, to_addr);
	if (bpf_skb_load_bytes(skb, csum_off, &check, sizeof(check)))
		return -1;
	sum = (__u16)~check;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		sum += (__u16) ~(from[i] & 0xffff) + (__u16) ~(from[i] >> 16);
		sum += (to[i] & 0xffff) + (to[i] >> 16);
	}
	sum += (__u16)~from_port + to_port;
	check = ~csum_fold32(sum);
	if (f->proto == IPPROTO_UDP && !check)
		check = 0xffff;
	if (bpf_skb_store_bytes(skb, csum_off, &check, sizeof(check), 0))
		return -1;
	if (from_port != to_port &&
	    bpf_skb_store_bytes(skb, port_offset6(f->proto, f->l4_off, source), &to_port,
				sizeof(to_port), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN + (source ? IPV6_SADDR_OFF : IPV6_DADDR_OFF), to,
				   sizeof(to), BPF_F_RECOMPUTE_CSUM);
}

/*
 * Rewrites the source (egress) or destination (ingress) address and port of
 * a parsed IPv6 packet. The address change reaches the transport checksum
 * through the pseudo-header (BPF_F_PSEUDO_HDR, so that CHECKSUM_PARTIAL
 * packets get their seed updated), the port change through the data. The
 * address is stored with BPF_F_RECOMPUTE_CSUM so that a CHECKSUM_COMPLETE
 * packet's sum, which covers the IPv6 header here, stays right.
 */
static __always_inline int rewrite_endpoint6(struct __sk_buff *skb, const struct flow6 *f,
					     bool source, const __be32 *to_addr, __be16 to_port)
{
	const __be32 *from_addr = source ? f->saddr : f->daddr;
	__be16 from_port = source ? f->sport : f->dport;
	__u64 zero_flag;
	__u32 csum_off = csum_offset6(f->proto, f->l4_off, &zero_flag);
	__be32 from[4], to[4];
	__s64 diff;

	if (csum_full_despite_offload6(skb, f, source))
		return rewrite_full6(skb, f, source, to_addr, to_port, csum_off);
	addr6_copy(from, from_addr);
	addr6_copy(to, to_addr);
	diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | zero_flag))
		return -1;
	if (from_port != to_port) {
		if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port,
					zero_flag | sizeof(to_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_offset6(f->proto, f->l4_off, source), &to_port,
					sizeof(to_port), 0))
			return -1;
	}
	return bpf_skb_store_bytes(skb, ETH_HLEN + (source ? IPV6_SADDR_OFF : IPV6_DADDR_OFF), to,
				   sizeof(to), BPF_F_RECOMPUTE_CSUM);
}

/* Rewrites only an address of the IPv6 header, as for a non-first fragment:
 * no checksum covers it but a CHECKSUM_COMPLETE sum. */
static __always_inline int rewrite_addr6(struct __sk_buff *skb, bool source, const __be32 *to_addr)
{
	__be32 to[4];

	addr6_copy(to, to_addr);
	return bpf_skb_store_bytes(skb, ETH_HLEN + (source ? IPV6_SADDR_OFF : IPV6_DADDR_OFF), to,
				   sizeof(to), BPF_F_RECOMPUTE_CSUM);
}

#endif /* IPMASQ_PACKET6_H */
