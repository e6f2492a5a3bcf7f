/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors about translated packets: destination unreachable (fragmentation
 * needed included, so PMTU discovery works through the NAT), time exceeded
 * and parameter problem. The error quotes the IP header and at least 8 bytes
 * of the packet that caused it; that quote is rewritten like the packet
 * itself was, and every checksum the error carries stays right.
 */
#ifndef IPMASQ_ICMP_ERROR_H
#define IPMASQ_ICMP_ERROR_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "packet.h"

/* Bytes of the ICMP error header before the quoted IP header. */
#define ICMP_ERROR_HLEN 8

/* The packet quoted in an ICMP error, as it was sent. */
struct quote4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo request: identifier */
	__be16 dport; /* ICMP echo reply: identifier */
	__u8 proto;
	__u8 pad[3];
	__u32 ip_off;	/* quoted IPv4 header */
	__u32 l4_off;	/* quoted transport header */
	__u32 csum_off; /* quoted transport checksum; 0 when not quoted or unused */
};

/* Reads the quote of the ICMP error f. False when the quote is too short,
 * not IPv4, a non-first fragment, or of a protocol without a mapping. */
static __always_inline bool parse_quote(struct __sk_buff *skb, const struct flow4 *f,
					struct quote4 *q)
{
	struct iphdr ip;
	__u8 l4[8];

	q->ip_off = f->l4_off + ICMP_ERROR_HLEN;
	if (bpf_skb_load_bytes(skb, q->ip_off, &ip, sizeof(ip)))
		return false;
	if (ip.version != 4 || ip.ihl < 5 || (bpf_ntohs(ip.frag_off) & IP_OFFSET))
		return false;
	q->l4_off = q->ip_off + ip.ihl * 4;
	/* RFC 792 guarantees 8 bytes of the transport header, no more; and
	 * the quote ends with the error's own IP packet, not the frame. */
	if (q->l4_off + sizeof(l4) > f->end)
		return false;
	if (bpf_skb_load_bytes(skb, q->l4_off, l4, sizeof(l4)))
		return false;
	q->saddr = ip.saddr;
	q->daddr = ip.daddr;
	q->proto = ip.protocol;
	q->sport = 0;
	q->dport = 0;
	q->csum_off = 0;

	switch (q->proto) {
	case IPPROTO_TCP:
		q->sport = *(__be16 *)&l4[0];
		q->dport = *(__be16 *)&l4[2];
		/* The TCP checksum is at bytes 16-17: only in longer quotes. */
		if (q->l4_off + 18 <= f->end)
			q->csum_off = q->l4_off + 16;
		return true;
	case IPPROTO_UDP:
		q->sport = *(__be16 *)&l4[0];
		q->dport = *(__be16 *)&l4[2];
		if (*(__u16 *)&l4[6])
			q->csum_off = q->l4_off + 6;
		return true;
	case IPPROTO_ICMP:
		if (l4[1] != 0)
			return false;
		if (l4[0] == ICMP_ECHO)
			q->sport = *(__be16 *)&l4[4];
		else if (l4[0] == ICMP_ECHOREPLY)
			q->dport = *(__be16 *)&l4[4];
		else
			return false;
		q->csum_off = q->l4_off + 2;
		return true;
	default:
		return false;
	}
}

/* Which address of the error itself changes along with the quote. */
enum quote_outer {
	OUTER_KEEP = 0,
	OUTER_SOURCE = 1,
	OUTER_DEST = 2,
};

/*
 * Rewrites the source (source = true) or destination endpoint of the quote
 * to to_addr/to_port, and the outer endpoint named by outer (OUTER_*) to
 * to_addr too.
 *
 * Checksums, all updated as plain field replacements so that a
 * CHECKSUM_COMPLETE packet's sum stays valid: the quoted IP header checksum
 * absorbs the quoted address, so the header's sum is unchanged; the quoted
 * transport checksum (when quoted) absorbs the pseudo-header address and the
 * port; the outer ICMP checksum absorbs what changed in the quote beyond
 * that (the port and the transport checksum); the outer IP checksum absorbs
 * the outer address. ICMP has no pseudo-header.
 */
static __always_inline int rewrite_quote(struct __sk_buff *skb, const struct flow4 *f,
					 const struct quote4 *q, bool source, __be32 to_addr,
					 __be16 to_port, enum quote_outer outer)
{
	__u32 outer_csum = f->l4_off + 2;
	__u32 addr_off = q->ip_off +
			 (source ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
	__u32 port_off = q->l4_off + (source ? 0 : 2);
	__be32 from_addr = source ? q->saddr : q->daddr;
	__be16 from_port = source ? q->sport : q->dport;
	__u16 old_csum = 0, new_csum = 0;

	if (q->proto == IPPROTO_ICMP)
		port_off = q->l4_off + 4;

	if (bpf_l3_csum_replace(skb, q->ip_off + offsetof(struct iphdr, check), from_addr, to_addr,
				sizeof(to_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &to_addr, sizeof(to_addr), 0))
		return -1;

	if (q->csum_off) {
		if (bpf_skb_load_bytes(skb, q->csum_off, &old_csum, sizeof(old_csum)))
			return -1;
		if (q->proto != IPPROTO_ICMP &&
		    bpf_l3_csum_replace(skb, q->csum_off, from_addr, to_addr, sizeof(to_addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, q->csum_off, from_port, to_port, sizeof(to_port)))
			return -1;
		if (bpf_skb_load_bytes(skb, q->csum_off, &new_csum, sizeof(new_csum)))
			return -1;
	}
	if (bpf_skb_store_bytes(skb, port_off, &to_port, sizeof(to_port), 0))
		return -1;

	if (bpf_l3_csum_replace(skb, outer_csum, from_port, to_port, sizeof(to_port)))
		return -1;
	if (q->csum_off &&
	    bpf_l3_csum_replace(skb, outer_csum, old_csum, new_csum, sizeof(new_csum)))
		return -1;

	if (outer == OUTER_SOURCE)
		return rewrite_addr(skb, true, f->saddr, to_addr);
	if (outer == OUTER_DEST)
		return rewrite_addr(skb, false, f->daddr, to_addr);
	return 0;
}

#endif /* IPMASQ_ICMP_ERROR_H */
