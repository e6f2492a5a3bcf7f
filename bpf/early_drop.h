/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Early drop: when the NAT table is full, a new flow first removes flows
 * that never got a reply, oldest first, and is refused only when there are
 * none, so one pod spraying unanswered flows cannot deny new flows to every
 * other pod (conntrack does the same with its unassured entries). The
 * candidates come from a ring of the egress keys of recent mappings in
 * creation order (ipm_recent4/6, maps.h); docs/table-pressure.md has the
 * design and its limits.
 */
#ifndef IPMASQ_EARLY_DROP_H
#define IPMASQ_EARLY_DROP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
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

/* Removes the IPv4 flow recorded in ring slot idx if it is still the flow
 * recorded there (same creation time) and its reply half never saw a
 * packet: the reply half first, then the egress half. True when removed. */
static __always_inline bool drop_unreplied4(struct ipm_scratch *sc, __u32 idx)
{
	struct ipm_recent4_slot *slot = bpf_map_lookup_elem(&ipm_recent4, &idx);
	struct ipm_nat_key *k = &sc->drop4, *rk = &sc->drop_reply4;
	struct ipm_nat_entry *out, *in;

	if (!slot)
		return false;
	*k = slot->key;
	out = bpf_map_lookup_elem(&ipm_nat4, k);
	if (!out || out->kind != IPM_KIND_MASQ || out->created_ns != slot->created_ns)
		return false;
	rk->saddr = k->daddr;
	rk->daddr = out->addr;
	rk->sport = k->dport; /* ICMP: 0 on both */
	rk->dport = out->port;
	rk->proto = k->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	in = bpf_map_lookup_elem(&ipm_nat4, rk);
	if (in && in->last_seen_ns)
		return false; /* replied: a live flow, never dropped early */
	if (in)
		bpf_map_delete_elem(&ipm_nat4, rk);
	return !bpf_map_delete_elem(&ipm_nat4, k);
}

static __always_inline bool drop_unreplied6(struct ipm_scratch *sc, __u32 idx)
{
	struct ipm_recent6_slot *slot = bpf_map_lookup_elem(&ipm_recent6, &idx);
	struct ipm_nat6_key *k = &sc->drop6, *rk = &sc->drop_reply6;
	struct ipm_nat6_entry *out, *in;

	if (!slot)
		return false;
	*k = slot->key;
	out = bpf_map_lookup_elem(&ipm_nat6, k);
	if (!out || out->kind != IPM_KIND_MASQ || out->created_ns != slot->created_ns)
		return false;
	addr6_copy(rk->saddr, k->daddr);
	addr6_copy(rk->daddr, out->addr);
	rk->sport = k->dport;
	rk->dport = out->port;
	rk->proto = k->proto;
	rk->dir = IPM_DIR_INGRESS;
	rk->pad = 0;
	in = bpf_map_lookup_elem(&ipm_nat6, rk);
	if (in && in->last_seen_ns)
		return false;
	if (in)
		bpf_map_delete_elem(&ipm_nat6, rk);
	return !bpf_map_delete_elem(&ipm_nat6, k);
}

/* One ring record of family looked at by early drop: 1 when its flow was
 * removed. A global function, so the verifier checks the lookups once and
 * not once per iteration of the caller's loop. */
__attribute__((noinline)) int ipm_drop_unreplied(__u32 family, __u32 idx)
{
	struct ipm_scratch *sc;
	__u32 zero = 0;

	sc = bpf_map_lookup_elem(&ipm_scratch, &zero);
	if (!sc)
		return 0;
	idx &= IPM_RECENT_SLOTS - 1;
	if (family)
		return drop_unreplied6(sc, idx);
	return drop_unreplied4(sc, idx);
}

/*
 * The table of family is full: removes up to IPM_EARLY_DROP_BATCH flows that
 * never got a reply, looking at up to IPM_EARLY_DROP_SCAN of the oldest ring
 * records; every record looked at is consumed (a replied flow stays replied,
 * a removed one is gone). Returns how many flows it removed.
 */
__attribute__((noinline)) int ipm_early_drop(__u32 family)
{
	struct ipm_recent_pos *pos = recent_pos(family);
	struct ipm_counters *c;
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
	if (freed) {
		c = get_counters(family);
		if (c)
			c->nat_early_drop += freed;
	}
	return freed;
}

#endif /* IPMASQ_EARLY_DROP_H */
