// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * IPv4 masquerading on tc hooks of the node's uplink interfaces.
 *
 * ipm_egress runs after netfilter's POSTROUTING on every packet leaving a
 * managed interface. A packet of a known mapping is rewritten to the node
 * address and port; a new flow from a pod to a destination outside the
 * non-masquerade set gets a mapping; everything else leaves unchanged.
 *
 * ipm_ingress runs before netfilter on every packet arriving on a managed
 * interface. A packet that matches a mapping exactly (protocol, remote
 * address and port, node address and port) is rewritten back to the pod; the
 * kernel then routes it there. Everything else reaches the host unchanged.
 *
 * Both programs return TC_ACT_UNSPEC for every packet they do not drop, so
 * that other tc programs on the same hook still run (TCX_NEXT under tcx).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "frag.h"
#include "icmp_error.h"
#include "ipmasq.h"
#include "maps.h"
#include "masquerade6.h"
#include "nat.h"
#include "packet.h"

/* Creates both halves of a mapping for flow f and returns the egress half's
 * translation in to_addr/to_port; any verdict but TC_ACT_UNSPEC means the
 * packet must not leave. */
static __always_inline int new_mapping(struct __sk_buff *skb, struct ipm_counters *c,
				       const struct ipm_settings *s, const struct flow4 *f,
				       const struct ipm_nat_key *k, __u64 now, __be32 *to_addr,
				       __be16 *to_port)
{
	struct ipm_nat_key rk = {};
	struct ipm_nat_entry ev = {};
	struct ipm_nat_entry *e;
	struct ipm_iface *iface;
	__u32 ifindex = skb->ifindex;
	int err;

	iface = bpf_map_lookup_elem(&ipm_ifaces, &ifindex);
	if (!iface || !iface->addr4) {
		/* Leaving with the pod address would leak it to a network
		 * that drops or misroutes it: fail closed until the agent
		 * knows this interface's address. */
		COUNT(c, egress_no_iface);
		return TC_ACT_SHOT;
	}

	switch (reserve_reply_half(s, f, iface->addr4, ifindex, now, &rk)) {
	case ALLOC_OK:
		break;
	case ALLOC_NO_PORT:
		/* Every node port to this destination is in use: fail closed. */
		COUNT(c, egress_no_port);
		return TC_ACT_SHOT;
	default:
		/* No room for the mapping: fail closed, existing flows go on. */
		COUNT(c, egress_table_full);
		return TC_ACT_SHOT;
	}

	ev.created_ns = now;
	ev.last_seen_ns = now;
	ev.addr = iface->addr4;
	ev.port = rk.dport;
	ev.kind = IPM_KIND_MASQ;
	ev.ifindex = ifindex;
	err = insert_new(&ipm_nat4, k, &ev);
	if (err && err != -EEXIST && ipm_early_drop(FAMILY_IPV4))
		err = insert_new(&ipm_nat4, k, &ev);
	if (!err) {
		remember_new4(k, now);
		*to_addr = ev.addr;
		*to_port = ev.port;
		return TC_ACT_UNSPEC;
	}

	/* Another CPU created this flow's mapping first (or the table filled
	 * up between the two inserts): give back our reply half. */
	bpf_map_delete_elem(&ipm_nat4, &rk);
	if (err == -EEXIST) {
		e = bpf_map_lookup_elem(&ipm_nat4, k);
		if (e && e->kind == IPM_KIND_MASQ) {
			*to_addr = e->addr;
			*to_port = e->port;
			return TC_ACT_UNSPEC;
		}
		/* The winner's entry is gone already: drop rather than send
		 * the pod address; the sender retransmits. */
		COUNT(c, egress_race);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_table_full);
	return TC_ACT_SHOT;
}

/*
 * A packet from a node address: a host socket, or a flow that netfilter
 * already NATed to the node address. It keeps its address and port, and its
 * tuple is reserved in the NAT table so that no pod mapping takes it later.
 * If a pod mapping holds the tuple already, a new host flow must move to
 * another node port instead, as conntrack does on a clash: VERDICT_MOVE
 * tells the caller to give it a mapping like a pod flow's, whose replies are
 * translated back to the host's own port on ingress.
 */
static __always_inline int host_egress(struct __sk_buff *skb, struct ipm_counters *c,
				       const struct flow4 *f, __u64 now)
{
	struct ipm_nat_key rk = {};
	struct ipm_nat_entry hv = {};
	struct ipm_nat_entry *e;

	reply_key(f, &rk);
	e = bpf_map_lookup_elem(&ipm_nat4, &rk);
	if (e && e->kind == IPM_KIND_MASQ) {
		if (opens(f))
			return VERDICT_MOVE;
		/* A running connection we cannot move: leave both alone. */
		COUNT(c, egress_host);
		return TC_ACT_UNSPEC;
	}
	e = bpf_map_lookup_elem(&ipm_hostres4, &rk);
	if (e) {
		touch_entry(e, now, f, 0);
	} else {
		hv.created_ns = now;
		hv.last_seen_ns = now;
		hv.addr = f->saddr;
		hv.port = f->sport;
		hv.kind = IPM_KIND_HOST;
		hv.ifindex = skb->ifindex;
		/* A race with another CPU reserves it all the same. */
		bpf_map_update_elem(&ipm_hostres4, &rk, &hv, BPF_NOEXIST);
	}
	COUNT(c, egress_host);
	return TC_ACT_UNSPEC;
}

/*
 * Decides a parsed, unfragmented or first-fragment egress packet and applies
 * the decision. *left_as is the source address it leaves with, which later
 * fragments of the same datagram must get too.
 */
static __always_inline int egress_flow(struct __sk_buff *skb, struct ipm_counters *c,
				       const struct flow4 *f, __be32 *left_as)
{
	struct ipm_settings *s;
	struct ipm_nat_entry *e;
	struct ipm_nat_key k = {};
	__be32 to_addr;
	__be16 to_port;
	bool is_local;
	int verdict;
	__u64 now;

	*left_as = f->saddr;
	s = get_settings();
	if (!s)
		return TC_ACT_UNSPEC;
	/* The common case first: a pod's packet into a /24 that is not
	 * masqueraded and holds no mapping needs neither its flow nor any
	 * state (the host's packets go on: their tuples are reserved). */
	if (block_verdict(s, f->daddr) == IPM_BLOCK_NOMASQ && !is_local4(s, f->saddr)) {
		COUNT(c, egress_nomasq);
		return TC_ACT_UNSPEC;
	}

	k.saddr = f->saddr;
	k.daddr = f->daddr;
	k.sport = f->sport;
	k.dport = f->dport;
	k.proto = f->proto;
	k.dir = IPM_DIR_EGRESS;

	/* A known flow keeps the decision made on its first packet. */
	e = bpf_map_lookup_elem(&ipm_nat4, &k);
	if (e && e->kind == IPM_KIND_MASQ) {
		touch_entry(e, ipm_clock(s), f, 0);
		if (rewrite_endpoint(skb, f, true, e->addr, e->port)) {
			/* Half-rewritten: sending it would be worse. */
			COUNT(c, egress_malformed);
			return TC_ACT_SHOT;
		}
		*left_as = e->addr;
		COUNT(c, egress_translated);
		return TC_ACT_UNSPEC;
	}

	is_local = is_local4(s, f->saddr);
	if (is_local) {
		now = ipm_clock(s);
		verdict = host_egress(skb, c, f, now);
		if (verdict != VERDICT_MOVE)
			return verdict;
		goto map;
	}
	if (is_nomasq_dest(s, f->daddr)) {
		COUNT(c, egress_nomasq);
		return TC_ACT_UNSPEC;
	}
	if (!opens(f)) {
		/* A mid-stream TCP segment of a connection that was not
		 * masqueraded when it opened (the config changed since, or it
		 * was opened from outside), or an echo reply to an outside
		 * ping: rewriting it now would break it for sure. */
		if (f->proto == IPPROTO_TCP)
			COUNT(c, egress_tcp_no_map);
		else
			COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	if (f->proto == IPPROTO_UDP && bpf_map_lookup_elem(&ipm_inbound4, &k)) {
		/* A reply of a UDP flow an outside host opened: it expects
		 * the pod address (SPEC 3.5). */
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	now = ipm_clock(s);

map:
	verdict = new_mapping(skb, c, s, f, &k, now, &to_addr, &to_port);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;
	if (rewrite_endpoint(skb, f, true, to_addr, to_port)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	*left_as = to_addr;
	if (is_local)
		COUNT(c, egress_host_moved);
	else
		COUNT(c, egress_new_flow);
	return TC_ACT_UNSPEC;
}

/* A non-first fragment leaving: it follows its first fragment. */
static __always_inline int egress_later_fragment(struct __sk_buff *skb, struct ipm_counters *c,
						 const struct flow4 *f)
{
	struct ipm_frag_entry *fe = first_fragment(f, IPM_DIR_EGRESS, ipm_now());
	struct ipm_settings *s;

	if (fe) {
		if (fe->addr != f->saddr && rewrite_addr(skb, true, f->saddr, fe->addr)) {
			COUNT(c, egress_malformed);
			return TC_ACT_SHOT;
		}
		COUNT(c, egress_fragment);
		return TC_ACT_UNSPEC;
	}
	s = get_settings();
	if (!s || is_local4(s, f->saddr) || is_nomasq_dest(s, f->daddr)) {
		/* Whatever its first fragment does, this one keeps its
		 * addresses. */
		COUNT(c, egress_fragment);
		return TC_ACT_UNSPEC;
	}
	/* Ahead of its first fragment, which may be masqueraded: without
	 * buffering we cannot know, and leaving with the pod address would
	 * leak it (and never reassemble with a translated first). */
	COUNT(c, egress_frag_orphan);
	return TC_ACT_SHOT;
}

/* An ICMP error leaving, sent by a pod or by the node about a reply that
 * was translated on ingress: the quote and a pod source become the node's. */
static __always_inline int egress_icmp_error(struct __sk_buff *skb, struct ipm_counters *c,
					     const struct flow4 *f)
{
	struct ipm_nat_key k = {};
	struct ipm_nat_entry *e;
	struct quote4 q = {};

	if (!parse_quote(skb, f, &q)) {
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}
	/* The quote is remote -> pod; its flow's egress key is the reverse. */
	k.saddr = q.daddr;
	k.daddr = q.saddr;
	k.sport = q.dport;
	k.dport = q.sport;
	k.proto = q.proto;
	k.dir = IPM_DIR_EGRESS;
	e = bpf_map_lookup_elem(&ipm_nat4, &k);
	if (!e || e->kind != IPM_KIND_MASQ) {
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}
	if (rewrite_quote(skb, f, &q, false, e->addr, e->port,
			  f->saddr == q.daddr ? OUTER_SOURCE : OUTER_KEEP)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_icmp_error);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ipm_egress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return egress6(skb);

	struct ipm_counters *c = get_counters(FAMILY_IPV4);
	struct flow4 f = {};
	__be32 left_as;
	int verdict;

	switch (parse_ipv4(skb, &f)) {
	case PARSE_OK:
		verdict = egress_flow(skb, c, &f, &left_as);
		break;
	case PARSE_FRAGMENT:
		return egress_later_fragment(skb, c, &f);
	case PARSE_ICMP_ERROR:
		verdict = egress_icmp_error(skb, c, &f);
		left_as = 0;
		break;
	case PARSE_MALFORMED:
		/* Not ours to judge: the next hop drops what is broken. */
		COUNT(c, egress_malformed);
		return TC_ACT_UNSPEC;
	default:
		/* Other protocols keep their addresses (README: "What is
		 * rewritten"): address-only NAT would allow one flow per
		 * remote and protocol for the whole node. */
		COUNT(c, egress_other);
		verdict = TC_ACT_UNSPEC;
		left_as = f.saddr;
		break;
	}

	/* The later fragments of this datagram follow whatever happened to
	 * its first, whatever the protocol. */
	if (verdict == TC_ACT_UNSPEC && f.frag == FRAG_FIRST) {
		if (!left_as && bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr),
						   &left_as, sizeof(left_as)))
			return verdict;
		remember_first_fragment(&f, IPM_DIR_EGRESS, left_as, ipm_now());
	}
	return verdict;
}

/* A UDP datagram from outside to a pod address without a mapping: a flow
 * opened from outside (VPC-native pod IPs). Its replies must keep the pod
 * address even when the remote is outside the non-masquerade set. Returns
 * whether the datagram was for a pod (and so recorded). */
static __always_inline bool note_inbound(const struct flow4 *f, __u64 now)
{
	struct ipm_nat_key rk = {};
	struct ipm_inbound v = { .created_ns = now, .last_seen_ns = now };
	struct ipm_inbound *e;

	if (bpf_map_lookup_elem(&ipm_local4, &f->daddr))
		return false; /* for the host itself */
	rk.saddr = f->daddr;
	rk.daddr = f->saddr;
	rk.sport = f->dport;
	rk.dport = f->sport;
	rk.proto = f->proto;
	rk.dir = IPM_DIR_EGRESS;
	e = bpf_map_lookup_elem(&ipm_inbound4, &rk);
	if (e) {
		if (now - e->last_seen_ns > IPM_TOUCH_NS)
			e->last_seen_ns = now;
		return true;
	}
	bpf_map_update_elem(&ipm_inbound4, &rk, &v, BPF_NOEXIST);
	return true;
}

/* A non-first fragment arriving: translated when its first fragment was. */
static __always_inline int ingress_later_fragment(struct __sk_buff *skb, struct ipm_counters *c,
						  const struct flow4 *f)
{
	struct ipm_frag_entry *fe = first_fragment(f, IPM_DIR_INGRESS, ipm_now());

	if (!fe) {
		/* Not a translated reply, or ahead of its first fragment:
		 * the host gets it as it is (and drops it if it cannot
		 * reassemble it). */
		COUNT(c, ingress_frag_orphan);
		return TC_ACT_UNSPEC;
	}
	if (rewrite_addr(skb, false, f->daddr, fe->addr)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, ingress_fragment);
	return TC_ACT_UNSPEC;
}

/* An ICMP error arriving about a packet we translated, from the remote or any
 * router on the path: the quote and the destination go back to the pod. */
static __always_inline int ingress_icmp_error(struct __sk_buff *skb, struct ipm_counters *c,
					      const struct flow4 *f)
{
	struct ipm_nat_key k = {};
	struct ipm_nat_entry *e;
	struct quote4 q = {};

	if (!parse_quote(skb, f, &q)) {
		COUNT(c, ingress_other);
		return TC_ACT_UNSPEC;
	}
	/* The quote is node -> remote; its reply key is the reverse. */
	k.saddr = q.daddr;
	k.daddr = q.saddr;
	k.sport = q.dport;
	k.dport = q.sport;
	k.proto = q.proto;
	k.dir = IPM_DIR_INGRESS;
	e = bpf_map_lookup_elem(&ipm_nat4, &k);
	if (!e || e->kind != IPM_KIND_MASQ) {
		/* About the host's own traffic, or about nothing we know. */
		COUNT(c, ingress_miss);
		return TC_ACT_UNSPEC;
	}
	if (rewrite_quote(skb, f, &q, true, e->addr, e->port,
			  f->daddr == q.saddr ? OUTER_DEST : OUTER_KEEP)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, ingress_icmp_error);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ipm_ingress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ingress6(skb);

	struct ipm_counters *c = get_counters(FAMILY_IPV4);
	struct ipm_settings *s;
	struct ipm_nat_entry *e;
	struct ipm_nat_key k = {};
	struct flow4 f = {};
	__u64 now;

	switch (parse_ipv4(skb, &f)) {
	case PARSE_OK:
		break;
	case PARSE_FRAGMENT:
		return ingress_later_fragment(skb, c, &f);
	case PARSE_ICMP_ERROR:
		return ingress_icmp_error(skb, c, &f);
	case PARSE_MALFORMED:
		COUNT(c, ingress_malformed);
		return TC_ACT_UNSPEC;
	default:
		COUNT(c, ingress_other);
		return TC_ACT_UNSPEC;
	}

	k.saddr = f.saddr;
	k.daddr = f.daddr;
	k.sport = f.sport;
	k.dport = f.dport;
	k.proto = f.proto;
	k.dir = IPM_DIR_INGRESS;
	e = bpf_map_lookup_elem(&ipm_nat4, &k);
	s = get_settings();
	if (!e || e->kind != IPM_KIND_MASQ) {
		/* Only an exact match is translated: nothing else may reach
		 * a pod through a mapping made for another remote. The
		 * clock is read only where a time is stored. */
		e = bpf_map_lookup_elem(&ipm_hostres4, &k);
		if (e) {
			/* A reply to the host: refresh its reservation. */
			touch_entry(e, ipm_clock(s), &f, IPM_F_REPLIED);
			COUNT(c, ingress_host);
		} else if (f.proto == IPPROTO_UDP && note_inbound(&f, ipm_clock(s))) {
			COUNT(c, ingress_inbound);
		} else {
			COUNT(c, ingress_miss);
		}
		return TC_ACT_UNSPEC;
	}
	now = ipm_clock(s);
	touch_entry(e, now, &f, 0);
	if (rewrite_endpoint(skb, &f, false, e->addr, e->port)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	if (f.frag == FRAG_FIRST)
		remember_first_fragment(&f, IPM_DIR_INGRESS, e->addr, ipm_now());
	COUNT(c, ingress_translated);
	return TC_ACT_UNSPEC;
}

/* Not attached: the agent runs it (BPF_PROG_TEST_RUN) to read jiffies and
 * CLOCK_MONOTONIC together, for the calibration in clock.h. */
SEC("tc")
int ipm_clock_read(struct __sk_buff *skb)
{
	struct ipm_clock_sample *v;
	__u32 zero = 0;

	v = bpf_map_lookup_elem(&ipm_clock_sample, &zero);
	if (!v)
		return TC_ACT_UNSPEC;
	v->jiffies = bpf_jiffies64();
	v->ns = bpf_ktime_get_ns();
	return TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
