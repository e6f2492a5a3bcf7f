package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// interfaceSet keeps the datapath attached to the managed interfaces and
// the maps in step with their addresses. An interface that is missing is
// waited for; one that is recreated (new ifindex) is attached again.
type interfaceSet struct {
	dp       *loader.Datapath
	mode     loader.Mode
	names    []string // nil: the interfaces that carry a default route
	attached map[string]int
	waiting  map[string]bool
	ifaces   *maps.Interfaces
	local    *maps.LocalAddrs
	// chosen holds --masquerade-address; nil: primary addresses only.
	chosen *masqueradeAddresses
	heal   *healer
	// localDropped is how many node addresses per family (IPv4, IPv6) did
	// not fit at the last sync, to log each change once; localReport,
	// when set, is told the stored and dropped counts (metrics).
	localDropped [2]int
	localReport  func(stored, dropped [2]int)
}

func newInterfaceSet(dp *loader.Datapath, settings *maps.Settings, mode loader.Mode, names []string) *interfaceSet {
	return &interfaceSet{
		dp: dp, mode: mode, names: names,
		attached: map[string]int{}, waiting: map[string]bool{},
		ifaces: maps.NewInterfaces(dp), local: maps.NewLocalAddrs(dp, settings),
		heal: newHealer(),
	}
}

func (s *interfaceSet) attachedNames() []string {
	var out []string
	for n := range s.attached {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// reconcile attaches to every wanted interface not yet attached and writes
// every interface's masquerade address and the node's local addresses. The
// addresses are all written before any attach: programs new to these maps
// (a first start, or maps replaced on an upgrade) know the host's addresses
// from their first packet.
func (s *interfaceSet) reconcile() error {
	names := s.names
	if names == nil {
		var err error
		if names, err = defaultRouteInterfaces(); err != nil {
			return err
		}
	}
	keep := map[int]bool{}
	var found []netlink.Link
	var first []netip.Addr // the masquerade addresses, stored before any other
	for _, name := range names {
		l, err := netlink.LinkByName(name)
		if err != nil {
			if !s.waiting[name] {
				klog.InfoS("Waiting for interface", "interface", name)
				s.waiting[name] = true
			}
			if idx, ok := s.attached[name]; ok {
				s.heal.vanished(name, idx)
			}
			delete(s.attached, name)
			continue
		}
		delete(s.waiting, name)
		idx := l.Attrs().Index
		keep[idx] = true
		found = append(found, l)
		// The address first: a new flow through an interface without
		// one is dropped, never leaked.
		addr4, addr6 := primaryIPv4(l), primaryIPv6(l)
		if s.chosen != nil {
			addr4, addr6 = s.chosen.pick(l, addr4, addr6)
		}
		if err := s.ifaces.Set(idx, addr4, addr6); err != nil {
			return err
		}
		first = append(first, addr4, addr6)
	}
	if err := s.ifaces.Retain(keep); err != nil {
		return err
	}
	// A failed address sync does not hold up attaching: the addresses
	// written before stay, and an interface without our programs would
	// send pod addresses out.
	errLocal := s.syncLocal(keep, first)
	for _, l := range found {
		name, idx := l.Attrs().Name, l.Attrs().Index
		if s.attached[name] == idx {
			continue
		}
		cause := s.repairCause(name, s.attached[name], idx)
		used, err := s.dp.Attach(idx, name, s.mode)
		if err != nil {
			return errors.Join(errLocal, err)
		}
		s.attached[name] = idx
		s.heal.attached(name, used, cause)
		klog.InfoS("Attached", "interface", name, "ifindex", idx, "mode", used)
	}
	return errLocal
}

// primaryIPv4 is the first non-secondary global IPv4 address of l, which
// is what the kernel picks as source for traffic leaving through it.
func primaryIPv4(l netlink.Link) netip.Addr {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_SECONDARY != 0 || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			return ip
		}
	}
	return netip.Addr{}
}

// primaryIPv6 is the first global, permanent-or-stable IPv6 address of l:
// not link-local, not deprecated, not tentative (duplicate address detection
// still running), not a temporary privacy address.
func primaryIPv6(l netlink.Link) netip.Addr {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return netip.Addr{}
	}
	const skip = unix.IFA_F_DEPRECATED | unix.IFA_F_TENTATIVE | unix.IFA_F_DADFAILED | unix.IFA_F_TEMPORARY
	for _, a := range addrs {
		if a.Flags&skip != 0 || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP.To16()); ok && !ip.Is4In6() {
			return ip
		}
	}
	return netip.Addr{}
}

// defaultRouteInterfaces names the interfaces that carry an IPv4 default
// route, the uplinks that pod traffic leaves through.
func defaultRouteInterfaces() ([]string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	seen := map[string]bool{}
	var names []string
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idxs := []int{r.LinkIndex}
		for _, nh := range r.MultiPath {
			idxs = append(idxs, nh.LinkIndex)
		}
		for _, idx := range idxs {
			if l, err := netlink.LinkByIndex(idx); err == nil && !seen[l.Attrs().Name] {
				seen[l.Attrs().Name] = true
				names = append(names, l.Attrs().Name)
			}
		}
	}
	return names, nil
}

// watchNetlink signals, debounced, after link, address or route changes.
func watchNetlink(ctx context.Context) (<-chan struct{}, error) {
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	done := ctx.Done()
	if err := netlink.LinkSubscribe(links, done); err != nil {
		return nil, fmt.Errorf("watch links: %w", err)
	}
	if err := netlink.AddrSubscribe(addrs, done); err != nil {
		return nil, fmt.Errorf("watch addresses: %w", err)
	}
	if err := netlink.RouteSubscribe(routes, done); err != nil {
		return nil, fmt.Errorf("watch routes: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		var fire <-chan time.Time
		for {
			select {
			case <-done:
				return
			case <-links:
			case <-addrs:
			case <-routes:
			case <-fire:
				fire = nil
				select {
				case out <- struct{}{}:
				default:
				}
				continue
			}
			if fire == nil {
				fire = time.After(100 * time.Millisecond)
			}
		}
	}()
	return out, nil
}
