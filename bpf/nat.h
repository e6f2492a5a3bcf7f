/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The NAT table: deciding, allocating and refreshing mappings.
 */
#ifndef IPMASQ_NAT_H
#define IPMASQ_NAT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "maps.h"
#include "packet.h"

#ifndef EEXIST
#define EEXIST 17
#endif

/* Node ports tried for one new flow: a random start, then the following
 * ports in order across the ranges (wrapping), so a small --to-ports range
 * (up to this many ports) is searched completely. */
#define IPM_PORT_PROBES 64

/* last_seen_ns is refreshed at most this often, so a busy flow does not
 * write its entry's cache line on every packet. Far below every timeout. */
#define IPM_TOUCH_NS 100000000ULL

/* ICMP identifiers are translated over their full 16-bit space. */
#define IPM_ICMP_IDS 65536

enum alloc_result {
	ALLOC_OK,
	ALLOC_NO_PORT,	  /* every probed port is taken for this destination */
	ALLOC_TABLE_FULL, /* the NAT table has no room for another entry */
};

static __always_inline struct ipm_settings *get_settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ipm_settings, &zero);
}

/* True when daddr is in the active non-masquerade set. */
static __always_inline bool is_nomasq_dest(const struct ipm_settings *s, __be32 daddr)
{
	struct ipm_cidr4_key key = { .prefixlen = 32, .addr = daddr };

	if (s->active_cidrs)
		return bpf_map_lookup_elem(&ipm_cidr4_1, &key) != NULL;
	return bpf_map_lookup_elem(&ipm_cidr4_0, &key) != NULL;
}

/* Finds the idx-th port of the configured ranges: its range in *ri and the
 * port (host order) in *port. idx must be below s->port_count. */
static __always_inline void port_at(const struct ipm_settings *s, __u32 idx, __u32 *ri, __u32 *port)
{
	*ri = 0;
	*port = s->ranges[0].first;
	for (int i = 0; i < IPM_MAX_PORT_RANGES; i++) {
		__u32 n;

		if (i >= s->range_count)
			break;
		n = (__u32)s->ranges[i].last - s->ranges[i].first + 1;
		if (idx < n) {
			*ri = i;
			*port = s->ranges[i].first + idx;
			return;
		}
		idx -= n;
	}
}

/* True when port (host order) is in one of the configured ranges. */
static __always_inline bool port_in_ranges(const struct ipm_settings *s, __u16 port)
{
	for (int i = 0; i < IPM_MAX_PORT_RANGES; i++) {
		if (i >= s->range_count)
			break;
		if (port >= s->ranges[i].first && port <= s->ranges[i].last)
			return true;
	}
	return false;
}

/*
 * Reserves the reply half of a new mapping for flow f leaving through
 * ifindex with source node: finds a node port (or ICMP identifier) such that
 * (proto, remote, remote port, node, node port) is free, and claims it by
 * inserting the ingress entry with BPF_NOEXIST, which is atomic against other
 * CPUs and against host reservations. On success rk holds the claimed key.
 */
static __always_inline enum alloc_result reserve_reply_half(const struct ipm_settings *s,
							    const struct flow4 *f, __be32 node,
							    __u32 ifindex, __u64 now,
							    struct ipm_nat_key *rk)
{
	struct ipm_nat_entry rv = {
		.created_ns = now,
		.addr = f->saddr,
		.port = f->sport,
		.kind = IPM_KIND_MASQ,
		.ifindex = ifindex,
	};
	bool icmp = f->proto == IPPROTO_ICMP;
	__u32 ri = 0, port = 0, count = icmp ? IPM_ICMP_IDS : s->port_count;

	rk->saddr = f->daddr;
	rk->daddr = node;
	rk->sport = icmp ? 0 : f->dport;
	rk->proto = f->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	if (!count || !s->range_count || s->range_count > IPM_MAX_PORT_RANGES)
		return ALLOC_NO_PORT;

	if (!s->random_fully && (icmp || port_in_ranges(s, bpf_ntohs(f->sport)))) {
		/* MASQUERADE without --random-fully keeps the pod's own port
		 * (identifier) when that tuple is free. */
		rk->dport = f->sport;
		if (!bpf_map_update_elem(&ipm_nat4, rk, &rv, BPF_NOEXIST))
			return ALLOC_OK;
	}

	if (icmp)
		port = bpf_get_prandom_u32() & 0xffff;
	else
		port_at(s, bpf_get_prandom_u32() % count, &ri, &port);
	/* The modulo makes ri an unknown in [0, 7] for the verifier on every
	 * path (it stays the same number at run time): otherwise it explores
	 * the probe loop once per possible constant and gives up. */
	ri = (ri % s->range_count) & (IPM_MAX_PORT_RANGES - 1);

	for (int i = 0; i < IPM_PORT_PROBES; i++) {
		long err;

		rk->dport = bpf_htons(port);
		err = bpf_map_update_elem(&ipm_nat4, rk, &rv, BPF_NOEXIST);
		if (!err)
			return ALLOC_OK;
		if (err != -EEXIST)
			return ALLOC_TABLE_FULL;
		/* Next port, wrapping into the next range. */
		if (icmp) {
			port = (port + 1) & 0xffff;
		} else if (port >= s->ranges[ri & (IPM_MAX_PORT_RANGES - 1)].last) {
			ri = ((ri + 1) % s->range_count) & (IPM_MAX_PORT_RANGES - 1);
			port = s->ranges[ri].first;
		} else {
			port++;
		}
		/* Same bounds on every path, so the verifier prunes. */
		port &= 0xffff;
	}
	return ALLOC_NO_PORT;
}

/* The ingress key of the reply to flow f: where a mapping whose node side
 * is f's source would sit. */
static __always_inline void reply_key(const struct flow4 *f, struct ipm_nat_key *rk)
{
	bool icmp = f->proto == IPPROTO_ICMP;

	rk->saddr = f->daddr;
	rk->daddr = f->saddr;
	rk->sport = icmp ? 0 : f->dport;
	rk->dport = f->sport;
	rk->proto = f->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
}

/* Records that a packet of this half was seen now, with the TCP flags it
 * carried and any extra flags in seen. */
static __always_inline void touch_entry(struct ipm_nat_entry *e, __u64 now, const struct flow4 *f,
					__u8 seen)
{
	if (now - e->last_seen_ns > IPM_TOUCH_NS)
		e->last_seen_ns = now;
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_FLAG_FIN))
		seen |= IPM_F_FIN;
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_FLAG_RST))
		seen |= IPM_F_RST;
	/* Plain read-modify-write: 5.10 has no atomic OR, and two CPUs racing
	 * on the same flag both set it. */
	if (seen & ~e->flags)
		e->flags |= seen;
}

#endif /* IPMASQ_NAT_H */
