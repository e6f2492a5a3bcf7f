package loader

import (
	"math"

	"github.com/vishvananda/netlink"
)

// tcSlot is the priority and handle of a cls_bpf filter on a clsact hook.
// Filters run in ascending priority.
type tcSlot struct {
	prio   uint16
	handle uint32
}

// chooseTCSlot picks where our filter goes on a hook, given the filters on
// it now. Ours must run first: a filter ahead of ours that returns
// TC_ACT_OK would let pod packets leave with their own address, or hand
// replies to the host untranslated. So:
//   - a filter of ours that nothing of anybody else precedes is replaced
//     in place (the position survives our restarts, and the swap is
//     atomic);
//   - else the lowest priority that holds no filter of anybody else, with
//     handle 1: priority 1 unless someone took it. A priority shared with
//     a filter of someone else is never used, so that replacing ours can
//     never replace theirs.
//
// The second result lists the other filters of ours, which the caller
// removes once the chosen one is in place.
func chooseTCSlot(filters []netlink.Filter) (tcSlot, []netlink.Filter) {
	foreign := map[uint16]bool{}
	firstForeign := uint16(math.MaxUint16)
	var ours []netlink.Filter
	for _, f := range filters {
		a := f.Attrs()
		if a.Handle == 0 {
			continue // the dump's header of a priority, not a filter
		}
		if bf, ok := f.(*netlink.BpfFilter); ok && isOurs(bf.Name) {
			ours = append(ours, f)
			continue
		}
		foreign[a.Priority] = true
		firstForeign = min(firstForeign, a.Priority)
	}
	var keep netlink.Filter
	for _, f := range ours {
		a := f.Attrs()
		if a.Priority < firstForeign && !foreign[a.Priority] && (keep == nil || a.Priority < keep.Attrs().Priority) {
			keep = f
		}
	}
	slot := tcSlot{prio: 1, handle: 1}
	if keep != nil {
		slot = tcSlot{prio: keep.Attrs().Priority, handle: keep.Attrs().Handle}
	} else {
		for foreign[slot.prio] {
			slot.prio++
		}
	}
	var stale []netlink.Filter
	for _, f := range ours {
		if a := f.Attrs(); a.Priority != slot.prio || a.Handle != slot.handle {
			stale = append(stale, f)
		}
	}
	return slot, stale
}
