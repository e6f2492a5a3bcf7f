package prog

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// crowded draws the IPv4 addresses and prefixes of the decision tests:
// everything inside 100.0.0.0/8 and 198.0.0.0/8, away from the tests' own
// addresses, so that prefixes nest and crowd a few /16s.
type crowded struct{ rng *rand.Rand }

func (c crowded) addr() netip.Addr {
	v := []uint32{100 << 24, 198 << 24}[c.rng.IntN(2)] | c.rng.Uint32()&0x00ffffff
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// prefix is a prefix of /14 to /32.
func (c crowded) prefix() netip.Prefix { return netip.PrefixFrom(c.addr(), 14+c.rng.IntN(19)).Masked() }

// probe is the i-th destination to ask about: every other one right at, or
// just past, the edge of a prefix of list.
func (c crowded) probe(i int, list []netip.Prefix) netip.Addr {
	dst := c.addr()
	if i%2 == 0 {
		p := list[c.rng.IntN(len(list))]
		a4 := p.Addr().As4()
		v := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
		v += uint32(1)<<(32-p.Bits()) - uint32(c.rng.IntN(2))
		dst = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return dst
}

// TestNonMasqueradeDecision: with prefixes of every length from /8 to /32,
// nested and sharing /24s, the datapath's decision (the /24 table, and the
// trie where the table sends it) agrees with prefix containment for
// addresses inside, next to and outside them.
func TestNonMasqueradeDecision(t *testing.T) {
	c := crowded{rand.New(rand.NewPCG(3, 5))}
	var set []netip.Prefix
	for len(set) < 300 {
		set = append(set, c.prefix())
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
		dst := c.probe(i, set)
		want := "egress_new_flow"
		if contains(dst) {
			want = "egress_nomasq"
			in++
		} else {
			out++
		}
		t.Run(fmt.Sprintf("%s", dst), func(t *testing.T) {
			e.requirePassCounted(t, udpPkt(podA, uint16(20000+i), dst, 53).frame(t), want)
		})
	}
	t.Logf("%d destinations inside the set, %d outside", in, out)
	if in < 50 || out < 50 {
		t.Fatalf("the probes must exercise both verdicts")
	}
}
