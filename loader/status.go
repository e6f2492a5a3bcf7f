package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attachment says how programs of ours are attached to the two hooks of an
// interface, as the kernel reports it (not as the agent remembers it): the
// mode per hook, or "" where none of ours runs. It only reads, so tools and
// health checks may call it while an agent runs. The caller must run in the
// interface's network namespace.
func Attachment(ifindex int) (ingressMode, egressMode Mode, err error) {
	var modes [2]Mode
	for i, dir := range []direction{ingress, egress} {
		tcx, err := ourTCX(ifindex, dir)
		if err != nil {
			return "", "", err
		}
		if tcx {
			modes[i] = ModeTCX
			continue
		}
		tc, err := ourTCFilter(ifindex, dir)
		if err != nil {
			return "", "", err
		}
		if tc {
			modes[i] = ModeTC
		}
	}
	return modes[0], modes[1], nil
}

// ourTCX reports whether a tcx program of ours is attached to the hook.
func ourTCX(ifindex int, dir direction) (bool, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: dir.tcxAttach()})
	if errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
		// Before 6.6 the kernel knows no tcx attach type: BPF_PROG_QUERY
		// answers EINVAL, so nothing of ours can be there.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("query tcx %s programs on interface %d: %w", dir, ifindex, err)
	}
	for _, p := range res.Programs {
		if programIsOurs(p.ID) {
			return true, nil
		}
	}
	return false, nil
}

// ourTCFilter reports whether a cls_bpf filter of ours sits on the hook.
func ourTCFilter(ifindex int, dir direction) (bool, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(l, dir.tcParent())
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil // no clsact qdisc
		}
		return false, fmt.Errorf("list %s filters of %s: %w", dir, l.Attrs().Name, err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && isOurs(bf.Name) {
			return true, nil
		}
	}
	return false, nil
}
