package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// verifyInterval is how often the agent checks that its programs still run
// on every hook of every managed interface. Events cover most removals at
// once, but a force-detached tcx link sends none, and an event can be lost
// when the socket overflows: the timer bounds the hole either way.
const verifyInterval = 250 * time.Millisecond

// Why an interface's programs were attached again, besides the hook causes
// that loader.Gaps reports.
const (
	causeInterfaceRecreated = "interface_recreated" // the name came back with another ifindex
	causeInterfaceReturned  = "interface_returned"  // the name came back with the same ifindex (renamed back, moved back from another namespace)
)

// healer remembers what the repairs need: the mode each interface was
// attached with, and the interfaces that vanished after being attached.
type healer struct {
	used    map[string]loader.Mode
	lost    map[string]int // name -> ifindex it had
	repairs *prometheus.CounterVec
}

func newHealer() *healer {
	return &healer{used: map[string]loader.Mode{}, lost: map[string]int{}}
}

// newRepairCounter registers ip_masq_agent_attach_repairs_total.
func newRepairCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := newCounterVec("attach_repairs_total",
		"Programs of ours attached again to a hook of a managed interface without a restart, by interface, hook and cause (link_detached, link_missing, qdisc_deleted, filter_deleted, interface_recreated, interface_returned).", "interface", "hook", "cause")
	reg.MustRegister(c)
	return c
}

// vanished notes that an attached interface is gone from the namespace.
func (h *healer) vanished(name string, ifindex int) { h.lost[name] = ifindex }

// attachCause says why an interface is about to be attached: "" for the
// first attach, else the cause of the repair.
func (h *healer) attachCause(name string, prev, ifindex int) string {
	if old, ok := h.lost[name]; ok {
		delete(h.lost, name)
		if old == ifindex {
			return causeInterfaceReturned
		}
		return causeInterfaceRecreated
	}
	if prev != 0 && prev != ifindex {
		return causeInterfaceRecreated
	}
	return ""
}

// attached records an attach, and counts it as a repair of both hooks when
// it had a cause.
func (h *healer) attached(name string, used loader.Mode, cause string) {
	h.used[name] = used
	if cause == "" {
		h.exportZero(name)
		return
	}
	for _, hook := range []string{"ingress", "egress"} {
		h.count(name, hook, cause)
	}
	klog.InfoS("Repaired attachment", "interface", name, "hooks", "ingress,egress", "cause", cause, "mode", used)
}

// repairCause is attachCause, except that an interface that came back
// with our programs still on both hooks (a rename keeps them) needs no
// repair and gets "".
func (s *interfaceSet) repairCause(name string, prev, ifindex int) string {
	cause := s.heal.attachCause(name, prev, ifindex)
	if cause != causeInterfaceReturned {
		return cause
	}
	if gaps, err := s.dp.Gaps(ifindex, name, s.heal.used[name]); err == nil && len(gaps) == 0 {
		klog.InfoS("Interface came back with our programs in place", "interface", name, "ifindex", ifindex)
		return ""
	}
	return cause
}

// repairCauses are every cause a repair is counted by.
var repairCauses = []string{loader.CauseLinkDetached, loader.CauseLinkMissing, loader.CauseQdiscDeleted,
	loader.CauseFilterDeleted, causeInterfaceRecreated, causeInterfaceReturned}

// exportZero makes the repair counters of a newly managed interface exist at
// 0, so that a dashboard or an alert on their rate sees a series before the
// first repair rather than nothing.
func (h *healer) exportZero(name string) {
	if h.repairs == nil {
		return
	}
	for _, hook := range []string{"ingress", "egress"} {
		for _, cause := range repairCauses {
			h.repairs.WithLabelValues(name, hook, cause)
		}
	}
}

func (h *healer) count(name, hook, cause string) {
	if h.repairs != nil {
		h.repairs.WithLabelValues(name, hook, cause).Inc()
	}
}

// verify checks both hooks of every attached interface and attaches again
// where a program of ours is missing, through the same path as the start
// (ingress before egress; our own attachment replaced in place, nothing of
// anybody else touched). An interface that vanished or changed its index
// goes through reconcile. A failed check or repair of one interface does
// not hold up the others.
func (s *interfaceSet) verify() error {
	var errs []error
	for name, idx := range s.attached {
		l, err := netlink.LinkByName(name)
		if err != nil || l.Attrs().Index != idx {
			return s.reconcile()
		}
		gaps, err := s.dp.Gaps(idx, name, s.heal.used[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("check attachment of %s: %w", name, err))
			continue
		}
		if len(gaps) == 0 {
			continue
		}
		used, err := s.dp.Attach(idx, name, s.mode)
		if err != nil {
			for _, g := range gaps {
				klog.ErrorS(err, "Repairing attachment failed", "interface", name, "hook", g.Hook, "cause", g.Cause)
			}
			errs = append(errs, fmt.Errorf("repair attachment of %s: %w", name, err))
			continue
		}
		s.heal.used[name] = used
		for _, g := range gaps {
			s.heal.count(name, g.Hook, g.Cause)
			klog.InfoS("Repaired attachment", "interface", name, "hook", g.Hook, "cause", g.Cause, "mode", used)
		}
	}
	return errors.Join(errs...)
}

// watchTC signals after any qdisc or filter change in the namespace, so
// that a deleted clsact qdisc or filter is repaired at once, not at the
// next verify tick.
func watchTC(ctx context.Context) (<-chan struct{}, error) {
	sock, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_TC)
	if err != nil {
		return nil, fmt.Errorf("watch tc changes: %w", err)
	}
	go func() {
		<-ctx.Done()
		sock.Close()
	}()
	out := make(chan struct{}, 1)
	go func() {
		for {
			if _, _, err := sock.Receive(); err != nil {
				if ctx.Err() != nil {
					return
				}
				if !errors.Is(err, unix.ENOBUFS) {
					klog.ErrorS(err, "Watching tc changes stopped; the verify tick still repairs")
					return
				}
				// Events were lost: check now.
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out, nil
}
