package maps

import (
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

// CIDRSet is a set of IPv4 non-masquerade prefixes, masked.
type CIDRSet map[netip.Prefix]Origin

// NewCIDRSet builds the set the datapath needs from configured prefixes and
// the implied link-local ones. A prefix listed twice keeps "configured".
func NewCIDRSet(configured, implied []netip.Prefix) CIDRSet {
	s := CIDRSet{}
	for _, p := range implied {
		if p.Addr().Is4() {
			s[p.Masked()] = LinkLocal
		}
	}
	for _, p := range configured {
		if p.Addr().Is4() {
			s[p.Masked()] = Configured
		}
	}
	return s
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

// NonMasq owns the two non-masquerade tries and the index that says which
// one decides. A new set is written into the idle trie and made active with
// one write, so the datapath never sees a mix of two configurations.
type NonMasq struct {
	mu       sync.Mutex
	tries    [2]*ebpf.Map
	settings *Settings
	retired  time.Time
}

func NewNonMasq(d *loader.Datapath, s *Settings) *NonMasq {
	return &NonMasq{tries: [2]*ebpf.Map{d.Maps.IpmCidr40, d.Maps.IpmCidr41}, settings: s}
}

// Apply makes set the active non-masquerade set.
func (n *NonMasq) Apply(set CIDRSet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if wait := retireGrace - time.Since(n.retired); wait > 0 {
		time.Sleep(wait)
	}
	active := n.settings.ActiveCIDRs()
	idle := 1 - active
	current, err := readTrie(n.tries[idle])
	if err != nil {
		return fmt.Errorf("read idle trie: %w", err)
	}
	upsert, remove := Diff(current, set)
	for _, p := range remove {
		k := cidrKey(p)
		if err := n.tries[idle].Delete(&k); err != nil {
			return fmt.Errorf("delete %s from idle trie: %w", p, err)
		}
	}
	for p, o := range upsert {
		k := cidrKey(p)
		v := loader.BPFIpmCidrValue{Origin: o}
		if err := n.tries[idle].Put(&k, &v); err != nil {
			return fmt.Errorf("write %s to idle trie: %w", p, err)
		}
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
	return readTrie(n.tries[n.settings.ActiveCIDRs()])
}

func cidrKey(p netip.Prefix) loader.BPFIpmCidr4Key {
	return loader.BPFIpmCidr4Key{Prefixlen: uint32(p.Bits()), Addr: addrToBE(p.Addr())}
}

func readTrie(m *ebpf.Map) (CIDRSet, error) {
	set := CIDRSet{}
	var k loader.BPFIpmCidr4Key
	var v loader.BPFIpmCidrValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		set[netip.PrefixFrom(addrFromBE(k.Addr), int(k.Prefixlen))] = v.Origin
	}
	return set, it.Err()
}
