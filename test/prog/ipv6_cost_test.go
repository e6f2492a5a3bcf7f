package prog

import (
	"net/netip"
	"testing"
)

// The IPv6 counterparts of cost_test.go's established paths: two halves
// map A:p -> B:q and B:q -> A:p, so every repeat of a test run on the same
// buffer is a real translation of the 16-byte address and the port, and an
// even number of repeats gives the input back (measure checks it).
var (
	cost6A = netip.AddrPortFrom(pod6A, 40000)
	cost6B = netip.AddrPortFrom(netip.MustParseAddr("fd00:10:244:7::7"), 50000)
	cost6D = netip.AddrPortFrom(remote6, 443)
)

// TestIPv6EstablishedEgressCost: established-flow IPv6 egress, every repeat
// a real translation of the source address and port (docs/performance.md, docs/behaviour.md §5.7).
func TestIPv6EstablishedEgressCost(t *testing.T) {
	establishedCost(t, ipv6, true, cost6A, cost6B, cost6D)
}

// TestIPv6ReverseIngressCost: IPv6 reply ingress, every repeat a real
// translation of the destination address and port.
func TestIPv6ReverseIngressCost(t *testing.T) {
	establishedCost(t, ipv6, false, cost6A, cost6B, cost6D)
}
