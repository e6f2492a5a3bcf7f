package e2e

import (
	"net/netip"
	"testing"
)

// Addresses of the topology, all in one place.
//
//	pod1 10.244.1.2 ─┐                         ┌─ to-inet 203.0.113.1 ── internet 203.0.113.10 (drops private sources)
//	pod2 10.244.1.3 ─┴─ cni0 10.244.1.1 [node] eth0 172.31.0.2 ── to-node 172.31.0.1 [router] ─┼─ to-vpc 10.100.0.1 ── vpc 10.100.0.10 (routes back to pods)
//	                                                                                            └─ to-ll 169.254.169.1 ── linklocal 169.254.169.254
//
// The router's interfaces have tx checksum offload off (see NewTopology).
var (
	NodeIP       = netip.MustParseAddr("172.31.0.2")
	RouterNodeIP = netip.MustParseAddr("172.31.0.1")
	NodeLAN      = netip.MustParsePrefix("172.31.0.0/24")
	NodeNet      = netip.MustParsePrefix("172.31.0.0/16") // what remote hosts route back to the node

	CNIGatewayIP = netip.MustParseAddr("10.244.1.1")
	NodePodCIDR  = netip.MustParsePrefix("10.244.1.0/24")
	ClusterCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	Pod1IP       = netip.MustParseAddr("10.244.1.2")
	Pod2IP       = netip.MustParseAddr("10.244.1.3")

	InternetIP       = netip.MustParseAddr("203.0.113.10")
	RouterInternetIP = netip.MustParseAddr("203.0.113.1")
	InternetLAN      = netip.MustParsePrefix("203.0.113.0/24")

	VPCIP       = netip.MustParseAddr("10.100.0.10")
	RouterVPCIP = netip.MustParseAddr("10.100.0.1")
	VPCLAN      = netip.MustParsePrefix("10.100.0.0/24")

	LinkLocalIP       = netip.MustParseAddr("169.254.169.254")
	RouterLinkLocalIP = netip.MustParseAddr("169.254.169.1")
	LinkLocalLAN      = netip.MustParsePrefix("169.254.169.0/24")

	// PrivateRanges are the sources that the internet host drops.
	PrivateRanges = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}
)

// Ports of the servers on every remote host.
const (
	TCPPort = 8080 // TCPServer: first line is the peer address it saw, then echo
	UDPPort = 8081 // UDPServer: replies "<token> <peer address>"
)

// Uplink is the node's interface towards the router, the one the agent manages.
const Uplink = "eth0"

// Host is a remote host with its servers running.
type Host struct {
	*Netns
	TCP  *TCPServer
	UDP  *UDPServer
	ICMP *ICMPListener
}

// TCPAddr is the address of the host's TCP echo server.
func (h *Host) TCPAddr() netip.AddrPort { return netip.AddrPortFrom(h.Addr, TCPPort) }

// UDPAddr is the address of the host's UDP server.
func (h *Host) UDPAddr() netip.AddrPort { return netip.AddrPortFrom(h.Addr, UDPPort) }

// Topology is one independent set of namespaces; several can exist at once
// because every interface name and address lives inside its own namespaces.
type Topology struct {
	ID         string // random part of the namespace names
	Node       *Netns // uplink eth0, bridge cni0; the agent runs here
	Pod1, Pod2 *Netns
	Router     *Netns
	Internet   *Host
	VPC        *Host
	LinkLocal  *Host

	// Only with the WithLowMTUHop option (topology_mtu.go); nil otherwise.
	Hop *Netns // router behind the router, MTU 1280 towards it
	Far *Host  // server with MTU 1500 behind the hop

	// Only with the WithDualStack option (ipv6_topology.go); nil otherwise.
	V6 *DualStack
}

// Namespaces lists every namespace of the topology.
func (tp *Topology) Namespaces() []*Netns {
	ns := []*Netns{tp.Node, tp.Pod1, tp.Pod2, tp.Router, tp.Internet.Netns, tp.VPC.Netns, tp.LinkLocal.Netns}
	if tp.Hop != nil {
		ns = append(ns, tp.Hop, tp.Far.Netns)
	}
	return ns
}

// TopologyOption adds to the default topology; NewTopology applies options
// after building it.
type TopologyOption func(t testing.TB, tp *Topology)

// NewTopology builds the namespaces, links, addresses and routes, and starts
// the TCP, UDP and ICMP servers on the three remote hosts. Everything is
// removed by t.Cleanup, also when the test fails halfway.
func NewTopology(t testing.TB, opts ...TopologyOption) *Topology {
	t.Helper()
	requireRoot(t)
	id := randomSuffix(6)
	tp := &Topology{ID: id}
	mk := func(role string, ip netip.Addr) *Netns {
		n := newNetns(t, id, role)
		n.Addr = ip
		// Settings that links copy from "default" when they are created:
		// no IPv6 (no router solicitations, DAD or MLD noise), no inherited
		// rp_filter from the host. The internet host turns it on below.
		n.Sysctl(t,
			"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
		n.IP(t, "link", "set", "lo", "up")
		return n
	}
	tp.Node = mk("node", NodeIP)
	tp.Pod1 = mk("pod1", Pod1IP)
	tp.Pod2 = mk("pod2", Pod2IP)
	tp.Router = mk("rtr", RouterNodeIP)
	inet := mk("inet", InternetIP)
	vpc := mk("vpc", VPCIP)
	ll := mk("ll", LinkLocalIP)

	// veth creates both ends directly in their namespaces; nothing is ever
	// created in the namespace of the test process.
	veth := func(a *Netns, aName string, b *Netns, bName string) {
		a.IP(t, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
		a.IP(t, "link", "set", aName, "up")
		b.IP(t, "link", "set", bName, "up")
	}
	addr := func(n *Netns, dev string, ip netip.Addr, lan netip.Prefix) {
		n.IP(t, "addr", "add", netip.PrefixFrom(ip, lan.Bits()).String(), "dev", dev)
	}

	// Node: uplink to the router, bridge for the pods.
	veth(tp.Node, Uplink, tp.Router, "to-node")
	addr(tp.Node, Uplink, NodeIP, NodeLAN)
	addr(tp.Router, "to-node", RouterNodeIP, NodeLAN)
	tp.Node.IP(t, "route", "add", "default", "via", RouterNodeIP.String())
	tp.Node.IP(t, "link", "add", "cni0", "type", "bridge")
	addr(tp.Node, "cni0", CNIGatewayIP, NodePodCIDR)
	tp.Node.IP(t, "link", "set", "cni0", "up")
	tp.Node.Sysctl(t, "net.ipv4.ip_forward=1")

	// Pods: tx offloads stay at the veth default (on), so the node sees
	// CHECKSUM_PARTIAL packets from them.
	for i, pod := range []*Netns{tp.Pod1, tp.Pod2} {
		hostSide := "veth-pod" + string(rune('1'+i))
		veth(pod, "eth0", tp.Node, hostSide)
		tp.Node.IP(t, "link", "set", hostSide, "master", "cni0")
		addr(pod, "eth0", pod.Addr, NodePodCIDR)
		pod.IP(t, "route", "add", "default", "via", CNIGatewayIP.String())
	}

	// Router and the three remote hosts.
	veth(inet, "eth0", tp.Router, "to-inet")
	addr(inet, "eth0", InternetIP, InternetLAN)
	addr(tp.Router, "to-inet", RouterInternetIP, InternetLAN)
	veth(vpc, "eth0", tp.Router, "to-vpc")
	addr(vpc, "eth0", VPCIP, VPCLAN)
	addr(tp.Router, "to-vpc", RouterVPCIP, VPCLAN)
	veth(ll, "eth0", tp.Router, "to-ll")
	addr(ll, "eth0", LinkLocalIP, LinkLocalLAN)
	addr(tp.Router, "to-ll", RouterLinkLocalIP, LinkLocalLAN)

	tp.Router.IP(t, "route", "add", ClusterCIDR.String(), "via", NodeIP.String())
	tp.Router.Sysctl(t, "net.ipv4.ip_forward=1")
	// Checksums after the NAT are completed in software on the router's way
	// out, so every receiver verifies real checksums: a CHECKSUM_PARTIAL
	// packet with a wrong pseudo-header seed becomes a packet with a wrong
	// checksum here, instead of travelling veth to veth unverified.
	for _, dev := range []string{"to-node", "to-inet", "to-vpc", "to-ll"} {
		tp.Router.MustExec(t, "ethtool", "-K", dev, "tx", "off")
	}

	// Internet host: default route, but private sources are unreachable and
	// strict reverse-path filtering drops packets from them on arrival (they
	// count in TcpExt.IPReversePathFilter). 172.31.0.0/16 is inside
	// 172.16.0.0/12, so the node network gets its own, more specific route.
	inet.IP(t, "route", "add", "default", "via", RouterInternetIP.String())
	for _, p := range PrivateRanges {
		inet.IP(t, "route", "add", "unreachable", p.String())
	}
	inet.IP(t, "route", "add", NodeNet.String(), "via", RouterInternetIP.String())
	inet.Sysctl(t, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1")

	// VPC host: pod addresses are routable to it.
	vpc.IP(t, "route", "add", ClusterCIDR.String(), "via", RouterVPCIP.String())
	vpc.IP(t, "route", "add", NodeNet.String(), "via", RouterVPCIP.String())

	// Link-local host (a metadata server); the node reaches it through its
	// default route, the router forwards 169.254/16 like any other prefix.
	ll.IP(t, "route", "add", ClusterCIDR.String(), "via", RouterLinkLocalIP.String())
	ll.IP(t, "route", "add", NodeNet.String(), "via", RouterLinkLocalIP.String())

	for _, n := range []*Netns{inet, vpc, ll} {
		h := &Host{Netns: n}
		h.TCP = n.ListenTCP(t, h.TCPAddr())
		h.UDP = n.ListenUDP(t, h.UDPAddr())
		h.ICMP = n.ListenICMP(t)
		switch n {
		case inet:
			tp.Internet = h
		case vpc:
			tp.VPC = h
		case ll:
			tp.LinkLocal = h
		}
	}
	for _, o := range opts {
		o(t, tp)
	}
	return tp
}

// ChecksumErrors sums the receive checksum error counters of every namespace,
// keyed "<namespace role> <counter>"; only non-zero entries are returned.
func (tp *Topology) ChecksumErrors(t testing.TB) map[string]int64 {
	t.Helper()
	res := map[string]int64{}
	for _, n := range tp.Namespaces() {
		c, err := n.ChecksumErrors()
		if err != nil {
			t.Errorf("read counters: %v", err)
			continue
		}
		for k, v := range c {
			if v != 0 {
				res[n.Name+" "+k] = v
			}
		}
	}
	return res
}

// FailOnChecksumErrors makes the test fail at its end if any namespace of the
// topology counted a receive checksum error.
func (tp *Topology) FailOnChecksumErrors(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if errs := tp.ChecksumErrors(t); len(errs) > 0 {
			t.Errorf("receivers counted checksum errors: %v", errs)
		}
	})
}
