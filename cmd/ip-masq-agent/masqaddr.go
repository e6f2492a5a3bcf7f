package main

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
)

// masqueradeAddresses applies --masquerade-address: per interface and
// family, the chosen address replaces the primary one while it is on the
// interface; while it is not, the family has no address there, so new flows
// of it through the interface are dropped (egress_no_iface), never sent with
// another address. It remembers which are missing to log each change once.
type masqueradeAddresses struct {
	chosen  map[string][]netip.Addr
	missing map[netip.Addr]bool
	// report, when set, is told whether each chosen address is missing
	// (metrics).
	report func(iface string, addr netip.Addr, missing bool)
}

func newMasqueradeAddresses(list []config.MasqueradeAddress) *masqueradeAddresses {
	m := &masqueradeAddresses{chosen: map[string][]netip.Addr{}, missing: map[netip.Addr]bool{}}
	for _, a := range list {
		m.chosen[a.Interface] = append(m.chosen[a.Interface], a.Addr)
	}
	return m
}

// pick returns the addresses l's masqueraded traffic leaves with: the
// chosen ones where given (zero while missing), else primary4 and primary6.
func (m *masqueradeAddresses) pick(l netlink.Link, primary4, primary6 netip.Addr) (netip.Addr, netip.Addr) {
	name := l.Attrs().Name
	for _, want := range m.chosen[name] {
		present := onLink(l, want)
		if present {
			want4or6(want, &primary4, &primary6, want)
		} else {
			want4or6(want, &primary4, &primary6, netip.Addr{})
		}
		if was, seen := m.missing[want]; !seen || was == present {
			if present {
				klog.InfoS("Masquerading to the chosen address", "interface", name, "address", want)
			} else {
				klog.ErrorS(nil, "Chosen masquerade address is not on the interface: new flows of its family through it are dropped until it is",
					"interface", name, "address", want)
			}
		}
		m.missing[want] = !present
		if m.report != nil {
			m.report(name, want, !present)
		}
	}
	return primary4, primary6
}

// want4or6 stores v into the slot of a's family.
func want4or6(a netip.Addr, v4, v6 *netip.Addr, v netip.Addr) {
	if a.Is4() {
		*v4 = v
	} else {
		*v6 = v
	}
}

// onLink reports whether a is an address of l that is usable as a source:
// global scope, not tentative or failed duplicate detection.
func onLink(l netlink.Link, a netip.Addr) bool {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(l, family)
	if err != nil {
		return false
	}
	for _, x := range addrs {
		ip, ok := netip.AddrFromSlice(x.IP)
		if ok && ip.Unmap() == a && x.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
			return true
		}
	}
	return false
}
