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

// Set records the masquerade address of an interface; an invalid addr means
// it has none yet (new flows through it are then dropped, never leaked).
func (i *Interfaces) Set(ifindex int, addr netip.Addr) error {
	v := loader.BPFIpmIface{}
	if addr.Is4() {
		v.Addr4 = addrToBE(addr)
	}
	if err := i.m.Put(uint32(ifindex), &v); err != nil {
		return fmt.Errorf("write interface %d: %w", ifindex, err)
	}
	return nil
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

// LocalAddrs is ipm_local4: every IPv4 address of the node, so the datapath
// recognises the host's own traffic.
type LocalAddrs struct{ m *ebpf.Map }

func NewLocalAddrs(d *loader.Datapath) *LocalAddrs { return &LocalAddrs{m: d.Maps.IpmLocal4} }

// Sync makes the map hold exactly addrs (address -> interface index).
func (l *LocalAddrs) Sync(addrs map[netip.Addr]int) error {
	var k uint32
	var v loader.BPFIpmLocal
	var stale []uint32
	it := l.m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := addrs[addrFromBE(k)]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read local addresses: %w", err)
	}
	for a, ifindex := range addrs {
		if !a.Is4() {
			continue
		}
		v := loader.BPFIpmLocal{Ifindex: uint32(ifindex)}
		if err := l.m.Put(addrToBE(a), &v); err != nil {
			return fmt.Errorf("write local address %s: %w", a, err)
		}
	}
	for _, k := range stale {
		l.m.Delete(k)
	}
	return nil
}
