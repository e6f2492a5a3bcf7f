package maps

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Sources is ipm_src4 and ipm_src6: the sources that may be masqueraded
// (--source-cidrs), and the switch in the settings that makes the datapath
// read them.
type Sources struct {
	m4, m6   *ebpf.Map
	settings *Settings
}

func NewSources(d *loader.Datapath, s *Settings) *Sources {
	return &Sources{m4: d.Maps.IpmSrc4, m6: d.Maps.IpmSrc6, settings: s}
}

// Set makes only sources inside ps get new mappings; empty ps: every source
// that is not the node's, as without the flag. The order of the writes
// keeps every moment between the old rule and the new one, or a union of
// both: new prefixes before the switch goes on, stale ones after.
func (x *Sources) Set(ps []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range ps {
		want[p.Masked()] = true
	}
	held, err := x.read()
	if err != nil {
		return err
	}
	if len(want) == 0 {
		if err := x.settings.SetSourceCIDRs(false); err != nil {
			return err
		}
	}
	for _, p := range missing(want, held) {
		m, key := x.trieOf(p)
		if err := m.Put(key, loader.BPFIpmCidrValue{Origin: Configured}); err != nil {
			return fmt.Errorf("write source prefix %s: %w", p, err)
		}
	}
	if len(want) > 0 {
		if err := x.settings.SetSourceCIDRs(true); err != nil {
			return err
		}
	}
	for _, p := range missing(held, want) {
		m, key := x.trieOf(p)
		if err := m.Delete(key); err != nil {
			return fmt.Errorf("delete source prefix %s: %w", p, err)
		}
	}
	return nil
}

// Read returns the source prefixes and whether the datapath uses them.
func (x *Sources) Read() ([]netip.Prefix, bool, error) {
	held, err := x.read()
	if err != nil {
		return nil, false, err
	}
	var out []netip.Prefix
	for p := range held {
		out = append(out, p)
	}
	return out, x.settings.SourceCIDRs(), nil
}

// missing returns the prefixes of a that b does not hold.
func missing(a, b map[netip.Prefix]bool) []netip.Prefix {
	var out []netip.Prefix
	for p := range a {
		if !b[p] {
			out = append(out, p)
		}
	}
	return out
}

// trieOf returns the trie of p's family and p's key in it.
func (x *Sources) trieOf(p netip.Prefix) (*ebpf.Map, any) {
	if p.Addr().Is4() {
		return x.m4, cidrKey4(p)
	}
	return x.m6, cidrKey6(p)
}

func (x *Sources) read() (map[netip.Prefix]bool, error) {
	held := map[netip.Prefix]bool{}
	for _, m := range []*ebpf.Map{x.m4, x.m6} {
		set, err := readTrie(m)
		if err != nil {
			return nil, fmt.Errorf("read source prefixes: %w", err)
		}
		for p := range set {
			held[p] = true
		}
	}
	return held, nil
}
