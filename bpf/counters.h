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

#endif /* IPMASQ_COUNTERS_H */
