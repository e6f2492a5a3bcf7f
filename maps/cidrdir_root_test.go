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

// newTestDir makes test tries and an ipm_cidr4_dir; open makes a NonMasq
// on them, each call as a restarted agent would.
func newTestDir(t *testing.T) (open func() *NonMasq, dir *ebpf.Map) {
	t.Helper()
	tt := newTestTries(t)
	spec, err := loader.LoadBPF()
	if err != nil {
		t.Fatal(err)
	}
	dir = newTestMap(t, spec, loader.BPFMapIpmCidr4Dir)
	return func() *NonMasq {
		n := tt.open(t)
		n.dir.m = dir
		return n
	}, dir
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
	open, dir := newTestDir(t)
	check := func(n *NonMasq, want CIDRSet) {
		t.Helper()
		active := uint32(n.settings.ActiveCIDRs())
		if got := readDirHalf(t, dir, active); !sameBlocks(settledView(got), dirBlocks(want)) {
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
	if got := readDirHalf(t, dir, uint32(1-n.settings.ActiveCIDRs())); !sameBlocks(settledView(got), dirBlocks(b)) {
		t.Fatalf("the retired half does not hold the previous set")
	}
}

// settledView is a half as it reads once every /24 is settled.
func settledView(h map[uint16]dirBlock) map[uint16]dirBlock {
	out := map[uint16]dirBlock{}
	for n, b := range h {
		for i, w := range b.Verdicts {
			b.Verdicts[i] = w &^ (w & (w >> 1) & 0x55 << 1) // 11 -> 01
		}
		out[n] = b
	}
	return out
}

// verdictOf reads the verdict of a's /24 from the active half.
func verdictOf(t *testing.T, m *ebpf.Map, n *NonMasq, a string) uint8 {
	t.Helper()
	v, err := ReadDirVerdict(m, uint32(n.settings.ActiveCIDRs()), netip.MustParseAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A /24 that a new set covers starts as "mapped" (flows masqueraded before
// may hold mappings), settles once the NAT table shows none into it, and
// stays settled through later sets that keep covering it.
func TestNonMasqSettlesTheDir(t *testing.T) {
	open, dir := newTestDir(t)
	n := open()
	a := CIDRSet{netip.MustParsePrefix("10.1.0.0/16"): Configured}
	if err := n.Apply(a); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.1.2.3", "10.1.200.1"} {
		if v := verdictOf(t, dir, n, ip); v != blockNoMasqMapped {
			t.Fatalf("%s: verdict %d right after the set covered it, want %d (mapped)", ip, v, blockNoMasqMapped)
		}
	}
	mapped := NewSet24()
	mapped.Add(block24(netip.MustParseAddr("10.1.2.9")))
	// A NAT table read that began within the grace after the flip may
	// have missed mappings made through the old index: nothing settles.
	if got, err := n.SettleDir(mapped, n.retired); err != nil || got != 0 {
		t.Fatalf("SettleDir right after the flip settled %d (%v), want 0", got, err)
	}
	got, err := n.SettleDir(mapped, n.retired.Add(2*settleGrace))
	if err != nil || got != 255 {
		t.Fatalf("SettleDir settled %d /24s (%v), want the 255 without a mapping", got, err)
	}
	if v := verdictOf(t, dir, n, "10.1.2.3"); v != blockNoMasqMapped {
		t.Errorf("10.1.2.3: verdict %d, want %d: a mapping leads into 10.1.2.0/24", v, blockNoMasqMapped)
	}
	if v := verdictOf(t, dir, n, "10.1.200.1"); v != blockNoMasq {
		t.Errorf("10.1.200.1: verdict %d, want %d (settled)", v, blockNoMasq)
	}
	// The next set keeps 10.1.0.0/16 and adds 10.2.0.0/16: what was
	// settled stays so, the rest starts mapped.
	b := CIDRSet{netip.MustParsePrefix("10.1.0.0/16"): Configured, netip.MustParsePrefix("10.2.0.0/16"): Configured}
	n.retired = time.Time{}
	if err := n.Apply(b); err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]uint8{"10.1.200.1": blockNoMasq, "10.1.2.3": blockNoMasqMapped, "10.2.0.1": blockNoMasqMapped, "10.3.0.1": blockMasq} {
		if v := verdictOf(t, dir, n, ip); v != want {
			t.Errorf("after the second set, %s: verdict %d, want %d", ip, v, want)
		}
	}
}
