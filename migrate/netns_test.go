package migrate

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/test/nstest"
)

// These tests change netfilter tables with the real iptables binaries and
// the real kernel, each in a network namespace of its own; they need root
// and skip without it.

// testNS is a throwaway network namespace (`ip netns add`).
type testNS struct {
	name   string
	handle netns.NsHandle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netfilter tables); run as root, e.g. `sudo go test ./migrate/`")
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "ipmt-" + hex.EncodeToString(b)
	return &testNS{name: name, handle: nstest.Add(t, name)}
}

// run runs a command in the namespace and fails the test on error.
func (n *testNS) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("netns %s: %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// do runs fn on a locked OS thread inside the namespace; the thread is
// thrown away afterwards (a goroutine that exits locked takes it along).
func (n *testNS) do(fn func() error) error { return nstest.Do(n.handle, n.name, fn) }

// backend returns the backend of the namespace.
func (n *testNS) backend(name string) Backend {
	if name == BackendNFT {
		return NewNFT(nftables.WithNetNSFd(int(n.handle)))
	}
	l := NewLegacy()
	l.LockFile = os.DevNull // the node's lock is not ours to wait for
	return l
}

// remove runs the backend's Remove inside the namespace, on a thread
// without CAP_NET_RAW (capabilities are per thread; this one is thrown
// away): the agent needs only CAP_NET_ADMIN for it.
func (n *testNS) remove(t *testing.T, backend string, fam Family, chain string) (*Removal, error) {
	t.Helper()
	var r *Removal
	err := n.do(func() error {
		if err := dropEffective(unix.CAP_NET_RAW); err != nil {
			return err
		}
		var err error
		r, err = n.backend(backend).Remove(fam, chain)
		return err
	})
	return r, err
}

// dropEffective removes a capability from the calling thread's effective set.
func dropEffective(capability int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[capability/32].Effective &^= 1 << (capability % 32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// iptablesBin is the iptables command of a backend and family.
func iptablesBin(t *testing.T, backend string, fam Family) string {
	t.Helper()
	name := "iptables-" + backend
	if fam == IPv6 {
		name = "ip6tables-" + backend
	}
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (Debian's iptables package ships it)", name)
	}
	return name
}

// save returns the nat table in iptables-save syntax, without comments
// and counters, one rule or chain per line.
func (n *testNS) save(t *testing.T, bin string) []string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(n.run(t, bin+"-save", "-t", "nat"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") { // ":CHAIN POLICY [packets:bytes]"
			l = strings.Join(strings.Fields(l)[:2], " ")
		}
		lines = append(lines, l)
	}
	return lines
}

// Upstream's rules (kubernetes-sigs/ip-masq-agent v2.12), as iptables
// arguments after the table.
const (
	upstreamJumpComment   = "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain"
	upstreamReturnComment = "ip-masq-agent: local traffic is not subject to MASQUERADE"
	upstreamMasqComment   = "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)"
)

func upstreamRules(fam Family, nonMasq ...string) [][]string {
	linkLocal := "169.254.0.0/16"
	if fam == IPv6 {
		linkLocal = "fe80::/10"
	}
	rules := [][]string{{"-N", "IP-MASQ-AGENT"}}
	for _, c := range append([]string{linkLocal}, nonMasq...) {
		rules = append(rules, []string{"-A", "IP-MASQ-AGENT", "-m", "comment", "--comment", upstreamReturnComment, "-d", c, "-j", "RETURN"})
	}
	return append(rules,
		[]string{"-A", "IP-MASQ-AGENT", "-m", "comment", "--comment", upstreamMasqComment, "-j", "MASQUERADE", "--random-fully"},
		[]string{"-A", "POSTROUTING", "-m", "comment", "--comment", upstreamJumpComment,
			"-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "IP-MASQ-AGENT"})
}

// apply runs each rule with `bin -w -t nat`.
func (n *testNS) apply(t *testing.T, bin string, rules [][]string) {
	t.Helper()
	for _, r := range rules {
		n.run(t, append([]string{bin, "-w", "-t", "nat"}, r...)...)
	}
}

func isOurs(line string) bool { return strings.Contains(line, "IP-MASQ-AGENT") }

func without(lines []string, drop func(string) bool) []string {
	return slices.DeleteFunc(slices.Clone(lines), drop)
}

// TestRemoveKeepsEverythingElse builds a nat table in which every offset
// moves: chains of others before and after ours, rules of others before,
// between and after two jumps to ours in POSTROUTING (the first rule of the
// hook is a jump, so the hook's entry moves), a rule without a target whose
// fall-through lands on a jump, and jumps between the other chains. After
// the removal the table is the same but for our lines, rule for rule.
func TestRemoveKeepsEverythingElse(t *testing.T) {
	for _, backend := range []string{BackendLegacy, BackendNFT} {
		for _, fam := range []Family{IPv4, IPv6} {
			t.Run(backend+"/"+string(fam), func(t *testing.T) {
				bin := iptablesBin(t, backend, fam)
				n := newTestNS(t)
				vpc, other := "10.0.0.0/8", "192.0.2.0/24"
				if fam == IPv6 {
					vpc, other = "fd00::/8", "2001:db8::/32"
				}
				ours := upstreamRules(fam, vpc)
				jump := ours[len(ours)-1]
				n.apply(t, bin, [][]string{
					{"-N", "AAA-BEFORE"},
					{"-N", "ZZZ-AFTER"},
					{"-A", "AAA-BEFORE", "-d", other, "-j", "ZZZ-AFTER"},
					{"-A", "AAA-BEFORE", "-j", "RETURN"},
					{"-A", "ZZZ-AFTER", "-s", other, "-j", "ACCEPT", "-c", "7", "700"},
					{"-A", "PREROUTING", "-d", other, "-j", "AAA-BEFORE"},
				})
				n.apply(t, bin, ours[:len(ours)-1]) // the chain and its rules
				n.apply(t, bin, [][]string{
					jump, // first rule of POSTROUTING
					{"-A", "POSTROUTING", "-d", other, "-j", "AAA-BEFORE"},
					{"-A", "POSTROUTING", "-d", other, "-m", "comment", "--comment", "counts only"},
					jump, // reached by the fall-through of the rule before
					{"-A", "POSTROUTING", "-j", "ZZZ-AFTER"},
					{"-A", "OUTPUT", "-d", other, "-j", "ZZZ-AFTER"},
				})
				before := n.save(t, bin)
				t.Logf("before:\n%s", strings.Join(before, "\n"))

				r, err := n.remove(t, backend, fam, "IP-MASQ-AGENT")
				if err != nil {
					t.Fatalf("Remove: %v", err)
				}
				after := n.save(t, bin)
				if want := without(before, isOurs); !slices.Equal(after, want) {
					t.Errorf("after the removal:\n%s\nwant:\n%s", strings.Join(after, "\n"), strings.Join(want, "\n"))
				}
				if r == nil {
					t.Fatal("Remove found nothing")
				}
				// Counters of the kept rules are kept: the kernel zeroes
				// them in a replaced legacy table, and they are added back.
				// (nf_tables rules are not rewritten; ip6tables-nft 1.8.9
				// ignores -c anyway.)
				if out := n.run(t, bin+"-save", "-c", "-t", "nat"); backend == BackendLegacy && !strings.Contains(out, "[7:700] -A ZZZ-AFTER") {
					t.Errorf("counters of -A ZZZ-AFTER lost:\n%s", out)
				}
				t.Logf("removed jumps %q, rules %q", r.Jumps, r.Rules)
				if len(r.Jumps) != 2 || len(r.Rules) != 3 {
					t.Errorf("removed %d jumps and %d rules, want 2 and 3", len(r.Jumps), len(r.Rules))
				}
				for _, j := range r.Jumps {
					if !strings.HasPrefix(j, "-A POSTROUTING") || !strings.Contains(j, "-m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT") ||
						!strings.Contains(j, upstreamJumpComment) {
						t.Errorf("jump rendered as %q", j)
					}
				}
				if len(r.Rules) == 3 && (!strings.Contains(r.Rules[1], "-d "+vpc) || !strings.Contains(r.Rules[1], "-j RETURN") ||
					!strings.Contains(r.Rules[2], "-j MASQUERADE")) {
					t.Errorf("rules rendered as %q", r.Rules)
				}

				// A second run finds nothing and changes nothing.
				r, err = n.remove(t, backend, fam, "IP-MASQ-AGENT")
				if err != nil || r != nil {
					t.Errorf("second Remove = %+v, %v; want nil, nil", r, err)
				}
				if again := n.save(t, bin); !slices.Equal(again, after) {
					t.Errorf("second Remove changed the table:\n%s", strings.Join(again, "\n"))
				}
			})
		}
	}
}

// TestRemoveRefusesAReferencedChain: a jump to the chain from a chain other
// than POSTROUTING means someone else uses it: nothing is changed.
func TestRemoveRefusesAReferencedChain(t *testing.T) {
	for _, backend := range []string{BackendLegacy, BackendNFT} {
		t.Run(backend, func(t *testing.T) {
			bin := iptablesBin(t, backend, IPv4)
			n := newTestNS(t)
			n.apply(t, bin, upstreamRules(IPv4, "10.0.0.0/8"))
			n.apply(t, bin, [][]string{{"-N", "OTHER"}, {"-A", "OTHER", "-j", "IP-MASQ-AGENT"}, {"-A", "POSTROUTING", "-j", "OTHER"}})
			before := n.save(t, bin)
			r, err := n.remove(t, backend, IPv4, "IP-MASQ-AGENT")
			if err == nil {
				t.Errorf("Remove = %+v, want an error", r)
			} else {
				t.Logf("Remove: %v", err)
			}
			if after := n.save(t, bin); !slices.Equal(after, before) {
				t.Errorf("the table changed:\n%s\nwant:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
			}
		})
	}
}

// TestAbsentTouchesNothing: in a namespace without any nat table, both
// backends report that there is nothing, and no table appears.
func TestAbsentTouchesNothing(t *testing.T) {
	n := newTestNS(t)
	tables := func() string {
		return n.run(t, "sh", "-c", "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; nft list tables 2>/dev/null; true")
	}
	before := tables()
	if strings.Contains(before, "nat") {
		t.Fatalf("a fresh namespace already has a nat table: %q", before)
	}
	var removed []Removal
	err := n.do(func() error {
		var err error
		l := NewLegacy()
		l.LockFile = os.DevNull
		removed, err = Run(Options{Chain: "IP-MASQ-AGENT", NFT: NewNFT(nftables.WithNetNSFd(int(n.handle))), Legacy: l})
		return err
	})
	if err != nil || len(removed) != 0 {
		t.Errorf("Run = %+v, %v; want nothing", removed, err)
	}
	if after := tables(); after != before {
		t.Errorf("tables before %q, after %q", before, after)
	}
}

// TestOtherNatTableUntouched: a nat table without our chain (kube-proxy's,
// say) is left exactly as it is, on both backends.
func TestOtherNatTableUntouched(t *testing.T) {
	for _, backend := range []string{BackendLegacy, BackendNFT} {
		t.Run(backend, func(t *testing.T) {
			bin := iptablesBin(t, backend, IPv4)
			n := newTestNS(t)
			n.apply(t, bin, [][]string{{"-N", "KUBE-POSTROUTING"}, {"-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"}})
			before := n.save(t, bin)
			r, err := n.remove(t, backend, IPv4, "IP-MASQ-AGENT")
			if err != nil || r != nil {
				t.Errorf("Remove = %+v, %v; want nil, nil", r, err)
			}
			if after := n.save(t, bin); !slices.Equal(after, before) {
				t.Errorf("the table changed:\n%s", strings.Join(after, "\n"))
			}
		})
	}
}
