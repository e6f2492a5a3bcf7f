/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading the headers the datapath needs, and rewriting one endpoint of an
 * IPv4 packet with every checksum kept right.
 */
#ifndef IPMASQ_PACKET_H
#define IPMASQ_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "csum_state.h"
#include "ipmasq.h"

/* Not in the vendored UAPI headers (linux/icmp.h drags in libc). */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

#define IP_MF	  0x2000
#define IP_OFFSET 0x1fff

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The parts of a packet that decide what happens to it. Ports are in network
 * order; for ICMP echo the identifier sits in sport (request) or dport
 * (reply), as in struct ipm_nat_key. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 frag;   /* enum frag_kind */
	__be16 ipid; /* IPv4 identification, which ties fragments together */
	__u16 pad;
	__u32 l4_off; /* from the start of the Ethernet header */
	__u32 end;    /* end of the IP packet: bytes after it (padding) are not ours */
	/* TCP: sequence and acknowledgement numbers and window, as sent. */
	__be32 tcp_seq;
	__be32 tcp_ack;
	__be16 tcp_win;
	__u16 pad2;
};

enum frag_kind {
	FRAG_NONE = 0,
	FRAG_FIRST = 1, /* offset 0, more fragments follow: has the L4 header */
	FRAG_LATER = 2, /* offset > 0: no L4 header */
};

enum parse_result {
	PARSE_OK,
	PARSE_NOT_IPV4,	  /* another EtherType */
	PARSE_MALFORMED,  /* truncated, bad IHL or length: never touched */
	PARSE_FRAGMENT,	  /* a non-first fragment: no transport header */
	PARSE_OTHER,	  /* another protocol, or an ICMP type we do not map */
	PARSE_ICMP_ERROR, /* destination unreachable, time exceeded, parameter problem */
};

#define ICMP_DEST_UNREACH  3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

static __always_inline bool is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

/* Makes the first len bytes readable by direct access; false when the packet
 * is shorter. Invalidates every packet pointer. */
static __always_inline bool ensure_linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return true;
	if (bpf_skb_pull_data(skb, len))
		return false;
	return (void *)(long)skb->data + len <= (void *)(long)skb->data_end;
}

/* Fills f from an IPv4 packet behind an Ethernet header. */
static __always_inline enum parse_result parse_ipv4(struct __sk_buff *skb, struct flow4 *f)
{
	void *data, *data_end;
	struct iphdr *ip;
	__u32 ihl, l4, tot;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if (!ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return PARSE_MALFORMED;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	ihl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* tot_len 0 is legal only for a BIG TCP super-packet (GSO); anything
	 * else shorter than the header is garbage. */
	if (tot ? tot < ihl : !skb->gso_size)
		return PARSE_MALFORMED;

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->ipid = ip->id;
	f->end = tot ? ETH_HLEN + tot : skb->len;
	if (f->end > skb->len)
		f->end = skb->len;
	if (bpf_ntohs(ip->frag_off) & IP_OFFSET) {
		f->frag = FRAG_LATER;
		return PARSE_FRAGMENT;
	}
	if (bpf_ntohs(ip->frag_off) & IP_MF)
		f->frag = FRAG_FIRST;
	l4 = ETH_HLEN + ihl;
	f->l4_off = l4;

	switch (f->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th;

		if (tot && tot < ihl + sizeof(*th))
			return PARSE_MALFORMED;
		if (!ensure_linear(skb, l4 + sizeof(*th)))
			return PARSE_MALFORMED;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		th = data + l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		f->sport = th->source;
		f->dport = th->dest;
		f->tcp_flags = ((__u8 *)th)[13];
		f->tcp_seq = th->seq;
		f->tcp_ack = th->ack_seq;
		f->tcp_win = th->window;
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh;

		if (tot && tot < ihl + sizeof(*uh))
			return PARSE_MALFORMED;
		if (!ensure_linear(skb, l4 + sizeof(*uh)))
			return PARSE_MALFORMED;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		uh = data + l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		f->sport = uh->source;
		f->dport = uh->dest;
		return PARSE_OK;
	}
	case IPPROTO_ICMP: {
		struct icmp_echo_hdr *ih;

		if (tot && tot < ihl + sizeof(*ih))
			return PARSE_MALFORMED;
		if (!ensure_linear(skb, l4 + sizeof(*ih)))
			return PARSE_MALFORMED;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ih = data + l4;
		if ((void *)(ih + 1) > data_end)
			return PARSE_MALFORMED;
		f->icmp_type = ih->type;
		if (is_icmp_error(ih->type))
			return PARSE_ICMP_ERROR;
		if ((ih->type != ICMP_ECHO && ih->type != ICMP_ECHOREPLY) || ih->code != 0)
			return PARSE_OTHER;
		/* The identifier is the requester's "port": a request carries
		 * it as its source, a reply as its destination. */
		if (ih->type == ICMP_ECHO)
			f->sport = ih->id;
		else
			f->dport = ih->id;
		return PARSE_OK;
	}
	default:
		return PARSE_OTHER;
	}
}

/* Folds a 32-bit one's complement sum into 16 bits. */
static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* One's complement sum of the 16-bit words of a buffer of constant size. */
static __always_inline __u32 sum_words(const void *buf, __u32 bytes)
{
	const __u16 *w = buf;
	__u32 sum = 0;

#pragma unroll
	for (__u32 i = 0; i < bytes / 2; i++)
		sum += w[i];
	return sum;
}

/* Updates a checksum field that covers a 32-bit word changing from `from` to
 * `to` (RFC 1624: HC' = ~(~HC + ~m + m')). Right for the IPv4 header
 * checksum, which is never offloaded; not for transport checksums, whose
 * field means something else when the skb is CHECKSUM_PARTIAL. */
static __always_inline void csum_replace4(__sum16 *check, __be32 from, __be32 to)
{
	__u32 sum = (__u16) ~*check;

	sum += (__u16) ~(from & 0xffff) + (__u16) ~(from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	*check = (__sum16)~csum_fold32(sum);
}

/*
 * Rewrites the source or destination address of the IPv4 header alone (and
 * its header checksum), as for a non-first fragment, whose transport checksum
 * sits in the first. Plain stores, no helper: the header is in the linear
 * area (the parser pulled it there), and a tc program that writes packet data
 * directly runs behind the verifier's prologue that unclones the skb first,
 * so it is ours to write. The sum over the header does not change, so a
 * CHECKSUM_COMPLETE skb->csum stays right. Re-derives the packet pointers,
 * so it may follow helpers that invalidated them.
 */
static __always_inline int rewrite_addr(struct __sk_buff *skb, bool source, __be32 from_addr,
					__be32 to_addr)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return -1;
	csum_replace4(&ip->check, from_addr, to_addr);
	if (source)
		ip->saddr = to_addr;
	else
		ip->daddr = to_addr;
	return 0;
}

/* Stores a port (or ICMP identifier) at off with a direct write. */
static __always_inline int store_port(struct __sk_buff *skb, __u32 off, __be16 port)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be16 *p;

	/* The parser's bound (Ethernet + 60-byte IP header + 2), spelled out
	 * for the verifier; the mask because verifiers before 6.x lose a
	 * compare's bound when clang checks a copy of the register. */
	if (off > ETH_HLEN + 60 + 2)
		return -1;
	/* The empty asm keeps clang from dropping the mask, which it may
	 * prove redundant after the compare. */
	asm volatile("" : "+r"(off));
	off &= 0x7f;
	p = data + off;
	if ((void *)(p + 1) > data_end)
		return -1;
	*p = port;
	return 0;
}

/*
 * The transport part of rewrite_endpoint when the skb's checksum state is
 * known and not CHECKSUM_COMPLETE: the checksum field is updated with plain
 * arithmetic, as the helpers would. A full checksum (partial false) takes
 * the address and port changes (RFC 1624); a CHECKSUM_PARTIAL seed is the
 * uncomplemented pseudo-header sum, so it takes the address change with the
 * opposite sign and never the port, which the final checksum covers anyway.
 * A UDP checksum of 0 (none) stays 0 and a computed 0 is sent as 0xffff.
 */
static __always_inline int rewrite_l4_inline(struct __sk_buff *skb, const struct flow4 *f,
					     __u32 csum_off, __u32 port_off, __be32 from_addr,
					     __be32 to_addr, __be16 from_port, __be16 to_port,
					     bool partial)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__sum16 *check;
	__u32 sum;

	/* The parser's bound (Ethernet + 60-byte IP header + the TCP
	 * checksum's offset), spelled out for the verifier. */
	if (csum_off > ETH_HLEN + 60 + 16)
		return -1;
	asm volatile("" : "+r"(csum_off));
	csum_off &= 0x7f; /* as in store_port */
	check = data + csum_off;
	if ((void *)(check + 1) > data_end)
		return -1;
	if (f->proto == IPPROTO_UDP && !*check)
		return from_port == to_port ? 0 : store_port(skb, port_off, to_port);

	sum = partial ? (__u16)*check : (__u16) ~*check;
	if (f->proto != IPPROTO_ICMP) {
		sum += (__u16) ~(from_addr & 0xffff) + (__u16) ~(from_addr >> 16);
		sum += (to_addr & 0xffff) + (to_addr >> 16);
	}
	if (!partial && from_port != to_port)
		sum += (__u16)~from_port + to_port;
	sum = csum_fold32(sum);
	if (!partial)
		sum = (__u16)~sum;
	if (f->proto == IPPROTO_UDP && !sum)
		sum = 0xffff;
	*check = sum;
	return from_port == to_port ? 0 : store_port(skb, port_off, to_port);
}

/* The seed a CHECKSUM_PARTIAL transport header of length len (network
 * order) would carry: its pseudo-header sum, folded, not complemented. */
static __always_inline __u16 pseudo_seed4(__be32 saddr, __be32 daddr, __u8 proto, __be16 len)
{
	return csum_fold32((saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16) +
			   bpf_htons(proto) + len);
}

/*
 * For a build that cannot read the skb's checksum state: whether a leaving
 * UDP datagram's checksum field holds a full checksum, told apart from the
 * seed of an offload pending on this very header by its value. A full
 * checksum is what it holds when the datagram is not offloaded, and also when
 * it is the outer header of a pod's tunnel whose inner packet is (the
 * offload then is the inner checksum's): either way plain arithmetic is
 * right, and the helpers would treat the second case as a seed. A full
 * checksum that happens to equal the seed (1 in 65536) is left to the
 * helpers and counted (egress_csum_ambiguous): right unless it is a tunnel.
 */
static __always_inline bool udp_csum_is_full(struct __sk_buff *skb, const struct flow4 *f,
					     bool *ambiguous)
{
	__be16 hdr[4];

	*ambiguous = false;
	if (bpf_skb_load_bytes(skb, f->l4_off, hdr, sizeof(hdr)) || !hdr[3])
		return false;
	if (hdr[3] != pseudo_seed4(f->saddr, f->daddr, IPPROTO_UDP, hdr[2]))
		return true;
	*ambiguous = true;
	return false;
}

/*
 * Rewrites the source (egress) or destination (ingress) address and port of a
 * parsed packet. Checksums are updated incrementally so that they are right
 * for complete and for offloaded (CHECKSUM_PARTIAL) packets alike: the
 * address is part of the pseudo-header that a partial checksum is seeded
 * with, the port is not. A UDP checksum of 0 (none) stays 0. ICMP has no
 * pseudo-header; only its identifier changes. Where the build can read the
 * skb's checksum state (csum_state.h), the transport checksum is plain
 * arithmetic; otherwise, and for CHECKSUM_COMPLETE (whose skb->csum must
 * follow), it goes through the helpers, which know the state. The stores and
 * the IPv4 header checksum are plain writes. Returns non-zero when a write
 * failed, leaving the packet half-written.
 */
static __always_inline int rewrite_endpoint(struct __sk_buff *skb, const struct flow4 *f,
					    bool source, __be32 to_addr, __be16 to_port)
{
	__be32 from_addr = source ? f->saddr : f->daddr;
	__be16 from_port = source ? f->sport : f->dport;
	enum csum_state state = skb_csum_state(skb);
	__u32 csum_off, port_off;
	__u64 zero_flag = 0;
	bool ambiguous = false;

	switch (f->proto) {
	case IPPROTO_TCP:
		csum_off = f->l4_off + offsetof(struct tcphdr, check);
		port_off = f->l4_off + (source ? offsetof(struct tcphdr, source)
					       : offsetof(struct tcphdr, dest));
		break;
	case IPPROTO_UDP:
		csum_off = f->l4_off + offsetof(struct udphdr, check);
		port_off = f->l4_off + (source ? offsetof(struct udphdr, source)
					       : offsetof(struct udphdr, dest));
		zero_flag = BPF_F_MARK_MANGLED_0;
		break;
	default: /* ICMP echo */
		csum_off = f->l4_off + offsetof(struct icmp_echo_hdr, checksum);
		port_off = f->l4_off + offsetof(struct icmp_echo_hdr, id);
		break;
	}

	/* An offloaded checksum that is not this header's (a pod's UDP
	 * tunnel): this header's field is a full checksum. */
	if (state == CSUM_PARTIAL && !csum_partial_is_l4(skb, f->l4_off))
		state = CSUM_NONE;
	if (state == CSUM_UNKNOWN && source && f->proto == IPPROTO_UDP) {
		if (udp_csum_is_full(skb, f, &ambiguous))
			state = CSUM_NONE;
		else if (ambiguous)
			count_csum_ambiguous(FAMILY_IPV4);
	}
	if (state == CSUM_NONE || state == CSUM_UNNECESSARY ||
	    (state == CSUM_PARTIAL && f->proto != IPPROTO_ICMP)) {
		/* ICMP is never offloaded; a partial one would be odd enough
		 * to leave to the helpers. */
		if (rewrite_l4_inline(skb, f, csum_off, port_off, from_addr, to_addr, from_port,
				      to_port, state == CSUM_PARTIAL))
			return -1;
		return rewrite_addr(skb, source, from_addr, to_addr);
	}

	if (f->proto != IPPROTO_ICMP &&
	    bpf_l4_csum_replace(skb, csum_off, from_addr, to_addr,
				BPF_F_PSEUDO_HDR | zero_flag | sizeof(to_addr)))
		return -1;
	if (from_port != to_port) {
		if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port,
					zero_flag | sizeof(to_port)))
			return -1;
		if (store_port(skb, port_off, to_port))
			return -1;
	}
	return rewrite_addr(skb, source, from_addr, to_addr);
}

#endif /* IPMASQ_PACKET_H */
