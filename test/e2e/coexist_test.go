package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Verdicts of the other programs: TCX_NEXT and TC_ACT_UNSPEC are both -1
// (run the next program), TC_ACT_OK (0) ends the hook and passes the packet.
const (
	verdictNext = -1
	verdictOK   = 0
)

// otherProgram loads a program of someone else that returns verdict for
// every packet. Its name does not start with our prefix.
func otherProgram(t *testing.T, name string, verdict int32) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, verdict), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// onUplink runs fn in the node's namespace with the uplink.
func onUplink(tp *Topology, fn func(uplink netlink.Link) error) error {
	return tp.Node.Do(func() error {
		l, err := netlink.LinkByName(Uplink)
		if err != nil {
			return err
		}
		return fn(l)
	})
}

// tcxProgram is a program on a tcx hook: its name and the link holding it.
type tcxProgram struct {
	name   string
	linkID link.ID
}

// tcxPrograms lists the programs on a tcx hook in the order they run. The
// caller runs in the interface's namespace.
func tcxPrograms(ifindex int, attach ebpf.AttachType) ([]tcxProgram, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
	if err != nil {
		return nil, err
	}
	var out []tcxProgram
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			return nil, err
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			return nil, err
		}
		id, _ := p.LinkID()
		out = append(out, tcxProgram{name: info.Name, linkID: id})
	}
	return out, nil
}

// hookPrograms names the programs on a tcx hook of the uplink, in the
// order they run.
func hookPrograms(t *testing.T, tp *Topology, attach ebpf.AttachType) []string {
	t.Helper()
	var names []string
	err := onUplink(tp, func(l netlink.Link) error {
		progs, err := tcxPrograms(l.Attrs().Index, attach)
		for _, p := range progs {
			names = append(names, p.name)
		}
		return err
	})
	if err != nil {
		t.Fatalf("query tcx programs: %v", err)
	}
	return names
}

// TestCoexist: programs of others on the uplink's hooks, in the attach mode
// of each subtest (a kernel without tcx runs only tc).
func TestCoexist(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		if mode == "tcx" {
			coexistTCX(t)
		} else {
			coexistTC(t)
		}
	})
}

// coexistTCX: programs of others on both tcx hooks, attached before and
// after ours, returning TCX_NEXT or TC_ACT_OK: ours takes the head of each
// hook (a TC_ACT_OK ahead of ours would let pod packets leave with their own
// address), keeps it across our restarts and repairs, and detaches nothing
// of theirs.
func coexistTCX(t *testing.T) {
	requireAgent(t)
	tp := NewTopology(t)
	hooks := []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress}
	var links []link.Link
	attach := func(name string, verdict int32) {
		p := otherProgram(t, name, verdict)
		err := onUplink(tp, func(l netlink.Link) error {
			for _, h := range hooks {
				tl, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: p, Attach: h})
				if err != nil {
					return err
				}
				links = append(links, tl)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("attach %s: %v", name, err)
		}
	}
	t.Cleanup(func() {
		for _, l := range links {
			l.Close()
		}
	})
	attach("other_ok", verdictOK) // before ours
	a := startAgentOn(t, tp, AgentOptions{Mode: "tcx", Config: cfgPrivate})
	attach("other_next", verdictNext) // after ours, at the tail

	want := []string{"ipm_ingress", "other_ok", "other_next"}
	check := func(when string) {
		t.Helper()
		for i, h := range hooks {
			got := hookPrograms(t, tp, h)
			want[0] = []string{"ipm_ingress", "ipm_egress"}[i]
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: %v programs %v, want %v", when, h, got, want)
			}
		}
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
		expectUDP(t, tp.Pod1, tp.Internet, NodeIP)
	}
	check("started after other_ok")
	a.Restart(t, syscall.SIGTERM)
	check("after our restart")
	// A repair (our link force-detached) goes back to the head.
	if err := detachOurs(tp, ebpf.AttachTCXEgress); err != nil {
		t.Fatal(err)
	}
	if _, err := waitAttached(tp, repairDeadline); err != nil {
		t.Fatal(err)
	}
	check("after a repair")
}

// detachOurs force-detaches our tcx link on a hook, as bpftool link detach.
func detachOurs(tp *Topology, attach ebpf.AttachType) error {
	return onUplink(tp, func(l netlink.Link) error {
		progs, err := tcxPrograms(l.Attrs().Index, attach)
		if err != nil {
			return err
		}
		for _, p := range progs {
			if !strings.HasPrefix(p.name, "ipm_") {
				continue
			}
			ln, err := link.NewFromID(p.linkID)
			if err != nil {
				return err
			}
			defer ln.Close()
			return ln.Detach()
		}
		return fmt.Errorf("no tcx link of ours on %v", attach)
	})
}

// tcFilters lists the filters on a clsact hook of the uplink as
// "priority/handle/name", in the order they run (tc show order).
func tcFilters(t *testing.T, tp *Topology, parent uint32) []string {
	t.Helper()
	var out []string
	err := onUplink(tp, func(l netlink.Link) error {
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Handle != 0 {
				out = append(out, fmt.Sprintf("%d/%d/%s", bf.Priority, bf.Handle, bf.Name))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list filters: %v", err)
	}
	return out
}

// coexistTC: cls_bpf filters of others on both clsact hooks: one at
// priority 1 handle 1 (where ours goes on an empty hook) that returns
// TC_ACT_UNSPEC, and one at a later priority that returns TC_ACT_OK. Ours
// takes the first priority nobody else holds, never replaces or deletes
// theirs, keeps its place across restarts, and pod traffic is masqueraded.
func coexistTC(t *testing.T) {
	requireAgent(t)
	tp := NewTopology(t)
	parents := []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}
	tp.Node.MustExec(t, "tc", "qdisc", "add", "dev", Uplink, "clsact")
	add := func(name string, verdict int32, prio uint16) {
		p := otherProgram(t, name, verdict)
		err := onUplink(tp, func(l netlink.Link) error {
			for _, parent := range parents {
				if err := netlink.FilterAdd(&netlink.BpfFilter{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Priority: prio, Handle: 1, Protocol: unix.ETH_P_ALL},
					Fd:          p.FD(), Name: name, DirectAction: true,
				}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("add filter %s: %v", name, err)
		}
	}
	add("other_next", verdictNext, 1) // ours would go here on an empty hook
	add("other_ok", verdictOK, 5)
	a := startAgentOn(t, tp, AgentOptions{Mode: "tc", Config: cfgPrivate})

	check := func(when string) {
		t.Helper()
		for i, parent := range parents {
			ours := []string{"ipm_ingress", "ipm_egress"}[i]
			want := fmt.Sprint([]string{"1/1/other_next", "2/1/" + ours, "5/1/other_ok"})
			if got := fmt.Sprint(tcFilters(t, tp, parent)); got != want {
				t.Errorf("%s: filters %s, want %s", when, got, want)
			}
		}
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
		expectUDP(t, tp.Pod1, tp.Internet, NodeIP)
	}
	check("started")
	a.Restart(t, syscall.SIGTERM)
	check("after our restart")
	tp.Node.MustExec(t, "tc", "filter", "del", "dev", Uplink, "egress", "pref", "2")
	if _, err := waitAttached(tp, repairDeadline); err != nil {
		t.Fatal(err)
	}
	check("after a repair")
}
