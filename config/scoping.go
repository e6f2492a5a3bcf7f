package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// MasqueradeAddress is one item of --masquerade-address: the address an
// interface's masqueraded traffic of one family leaves with, instead of the
// interface's primary address.
type MasqueradeAddress struct {
	Interface string
	Addr      netip.Addr
}

// parseMasqueradeAddresses parses "IFACE=IP,...": at most one address per
// interface and family; IPv6 only with --enable-ipv6.
func parseMasqueradeAddresses(s string, enableIPv6 bool) ([]MasqueradeAddress, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []MasqueradeAddress
	var errs []error
	type slot struct {
		iface string
		v4    bool
	}
	seen := map[slot]netip.Addr{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		name, ip, ok := strings.Cut(item, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("%q is not INTERFACE=ADDRESS (for example eth0=192.0.2.10)", item))
			continue
		}
		if err := checkIfName(name); err != nil {
			errs = append(errs, err)
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			errs = append(errs, fmt.Errorf("%q: %q is not an IPv4 or IPv6 address", item, ip))
			continue
		}
		switch {
		case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast():
			errs = append(errs, fmt.Errorf("%q: %s cannot be a masquerade address", item, a))
			continue
		case a.Is6() && !enableIPv6:
			errs = append(errs, fmt.Errorf("%q: %s is IPv6, but IPv6 is not enabled: enable it with the --enable-ipv6 flag", item, a))
			continue
		}
		k := slot{name, a.Is4()}
		if prev, dup := seen[k]; dup {
			errs = append(errs, fmt.Errorf("interface %s has two addresses of one family: %s and %s", name, prev, a))
			continue
		}
		seen[k] = a
		out = append(out, MasqueradeAddress{Interface: name, Addr: a})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// MaxSourceCIDRs is how many --source-cidrs prefixes the datapath holds
// per family (IPM_SRC_MAX in bpf/maps.h).
const MaxSourceCIDRs = 1024

// parseSourceCIDRs parses --source-cidrs: comma-separated CIDRs, aligned,
// IPv6 only with --enable-ipv6, with the same messages as the config file.
func parseSourceCIDRs(s string, enableIPv6 bool) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	if len(items) > MaxSourceCIDRs {
		return nil, fmt.Errorf("%d CIDRs, more than the %d the datapath holds", len(items), MaxSourceCIDRs)
	}
	for i := range items {
		items[i] = strings.TrimSpace(items[i])
	}
	out, bad := parseCIDRs(items, enableIPv6)
	if err := errors.Join(bad...); err != nil {
		return nil, err
	}
	return out, nil
}

// MasqueradeAddresses returns --masquerade-address parsed. Call it after
// Validate; it returns nil when the flag is invalid.
func (f *Flags) MasqueradeAddresses() []MasqueradeAddress {
	out, err := parseMasqueradeAddresses(f.MasqueradeAddress, f.EnableIPv6)
	if err != nil {
		return nil
	}
	return out
}

// SourcePrefixes returns --source-cidrs parsed: nil means every source that
// is not the node's may be masqueraded. Call it after Validate.
func (f *Flags) SourcePrefixes() []netip.Prefix {
	out, err := parseSourceCIDRs(f.SourceCIDRs, f.EnableIPv6)
	if err != nil {
		return nil
	}
	return out
}
