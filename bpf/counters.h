/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-CPU verdict counters (ipm_stats), one set per address family.
 */
#ifndef IPMASQ_COUNTERS_H
#define IPMASQ_COUNTERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "maps.h"

#define FAMILY_IPV4 0
#define FAMILY_IPV6 1

/* Counters of one address family. */
static __always_inline struct ipm_counters *get_counters(__u32 family)
{
	return bpf_map_lookup_elem(&ipm_stats, &family);
}

#define COUNT(c, field)                                                                            \
	do {                                                                                       \
		if (c)                                                                             \
			(c)->field++;                                                              \
	} while (0)

/* Not a verdict: counted besides the packet's verdict counter (packet.h,
 * udp_csum_is_full). */
static __always_inline void count_csum_ambiguous(__u32 family)
{
	struct ipm_counters *c = get_counters(family);

	COUNT(c, egress_csum_ambiguous);
}

/* The LRU maps whose new entries are counted. */
enum ipm_lru {
	IPM_LRU_HOSTRES,
	IPM_LRU_INBOUND,
	IPM_LRU_NOMASQ_TCP,
	IPM_LRU_FRAG,
};

/* Not a verdict: a new entry in an LRU map, which may have evicted the
 * least recently used one; the agent derives the evictions from these. */
static __always_inline void count_lru_new(__u32 family, enum ipm_lru map)
{
	struct ipm_counters *c = get_counters(family);

	if (!c)
		return;
	switch (map) {
	case IPM_LRU_HOSTRES:
		c->lru_hostres_new++;
		break;
	case IPM_LRU_INBOUND:
		c->lru_inbound_new++;
		break;
	case IPM_LRU_NOMASQ_TCP:
		c->lru_nomasq_tcp_new++;
		break;
	case IPM_LRU_FRAG:
		c->lru_frag_new++;
		break;
	}
}

/* Not a verdict: a host reservation removed by port allocation. */
static __always_inline void count_hostres_reclaimed(__u32 family)
{
	struct ipm_counters *c = get_counters(family);

	COUNT(c, lru_hostres_reclaimed);
}

#endif /* IPMASQ_COUNTERS_H */
