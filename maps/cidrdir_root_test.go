package maps

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// readDirHalf reads every entry of one half of ipm_cidr4_dir, leaving out
// the all-masquerade ones as dirBlocks does.
func readDirHalf(t *testing.T, m *ebpf.Map, half uint32) map[uint16]dirBlock {
	t.Helper()
	keys := make([]uint32, dirHalf)
	vals := make([]dirBlock, dirHalf)
	for i := range keys {
		keys[i] = half<<16 | uint32(i)
	}
	out := map[uint16]dirBlock{}
	for i := range keys {
		if err := m.Lookup(keys[i], &vals[i]); err != nil {
			t.Fatal(err)
		}
		if vals[i] != (dirBlock{}) {
			out[uint16(i)] = vals[i]
		}
	}
	return out
}

func sameBlocks(a, b map[uint16]dirBlock) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Every Apply leaves the half of the /24 table that decides in step with
// the trie that decides, and a restarted NonMasq repairs a table it did not
// write (an upgrade from a datapath without one).
func TestNonMasqWritesTheDir(t *testing.T) {
	tt := newTestTries(t)
	spec, err := loader.LoadBPF()
	if err != nil {
		t.Fatal(err)
	}
	dir := newTestMap(t, spec, loader.BPFMapIpmCidr4Dir)
	open := func() *NonMasq {
		n := tt.open(t)
		n.dir.m = dir
		return n
	}
	check := func(n *NonMasq, want CIDRSet) {
		t.Helper()
		active := uint32(n.settings.ActiveCIDRs())
		if got := readDirHalf(t, dir, active); !sameBlocks(got, dirBlocks(want)) {
			t.Fatalf("active half %d holds %d entries, want the %d of %v", active, len(got), len(dirBlocks(want)), want)
		}
	}
	set := func(s ...string) CIDRSet {
		out := CIDRSet{}
		for _, p := range s {
			out[netip.MustParsePrefix(p)] = Configured
		}
		return out
	}

	n := open()
	a := set("10.0.0.0/8", "192.168.7.0/24", "203.0.113.64/28", "fd00::/8")
	b := set("172.16.0.0/12", "198.51.100.0/25", "203.0.113.64/28")
	for _, s := range []CIDRSet{a, b, a, set()} {
		if err := n.Apply(s); err != nil {
			t.Fatal(err)
		}
		check(n, s)
	}
	if err := n.Apply(b); err != nil {
		t.Fatal(err)
	}

	// Someone scribbles over both halves (a crashed writer, an old
	// datapath): a new NonMasq rewrites the active half as it was and the
	// idle one with the new set.
	for i := uint32(0); i < 2; i++ {
		if err := dir.Put(i<<16|0x0a00, dirBlock{Verdicts: [64]byte{0xff}}); err != nil {
			t.Fatal(err)
		}
	}
	n = open()
	start := time.Now()
	if err := n.Apply(a); err != nil {
		t.Fatal(err)
	}
	t.Logf("first Apply of a process (both halves written whole): %v", time.Since(start))
	check(n, a)
	if got := readDirHalf(t, dir, uint32(1-n.settings.ActiveCIDRs())); !sameBlocks(got, dirBlocks(b)) {
		t.Fatalf("the retired half does not hold the previous set")
	}
}
