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
#include "exempt.h"
#include "frag.h"
#include "icmp_error.h"
#include "ipmasq.h"
#include "maps.h"
#include "masquerade6.h"
#include "nat.h"
#include "packet.h"
#include "reply_mirror.h"
#include "reset.h"
#include "tcp_state.h"

/* Creates both halves of a mapping for flow f and returns the egress half's
 * translation in to_addr/to_port; any verdict but TC_ACT_UNSPEC means the
 * packet must not leave. keep_source: a host flow moved to another port
 * keeps its own address, which need not be the interface's primary. */
static __always_inline int new_mapping(struct __sk_buff *skb, struct ipm_counters *c,
				       const struct ipm_settings *s, const struct flow4 *f,
				       const struct ipm_nat_key *k, __u64 now, bool keep_source,
				       __be32 *to_addr, __be16 *to_port)
{
	struct ipm_nat_key rk = {};
	struct ipm_nat_entry ev = {};
	struct ipm_nat_entry *e;
	struct ipm_iface *iface;
	__u32 ifindex = skb->ifindex;
	__be32 node;
	int err;

	iface = bpf_map_lookup_elem(&ipm_ifaces, &ifindex);
	if (!iface || !iface->addr4) {
		/* Leaving with the pod address would leak it to a network
		 * that drops or misroutes it: fail closed until the agent
		 * knows this interface's address. */
		COUNT(c, egress_no_iface);
		return TC_ACT_SHOT;
	}
	node = keep_source ? f->saddr : iface->addr4;

	switch (reserve_reply_half(s, f, node, ifindex, now, &rk)) {
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
	ev.addr = node;
	ev.port = rk.dport;
	ev.kind = IPM_KIND_MASQ;
	ev.ifindex = ifindex;
	if (f->proto == IPPROTO_TCP) {
		/* Opened by a SYN: its window scale judges later RSTs, and
		 * until the pod acknowledges anything, only a RST that
		 * acknowledges this SYN counts. */
		ev.flags = IPM_F_WSCALE;
		ev.tcp_wscale = syn_wscale(skb, f->l4_off);
		ev.tcp_ack = bpf_ntohl(f->tcp_seq) + 1;
	}
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
		if (!insert_new(&ipm_hostres4, &rk, &hv))
			COUNT(c, lru_hostres_new);
	}
	COUNT(c, egress_host);
	return TC_ACT_UNSPEC;
}

/* The egress key of a packet leaving as f, or of the replies to a packet
 * arriving as f (reply = true). */
static __always_inline void egress_key(const struct flow4 *f, bool reply, struct ipm_nat_key *k)
{
	k->saddr = reply ? f->daddr : f->saddr;
	k->daddr = reply ? f->saddr : f->daddr;
	k->sport = reply ? f->dport : f->sport;
	k->dport = reply ? f->sport : f->dport;
	k->proto = f->proto;
	k->dir = IPM_DIR_EGRESS;
	k->pad = 0;
}

/* A pod's SYN towards a destination that is not masqueraded: recorded, so
 * that its connection keeps passing unchanged if a config change
 * masquerades the destination later. */
static __noinline void note_nomasq_syn(const struct ipm_settings *s, const struct flow4 *f)
{
	struct ipm_nat_key k = {};

	egress_key(f, false, &k);
	record_exempt(&ipm_nomasq_tcp4, &k, ipm_clock(s), FAMILY_IPV4, IPM_LRU_NOMASQ_TCP);
}

/* The key of the other half of a TCP mapping, in direction dir, from the
 * remote's address and port and the half in hand's translation (addr,
 * port: the node side of an egress half, the pod side of an ingress one). */
static __always_inline void tcp_other_half(struct ipm_nat_key *k, enum ipm_dir dir, __be32 remote,
					   __be16 remote_port, __be32 addr, __be16 port)
{
	bool in = dir == IPM_DIR_INGRESS;

	k->saddr = in ? remote : addr;
	k->daddr = in ? addr : remote;
	k->sport = in ? remote_port : port;
	k->dport = in ? port : remote_port;
	k->proto = IPPROTO_TCP;
	k->dir = dir;
}

/* The TCP state a pod's segment on mapping e carries: a SYN may start the
 * mapping afresh, any other segment tells the pod's receive window. */
static __noinline void egress_tcp_restart(struct __sk_buff *skb, const struct flow4 *f,
					  struct ipm_nat_entry *e, __u64 now)
{
	struct ipm_nat_key rk = {};
	struct ipm_nat_entry *in;

	tcp_other_half(&rk, IPM_DIR_INGRESS, f->daddr, f->dport, e->addr, e->port);
	in = bpf_map_lookup_elem(&ipm_nat4, &rk);
	restart_on_syn(e, in, now, syn_wscale(skb, f->l4_off));
	track_pod_syn(e, f);
}

/*
 * A pod's TCP segment without SYN and without mapping, towards a masqueraded
 * destination. It passes unchanged only when its connection is known to be
 * exempt: opened from outside, or opened while the destination was not
 * masqueraded. Otherwise leaving would leak the pod address (its mapping
 * expired, was evicted or was lost) and dropping alone would leave the
 * application hanging: the segment becomes a RST back to the pod.
 */
static __noinline int egress_tcp_unknown(struct __sk_buff *skb, struct ipm_counters *c,
					 const struct ipm_settings *s, const struct flow4 *f,
					 const struct ipm_nat_key *k)
{
	__u64 now = ipm_clock(s);

	if (refresh_exempt(&ipm_inbound4, k, now)) {
		/* A reply of a connection an outside host opened. */
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	if (refresh_exempt(&ipm_nomasq_tcp4, k, now)) {
		/* Opened non-masqueraded: rewriting it now would break it. */
		COUNT(c, egress_tcp_no_map);
		return TC_ACT_UNSPEC;
	}
	if (!(f->tcp_flags & TCP_FLAG_RST) && !reset_pod4(skb, f)) {
		COUNT(c, egress_tcp_reset);
		/* The segment, now a RST from the remote, goes to this
		 * interface's ingress and from there to the pod. */
		return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	}
	/* A RST is never answered with a reset; a segment we could not turn
	 * into one is dropped all the same: it must not leak. */
	COUNT(c, egress_tcp_unknown_drop);
	return TC_ACT_SHOT;
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
		if (f->proto == IPPROTO_TCP && tcp_is_syn(f->tcp_flags))
			note_nomasq_syn(s, f);
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
		now = ipm_clock(s);
		touch_entry(e, now, f, 0);
		if (f->proto == IPPROTO_TCP && !tcp_is_syn(f->tcp_flags))
			track_pod_window(e, f);
		else if (f->proto == IPPROTO_TCP)
			egress_tcp_restart(skb, f, e, now);
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
		if (f->proto == IPPROTO_TCP && tcp_is_syn(f->tcp_flags))
			note_nomasq_syn(s, f);
		COUNT(c, egress_nomasq);
		return TC_ACT_UNSPEC;
	}
	if (!is_masq_source(s, f->saddr)) {
		/* Routed from behind the node (a VM, a VPN client), not a pod
		 * (--source-cidrs): leaves as it is, mid-stream or not. */
		COUNT(c, egress_not_source);
		return TC_ACT_UNSPEC;
	}
	if (!opens(f)) {
		if (f->proto == IPPROTO_TCP)
			return egress_tcp_unknown(skb, c, s, f, &k);
		/* An echo reply to an outside ping: it expects the pod
		 * address. */
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}
	now = ipm_clock(s);
	if (f->proto == IPPROTO_UDP && refresh_exempt(&ipm_inbound4, &k, now)) {
		/* A reply of a UDP flow an outside host opened: it expects
		 * the pod address, and while the pod answers the flow is
		 * alive, however quiet the remote. */
		COUNT(c, egress_inbound);
		return TC_ACT_UNSPEC;
	}

map:
	verdict = new_mapping(skb, c, s, f, &k, now, is_local, &to_addr, &to_port);
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
	if (!s || is_local4(s, f->saddr) || is_nomasq_dest(s, f->daddr) ||
	    !is_masq_source(s, f->saddr)) {
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

/* A UDP datagram or a TCP SYN from outside to a pod address without a
 * mapping: a flow opened from outside (VPC-native pod IPs). Its replies must
 * keep the pod address even when the remote is outside the non-masquerade
 * set. A UDP flow from a remote in that set needs no record (its replies are
 * not masqueraded anyway); a TCP connection from there is recorded apart,
 * as opened non-masqueraded, so a config change does not reset it. Returns
 * whether the packet was for a pod and recorded. */
static __always_inline bool note_inbound(const struct ipm_settings *s, const struct flow4 *f,
					 __u64 now)
{
	struct ipm_nat_key rk = {};

	if (!s || bpf_map_lookup_elem(&ipm_local4, &f->daddr))
		return false; /* for the host itself */
	egress_key(f, true, &rk);
	if (is_nomasq_dest(s, f->saddr)) {
		if (f->proto != IPPROTO_TCP)
			return false;
		record_exempt(&ipm_nomasq_tcp4, &rk, now, FAMILY_IPV4, IPM_LRU_NOMASQ_TCP);
		return true;
	}
	if (f->proto == IPPROTO_TCP) {
		record_exempt(&ipm_inbound4, &rk, now, FAMILY_IPV4, IPM_LRU_INBOUND);
		return true;
	}
	if (!refresh_exempt(&ipm_inbound4, &rk, now))
		record_exempt(&ipm_inbound4, &rk, now, FAMILY_IPV4, IPM_LRU_INBOUND);
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
	enum quote_outer outer;

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
	outer = f->daddr == q.saddr ? OUTER_DEST : OUTER_KEEP;
	if (rewrite_quote(skb, f, &q, true, e->addr, e->port, outer)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	/* A large error (a quote of a full packet) may come in fragments:
	 * the later ones carry no quote and follow this one. */
	if (f->frag == FRAG_FIRST)
		remember_first_fragment(f, IPM_DIR_INGRESS,
					outer == OUTER_DEST ? e->addr : f->daddr, ipm_now());
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
	bool implausible = false;
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
		} else if ((f.proto == IPPROTO_UDP ||
			    (f.proto == IPPROTO_TCP && tcp_is_syn(f.tcp_flags))) &&
			   note_inbound(s, &f, ipm_clock(s))) {
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
	implausible = !record_reply(&ipm_nat4, &k, e, &f, now);
	if (rewrite_endpoint(skb, &f, false, e->addr, e->port)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	if (f.frag == FRAG_FIRST)
		remember_first_fragment(&f, IPM_DIR_INGRESS, e->addr, ipm_now());
	if (implausible)
		COUNT(c, ingress_tcp_implausible);
	else
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
