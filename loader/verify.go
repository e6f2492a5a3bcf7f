package loader

import (
	"fmt"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Why a hook lost our program, as far as the kernel still tells.
const (
	CauseLinkDetached  = "link_detached"  // our tcx link is still pinned but attached to nothing (bpftool link detach)
	CauseLinkMissing   = "link_missing"   // no tcx program of ours on the hook and no live pinned link
	CauseQdiscDeleted  = "qdisc_deleted"  // the clsact qdisc is gone (deleted or replaced by another root)
	CauseFilterDeleted = "filter_deleted" // clsact is there, our cls_bpf filter is not
)

// Gap is a hook of an interface where none of our programs runs.
type Gap struct {
	Hook  string // "ingress" or "egress"
	Cause string // one of the Cause constants
}

// Gaps checks both hooks of an interface for our programs in the mode they
// were attached with (tcx or tc), and says for each hook without one why it
// is missing. It only reads. The caller must run in the interface's network
// namespace.
func (d *Datapath) Gaps(ifindex int, ifname string, mode Mode) ([]Gap, error) {
	var gaps []Gap
	for _, dir := range []direction{ingress, egress} {
		var cause string
		var err error
		if mode == ModeTCX {
			cause, err = d.tcxGap(ifindex, ifname, dir)
		} else {
			cause, err = tcGap(ifindex, dir)
		}
		if err != nil {
			return nil, err
		}
		if cause != "" {
			gaps = append(gaps, Gap{Hook: string(dir), Cause: cause})
		}
	}
	return gaps, nil
}

// tcxGap is "" when a tcx program of ours runs on the hook, else the cause.
func (d *Datapath) tcxGap(ifindex int, ifname string, dir direction) (string, error) {
	ours, err := ourTCX(ifindex, dir)
	if err != nil || ours {
		return "", err
	}
	// A force-detached link stays pinned and readable, with ifindex 0:
	// the kernel sends no event for it, which is why the agent also
	// checks on a timer.
	if l, err := link.LoadPinnedLink(d.linkPin(ifname, dir), nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == 0 {
			return CauseLinkDetached, nil
		}
	}
	return CauseLinkMissing, nil
}

// tcGap is "" when our cls_bpf filter sits on the hook, else the cause.
func tcGap(ifindex int, dir direction) (string, error) {
	ours, err := ourTCFilter(ifindex, dir)
	if err != nil || ours {
		return "", err
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	qdiscs, err := netlink.QdiscList(l)
	if err != nil {
		return "", fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return CauseFilterDeleted, nil
		}
	}
	return CauseQdiscDeleted, nil
}
