package maps

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Interfaces is ipm_ifaces: the managed interfaces and the address their
// masqueraded traffic leaves with.
type Interfaces struct{ m *ebpf.Map }

func NewInterfaces(d *loader.Datapath) *Interfaces { return &Interfaces{m: d.Maps.IpmIfaces} }

// Set records the masquerade addresses of an interface, IPv4 and IPv6; an
// invalid address means it has none of that family yet (new flows of that
// family through it are then dropped, never leaked).
func (i *Interfaces) Set(ifindex int, addr4, addr6 netip.Addr) error {
	v := loader.BPFIpmIface{}
	if addr4.Is4() {
		v.Addr4 = AddrToBE(addr4)
	}
	if addr6.Is6() && !addr6.Is4In6() {
		v.Addr6 = addr6ToBE(addr6)
	}
	if err := i.m.Put(uint32(ifindex), &v); err != nil {
		return fmt.Errorf("write interface %d: %w", ifindex, err)
	}
	return nil
}

// IfaceAddrs reads the masquerade addresses of an ipm_ifaces value; an
// address the interface does not have is the zero netip.Addr.
func IfaceAddrs(v loader.BPFIpmIface) (v4, v6 netip.Addr) {
	if v.Addr4 != 0 {
		v4 = AddrFromBE(v.Addr4)
	}
	if v.Addr6 != [4]uint32{} {
		v6 = addr6FromBE(v.Addr6)
	}
	return v4, v6
}

// Retain removes every interface not in keep.
func (i *Interfaces) Retain(keep map[int]bool) error {
	var k uint32
	var v loader.BPFIpmIface
	var stale []uint32
	it := i.m.Iterate()
	for it.Next(&k, &v) {
		if !keep[int(k)] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read interfaces: %w", err)
	}
	for _, k := range stale {
		i.m.Delete(k)
	}
	return nil
}
