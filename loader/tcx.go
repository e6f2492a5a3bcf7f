package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// linkPin is where the tcx link of an interface and direction is pinned.
func (d *Datapath) linkPin(ifname string, dir direction) string {
	return filepath.Join(d.PinPath, "links", ifname+"_"+string(dir))
}

// attachTCX replaces the program of our pinned link in place, or attaches a
// new link and pins it. Returns link.ErrNotSupported on kernels before 6.6.
func (d *Datapath) attachTCX(ifindex int, ifname string, dir direction, prog *ebpf.Program) error {
	pin := d.linkPin(ifname, dir)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		updated := tcxLinkFits(l, ifindex, dir) && l.Update(prog) == nil
		if updated {
			id := linkID(l)
			l.Close()
			return detachOurTCX(ifindex, dir, id)
		}
		// The interface was recreated: this link is dead.
		l.Unpin()
		l.Close()
	}

	// At the head of the hook: a program ahead of ours that returns
	// TC_ACT_OK would let pod packets leave with their own address, or
	// hand replies to the host untranslated. Update above keeps the
	// position across our restarts.
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: dir.tcxAttach(), Anchor: link.Head()})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("create link pin directory: %w", err)
	}
	os.Remove(pin)
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	// An earlier agent whose pins were lost (a private mount namespace)
	// may have left its link attached: ours replaces it.
	return detachOurTCX(ifindex, dir, linkID(l))
}

// tcxLinkFits reports whether l is a live tcx link on ifindex in direction dir.
func tcxLinkFits(l link.Link, ifindex int, dir direction) bool {
	info, err := l.Info()
	if err != nil || info.Type != link.TCXType {
		return false
	}
	tcx := info.TCX()
	return tcx != nil && int(tcx.Ifindex) == ifindex && ebpf.AttachType(tcx.AttachType) == dir.tcxAttach()
}

func linkID(l link.Link) link.ID {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	return info.ID
}

// detachOurTCX detaches every tcx link on the hook whose program is ours,
// except the one with ID keep.
func detachOurTCX(ifindex int, dir direction, keep link.ID) error {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: dir.tcxAttach()})
	if errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
		// Before 6.6 the kernel has no tcx, and answers a query for a
		// tcx attach type with EINVAL: nothing of ours can be there.
		return nil
	}
	if err != nil {
		return fmt.Errorf("query tcx programs: %w", err)
	}
	for _, p := range res.Programs {
		id, ok := p.LinkID()
		if !ok || id == keep || !programIsOurs(p.ID) {
			continue
		}
		l, err := link.NewFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		err = l.Detach()
		l.Close()
		if err != nil {
			return fmt.Errorf("detach tcx link %d: %w", id, err)
		}
		klog.InfoS("Detached an older tcx link of ours", "link", id, "direction", dir)
	}
	return nil
}

// detachTCX removes our tcx attachment of a hook: the pinned link and any
// other link of ours.
func (d *Datapath) detachTCX(ifindex int, ifname string, dir direction) error {
	os.Remove(d.linkPin(ifname, dir))
	return detachOurTCX(ifindex, dir, 0)
}

func programIsOurs(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && isOurs(info.Name)
}
