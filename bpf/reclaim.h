/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reclaiming expired state at port allocation. The agent expires flows, but
 * the datapath must not depend on it for hours: when every node port
 * candidate of a new flow is taken, one held by a flow (or host reservation)
 * whose timeout has passed is freed, both halves, and the search is retried
 * (ipm_reclaim_ports in nat.h). So closed and idle flows cannot keep the
 * ports to a destination while no agent runs. The entry is judged on what it
 * holds at this moment; a packet that refreshes it between the check and the
 * deletion (microseconds) belongs to a flow already past its timeout.
 */
#ifndef IPMASQ_RECLAIM_H
#define IPMASQ_RECLAIM_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "expiry.h"
#include "ipmasq.h"
#include "maps.h"
#include "packet6.h"
#include "reply_mirror.h"

/* Removes what holds the IPv4 reply key rk if it has expired: a host
 * reservation, or a mapping (reply half first, then its egress half, the
 * agent's order) or a reply half left without its egress half. True when
 * something was removed. */
static __always_inline bool reclaim4(const struct ipm_settings *s, const struct ipm_nat_key *rk,
				     __u64 now)
{
	struct ipm_nat_key ok = {};
	struct ipm_nat_entry *in, *out, *h;

	h = bpf_map_lookup_elem(&ipm_hostres4, rk);
	if (h) {
		if (!reservation_expired(s, rk->proto, h, now) ||
		    bpf_map_delete_elem(&ipm_hostres4, rk))
			return false;
		count_hostres_reclaimed(FAMILY_IPV4);
		return true;
	}
	in = bpf_map_lookup_elem(&ipm_nat4, rk);
	if (!in || in->kind != IPM_KIND_MASQ)
		return false;
	egress_key_of(&ok, rk, in);
	out = bpf_map_lookup_elem(&ipm_nat4, &ok);
	if (out && out->kind == IPM_KIND_MASQ && out->addr == rk->daddr && out->port == rk->dport) {
		if (!flow_expired(s, rk->proto, out, in, now) || bpf_map_delete_elem(&ipm_nat4, rk))
			return false;
		bpf_map_delete_elem(&ipm_nat4, &ok);
		return true;
	}
	return orphan_expired(s, in, now) && !bpf_map_delete_elem(&ipm_nat4, rk);
}

/* reclaim4 for IPv6. */
static __always_inline bool reclaim6(const struct ipm_settings *s, const struct ipm_nat6_key *rk,
				     __u64 now)
{
	struct ipm_nat6_key ok = {};
	struct ipm_nat6_entry *in, *out, *h;

	h = bpf_map_lookup_elem(&ipm_hostres6, rk);
	if (h) {
		if (!reservation_expired(s, rk->proto, h, now) ||
		    bpf_map_delete_elem(&ipm_hostres6, rk))
			return false;
		count_hostres_reclaimed(FAMILY_IPV6);
		return true;
	}
	in = bpf_map_lookup_elem(&ipm_nat6, rk);
	if (!in || in->kind != IPM_KIND_MASQ)
		return false;
	egress_key_of(&ok, rk, in);
	out = bpf_map_lookup_elem(&ipm_nat6, &ok);
	if (out && out->kind == IPM_KIND_MASQ && addr6_eq(out->addr, rk->daddr) &&
	    out->port == rk->dport) {
		if (!flow_expired(s, rk->proto, out, in, now) || bpf_map_delete_elem(&ipm_nat6, rk))
			return false;
		bpf_map_delete_elem(&ipm_nat6, &ok);
		return true;
	}
	return orphan_expired(s, in, now) && !bpf_map_delete_elem(&ipm_nat6, rk);
}

#endif /* IPMASQ_RECLAIM_H */
