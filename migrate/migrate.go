// Package migrate removes what an earlier, iptables-based ip-masq-agent left
// on the node: its POSTROUTING jump to the --masq-chain chain and that chain,
// in the nat table, for IPv4 and IPv6, whether it wrote them with
// iptables-nft (an nf_tables table "nat") or iptables-legacy (the x_tables
// "nat" table). Netfilter runs before tc egress, so a stale chain would
// decide before the eBPF datapath does (docs/behaviour.md §12).
//
// Both backends are pure Go and run no binaries, so a node (or an image)
// without iptables works: nf_tables is read and changed over netlink, the
// legacy table with the same getsockopt/setsockopt calls that
// iptables-legacy makes. Neither creates a table or turns on conntrack when
// nothing is there: nf_tables is only listed, and the legacy table is opened
// only when /proc/net/ip_tables_names already lists "nat" (asking the kernel
// for a table that does not exist instantiates it, with its NAT hooks).
package migrate

import (
	"errors"
	"fmt"
	"strings"

	"k8s.io/klog/v2"
)

// Family is an address family of netfilter tables.
type Family string

// The families upstream programs: IPv4 always, IPv6 with --enable-ipv6.
const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// Backend names, as in the iptables binaries' names.
const (
	BackendNFT    = "nft"
	BackendLegacy = "legacy"
)

// NATTable and PostroutingChain are where upstream puts its rules.
const (
	NATTable         = "nat"
	PostroutingChain = "POSTROUTING"
)

// Removal is what was removed from one backend and family.
type Removal struct {
	Backend string
	Family  Family
	Chain   string
	// Jumps are the removed POSTROUTING rules, in iptables-save syntax.
	Jumps []string
	// Rules are the removed chain's rules, in iptables-save syntax.
	Rules []string
}

// Options say what to look for and where.
type Options struct {
	// Chain is the chain an earlier agent created (--masq-chain).
	Chain string
	// NFT and Legacy are the backends; nil means the real ones of the
	// current network namespace.
	NFT    Backend
	Legacy Backend
}

// Backend finds and removes the chain in one kind of netfilter tables.
type Backend interface {
	// Name is BackendNFT or BackendLegacy.
	Name() string
	// Remove removes the POSTROUTING jumps to chain and the chain from the
	// nat table of family. It returns nil, nil when the chain is absent and
	// changes nothing then; ErrUnavailable when the backend is not there at
	// all (no kernel support, no table).
	Remove(family Family, chain string) (*Removal, error)
}

// ErrUnavailable says that a backend has no nat table to look at.
var ErrUnavailable = errors.New("not available")

// Run removes the leftovers from every backend and family, logs each
// removal, and returns what it removed. A failure in one place does not stop
// the others; the error lists every failure.
func Run(o Options) ([]Removal, error) {
	if o.NFT == nil {
		o.NFT = NewNFT()
	}
	if o.Legacy == nil {
		o.Legacy = NewLegacy()
	}
	var done []Removal
	var errs []error
	for _, b := range []Backend{o.NFT, o.Legacy} {
		for _, fam := range []Family{IPv4, IPv6} {
			r, err := b.Remove(fam, o.Chain)
			switch {
			case errors.Is(err, ErrUnavailable):
				klog.V(2).InfoS("No iptables nat table to migrate from", "backend", b.Name(), "family", fam, "reason", err)
			case err != nil:
				errs = append(errs, fmt.Errorf("remove chain %s of the iptables ip-masq-agent (%s, %s): %w", o.Chain, b.Name(), fam, err))
			case r == nil:
				klog.V(2).InfoS("No chain of the iptables ip-masq-agent", "backend", b.Name(), "family", fam, "table", NATTable, "chain", o.Chain)
			default:
				logRemoval(r)
				done = append(done, *r)
			}
		}
	}
	return done, errors.Join(errs...)
}

// LogRemoved is the message of the log line for every removed chain.
const LogRemoved = "Removed the chain of the iptables ip-masq-agent"

func logRemoval(r *Removal) {
	for _, j := range r.Jumps {
		klog.InfoS("Removed the jump of the iptables ip-masq-agent", "backend", r.Backend, "family", r.Family,
			"table", NATTable, "chain", PostroutingChain, "rule", j)
	}
	klog.InfoS(LogRemoved, "backend", r.Backend, "family", r.Family, "table", NATTable, "chain", r.Chain,
		"rules", r.Rules)
}

// quote quotes a comment the way iptables-save does when it needs to.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// addrTypes are the names of XT_ADDRTYPE_* bits, lowest first.
var addrTypes = []string{"UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
	"UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"}

// addrtypeArgs renders the options of `-m addrtype`.
func addrtypeArgs(src, dst uint16, invSrc, invDst bool) []string {
	var out []string
	for _, o := range []struct {
		flag  string
		types uint16
		inv   bool
	}{{"--src-type", src, invSrc}, {"--dst-type", dst, invDst}} {
		if o.types == 0 {
			continue
		}
		var names []string
		for i, n := range addrTypes {
			if o.types&(1<<i) != 0 {
				names = append(names, n)
			}
		}
		if o.inv {
			out = append(out, "!")
		}
		out = append(out, o.flag, strings.Join(names, ","))
	}
	return out
}
