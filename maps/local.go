package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

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

// LocalAddr is one address of the node and the interface that has it.
type LocalAddr struct {
	Addr    netip.Addr
	Ifindex int
}

// LocalStored is what a Sync left in the maps: how many addresses of each
// family they hold, and the addresses that did not fit, in the order given.
type LocalStored struct {
	Stored4, Stored6 int
	Dropped          []LocalAddr
}

// Dropped4 and Dropped6 count the addresses of each family that did not fit.
func (r LocalStored) Dropped4() int { return r.dropped(true) }
func (r LocalStored) Dropped6() int { return r.dropped(false) }

func (r LocalStored) dropped(v4 bool) int {
	n := 0
	for _, a := range r.Dropped {
		if a.Addr.Is4() == v4 {
			n++
		}
	}
	return n
}

// Sync makes the maps hold the addresses of addrs, in priority order: when
// a family has more than its map holds (a node with every ClusterIP on
// kube-ipvs0), the first ones are kept and the rest reported as dropped,
// never as an error, so that the caller can put the addresses its uplinks
// need first (docs/behaviour.md §8.1). An address listed twice counts once,
// with its first interface. The error is for a map that cannot be read or
// written at all; the sync still does what it can before returning it.
func (l *LocalAddrs) Sync(addrs []LocalAddr) (LocalStored, error) {
	var want4, want6 []LocalAddr
	seen := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		a.Addr = a.Addr.Unmap()
		if !a.Addr.IsValid() || seen[a.Addr] {
			continue
		}
		seen[a.Addr] = true
		if a.Addr.Is4() {
			want4 = append(want4, a)
		} else {
			want6 = append(want6, a)
		}
	}
	var res LocalStored
	stored4, err4 := syncLocal(l.m4, want4, addrKey4, &res)
	stored6, err6 := syncLocal(l.m6, want6, addrKey6, &res)
	res.Stored4, res.Stored6 = len(stored4), len(stored6)
	// The inline copy names only what ipm_local4 holds, so the two agree
	// on which addresses are the node's.
	slices.SortFunc(stored4, netip.Addr.Compare)
	err := errors.Join(err4, err6)
	if l.settings != nil {
		err = errors.Join(err, l.settings.SetLocal4(stored4))
	}
	return res, err
}

func addrKey4(a netip.Addr) any { return AddrToBE(a) }
func addrKey6(a netip.Addr) any { return loader.BPFIpmAddr6{Addr: addr6ToBE(a)} }

// syncLocal brings one family's map to the first want that fit and returns
// the addresses it holds. Stale entries go first, so that the room they
// free is there for the new ones; a stale address is not the node's any
// more, or did not make the cut, so nothing needs it meanwhile. Entries
// already right are not written again: a resync of 10,000 unchanged
// addresses costs one walk of the map.
func syncLocal(m *ebpf.Map, want []LocalAddr, key func(netip.Addr) any, res *LocalStored) ([]netip.Addr, error) {
	capacity := int(m.MaxEntries())
	if len(want) > capacity {
		res.Dropped = append(res.Dropped, want[capacity:]...)
		want = want[:capacity]
	}
	keep := make(map[netip.Addr]int, len(want))
	for _, a := range want {
		keep[a.Addr] = a.Ifindex
	}
	have, err := readLocal(m)
	if err != nil {
		return nil, err
	}
	var errs []error
	for a := range have {
		if _, ok := keep[a]; !ok {
			if err := m.Delete(key(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("remove local address %s: %w", a, err))
			}
		}
	}
	stored := make([]netip.Addr, 0, len(want))
	for _, a := range want {
		if idx, ok := have[a.Addr]; ok && idx == a.Ifindex {
			stored = append(stored, a.Addr)
			continue
		}
		err := m.Put(key(a.Addr), loader.BPFIpmLocal{Ifindex: uint32(a.Ifindex)})
		switch {
		case err == nil:
			stored = append(stored, a.Addr)
		case isFull(err):
			// Full, or the kernel found no memory for the element
			// (the map is not preallocated): the rest of the list
			// is less important than what is in.
			res.Dropped = append(res.Dropped, a)
		default:
			res.Dropped = append(res.Dropped, a)
			errs = append(errs, fmt.Errorf("write local address %s: %w", a.Addr, err))
		}
	}
	return stored, errors.Join(errs...)
}

// readLocal reads one family's map: address -> interface index.
func readLocal(m *ebpf.Map) (map[netip.Addr]int, error) {
	have := map[netip.Addr]int{}
	var v loader.BPFIpmLocal
	var err error
	if m.KeySize() == 4 {
		var k uint32
		it := m.Iterate()
		for it.Next(&k, &v) {
			have[AddrFromBE(k)] = int(v.Ifindex)
		}
		err = it.Err()
	} else {
		var k loader.BPFIpmAddr6
		it := m.Iterate()
		for it.Next(&k, &v) {
			have[addr6FromBE(k.Addr)] = int(v.Ifindex)
		}
		err = it.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("read local addresses (%s): %w", m, err)
	}
	return have, nil
}

// isFull reports a map that took no more elements: E2BIG at max_entries,
// ENOMEM when the kernel (or the pod's memory cgroup) had no memory for one.
func isFull(err error) bool {
	return errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM)
}
