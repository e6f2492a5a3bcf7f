package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Defaults of the flags that other packages may want to show or compare.
const (
	DefaultConfigPath = "/etc/config/ip-masq-agent"
	DefaultPinPath    = "/sys/fs/bpf/ip-masq-agent"
	// DefaultMetricsAddress serves /metrics on every address of the node,
	// for Prometheus to scrape.
	DefaultMetricsAddress = ":9441"
	// DefaultHealthAddress serves /healthz and /readyz on the loopback
	// address only: the kubelet probes a host-network pod from the node.
	DefaultHealthAddress = "127.0.0.1:9442"
)

// Defaults of the other flags. The first two are upstream's.
const (
	defaultMasqChain   = "IP-MASQ-AGENT"
	defaultRemoveChain = true
	defaultRandomFully = true
	defaultNATEntries  = 262144 // 131,072 flows: docs/scale.md
	defaultTCPSyn      = 60 * time.Second
	defaultTCPEst      = 6 * time.Hour
	defaultTCPFin      = 120 * time.Second
	defaultTCPRst      = 10 * time.Second
	defaultUDP         = 60 * time.Second
	defaultUDPStream   = 180 * time.Second
	defaultICMP        = 30 * time.Second
	defaultGCInterval  = 10 * time.Second
)

// Values of --attach-mode.
const (
	AttachAuto = "auto" // tcx when the kernel has it (6.6+), else tc
	AttachTCX  = "tcx"
	AttachTC   = "tc" // clsact qdisc with a direct-action cls_bpf filter
)

// Bounds of --nat-max-entries. The lower one is small enough for a test to
// fill the table; the upper one (16M entries, 8M flows, gigabytes of kernel
// memory) is beyond what a node needs and catches a typo of a few zeros.
const (
	MinNATEntries = 64
	MaxNATEntries = 1 << 24
)

// MaxPortRanges is how many --to-ports items the datapath stores.
const MaxPortRanges = 8

// maxIfNameLen is IFNAMSIZ-1: the kernel keeps 15 characters and a NUL.
const maxIfNameLen = 15

// maxChainLen is the longest iptables chain name (XT_EXTENSION_MAXNAMELEN-1).
const maxChainLen = 28

// builtinChains are the chains of the iptables tables, which no agent created.
var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// defaultPortRange is what translated ports are drawn from without
// --to-ports: the range MASQUERADE uses for ports it must change.
var defaultPortRange = PortRange{First: 1024, Last: 65535}

// Flags holds every command-line flag of the agent except klog's.
type Flags struct {
	// Upstream flags.
	MasqChain               string
	NoMasqAllReservedRanges bool
	EnableIPv6              bool
	RandomFully             bool
	ToPorts                 string

	// RemoveIPTablesChain removes the --masq-chain chain and its POSTROUTING
	// jump that an earlier iptables agent left, on start (docs/behaviour.md §12).
	RemoveIPTablesChain bool

	// Flags of this project.
	ConfigPath    string
	Interfaces    string
	PinPath       string
	AttachMode    string
	NATMaxEntries int

	// MasqueradeAddress chooses the address an interface masquerades to
	// ("eth0=192.0.2.10,eth1=198.51.100.7"); SourceCIDRs limits
	// masquerading to sources inside these prefixes (the pod CIDRs).
	MasqueradeAddress string
	SourceCIDRs       string

	// HTTP listeners; "" disables one. Equal addresses share a listener.
	MetricsAddress string
	HealthAddress  string

	// NAT state lifetimes: how long a mapping lives after its last packet.
	TCPSynTimeout         time.Duration
	TCPEstablishedTimeout time.Duration
	TCPFinTimeout         time.Duration
	TCPRstTimeout         time.Duration
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration
	ICMPTimeout           time.Duration
	GCInterval            time.Duration
}

// Options returns what the configuration file parser needs from the flags.
func (f *Flags) Options() Options {
	return Options{NoMasqAllReservedRanges: f.NoMasqAllReservedRanges, EnableIPv6: f.EnableIPv6}
}

// NewFlagSet registers every flag on a new FlagSet that returns parse errors
// (flag.ContinueOnError): upstream's flags with their names and defaults, this
// project's flags, and klog's (--v, --logtostderr, --vmodule, ...). Parse
// returns flag.ErrHelp for -h; the caller exits 2 on any other error.
//
// klog's flags set klog's global state when parsed, as they do everywhere.
func NewFlagSet(name string) (*flag.FlagSet, *Flags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	f := &Flags{}

	fs.StringVar(&f.MasqChain, "masq-chain", defaultMasqChain,
		"Name of the iptables nat chain that an earlier, iptables-based ip-masq-agent created. "+
			"This agent does not use iptables: on start it removes that chain and its POSTROUTING jump "+
			"(iptables-nft and iptables-legacy, IPv4 and IPv6), unless --remove-iptables-chain=false.")
	fs.BoolVar(&f.RemoveIPTablesChain, "remove-iptables-chain", defaultRemoveChain,
		"On start, remove the --masq-chain chain and the POSTROUTING rules that jump to it from the nat table, "+
			"if an earlier iptables ip-masq-agent left them: netfilter runs before this agent, so their stale list "+
			"would decide first. Nothing is touched when they are absent. Disable with --remove-iptables-chain=false.")
	fs.BoolVar(&f.NoMasqAllReservedRanges, "nomasq-all-reserved-ranges", false,
		"When the config file has no nonMasqueradeCIDRs key, keep the pod source address for all 11 IPv4 ranges "+
			"reserved by RFCs (RFC 1918, 100.64.0.0/10, 192.0.0.0/24, 192.0.2.0/24, 192.88.99.0/24, 198.18.0.0/15, "+
			"198.51.100.0/24, 203.0.113.0/24, 240.0.0.0/4) instead of only the 3 RFC 1918 ranges.")
	fs.BoolVar(&f.EnableIPv6, "enable-ipv6", false,
		"Also masquerade IPv6 traffic, and accept IPv6 CIDRs in the config file.")
	fs.BoolVar(&f.RandomFully, "random-fully", defaultRandomFully,
		"Give every new masqueraded flow a random source port, like iptables --random-fully. "+
			"When false, a flow keeps the pod's source port if that port is free. Disable with --random-fully=false.")
	fs.StringVar(&f.ToPorts, "to-ports", "",
		fmt.Sprintf("Comma-separated source ports and port ranges that masqueraded TCP and UDP flows are given, "+
			"for example \"1024-29999,32768-65535\" (at most %d items). Empty means %d-%d.",
			MaxPortRanges, defaultPortRange.First, defaultPortRange.Last))

	fs.StringVar(&f.ConfigPath, "config", DefaultConfigPath,
		"Path of the configuration file (YAML or JSON, usually the ip-masq-agent ConfigMap's \"config\" key). "+
			"A missing file means the defaults. Its directory is watched for changes.")
	fs.StringVar(&f.Interfaces, "interfaces", "",
		"Comma-separated network interfaces to masquerade on, for example \"eth0,ens5\". "+
			"Empty means every interface that carries a default route.")
	fs.StringVar(&f.PinPath, "pin-path", DefaultPinPath,
		"Absolute path of a directory on a bpffs where the agent pins its maps and links, so that NAT state "+
			"survives restarts and upgrades.")
	fs.StringVar(&f.AttachMode, "attach-mode", AttachAuto,
		"How to attach to interfaces: \"tcx\" (kernel 6.6 and newer), \"tc\" (clsact qdisc, kernel 5.10 and newer) "+
			"or \"auto\" (tcx when the kernel has it, else tc).")
	fs.IntVar(&f.NATMaxEntries, "nat-max-entries", defaultNATEntries,
		fmt.Sprintf("Size of the NAT table in entries. Every masqueraded flow uses two entries; a new flow that "+
			"finds the table full is dropped, never sent with the pod address. Each entry takes 120 bytes of kernel "+
			"memory per family, charged to the agent's memory limit (docs/scale.md). Between %d and %d.",
			MinNATEntries, MaxNATEntries))

	fs.StringVar(&f.MasqueradeAddress, "masquerade-address", "",
		"Comma-separated INTERFACE=ADDRESS items, for example \"eth0=192.0.2.10\": masquerade traffic leaving that "+
			"interface to this address of it (one per family) instead of its primary address. While the address is not "+
			"on the interface, new flows of that family through it are dropped, never sent with another address.")
	fs.StringVar(&f.SourceCIDRs, "source-cidrs", "",
		"Comma-separated CIDRs, for example the node's pod CIDRs \"10.244.1.0/24\": only sources inside them are "+
			"masqueraded, so traffic routed through the node for other hosts (VMs, VPN clients) leaves unchanged. "+
			"Empty means every source that is not an address of the node, as upstream.")
	fs.StringVar(&f.MetricsAddress, "metrics-address", DefaultMetricsAddress,
		"host:port to serve Prometheus metrics on (/metrics). Empty disables it. "+
			"When equal to --health-address, one listener serves both.")
	fs.StringVar(&f.HealthAddress, "health-address", DefaultHealthAddress,
		"host:port to serve the liveness (/healthz) and readiness (/readyz) endpoints on. Empty disables it.")

	fs.DurationVar(&f.TCPSynTimeout, "tcp-syn-timeout", defaultTCPSyn,
		"How long a masqueraded TCP connection that is not yet established keeps its mapping without traffic.")
	fs.DurationVar(&f.TCPEstablishedTimeout, "tcp-established-timeout", defaultTCPEst,
		"How long an established masqueraded TCP connection keeps its mapping without traffic.")
	fs.DurationVar(&f.TCPFinTimeout, "tcp-fin-timeout", defaultTCPFin,
		"How long a masqueraded TCP connection keeps its mapping after a FIN; the remote's TIME_WAIT "+
			"must end before its port is reused.")
	fs.DurationVar(&f.TCPRstTimeout, "tcp-rst-timeout", defaultTCPRst,
		"How long a masqueraded TCP connection keeps its mapping after a RST.")
	fs.DurationVar(&f.UDPTimeout, "udp-timeout", defaultUDP,
		"How long a masqueraded UDP flow that has only sent keeps its mapping without traffic.")
	fs.DurationVar(&f.UDPStreamTimeout, "udp-stream-timeout", defaultUDPStream,
		"How long a masqueraded UDP flow that has seen replies keeps its mapping without traffic.")
	fs.DurationVar(&f.ICMPTimeout, "icmp-timeout", defaultICMP,
		"How long a masqueraded ICMP echo (ping) keeps its mapping without traffic.")
	fs.DurationVar(&f.GCInterval, "gc-interval", defaultGCInterval,
		"How often the agent removes expired NAT mappings.")

	klog.InitFlags(fs)
	return fs, f
}

// Validate checks what flag parsing cannot, before anything touches the
// datapath. The error names every bad flag.
func (f *Flags) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", name, fmt.Sprintf(format, args...)))
	}

	switch {
	case f.MasqChain == "":
		bad("masq-chain", "must not be empty")
	case len(f.MasqChain) > maxChainLen:
		bad("masq-chain", "%q is longer than %d characters, the iptables limit", f.MasqChain, maxChainLen)
	case strings.ContainsFunc(f.MasqChain, isSpace):
		bad("masq-chain", "%q contains white space", f.MasqChain)
	case f.RemoveIPTablesChain && slices.Contains(builtinChains, f.MasqChain):
		bad("masq-chain", "%q is a built-in chain, which --remove-iptables-chain must not remove", f.MasqChain)
	}

	if f.ToPorts != "" {
		if _, err := ParsePortRanges(f.ToPorts); err != nil {
			bad("to-ports", "%v", err)
		}
	}

	if f.ConfigPath == "" {
		bad("config", "must not be empty")
	}

	_, ifErrs := parseInterfaces(f.Interfaces)
	for _, err := range ifErrs {
		bad("interfaces", "%v", err)
	}

	switch {
	case f.PinPath == "":
		bad("pin-path", "must not be empty")
	case !filepath.IsAbs(f.PinPath):
		bad("pin-path", "%q must be an absolute path", f.PinPath)
	case filepath.Clean(f.PinPath) == "/":
		bad("pin-path", "must be a directory below /, not / itself")
	}

	if _, err := parseMasqueradeAddresses(f.MasqueradeAddress, f.EnableIPv6); err != nil {
		bad("masquerade-address", "%v", err)
	} else if managed, _ := parseInterfaces(f.Interfaces); managed != nil {
		for _, a := range f.MasqueradeAddresses() {
			if !slices.Contains(managed, a.Interface) {
				bad("masquerade-address", "interface %s is not in --interfaces %s", a.Interface, f.Interfaces)
			}
		}
	}
	if _, err := parseSourceCIDRs(f.SourceCIDRs, f.EnableIPv6); err != nil {
		bad("source-cidrs", "%v", err)
	}

	switch f.AttachMode {
	case AttachAuto, AttachTCX, AttachTC:
	default:
		bad("attach-mode", "%q is not one of %s, %s, %s", f.AttachMode, AttachAuto, AttachTCX, AttachTC)
	}

	if f.NATMaxEntries < MinNATEntries || f.NATMaxEntries > MaxNATEntries {
		bad("nat-max-entries", "%d is outside %d to %d", f.NATMaxEntries, MinNATEntries, MaxNATEntries)
	}

	for _, a := range []struct{ name, v string }{
		{"metrics-address", f.MetricsAddress},
		{"health-address", f.HealthAddress},
	} {
		if err := checkListenAddress(a.v); err != nil {
			bad(a.name, "%v", err)
		}
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"tcp-syn-timeout", f.TCPSynTimeout},
		{"tcp-established-timeout", f.TCPEstablishedTimeout},
		{"tcp-fin-timeout", f.TCPFinTimeout},
		{"tcp-rst-timeout", f.TCPRstTimeout},
		{"udp-timeout", f.UDPTimeout},
		{"udp-stream-timeout", f.UDPStreamTimeout},
		{"icmp-timeout", f.ICMPTimeout},
		{"gc-interval", f.GCInterval},
	} {
		if d.v <= 0 {
			bad(d.name, "must be positive, got %s", d.v)
		}
	}

	return errors.Join(errs...)
}

// PortRanges returns the ranges translated source ports are drawn from:
// --to-ports parsed, or 1024-65535 when it is empty. Call it after
// Validate; it returns nil when --to-ports does not parse.
func (f *Flags) PortRanges() []PortRange {
	if f.ToPorts == "" {
		return []PortRange{defaultPortRange}
	}
	r, err := ParsePortRanges(f.ToPorts)
	if err != nil {
		return nil
	}
	return r
}

// InterfaceList returns the interfaces of --interfaces, without duplicates,
// or nil when it is empty, which means every interface with a default route.
// Call it after Validate; it returns nil when --interfaces is invalid.
func (f *Flags) InterfaceList() []string {
	l, errs := parseInterfaces(f.Interfaces)
	if len(errs) > 0 {
		return nil
	}
	return l
}

// LogFlags logs every flag with its value, one line each, as upstream does at
// start, so that a log shows how the agent was run.
func LogFlags(fs *flag.FlagSet) {
	fs.VisitAll(func(fl *flag.Flag) {
		klog.InfoS("Flag", "name", "--"+fl.Name, "value", fl.Value.String())
	})
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// String formats r the way --to-ports takes it.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Size is the number of ports in r.
func (r PortRange) Size() int { return int(r.Last) - int(r.First) + 1 }

// ParsePortRanges parses the --to-ports grammar of upstream: comma-separated
// items, each a port ("8080") or an inclusive range ("1024-29999"), with no
// spaces. Items are kept in order; overlaps are accepted, as upstream.
func ParsePortRanges(s string) ([]PortRange, error) {
	if s == "" {
		return nil, errors.New("no ports given")
	}
	items := strings.Split(s, ",")
	if len(items) > MaxPortRanges {
		return nil, fmt.Errorf("%d items, but the datapath stores at most %d port ranges", len(items), MaxPortRanges)
	}
	out := make([]PortRange, 0, len(items))
	for _, item := range items {
		r, err := parsePortRange(item)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// parsePortRange parses one "N" or "N-M" item.
func parsePortRange(item string) (PortRange, error) {
	if item == "" {
		return PortRange{}, errors.New("empty item (two commas in a row, or a comma at an end)")
	}
	first, last, isRange := strings.Cut(item, "-")
	a, err := parsePort(first, item)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{First: a, Last: a}, nil
	}
	b, err := parsePort(last, item)
	if err != nil {
		return PortRange{}, err
	}
	if a > b {
		return PortRange{}, fmt.Errorf("range %q runs backwards: write %d-%d", item, b, a)
	}
	return PortRange{First: a, Last: b}, nil
}

// parsePort parses one port number: decimal digits only, 1 to 65535.
func parsePort(s, item string) (uint16, error) {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < '0' || r > '9' }) {
		return 0, fmt.Errorf("%q is not a port or a range of ports like 1024-65535", item)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("port %s in %q is larger than 65535", s, item)
	}
	if n == 0 {
		return 0, fmt.Errorf("port 0 in %q is not a usable source port", item)
	}
	return uint16(n), nil
}

// parseInterfaces splits --interfaces and returns one error per bad name.
// Spaces around names are dropped (a name cannot hold one); empty items are
// errors, duplicates are dropped.
func parseInterfaces(s string) ([]string, []error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var names []string
	var errs []error
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		name := strings.TrimSpace(item)
		if err := checkIfName(name); err != nil {
			errs = append(errs, err)
			continue
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return names, nil
}

// checkIfName applies the kernel's rules for interface names (dev_valid_name).
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name (two commas in a row, or a comma at an end)")
	case len(name) > maxIfNameLen:
		return fmt.Errorf("interface name %q is longer than %d characters", name, maxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not an interface name", name)
	case strings.ContainsAny(name, "/:") || strings.ContainsFunc(name, isSpace):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// isSpace is the C isspace the kernel uses for interface names.
func isSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// checkListenAddress accepts "" (disabled) and host:port with an IP address,
// "localhost" or nothing as host, and a port from 1 to 65535.
func checkListenAddress(s string) error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (for example \":9441\" or \"127.0.0.1:9442\")", s)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: host %q is not an IP address", s, host)
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return nil
}
