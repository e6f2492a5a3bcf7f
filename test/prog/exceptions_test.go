package prog

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// applyWithExceptions makes nonMasq (plus link-local) and the masquerade
// exceptions the active set, as the agent's config sync does.
func (e *env) applyWithExceptions(t testing.TB, nonMasq, exceptions []netip.Prefix) maps.CIDRSet {
	t.Helper()
	effective := append(slices.Clone(nonMasq), linkLocal)
	set := maps.NewCIDRSet(nonMasq, effective).WithExceptions(exceptions)
	if err := e.nonMasq.Apply(set); err != nil {
		t.Fatal(err)
	}
	return set
}

// TestMasqueradeExceptionDecision: with non-masquerade prefixes and
// masquerade exceptions of every length from /14 to /32, nested both ways
// and crowding a few /16s, the datapath's decision (the /24 table, and the
// trie where the table sends it) is the longest matching prefix's.
func TestMasqueradeExceptionDecision(t *testing.T) {
	c := crowded{rand.New(rand.NewPCG(9, 13))}
	seen := map[netip.Prefix]bool{}
	var nonMasq, exceptions, all []netip.Prefix
	for len(all) < 300 {
		p := c.prefix()
		if seen[p] {
			continue
		}
		seen[p] = true
		all = append(all, p)
		if c.rng.IntN(3) == 0 {
			exceptions = append(exceptions, p)
		} else {
			nonMasq = append(nonMasq, p)
		}
	}
	e := newEnv(t, config{nonMasq: []netip.Prefix{}})
	set := e.applyWithExceptions(t, nonMasq, exceptions)
	var masq, not int
	for i := 0; i < 400; i++ {
		dst := c.probe(i, all)
		by, masquerade, _ := set.Decide(dst)
		want := "egress_nomasq"
		if masquerade {
			want = "egress_new_flow"
			masq++
		} else {
			not++
		}
		t.Run(fmt.Sprintf("%s by %s", dst, by), func(t *testing.T) {
			e.requirePassCounted(t, udpPkt(podA, uint16(20000+i), dst, 53).frame(t), want)
		})
	}
	if masq < 50 || not < 50 {
		t.Fatalf("the probes must exercise both verdicts: %d masqueraded, %d not", masq, not)
	}
}

// TestMasqueradeExceptionInsideNonMasqueradeRange: a partner network inside
// 10.0.0.0/8 is masqueraded, its neighbours are not; an exception inside
// link-local too; and the verdict follows the config from one Apply to the
// next.
func TestMasqueradeExceptionInsideNonMasqueradeRange(t *testing.T) {
	p := netip.MustParsePrefix
	e := newEnv(t, config{})
	e.applyWithExceptions(t, defaultNonMasq, []netip.Prefix{p("10.20.0.0/16"), p("10.30.1.0/24"), p("10.40.1.128/25"), p("169.254.169.254/32")})
	for i, tc := range []struct {
		dst  string
		masq bool
	}{
		{"10.20.0.1", true},       // a /16 exception: the table answers
		{"10.20.255.254", true},   // its last address
		{"10.21.0.1", false},      // the next /16
		{"10.30.1.77", true},      // a /24 exception
		{"10.30.2.1", false},      // its neighbour /24
		{"10.40.1.200", true},     // a /25 exception: the trie answers
		{"10.40.1.100", false},    // the other half of the /24
		{"169.254.169.254", true}, // inside link-local
		{"169.254.169.253", false},
		{"192.168.1.1", false},
		{"203.0.113.10", true},
	} {
		t.Run(tc.dst, func(t *testing.T) {
			pk := tcpPkt(podA, uint16(41000+i), netip.MustParseAddr(tc.dst), 443, "S")
			if tc.masq {
				e.masquerade(t, pk)
				return
			}
			e.requirePassed(t, false, pk.frame(t), "egress_nomasq")
		})
	}
	// Live: the exception goes, the same destination keeps the pod
	// address for a new flow.
	e.applyWithExceptions(t, defaultNonMasq, nil)
	pk := tcpPkt(podA, 42000, netip.MustParseAddr("10.20.0.1"), 443, "S")
	before := e.readCounters(t)
	r := e.egress(t, pk.frame(t))
	requireUnchanged(t, r.out, pk.frame(t))
	e.expectCounters(t, before, map[string]uint64{"egress_nomasq": 1})
}

// TestMasqueradeExceptionIPv6: the trie carries the verdict for IPv6 too.
func TestMasqueradeExceptionIPv6(t *testing.T) {
	p := netip.MustParsePrefix
	e := newEnv6(t, config6{})
	effective := append(slices.Clone(defaultNonMasq), nonMasq6...)
	effective = append(effective, linkLocal, linkLocal6)
	set := maps.NewCIDRSet(append(slices.Clone(defaultNonMasq), nonMasq6...), effective).
		WithExceptions([]netip.Prefix{p("fd00:99::/32")})
	if err := e.nonMasq.Apply(set); err != nil {
		t.Fatal(err)
	}
	e.masquerade6(t, udp6(pod6A, 40000, netip.MustParseAddr("fd00:99::5"), 53))
	pk := udp6(pod6A, 40001, netip.MustParseAddr("fd00:98::5"), 53)
	before := e.readCounters(t)
	e.passUnchanged(t, false, pk.frame(t))
	e.expectCounters(t, before, map[string]uint64{"egress_nomasq": 1})
}
