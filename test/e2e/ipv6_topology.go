package e2e

import (
	"net/netip"
	"strings"
	"testing"
)

// The IPv6 side of the dual-stack topology (WithDualStack), on the same
// namespaces and links as the IPv4 one:
//
//	pod1 fd00:10:244:1::2 ─┐                                                        ┌─ internet 2001:db8:113::10 (drops fc00::/7 sources)
//	pod2 fd00:10:244:1::3 ─┴─ cni0 fd00:10:244:1::1 [node] eth0 2001:db8:31::2 ── ::1 [router] ─┤
//	                                                                                └─ vpc fd00:100::10 (routes fd00:10:244::/48 back)
//
// With WithLowMTUHop applied before WithDualStack, the hop and the far server
// get IPv6 too: router 2001:db8:1280::1 ══ MTU 1280 (the IPv6 minimum) ══
// 2001:db8:1280::2 hop 2001:db8:f00::1 ── far 2001:db8:f00::10 (drops
// fc00::/7 sources, MTU 1500). IPv6 routers never fragment: without a
// translated "packet too big" a pod's large packets to the far server are
// lost.
//
// Link-local (fe80::/10) destinations are never routed, so no host of the
// topology can stand for a link-local peer behind the node's uplink;
// masqLinkLocalIPv6 is tested on crafted packets (test/prog) and here only
// as far as the datapath's configuration.
//
// Addresses are added with nodad and duplicate address detection is off on
// every interface, so nothing waits for it; the router's interfaces keep tx
// checksum offload off (NewTopology, WithLowMTUHop), so receivers verify
// every IPv6 checksum after the NAT.
var (
	Node6        = netip.MustParseAddr("2001:db8:31::2")
	RouterNode6  = netip.MustParseAddr("2001:db8:31::1")
	NodeLAN6     = netip.MustParsePrefix("2001:db8:31::/64")
	CNIGateway6  = netip.MustParseAddr("fd00:10:244:1::1")
	NodePodCIDR6 = netip.MustParsePrefix("fd00:10:244:1::/64")
	ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/48")
	Pod1IP6      = netip.MustParseAddr("fd00:10:244:1::2")
	Pod2IP6      = netip.MustParseAddr("fd00:10:244:1::3")

	Internet6       = netip.MustParseAddr("2001:db8:113::10")
	RouterInternet6 = netip.MustParseAddr("2001:db8:113::1")
	InternetLAN6    = netip.MustParsePrefix("2001:db8:113::/64")

	VPC6       = netip.MustParseAddr("fd00:100::10")
	RouterVPC6 = netip.MustParseAddr("fd00:100::1")
	VPCLAN6    = netip.MustParsePrefix("fd00:100::/64")

	RouterHop6 = netip.MustParseAddr("2001:db8:1280::1")
	HopUp6     = netip.MustParseAddr("2001:db8:1280::2")
	HopLAN6    = netip.MustParsePrefix("2001:db8:1280::/64")
	HopDown6   = netip.MustParseAddr("2001:db8:f00::1")
	Far6       = netip.MustParseAddr("2001:db8:f00::10")
	FarLAN6    = netip.MustParsePrefix("2001:db8:f00::/64")

	// UniqueLocal are the sources the internet and far hosts drop.
	UniqueLocal = netip.MustParsePrefix("fc00::/7")
)

// DualStack is the IPv6 side of a topology. Its Netns values are the
// topology's namespaces with Addr set to their IPv6 address (so the probes
// of traffic.go, which take the family from the addresses, speak IPv6).
type DualStack struct {
	Node, Pod1, Pod2, Router *Netns
	Internet, VPC            *Host // TCP, UDP and ICMPv6 servers on the IPv6 address
	Hop                      *Netns
	Far                      *Host // only with WithLowMTUHop
}

// as6 returns n with its IPv6 address: the same namespace (handle shared,
// closed by n's cleanup).
func as6(n *Netns, a netip.Addr) *Netns {
	return &Netns{Name: n.Name, Role: n.Role + "/v6", Handle: n.Handle, Addr: a}
}

// enableIPv6 turns IPv6 on in the namespace, duplicate address detection
// off on every interface first (tp.Namespaces were built with IPv6 off).
func enableIPv6(t testing.TB, n *Netns) {
	t.Helper()
	var kv []string
	// all, default and every interface: the namespace's own view.
	for _, dev := range strings.Fields(n.MustExec(t, "ls", "/proc/sys/net/ipv6/conf")) {
		kv = append(kv, "net.ipv6.conf."+dev+".accept_dad=0")
	}
	kv = append(kv, "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.disable_ipv6=0")
	n.Sysctl(t, kv...)
}

// dropUniqueLocal makes a host drop every packet from fc00::/7 on arrival
// and have no route back to it, without ip6tables: a policy rule that
// prohibits those sources is consulted before the local table (which moves
// behind it), so even packets for the host's own address are dropped (they
// count in Ip6InNoRoutes) and never reach a socket.
func dropUniqueLocal(t testing.TB, n *Netns) {
	t.Helper()
	n.IP(t, "-6", "rule", "add", "pref", "100", "lookup", "local")
	n.IP(t, "-6", "rule", "del", "pref", "0")
	n.IP(t, "-6", "rule", "add", "pref", "10", "from", UniqueLocal.String(), "prohibit")
	n.IP(t, "-6", "route", "add", "prohibit", UniqueLocal.String())
}

// WithDualStack gives the topology IPv6 (see the diagram above): addresses,
// routes and forwarding, the internet (and far) host dropping unique-local
// sources, and TCP, UDP and ICMPv6 servers on the IPv6 addresses of the
// internet, VPC (and far) hosts, in tp.V6. Apply it after WithLowMTUHop.
func WithDualStack() TopologyOption {
	return func(t testing.TB, tp *Topology) {
		t.Helper()
		ns := []*Netns{tp.Node, tp.Pod1, tp.Pod2, tp.Router, tp.Internet.Netns, tp.VPC.Netns}
		if tp.Hop != nil {
			ns = append(ns, tp.Hop, tp.Far.Netns)
		}
		for _, n := range ns {
			enableIPv6(t, n)
		}
		addr := func(n *Netns, dev string, ip netip.Addr, lan netip.Prefix) {
			n.IP(t, "-6", "addr", "add", netip.PrefixFrom(ip, lan.Bits()).String(), "dev", dev, "nodad")
		}

		addr(tp.Node, Uplink, Node6, NodeLAN6)
		addr(tp.Router, "to-node", RouterNode6, NodeLAN6)
		addr(tp.Node, "cni0", CNIGateway6, NodePodCIDR6)
		tp.Node.IP(t, "-6", "route", "add", "default", "via", RouterNode6.String())
		tp.Node.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
		for _, p := range []struct {
			n  *Netns
			ip netip.Addr
		}{{tp.Pod1, Pod1IP6}, {tp.Pod2, Pod2IP6}} {
			addr(p.n, "eth0", p.ip, NodePodCIDR6)
			p.n.IP(t, "-6", "route", "add", "default", "via", CNIGateway6.String())
		}

		addr(tp.Router, "to-inet", RouterInternet6, InternetLAN6)
		addr(tp.Router, "to-vpc", RouterVPC6, VPCLAN6)
		tp.Router.IP(t, "-6", "route", "add", ClusterCIDR6.String(), "via", Node6.String())
		tp.Router.Sysctl(t, "net.ipv6.conf.all.forwarding=1")

		inet, vpc := tp.Internet.Netns, tp.VPC.Netns
		addr(inet, "eth0", Internet6, InternetLAN6)
		inet.IP(t, "-6", "route", "add", "default", "via", RouterInternet6.String())
		dropUniqueLocal(t, inet)

		addr(vpc, "eth0", VPC6, VPCLAN6)
		vpc.IP(t, "-6", "route", "add", ClusterCIDR6.String(), "via", RouterVPC6.String())
		vpc.IP(t, "-6", "route", "add", NodeLAN6.String(), "via", RouterVPC6.String())

		ds := &DualStack{
			Node: as6(tp.Node, Node6), Pod1: as6(tp.Pod1, Pod1IP6), Pod2: as6(tp.Pod2, Pod2IP6),
			Router: as6(tp.Router, RouterNode6),
		}
		host := func(n *Netns, ip netip.Addr) *Host {
			h := &Host{Netns: as6(n, ip)}
			h.TCP = h.ListenTCP(t, h.TCPAddr())
			h.UDP = h.ListenUDP(t, h.UDPAddr())
			h.ICMP = h.ListenICMP(t)
			return h
		}
		ds.Internet, ds.VPC = host(inet, Internet6), host(vpc, VPC6)

		if tp.Hop != nil {
			hop, far := tp.Hop, tp.Far.Netns
			addr(tp.Router, "to-hop", RouterHop6, HopLAN6)
			addr(hop, "to-rtr", HopUp6, HopLAN6)
			addr(hop, "to-far", HopDown6, FarLAN6)
			addr(far, "eth0", Far6, FarLAN6)
			tp.Router.IP(t, "-6", "route", "add", FarLAN6.String(), "via", HopUp6.String())
			hop.IP(t, "-6", "route", "add", "default", "via", RouterHop6.String())
			hop.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
			far.IP(t, "-6", "route", "add", "default", "via", HopDown6.String())
			dropUniqueLocal(t, far)
			ds.Hop, ds.Far = as6(hop, HopUp6), host(far, Far6)
		}
		tp.V6 = ds
	}
}
