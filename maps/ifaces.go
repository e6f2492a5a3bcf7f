package maps

import (
	"fmt"
	"net/netip"
	"slices"

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
		v.Addr4 = addrToBE(addr4)
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
		v4 = addrFromBE(v.Addr4)
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

// LocalAddrs is ipm_local4 and ipm_local6: every address of the node, so the
// datapath recognises the host's own traffic; a few IPv4 ones also inline in
// the settings (Settings.SetLocal4).
type LocalAddrs struct {
	m4, m6   *ebpf.Map
	settings *Settings
}

func NewLocalAddrs(d *loader.Datapath, s *Settings) *LocalAddrs {
	return &LocalAddrs{m4: d.Maps.IpmLocal4, m6: d.Maps.IpmLocal6, settings: s}
}

// Sync makes the maps hold exactly addrs (address -> interface index).
func (l *LocalAddrs) Sync(addrs map[netip.Addr]int) error {
	var k4 uint32
	var k6 loader.BPFIpmAddr6
	var v loader.BPFIpmLocal
	var stale4 []uint32
	var stale6 []loader.BPFIpmAddr6
	it := l.m4.Iterate()
	for it.Next(&k4, &v) {
		if _, ok := addrs[addrFromBE(k4)]; !ok {
			stale4 = append(stale4, k4)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read local IPv4 addresses: %w", err)
	}
	it = l.m6.Iterate()
	for it.Next(&k6, &v) {
		if _, ok := addrs[addr6FromBE(k6.Addr)]; !ok {
			stale6 = append(stale6, k6)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read local IPv6 addresses: %w", err)
	}
	for a, ifindex := range addrs {
		v := loader.BPFIpmLocal{Ifindex: uint32(ifindex)}
		var err error
		if a.Is4() {
			err = l.m4.Put(addrToBE(a), &v)
		} else {
			err = l.m6.Put(loader.BPFIpmAddr6{Addr: addr6ToBE(a)}, &v)
		}
		if err != nil {
			return fmt.Errorf("write local address %s: %w", a, err)
		}
	}
	// New addresses are in the map already, stale ones still are.
	var v4 []netip.Addr
	for a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		}
	}
	slices.SortFunc(v4, netip.Addr.Compare)
	if err := l.settings.SetLocal4(v4); err != nil {
		return err
	}
	for _, k := range stale4 {
		l.m4.Delete(k)
	}
	for _, k := range stale6 {
		l.m6.Delete(k)
	}
	return nil
}
