package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// The order decides which addresses are left out when the map is full: the
// masquerade address, then the managed interfaces', then the other
// interfaces with the fewest addresses first.
func TestRankLocalAddrs(t *testing.T) {
	a := netip.MustParseAddr
	la := func(s string, ifindex int) maps.LocalAddr { return maps.LocalAddr{Addr: a(s), Ifindex: ifindex} }
	const lo, eth0, cni0, ipvs = 1, 2, 3, 4
	in := []maps.LocalAddr{
		la("10.96.0.2", ipvs), la("10.96.0.1", ipvs), la("10.96.0.3", ipvs),
		la("127.0.0.1", lo),
		la("10.244.1.1", cni0), la("fd00::1", cni0),
		la("172.31.0.9", eth0), la("172.31.0.2", eth0),
	}
	got := rankLocalAddrs(in, map[int]bool{eth0: true}, []netip.Addr{a("172.31.0.2"), {}})
	want := []maps.LocalAddr{
		la("172.31.0.2", eth0), la("172.31.0.9", eth0),
		la("127.0.0.1", lo),
		la("10.244.1.1", cni0), la("fd00::1", cni0),
		la("10.96.0.1", ipvs), la("10.96.0.2", ipvs), la("10.96.0.3", ipvs),
	}
	if !slices.Equal(got, want) {
		t.Errorf("rank:\n got %v\nwant %v", got, want)
	}
}
