/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * When a flow has expired: the agent's rule (maps/nat.go, state() and
 * timeout()), for the datapath to apply where it meets an expired entry while
 * no agent may be running (port allocation, nat.h; early drop,
 * early_drop.h). This is the only place in bpf/ that interprets the flow
 * state for expiry and early drop: a change to what the state bits mean
 * changes flow_replied, flow_expired_at and the agent's rule together.
 *
 * A flow's state: reset after a RST (TCP), closing once both sides sent a
 * FIN (TCP: a half-closed connection still carries data the other way),
 * established once a reply came back, else opening. Its timeout by state and
 * protocol comes from ipm_settings (the agent's flags); it is measured from
 * the newest of its halves' last packets and its creation, on the clock the
 * datapath stamps with (clock.h).
 */
#ifndef IPMASQ_EXPIRY_H
#define IPMASQ_EXPIRY_H

#include <linux/bpf.h>
#include <linux/in.h>

#include "ipmasq.h"

/* How long a flow of proto lives after its last packet, given the flags
 * seen in either direction and whether a reply came back; 0: unknown (the
 * agent has not written its timeouts), never expires here. */
static __always_inline __u64 flow_timeout_ns(const struct ipm_settings *s, __u8 proto, __u8 flags,
					     bool replied)
{
	if (proto == IPPROTO_TCP) {
		if (flags & IPM_F_RST)
			return s->timeout_tcp_rst_ns;
		if (flags & IPM_F_FIN)
			return s->timeout_tcp_fin_ns;
		return replied ? s->timeout_tcp_established_ns : s->timeout_tcp_syn_ns;
	}
	if (proto == IPPROTO_UDP)
		return replied ? s->timeout_udp_stream_ns : s->timeout_udp_ns;
	return s->timeout_icmp_ns;
}

/* True when a flow last used at last_ns has outlived its timeout at now.
 * Signed: a stamp a little after now (another CPU) is fresh. */
static __always_inline bool flow_expired_at(const struct ipm_settings *s, __u8 proto, __u8 flags,
					    bool replied, __u64 last_ns, __u64 now)
{
	__u64 timeout = flow_timeout_ns(s, proto, flags, replied);

	return timeout && (__s64)(now - last_ns) > (__s64)timeout;
}

static __always_inline __u64 max_u64(__u64 a, __u64 b)
{
	return a > b ? a : b;
}

/* The flags that decide a flow's state, from both halves: FIN counts only
 * once both directions carried one (the agent's flowFlags). */
static __always_inline __u8 flow_flags(__u8 proto, __u8 out, __u8 in)
{
	__u8 f = out | in;

	if (proto == IPPROTO_TCP && (!(out & IPM_F_FIN) || !(in & IPM_F_FIN)))
		f &= ~IPM_F_FIN;
	return f;
}

/* True when a reply came back to the flow of reply half in (an entry of
 * either family): the agent's Flow.Replied. Early drop spares such flows. */
#define flow_replied(in) ((in)->last_seen_ns != 0)

/* True when the flow of the egress half out and the reply half in (entries
 * of either family) has expired: the agent's Flow.State and Flow.Timeout. */
#define flow_expired(s, proto, out, in, now)                                                       \
	flow_expired_at(                                                                           \
		s, proto, flow_flags(proto, (out)->flags, (in)->flags), flow_replied(in),          \
		max_u64(max_u64((out)->last_seen_ns, (in)->last_seen_ns), (out)->created_ns), now)

/* True when a reply half without its egress half is left over: the agent
 * removes such a half after the RST timeout, which also gives a mapping
 * being created on another CPU the time to get its egress half. */
#define orphan_expired(s, in, now)                                                                 \
	flow_expired_at(s, IPPROTO_TCP, IPM_F_RST, false,                                          \
			max_u64((in)->last_seen_ns, (in)->created_ns), now)

/* True when a host reservation h (ipm_hostres4/6) has expired: the agent's
 * Reservation.State, where a reply marks it replied. */
#define reservation_expired(s, proto, h, now)                                                      \
	flow_expired_at(s, proto, (h)->flags, ((h)->flags & IPM_F_REPLIED) != 0,                   \
			max_u64((h)->last_seen_ns, (h)->created_ns), now)

#endif /* IPMASQ_EXPIRY_H */
