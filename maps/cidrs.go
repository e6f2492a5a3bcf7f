package maps

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Origin says why a prefix is not masqueraded.
type Origin = loader.BPFIpmCidrOrigin

const (
	Configured = loader.BPFIpmCidrOriginIPM_CIDR_CONFIGURED
	LinkLocal  = loader.BPFIpmCidrOriginIPM_CIDR_LINK_LOCAL
)

// CIDRSet is a set of non-masquerade prefixes of both families, masked.
type CIDRSet map[netip.Prefix]Origin

// NewCIDRSet builds the set the datapath needs from the effective set (the
// configured prefixes plus the implied link-local ones); a prefix that is
// also in configured is marked "configured", the others "link-local".
func NewCIDRSet(configured, effective []netip.Prefix) CIDRSet {
	s := CIDRSet{}
	for _, p := range effective {
		s[p.Masked()] = LinkLocal
	}
	for _, p := range configured {
		if _, ok := s[p.Masked()]; ok {
			s[p.Masked()] = Configured
		}
	}
	return s
}

// family returns the prefixes of one family: IPv4 when v4, else IPv6.
func (s CIDRSet) family(v4 bool) CIDRSet {
	out := CIDRSet{}
	for p, o := range s {
		if p.Addr().Is4() == v4 {
			out[p] = o
		}
	}
	return out
}

// Diff returns what must be written to and deleted from a trie holding old so
// that it holds new.
func Diff(old, new CIDRSet) (upsert CIDRSet, remove []netip.Prefix) {
	upsert = CIDRSet{}
	for p, o := range new {
		if oldO, ok := old[p]; !ok || oldO != o {
			upsert[p] = o
		}
	}
	for p := range old {
		if _, ok := new[p]; !ok {
			remove = append(remove, p)
		}
	}
	return upsert, remove
}

// retireGrace is how long a trie that just stopped deciding is left alone:
// a program that read the old index finishes in microseconds, so this is
// far beyond any packet still looking at it.
const retireGrace = 50 * time.Millisecond

// NonMasq owns the non-masquerade tries, two per family, and the index that
// says which of each pair decides. A new set is written into the idle tries
// and made active with one write for both families, so the datapath never
// sees a mix of two configurations.
type NonMasq struct {
	mu       sync.Mutex
	tries4   [2]*ebpf.Map
	tries6   [2]*ebpf.Map
	settings *Settings
	retired  time.Time
}

func NewNonMasq(d *loader.Datapath, s *Settings) *NonMasq {
	return &NonMasq{
		tries4:   [2]*ebpf.Map{d.Maps.IpmCidr40, d.Maps.IpmCidr41},
		tries6:   [2]*ebpf.Map{d.Maps.IpmCidr60, d.Maps.IpmCidr61},
		settings: s,
	}
}

// Apply makes set the active non-masquerade set.
func (n *NonMasq) Apply(set CIDRSet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if wait := retireGrace - time.Since(n.retired); wait > 0 {
		time.Sleep(wait)
	}
	idle := 1 - n.settings.ActiveCIDRs()
	if err := fillTrie(n.tries4[idle], set.family(true), cidrKey4); err != nil {
		return err
	}
	if err := fillTrie(n.tries6[idle], set.family(false), cidrKey6); err != nil {
		return err
	}
	if err := n.settings.SetActiveCIDRs(idle); err != nil {
		return err
	}
	n.retired = time.Now()
	return nil
}

// Active returns the set that decides now.
func (n *NonMasq) Active() (CIDRSet, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	active := n.settings.ActiveCIDRs()
	set, err := readTrie(n.tries4[active])
	if err != nil {
		return nil, err
	}
	set6, err := readTrie(n.tries6[active])
	for p, o := range set6 {
		set[p] = o
	}
	return set, err
}

// fillTrie makes an idle trie hold exactly want, writing only the difference.
func fillTrie[K any](m *ebpf.Map, want CIDRSet, key func(netip.Prefix) K) error {
	current, err := readTrie(m)
	if err != nil {
		return fmt.Errorf("read idle trie %s: %w", mapName(m), err)
	}
	upsert, remove := Diff(current, want)
	for _, p := range remove {
		k := key(p)
		if err := m.Delete(&k); err != nil {
			return fmt.Errorf("delete %s from idle trie: %w", p, err)
		}
	}
	for p, o := range upsert {
		k := key(p)
		v := loader.BPFIpmCidrValue{Origin: o}
		if err := m.Put(&k, &v); err != nil {
			return fmt.Errorf("write %s to idle trie: %w", p, err)
		}
	}
	return nil
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil {
		return info.Name
	}
	return "?"
}

func cidrKey4(p netip.Prefix) loader.BPFIpmCidr4Key {
	return loader.BPFIpmCidr4Key{Prefixlen: uint32(p.Bits()), Addr: addrToBE(p.Addr())}
}

func cidrKey6(p netip.Prefix) loader.BPFIpmCidr6Key {
	return loader.BPFIpmCidr6Key{Prefixlen: uint32(p.Bits()), Addr: addr6ToBE(p.Addr())}
}

// readTrie reads a trie of either family: the key size tells which.
func readTrie(m *ebpf.Map) (CIDRSet, error) {
	set := CIDRSet{}
	var v loader.BPFIpmCidrValue
	it := m.Iterate()
	if m.KeySize() == uint32(binary.Size(loader.BPFIpmCidr6Key{})) {
		var k loader.BPFIpmCidr6Key
		for it.Next(&k, &v) {
			set[netip.PrefixFrom(addr6FromBE(k.Addr), int(k.Prefixlen))] = v.Origin
		}
	} else {
		var k loader.BPFIpmCidr4Key
		for it.Next(&k, &v) {
			set[netip.PrefixFrom(addrFromBE(k.Addr), int(k.Prefixlen))] = v.Origin
		}
	}
	return set, it.Err()
}
