package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
)

// runCheck validates the file of --config offline with the agent's own
// parser and flags (--enable-ipv6, --nomasq-all-reserved-ranges) and prints
// what the agent would apply. No privileges, no datapath. It returns 0 for
// a valid file, 1 for an invalid or missing one.
func runCheck(w, errw io.Writer, f *config.Flags) int {
	if _, err := os.Stat(f.ConfigPath); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(errw, "check: %s does not exist (the agent would run with the defaults)\n", f.ConfigPath)
		return 1
	}
	c, err := config.Load(f.ConfigPath, f.Options())
	if err != nil {
		fmt.Fprintf(errw, "check: invalid, the agent would keep its last good configuration:\n%v\n", err)
		return 1
	}
	fmt.Fprintf(w, "%s: valid\n", f.ConfigPath)
	if len(c.UnknownKeys) > 0 {
		fmt.Fprintf(w, "Ignored keys (not configuration keys; misspelt?): %s\n", strings.Join(c.UnknownKeys, ", "))
	}
	v4, v6 := c.Effective(f.EnableIPv6)
	e4, e6 := c.Exceptions(f.EnableIPv6)
	families := []struct {
		name          string
		nonMasq, masq []netip.Prefix
		linkLocal     netip.Prefix
		masqLinkLocal bool
		linkLocalFlag string
	}{
		{"IPv4", v4, e4, netip.MustParsePrefix("169.254.0.0/16"), c.MasqLinkLocal, "masqLinkLocal"},
		{"IPv6", v6, e6, netip.MustParsePrefix("fe80::/10"), c.MasqLinkLocalIPv6, "masqLinkLocalIPv6"},
	}
	for _, fam := range families {
		if fam.name == "IPv6" && !f.EnableIPv6 {
			fmt.Fprintf(w, "IPv6: not masqueraded (no --enable-ipv6)\n")
			continue
		}
		fmt.Fprintf(w, "%s, not masqueraded (%d):\n", fam.name, len(fam.nonMasq))
		for _, p := range fam.nonMasq {
			note := ""
			if p == fam.linkLocal && !fam.masqLinkLocal {
				note = fmt.Sprintf("  # link-local, %s: false", fam.linkLocalFlag)
			}
			fmt.Fprintf(w, "  %s%s\n", p, note)
		}
		fmt.Fprintf(w, "%s, masqueraded although a shorter prefix above covers them (%d):\n", fam.name, len(fam.masq))
		for _, p := range fam.masq {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	fmt.Fprintf(w, "cidrLimit: %d (%d used)\n", c.CIDRLimit, len(c.NonMasqueradeCIDRs)+len(c.MasqueradeCIDRs))
	fmt.Fprintf(w, "resyncInterval: %s\n", c.ResyncInterval)
	fmt.Fprintf(w, "The longest matching prefix decides; everything outside these lists is masqueraded.\n")
	return 0
}
