package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// IsLocal reports whether the datapath counts a as an address of the node
// (ipm_local4/ipm_local6), read-only.
func (l *LocalAddrs) IsLocal(a netip.Addr) (bool, error) {
	var v loader.BPFIpmLocal
	var err error
	if a.Is4() {
		err = l.m4.Lookup(AddrToBE(a), &v)
	} else {
		err = l.m6.Lookup(loader.BPFIpmAddr6{Addr: addr6ToBE(a)}, &v)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up local address %s: %w", a, err)
	}
	return true, nil
}

// Get reads the masquerade addresses of a managed interface; ok is false
// when the datapath does not manage it.
func (i *Interfaces) Get(ifindex int) (v4, v6 netip.Addr, ok bool, err error) {
	var v loader.BPFIpmIface
	err = i.m.Lookup(uint32(ifindex), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.Addr{}, netip.Addr{}, false, nil
	}
	if err != nil {
		return netip.Addr{}, netip.Addr{}, false, fmt.Errorf("look up interface %d: %w", ifindex, err)
	}
	v4, v6 = IfaceAddrs(v)
	return v4, v6, true, nil
}

// IPv6Enabled reports whether the datapath masquerades IPv6.
func (s *Settings) IPv6Enabled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.val.EnableIpv6 != 0
}
