package maps

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Tier 1 with privileges: these tests create the four tries and the settings
// array as the datapath declares them (no program is loaded, nothing is
// pinned), so they need CAP_BPF but no bpffs.

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_BPF) to create the tries; run `sudo go test ./maps/`")
	}
}

// rootSpec skips the test without root and else returns the datapath's
// object, loaded from the embedded ELF but not into the kernel.
func rootSpec(t testing.TB) *ebpf.CollectionSpec {
	t.Helper()
	requireRoot(t)
	spec, err := loader.LoadBPF()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// newTestMap creates one map of the datapath's object, unpinned.
func newTestMap(t testing.TB, spec *ebpf.CollectionSpec, name string) *ebpf.Map {
	t.Helper()
	ms := spec.Maps[name].Copy()
	ms.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// testTries are the maps a NonMasq writes, so a test can open a second
// NonMasq on them (an agent restarted on its pinned maps).
type testTries struct {
	tries4, tries6 [2]*ebpf.Map
	settings       *Settings
}

func newTestTries(t testing.TB) *testTries {
	t.Helper()
	spec := rootSpec(t)
	tt := &testTries{settings: &Settings{m: newTestMap(t, spec, loader.BPFMapIpmSettings)}}
	tt.tries4 = [2]*ebpf.Map{newTestMap(t, spec, loader.BPFMapIpmCidr40), newTestMap(t, spec, loader.BPFMapIpmCidr41)}
	tt.tries6 = [2]*ebpf.Map{newTestMap(t, spec, loader.BPFMapIpmCidr60), newTestMap(t, spec, loader.BPFMapIpmCidr61)}
	return tt
}

// open returns a NonMasq on the maps, as an agent starting on them would,
// with the settings read back.
func (tt *testTries) open(t testing.TB) *NonMasq {
	t.Helper()
	s := &Settings{m: tt.settings.m}
	if err := s.m.Lookup(uint32(0), &s.val); err != nil {
		t.Fatal(err)
	}
	return newNonMasq(tt.tries4, tt.tries6, s)
}

// contents reads pair i of the tries.
func (tt *testTries) contents(t testing.TB, i int) CIDRSet {
	t.Helper()
	set, err := readTrie(tt.tries4[i])
	if err != nil {
		t.Fatal(err)
	}
	set6, err := readTrie(tt.tries6[i])
	if err != nil {
		t.Fatal(err)
	}
	for p, o := range set6 {
		set[p] = o
	}
	return set
}

func sameSet(a, b CIDRSet) bool {
	if len(a) != len(b) {
		return false
	}
	for p, o := range a {
		if got, ok := b[p]; !ok || got != o {
			return false
		}
	}
	return true
}

// manySet returns n distinct IPv4 /24s from first on, all configured, plus
// link-local.
func manySet(first, n int) CIDRSet {
	s := CIDRSet{netip.MustParsePrefix("169.254.0.0/16"): LinkLocal}
	for i := first; i < first+n; i++ {
		s[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)] = Configured
	}
	return s
}

// applyAndCheck applies set without waiting out the retire grace (the
// tests do not run packets) and checks that the active pair holds exactly
// set and the idle pair what was active before.
func applyAndCheck(t *testing.T, tt *testTries, n *NonMasq, set CIDRSet) {
	t.Helper()
	before := n.settings.ActiveCIDRs()
	prev := tt.contents(t, before)
	n.retired = time.Time{}
	if err := n.Apply(set); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	active := n.settings.ActiveCIDRs()
	if active == before {
		t.Fatalf("Apply did not flip: active pair still %d", active)
	}
	if got := tt.contents(t, active); !sameSet(got, set) {
		t.Errorf("active pair %d holds %d prefixes, want %d: %v", active, len(got), len(set), Diff2(got, set))
	}
	if got := tt.contents(t, before); !sameSet(got, prev) {
		t.Errorf("retired pair %d changed by Apply", before)
	}
	if got, err := n.Active(); err != nil || !sameSet(got, set) {
		t.Errorf("Active() = %d prefixes, %v; want %d", len(got), err, len(set))
	}
}

// Diff2 describes how two sets differ, for a failure message.
func Diff2(got, want CIDRSet) string {
	extra, missing := Diff(want, got)
	return fmt.Sprintf("extra or changed %v, missing %v", extra, missing)
}

func mixedSet(ss ...string) CIDRSet {
	s := CIDRSet{}
	for _, p := range prefixes(ss...) {
		s[p] = Configured
	}
	s[netip.MustParsePrefix("169.254.0.0/16")] = LinkLocal
	s[netip.MustParsePrefix("fe80::/10")] = LinkLocal
	return s
}

func TestNonMasqApply(t *testing.T) {
	tt := newTestTries(t)
	n := tt.open(t)
	sets := []CIDRSet{
		mixedSet("10.0.0.0/8", "172.16.0.0/12", "fd00::/8"),
		manySet(0, 3000),
		manySet(1000, 3000), // overlaps both neighbours
		mixedSet("10.0.0.0/8", "2001:db8::/32"),
		{}, // masquerade everything, link-local included
		mixedSet("10.0.0.0/8", "172.16.0.0/12", "fd00::/8"),
	}
	for i, set := range sets {
		applyAndCheck(t, tt, n, set)
		if t.Failed() {
			t.Fatalf("after set %d", i)
		}
	}
	// An origin change alone is written too.
	s := mixedSet("169.254.0.0/16")
	s[netip.MustParsePrefix("169.254.0.0/16")] = Configured
	applyAndCheck(t, tt, n, s)
	applyAndCheck(t, tt, n, mixedSet())
	applyAndCheck(t, tt, n, s)
	if n.oneByOne {
		// Not a failure: older kernels have no batch operations on tries.
		t.Log("this kernel refused batch operations on LPM tries: written one prefix at a time")
	}
}

// TestNonMasqBatchRefused plays a kernel without batch operations on LPM
// tries (before they had them): the first refusal switches to one system
// call per prefix for good, and the result is the same.
func TestNonMasqBatchRefused(t *testing.T) {
	for _, refusal := range []error{
		fmt.Errorf("batch update: %w", ebpf.ErrNotSupported),
		fmt.Errorf("batch update: %w", unix.EINVAL),
	} {
		t.Run(refusal.Error(), func(t *testing.T) {
			tt := newTestTries(t)
			n := tt.open(t)
			calls := 0
			n.batchUpdate = func(*ebpf.Map, any, any) (int, error) { calls++; return 0, refusal }
			n.batchDelete = func(*ebpf.Map, any) (int, error) { calls++; return 0, refusal }
			applyAndCheck(t, tt, n, manySet(0, 500))
			if !n.oneByOne || calls != 1 {
				t.Fatalf("after a refused batch: oneByOne %v, %d batch calls; want true, 1", n.oneByOne, calls)
			}
			applyAndCheck(t, tt, n, mixedSet("10.0.0.0/8", "fd00::/8"))
			applyAndCheck(t, tt, n, manySet(100, 500)) // deletes and writes one by one
			applyAndCheck(t, tt, n, mixedSet())
			if calls != 1 {
				t.Errorf("batch operations tried %d times, want once", calls)
			}
		})
	}
}

// TestNonMasqRestart: an agent restarted on pinned tries does not know what
// they hold; it reads the idle pair back before its first write.
func TestNonMasqRestart(t *testing.T) {
	tt := newTestTries(t)
	first := tt.open(t)
	applyAndCheck(t, tt, first, manySet(0, 200))
	applyAndCheck(t, tt, first, mixedSet("10.0.0.0/8", "fd00::/8"))
	applyAndCheck(t, tt, first, manySet(50, 200))

	second := tt.open(t)
	applyAndCheck(t, tt, second, mixedSet("192.168.0.0/16")) // the pair held mixedSet(...)
	applyAndCheck(t, tt, second, manySet(300, 10))           // the pair held manySet(50, 200)
}

// TestNonMasqForget: a trie changed behind the agent's back is repaired by
// the next Apply after Forget, and a prefix already gone from where the
// record says it is does not fail the write.
func TestNonMasqForget(t *testing.T) {
	tt := newTestTries(t)
	n := tt.open(t)
	applyAndCheck(t, tt, n, manySet(0, 100))
	applyAndCheck(t, tt, n, manySet(0, 50))
	idle := 1 - n.settings.ActiveCIDRs()

	// Someone deletes a prefix the record says is there: the batch delete
	// stops at it, the rest goes one by one.
	gone := cidrKey4(netip.MustParsePrefix("10.0.90.0/24"))
	if err := tt.tries4[idle].Delete(&gone); err != nil {
		t.Fatal(err)
	}
	applyAndCheck(t, tt, n, manySet(200, 10))
	if n.oneByOne {
		t.Error("a missing key switched batches off")
	}

	// Someone adds a prefix the record does not know: only a Forget
	// finds it.
	idle = 1 - n.settings.ActiveCIDRs()
	stray := cidrKey4(netip.MustParsePrefix("198.51.100.0/24"))
	if err := tt.tries4[idle].Put(&stray, &loader.BPFIpmCidrValue{Origin: Configured}); err != nil {
		t.Fatal(err)
	}
	n.Forget()
	applyAndCheck(t, tt, n, manySet(0, 50))
}

// TestNonMasqRetireGrace: a pair that just stopped deciding is not written
// until retireGrace has passed.
func TestNonMasqRetireGrace(t *testing.T) {
	tt := newTestTries(t)
	n := tt.open(t)
	if err := n.Apply(manySet(0, 10)); err != nil {
		t.Fatal(err)
	}
	flipped := time.Now()
	if err := n.Apply(manySet(0, 20)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(flipped); d < retireGrace {
		t.Errorf("second Apply returned %v after the first flip, want at least %v", d, retireGrace)
	}
}

func BenchmarkApply10k(b *testing.B) {
	small := mixedSet("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
	many := manySet(0, 10000)
	for _, mode := range []string{"batch, known", "batch, known, with the /24 table", "one by one, read back"} {
		b.Run(mode, func(b *testing.B) {
			tt := newTestTries(b)
			n := tt.open(b)
			if mode == "batch, known, with the /24 table" {
				spec, err := loader.LoadBPF()
				if err != nil {
					b.Fatal(err)
				}
				n.dir.m = newTestMap(b, spec, loader.BPFMapIpmCidr4Dir)
			}
			for b.Loop() {
				b.StopTimer()
				// Both pairs small, as the bench's apply phase leaves them.
				for range 2 {
					n.retired = time.Time{}
					if err := n.Apply(small); err != nil {
						b.Fatal(err)
					}
				}
				n.retired = time.Time{}
				if mode == "one by one, read back" {
					n.oneByOne = true
					n.Forget()
				}
				b.StartTimer()
				if err := n.Apply(many); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
