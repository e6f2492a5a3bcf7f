/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between the datapath and the Go agent. bpf2go turns every
 * struct here into a Go type, and the maps carry them as BTF so that
 * `bpftool map dump pinned <pin-path>/<map>` prints named fields.
 *
 * Changing the layout of anything stored in a pinned map means bumping
 * IPM_LAYOUT_VERSION: the agent then starts with fresh maps on purpose
 * instead of misreading old ones.
 */
#ifndef IPMASQ_H
#define IPMASQ_H

#include <linux/types.h>

/* -nostdinc leaves out <stdbool.h>. */
#ifndef __cplusplus
typedef _Bool bool;
#define true  1
#define false 0
#endif

/* Version of every pinned map's layout, stored in ipm_settings. */
#define IPM_LAYOUT_VERSION 2

/* How many node IPv4 addresses ipm_settings carries inline. */
#define IPM_LOCAL4_INLINE 4

/* How many --to-ports ranges the datapath can draw from. */
#define IPM_MAX_PORT_RANGES 8

/* Direction of a NAT table half, part of its key. */
enum ipm_dir : __u8 {
	/* Key is the packet as the pod sent it: pod -> remote. */
	IPM_DIR_EGRESS = 0,
	/* Key is the reply as it arrives: remote -> node address and node port. */
	IPM_DIR_INGRESS = 1,
};

/* What a NAT table entry stands for. */
enum ipm_kind : __u8 {
	/* One half of a pod flow that this datapath translated. */
	IPM_KIND_MASQ = 1,
	/* An ingress-side tuple used by a host socket or a flow that netfilter
	 * already NATed to the node address: no pod mapping may take it. */
	IPM_KIND_HOST = 2,
};

/* Per-direction observations kept in an entry, for the agent's expiry. */
enum ipm_entry_flags : __u8 {
	IPM_F_FIN = 1 << 0, /* a FIN was seen in this direction */
	IPM_F_RST = 1 << 1, /* a RST was seen in this direction */
	/* Host reservation: a packet came back. Egress half of a mapping: a
	 * reply came back (reply_mirror.h). */
	IPM_F_REPLIED = 1 << 2,
	/* TCP, egress half: tcp_ack and tcp_win hold the pod's last ACK. */
	IPM_F_ACK = 1 << 3,
	/* TCP, egress half: tcp_wscale was read from the pod's SYN (without
	 * it, a window is judged with the largest scale, 14). */
	IPM_F_WSCALE = 1 << 4,
	/* In an egress half's reply_flags: the remote's FIN was seen (its
	 * reply half carries it as IPM_F_FIN; reply_mirror.h). */
	IPM_F_PEER_FIN = 1 << 5,
};

/*
 * Key of the NAT table. For ICMP echo the identifier takes the place of the
 * port on the pod (or node) side: sport on egress, dport on ingress, the
 * other port is 0. All address and port fields are in network byte order.
 */
struct ipm_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	enum ipm_dir dir;
	__u16 pad;
};

/*
 * Value of the NAT table. An egress half holds what the pod's source becomes
 * (node address and port); an ingress half holds what the reply's destination
 * becomes (pod address and port). Each half is written by packets of its own
 * direction, with two exceptions kept rare so that the directions seldom
 * contend for a cache line: a pod's SYN that restarts a used mapping renews
 * both halves, and a reply copies its half's activity into the egress half at
 * most once a period of about a second and when a flag is new
 * (reply_mirror.h). Flag bits are set by plain read-modify-write (5.10 has no
 * atomic OR), so the copy goes to a byte of its own (reply_flags) and never
 * races with the pod's own writes to flags. The copy may race with a SYN that
 * clears it; a stale copy only makes the agent read the flow's two halves
 * again, which decide (docs/design.md, "Expiry").
 */
struct ipm_nat_entry {
	__u64 created_ns;   /* bpf_ktime_get_ns (CLOCK_MONOTONIC) at creation */
	__u64 last_seen_ns; /* last packet in this direction; 0: none yet */
	__be32 addr;
	__be16 port;
	enum ipm_kind kind;
	enum ipm_entry_flags flags; /* bits seen in this direction */
	__u32 ifindex;		    /* interface the flow leaves through */
	/* TCP, written in the egress half only (docs/flow-state.md): the
	 * pod's receive window as its last segment announced it, against
	 * which the remote's segments are judged. tcp_ack is the pod's
	 * last acknowledgement number (host order, valid with IPM_F_ACK;
	 * before that, with IPM_F_WSCALE, its SYN's sequence number + 1),
	 * tcp_win the window field of that segment (unscaled), tcp_wscale
	 * the window scale of the pod's SYN (valid with IPM_F_WSCALE). */
	__u32 tcp_ack;
	__u16 tcp_win;
	__u8 tcp_wscale;
	/* Egress half only: the reply half's activity as the ingress path
	 * copies it (reply_mirror.h): IPM_F_REPLIED, IPM_F_RST, IPM_F_PEER_FIN.
	 * A byte of its own, written only by ingress (and cleared by a pod's
	 * SYN that restarts the mapping), so the copy never overwrites the
	 * pod's own flags. Read by the agent to judge a flow from its egress
	 * half alone; formerly padding, so an entry written before reads 0. */
	enum ipm_entry_flags reply_flags;
	__u8 pad[4];
};

/* Key of ipm_frag4: the fragments of one datagram, as they travel in one
 * direction before translation. */
struct ipm_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	enum ipm_dir dir;
};

/* Value of ipm_frag4: the address the datagram's first fragment was
 * translated to (egress: source; ingress: destination). */
struct ipm_frag_entry {
	__u64 created_ns;
	__be32 addr;
	__u32 pad;
};

/* Value of ipm_inbound4, keyed by the egress ipm_nat_key of the replies of a
 * UDP or TCP flow that an outside host opened towards a pod; also of
 * ipm_nomasq_tcp4, keyed by the egress key of a TCP connection that opened
 * while its remote was not masqueraded. */
struct ipm_inbound {
	__u64 created_ns;
	__u64 last_seen_ns;
};

/* The IPv6 counterparts of the IPv4 types above, field for field. Addresses
 * are four network-order words, so they can be compared and checksummed a
 * word at a time. */
struct ipm_nat6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	enum ipm_dir dir;
	__u16 pad;
};

struct ipm_nat6_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__be32 addr[4];
	__be16 port;
	enum ipm_kind kind;
	enum ipm_entry_flags flags;
	__u32 ifindex;
	__u32 tcp_ack;
	__u16 tcp_win;
	__u8 tcp_wscale;
	enum ipm_entry_flags reply_flags; /* as in ipm_nat_entry */
};

struct ipm_frag6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 id;
	__u8 proto;
	enum ipm_dir dir;
	__u16 pad;
};

struct ipm_frag6_entry {
	__u64 created_ns;
	__be32 addr[4];
};

struct ipm_cidr6_key {
	__u32 prefixlen;
	__be32 addr[4];
};

struct ipm_addr6 {
	__be32 addr[4];
};

/* Per-CPU scratch space of claim_port: the reply half being claimed, of
 * either family, and the keys of early drop. Not pinned: it holds nothing
 * between packets. */
struct ipm_scratch {
	struct ipm_nat_key key4;
	struct ipm_nat_entry value4;
	struct ipm_nat6_key key6;
	struct ipm_nat6_entry value6;
	/* Early drop's keys (early_drop.h), here rather than on a stack that
	 * its callers have filled already. */
	struct ipm_nat_key drop4, drop_reply4;
	struct ipm_nat6_key drop6, drop_reply6;
	/* Where the last port search started, for its retry. */
	__u32 probe_ri;
	__u32 probe_p;
};

/* One slot of ipm_recent4 (ipm_recent6): the egress key of a mapping and its creation
 * time, so a slot whose flow was replaced since is recognised. */
struct ipm_recent4_slot {
	struct ipm_nat_key key;
	__u64 created_ns;
};

struct ipm_recent6_slot {
	struct ipm_nat6_key key;
	__u64 created_ns;
};

/* Value of ipm_recent_pos, one per family: the ring of recent mappings
 * holds records head - IPM_RECENT_SLOTS (or tail, when later) to head. */
struct ipm_recent_pos {
	__u64 head; /* records ever written */
	__u64 tail; /* the oldest record not yet looked at by early drop */
};

/* Key of the LPM tries of non-masquerade destinations. */
struct ipm_cidr4_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Why a prefix is in a non-masquerade trie, and so its verdict: the longest
 * matching prefix decides. */
enum ipm_cidr_origin {
	IPM_CIDR_CONFIGURED = 1, /* listed in nonMasqueradeCIDRs: not masqueraded */
	IPM_CIDR_LINK_LOCAL = 2, /* implied by masqLinkLocal: false: not masqueraded */
	IPM_CIDR_MASQUERADE = 3, /* listed in masqueradeCIDRs: masqueraded after all */
};

struct ipm_cidr_value {
	enum ipm_cidr_origin origin;
};

/* What ipm_cidr4_dir says about the destinations of one /24. */
enum ipm_block_verdict {
	IPM_BLOCK_MASQ = 0, /* masqueraded: no non-masquerade CIDR decides any of it */
	/* A CIDR of /24 or shorter covers all of it, and no flow into it has a
	 * mapping (the agent checked the NAT table): a packet from a pod passes
	 * without looking its flow up. */
	IPM_BLOCK_NOMASQ = 1,
	IPM_BLOCK_TRIE = 2, /* longer CIDRs of another verdict reach into it: ask the trie */
	/* Covered as NOMASQ, but flows masqueraded before a config change made
	 * it so may still hold mappings, which they keep (docs/behaviour.md §4): look the
	 * flow up first. The agent settles it to NOMASQ once none is left. */
	IPM_BLOCK_NOMASQ_MAPPED = 3,
};

/* /24s per value of ipm_cidr4_dir: one /16, two bits each. */
#define IPM_BLOCKS_PER_16 256

/* Value of ipm_cidr4_dir: the enum ipm_block_verdict of /24 number n of a
 * /16 (its third octet) sits in bits 2*(n%4) and 2*(n%4)+1 of verdicts[n/4]. */
struct ipm_cidr4_block {
	__u8 verdicts[IPM_BLOCKS_PER_16 / 4];
};

struct ipm_port_range {
	__u16 first;
	__u16 last;
};

/* The single entry of ipm_settings, written by the agent. */
struct ipm_settings {
	__u32 layout_version; /* IPM_LAYOUT_VERSION of whoever created the maps */
	__u32 active_cidrs;   /* which trie decides: 0 = ipm_cidr4_0, 1 = ipm_cidr4_1 */
	__u32 random_fully;   /* 1: random node port per flow; 0: keep the pod's port when free */
	__u32 port_count;     /* ports in all ranges together; 0 means unconfigured */
	__u32 range_count;
	struct ipm_port_range ranges[IPM_MAX_PORT_RANGES];
	__u32 enable_ipv6; /* 1: masquerade IPv6 too (--enable-ipv6); 0: IPv6 passes */
	/* The node's IPv4 addresses when there are at most IPM_LOCAL4_INLINE
	 * (the usual node), so that telling host from pod traffic costs a few
	 * compares instead of a hash lookup; local4_count above that: ask
	 * ipm_local4, which always holds them all. */
	__u32 local4_count;
	__be32 local4[IPM_LOCAL4_INLINE];
	/* 1: only sources in ipm_src4/ipm_src6 get new mappings (--source-cidrs);
	 * 0: every source that is not the node's. In what was padding before
	 * the 64-bit fields, so the value keeps its size and an older agent's
	 * value reads as 0. */
	__u32 source_cidrs;
	/* CLOCK_MONOTONIC from jiffies (clock.h): the agent's calibration,
	 * clock_base_ns at jiffy clock_base_jiffies, ns_per_jiffy per tick;
	 * ns_per_jiffy 0: not calibrated, read the clock. */
	__u64 clock_base_ns;
	__u64 clock_base_jiffies;
	__u64 ns_per_jiffy;
	/* The agent's timeouts (its flags), so that port allocation can reclaim
	 * an expired flow it meets while no agent runs (expiry.h). 0: not
	 * written yet, nothing is reclaimed. */
	__u64 timeout_tcp_syn_ns;
	__u64 timeout_tcp_established_ns;
	__u64 timeout_tcp_fin_ns;
	__u64 timeout_tcp_rst_ns;
	__u64 timeout_udp_ns;
	__u64 timeout_udp_stream_ns;
	__u64 timeout_icmp_ns;
};

/* Value of ipm_clock_sample: one reading of both clocks by ipm_clock, for
 * the agent's calibration. */
struct ipm_clock_sample {
	__u64 jiffies;
	__u64 ns; /* bpf_ktime_get_ns, CLOCK_MONOTONIC */
};

/* Value of ipm_ifaces, keyed by ifindex: a managed interface. */
struct ipm_iface {
	__be32 addr4;	 /* primary IPv4 address, the masquerade source; 0: none yet */
	__be32 addr6[4]; /* primary global IPv6 address, the same for IPv6; :: none yet */
};

/* Value of ipm_local4, keyed by address: the node owns this address. */
struct ipm_local {
	__u32 ifindex;
};

/*
 * Datapath counters, per CPU, one instance per address family (key 0: IPv4,
 * key 1: IPv6). Every verdict the programs reach increments exactly one of
 * the packet counters.
 */
struct ipm_counters {
	__u64 egress_translated;  /* egress packets of an existing mapping, rewritten */
	__u64 egress_new_flow;	  /* egress packets that created a mapping, rewritten */
	__u64 egress_nomasq;	  /* destination in the non-masquerade set: passed */
	__u64 egress_host;	  /* source is a node address: passed, tuple reserved */
	__u64 egress_host_moved;  /* host flow on a tuple a pod mapping held: node port changed */
	__u64 egress_tcp_no_map;  /* TCP without SYN and without mapping: passed */
	__u64 egress_inbound;	  /* reply of a flow opened from outside: passed */
	__u64 egress_no_iface;	  /* interface has no IPv4 address yet: dropped */
	__u64 egress_no_port;	  /* no free node port for the destination: dropped */
	__u64 egress_table_full;  /* NAT table full: dropped */
	__u64 egress_race;	  /* lost a race creating a mapping: dropped */
	__u64 egress_fragment;	  /* non-first fragment of a translated datagram: rewritten */
	__u64 egress_frag_orphan; /* non-first fragment before its first, to be masqueraded: dropped
				   */
	__u64 egress_icmp_error;  /* ICMP error about a translated reply: rewritten */
	__u64 egress_other;	  /* not IPv4, other protocol or ICMP type: passed */
	__u64 egress_malformed;	  /* truncated or malformed: passed */
	__u64 ingress_translated; /* replies of a mapping, rewritten */
	__u64 ingress_host;	  /* reply to a reserved host tuple: passed */
	__u64 ingress_miss;	  /* no mapping matches exactly: passed */
	__u64 ingress_fragment;	  /* non-first fragment of a translated reply: rewritten */
	__u64 ingress_frag_orphan; /* non-first fragment without a known first: passed */
	__u64 ingress_icmp_error;  /* ICMP error about a translated packet: rewritten */
	__u64 ingress_inbound;	 /* UDP from outside to a pod: replies will keep the pod address */
	__u64 ingress_other;	 /* not IPv4, other protocol or ICMP type: passed */
	__u64 ingress_malformed; /* truncated or malformed: passed */
	__u64 egress_not_source; /* source outside --source-cidrs (routed, not a pod): passed */
	/* TCP without SYN, without mapping and not known to be exempt, towards
	 * a masqueraded destination (its mapping expired, was evicted or lost):
	 * dropped, and a RST sent back to the pod so the connection fails at
	 * once instead of leaking the pod address or hanging. */
	__u64 egress_tcp_reset;
	/* The same, but the segment is a RST itself (never answered with a
	 * reset) or no reset could be built: dropped. */
	__u64 egress_tcp_unknown_drop;
	/* A remote's TCP segment the pod's side makes implausible (outside
	 * its receive window; before its first ACK, a RST not acknowledging
	 * its SYN): translated, but neither half's state or lifetime moves. */
	__u64 ingress_tcp_implausible;
	/* Helpers build only (it cannot read the skb's checksum state): a
	 * UDP checksum equal to its own pseudo-header seed, rewritten as an
	 * offloaded checksum of this header; wrong only if it is the full
	 * checksum of a tunnel whose inner packet is offloaded (README). */
	__u64 egress_csum_ambiguous;
	/* Events, not packet verdicts: the packet that caused one is counted
	 * above as well. */
	__u64 nat_early_drop; /* flows that never got a reply, removed for a new flow in a full
				 table */
	__u64 nat_reclaimed;  /* expired flows (or host reservations) removed by port allocation */
	/* Not packets either: entries the programs added to the LRU maps (a
	 * key that was not there), and the host reservations that port
	 * allocation removed. The kernel does not count what an LRU map
	 * evicts to make room; the agent derives it as entries added minus
	 * entries removed minus entries left (docs/behaviour.md §14.1). */
	__u64 lru_hostres_new;	     /* ipm_hostres4/6 */
	__u64 lru_hostres_reclaimed; /* ipm_hostres4/6, also counted in nat_reclaimed */
	__u64 lru_inbound_new;	     /* ipm_inbound4/6 */
	__u64 lru_nomasq_tcp_new;    /* ipm_nomasq_tcp4/6 */
	__u64 lru_frag_new;	     /* ipm_frag4/6 */
};

#endif /* IPMASQ_H */
