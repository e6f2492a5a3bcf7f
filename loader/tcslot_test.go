package loader

import (
	"testing"

	"github.com/vishvananda/netlink"
)

func bpfFilter(name string, prio uint16, handle uint32) netlink.Filter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{Priority: prio, Handle: handle}, Name: name}
}

func TestChooseTCSlot(t *testing.T) {
	u32 := &netlink.U32{FilterAttrs: netlink.FilterAttrs{Priority: 1, Handle: 0x800}}
	for _, tc := range []struct {
		name      string
		filters   []netlink.Filter
		want      tcSlot
		wantStale int
	}{
		{"empty hook", nil, tcSlot{1, 1}, 0},
		{"ours first stays in place", []netlink.Filter{bpfFilter("ipm_egress", 3, 7), bpfFilter("cil", 5, 1)}, tcSlot{3, 7}, 0},
		{"header entry of our priority is no filter", []netlink.Filter{bpfFilter("", 1, 0), bpfFilter("ipm_egress", 1, 1)}, tcSlot{1, 1}, 0},
		{"older agent behind others moves to the head", []netlink.Filter{bpfFilter("other", 5, 1), bpfFilter("ipm_egress", 0xc1a5, 1)}, tcSlot{1, 1}, 1},
		{"someone at priority 1 handle 1", []netlink.Filter{bpfFilter("other", 1, 1)}, tcSlot{2, 1}, 0},
		{"another kind at priority 1", []netlink.Filter{u32, bpfFilter("other", 2, 1)}, tcSlot{3, 1}, 0},
		{"someone joined our priority", []netlink.Filter{bpfFilter("ipm_egress", 1, 1), bpfFilter("other", 1, 2)}, tcSlot{2, 1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, stale := chooseTCSlot(tc.filters)
			if got != tc.want || len(stale) != tc.wantStale {
				t.Errorf("chooseTCSlot = %+v, %d stale; want %+v, %d stale", got, len(stale), tc.want, tc.wantStale)
			}
		})
	}
}
