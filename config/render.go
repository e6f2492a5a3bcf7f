package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// YAML renders c as a configuration file that parses back to c (less
// UnknownKeys): every key written out, so it also shows the effective values
// of keys the file left at their defaults.
func (c Config) YAML() []byte {
	var b strings.Builder
	list := func(key string, ps []netip.Prefix) {
		if len(ps) == 0 {
			fmt.Fprintf(&b, "%s: []\n", key)
			return
		}
		fmt.Fprintf(&b, "%s:\n", key)
		for _, p := range ps {
			fmt.Fprintf(&b, "  - %s\n", p)
		}
	}
	list(keyNonMasqueradeCIDRs, c.NonMasqueradeCIDRs)
	list(keyMasqueradeCIDRs, c.MasqueradeCIDRs)
	fmt.Fprintf(&b, "%s: %d\n", keyCIDRLimit, c.CIDRLimit)
	fmt.Fprintf(&b, "%s: %t\n", keyMasqLinkLocal, c.MasqLinkLocal)
	fmt.Fprintf(&b, "%s: %t\n", keyMasqLinkLocalIPv6, c.MasqLinkLocalIPv6)
	fmt.Fprintf(&b, "%s: %s\n", keyResyncInterval, c.ResyncInterval)
	return []byte(b.String())
}
