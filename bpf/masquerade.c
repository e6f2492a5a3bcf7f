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

#include "ipmasq.h"
#include "maps.h"
#include "nat.h"
#include "packet.h"

static __always_inline struct ipm_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ipm_stats, &zero);
}

#define COUNT(c, field)                                                                            \
	do {                                                                                       \
		if (c)                                                                             \
			(c)->field++;                                                              \
	} while (0)

/* A new SYN that opens a connection, as opposed to a SYN-ACK answering one. */
static __always_inline bool opens_tcp(const struct flow4 *f)
{
	return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

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
	long err;

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
	err = bpf_map_update_elem(&ipm_nat4, k, &ev, BPF_NOEXIST);
	if (!err) {
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
 * If a pod mapping holds the tuple already, a new host flow is moved to
 * another node port instead, as conntrack does on a clash; its replies are
 * translated back to the host's own port on ingress.
 */
static __always_inline int host_egress(struct __sk_buff *skb, struct ipm_counters *c,
				       const struct ipm_settings *s, const struct flow4 *f,
				       const struct ipm_nat_key *k, __u64 now)
{
	struct ipm_nat_key rk = {};
	struct ipm_nat_entry hv = {};
	struct ipm_nat_entry *e;
	__be32 to_addr;
	__be16 to_port;
	int verdict;

	reply_key(f, &rk);
	e = bpf_map_lookup_elem(&ipm_nat4, &rk);
	if (!e) {
		hv.created_ns = now;
		hv.last_seen_ns = now;
		hv.addr = f->saddr;
		hv.port = f->sport;
		hv.kind = IPM_KIND_HOST;
		hv.ifindex = skb->ifindex;
		/* Losing a race to another CPU is fine: the tuple is
		 * reserved either way. A full table leaves it unreserved,
		 * which must not stop the host's own traffic. */
		bpf_map_update_elem(&ipm_nat4, &rk, &hv, BPF_NOEXIST);
		COUNT(c, egress_host);
		return TC_ACT_UNSPEC;
	}
	if (e->kind != IPM_KIND_MASQ || (f->proto == IPPROTO_TCP && !opens_tcp(f))) {
		/* Our reservation, or a running connection we cannot move. */
		touch_entry(e, now, f, 0);
		COUNT(c, egress_host);
		return TC_ACT_UNSPEC;
	}

	verdict = new_mapping(skb, c, s, f, k, now, &to_addr, &to_port);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;
	if (rewrite_endpoint(skb, f, true, to_addr, to_port)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_host_moved);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ipm_egress(struct __sk_buff *skb)
{
	struct ipm_counters *c = get_counters();
	struct ipm_settings *s;
	struct ipm_nat_entry *e;
	struct ipm_nat_key k = {};
	struct flow4 f = {};
	__be32 to_addr;
	__be16 to_port;
	__u64 now;
	int verdict;

	switch (parse_ipv4(skb, &f, ICMP_ECHO)) {
	case PARSE_OK:
		break;
	case PARSE_MALFORMED:
		/* Not ours to judge: the next hop drops what is broken. */
		COUNT(c, egress_malformed);
		return TC_ACT_UNSPEC;
	case PARSE_FRAGMENT:
		COUNT(c, egress_fragment);
		return TC_ACT_UNSPEC;
	default:
		COUNT(c, egress_other);
		return TC_ACT_UNSPEC;
	}

	k.saddr = f.saddr;
	k.daddr = f.daddr;
	k.sport = f.sport;
	k.dport = f.dport;
	k.proto = f.proto;
	k.dir = IPM_DIR_EGRESS;
	now = bpf_ktime_get_ns();

	/* A known flow keeps the decision made on its first packet. */
	e = bpf_map_lookup_elem(&ipm_nat4, &k);
	if (e) {
		touch_entry(e, now, &f, 0);
		if (e->kind != IPM_KIND_MASQ) {
			/* Reply of a flow opened from outside: keep the pod
			 * address, the remote expects it. */
			COUNT(c, egress_inbound);
			return TC_ACT_UNSPEC;
		}
		if (rewrite_endpoint(skb, &f, true, e->addr, e->port)) {
			/* Half-rewritten: sending it would be worse. */
			COUNT(c, egress_malformed);
			return TC_ACT_SHOT;
		}
		COUNT(c, egress_translated);
		return TC_ACT_UNSPEC;
	}

	s = get_settings();
	if (!s)
		return TC_ACT_UNSPEC;
	if (bpf_map_lookup_elem(&ipm_local4, &f.saddr))
		return host_egress(skb, c, s, &f, &k, now);

	if (is_nomasq_dest(s, f.daddr)) {
		COUNT(c, egress_nomasq);
		return TC_ACT_UNSPEC;
	}
	if (f.proto == IPPROTO_TCP && !opens_tcp(&f)) {
		/* Mid-stream segment of a connection that was not
		 * masqueraded when it opened (the config changed since):
		 * rewriting it now would break it for sure. */
		COUNT(c, egress_tcp_no_map);
		return TC_ACT_UNSPEC;
	}

	verdict = new_mapping(skb, c, s, &f, &k, now, &to_addr, &to_port);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;
	if (rewrite_endpoint(skb, &f, true, to_addr, to_port)) {
		COUNT(c, egress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, egress_new_flow);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ipm_ingress(struct __sk_buff *skb)
{
	struct ipm_counters *c = get_counters();
	struct ipm_nat_entry *e;
	struct ipm_nat_key k = {};
	struct flow4 f = {};

	switch (parse_ipv4(skb, &f, ICMP_ECHOREPLY)) {
	case PARSE_OK:
		break;
	case PARSE_MALFORMED:
		COUNT(c, ingress_malformed);
		return TC_ACT_UNSPEC;
	case PARSE_FRAGMENT:
		COUNT(c, ingress_fragment);
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
	if (e && e->kind == IPM_KIND_HOST) {
		/* A reply to the host: refresh its reservation. */
		touch_entry(e, bpf_ktime_get_ns(), &f, IPM_F_REPLIED);
		COUNT(c, ingress_host);
		return TC_ACT_UNSPEC;
	}
	if (!e || e->kind != IPM_KIND_MASQ) {
		/* Only an exact match is translated: nothing else may reach
		 * a pod through a mapping made for another remote. */
		COUNT(c, ingress_miss);
		return TC_ACT_UNSPEC;
	}
	touch_entry(e, bpf_ktime_get_ns(), &f, 0);
	if (rewrite_endpoint(skb, &f, false, e->addr, e->port)) {
		COUNT(c, ingress_malformed);
		return TC_ACT_SHOT;
	}
	COUNT(c, ingress_translated);
	return TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
