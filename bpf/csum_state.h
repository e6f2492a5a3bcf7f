/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The skb's checksum state (ip_summed), which says what a transport checksum
 * field means: a full checksum (CHECKSUM_NONE, CHECKSUM_UNNECESSARY), the
 * pseudo-header seed of a checksum still to be computed by the NIC or the
 * stack (CHECKSUM_PARTIAL), or a full checksum that skb->csum also covers
 * (CHECKSUM_COMPLETE). Knowing it lets a rewrite update the field with a few
 * additions instead of the checksum helpers, which cost 25-40 ns per call.
 *
 * struct __sk_buff does not carry ip_summed. From 6.2 the kfunc
 * bpf_cast_to_kern_ctx turns the context into the kernel's struct sk_buff,
 * and a CO-RE relocation against the kernel's BTF finds the bitfield. The
 * object is built twice: with IPM_KERN_CTX (the loader tries it first) and
 * without, for kernels before 6.2 or without BTF, where the state is unknown
 * and every rewrite goes through the helpers.
 */
#ifndef IPMASQ_CSUM_STATE_H
#define IPMASQ_CSUM_STATE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The kernel's ip_summed values (include/linux/skbuff.h). */
enum csum_state {
	CSUM_UNKNOWN = -1, /* this build cannot read it */
	CSUM_NONE = 0,
	CSUM_UNNECESSARY = 1,
	CSUM_COMPLETE = 2,
	CSUM_PARTIAL = 3,
};

#ifdef IPM_KERN_CTX

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The fields of the kernel's struct sk_buff we read; CO-RE matches them by
 * name ("___ipm" is a flavour suffix, ignored when matching). */
struct sk_buff___ipm {
	__u8 ip_summed : 2;
	__u16 csum_start; /* CHECKSUM_PARTIAL: where the summing starts, from head */
	__u16 mac_header; /* from head */
} __attribute__((preserve_access_index));

/* Kinds of __builtin_preserve_field_info, as in libbpf's bpf_core_read.h. */
#define FIELD_BYTE_OFFSET 0
#define FIELD_LSHIFT_U64  4
#define FIELD_RSHIFT_U64  5

static __always_inline enum csum_state skb_csum_state(struct __sk_buff *skb)
{
	/* The verifier turns this kfunc into a register move. */
	struct sk_buff___ipm *k = bpf_cast_to_kern_ctx(skb);
	__u64 v;

	/* A one-byte load of the byte holding the bitfield, then the shifts
	 * the relocations give for this kernel's layout. */
	v = *(__u8 *)((void *)k + __builtin_preserve_field_info(k->ip_summed, FIELD_BYTE_OFFSET));
	v <<= __builtin_preserve_field_info(k->ip_summed, FIELD_LSHIFT_U64);
	v >>= __builtin_preserve_field_info(k->ip_summed, FIELD_RSHIFT_U64);
	return (enum csum_state)v;
}

/*
 * Whether a CHECKSUM_PARTIAL skb's pending checksum is the one of the
 * transport header at l4_off (from the Ethernet header, where the program's
 * data starts on both hooks). It need not be: a pod's UDP tunnel (VXLAN,
 * Geneve) with outer UDP checksums offloads the inner TCP checksum, and then
 * the outer UDP checksum is a full one that a rewrite must update as such.
 */
static __always_inline bool csum_partial_is_l4(struct __sk_buff *skb, __u32 l4_off)
{
	struct sk_buff___ipm *k = bpf_cast_to_kern_ctx(skb);

	return k->csum_start == (__u16)(k->mac_header + l4_off);
}

#else

static __always_inline enum csum_state skb_csum_state(struct __sk_buff *skb)
{
	return CSUM_UNKNOWN;
}

/* Never asked: this build does not know the state (see rewrite_endpoint). */
static __always_inline bool csum_partial_is_l4(struct __sk_buff *skb, __u32 l4_off)
{
	return true;
}

#endif /* IPM_KERN_CTX */

#endif /* IPMASQ_CSUM_STATE_H */
