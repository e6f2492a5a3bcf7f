package maps

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// With masquerade exceptions the longest matching prefix decides; wherever
// the /24 table answers itself it must agree with that, and it must answer
// itself for every /24 one prefix of /24 or shorter decides alone.
func TestDirBlocksLongestPrefixWithExceptions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for round := 0; round < 8; round++ {
		set, list := randomSet(rng, 300, 3, func() Origin {
			if rng.IntN(3) == 0 {
				return Masquerade
			}
			return Configured
		})
		blocks := dirBlocks(set)
		for i := 0; i < 5000; i++ {
			a := probe(rng, list, i, 4)
			_, masq, _ := set.Decide(a)
			switch v := dirVerdict(blocks, a); v {
			case blockNoMasq:
				if masq {
					t.Fatalf("%s: table says non-masquerade, the longest prefix says masquerade", a)
				}
			case blockMasq:
				if !masq {
					t.Fatalf("%s: table says masquerade, the longest prefix says not", a)
				}
			case blockTrie:
				// The trie decides; it must be needed: some address of
				// the /24 decides otherwise than another.
				if uniform24(set, a) {
					t.Fatalf("%s: table asks the trie for a /24 that one verdict covers", a)
				}
			default:
				t.Fatalf("%s: verdict %d", a, v)
			}
		}
	}
}

// uniform24 reports whether every address of a's /24 gets the same verdict.
func uniform24(set CIDRSet, a netip.Addr) bool {
	base := be(a) &^ 0xff
	_, first, _ := set.Decide(addr4(base))
	for i := uint32(1); i < 256; i++ {
		if _, m, _ := set.Decide(addr4(base | i)); m != first {
			return false
		}
	}
	return true
}

func TestDirBlocksExceptionCases(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	set := CIDRSet{
		p("10.0.0.0/8"):      Configured,
		p("10.1.0.0/16"):     Masquerade, // a /16 exception: whole blocks
		p("10.1.5.0/24"):     Configured, // non-masquerade again inside it
		p("10.3.0.0/16"):     Masquerade, // nothing inside: no block stored
		p("10.2.3.0/24"):     Masquerade, // one /24
		p("10.2.4.0/26"):     Masquerade, // part of a /24: the trie
		p("10.2.5.0/26"):     Configured, // same verdict as its cover: no trie needed
		p("169.254.0.0/16"):  LinkLocal,
		p("169.254.9.9/32"):  Masquerade, // an exception inside link-local
		p("192.168.0.0/24"):  Masquerade, // an exception without cover: masqueraded anyway
		p("192.168.0.16/28"): Configured,
	}
	blocks := dirBlocks(set)
	for _, tc := range []struct {
		addr string
		want uint8
	}{
		{"10.0.0.1", blockNoMasq},
		{"10.1.0.1", blockMasq},
		{"10.1.255.1", blockMasq},
		{"10.1.5.7", blockNoMasq},
		{"10.2.3.9", blockMasq},
		{"10.2.2.9", blockNoMasq},
		{"10.2.4.1", blockTrie},
		{"10.2.4.200", blockTrie},
		{"10.2.5.1", blockNoMasq},
		{"169.254.9.1", blockTrie},
		{"169.254.10.1", blockNoMasq},
		{"192.168.0.1", blockTrie},
		{"192.168.1.1", blockMasq},
		{"11.0.0.1", blockMasq},
	} {
		if got := dirVerdict(blocks, a(tc.addr)); got != tc.want {
			t.Errorf("%s: verdict %d, want %d", tc.addr, got, tc.want)
		}
	}
	if _, ok := blocks[0x0a03]; ok {
		t.Errorf("10.3.0.0/16 is masqueraded throughout, yet its block is stored")
	}
}

func TestDecide(t *testing.T) {
	p := netip.MustParsePrefix
	set := CIDRSet{p("10.0.0.0/8"): Configured, p("10.1.0.0/16"): Masquerade, p("fd00::/8"): Configured, p("fd00:1::/64"): Masquerade}
	for _, tc := range []struct {
		addr       string
		prefix     string
		masquerade bool
		ok         bool
	}{
		{"10.2.0.1", "10.0.0.0/8", false, true},
		{"10.1.0.1", "10.1.0.0/16", true, true},
		{"11.0.0.1", "invalid Prefix", true, false},
		{"fd00:1::1", "fd00:1::/64", true, true},
		{"fd00:2::1", "fd00::/8", false, true},
	} {
		got, masq, ok := set.Decide(netip.MustParseAddr(tc.addr))
		if got.String() != tc.prefix || masq != tc.masquerade || ok != tc.ok {
			t.Errorf("Decide(%s) = %s, %t, %t; want %s, %t, %t", tc.addr, got, masq, ok, tc.prefix, tc.masquerade, tc.ok)
		}
	}
}

func TestWithExceptions(t *testing.T) {
	p := netip.MustParsePrefix
	set := NewCIDRSet([]netip.Prefix{p("10.0.0.0/8")}, []netip.Prefix{p("10.0.0.0/8"), p("169.254.0.0/16")}).
		WithExceptions([]netip.Prefix{p("10.1.0.0/16"), p("169.254.169.254/32")})
	want := CIDRSet{p("10.0.0.0/8"): Configured, p("169.254.0.0/16"): LinkLocal, p("10.1.0.0/16"): Masquerade, p("169.254.169.254/32"): Masquerade}
	if len(set) != len(want) {
		t.Fatalf("got %v, want %v", set, want)
	}
	for k, v := range want {
		if set[k] != v {
			t.Errorf("%s: origin %d, want %d", k, set[k], v)
		}
	}
}
