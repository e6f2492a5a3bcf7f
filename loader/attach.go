package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"k8s.io/klog/v2"
)

// Mode is how programs are attached to an interface.
type Mode string

const (
	ModeAuto Mode = "auto" // tcx where the kernel has it (6.6+), else tc
	ModeTCX  Mode = "tcx"  // tcx links, pinned under PinPath/links
	ModeTC   Mode = "tc"   // clsact qdisc with direct-action cls_bpf filters
)

// direction is a tc hook.
type direction string

const (
	ingress direction = "ingress"
	egress  direction = "egress"
)

func (d direction) tcxAttach() ebpf.AttachType {
	if d == ingress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

// progPrefix starts the name of every program of ours, which is how we tell
// our tcx links and tc filters from everybody else's.
const progPrefix = "ipm_"

func isOurs(name string) bool { return strings.HasPrefix(name, progPrefix) }

// Attach puts the ingress and then the egress program on an interface,
// replacing programs of ours in place so that no packet ever passes without
// one, then removes what an earlier agent attached with the other mechanism.
// It returns the mechanism used. The caller must run in the interface's
// network namespace.
func (d *Datapath) Attach(ifindex int, ifname string, mode Mode) (Mode, error) {
	hooks := []struct {
		dir  direction
		prog *ebpf.Program
	}{{ingress, d.Programs.IpmIngress}, {egress, d.Programs.IpmEgress}}

	used := mode
	if mode == ModeAuto || mode == ModeTCX {
		used = ModeTCX
		for _, h := range hooks {
			err := d.attachTCX(ifindex, ifname, h.dir, h.prog)
			if mode == ModeAuto && errors.Is(err, link.ErrNotSupported) {
				klog.V(2).InfoS("Kernel has no tcx, using tc", "interface", ifname)
				used = ModeTC
				break
			}
			if err != nil {
				return "", fmt.Errorf("attach %s tcx %s: %w", ifname, h.dir, err)
			}
		}
	}
	if used == ModeTC {
		for _, h := range hooks {
			if err := attachTC(ifindex, h.dir, h.prog); err != nil {
				return "", fmt.Errorf("attach %s tc %s: %w", ifname, h.dir, err)
			}
		}
	}

	// Both of ours run in sequence until this returns; that is harmless
	// (the second sees translated packets and leaves them alone) and
	// avoids a gap.
	for _, h := range hooks {
		var err error
		if used == ModeTCX {
			err = removeTCFilters(ifindex, h.dir)
		} else {
			err = d.detachTCX(ifindex, ifname, h.dir)
		}
		if err != nil {
			return used, fmt.Errorf("remove old %s attachment on %s: %w", h.dir, ifname, err)
		}
	}
	return used, nil
}
