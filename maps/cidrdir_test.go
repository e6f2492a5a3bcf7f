package maps

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// randomSet draws n IPv4 prefixes of /8 to /32 clustered in the first nets
// /8s, so that they nest and share /24s; origin gives each its origin.
func randomSet(rng *rand.Rand, n, nets int, origin func() Origin) (CIDRSet, []netip.Prefix) {
	set := CIDRSet{}
	var list []netip.Prefix
	for i := 0; i < n; i++ {
		v := uint32(rng.IntN(nets))<<24 | rng.Uint32()&0x00ffffff
		p := netip.PrefixFrom(addr4(v), 8+rng.IntN(25)).Masked()
		set[p] = origin()
		list = append(list, p)
	}
	return set, list
}

// probe draws the i-th address to ask the table about, in the first nets
// /8s: every other one next to a prefix of list.
func probe(rng *rand.Rand, list []netip.Prefix, i, nets int) netip.Addr {
	a := addr4(uint32(rng.IntN(nets))<<24 | rng.Uint32()&0x00ffffff)
	if i%2 == 0 {
		p := list[rng.IntN(len(list))]
		a = addr4(be(p.Addr()) ^ rng.Uint32()&0x3ff)
	}
	return a
}

// The table must agree with prefix containment wherever it answers itself,
// and send an address to the trie only when a prefix longer than /24 shares
// its /24 and none of /24 or shorter covers it.
func TestDirBlocksAgreeWithContainment(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for round := 0; round < 8; round++ {
		set, list := randomSet(rng, 200, 4, func() Origin { return Configured })
		set[netip.MustParsePrefix("fd00::/8")] = Configured // ignored: IPv6
		blocks := dirBlocks(set)
		for i := 0; i < 5000; i++ {
			a := probe(rng, list, i, 5)
			in, longOnly := false, false
			covered := false
			for _, p := range list {
				if p.Contains(a) {
					in = true
				}
				if p.Bits() <= 24 && p.Contains(a) {
					covered = true
				}
				if p.Bits() > 24 && netip.PrefixFrom(a, 24).Masked().Contains(p.Addr()) {
					longOnly = true
				}
			}
			switch v := dirVerdict(blocks, a); v {
			case blockNoMasq:
				if !in || !covered {
					t.Fatalf("%s: table says non-masquerade, prefixes say in=%v covered=%v", a, in, covered)
				}
			case blockMasq:
				if in || longOnly {
					t.Fatalf("%s: table says masquerade, prefixes say in=%v longer prefix in its /24=%v", a, in, longOnly)
				}
			case blockTrie:
				if covered || !longOnly {
					t.Fatalf("%s: table asks the trie, prefixes say covered=%v longer prefix in its /24=%v", a, covered, longOnly)
				}
			default:
				t.Fatalf("%s: verdict %d", a, v)
			}
		}
	}
}

func TestDirBlocksShortPrefixes(t *testing.T) {
	blocks := dirBlocks(CIDRSet{netip.MustParsePrefix("10.0.0.0/8"): Configured, netip.MustParsePrefix("0.0.0.0/0"): Configured})
	if len(blocks) != dirHalf {
		t.Fatalf("0.0.0.0/0 fills %d entries, want every one of %d", len(blocks), dirHalf)
	}
	for _, s := range []string{"0.0.0.0", "10.1.2.3", "255.255.255.255", "203.0.113.10"} {
		if v := dirVerdict(blocks, netip.MustParseAddr(s)); v != blockNoMasq {
			t.Errorf("%s: verdict %d under 0.0.0.0/0", s, v)
		}
	}
	empty := dirBlocks(CIDRSet{})
	if len(empty) != 0 || dirVerdict(empty, netip.MustParseAddr("10.1.2.3")) != blockMasq {
		t.Errorf("an empty set must leave every block masqueraded")
	}
}

func be(a netip.Addr) uint32 { return addrUint32(a) }

// markMapped: only /24s the active half settled as non-masquerade stay so;
// every other covered /24 may hold mappings, and with no active half known,
// all of them may.
func TestMarkMapped(t *testing.T) {
	set := CIDRSet{netip.MustParsePrefix("10.1.0.0/23"): Configured, netip.MustParsePrefix("10.1.2.0/28"): Configured}
	active := dirBlocks(CIDRSet{netip.MustParsePrefix("10.1.1.0/24"): Configured})
	want := dirBlocks(set)
	markMapped(want, active)
	for a, v := range map[string]uint8{"10.1.0.1": blockNoMasqMapped, "10.1.1.1": blockNoMasq, "10.1.2.1": blockTrie, "10.1.3.1": blockMasq} {
		if got := dirVerdict(want, netip.MustParseAddr(a)); got != v {
			t.Errorf("%s: %d, want %d", a, got, v)
		}
	}
	unknown := dirBlocks(set)
	markMapped(unknown, nil)
	for a, v := range map[string]uint8{"10.1.0.1": blockNoMasqMapped, "10.1.1.1": blockNoMasqMapped, "10.1.2.1": blockTrie} {
		if got := dirVerdict(unknown, netip.MustParseAddr(a)); got != v {
			t.Errorf("active unknown, %s: %d, want %d", a, got, v)
		}
	}
}
