package main

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// TestRepairCountersStartAtZero: the first attach of an interface makes its
// repair counters exist at 0 for both hooks and every cause, so a rate over
// them has a series before the first repair; a repair then counts on both
// hooks.
func TestRepairCountersStartAtZero(t *testing.T) {
	h := newHealer()
	h.repairs = newRepairCounter(prometheus.NewRegistry())
	if n := testutil.CollectAndCount(h.repairs); n != 0 {
		t.Fatalf("%d series before any attach", n)
	}
	h.attached("eth0", loader.ModeTCX, "")
	if n, want := testutil.CollectAndCount(h.repairs), 2*len(repairCauses); n != want {
		t.Fatalf("%d series after the first attach, want %d (both hooks, every cause)", n, want)
	}
	if v := testutil.ToFloat64(h.repairs.WithLabelValues("eth0", "egress", loader.CauseQdiscDeleted)); v != 0 {
		t.Errorf("egress qdisc_deleted = %v before any repair", v)
	}
	h.attached("eth0", loader.ModeTCX, causeInterfaceRecreated)
	for _, hook := range []string{"ingress", "egress"} {
		if v := testutil.ToFloat64(h.repairs.WithLabelValues("eth0", hook, causeInterfaceRecreated)); v != 1 {
			t.Errorf("%s interface_recreated = %v after one repair, want 1", hook, v)
		}
	}
}
