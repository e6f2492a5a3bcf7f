/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The NAT table: deciding, allocating and refreshing mappings.
 */
#ifndef IPMASQ_NAT_H
#define IPMASQ_NAT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "maps.h"
#include "clock.h"
#include "early_drop.h"
#include "packet.h"
#include "reclaim.h"

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

/* Not a tc verdict: "create a mapping for this host flow" (host_egress). */
#define VERDICT_MOVE 1000

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

/* The verdict of /24 number n (0-255) of the /16 that b covers, as struct
 * ipm_cidr4_block lays it out: the one reader of that layout (the agent's
 * twin is maps.BlockVerdict). */
static __always_inline enum ipm_block_verdict cidr4_block_verdict(const struct ipm_cidr4_block *b,
								  __u32 n)
{
	return (b->verdicts[n / 4] >> ((n % 4) * 2)) & 3;
}

/* What the active half of ipm_cidr4_dir says about daddr's /24. */
static __always_inline enum ipm_block_verdict block_verdict(const struct ipm_settings *s,
							    __be32 daddr)
{
	__u32 a = bpf_ntohl(daddr), block = (a >> 8) & 0xff;
	__u32 idx = (s->active_cidrs ? 1 << 16 : 0) | (a >> 16);
	struct ipm_cidr4_block *b;

	b = bpf_map_lookup_elem(&ipm_cidr4_dir, &idx);
	if (!b)
		return IPM_BLOCK_TRIE;
	return cidr4_block_verdict(b, block);
}

/* True when daddr is in the active non-masquerade set: ipm_cidr4_dir
 * decides, or sends the question on to the trie of the same index, whose
 * longest matching prefix carries the verdict (a masquerade exception, or a
 * non-masquerade prefix). */
static __always_inline bool is_nomasq_dest(const struct ipm_settings *s, __be32 daddr)
{
	struct ipm_cidr4_key key = { .prefixlen = 32, .addr = daddr };
	struct ipm_cidr_value *v;

	switch (block_verdict(s, daddr)) {
	case IPM_BLOCK_MASQ:
		return false;
	case IPM_BLOCK_NOMASQ:
	case IPM_BLOCK_NOMASQ_MAPPED:
		return true;
	default:
		break;
	}
	if (s->active_cidrs)
		v = bpf_map_lookup_elem(&ipm_cidr4_1, &key);
	else
		v = bpf_map_lookup_elem(&ipm_cidr4_0, &key);
	return v && v->origin != IPM_CIDR_MASQUERADE;
}

/* True when saddr may get a new mapping: --source-cidrs is unset, or saddr
 * is inside one of its prefixes. */
static __always_inline bool is_masq_source(const struct ipm_settings *s, __be32 saddr)
{
	struct ipm_cidr4_key key = { .prefixlen = 32, .addr = saddr };

	return !s->source_cidrs || bpf_map_lookup_elem(&ipm_src4, &key) != NULL;
}

/* True when addr is one of the node's IPv4 addresses. */
static __always_inline bool is_local4(const struct ipm_settings *s, __be32 addr)
{
	__u32 n = s->local4_count;

	if (n > IPM_LOCAL4_INLINE)
		return bpf_map_lookup_elem(&ipm_local4, &addr) != NULL;
	for (int i = 0; i < IPM_LOCAL4_INLINE; i++) {
		if (i < n && s->local4[i] == addr)
			return true;
	}
	return false;
}

/* How many ranges to walk, never more than the array holds. The empty asm
 * hides the clamp's origin from clang, which otherwise folds the loop's two
 * exits into one compare against the map value it re-reads: older
 * verifiers (5.10 to 6.12) then see an unbounded index and reject the
 * program. */
static __always_inline __u32 range_count(const struct ipm_settings *s)
{
	__u32 count = s->range_count;

	if (count > IPM_MAX_PORT_RANGES)
		count = IPM_MAX_PORT_RANGES;
	asm volatile("" : "+r"(count));
	return count;
}

/* Finds the idx-th port of the configured ranges: its range in *ri and the
 * port (host order) in *port. idx must be below s->port_count. */
static __always_inline void port_at(const struct ipm_settings *s, __u32 idx, __u32 *ri, __u32 *port)
{
	__u32 count = range_count(s);

	*ri = 0;
	*port = s->ranges[0].first;
	for (int i = 0; i < IPM_MAX_PORT_RANGES; i++) {
		__u32 n;

		if (i >= count)
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
	__u32 count = range_count(s);

	for (int i = 0; i < IPM_MAX_PORT_RANGES; i++) {
		if (i >= count)
			break;
		if (port >= s->ranges[i].first && port <= s->ranges[i].last)
			return true;
	}
	return false;
}

/* Steps from node port p (host order) of range ri to the next one, wrapping
 * into the next range; ICMP identifiers wrap over their 16 bits. Same bounds
 * on every path, so the verifier prunes. */
static __always_inline void next_port(const struct ipm_settings *s, bool icmp, __u32 *ri, __u32 *p)
{
	if (icmp) {
		*p = (*p + 1) & 0xffff;
	} else if (*p >= s->ranges[*ri & (IPM_MAX_PORT_RANGES - 1)].last) {
		*ri = ((*ri + 1) % s->range_count) & (IPM_MAX_PORT_RANGES - 1);
		*p = s->ranges[*ri].first;
	} else {
		(*p)++;
	}
	*p &= 0xffff;
}

/*
 * Claims a node port (or ICMP identifier) for the reply half of a new
 * mapping: writes candidates into *port (a field of key) and inserts
 * key/value into map (ipm_nat4 or ipm_nat6) with BPF_NOEXIST until an insert
 * succeeds. The insert is atomic against other CPUs and against host
 * reservations, so the claimed (proto, remote, remote port, node, node port)
 * is unique. pod_port is what --random-fully=false tries first; then the
 * walk starts at port p of range ri. No BPF-to-BPF call in the loop: before
 * 6.2 the verifier's precision tracking cannot see through one, marks every
 * register precise and then cannot prune the loop.
 */
static __always_inline enum alloc_result claim_node_port(const struct ipm_settings *s, void *map,
							 void *reserved, void *key, __be16 *port,
							 const void *value, bool icmp,
							 __be16 pod_port, __u32 ri, __u32 p)
{
	if (!s->random_fully && (icmp || port_in_ranges(s, bpf_ntohs(pod_port)))) {
		/* MASQUERADE without --random-fully keeps the pod's own port
		 * (identifier) when that tuple is free. */
		*port = pod_port;
		if (!bpf_map_lookup_elem(reserved, key) && !insert_new(map, key, value))
			return ALLOC_OK;
	}

	/* The modulo makes ri an unknown in [0, 7] for the verifier on every
	 * path (it stays the same number at run time): otherwise it explores
	 * the probe loop once per possible constant and gives up. */
	ri = (ri % s->range_count) & (IPM_MAX_PORT_RANGES - 1);
	p &= 0xffff;

#pragma clang loop unroll(disable)
	for (int i = 0; i < IPM_PORT_PROBES; i++) {
		int err;

		*port = bpf_htons(p);
		/* A host reservation is checked first; one made between the
		 * check and the insert (microseconds) is not seen. */
		if (!bpf_map_lookup_elem(reserved, key)) {
			err = insert_new(map, key, value);
			if (!err)
				return ALLOC_OK;
			if (err != -EEXIST)
				return ALLOC_TABLE_FULL;
		}
		next_port(s, icmp, &ri, &p);
	}
	return ALLOC_NO_PORT;
}

/* How many candidates a port search has; 0: no ports configured. */
static __always_inline __u32 port_candidates(const struct ipm_settings *s, bool icmp)
{
	if (!s->range_count || s->range_count > IPM_MAX_PORT_RANGES)
		return 0;
	return icmp ? IPM_ICMP_IDS : s->port_count;
}

/*
 * claim_node_port for the reply half waiting in this CPU's ipm_scratch, of
 * family 0 (IPv4) or 1 (IPv6); on success the scratch key holds the claimed
 * port. The walk starts at a random port, kept in the scratch space, or, on
 * a retry, where the last walk started. A global function on purpose: the
 * verifier checks it once, alone, instead of once per path that reaches a
 * new mapping, which multiplied the probe loop into hundreds of thousands
 * of instructions.
 */
__attribute__((noinline)) int ipm_claim_port(__u32 family, __u32 icmp, __u32 pod_port, __u32 retry)
{
	struct ipm_settings *s = get_settings();
	struct ipm_scratch *sc;
	__u32 zero = 0, count, ri = 0, p;

	sc = bpf_map_lookup_elem(&ipm_scratch, &zero);
	if (!sc || !s)
		return ALLOC_NO_PORT;
	count = port_candidates(s, icmp);
	if (!count)
		return ALLOC_NO_PORT;
	if (!retry) {
		if (icmp)
			p = bpf_get_prandom_u32() & 0xffff;
		else
			port_at(s, bpf_get_prandom_u32() % count, &ri, &p);
		sc->probe_ri = ri;
		sc->probe_p = p;
	}
	if (family)
		return claim_node_port(s, &ipm_nat6, &ipm_hostres6, &sc->key6, &sc->key6.dport,
				       &sc->value6, icmp, pod_port, sc->probe_ri, sc->probe_p);
	return claim_node_port(s, &ipm_nat4, &ipm_hostres4, &sc->key4, &sc->key4.dport, &sc->value4,
			       icmp, pod_port, sc->probe_ri, sc->probe_p);
}

/* Reclaims what holds the reply key of family in sc with node port port, if
 * it has expired (reclaim.h). */
static __always_inline bool reclaim_port(__u32 family, const struct ipm_settings *s,
					 struct ipm_scratch *sc, __be16 port, __u64 now)
{
	if (family) {
		sc->key6.dport = port;
		return reclaim6(s, &sc->key6, now);
	}
	sc->key4.dport = port;
	return reclaim4(s, &sc->key4, now);
}

/*
 * After a port search found every candidate taken: walks the same
 * candidates again (the pod's own port, then from the last walk's start)
 * and reclaims the first one held by an expired flow or host reservation,
 * so that closed flows cannot keep the ports to a destination while no
 * agent runs. 1 when one was reclaimed; the search is then retried.
 */
__attribute__((noinline)) int ipm_reclaim_ports(__u32 family, __u32 icmp, __u32 pod_port)
{
	struct ipm_settings *s = get_settings();
	struct ipm_scratch *sc;
	__u32 zero = 0, ri, p;
	__u64 now;

	sc = bpf_map_lookup_elem(&ipm_scratch, &zero);
	if (!sc || !s || !port_candidates(s, icmp))
		return 0;
	now = ipm_clock(s);
	if (!s->random_fully && (icmp || port_in_ranges(s, bpf_ntohs((__be16)pod_port))) &&
	    reclaim_port(family, s, sc, (__be16)pod_port, now))
		goto reclaimed;
	ri = (sc->probe_ri % s->range_count) & (IPM_MAX_PORT_RANGES - 1);
	p = sc->probe_p & 0xffff;
#pragma clang loop unroll(disable)
	for (int i = 0; i < IPM_PORT_PROBES; i++) {
		if (reclaim_port(family, s, sc, bpf_htons(p), now))
			goto reclaimed;
		next_port(s, icmp, &ri, &p);
	}
	return 0;
reclaimed: {
	struct ipm_counters *c = get_counters(family);

	COUNT(c, nat_reclaimed);
	return 1;
}
}

/*
 * A node port for the reply half waiting in this CPU's ipm_scratch (see
 * ipm_claim_port), making room when there is none: expired holders of the
 * candidates are reclaimed (ipm_reclaim_ports), and a full table first drops
 * flows that never got a reply (early_drop.h); then the same walk is tried
 * once more. Returns an enum alloc_result.
 */
static __always_inline int claim_port(__u32 family, bool icmp, __be16 pod_port)
{
	int r = ipm_claim_port(family, icmp, pod_port, 0);

	if (r == ALLOC_NO_PORT && ipm_reclaim_ports(family, icmp, pod_port))
		r = ipm_claim_port(family, icmp, pod_port, 1);
	else if (r == ALLOC_TABLE_FULL && ipm_early_drop(family))
		r = ipm_claim_port(family, icmp, pod_port, 1);
	return r;
}

/* This CPU's scratch space for ipm_claim_port. */
static __always_inline struct ipm_scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ipm_scratch, &zero);
}

/*
 * Reserves the reply half of a new mapping for IPv4 flow f leaving through
 * ifindex with source node. On success rk holds the claimed key.
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

	rk->saddr = f->daddr;
	rk->daddr = node;
	rk->sport = icmp ? 0 : f->dport;
	rk->proto = f->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	struct ipm_scratch *sc = get_scratch();
	int r;

	if (!sc)
		return ALLOC_NO_PORT;
	sc->key4 = *rk;
	sc->value4 = rv;
	r = claim_port(0, icmp, f->sport);
	rk->dport = sc->key4.dport;
	return r;
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

/* Records that a packet of a NAT table half was seen now, with the TCP flags
 * it carried (0 for other protocols) and any extra flags in seen. */
static __always_inline void touch_fields(__u64 *last_seen_ns, enum ipm_entry_flags *flags,
					 __u64 now, __u8 tcp_flags, __u8 seen)
{
	if (now - *last_seen_ns > IPM_TOUCH_NS)
		*last_seen_ns = now;
	if (tcp_flags & TCP_FLAG_FIN)
		seen |= IPM_F_FIN;
	if (tcp_flags & TCP_FLAG_RST)
		seen |= IPM_F_RST;
	/* Plain read-modify-write: 5.10 has no atomic OR, and two CPUs racing
	 * on the same flag both set it. */
	if (seen & ~*flags)
		*flags |= seen;
}

/* touch_fields for an entry of either family and the flow that hit it: both
 * families name these fields alike. */
#define touch_entry(e, now, f, seen)                                                               \
	touch_fields(&(e)->last_seen_ns, &(e)->flags, now,                                         \
		     (f)->proto == IPPROTO_TCP ? (f)->tcp_flags : 0, seen)

/* A packet that may start a flow of its own: a TCP SYN (not a SYN-ACK), any
 * UDP datagram, an ICMP or ICMPv6 echo request. A TCP segment or an echo
 * reply without a mapping belongs to something that did not start with a
 * masqueraded packet. */
static __always_inline bool opens_flow(__u8 proto, __u8 tcp_flags, __u8 icmp_type)
{
	switch (proto) {
	case IPPROTO_TCP:
		return (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	case IPPROTO_ICMP:
		return icmp_type == ICMP_ECHO;
	case IPPROTO_ICMPV6:
		return icmp_type == 128; /* echo request */
	default:
		return true;
	}
}

#define opens(f) opens_flow((f)->proto, (f)->tcp_flags, (f)->icmp_type)

#endif /* IPMASQ_NAT_H */
