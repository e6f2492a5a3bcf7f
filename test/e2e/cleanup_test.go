package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// foreignName names the programs another tc user owns in TestCleanup.
const foreignName = "foreign_pass"

// tcHooks are the two tc tcHooks with their tcx attach types and clsact parents.
var tcHooks = []struct {
	name   string
	tcx    ebpf.AttachType
	parent uint32
}{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS},
}

// foreignProgram loads a program that passes every packet on
// (TC_ACT_UNSPEC, which tcx reads as TCX_NEXT), named like nothing of ours.
func foreignProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: foreignName, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load the foreign program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// addForeignTC adds a clsact qdisc and a foreign cls_bpf filter at priority
// 1 on both tcHooks of the uplink, as another tc user would, before the agent
// runs (so the qdisc is not the agent's either).
func addForeignTC(t *testing.T, ns *Netns, prog *ebpf.Program) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(Uplink)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
	}}); err != nil {
		t.Fatalf("add clsact: %v", err)
	}
	for _, hk := range tcHooks {
		if err := h.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: hk.parent,
				Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: 1},
			Fd: prog.FD(), Name: foreignName, DirectAction: true,
		}); err != nil {
			t.Fatalf("add the foreign %s filter: %v", hk.name, err)
		}
	}
}

// addForeignTCX attaches the foreign program through tcx on both tcHooks of
// the uplink; the links live until the test ends.
func addForeignTCX(t *testing.T, ns *Netns, prog *ebpf.Program) {
	t.Helper()
	for _, hk := range tcHooks {
		var l link.Link
		err := ns.Do(func() error {
			nl, err := netlink.LinkByName(Uplink)
			if err != nil {
				return err
			}
			l, err = link.AttachTCX(link.TCXOptions{Interface: nl.Attrs().Index, Program: prog, Attach: hk.tcx})
			return err
		})
		if err != nil {
			t.Fatalf("attach the foreign tcx %s link: %v", hk.name, err)
		}
		t.Cleanup(func() { l.Close() })
	}
}

// hookState is what runs on the tcHooks of the node's interfaces.
type hookState struct {
	ourTC, foreignTC   []string // "eth0 egress" for every cls_bpf filter
	ourTCX, foreignTCX []string // "eth0 egress" for every tcx program
	ourPrograms        []ebpf.ProgramID
	clsact             bool // the uplink still has its clsact qdisc
}

// readHooks lists every tc filter and tcx program on every interface of ns.
func readHooks(t *testing.T, ns *Netns) hookState {
	t.Helper()
	var s hookState
	err := ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			name := l.Attrs().Name
			if name == Uplink {
				qdiscs, err := netlink.QdiscList(l)
				if err != nil {
					return err
				}
				for _, q := range qdiscs {
					s.clsact = s.clsact || q.Type() == "clsact"
				}
			}
			for _, hk := range tcHooks {
				where := name + " " + hk.name
				filters, err := netlink.FilterList(l, hk.parent)
				if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("list %s filters: %w", where, err)
				}
				for _, f := range filters {
					bf, ok := f.(*netlink.BpfFilter)
					switch {
					case !ok:
					case strings.HasPrefix(bf.Name, "ipm_"):
						s.ourTC = append(s.ourTC, where)
						s.ourPrograms = append(s.ourPrograms, ebpf.ProgramID(bf.Id))
					case bf.Name == foreignName:
						s.foreignTC = append(s.foreignTC, where)
					}
				}
				res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: hk.tcx})
				if errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
					continue // no tcx before 6.6
				}
				if err != nil {
					return fmt.Errorf("query tcx %s: %w", where, err)
				}
				for _, p := range res.Programs {
					prog, err := ebpf.NewProgramFromID(p.ID)
					if err != nil {
						continue
					}
					info, err := prog.Info()
					prog.Close()
					switch {
					case err != nil:
					case strings.HasPrefix(info.Name, "ipm_"):
						s.ourTCX = append(s.ourTCX, where)
						s.ourPrograms = append(s.ourPrograms, p.ID)
					case info.Name == foreignName:
						s.foreignTCX = append(s.foreignTCX, where)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pinnedIDs returns the kernel IDs of every map and link pinned under dir.
func pinnedIDs(t *testing.T, dir string) (mapIDs []ebpf.MapID, linkIDs []link.ID) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if filepath.Base(filepath.Dir(path)) == "links" {
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return err
			}
			defer l.Close()
			info, err := l.Info()
			if err != nil {
				return err
			}
			linkIDs = append(linkIDs, info.ID)
			return nil
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return err
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			return err
		}
		id, _ := info.ID()
		mapIDs = append(mapIDs, id)
		return nil
	})
	if err != nil {
		t.Fatalf("read pins under %s: %v", dir, err)
	}
	return mapIDs, linkIDs
}

// runCleanup runs `ip-masq-agent cleanup` in the node namespace.
func runCleanup(a *Agent) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", a.Topo.Node.Name, agentBin, "cleanup", "--pin-path="+a.PinPath).CombinedOutput()
	return string(out), err
}

// TestCleanup: `ip-masq-agent cleanup` refuses to run next to an agent, and
// after the agent stopped it removes every tc filter, tcx link and pin of
// ours, so that the kernel frees our programs and maps, while a foreign
// clsact qdisc, foreign cls_bpf filters and foreign tcx links on the same
// interface survive and pod traffic is no longer translated (docs/behaviour.md §10).
func TestCleanup(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		requireAgent(t)
		tp := NewTopology(t)
		prog := foreignProgram(t)
		addForeignTC(t, tp.Node, prog)
		if mode == "tcx" {
			addForeignTCX(t, tp.Node, prog)
		}
		a := StartAgent(t, tp, AgentOptions{Mode: mode, Config: cfgPrivate})
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)

		before := readHooks(t, tp.Node)
		wantOurs := []string{Uplink + " ingress", Uplink + " egress"}
		ours := before.ourTC
		if mode == "tcx" {
			ours = before.ourTCX
		}
		if fmt.Sprint(ours) != fmt.Sprint(wantOurs) {
			t.Fatalf("before cleanup, %s programs of ours on %v, want %v", mode, ours, wantOurs)
		}
		if len(before.ourPrograms) != 2 || before.ourPrograms[0] == 0 || before.ourPrograms[1] == 0 {
			t.Fatalf("before cleanup, program IDs of ours %v, want two", before.ourPrograms)
		}
		mapIDs, linkIDs := pinnedIDs(t, a.PinPath)
		if len(mapIDs) < 5 || (mode == "tcx" && len(linkIDs) != 2) {
			t.Fatalf("pins before cleanup: maps %v, links %v", mapIDs, linkIDs)
		}

		if out, err := runCleanup(a); err == nil || !strings.Contains(out, "stop the agent first") {
			t.Errorf("cleanup next to a running agent: %v, want a refusal that says to stop the agent:\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(a.PinPath, "ipm_nat4")); err != nil {
			t.Errorf("a refused cleanup removed pins: %v", err)
		}
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)

		a.Stop(t, syscall.SIGTERM)
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP) // still attached without the agent
		if out, err := runCleanup(a); err != nil {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}

		after := readHooks(t, tp.Node)
		if len(after.ourTC) > 0 || len(after.ourTCX) > 0 {
			t.Errorf("after cleanup, tc filters of ours on %v, tcx programs of ours on %v", after.ourTC, after.ourTCX)
		}
		if fmt.Sprint(after.foreignTC) != fmt.Sprint(wantOurs) {
			t.Errorf("after cleanup, foreign cls_bpf filters on %v, want %v", after.foreignTC, wantOurs)
		}
		if mode == "tcx" && fmt.Sprint(after.foreignTCX) != fmt.Sprint(wantOurs) {
			t.Errorf("after cleanup, foreign tcx programs on %v, want %v", after.foreignTCX, wantOurs)
		}
		if !after.clsact {
			t.Error("cleanup deleted the clsact qdisc, which another tc user owns")
		}
		if _, err := os.Stat(a.PinPath); !os.IsNotExist(err) {
			t.Errorf("pin directory %s after cleanup: %v, want it removed", a.PinPath, err)
		}
		// Nothing holds our objects any more, so the kernel frees them.
		err := eventually(5*time.Second, func() error {
			var left []string
			for _, id := range before.ourPrograms {
				if p, err := ebpf.NewProgramFromID(id); err == nil {
					p.Close()
					left = append(left, fmt.Sprintf("program %d", id))
				}
			}
			for _, id := range mapIDs {
				if m, err := ebpf.NewMapFromID(id); err == nil {
					m.Close()
					left = append(left, fmt.Sprintf("map %d", id))
				}
			}
			for _, id := range linkIDs {
				if l, err := link.NewFromID(id); err == nil {
					l.Close()
					left = append(left, fmt.Sprintf("link %d", id))
				}
			}
			if len(left) > 0 {
				return fmt.Errorf("still in the kernel after cleanup: %v", left)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}

		// Traffic passes the foreign programs untranslated: the VPC sees the
		// pod, the internet host drops the pod's private source.
		expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
		expectDropped(t, tp.Pod1, tp.Internet)

		if out, err := runCleanup(a); err != nil {
			t.Errorf("a second cleanup: %v, want it to succeed with nothing to do\n%s", err, out)
		}
	})
}
