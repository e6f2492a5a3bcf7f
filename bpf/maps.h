/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps of the datapath. The agent pins every one of them under --pin-path, so
 * that a restarted or upgraded agent finds the same state; sizes marked
 * "set by the agent" are overridden at load time from flags.
 */
#ifndef IPMASQ_MAPS_H
#define IPMASQ_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"

/* Key: 0. Value: struct ipm_clock_sample, written by ipm_clock when the agent
 * runs it. Not pinned: each agent reads its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_clock_sample);
	__uint(max_entries, 1);
} ipm_clock_sample SEC(".maps");

/* Key: struct ipm_nat_key. Value: struct ipm_nat_entry. Both halves of every
 * translated flow, plus reserved and inbound tuples. A plain preallocated
 * hash, never LRU: nothing is evicted behind the agent's back, and a full
 * table makes new flows fail closed. Size set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipm_nat_key);
	__type(value, struct ipm_nat_entry);
	__uint(max_entries, 131072);
} ipm_nat4 SEC(".maps");

/* Key: struct ipm_cidr4_key. Value: struct ipm_cidr_value. Two tries of
 * non-masquerade destinations; ipm_settings.active_cidrs says which one
 * decides, so a new set is written into the idle one and takes effect with a
 * single flip. Nodes are allocated on insert, so the large bound costs
 * nothing until used: it exceeds what a 1 MiB ConfigMap can list. */
#define IPM_CIDR_MAX 262144
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipm_cidr4_key);
	__type(value, struct ipm_cidr_value);
	__uint(max_entries, IPM_CIDR_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_cidr4_0 SEC(".maps"), ipm_cidr4_1 SEC(".maps");

/* Key: (trie index << 16) | the top 16 bits of a destination. Value: struct
 * ipm_cidr4_block. The IPv4 non-masquerade decision per /24, in front of the
 * tries: an array lookup is an address computation, while an LPM trie walk
 * costs a cache miss per level (80-130 ns at 10,000 CIDRs). Only /24s that
 * longer CIDRs reach into send the lookup on to the trie, so the decision
 * costs the same for 3 CIDRs as for 10,000 of /24 or shorter. Two halves,
 * one per trie, written together with it and flipped by the same
 * ipm_settings.active_cidrs. 8 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_cidr4_block);
	__uint(max_entries, 2 << 16);
} ipm_cidr4_dir SEC(".maps");

/* Key: struct ipm_cidr4_key. Value: struct ipm_cidr_value (unused). The
 * sources that may be masqueraded (--source-cidrs, the node's pod CIDRs),
 * read only when ipm_settings.source_cidrs is 1 and a new mapping would be
 * made. Written once at start. */
#define IPM_SRC_MAX 1024
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipm_cidr4_key);
	__type(value, struct ipm_cidr_value);
	__uint(max_entries, IPM_SRC_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_src4 SEC(".maps");

/* Key: struct ipm_cidr6_key. The same for IPv6. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipm_cidr6_key);
	__type(value, struct ipm_cidr_value);
	__uint(max_entries, IPM_SRC_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_src6 SEC(".maps");

/* Key: struct ipm_frag_key. Value: struct ipm_frag_entry. How the first
 * fragment of a datagram was translated, so its later fragments (which carry
 * no ports) follow. Short-lived by nature (30 s, the reassembly timeout), so
 * an LRU bound is right. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_frag_key);
	__type(value, struct ipm_frag_entry);
	__uint(max_entries, 16384);
} ipm_frag4 SEC(".maps");

/* Key: struct ipm_nat_key (egress direction). Value: struct ipm_inbound.
 * UDP flows and TCP connections opened from outside towards a pod, whose
 * replies must keep the pod address. Created by outside hosts, so bounded
 * apart from the NAT table: a flood evicts the oldest of these and never
 * touches a mapping. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat_key);
	__type(value, struct ipm_inbound);
	__uint(max_entries, 65536);
} ipm_inbound4 SEC(".maps");

/* Key: struct ipm_nat_key (egress direction). Value: struct ipm_inbound.
 * TCP connections that opened (a pod's SYN out, or a SYN in from an
 * in-cluster remote) while the remote was not masqueraded: if a config
 * change masquerades the remote later, their mid-stream segments still
 * pass unchanged instead of being reset (docs/flow-state.md). Written on
 * SYNs only, never read on the non-masquerade path; apart from
 * ipm_inbound4 so that outside hosts cannot evict these. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat_key);
	__type(value, struct ipm_inbound);
	__uint(max_entries, 65536);
} ipm_nomasq_tcp4 SEC(".maps");

/* Key: 0. Value: struct ipm_settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_settings);
	__uint(max_entries, 1);
} ipm_settings SEC(".maps");

/* Key: ifindex. Value: struct ipm_iface. The managed interfaces. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ipm_iface);
	__uint(max_entries, 256);
} ipm_ifaces SEC(".maps");

/* Node addresses per family that ipm_local4 and ipm_local6 hold. */
#define IPM_LOCAL_MAX 65536

/* Key: IPv4 address (network order). Value: struct ipm_local. Every address
 * of the node, so host traffic is recognised whatever interface owns it.
 * Room for kube-proxy's IPVS mode, which puts every ClusterIP on a dummy
 * interface; not preallocated, so memory follows the addresses stored. The
 * agent writes the managed interfaces' addresses first: only the others can
 * be left out when more than this exist. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct ipm_local);
	__uint(max_entries, IPM_LOCAL_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_local4 SEC(".maps");

/* Key: 0 for IPv4, 1 for IPv6. Value: struct ipm_counters, one per CPU: the
 * datapath counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_counters);
	__uint(max_entries, 2);
} ipm_stats SEC(".maps");

/* Key: struct ipm_nat_key (ingress direction, as the reply arrives). Value:
 * struct ipm_nat_entry of kind IPM_KIND_HOST. Node tuples in use by host
 * sockets and by flows that netfilter NATed to the node address: no new pod
 * mapping takes one. Apart from ipm_nat4 and LRU-bounded, because outside
 * hosts decide how many connections the node answers; a flood evicts old
 * reservations and never touches a pod mapping. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat_key);
	__type(value, struct ipm_nat_entry);
	__uint(max_entries, 65536);
} ipm_hostres4 SEC(".maps");

/* Key: 0. Value: struct ipm_scratch, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_scratch);
	__uint(max_entries, 1);
} ipm_scratch SEC(".maps");

/* The IPv6 maps, each the counterpart of the IPv4 map of the same name. */

/* Key: struct ipm_nat6_key. Value: struct ipm_nat6_entry. Size set by the
 * agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipm_nat6_key);
	__type(value, struct ipm_nat6_entry);
	__uint(max_entries, 131072);
} ipm_nat6 SEC(".maps");

/* Key: struct ipm_cidr6_key. Value: struct ipm_cidr_value. Flipped by the
 * same ipm_settings.active_cidrs as the IPv4 tries, so both families change
 * together. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipm_cidr6_key);
	__type(value, struct ipm_cidr_value);
	__uint(max_entries, IPM_CIDR_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_cidr6_0 SEC(".maps"), ipm_cidr6_1 SEC(".maps");

/* Key: struct ipm_addr6. Value: struct ipm_local. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipm_addr6);
	__type(value, struct ipm_local);
	__uint(max_entries, IPM_LOCAL_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipm_local6 SEC(".maps");

/* Key: struct ipm_frag6_key. Value: struct ipm_frag6_entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_frag6_key);
	__type(value, struct ipm_frag6_entry);
	__uint(max_entries, 16384);
} ipm_frag6 SEC(".maps");

/* Key: struct ipm_nat6_key (ingress direction). Value: struct ipm_nat6_entry
 * of kind IPM_KIND_HOST. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat6_key);
	__type(value, struct ipm_nat6_entry);
	__uint(max_entries, 65536);
} ipm_hostres6 SEC(".maps");

/* Key: struct ipm_nat6_key (egress direction). Value: struct ipm_inbound. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat6_key);
	__type(value, struct ipm_inbound);
	__uint(max_entries, 65536);
} ipm_inbound6 SEC(".maps");

/* Key: struct ipm_nat6_key (egress direction). Value: struct ipm_inbound. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipm_nat6_key);
	__type(value, struct ipm_inbound);
	__uint(max_entries, 65536);
} ipm_nomasq_tcp6 SEC(".maps");

/*
 * The ring of recently created mappings, per family, for early drop
 * (early_drop.h; docs/table-pressure.md): the egress keys of new mappings in
 * creation order. Shared by all CPUs, because the CPU that meets a full table
 * is rarely the one a flood runs on. Its position is written without atomics
 * (5.10 has no fetch-and-add): two CPUs racing may write one slot, which
 * loses a record (that flow then only expires), never evicts a wrong flow
 * (a slot is checked against the entry's creation time). 16,384 slots: at
 * 100,000 new flows a second, a flow stays a candidate for 160 ms after the
 * ones before it were looked at. 384 KiB (IPv4), 768 KiB (IPv6).
 */
#define IPM_RECENT_SLOTS 16384
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_recent4_slot);
	__uint(max_entries, IPM_RECENT_SLOTS);
} ipm_recent4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_recent6_slot);
	__uint(max_entries, IPM_RECENT_SLOTS);
} ipm_recent6 SEC(".maps");

/* Key: 0 for IPv4, 1 for IPv6. Value: struct ipm_recent_pos. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipm_recent_pos);
	__uint(max_entries, 2);
} ipm_recent_pos SEC(".maps");

/*
 * Inserts key/value into map only when key is absent: 0, -EEXIST or another
 * negative error. Only the low 32 bits of the helper's result mean anything:
 * before 6.4 the map functions returned int, and the verifier calls them
 * directly, so on 5.10 and 6.1 an error arrives without sign extension
 * (-EEXIST as 0x00000000ffffffef) and a 64-bit compare against -EEXIST
 * never matches.
 */
static __always_inline int insert_new(void *map, const void *key, const void *value)
{
	return (int)bpf_map_update_elem(map, key, value, BPF_NOEXIST);
}

#endif /* IPMASQ_MAPS_H */
