package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// explainQuery is what `explain SRC DST [tcp|udp|icmp [PORT]]` asks about.
type explainQuery struct {
	src, dst netip.Addr
	proto    uint8 // 0: any
	port     uint16
	hasPort  bool
}

// parseExplainArgs reads the positional arguments of explain.
func parseExplainArgs(args []string) (explainQuery, error) {
	var q explainQuery
	if len(args) < 2 || len(args) > 4 {
		return q, fmt.Errorf("want SRC DST [tcp|udp|icmp [PORT]], got %d arguments", len(args))
	}
	var err error
	if q.src, err = netip.ParseAddr(args[0]); err != nil {
		return q, fmt.Errorf("source %q is not an IP address", args[0])
	}
	if q.dst, err = netip.ParseAddr(args[1]); err != nil {
		return q, fmt.Errorf("destination %q is not an IP address", args[1])
	}
	q.src, q.dst = q.src.Unmap(), q.dst.Unmap()
	if q.src.Is4() != q.dst.Is4() {
		return q, fmt.Errorf("source %s and destination %s are of different families", q.src, q.dst)
	}
	if len(args) >= 3 {
		switch strings.ToLower(args[2]) {
		case "tcp":
			q.proto = unix.IPPROTO_TCP
		case "udp":
			q.proto = unix.IPPROTO_UDP
		case "icmp", "icmpv6":
			q.proto = unix.IPPROTO_ICMP
			if q.src.Is6() {
				q.proto = unix.IPPROTO_ICMPV6
			}
		default:
			return q, fmt.Errorf("protocol %q is not tcp, udp or icmp", args[2])
		}
	}
	if len(args) == 4 {
		n, err := strconv.ParseUint(args[3], 10, 16)
		if err != nil || n == 0 || q.proto == unix.IPPROTO_ICMP || q.proto == unix.IPPROTO_ICMPV6 {
			return q, fmt.Errorf("port %q: want a destination port from 1 to 65535 after tcp or udp", args[3])
		}
		q.port, q.hasPort = uint16(n), true
	}
	return q, nil
}

// explainPrefix is one prefix of the active set and the list it came from.
type explainPrefix struct {
	Prefix string `json:"prefix"`
	List   string `json:"list"`
	// masquerade is the prefix's verdict: an exception.
	masquerade bool
}

// explainInterface is where the destination is routed in the current
// network namespace, and what the datapath knows of that interface.
type explainInterface struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	Managed bool   `json:"managed"`
	// MasqueradeAddress is the node address new flows of the family leave
	// with; null when the interface has none (they are dropped).
	MasqueradeAddress *string `json:"masquerade_address"`
}

// explainAnswer is the answer, also the JSON object of `explain -o json`
// (docs/json-output.md) less its flows, which are streamed after it.
type explainAnswer struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Family      string `json:"family"`
	Proto       string `json:"proto"` // "any" when not given
	Port        *int   `json:"port"`
	// Verdict of a new flow: "masquerade", "keep" (leaves with the source
	// address) or "drop" (would be masqueraded, but the interface has no
	// address to masquerade to).
	Verdict      string            `json:"verdict"`
	Reason       string            `json:"reason"`
	DecidedBy    *explainPrefix    `json:"decided_by"`
	Overrides    *explainPrefix    `json:"overrides"`
	SourceIsNode bool              `json:"source_is_node"`
	SourceCIDRs  *bool             `json:"source_in_source_cidrs"`
	Interface    *explainInterface `json:"interface"`

	flows []maps.Flow
}

// listOf names the list a prefix of the active set came from.
func listOf(p netip.Prefix, o maps.Origin) string {
	switch {
	case o == maps.Masquerade:
		return "masqueradeCIDRs"
	case o == maps.LinkLocal && p.Addr().Is4():
		return "link-local default (masqLinkLocal: false)"
	case o == maps.LinkLocal:
		return "link-local default (masqLinkLocalIPv6: false)"
	}
	return "nonMasqueradeCIDRs"
}

// explain answers q from the pinned datapath, read-only, and the routes of
// the current network namespace.
func explain(dp *loader.Datapath, q explainQuery) (explainAnswer, error) {
	a := explainAnswer{Source: q.src.String(), Destination: q.dst.String(), Family: "ipv4", Proto: "any"}
	if q.src.Is6() {
		a.Family = "ipv6"
	}
	if q.proto != 0 {
		a.Proto = protoName(q.proto)
	}
	if q.hasPort {
		p := int(q.port)
		a.Port = &p
	}
	for _, m := range []*ebpf.Map{dp.Maps.IpmSettings, dp.Maps.IpmIfaces, dp.Maps.IpmLocal4, dp.Maps.IpmLocal6,
		dp.Maps.IpmCidr40, dp.Maps.IpmCidr41, dp.Maps.IpmCidr60, dp.Maps.IpmCidr61} {
		if m == nil {
			return a, fmt.Errorf("the pinned datapath lacks maps explain needs: is an agent running with this --pin-path?")
		}
	}
	settings, err := maps.OpenSettings(dp)
	if err != nil {
		return a, err
	}
	set, err := maps.NewNonMasq(dp, settings).Active()
	if err != nil {
		return a, fmt.Errorf("read the active trie: %w", err)
	}
	local, err := maps.NewLocalAddrs(dp, settings).IsLocal(q.src)
	if err != nil {
		return a, err
	}
	a.SourceIsNode = local
	if dp.Maps.IpmSrc4 != nil && dp.Maps.IpmSrc6 != nil {
		prefixes, on, err := maps.NewSources(dp, settings).Read()
		if err != nil {
			return a, err
		}
		if on {
			in := false
			for _, p := range prefixes {
				in = in || p.Contains(q.src)
			}
			a.SourceCIDRs = &in
		}
	}
	if p, _, ok := set.Decide(q.dst); ok {
		a.DecidedBy = &explainPrefix{p.String(), listOf(p, set[p]), set[p] == maps.Masquerade}
		// The shorter prefix of the other verdict it wins over, if any.
		for bits := p.Bits() - 1; bits >= 0; bits-- {
			s, _ := q.dst.Prefix(bits)
			if o, found := set[s]; found {
				if (o == maps.Masquerade) != (set[p] == maps.Masquerade) {
					a.Overrides = &explainPrefix{s.String(), listOf(s, o), o == maps.Masquerade}
				}
				break
			}
		}
	}
	iface, ifErr := routeInterface(dp, q)
	a.Interface = iface
	a.Verdict, a.Reason = verdictOf(a, settings.IPv6Enabled(), q, ifErr)

	for _, fam := range families(dp) {
		if fam.name != a.Family {
			continue
		}
		// Streamed, as debug reads it: only the matching flows are kept,
		// so explain costs the same memory beside a table of millions.
		_, err := fam.nat.Walk(maps.Visitor{Flow: func(f maps.Flow) {
			if f.Pod.Addr() == q.src && f.Remote.Addr() == q.dst && (q.proto == 0 || f.Proto == q.proto) &&
				(!q.hasPort || f.Remote.Port() == q.port) {
				a.flows = append(a.flows, f)
			}
		}})
		if err != nil {
			return a, err
		}
	}
	return a, nil
}

// verdictOf decides as the datapath does for the first packet of a new flow.
func verdictOf(a explainAnswer, ipv6 bool, q explainQuery, ifErr error) (string, string) {
	switch {
	case q.src.Is6() && !ipv6:
		return "keep", "IPv6 is not masqueraded: the agent runs without --enable-ipv6"
	case a.Interface != nil && !a.Interface.Managed:
		return "keep", fmt.Sprintf("the destination is routed through %s, which the agent does not manage: nothing there is rewritten", a.Interface.Name)
	case a.SourceIsNode:
		return "keep", "the source is an address of the node: host traffic keeps its address (its tuple is reserved so no pod mapping takes it)"
	}
	if a.DecidedBy != nil && !a.DecidedBy.masquerade {
		return "keep", fmt.Sprintf("the destination is in %s of %s, its longest matching prefix", a.DecidedBy.Prefix, a.DecidedBy.List)
	}
	why := "no non-masquerade prefix contains the destination"
	if a.DecidedBy != nil {
		why = fmt.Sprintf("the destination is in %s of masqueradeCIDRs, its longest matching prefix", a.DecidedBy.Prefix)
		if a.Overrides != nil {
			why += fmt.Sprintf(", which wins over the shorter %s of %s", a.Overrides.Prefix, a.Overrides.List)
		}
	}
	if a.SourceCIDRs != nil && !*a.SourceCIDRs {
		return "keep", why + "; but the source is outside --source-cidrs (not a pod), so it leaves unchanged"
	}
	switch {
	case a.Interface == nil:
		return "masquerade", why + fmt.Sprintf(" (the route to it could not be looked up here: %v)", ifErr)
	case a.Interface.MasqueradeAddress == nil:
		return "drop", why + fmt.Sprintf("; but %s has no masquerade address of this family (or the one chosen with --masquerade-address is missing), so new flows are dropped, never sent with the pod address", a.Interface.Name)
	}
	return "masquerade", why + fmt.Sprintf(": it leaves %s as %s", a.Interface.Name, *a.Interface.MasqueradeAddress)
}

// routeInterface looks the route to q.dst up in the current network
// namespace (from q.src when it is a node address) and reads what the
// datapath knows of its interface.
func routeInterface(dp *loader.Datapath, q explainQuery) (*explainInterface, error) {
	var opts *netlink.RouteGetOptions
	if ok, _ := maps.NewLocalAddrs(dp, nil).IsLocal(q.src); ok {
		opts = &netlink.RouteGetOptions{SrcAddr: net.IP(q.src.AsSlice())}
	}
	routes, err := netlink.RouteGetWithOptions(net.IP(q.dst.AsSlice()), opts)
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("route to %s: %w", q.dst, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, fmt.Errorf("interface %d: %w", routes[0].LinkIndex, err)
	}
	i := &explainInterface{Name: l.Attrs().Name, Ifindex: l.Attrs().Index}
	v4, v6, managed, err := maps.NewInterfaces(dp).Get(i.Ifindex)
	if err != nil {
		return nil, err
	}
	i.Managed = managed
	addr := v4
	if q.dst.Is6() {
		addr = v6
	}
	if managed && addr.IsValid() {
		s := addr.String()
		i.MasqueradeAddress = &s
	}
	return i, nil
}

// timeoutsOf are the state lifetimes the flags give, which an explain run
// uses to tell how long a mapping has left (the agent's own flags decide).
func timeoutsOf(f *config.Flags) maps.Timeouts {
	return maps.Timeouts{
		TCPSyn: f.TCPSynTimeout, TCPEstablished: f.TCPEstablishedTimeout, TCPFin: f.TCPFinTimeout,
		TCPRst: f.TCPRstTimeout, UDP: f.UDPTimeout, UDPStream: f.UDPStreamTimeout, ICMP: f.ICMPTimeout,
	}
}

// expiresIn is how long f has left before the expiry removes it.
func expiresIn(f maps.Flow, to maps.Timeouts, now time.Duration) time.Duration {
	return max(f.Timeout(to)-max(now-f.LastSeen, 0), 0)
}
