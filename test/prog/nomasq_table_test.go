package prog

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestNonMasqueradeDecision: with prefixes of every length from /8 to /32,
// nested and sharing /24s, the datapath's decision (the /24 table, and the
// trie where the table sends it) agrees with prefix containment for
// addresses inside, next to and outside them.
func TestNonMasqueradeDecision(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	var set []netip.Prefix
	addr := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	// Everything inside 100.0.0.0/8 and 198.0.0.0/8, away from the test's
	// own addresses, so prefixes nest and crowd a few /16s.
	base := func() uint32 { return []uint32{100 << 24, 198 << 24}[rng.IntN(2)] | rng.Uint32()&0x00ffffff }
	for len(set) < 300 {
		set = append(set, netip.PrefixFrom(addr(base()), 14+rng.IntN(19)).Masked())
	}
	e := newEnv(t, config{nonMasq: set})
	contains := func(a netip.Addr) bool {
		for _, p := range set {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	var in, out int
	for i := 0; i < 400; i++ {
		dst := addr(base())
		if i%2 == 0 {
			// Right at, or just past, the edge of a listed prefix.
			p := set[rng.IntN(len(set))]
			a4 := p.Addr().As4()
			v := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
			dst = addr(v + uint32(1)<<(32-p.Bits()) - uint32(rng.IntN(2)))
		}
		want := "egress_new_flow"
		if contains(dst) {
			want = "egress_nomasq"
			in++
		} else {
			out++
		}
		t.Run(fmt.Sprintf("%s", dst), func(t *testing.T) {
			before := e.readCounters(t)
			r := e.egress(t, udpPkt(podA, uint16(20000+i), dst, 53).frame(t))
			requireVerdict(t, r, actPass)
			e.expectCounters(t, before, map[string]uint64{want: 1})
		})
	}
	t.Logf("%d destinations inside the set, %d outside", in, out)
	if in < 50 || out < 50 {
		t.Fatalf("the probes must exercise both verdicts")
	}
}
