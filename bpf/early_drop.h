/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Early drop: when the NAT table is full, a new flow first removes flows
 * that never got a reply (and expired ones), oldest first, and is refused
 * only when there are none, so one pod spraying unanswered flows cannot deny new flows to every
 * other pod (conntrack does the same with its unassured entries). The
 * candidates come from a ring of the egress keys of recent mappings in
 * creation order (ipm_recent4/6, maps.h); docs/table-pressure.md has the
 * design and its limits.
 */
#ifndef IPMASQ_EARLY_DROP_H
#define IPMASQ_EARLY_DROP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "clock.h"
#include "counters.h"
#include "expiry.h"
#include "ipmasq.h"
#include "maps.h"
#include "packet6.h"

/* Records looked at by one early drop, and flows it removes at most: two
 * flows free four entries, so the next new flows find room without paying
 * for a search each. */
#define IPM_EARLY_DROP_SCAN  64
#define IPM_EARLY_DROP_BATCH 2

/* The ring position of a family, 0: IPv4, 1: IPv6. */
static __always_inline struct ipm_recent_pos *recent_pos(__u32 family)
{
	return bpf_map_lookup_elem(&ipm_recent_pos, &family);
}

/* Appends the egress key k of a mapping created at created_ns to the IPv4
 * ring. Plain loads and stores: see ipm_recent4 in maps.h. */
static __always_inline void remember_new4(const struct ipm_nat_key *k, __u64 created_ns)
{
	struct ipm_recent_pos *pos = recent_pos(0);
	struct ipm_recent4_slot *slot;
	__u32 idx;
	__u64 head;

	if (!pos)
		return;
	head = pos->head;
	idx = head & (IPM_RECENT_SLOTS - 1);
	slot = bpf_map_lookup_elem(&ipm_recent4, &idx);
	if (!slot)
		return;
	slot->key = *k;
	slot->created_ns = created_ns;
	pos->head = head + 1;
}

static __always_inline void remember_new6(const struct ipm_nat6_key *k, __u64 created_ns)
{
	struct ipm_recent_pos *pos = recent_pos(1);
	struct ipm_recent6_slot *slot;
	__u32 idx;
	__u64 head;

	if (!pos)
		return;
	head = pos->head;
	idx = head & (IPM_RECENT_SLOTS - 1);
	slot = bpf_map_lookup_elem(&ipm_recent6, &idx);
	if (!slot)
		return;
	slot->key = *k;
	slot->created_ns = created_ns;
	pos->head = head + 1;
}

/* What early drop did with a ring record. */
enum drop_result {
	DROP_KEPT = 0,	/* gone already, replaced, or replied and live */
	DROP_UNREPLIED, /* never got a reply: removed */
	DROP_EXPIRED,	/* past its timeout (expiry.h): removed */
};

/* Removes the IPv4 flow recorded in ring slot idx if it is still the flow
 * recorded there (same creation time) and its reply half never saw a
 * packet, or it has expired: the reply half first, then the egress half. */
static __always_inline enum drop_result
drop_unreplied4(const struct ipm_settings *s, struct ipm_scratch *sc, __u32 idx, __u64 now)
{
	struct ipm_recent4_slot *slot = bpf_map_lookup_elem(&ipm_recent4, &idx);
	struct ipm_nat_key *k = &sc->drop4, *rk = &sc->drop_reply4;
	enum drop_result result = DROP_UNREPLIED;
	struct ipm_nat_entry *out, *in;

	if (!slot)
		return DROP_KEPT;
	*k = slot->key;
	out = bpf_map_lookup_elem(&ipm_nat4, k);
	if (!out || out->kind != IPM_KIND_MASQ || out->created_ns != slot->created_ns)
		return DROP_KEPT;
	rk->saddr = k->daddr;
	rk->daddr = out->addr;
	rk->sport = k->dport; /* ICMP: 0 on both */
	rk->dport = out->port;
	rk->proto = k->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	in = bpf_map_lookup_elem(&ipm_nat4, rk);
	if (in && (in->kind != IPM_KIND_MASQ || in->addr != k->saddr || in->port != k->sport))
		in = NULL; /* another flow's reply half now: not ours to judge or delete */
	if (in && flow_replied(in)) {
		/* Replied: never dropped early, only once expired. */
		if (!flow_expired(s, k->proto, out, in, now))
			return DROP_KEPT;
		result = DROP_EXPIRED;
	}
	if (in)
		bpf_map_delete_elem(&ipm_nat4, rk);
	return bpf_map_delete_elem(&ipm_nat4, k) ? DROP_KEPT : result;
}

static __always_inline enum drop_result
drop_unreplied6(const struct ipm_settings *s, struct ipm_scratch *sc, __u32 idx, __u64 now)
{
	struct ipm_recent6_slot *slot = bpf_map_lookup_elem(&ipm_recent6, &idx);
	struct ipm_nat6_key *k = &sc->drop6, *rk = &sc->drop_reply6;
	enum drop_result result = DROP_UNREPLIED;
	struct ipm_nat6_entry *out, *in;

	if (!slot)
		return DROP_KEPT;
	*k = slot->key;
	out = bpf_map_lookup_elem(&ipm_nat6, k);
	if (!out || out->kind != IPM_KIND_MASQ || out->created_ns != slot->created_ns)
		return DROP_KEPT;
	addr6_copy(rk->saddr, k->daddr);
	addr6_copy(rk->daddr, out->addr);
	rk->sport = k->dport;
	rk->dport = out->port;
	rk->proto = k->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	in = bpf_map_lookup_elem(&ipm_nat6, rk);
	if (in &&
	    (in->kind != IPM_KIND_MASQ || !addr6_eq(in->addr, k->saddr) || in->port != k->sport))
		in = NULL;
	if (in && flow_replied(in)) {
		if (!flow_expired(s, k->proto, out, in, now))
			return DROP_KEPT;
		result = DROP_EXPIRED;
	}
	if (in)
		bpf_map_delete_elem(&ipm_nat6, rk);
	return bpf_map_delete_elem(&ipm_nat6, k) ? DROP_KEPT : result;
}

/* One ring record of family looked at by early drop: 1 when its flow was
 * removed, counted as nat_early_drop (never replied) or nat_reclaimed
 * (expired). A global function, so the verifier checks the lookups once and
 * not once per iteration of the caller's loop. */
__attribute__((noinline)) int ipm_drop_unreplied(__u32 family, __u32 idx)
{
	struct ipm_settings *s;
	struct ipm_scratch *sc;
	struct ipm_counters *c;
	enum drop_result r;
	__u32 zero = 0;
	__u64 now;

	s = bpf_map_lookup_elem(&ipm_settings, &zero);
	sc = bpf_map_lookup_elem(&ipm_scratch, &zero);
	if (!s || !sc)
		return 0;
	now = ipm_clock(s);
	idx &= IPM_RECENT_SLOTS - 1;
	if (family)
		r = drop_unreplied6(s, sc, idx, now);
	else
		r = drop_unreplied4(s, sc, idx, now);
	if (r == DROP_KEPT)
		return 0;
	c = get_counters(family);
	if (r == DROP_EXPIRED)
		COUNT(c, nat_reclaimed);
	else
		COUNT(c, nat_early_drop);
	return 1;
}

/*
 * The table of family is full: removes up to IPM_EARLY_DROP_BATCH flows that
 * never got a reply or have expired, looking at up to IPM_EARLY_DROP_SCAN of
 * the oldest ring records; every record looked at is consumed (a replied
 * flow stays replied, a removed one is gone; a replied flow that expires
 * later is the agent's again). Returns how many flows it removed.
 */
__attribute__((noinline)) int ipm_early_drop(__u32 family)
{
	struct ipm_recent_pos *pos = recent_pos(family);
	__u64 head, tail;
	int freed = 0;

	if (!pos)
		return 0;
	head = pos->head;
	tail = pos->tail;
	/* Overwritten records are gone; a tail ahead of the head (two CPUs
	 * racing) restarts from the oldest record still there. */
	if (head - tail > IPM_RECENT_SLOTS)
		tail = head > IPM_RECENT_SLOTS ? head - IPM_RECENT_SLOTS : 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < IPM_EARLY_DROP_SCAN; i++) {
		if (tail == head)
			break;
		freed += ipm_drop_unreplied(family, (__u32)tail) ? 1 : 0;
		tail++;
		if (freed >= IPM_EARLY_DROP_BATCH)
			break;
	}
	pos->tail = tail;
	return freed;
}

#endif /* IPMASQ_EARLY_DROP_H */
