package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

func (d direction) tcParent() uint32 {
	if d == ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// attachTC creates the clsact qdisc only when absent (it is shared with
// other tc users, so it is never replaced or deleted) and installs or
// replaces our direct-action filter at the head of the hook (chooseTCSlot).
// Replacing a filter at the same priority and handle swaps the program
// atomically; delete-then-add would leave a gap. Filters of ours elsewhere
// on the hook (an older agent's) go only once the new one is in place.
func attachTC(ifindex int, dir direction, prog *ebpf.Program) error {
	if err := ensureClsact(ifindex); err != nil {
		return err
	}
	info, err := prog.Info()
	if err != nil {
		return fmt.Errorf("program info: %w", err)
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	existing, err := netlink.FilterList(l, dir.tcParent())
	if err != nil {
		return fmt.Errorf("list %s filters: %w", dir, err)
	}
	slot, stale := chooseTCSlot(existing)
	if slot.prio != 1 {
		klog.InfoS("Filters of others hold the first tc priorities; ours runs after them",
			"interface", l.Attrs().Name, "direction", dir, "priority", slot.prio)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    dir.tcParent(),
			Handle:    slot.handle,
			Priority:  slot.prio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         info.Name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("replace cls_bpf filter: %w", err)
	}
	for _, f := range stale {
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete an older filter of ours at priority %d: %w", f.Attrs().Priority, err)
		}
	}
	return nil
}

func ensureClsact(ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	qdiscs, err := netlink.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return nil
		}
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	return nil
}

// removeTCFilters deletes the cls_bpf filters of ours on a hook, and nothing
// else. A missing clsact qdisc means there is nothing to remove.
func removeTCFilters(ifindex int, dir direction) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(l, dir.tcParent())
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("list filters: %w", err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || !isOurs(bf.Name) {
			continue
		}
		if err := netlink.FilterDel(bf); err != nil {
			return fmt.Errorf("delete filter %s: %w", bf.Name, err)
		}
		klog.InfoS("Removed a tc filter of ours", "interface", l.Attrs().Name, "direction", dir, "program", bf.Name)
	}
	return nil
}
