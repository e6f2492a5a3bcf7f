/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * IPv4 fragments. Only the first fragment of a datagram carries the ports
 * that find its mapping; the others follow whatever happened to the first,
 * which is recorded by (source, destination, identification, protocol).
 */
#ifndef IPMASQ_FRAG_H
#define IPMASQ_FRAG_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "ipmasq.h"
#include "maps.h"
#include "packet.h"

/* Fragments of one datagram arrive within the reassembly timeout
 * (net.ipv4.ipfrag_time, 30 s); an older record belongs to an earlier
 * datagram that reused the identification. */
#define IPM_FRAG_TTL_NS (30ULL * 1000000000ULL)

static __always_inline void frag_key(const struct flow4 *f, enum ipm_dir dir,
				     struct ipm_frag_key *fk)
{
	fk->saddr = f->saddr;
	fk->daddr = f->daddr;
	fk->id = f->ipid;
	fk->proto = f->proto;
	fk->dir = dir;
}

/* Records that the first fragment of f's datagram left (dir) with addr in
 * place of its original source (egress) or destination (ingress). */
static __always_inline void remember_first_fragment(const struct flow4 *f, enum ipm_dir dir,
						    __be32 addr, __u64 now)
{
	struct ipm_frag_key fk = {};
	struct ipm_frag_entry fe = { .created_ns = now, .addr = addr };

	frag_key(f, dir, &fk);
	if (!insert_new(&ipm_frag4, &fk, &fe)) {
		count_lru_new(FAMILY_IPV4, IPM_LRU_FRAG);
		return;
	}
	/* An earlier datagram with the same identification: replaced. */
	bpf_map_update_elem(&ipm_frag4, &fk, &fe, BPF_ANY);
}

/* The address the first fragment of f's datagram was given, or NULL when
 * its first fragment has not been seen (or too long ago). */
static __always_inline struct ipm_frag_entry *first_fragment(const struct flow4 *f,
							     enum ipm_dir dir, __u64 now)
{
	struct ipm_frag_key fk = {};
	struct ipm_frag_entry *fe;

	frag_key(f, dir, &fk);
	fe = bpf_map_lookup_elem(&ipm_frag4, &fk);
	/* Signed: an entry stamped a little after now (another CPU) is fresh,
	 * not 584 years old. */
	if (!fe || (__s64)(now - fe->created_ns) > (__s64)IPM_FRAG_TTL_NS)
		return NULL;
	return fe;
}

#endif /* IPMASQ_FRAG_H */
