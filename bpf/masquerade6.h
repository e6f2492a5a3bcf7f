/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * IPv6 masquerading (--enable-ipv6): the same decisions as for IPv4, made on
 * the IPv6 maps. Each function here is the counterpart of the IPv4 function
 * of the same name without the 6 in masquerade.c; read those first.
 */
#ifndef IPMASQ_MASQUERADE6_H
#define IPMASQ_MASQUERADE6_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "exempt.h"
#include "frag.h"
#include "icmp_error.h"
#include "ipmasq.h"
#include "maps.h"
#include "nat.h"
#include "packet6.h"
#include "reply_mirror.h"
#include "reset.h"
#include "tcp_state.h"

static __always_inline void nat6_key(const struct flow6 *f, enum ipm_dir dir,
				     struct ipm_nat6_key *k)
{
	addr6_copy(k->saddr, f->saddr);
	addr6_copy(k->daddr, f->daddr);
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
	k->dir = dir;
	k->pad = 0;
}

/* The ingress key of the reply to flow f (where a mapping whose node side is
 * f's source would sit). */
static __always_inline void reply_key6(const struct flow6 *f, struct ipm_nat6_key *rk)
{
	bool icmp = f->proto == IPPROTO_ICMPV6;

	addr6_copy(rk->saddr, f->daddr);
	addr6_copy(rk->daddr, f->saddr);
	rk->sport = icmp ? 0 : f->dport;
	rk->dport = f->sport;
	rk->proto = f->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
}

static __always_inline bool is_local6(const __be32 *addr)
{
	struct ipm_addr6 a;

	addr6_copy(a.addr, addr);
	return bpf_map_lookup_elem(&ipm_local6, &a) != NULL;
}

/* The longest matching prefix of the active trie decides, as for IPv4. */
static __always_inline bool is_nomasq_dest6(const struct ipm_settings *s, const __be32 *daddr)
{
	struct ipm_cidr6_key key = { .prefixlen = 128 };
	struct ipm_cidr_value *v;

	addr6_copy(key.addr, daddr);
	if (s->active_cidrs)
		v = bpf_map_lookup_elem(&ipm_cidr6_1, &key);
	else
		v = bpf_map_lookup_elem(&ipm_cidr6_0, &key);
	return v && v->origin != IPM_CIDR_MASQUERADE;
}

/* is_masq_source for IPv6. */
static __always_inline bool is_masq_source6(const struct ipm_settings *s, const __be32 *saddr)
{
	struct ipm_cidr6_key key = { .prefixlen = 128 };

	if (!s->source_cidrs)
		return true;
	addr6_copy(key.addr, saddr);
	return bpf_map_lookup_elem(&ipm_src6, &key) != NULL;
}

static __always_inline bool addr6_is_zero(const __be32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

static __always_inline int new_mapping6(struct __sk_buff *skb, struct ipm_counters *c,
					const struct ipm_settings *s, const struct flow6 *f,
					const struct ipm_nat6_key *k, __u64 now, bool keep_source,
					__be32 *to_addr, __be16 *to_port)
{
	struct ipm_nat6_key rk = {};
	struct ipm_nat6_entry rv = {}, ev = {};
	struct ipm_nat6_entry *e;
	struct ipm_iface *iface;
	struct ipm_scratch *sc;
	__u32 ifindex = skb->ifindex;
	bool icmp = f->proto == IPPROTO_ICMPV6;
	const __be32 *node;
	int err;
	int alloc;

	iface = bpf_map_lookup_elem(&ipm_ifaces, &ifindex);
	if (!iface || addr6_is_zero(iface->addr6)) {
		/* No global IPv6 address to masquerade to: fail closed. */
		COUNT(c, egress_no_iface);
		return TC_ACT_SHOT;
	}
	node = keep_source ? f->saddr : iface->addr6;

	addr6_copy(rk.saddr, f->daddr);
	addr6_copy(rk.daddr, node);
	rk.sport = icmp ? 0 : f->dport;
	rk.proto = f->proto;
	rk.dir = IPM_DIR_INGRESS;
	rv.created_ns = now;
	addr6_copy(rv.addr, f->saddr);
	rv.port = f->sport;
	rv.kind = IPM_KIND_MASQ;
	rv.ifindex = ifindex;
	sc = get_scratch();
	if (!sc)
		return TC_ACT_SHOT;
	sc->key6 = rk;
	sc->value6 = rv;
	alloc = claim_port(1, icmp, f->sport);
	rk.dport = sc->key6.dport;
	switch (alloc) {
	case ALLOC_OK:
		break;
	case ALLOC_NO_PORT:
		COUNT(c, egress_no_port);
		return TC_ACT_SHOT;
	default:
		COUNT(c, egress_table_full);
		return TC_ACT_SHOT;
	}

	ev.created_ns = now;
	ev.last_seen_ns = now;
	addr6_copy(ev.addr, node);
	ev.port = rk.dport;
	ev.kind = IPM_KIND_MASQ;
	ev.ifindex = ifindex;
	if (f->proto == IPPROTO_TCP) {
		ev.flags = IPM_F_WSCALE;
		ev.tcp_wscale = syn_wscale(skb, f->l4_off);
		ev.tcp_ack = bpf_ntohl(f->tcp_seq) + 1;
	}
	err = insert_new(&ipm_nat6, k, &ev);
	if (err && err != -EEXIST && ipm_early_drop(FAMILY_IPV6))
		err = insert_new(&ipm_nat6, k, &ev);
	if (!err) {
		remember_new6(k, now);
		addr6_copy(to_addr, ev.addr);
		*to_port = ev.port;
		return TC_ACT_UNSPEC;
	}
	bpf_map_delete_elem(&ipm_nat6, &rk);
	if (err == -EEXIST) {
		e = bpf_map_lookup_elem(&ipm_nat6, k);
		if (e && e->kind == IPM_KIND_MASQ) {
			addr6_copy(to_addr, e->addr);
			*to_port = e->port;
			return TC_ACT_UNSPEC;
		}
		COUNT(c, egress_race);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_table_full);
	return TC_ACT_SHOT;
}

static __always_inline int host_egress6(struct __sk_buff *skb, struct ipm_counters *c,
					const struct flow6 *f, __u64 now)
{
	struct ipm_nat6_key rk = {};
	struct ipm_nat6_entry hv = {};
	struct ipm_nat6_entry *e;

	reply_key6(f, &rk);
	e = bpf_map_lookup_elem(&ipm_nat6, &rk);
	if (e && e->kind == IPM_KIND_MASQ) {
		if (opens(f))
			return VERDICT_MOVE;
		COUNT(c, egress_host);
		return TC_ACT_UNSPEC;
	}
	e = bpf_map_lookup_elem(&ipm_hostres6, &rk);
	if (e) {
		touch_entry(e, now, f, 0);
	} else {
		hv.created_ns = now;
		hv.last_seen_ns = now;
		addr6_copy(hv.addr, f->saddr);
		hv.port = f->sport;
		hv.kind = IPM_KIND_HOST;
		hv.ifindex = skb->ifindex;
		if (!insert_new(&ipm_hostres6, &rk, &hv))
			COUNT(c, lru_hostres_new);
	}
	COUNT(c, egress_host);
	return TC_ACT_UNSPEC;
}

static __noinline void note_nomasq_syn6(const struct ipm_settings *s, const struct flow6 *f)
{
	struct ipm_nat6_key k = {};

	nat6_key(f, IPM_DIR_EGRESS, &k);
	record_exempt(&ipm_nomasq_tcp6, &k, ipm_clock(s), FAMILY_IPV6, IPM_LRU_NOMASQ_TCP);
}

static __always_inline void tcp_other_half6(struct ipm_nat6_key *k, enum ipm_dir dir,
					    const __be32 *remote, __be16 remote_port,
					    const __be32 *addr, __be16 port)
{
	bool in = dir == IPM_DIR_INGRESS;

	addr6_copy(k->saddr, in ? remote : addr);
	addr6_copy(k->daddr, in ? addr : remote);
	k->sport = in ? remote_port : port;
	k->dport = in ? port : remote_port;
	k->proto = IPPROTO_TCP;
	k->dir = dir;
}

static __noinline void egress_tcp_restart6(struct __sk_buff *skb, const struct flow6 *f,
					   struct ipm_nat6_entry *e, __u64 now)
{
	struct ipm_nat6_key rk = {};
	struct ipm_nat6_entry *in;

	tcp_other_half6(&rk, IPM_DIR_INGRESS, f->daddr, f->dport, e->addr, e->port);
	in = bpf_map_lookup_elem(&ipm_nat6, &rk);
	restart_on_syn(e, in, now, syn_wscale(skb, f->l4_off));
	track_pod_syn(e, f);
}

static __noinline int egress_tcp_unknown6(struct __sk_buff *skb, struct ipm_counters *c,
					  const struct ipm_settings *s, const struct flow6 *f,
					  const struct ipm_nat6_key *k)
{
	__u64 now = ipm_clock(s);

	if (refresh_exempt(&ipm_inbound6, k, now)) {
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	if (refresh_exempt(&ipm_nomasq_tcp6, k, now)) {
		COUNT(c, egress_tcp_no_map);
		return TC_ACT_UNSPEC;
	}
	if (!(f->tcp_flags & TCP_FLAG_RST) && !reset_pod6(skb, f)) {
		COUNT(c, egress_tcp_reset);
		return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	}
	COUNT(c, egress_tcp_unknown_drop);
	return TC_ACT_SHOT;
}

static __always_inline int egress_flow6(struct __sk_buff *skb, struct ipm_counters *c,
					const struct ipm_settings *s, const struct flow6 *f,
					__be32 *left_as)
{
	struct ipm_nat6_entry *e;
	struct ipm_nat6_key k = {};
	__be16 to_port;
	bool is_local;
	__u64 now;
	int verdict;

	addr6_copy(left_as, f->saddr);
	nat6_key(f, IPM_DIR_EGRESS, &k);
	e = bpf_map_lookup_elem(&ipm_nat6, &k);
	if (e && e->kind == IPM_KIND_MASQ) {
		now = ipm_clock(s);
		touch_entry(e, now, f, 0);
		if (f->proto == IPPROTO_TCP && !tcp_is_syn(f->tcp_flags))
			track_pod_window(e, f);
		else if (f->proto == IPPROTO_TCP)
			egress_tcp_restart6(skb, f, e, now);
		if (rewrite_endpoint6(skb, f, true, e->addr, e->port)) {
			COUNT(c, egress_malformed);
			return TC_ACT_SHOT;
		}
		addr6_copy(left_as, e->addr);
		COUNT(c, egress_translated);
		return TC_ACT_UNSPEC;
	}
	is_local = is_local6(f->saddr);
	if (is_local) {
		now = ipm_clock(s);
		verdict = host_egress6(skb, c, f, now);
		if (verdict != VERDICT_MOVE)
			return verdict;
		goto map;
	}
	if (is_nomasq_dest6(s, f->daddr)) {
		if (f->proto == IPPROTO_TCP && tcp_is_syn(f->tcp_flags))
			note_nomasq_syn6(s, f);
		COUNT(c, egress_nomasq);
		return TC_ACT_UNSPEC;
	}
	if (!is_masq_source6(s, f->saddr)) {
		/* Routed from behind the node, not a pod: leaves as it is,
		 * mid-stream or not. */
		COUNT(c, egress_not_source);
		return TC_ACT_UNSPEC;
	}
	if (!opens(f)) {
		if (f->proto == IPPROTO_TCP)
			return egress_tcp_unknown6(skb, c, s, f, &k);
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	now = ipm_clock(s);
	if (f->proto == IPPROTO_UDP && refresh_exempt(&ipm_inbound6, &k, now)) {
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}

map:
	verdict = new_mapping6(skb, c, s, f, &k, now, is_local, left_as, &to_port);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;
	if (rewrite_endpoint6(skb, f, true, left_as, to_port)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	if (is_local)
		COUNT(c, egress_host_moved);
	else
		COUNT(c, egress_new_flow);
	return TC_ACT_UNSPEC;
}

static __always_inline void frag6_key(const struct flow6 *f, enum ipm_dir dir,
				      struct ipm_frag6_key *fk)
{
	addr6_copy(fk->saddr, f->saddr);
	addr6_copy(fk->daddr, f->daddr);
	fk->id = f->fragid;
	/* The identification alone ties IPv6 fragments together; the header
	 * after the fragment header differs between first and later ones. */
	fk->proto = 0;
	fk->dir = dir;
	fk->pad = 0;
}

static __always_inline void remember_first_fragment6(const struct flow6 *f, enum ipm_dir dir,
						     const __be32 *addr, __u64 now)
{
	struct ipm_frag6_key fk = {};
	struct ipm_frag6_entry fe = { .created_ns = now };

	frag6_key(f, dir, &fk);
	addr6_copy(fe.addr, addr);
	if (!insert_new(&ipm_frag6, &fk, &fe)) {
		count_lru_new(FAMILY_IPV6, IPM_LRU_FRAG);
		return;
	}
	bpf_map_update_elem(&ipm_frag6, &fk, &fe, BPF_ANY);
}

static __always_inline struct ipm_frag6_entry *first_fragment6(const struct flow6 *f,
							       enum ipm_dir dir, __u64 now)
{
	struct ipm_frag6_key fk = {};
	struct ipm_frag6_entry *fe;

	frag6_key(f, dir, &fk);
	fe = bpf_map_lookup_elem(&ipm_frag6, &fk);
	/* Signed: an entry stamped a little after now (another CPU) is fresh,
	 * not 584 years old. */
	if (!fe || (__s64)(now - fe->created_ns) > (__s64)IPM_FRAG_TTL_NS)
		return NULL;
	return fe;
}

static __always_inline int egress_later_fragment6(struct __sk_buff *skb, struct ipm_counters *c,
						  const struct ipm_settings *s,
						  const struct flow6 *f)
{
	struct ipm_frag6_entry *fe = first_fragment6(f, IPM_DIR_EGRESS, ipm_now());

	if (fe) {
		if (!addr6_eq(fe->addr, f->saddr) && rewrite_addr6(skb, true, fe->addr)) {
			COUNT(c, egress_malformed);
			return TC_ACT_SHOT;
		}
		COUNT(c, egress_fragment);
		return TC_ACT_UNSPEC;
	}
	if (is_local6(f->saddr) || is_nomasq_dest6(s, f->daddr) || !is_masq_source6(s, f->saddr)) {
		COUNT(c, egress_fragment);
		return TC_ACT_UNSPEC;
	}
	/* Ahead of its first fragment: see egress_later_fragment. */
	COUNT(c, egress_frag_orphan);
	return TC_ACT_SHOT;
}

/* The packet quoted in an ICMPv6 error, as it was sent. */
struct quote6 {
	struct flow6 f; /* addresses, ports, protocol, l4_off */
	__u32 ip_off;	/* quoted IPv6 header */
	__u32 csum_off; /* quoted transport checksum; 0 when not quoted or unused */
};

static __always_inline bool parse_quote6(struct __sk_buff *skb, const struct flow6 *f,
					 struct quote6 *q)
{
	__u16 csum = 0;

	q->ip_off = f->l4_off + ICMP_ERROR_HLEN;
	if (parse_ipv6_at(skb, q->ip_off, &q->f, true) != PARSE_OK)
		return false;
	/* At least 8 bytes of the transport header, inside the error's own
	 * IPv6 packet (not the frame's padding). */
	if (q->f.l4_off + 8 > f->end)
		return false;
	q->csum_off = 0;
	switch (q->f.proto) {
	case IPPROTO_TCP:
		if (q->f.l4_off + 18 <= f->end)
			q->csum_off = q->f.l4_off + 16;
		break;
	case IPPROTO_UDP:
		if (!bpf_skb_load_bytes(skb, q->f.l4_off + 6, &csum, sizeof(csum)) && csum)
			q->csum_off = q->f.l4_off + 6;
		break;
	default: /* ICMPv6 echo */
		q->csum_off = q->f.l4_off + 2;
	}
	return true;
}

/*
 * Rewrites the quote of an ICMPv6 error like rewrite_quote does for ICMP,
 * but with IPv6's checksums: the quoted header has none, so the outer ICMPv6
 * checksum absorbs the quoted address too; the quoted transport checksum
 * (ICMPv6 included) absorbs its pseudo-header address and port; the outer
 * ICMPv6 checksum's own pseudo-header absorbs the outer address.
 */
static __always_inline int rewrite_quote6(struct __sk_buff *skb, const struct flow6 *f,
					  const struct quote6 *q, bool source,
					  const __be32 *to_addr, __be16 to_port,
					  enum quote_outer outer)
{
	__u32 outer_csum = f->l4_off + 2;
	__be16 from_port = source ? q->f.sport : q->f.dport;
	__be32 from[4], to[4];
	__u16 old_csum = 0, new_csum = 0;
	__s64 diff;

	addr6_copy(from, source ? q->f.saddr : q->f.daddr);
	addr6_copy(to, to_addr);
	diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
	if (diff < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, q->ip_off + (source ? IPV6_SADDR_OFF : IPV6_DADDR_OFF), to,
				sizeof(to), 0))
		return -1;
	if (q->csum_off) {
		if (bpf_skb_load_bytes(skb, q->csum_off, &old_csum, sizeof(old_csum)))
			return -1;
		if (bpf_l3_csum_replace(skb, q->csum_off, 0, diff, 0))
			return -1;
		if (bpf_l3_csum_replace(skb, q->csum_off, from_port, to_port, sizeof(to_port)))
			return -1;
		if (bpf_skb_load_bytes(skb, q->csum_off, &new_csum, sizeof(new_csum)))
			return -1;
	}
	if (bpf_skb_store_bytes(skb, port_offset6(q->f.proto, q->f.l4_off, source), &to_port,
				sizeof(to_port), 0))
		return -1;

	if (bpf_l3_csum_replace(skb, outer_csum, 0, diff, 0))
		return -1;
	if (bpf_l3_csum_replace(skb, outer_csum, from_port, to_port, sizeof(to_port)))
		return -1;
	if (q->csum_off &&
	    bpf_l3_csum_replace(skb, outer_csum, old_csum, new_csum, sizeof(new_csum)))
		return -1;

	if (outer == OUTER_KEEP)
		return 0;
	addr6_copy(from, outer == OUTER_SOURCE ? f->saddr : f->daddr);
	diff = bpf_csum_diff(from, sizeof(from), to, sizeof(to), 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, outer_csum, 0, diff, BPF_F_PSEUDO_HDR))
		return -1;
	return rewrite_addr6(skb, outer == OUTER_SOURCE, to_addr);
}

static __always_inline int egress_icmp_error6(struct __sk_buff *skb, struct ipm_counters *c,
					      const struct flow6 *f)
{
	struct ipm_nat6_key k = {};
	struct ipm_nat6_entry *e;
	struct quote6 q = {};

	if (!parse_quote6(skb, f, &q)) {
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}
	/* The quote is remote -> pod; its flow's egress key is the reverse. */
	addr6_copy(k.saddr, q.f.daddr);
	addr6_copy(k.daddr, q.f.saddr);
	k.sport = q.f.dport;
	k.dport = q.f.sport;
	k.proto = q.f.proto;
	k.dir = IPM_DIR_EGRESS;
	e = bpf_map_lookup_elem(&ipm_nat6, &k);
	if (!e || e->kind != IPM_KIND_MASQ) {
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}
	if (rewrite_quote6(skb, f, &q, false, e->addr, e->port,
			   addr6_eq(f->saddr, q.f.daddr) ? OUTER_SOURCE : OUTER_KEEP)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_icmp_error);
	return TC_ACT_UNSPEC;
}

static __always_inline int egress6(struct __sk_buff *skb)
{
	struct ipm_counters *c = get_counters(FAMILY_IPV6);
	struct ipm_settings *s = get_settings();
	struct flow6 f = {};
	__be32 left_as[4];
	int verdict;

	if (!s || !s->enable_ipv6) {
		/* Without --enable-ipv6, IPv6 is not ours. */
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}
	switch (parse_ipv6_at(skb, ETH_HLEN, &f, false)) {
	case PARSE_OK:
		verdict = egress_flow6(skb, c, s, &f, left_as);
		break;
	case PARSE_FRAGMENT:
		return egress_later_fragment6(skb, c, s, &f);
	case PARSE_ICMP_ERROR:
		verdict = egress_icmp_error6(skb, c, &f);
		if (bpf_skb_load_bytes(skb, ETH_HLEN + IPV6_SADDR_OFF, left_as, sizeof(left_as)))
			return verdict;
		break;
	case PARSE_MALFORMED:
		COUNT(c, egress_malformed);
		return TC_ACT_UNSPEC;
	default:
		COUNT(c, egress_other);
		verdict = TC_ACT_UNSPEC;
		addr6_copy(left_as, f.saddr);
		break;
	}
	/* Later fragments follow their first, whatever the protocol. */
	if (verdict == TC_ACT_UNSPEC && f.frag == FRAG_FIRST)
		remember_first_fragment6(&f, IPM_DIR_EGRESS, left_as, ipm_now());
	return verdict;
}

static __always_inline bool note_inbound6(const struct ipm_settings *s, const struct flow6 *f,
					  __u64 now)
{
	struct ipm_nat6_key rk = {};

	if (is_local6(f->daddr))
		return false;
	addr6_copy(rk.saddr, f->daddr);
	addr6_copy(rk.daddr, f->saddr);
	rk.sport = f->dport;
	rk.dport = f->sport;
	rk.proto = f->proto;
	rk.dir = IPM_DIR_EGRESS;
	if (is_nomasq_dest6(s, f->saddr)) {
		if (f->proto != IPPROTO_TCP)
			return false;
		record_exempt(&ipm_nomasq_tcp6, &rk, now, FAMILY_IPV6, IPM_LRU_NOMASQ_TCP);
		return true;
	}
	if (f->proto == IPPROTO_TCP) {
		record_exempt(&ipm_inbound6, &rk, now, FAMILY_IPV6, IPM_LRU_INBOUND);
		return true;
	}
	if (!refresh_exempt(&ipm_inbound6, &rk, now))
		record_exempt(&ipm_inbound6, &rk, now, FAMILY_IPV6, IPM_LRU_INBOUND);
	return true;
}

static __always_inline int ingress_later_fragment6(struct __sk_buff *skb, struct ipm_counters *c,
						   const struct flow6 *f)
{
	struct ipm_frag6_entry *fe = first_fragment6(f, IPM_DIR_INGRESS, ipm_now());

	if (!fe) {
		COUNT(c, ingress_frag_orphan);
		return TC_ACT_UNSPEC;
	}
	if (rewrite_addr6(skb, false, fe->addr)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, ingress_fragment);
	return TC_ACT_UNSPEC;
}

static __always_inline int ingress_icmp_error6(struct __sk_buff *skb, struct ipm_counters *c,
					       const struct flow6 *f)
{
	struct ipm_nat6_key k = {};
	struct ipm_nat6_entry *e;
	struct quote6 q = {};
	enum quote_outer outer;

	if (!parse_quote6(skb, f, &q)) {
		COUNT(c, ingress_other);
		return TC_ACT_UNSPEC;
	}
	/* The quote is node -> remote; its reply key is the reverse. */
	addr6_copy(k.saddr, q.f.daddr);
	addr6_copy(k.daddr, q.f.saddr);
	k.sport = q.f.dport;
	k.dport = q.f.sport;
	k.proto = q.f.proto;
	k.dir = IPM_DIR_INGRESS;
	e = bpf_map_lookup_elem(&ipm_nat6, &k);
	if (!e || e->kind != IPM_KIND_MASQ) {
		COUNT(c, ingress_miss);
		return TC_ACT_UNSPEC;
	}
	outer = addr6_eq(f->daddr, q.f.saddr) ? OUTER_DEST : OUTER_KEEP;
	if (rewrite_quote6(skb, f, &q, true, e->addr, e->port, outer)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	if (f->frag == FRAG_FIRST)
		remember_first_fragment6(f, IPM_DIR_INGRESS,
					 outer == OUTER_DEST ? e->addr : f->daddr, ipm_now());
	COUNT(c, ingress_icmp_error);
	return TC_ACT_UNSPEC;
}

static __always_inline int ingress6(struct __sk_buff *skb)
{
	struct ipm_counters *c = get_counters(FAMILY_IPV6);
	struct ipm_settings *s = get_settings();
	struct ipm_nat6_entry *e;
	struct ipm_nat6_key k = {};
	struct flow6 f = {};
	bool implausible = false;
	__u64 now;

	if (!s || !s->enable_ipv6) {
		COUNT(c, ingress_other);
		return TC_ACT_UNSPEC;
	}
	switch (parse_ipv6_at(skb, ETH_HLEN, &f, false)) {
	case PARSE_OK:
		break;
	case PARSE_FRAGMENT:
		return ingress_later_fragment6(skb, c, &f);
	case PARSE_ICMP_ERROR:
		return ingress_icmp_error6(skb, c, &f);
	case PARSE_MALFORMED:
		COUNT(c, ingress_malformed);
		return TC_ACT_UNSPEC;
	default:
		COUNT(c, ingress_other);
		return TC_ACT_UNSPEC;
	}
	nat6_key(&f, IPM_DIR_INGRESS, &k);
	e = bpf_map_lookup_elem(&ipm_nat6, &k);
	if (!e || e->kind != IPM_KIND_MASQ) {
		e = bpf_map_lookup_elem(&ipm_hostres6, &k);
		if (e) {
			touch_entry(e, ipm_clock(s), &f, IPM_F_REPLIED);
			COUNT(c, ingress_host);
		} else if ((f.proto == IPPROTO_UDP ||
			    (f.proto == IPPROTO_TCP && tcp_is_syn(f.tcp_flags))) &&
			   note_inbound6(s, &f, ipm_clock(s))) {
			COUNT(c, ingress_inbound);
		} else {
			COUNT(c, ingress_miss);
		}
		return TC_ACT_UNSPEC;
	}
	now = ipm_clock(s);
	/* A segment out of the pod's window (a blind spoofed RST, or one
	 * meant to keep a dead mapping alive) changes nothing; the pod judges
	 * it too. */
	implausible = !record_reply(&ipm_nat6, &k, e, &f, now);
	if (rewrite_endpoint6(skb, &f, false, e->addr, e->port)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	if (f.frag == FRAG_FIRST)
		remember_first_fragment6(&f, IPM_DIR_INGRESS, e->addr, ipm_now());
	if (implausible)
		COUNT(c, ingress_tcp_implausible);
	else
		COUNT(c, ingress_translated);
	return TC_ACT_UNSPEC;
}

#endif /* IPMASQ_MASQUERADE6_H */
