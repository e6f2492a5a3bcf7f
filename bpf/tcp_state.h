/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TCP state of a mapping beyond "which flags were ever seen"
 * (docs/flow-state.md):
 *
 * - A pod's SYN on a mapping that already carried a connection (a reply came
 *   back, or a FIN or RST was seen) starts it afresh: clients reconnect from
 *   the same port, and the new connection must not inherit the old one's
 *   10 s "reset" lifetime.
 * - A segment from the remote changes the mapping's state or lifetime only
 *   when it is plausible: its sequence number lies in the pod's receive
 *   window, as the pod's last segment announced it (conntrack and RFC 5961
 *   judge alike), or, before the pod acknowledged anything, a RST
 *   acknowledges the pod's SYN. So a blind spoofed RST changes nothing, and
 *   spoofed segments cannot keep a dead mapping alive. The pod's own RST and
 *   FIN are trusted: a pod can only end its own connections.
 *
 * Both families share these: their entries name the fields alike.
 */
#ifndef IPMASQ_TCP_STATE_H
#define IPMASQ_TCP_STATE_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"
#include "packet.h"

/* RFC 7323: the largest window scale; also how a window is judged when the
 * pod's SYN was not seen (an entry carried over from an older layout). */
#define TCP_MAX_WSCALE 14

/* Bytes of TCP options a header can carry. */
#define TCP_MAX_OPTIONS 40

#define TCPOPT_EOL    0
#define TCPOPT_NOP    1
#define TCPOPT_WSCALE 3

/* How far past the pod's SYN a refusal's acknowledgement may lie: the data a
 * SYN can carry (TCP Fast Open), which fits in one packet. A blind RST must
 * guess within this much of 2^32. */
#define IPM_SYN_DATA_MAX 0xffff

/* Option rounds read before giving up: a SYN carries about six (MSS,
 * SACK permitted, timestamps, window scale and NOP padding). */
#define TCP_OPTION_ROUNDS 12

/*
 * The window scale option of the SYN whose TCP header starts at l4_off; 0
 * when it has none (then its windows are not scaled). Runs on SYNs only. A
 * global function on purpose: the verifier checks its loop once, alone,
 * instead of once per path that reaches it (see ipm_claim_port). Options are
 * read from the packet one at a time: a variable offset into a stack buffer
 * is beyond 5.10's verifier.
 */
__attribute__((noinline)) int ipm_syn_wscale(struct __sk_buff *skb, __u32 l4_off)
{
	__u8 doff = 0;
	__u32 len, i = 0;

	if (!skb || bpf_skb_load_bytes(skb, l4_off + 12, &doff, 1))
		return 0;
	len = (doff >> 4) * 4;
	if (len <= 20)
		return 0;
	len -= 20;
	for (int n = 0; n < TCP_OPTION_ROUNDS; n++) {
		__u8 o[3] = {};

		if (i + 1 > len || i >= TCP_MAX_OPTIONS)
			break;
		if (bpf_skb_load_bytes(skb, l4_off + 20 + i, o, 1) || o[0] == TCPOPT_EOL)
			break;
		if (o[0] == TCPOPT_NOP) {
			i++;
			continue;
		}
		if (i + 3 <= len && o[0] == TCPOPT_WSCALE) {
			if (bpf_skb_load_bytes(skb, l4_off + 20 + i, o, 3) || o[1] != 3)
				break;
			return o[2] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : o[2];
		}
		if (i + 2 > len || bpf_skb_load_bytes(skb, l4_off + 20 + i, o, 2) || o[1] < 2)
			break;
		i += o[1];
	}
	return 0;
}

#define syn_wscale(skb, l4_off) ((__u8)ipm_syn_wscale(skb, l4_off))

/* A SYN without ACK: the first segment of a connection. */
static __always_inline bool tcp_is_syn(__u8 tcp_flags)
{
	return (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Records the pod's receive window from one of its segments in the egress
 * half (fields of either family's entry). Only a newer acknowledgement moves
 * it, so a reordered old segment does not. Written only when it changed. */
#define track_pod_window(e, f)                                                                     \
	do {                                                                                       \
		__u32 ack_ = bpf_ntohl((f)->tcp_ack);                                              \
		__u16 win_ = bpf_ntohs((f)->tcp_win);                                              \
		if (((f)->tcp_flags & (TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_ACK &&            \
		    (!((e)->flags & IPM_F_ACK) || (__s32)(ack_ - (e)->tcp_ack) > 0 ||              \
		     ((e)->tcp_ack == ack_ && (e)->tcp_win != win_))) {                            \
			(e)->tcp_ack = ack_;                                                       \
			(e)->tcp_win = win_;                                                       \
			if (!((e)->flags & IPM_F_ACK))                                             \
				(e)->flags |= IPM_F_ACK;                                           \
		}                                                                                  \
	} while (0)

/* Records the pod's SYN in egress half e while the pod has acknowledged
 * nothing yet: tcp_ack holds the SYN's sequence number plus one, the
 * acknowledgement a remote's answer must carry. Written only when it
 * changed (a new SYN on a tuple still opening). */
#define track_pod_syn(e, f)                                                                        \
	do {                                                                                       \
		__u32 isn1_ = bpf_ntohl((f)->tcp_seq) + 1;                                         \
		if (!((e)->flags & IPM_F_ACK) && (e)->tcp_ack != isn1_)                            \
			(e)->tcp_ack = isn1_;                                                      \
	} while (0)

/*
 * Whether the remote's TCP segment f is plausible against the pod's side of
 * the connection, recorded in egress half eg (NULL: the half is missing,
 * nothing to judge by). Only a plausible segment may change the mapping's
 * state or lifetime.
 *
 * - Once the pod acknowledged something: the sequence number must lie in
 *   the pod's receive window, [ack, ack + window]. A segment other than a
 *   RST may also lie up to a window behind (a retransmission, a keepalive).
 * - Before that, with the pod's SYN seen: a RST counts only when it
 *   acknowledges that SYN, as RFC 793 has a connection in SYN-SENT judge it
 *   (a refused connection); a blind RST there would otherwise mark the
 *   connection reset for good. The acknowledgement may lie up to
 *   IPM_SYN_DATA_MAX past the SYN: a SYN may carry data (TCP Fast Open),
 *   which the refusal acknowledges too. Anything else is plausible.
 * - Neither, or tcp_ack 0 (an entry from a build that did not record the
 *   SYN): plausible.
 */
#define remote_segment_plausible(eg, f)                                                            \
	({                                                                                         \
		bool ok_ = true;                                                                   \
		__u8 fl_ = (f)->tcp_flags;                                                         \
		if ((eg) && ((eg)->flags & IPM_F_ACK)) {                                           \
			__u32 sc_ = ((eg)->flags & IPM_F_WSCALE) ? (eg)->tcp_wscale & 15           \
								 : TCP_MAX_WSCALE;                 \
			__s64 wnd_ = (__s64)(eg)->tcp_win                                          \
				     << (sc_ > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : sc_);             \
			__s64 off_ = (__s32)(bpf_ntohl((f)->tcp_seq) - (eg)->tcp_ack);             \
			ok_ = off_ <= wnd_ &&                                                      \
			      (off_ >= 0 || (!(fl_ & TCP_FLAG_RST) && -off_ <= wnd_));             \
		} else if ((eg) && ((eg)->flags & IPM_F_WSCALE) && (fl_ & TCP_FLAG_RST) &&         \
			   (eg)->tcp_ack) {                                                        \
			ok_ = (fl_ & TCP_FLAG_ACK) &&                                              \
			      bpf_ntohl((f)->tcp_ack) - (eg)->tcp_ack <= IPM_SYN_DATA_MAX;         \
		}                                                                                  \
		ok_;                                                                               \
	})

/* Starts a mapping afresh for a pod's SYN when it carried a connection
 * before: eg and in (may be NULL) are its halves. New times, no flags, the
 * SYN's window scale, no reply yet (so the agent holds it as opening). A
 * retransmitted SYN of a connection still opening changes nothing. */
#define restart_on_syn(eg, in, now, wscale)                                                        \
	do {                                                                                       \
		__u8 seen_ = (eg)->flags | ((in) ? (in)->flags : 0);                               \
		if (((in) && (in)->last_seen_ns) || (seen_ & (IPM_F_FIN | IPM_F_RST))) {           \
			(eg)->created_ns = (now);                                                  \
			(eg)->last_seen_ns = (now);                                                \
			(eg)->flags = IPM_F_WSCALE;                                                \
			(eg)->reply_flags = 0;                                                     \
			(eg)->tcp_wscale = (wscale);                                               \
			(eg)->tcp_ack = 0;                                                         \
			(eg)->tcp_win = 0;                                                         \
			if (in) {                                                                  \
				(in)->created_ns = (now);                                          \
				(in)->last_seen_ns = 0;                                            \
				(in)->flags = 0;                                                   \
			}                                                                          \
		}                                                                                  \
	} while (0)

#endif /* IPMASQ_TCP_STATE_H */
