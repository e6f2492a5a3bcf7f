/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records of flows whose pod packets pass unchanged without a mapping:
 * opened from outside (ipm_inbound4/6) or, for TCP, opened while the remote
 * was not masqueraded (ipm_nomasq_tcp4/6). Keyed by the egress key of the
 * pod's packets, valued struct ipm_inbound, in LRU maps of either family.
 */
#ifndef IPMASQ_EXEMPT_H
#define IPMASQ_EXEMPT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "ipmasq.h"
#include "nat.h"

/* Records key in map (which, of family) as seen now (created anew: a SYN
 * starts a new one). A key that was not there is counted as a new entry. */
static __always_inline void record_exempt(void *map, const void *key, __u64 now, __u32 family,
					  enum ipm_lru which)
{
	struct ipm_inbound v = { .created_ns = now, .last_seen_ns = now };

	if (!insert_new(map, key, &v)) {
		count_lru_new(family, which);
		return;
	}
	bpf_map_update_elem(map, key, &v, BPF_ANY);
}

/* Whether map records key; if so its last packet is now, from either side:
 * a flow lives while either end still sends. */
static __always_inline bool refresh_exempt(void *map, const void *key, __u64 now)
{
	struct ipm_inbound *e = bpf_map_lookup_elem(map, key);

	if (!e)
		return false;
	if (now - e->last_seen_ns > IPM_TOUCH_NS)
		e->last_seen_ns = now;
	return true;
}

#endif /* IPMASQ_EXEMPT_H */
