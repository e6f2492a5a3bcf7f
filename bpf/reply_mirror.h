/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The reply half's activity, copied into the egress half.
 *
 * A flow's state and age come from both of its halves (expiry.h), but the
 * two halves lie in unrelated hash buckets. The agent's expiry reads the
 * table in chunks; joining every egress half with its reply half would cost
 * one lookup per flow, most of a pass at a million flows. So the ingress
 * path keeps the egress half able to stand for its flow, in its reply_flags
 * byte and last_seen_ns:
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
 *
 * The lookup of the egress half also judges the remote's TCP segment against
 * the pod's side (tcp_state.h): only a plausible one is recorded in either
 * half (record_reply).
 */
#ifndef IPMASQ_REPLY_MIRROR_H
#define IPMASQ_REPLY_MIRROR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "nat.h"
#include "tcp_state.h"

#define IPM_MIRROR_SHIFT 30

/* Whether a packet on reply half in, which held last_seen prev_seen and
 * flags prev_flags before the packet, must be copied into its egress half:
 * a new flag, a first reply, or a new period. */
#define mirror_due(prev_seen, prev_flags, in, now)                                                 \
	((((now) >> IPM_MIRROR_SHIFT) != ((prev_seen) >> IPM_MIRROR_SHIFT)) ||                     \
	 (in)->flags != (prev_flags))

/* Copies reply half in's activity into egress half eg (entries of either
 * family, which name these fields alike): its flags into reply_flags, which
 * only this writes. Writes only what changes. */
#define mirror_into(eg, in, now)                                                                   \
	do {                                                                                       \
		__u8 add_ = IPM_F_REPLIED;                                                         \
		if ((in)->flags & IPM_F_RST)                                                       \
			add_ |= IPM_F_RST;                                                         \
		if ((in)->flags & IPM_F_FIN)                                                       \
			add_ |= IPM_F_PEER_FIN;                                                    \
		if ((__s64)((now) - (eg)->last_seen_ns) > 0)                                       \
			(eg)->last_seen_ns = (now);                                                \
		if (add_ & ~(eg)->reply_flags)                                                     \
			(eg)->reply_flags |= add_;                                                 \
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

/* The egress half of the mapping whose reply half in is stored under key rk
 * in NAT table map (either family's); NULL if it is missing. */
#define egress_half_of(map, rk, in)                                                                \
	({                                                                                         \
		__typeof__(*(rk)) ok_ = {};                                                        \
		__typeof__(in) eg_;                                                                \
		egress_key_of(&ok_, rk, in);                                                       \
		eg_ = bpf_map_lookup_elem(map, &ok_);                                              \
		if (eg_ && eg_->kind != IPM_KIND_MASQ)                                             \
			eg_ = NULL;                                                                \
		eg_;                                                                               \
	})

/*
 * Records the remote's packet f, arriving now on reply half in (stored under
 * key rk in map), in both halves; false, and nothing recorded, for a TCP
 * segment that is not plausible (tcp_state.h), which the caller still
 * translates for the pod to judge.
 *
 * A TCP segment is judged when it carries a RST or FIN, and otherwise when
 * it is the first of a new period: that is when it would move the flow's
 * age, and when the egress half is looked up for the copy anyway. So the
 * judgement costs no lookup of its own on a busy flow, and a spoofed
 * segment can keep a mapping alive for the rest of the current period at
 * most, never into the next one.
 */
#define record_reply(map, rk, in, f, now)                                                          \
	({                                                                                         \
		__typeof__(in) egr_ = NULL;                                                        \
		bool looked_ = false, plausible_ = true;                                           \
		__u8 tf_ = (f)->proto == IPPROTO_TCP ? (f)->tcp_flags : 0;                         \
		__u64 ps_ = (in)->last_seen_ns;                                                    \
		__u8 pf_ = (in)->flags;                                                            \
		if ((f)->proto == IPPROTO_TCP &&                                                   \
		    ((tf_ & (TCP_FLAG_RST | TCP_FLAG_FIN)) ||                                      \
		     ((now) >> IPM_MIRROR_SHIFT) != (ps_ >> IPM_MIRROR_SHIFT))) {                  \
			egr_ = egress_half_of(map, rk, in);                                        \
			looked_ = true;                                                            \
			plausible_ = remote_segment_plausible(egr_, f);                            \
		}                                                                                  \
		if (plausible_) {                                                                  \
			touch_fields(&(in)->last_seen_ns, &(in)->flags, now, tf_, 0);              \
			if (mirror_due(ps_, pf_, in, now)) {                                       \
				if (!looked_)                                                      \
					egr_ = egress_half_of(map, rk, in);                        \
				if (egr_)                                                          \
					mirror_into(egr_, in, now);                                \
			}                                                                          \
		}                                                                                  \
		plausible_;                                                                        \
	})

#endif /* IPMASQ_REPLY_MIRROR_H */
