package e2e

import (
	"net/netip"
	"strconv"
	"testing"
)

// Addresses of the low-MTU hop (WithLowMTUHop):
//
//	[router] to-hop 198.18.0.1 ══ MTU 1280 ══ to-rtr 198.18.0.2 [hop] to-far 198.51.100.1 ── far 198.51.100.10 (MTU 1500, drops private sources)
//
// The far server's own link has MTU 1500, so it advertises an MSS of 1460 and
// only path MTU discovery can make the pods send smaller segments to it: the
// router answers a 1500-byte packet with DF set with "fragmentation needed,
// MTU 1280" to the node address, which only a translated error brings to the
// pod. The hop does the same for the far server's large replies.
var (
	RouterHopIP = netip.MustParseAddr("198.18.0.1")
	HopUpIP     = netip.MustParseAddr("198.18.0.2")
	HopLinkLAN  = netip.MustParsePrefix("198.18.0.0/24")

	HopDownIP = netip.MustParseAddr("198.51.100.1")
	FarIP     = netip.MustParseAddr("198.51.100.10")
	FarLAN    = netip.MustParsePrefix("198.51.100.0/24")
)

// LowMTU is the MTU of the link between the router and the hop.
const LowMTU = 1280

// WithLowMTUHop adds the hop and the far server (tp.Hop, tp.Far) behind the
// router. Every interface of the router and the hop has tx checksum offload
// off, as in NewTopology.
func WithLowMTUHop() TopologyOption {
	return func(t testing.TB, tp *Topology) {
		t.Helper()
		mk := func(role string, ip netip.Addr) *Netns {
			n := newNetns(t, tp.ID, role)
			n.Addr = ip
			n.Sysctl(t,
				"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
				"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
			n.IP(t, "link", "set", "lo", "up")
			return n
		}
		hop := mk("hop", HopUpIP)
		far := mk("far", FarIP)
		link := func(a *Netns, aName string, aIP netip.Addr, b *Netns, bName string, bIP netip.Addr, lan netip.Prefix, mtu string) {
			a.IP(t, "link", "add", aName, "mtu", mtu, "type", "veth", "peer", "name", bName, "mtu", mtu, "netns", b.Name)
			a.IP(t, "addr", "add", netip.PrefixFrom(aIP, lan.Bits()).String(), "dev", aName)
			b.IP(t, "addr", "add", netip.PrefixFrom(bIP, lan.Bits()).String(), "dev", bName)
			a.IP(t, "link", "set", aName, "up")
			b.IP(t, "link", "set", bName, "up")
		}
		link(tp.Router, "to-hop", RouterHopIP, hop, "to-rtr", HopUpIP, HopLinkLAN, strconv.Itoa(LowMTU))
		link(hop, "to-far", HopDownIP, far, "eth0", FarIP, FarLAN, "1500")
		for _, d := range []struct {
			n   *Netns
			dev string
		}{{tp.Router, "to-hop"}, {hop, "to-rtr"}, {hop, "to-far"}} {
			d.n.MustExec(t, "ethtool", "-K", d.dev, "tx", "off")
		}

		tp.Router.IP(t, "route", "add", FarLAN.String(), "via", HopUpIP.String())
		hop.IP(t, "route", "add", "default", "via", RouterHopIP.String())
		hop.Sysctl(t, "net.ipv4.ip_forward=1")

		// Like the internet host: pod sources never get an answer.
		far.IP(t, "route", "add", "default", "via", HopDownIP.String())
		for _, p := range PrivateRanges {
			far.IP(t, "route", "add", "unreachable", p.String())
		}
		far.IP(t, "route", "add", NodeNet.String(), "via", HopDownIP.String())
		far.Sysctl(t, "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1")

		h := &Host{Netns: far}
		h.TCP = far.ListenTCP(t, h.TCPAddr())
		h.UDP = far.ListenUDP(t, h.UDPAddr())
		h.ICMP = far.ListenICMP(t)
		tp.Hop, tp.Far = hop, h
	}
}
