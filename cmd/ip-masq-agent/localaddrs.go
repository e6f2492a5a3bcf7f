package main

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// syncLocal writes the node's addresses to the datapath, those the uplinks
// need first, and reports the ones that did not fit: never an error, since
// an agent that stopped over them would masquerade nothing at all
// (docs/behaviour.md §8.1). The error is for a map that cannot be written.
func (s *interfaceSet) syncLocal(managed map[int]bool, first []netip.Addr) error {
	addrs, err := localAddrs()
	if err != nil {
		return err
	}
	res, err := s.local.Sync(rankLocalAddrs(addrs, managed, first))
	s.reportLocal(res)
	return err
}

// localAddrs lists every address of the node, both families.
func localAddrs() ([]maps.LocalAddr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := make([]maps.LocalAddr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, maps.LocalAddr{Addr: ip.Unmap(), Ifindex: a.LinkIndex})
		}
	}
	return out, nil
}

// rankLocalAddrs orders the node's addresses by how much the datapath needs
// them, for when they do not all fit: the masquerade addresses (first),
// then every other address of the managed interfaces, whose host traffic
// must never be masqueraded; then the other interfaces', those with fewer
// addresses first, so one interface with thousands (kube-ipvs0) cannot
// push out the few of the others. Within that, by interface index and
// address, so the same ones are kept at every sync and none flaps.
func rankLocalAddrs(addrs []maps.LocalAddr, managed map[int]bool, first []netip.Addr) []maps.LocalAddr {
	isFirst := map[netip.Addr]bool{}
	for _, a := range first {
		if a.IsValid() {
			isFirst[a] = true
		}
	}
	perIface := map[int]int{}
	for _, a := range addrs {
		perIface[a.Ifindex]++
	}
	rank := func(a maps.LocalAddr) int {
		switch {
		case isFirst[a.Addr]:
			return 0
		case managed[a.Ifindex]:
			return 1
		}
		return 2
	}
	out := slices.Clone(addrs)
	slices.SortStableFunc(out, func(a, b maps.LocalAddr) int {
		ra, rb := rank(a), rank(b)
		if c := cmp.Compare(ra, rb); c != 0 {
			return c
		}
		if ra == 2 {
			if c := cmp.Compare(perIface[a.Ifindex], perIface[b.Ifindex]); c != 0 {
				return c
			}
		}
		if c := cmp.Compare(a.Ifindex, b.Ifindex); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
	return out
}

// reportLocal logs a change in how many node addresses did not fit, once
// per change, and sets the metrics.
func (s *interfaceSet) reportLocal(res maps.LocalStored) {
	dropped := [2]int{res.Dropped4(), res.Dropped6()}
	stored := [2]int{res.Stored4, res.Stored6}
	if s.localReport != nil {
		s.localReport(stored, dropped)
	}
	for i, family := range []string{"ipv4", "ipv6"} {
		if dropped[i] == s.localDropped[i] {
			continue
		}
		s.localDropped[i] = dropped[i]
		if dropped[i] == 0 {
			klog.InfoS("Every node address fits the datapath again", "family", family, "stored", stored[i])
			continue
		}
		var example maps.LocalAddr
		for _, a := range res.Dropped {
			if a.Addr.Is4() == (i == 0) {
				example = a
				break
			}
		}
		name := fmt.Sprint(example.Ifindex)
		if l, err := netlink.LinkByIndex(example.Ifindex); err == nil {
			name = l.Attrs().Name
		}
		klog.ErrorS(nil, "More node addresses than the datapath holds: host traffic from those left out is masqueraded like a pod's (docs/behaviour.md §8.1)",
			"family", family, "stored", stored[i], "dropped", dropped[i], "firstDropped", example.Addr, "interface", name)
	}
}
