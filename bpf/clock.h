/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The clock of the NAT table's timestamps: CLOCK_MONOTONIC nanoseconds, which
 * the agent compares with its own to expire flows.
 *
 * Reading CLOCK_MONOTONIC (bpf_ktime_get_ns) is a clock source read: 30-60
 * ns on a VM's paravirtual clock, and even the coarse clock (5.11+) is a
 * helper call of 10-20 ns, on a path that costs about 100 ns in all. jiffies
 * (bpf_jiffies64, 5.5+) is a load. The agent calibrates once (ipm_clock,
 * maps/clock.go) and writes a base and the tick length into ipm_settings;
 * jiffies follow the monotonic clock tick by tick, so a timestamp made from
 * them is at most one tick (1-10 ms) behind, which no timeout notices. Until
 * the agent has calibrated, the clock is read.
 */
#ifndef IPMASQ_CLOCK_H
#define IPMASQ_CLOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipmasq.h"

/* CLOCK_MONOTONIC read directly: before calibration, and for the fragment
 * entries, which only the programs compare: both stamp and check with this
 * clock, which a jiffies time can lead when a VM's tick interrupt runs very
 * late (seen under emulation: a first fragment's entry read as expired). */
static __always_inline __u64 ipm_now(void)
{
	return bpf_ktime_get_ns();
}

/* CLOCK_MONOTONIC from jiffies and the agent's calibration in s. The agent
 * rewrites the calibration while packets read it, so a read may mix old and
 * new fields: a recalibration keeps the base jiffy and the tick and moves only
 * the base time by the drift it corrects (maps/clock.go), and a field still 0
 * (the first calibration half written, or a cleared one) means the clock is
 * read instead. */
static __always_inline __u64 ipm_clock(const struct ipm_settings *s)
{
	if (!s || !s->ns_per_jiffy || !s->clock_base_jiffies || !s->clock_base_ns)
		return ipm_now();
	return s->clock_base_ns + (bpf_jiffies64() - s->clock_base_jiffies) * s->ns_per_jiffy;
}

#endif /* IPMASQ_CLOCK_H */
