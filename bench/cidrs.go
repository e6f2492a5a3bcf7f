package main

import (
	"math/rand/v2"
	"net/netip"
)

// Addresses of the bench topology (topo.go) and of the crafted packets.
var (
	podIP     = netip.MustParseAddr("10.244.1.2")
	cniIP     = netip.MustParseAddr("10.244.1.1")
	nodeIP    = netip.MustParseAddr("172.31.0.2")
	peerIP    = netip.MustParseAddr("172.31.0.1")   // the remote host's side of the node's uplink
	serverIP  = netip.MustParseAddr("203.0.113.10") // outside every non-masquerade CIDR
	defaultNM = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}
	linkLocal = netip.MustParsePrefix("169.254.0.0/16")
	// sentinelNet holds the one prefix per applied config that tells it apart
	// from every other (cidrs never contains anything in it).
	sentinelNet = netip.MustParsePrefix("100.64.0.0/10")
)

// reserved are ranges the generated CIDRs stay out of: the defaults, the
// topology, the sentinels, and what is not unicast.
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	linkLocal,
	sentinelNet,
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// cidrs returns n non-masquerade CIDRs: upstream's three defaults, then
// n-3 distinct prefixes of /16 to /28 spread over the unicast space
// (deterministic for a seed). Destinations the bench masquerades
// (203.0.113.10) are in none of them.
func cidrs(n int, seed uint64) []netip.Prefix {
	out := append([]netip.Prefix(nil), defaultNM...)
	if n <= len(out) {
		return out[:n]
	}
	rng := rand.New(rand.NewPCG(seed, 0x1b3))
	seen := map[netip.Prefix]bool{}
	for len(out) < n {
		bits := 16 + rng.IntN(13)
		v := rng.Uint32()
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		p := netip.PrefixFrom(a, bits).Masked()
		if seen[p] || overlapsAny(p, reserved) {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	return out
}

func overlapsAny(p netip.Prefix, set []netip.Prefix) bool {
	for _, q := range set {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// sentinel is the prefix that marks the i-th applied config.
func sentinel(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + (i>>8)&63), byte(i), 0}), 24)
}
