/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Answering a pod's TCP segment of an unknown connection with a reset.
 *
 * A mid-stream segment towards a masqueraded destination without a mapping
 * (it expired, was evicted, or was lost with a replaced table) must not leave
 * with the pod address, and dropping it alone leaves the application hanging
 * on retransmissions for many minutes. So the segment is turned, in place,
 * into the RST that the remote would send for a connection it does not know
 * (RFC 9293 3.10.7.1: sequence number from the segment's acknowledgement,
 * RST|ACK acknowledging the segment), and redirected to the ingress of the
 * same interface: the node routes it to the pod as if it came from the
 * remote, and the pod's stack, whose next expected sequence number it
 * carries, resets the connection at once (docs/flow-state.md).
 */
#ifndef IPMASQ_RESET_H
#define IPMASQ_RESET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "packet.h"
#include "packet6.h"

#define IP_DF 0x4000

/* Hop limit of a crafted reset: it crosses the node only. */
#define RESET_TTL 64

/* Turns th, a copy of the segment's TCP header (its payload ends at end),
 * into the reset answering it: ports swapped, sequence number from its
 * acknowledgement, acknowledging all of it; options cut. */
static __always_inline void reset_header(struct tcphdr *th, __u32 l4_off, __u32 end)
{
	__u32 hdr = th->doff * 4, seg = 0;
	__be16 port = th->source;
	__be32 seq = th->seq;
	bool acked = th->ack;

	if (end > l4_off + hdr)
		seg = end - l4_off - hdr;
	if (th->syn)
		seg++;
	if (th->fin)
		seg++;
	th->source = th->dest;
	th->dest = port;
	th->seq = acked ? th->ack_seq : 0;
	th->ack_seq = bpf_htonl(bpf_ntohl(seq) + seg);
	/* doff 5, then the flags byte: RST|ACK only. */
	((__u8 *)th)[12] = (sizeof(*th) / 4) << 4;
	((__u8 *)th)[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
	th->window = 0;
	th->check = 0;
	th->urg_ptr = 0;
}

/*
 * Writes the headers hdr (IP header, then the 20-byte TCP header whose
 * checksum field holds the pseudo-header seed) behind swapped MAC addresses,
 * cutting the packet after them, and completes the TCP checksum.
 *
 * The checksum works whatever the skb's checksum state, which the helpers
 * build cannot read: the field is written as the seed, which is right for
 * CHECKSUM_PARTIAL (the stack or the NIC finishes it over the header), and
 * the helper then adds diff, a change that the kernel applies only when the
 * checksum is not offloaded: there it turns the seed into the full checksum.
 */
static __always_inline int write_reset(struct __sk_buff *skb, const void *hdr, __u32 hdr_len,
				       __u32 diff)
{
	__u8 mac[ETH_ALEN * 2];

	if (bpf_skb_load_bytes(skb, 0, mac, sizeof(mac)))
		return -1;
	if (bpf_skb_change_tail(skb, ETH_HLEN + hdr_len, 0))
		return -1;
	/* The frame must be addressed to the interface itself (its own MAC,
	 * the source of what it sent), or the stack drops it as not ours. */
	if (bpf_skb_store_bytes(skb, 0, mac + ETH_ALEN, ETH_ALEN, BPF_F_RECOMPUTE_CSUM) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, mac, ETH_ALEN, BPF_F_RECOMPUTE_CSUM))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, hdr, hdr_len, BPF_F_RECOMPUTE_CSUM))
		return -1;
	return bpf_l4_csum_replace(skb, ETH_HLEN + hdr_len - sizeof(struct tcphdr) + 16, 0, diff,
				   0);
}

/*
 * Turns the TCP segment at l4_off (IP packet ending at end) of the given
 * family into the reset for the pod, reading its addresses from the packet;
 * 0 on success, then the caller redirects it. A segment behind IPv4 options
 * or IPv6 extension headers gets none (they would move the TCP header under
 * an offloaded checksum): the caller drops it. A global function, so its
 * headers do not weigh on the stack of the program's main path.
 */
__attribute__((noinline)) int ipm_reset_pod(struct __sk_buff *skb, __u32 family, __u32 l4_off,
					    __u32 end)
{
	union {
		struct {
			struct iphdr ip;
			struct tcphdr th;
		} v4;
		struct {
			struct ipv6hdr ip;
			struct tcphdr th;
		} v6;
	} h = {};
	__u32 pseudo;

	if (!skb || family > 1)
		return -1;
	if (l4_off != ETH_HLEN + (family ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)))
		return -1;
	if (family) {
		/* Source and destination swap places. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + IPV6_SADDR_OFF, &h.v6.ip.daddr, 16) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + IPV6_DADDR_OFF, &h.v6.ip.saddr, 16))
			return -1;
		h.v6.ip.version = 6;
		h.v6.ip.payload_len = bpf_htons(sizeof(h.v6.th));
		h.v6.ip.nexthdr = IPPROTO_TCP;
		h.v6.ip.hop_limit = RESET_TTL;
		if (bpf_skb_load_bytes(skb, l4_off, &h.v6.th, sizeof(h.v6.th)))
			return -1;
		reset_header(&h.v6.th, l4_off, end);
		pseudo = sum_words(&h.v6.ip.saddr, 32) + bpf_htons(IPPROTO_TCP) +
			 bpf_htons(sizeof(h.v6.th));
		h.v6.th.check = csum_fold32(pseudo);
		return write_reset(skb, &h.v6, sizeof(h.v6),
				   2 * pseudo + sum_words(&h.v6.th, sizeof(h.v6.th)) -
					   h.v6.th.check);
	}
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &h.v4.ip.daddr, 4) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &h.v4.ip.saddr, 4))
		return -1;
	h.v4.ip.version = 4;
	h.v4.ip.ihl = 5;
	h.v4.ip.tot_len = bpf_htons(sizeof(h.v4));
	h.v4.ip.frag_off = bpf_htons(IP_DF);
	h.v4.ip.ttl = RESET_TTL;
	h.v4.ip.protocol = IPPROTO_TCP;
	h.v4.ip.check = ~csum_fold32(sum_words(&h.v4.ip, sizeof(h.v4.ip)));
	if (bpf_skb_load_bytes(skb, l4_off, &h.v4.th, sizeof(h.v4.th)))
		return -1;
	reset_header(&h.v4.th, l4_off, end);
	pseudo = sum_words(&h.v4.ip.saddr, 8) + bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(h.v4.th));
	h.v4.th.check = csum_fold32(pseudo);
	return write_reset(skb, &h.v4, sizeof(h.v4),
			   2 * pseudo + sum_words(&h.v4.th, sizeof(h.v4.th)) - h.v4.th.check);
}

#define reset_pod4(skb, f) ipm_reset_pod(skb, 0, (f)->l4_off, (f)->end)
#define reset_pod6(skb, f) ipm_reset_pod(skb, 1, (f)->l4_off, (f)->end)

#endif /* IPMASQ_RESET_H */
