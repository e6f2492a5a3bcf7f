/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The reply half's activity, copied into the egress half.
 *
 * A flow's state and age come from both of its halves (expiry.h), but the
 * two halves lie in unrelated hash buckets. The agent's expiry reads the
 * table in chunks; joining every egress half with its reply half would cost
 * one lookup per flow, most of a pass at a million flows. So the ingress
 * path keeps the egress half able to stand for its flow:
 *
 * - IPM_F_REPLIED once a reply came back (the flow is established);
 * - IPM_F_RST when the remote's plausible RST was seen, IPM_F_PEER_FIN for
 *   its plausible FIN (the egress half's own IPM_F_FIN is the pod's);
 * - last_seen_ns at least the reply half's, refreshed when a reply arrives
 *   in a newer period of 2^30 ns (about 1.07 s) than the one before, so the
 *   copy costs one lookup per second of a busy flow, not one per packet.
 *
 * The copy can lag by up to a period, always on the side of an older time,
 * so it can only make a flow look expired early: the agent then reads both
 * halves before it deletes anything (docs/design.md, "Expiry").
 */
#ifndef IPMASQ_REPLY_MIRROR_H
#define IPMASQ_REPLY_MIRROR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"

#define IPM_MIRROR_SHIFT 30

/* Whether a packet on reply half in, which held last_seen prev_seen and
 * flags prev_flags before the packet, must be copied into its egress half:
 * a new flag, a first reply, or a new period. */
#define mirror_due(prev_seen, prev_flags, in, now)                                                 \
	((((now) >> IPM_MIRROR_SHIFT) != ((prev_seen) >> IPM_MIRROR_SHIFT)) ||                     \
	 (in)->flags != (prev_flags))

/* Copies reply half in's activity into egress half eg (entries of either
 * family, which name these fields alike). Writes only what changes. */
#define mirror_into(eg, in, now)                                                                   \
	do {                                                                                       \
		__u8 add_ = IPM_F_REPLIED;                                                         \
		if ((in)->flags & IPM_F_RST)                                                       \
			add_ |= IPM_F_RST;                                                         \
		if ((in)->flags & IPM_F_FIN)                                                       \
			add_ |= IPM_F_PEER_FIN;                                                    \
		if ((__s64)((now) - (eg)->last_seen_ns) > 0)                                       \
			(eg)->last_seen_ns = (now);                                                \
		if (add_ & ~(eg)->flags)                                                           \
			(eg)->flags |= add_;                                                       \
	} while (0)

/* The egress key of the mapping whose reply half in is stored under rk
 * (ICMP: the remote side's port is 0 in both keys). */
#define egress_key_of(ok, rk, in)                                                                  \
	do {                                                                                       \
		__builtin_memcpy(&(ok)->saddr, &(in)->addr, sizeof((ok)->saddr));                  \
		__builtin_memcpy(&(ok)->daddr, &(rk)->saddr, sizeof((ok)->daddr));                 \
		(ok)->sport = (in)->port;                                                          \
		(ok)->dport = (rk)->sport;                                                         \
		(ok)->proto = (rk)->proto;                                                         \
		(ok)->dir = IPM_DIR_EGRESS;                                                        \
	} while (0)

/* Copies reply half in, stored under key rk in NAT table map (either
 * family's), into its egress half, if that exists. */
#define mirror_reply(map, rk, in, now)                                                             \
	do {                                                                                       \
		__typeof__(*(rk)) ok_ = {};                                                        \
		__typeof__(in) eg_;                                                                \
		egress_key_of(&ok_, rk, in);                                                       \
		eg_ = bpf_map_lookup_elem(map, &ok_);                                              \
		if (eg_ && eg_->kind == IPM_KIND_MASQ)                                             \
			mirror_into(eg_, in, now);                                                 \
	} while (0)

#endif /* IPMASQ_REPLY_MIRROR_H */
