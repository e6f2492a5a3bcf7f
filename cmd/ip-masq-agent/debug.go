package main

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// runDebug prints what the datapath pinned under pinPath holds, in human
// terms: settings, managed interfaces, the active non-masquerade CIDRs, the
// NAT table and the counters; with -o json only the NAT table, one object a
// line. It opens the pins read-only and takes no lock, so it works while an
// agent runs (and while none does). It returns the exit code.
func runDebug(w io.Writer, errw io.Writer, pinPath string, o debugOptions) int {
	dp, err := loader.OpenPinned(pinPath)
	if err != nil {
		fmt.Fprintf(errw, "debug: %v\n", err)
		return 1
	}
	defer dp.Close()
	if o.json {
		code := 0
		for _, fam := range families(dp) {
			// A family that cannot be read does not hide the other.
			if err := streamNAT(w, fam.name, fam.nat, o); err != nil {
				fmt.Fprintf(errw, "debug: NAT table (%s): %v\n", fam.name, err)
				code = 1
			}
		}
		return code
	}
	if err := printDebug(w, dp, o); err != nil {
		fmt.Fprintf(errw, "debug: %v\n", err)
		return 1
	}
	return 0
}

func printDebug(out io.Writer, dp *loader.Datapath, o debugOptions) error {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	defer w.Flush()
	var errs []error
	section := func(name string, ok bool, print func() error) {
		if !ok {
			fmt.Fprintf(w, "\n%s: map not pinned\n", name)
			return
		}
		if err := print(); err != nil {
			fmt.Fprintf(w, "  error: %v\n", err)
			errs = append(errs, err)
		}
	}
	fmt.Fprintf(w, "Pin path: %s\n", dp.PinPath)

	var settings loader.BPFIpmSettings
	section("Settings", pinned(dp.Maps.IpmSettings), func() error {
		if err := dp.Maps.IpmSettings.Lookup(uint32(0), &settings); err != nil {
			return fmt.Errorf("read ipm_settings: %w", err)
		}
		var ranges []string
		for _, r := range settings.Ranges[:min(int(settings.RangeCount), len(settings.Ranges))] {
			ranges = append(ranges, config2Range(r.First, r.Last))
		}
		fmt.Fprintf(w, "Layout version: %d\n", settings.LayoutVersion)
		fmt.Fprintf(w, "Node ports: %v (%d ports), random-fully %t\n", ranges, settings.PortCount, settings.RandomFully != 0)
		return nil
	})

	section("Interfaces", pinned(dp.Maps.IpmIfaces), func() error {
		ifaces, err := managedInterfaces(dp)
		if err != nil {
			return fmt.Errorf("read ipm_ifaces: %w", err)
		}
		fmt.Fprintf(w, "\nInterfaces (%d):\n", len(ifaces))
		for _, i := range ifaces {
			addr := "no IPv4 address (new IPv4 flows are dropped)"
			if i.addr.IsValid() {
				addr = "masquerade as " + i.addr.String()
			}
			if i.addr6.IsValid() {
				addr += " and " + i.addr6.String()
			}
			attach := fmt.Sprintf("ingress %s, egress %s", orNone(i.ingress), orNone(i.egress))
			if i.err != nil {
				attach = i.err.Error()
			}
			fmt.Fprintf(w, "  %s\tifindex %d\t%s\t%s\n", i.name, i.ifindex, addr, attach)
		}
		return nil
	})

	section("Non-masquerade CIDRs", pinned(dp.Maps.IpmCidr40, dp.Maps.IpmCidr41, dp.Maps.IpmCidr60, dp.Maps.IpmCidr61, dp.Maps.IpmSettings), func() error {
		s, err := maps.OpenSettings(dp)
		if err != nil {
			return err
		}
		set, err := maps.NewNonMasq(dp, s).Active()
		if err != nil {
			return fmt.Errorf("read the active trie: %w", err)
		}
		prefixes := make([]netip.Prefix, 0, len(set))
		for p := range set {
			prefixes = append(prefixes, p)
		}
		slices.SortFunc(prefixes, func(a, b netip.Prefix) int {
			return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
		})
		fmt.Fprintf(w, "\nNon-masquerade CIDRs (trie %d active, %d prefixes):\n", s.ActiveCIDRs(), len(prefixes))
		for _, p := range prefixes {
			origin := "configured"
			if set[p] == maps.Masquerade {
				origin = "masquerade exception (masqueradeCIDRs)"
			} else if set[p] == maps.LinkLocal && p.Addr().Is4() {
				origin = "link-local (masqLinkLocal: false)"
			} else if set[p] == maps.LinkLocal {
				origin = "link-local (masqLinkLocalIPv6: false)"
			}
			fmt.Fprintf(w, "  %s\t%s\n", p, origin)
		}
		return nil
	})

	// The flows go straight to out as they are read: memory stays flat
	// at any table size.
	w.Flush()
	for _, fam := range families(dp) {
		if err := streamNAT(out, fam.name, fam.nat, o); err != nil {
			fmt.Fprintf(out, "  error: %v\n", err)
			errs = append(errs, err)
		}
	}

	section("Counters", pinned(dp.Maps.IpmStats), func() error {
		c := maps.NewCounters(dp)
		v4, err := c.ReadFamily(maps.IPv4)
		if err != nil {
			return err
		}
		v6, err := c.ReadFamily(maps.IPv6)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\nCounters (packets, all CPUs):\tipv4\tipv6\n")
		f6 := maps.Fields(v6)
		for i, f := range maps.Fields(v4) {
			fmt.Fprintf(w, "  %s\t%d\t%d\n", f.Name, f.Value, f6[i].Value)
		}
		return nil
	})
	if len(errs) > 0 {
		return fmt.Errorf("%d sections could not be read", len(errs))
	}
	return nil
}

// pinned reports whether every one of ms was pinned (OpenPinned leaves a
// map that is not pinned nil).
func pinned(ms ...*ebpf.Map) bool {
	for _, m := range ms {
		if m == nil {
			return false
		}
	}
	return true
}

// idle formats the time since a flow's last packet, in whole seconds.
func idle(now, last time.Duration) string {
	d := max(now-last, 0)
	return (d / time.Second * time.Second).String()
}

func orNone(m loader.Mode) string {
	if m == "" {
		return "none"
	}
	return string(m)
}

func config2Range(first, last uint16) string {
	if first == last {
		return fmt.Sprint(first)
	}
	return fmt.Sprintf("%d-%d", first, last)
}
