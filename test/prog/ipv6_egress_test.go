package prog

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestIPv6Masquerade: with --enable-ipv6, the first packet of a TCP, UDP or
// ICMPv6 echo flow from a pod to a destination outside the IPv6
// non-masquerade set leaves with the node's global IPv6 address and a node
// port (identifier), behind any extension headers (hop-by-hop, routing,
// destination options, an atomic fragment header); both halves of the
// mapping are in ipm_nat6; the reply is translated back to the pod; later
// packets reuse the mapping (docs/behaviour.md §5.7).
func TestIPv6Masquerade(t *testing.T) {
	envs := newEnvCache(t)
	for _, tc := range []struct {
		name string
		cfg  config6
		p    pkt6
	}{
		{"tcp syn", config6{}, tcp6(pod6A, 40000, remote6, 443, "S")},
		{"udp", config6{}, udp6(pod6A, 40001, remote6, 53)},
		{"icmpv6 echo request", config6{}, echo6(pod6A, remote6, 0x4242)},
		{"icmpv6 echo id 0", config6{}, echo6(pod6A, remote6, 0)},
		{"udp, empty payload", config6{}, func() pkt6 { p := udp6(pod6A, 40002, remote6, 9); p.payload = nil; return p }()},
		{"tcp syn, port 1 to 65535", config6{}, tcp6(pod6A, 1, remote6, 65535, "S")},
		{"tcp syn behind hop-by-hop", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop)},
		{"tcp syn behind a routing header", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extRouting)},
		{"tcp syn behind destination options", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extDstOpts)},
		{"udp behind hop-by-hop, destination options, routing, destination options", config6{},
			udp6(pod6A, 40000, remote6, 53).withExts(extHopByHop, extDstOpts, extRouting, extDstOpts)},
		{"icmpv6 echo behind hop-by-hop and destination options", config6{}, echo6(pod6A, remote6, 7).withExts(extHopByHop, extDstOpts)},
		{"udp behind an atomic fragment header (offset 0, no more fragments)", config6{}, udp6(pod6A, 40000, remote6, 53).withExts(extFragment)},
		{"tcp behind 5 extension headers", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop, extDstOpts, extDstOpts, extRouting, extDstOpts)},
		// IPM_MAX_EXT_HEADERS (bpf/packet6.h) is 6: "extension headers walked".
		{"tcp behind 6 extension headers", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop, extDstOpts, extDstOpts, extRouting, extDstOpts, extDstOpts)},
		{"link-local destination with masqLinkLocalIPv6", config6{masqLinkLocal6: true}, tcp6(pod6A, 40000, ll6, 80, "S")},
		{"unique-local destination with an empty IPv6 list", config6{nonMasq6: []netip.Prefix{}}, udp6(pod6A, 40000, vpc6, 53)},
		{"unique-local destination outside the configured list", config6{nonMasq6: []netip.Prefix{netip.MustParsePrefix("fd00:100::/32")}}, udp6(pod6A, 40000, netip.MustParseAddr("fd00:200::10"), 53)},
		{"--to-ports 20000-20009", config6{config: config{ports: []maps.PortRange{{First: 20000, Last: 20009}}}}, tcp6(pod6A, 40000, remote6, 443, "S")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := envs.get(t, tc.cfg)
			before := e.snap(t)
			since := maps.Now()
			port := e.masquerade6(t, tc.p)
			e.expect6(t, before, map[string]uint64{"egress_new_flow": 1})
			e.requireMapping6(t, tc.p.tuple, port, since)

			before = e.snap(t)
			e.unmasquerade6(t, replyTo6(tc.p, port), tc.p.tuple)
			e.expect6(t, before, map[string]uint64{"ingress_translated": 1})

			// A later packet of the flow keeps the mapping.
			later := tc.p
			if later.proto == protoTCP {
				later.flags = "A"
			}
			before = e.snap(t)
			if got := e.masquerade6(t, later); got != port {
				t.Errorf("later packet left with node port %d, want the mapping's %d", got, port)
			}
			e.expect6(t, before, map[string]uint64{"egress_translated": 1})
			if n := len(e.natEntries6(t)); n != 2 {
				t.Errorf("IPv6 NAT table has %d entries after the flow's later packets, want 2", n)
			}
		})
	}
}

// TestIPv6UDPChecksumZero: IPv6 forbids a UDP checksum of 0 (RFC 8200 8.1)
// and receivers drop such datagrams; the datapath keeps it 0 as it does for
// IPv4 (it must not invent one either way).
func TestIPv6UDPChecksumZero(t *testing.T) {
	e := newEnv6(t, config6{})
	p := udp6(pod6A, 40000, remote6, 53).noUDPChecksum()
	before := e.snap(t)
	e.masquerade6(t, p)
	e.expect6(t, before, map[string]uint64{"egress_new_flow": 1})
	out := e.egress(t, p.frame(t)).out
	if c := out[len(out)-len(p.payload)-2 : len(out)-len(p.payload)]; c[0] != 0 || c[1] != 0 {
		t.Errorf("UDP checksum 0 became 0x%02x%02x", c[0], c[1])
	}
}

// TestIPv6SamePodPortTwoPods: two pods with the same source port to the
// same destination get different node ports, each reply goes to its pod.
func TestIPv6SamePodPortTwoPods(t *testing.T) {
	for _, keep := range []bool{false, true} {
		name := "random-fully"
		if keep {
			name = "random-fully=false"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv6(t, config6{config: config{keepPorts: keep}})
			a := tcp6(pod6A, 40000, remote6, 443, "S")
			b := tcp6(pod6B, 40000, remote6, 443, "S")
			pa, pb := e.masquerade6(t, a), e.masquerade6(t, b)
			if pa == pb {
				t.Fatalf("both pods got node port %d", pa)
			}
			if keep && pa != 40000 {
				t.Errorf("--random-fully=false: first pod got node port %d, want its own 40000", pa)
			}
			e.unmasquerade6(t, replyTo6(b, pb), b.tuple)
			e.unmasquerade6(t, replyTo6(a, pa), a.tuple)
		})
	}
}

// TestIPv6NotMasqueraded: packets that must leave as they are do, byte for
// byte, each counted once in the IPv6 counters: destinations in the IPv6
// non-masquerade set and fe80::/10 (masqLinkLocalIPv6 false), TCP without a
// SYN and without a mapping, an echo reply (answer to an outside ping),
// other protocols and more extension headers than the datapath walks.
func TestIPv6NotMasqueraded(t *testing.T) {
	envs := newEnvCache(t)
	for _, tc := range []struct {
		name    string
		cfg     config6
		p       pkt6
		counter string
	}{
		{"tcp to the vpc (fd00::/8)", config6{}, tcp6(pod6A, 40000, vpc6, 443, "S"), "egress_nomasq"},
		{"udp to the vpc", config6{}, udp6(pod6A, 40000, vpc6, 53), "egress_nomasq"},
		{"icmpv6 echo to the vpc", config6{}, echo6(pod6A, vpc6, 9), "egress_nomasq"},
		{"tcp to the vpc behind hop-by-hop and routing", config6{}, tcp6(pod6A, 40000, vpc6, 443, "S").withExts(extHopByHop, extRouting), "egress_nomasq"},
		{"tcp to a link-local peer", config6{}, tcp6(pod6A, 40000, ll6, 80, "S"), "egress_nomasq"},
		{"udp to a link-local peer", config6{}, udp6(pod6A, 40000, ll6, 53), "egress_nomasq"},
		{"echo to a link-local peer", config6{}, echo6(pod6A, ll6, 1), "egress_nomasq"},
		{"link-local stays unmasqueraded with an empty list", config6{nonMasq6: []netip.Prefix{}}, tcp6(pod6A, 40000, ll6, 80, "S"), "egress_nomasq"},
		{"a global destination in the configured list", config6{nonMasq6: []netip.Prefix{netip.MustParsePrefix("2001:db8:100::/48")}}, udp6(pod6A, 40000, remote6, 53), "egress_nomasq"},
		{"echo reply to an outside ping", config6{}, echoReply6(pod6A, remote6, 3), "egress_inbound"},
		{"another protocol (GRE)", config6{}, pkt6{tuple: tuple{47, pod6A, remote6, 0, 0}, payload: make([]byte, 24)}, "egress_other"},
		{"no next header", config6{}, pkt6{tuple: tuple{noNextHeader, pod6A, remote6, 0, 0}, payload: make([]byte, 8)}, "egress_other"},
		{"more extension headers than walked (8)", config6{}, tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop, extDstOpts, extDstOpts, extDstOpts, extDstOpts, extDstOpts, extRouting, extDstOpts), "egress_other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := envs.get(t, tc.cfg)
			in := tc.p.frame(t)
			if err := checkPacket6(ip6Of(in), false); err != nil {
				t.Fatal(err)
			}
			e.requirePassed6(t, false, in, tc.counter)
			if n := len(e.natEntries6(t)); n != 0 {
				t.Errorf("IPv6 NAT table has %d entries, want none", n)
			}
		})
	}
}

// TestIPv6HostTraffic: a packet from one of the node's own IPv6 addresses
// (global or link-local) leaves unchanged, and its tuple is reserved in
// ipm_nat6 as the reply would arrive; the reply reaches the host unchanged
// (docs/behaviour.md §8 for IPv6).
func TestIPv6HostTraffic(t *testing.T) {
	envs := newEnvCache(t)
	for _, tc := range []struct {
		name string
		p    pkt6
	}{
		{"tcp from the node's address", tcp6(node6, 45000, remote6, 443, "S")},
		{"udp from the node's address", udp6(node6, 45001, remote6, 53)},
		{"udp from another node address", udp6(node6Other, 45001, remote6, 53)},
		{"echo from the node's address", echo6(node6, remote6, 0x77)},
		{"udp from the node's link-local address to a link-local peer", udp6(node6LL, 546, ll6, 547)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := envs.get(t, config6{})
			in := tc.p.frame(t)
			e.requirePassed6(t, false, in, "egress_host")
			// The reservation, as NAT6Table.Read reports it (wherever the
			// datapath keeps it), keyed as the reply arrives.
			snap, err := maps.NewNAT6Table(e.dp).Read()
			if err != nil {
				t.Fatal(err)
			}
			wantRemote := netip.AddrPortFrom(tc.p.dst, tc.p.dport)
			if tc.p.proto == protoICMPv6 {
				wantRemote = netip.AddrPortFrom(tc.p.dst, 0)
			}
			if len(snap.Reserved) != 1 || len(snap.Flows) != 0 || snap.Reserved[0].Proto != tc.p.proto ||
				snap.Reserved[0].Node != netip.AddrPortFrom(tc.p.src, tc.p.sport) || snap.Reserved[0].Remote != wantRemote {
				t.Fatalf("IPv6 NAT table: reserved %+v, flows %+v; want only the reservation of %s for %s",
					snap.Reserved, snap.Flows, netip.AddrPortFrom(tc.p.src, tc.p.sport), wantRemote)
			}
			var reply pkt6
			switch tc.p.proto {
			case protoTCP:
				reply = tcp6(tc.p.dst, tc.p.dport, tc.p.src, tc.p.sport, "SA")
			case protoUDP:
				reply = udp6(tc.p.dst, tc.p.dport, tc.p.src, tc.p.sport)
			default:
				reply = echoReply6(tc.p.dst, tc.p.src, tc.p.sport)
			}
			e.requirePassed6(t, true, reply.frame(t), "ingress_host")
		})
	}
}

// TestIPv6HostPortCollision: a pod mapping never takes a tuple a host flow
// uses, and a new host flow on a tuple a pod mapping holds moves to another
// node port whose replies come back to the host's own port: both orders
// (docs/behaviour.md §8), with --random-fully=false so the collision is certain.
func TestIPv6HostPortCollision(t *testing.T) {
	t.Run("host first", func(t *testing.T) {
		e := newEnv6(t, config6{config: config{keepPorts: true}})
		host := udp6(node6, 46000, remote6, 53)
		e.passUnchanged(t, false, host.frame(t))
		pod := udp6(pod6A, 46000, remote6, 53)
		port := e.masquerade6(t, pod)
		if port == 46000 {
			t.Fatalf("the pod mapping took the host's tuple %s port 46000", node6)
		}
		// The host's reply still reaches the host unchanged.
		hr := udp6(remote6, 53, node6, 46000).frame(t)
		before := e.snap(t)
		r := e.ingress(t, hr)
		requireUnchanged(t, r.out, hr)
		e.expect6(t, before, map[string]uint64{"ingress_host": 1})
		e.unmasquerade6(t, replyTo6(pod, port), pod.tuple)
	})
	t.Run("pod first", func(t *testing.T) {
		e := newEnv6(t, config6{config: config{keepPorts: true}})
		pod := tcp6(pod6A, 46100, remote6, 443, "S")
		port := e.masquerade6(t, pod)
		// A new host connection on the very tuple of the pod's mapping.
		host := tcp6(node6, port, remote6, 443, "S")
		before := e.snap(t)
		r := e.egress(t, host.frame(t))
		requireVerdict(t, r, actPass)
		e.expect6(t, before, map[string]uint64{"egress_host_moved": 1})
		u := decode6(t, r.out)
		if u.src != node6 || u.sport == port {
			t.Fatalf("host flow on the pod mapping's tuple left as %v, want another port of %s", u, node6)
		}
		requireSame6(t, r.out, host.with(tuple{protoTCP, node6, remote6, u.sport, 443}).frame(t))
		requireChecksums6(t, r.out)
		// Replies: the host's to the host's own port, the pod's to the pod.
		e.unmasquerade6(t, tcp6(remote6, 443, node6, u.sport, "SA"), host.tuple)
		e.unmasquerade6(t, replyTo6(pod, port), pod.tuple)
	})
}

// TestIPv6IngressMiss: only a reply that matches a mapping exactly is
// translated (docs/behaviour.md §6): another remote port, remote address, node port or
// protocol reaches the host unchanged and is counted as a miss.
func TestIPv6IngressMiss(t *testing.T) {
	e := newEnv6(t, config6{})
	pod := tcp6(pod6A, 40000, remote6, 443, "S")
	port := e.masquerade6(t, pod)
	echo := echo6(pod6A, remote6, 0x1111)
	id := e.masquerade6(t, echo)
	for _, tc := range []struct {
		name string
		p    pkt6
	}{
		{"wrong remote port", tcp6(remote6, 444, node6, port, "SA")},
		{"wrong remote address", tcp6(remote6b, 443, node6, port, "SA")},
		{"wrong node port", tcp6(remote6, 443, node6, port+1, "SA")},
		{"wrong node address", tcp6(remote6, 443, node6Other, port, "SA")},
		{"wrong protocol", udp6(remote6, 443, node6, port)},
		{"echo reply with another identifier", echoReply6(remote6, node6, id+1)},
		{"echo reply from another remote", echoReply6(remote6b, node6, id)},
		{"echo request with the mapping's identifier", echo6(remote6, node6, id)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.frame(t)
			before := e.snap(t)
			e.passUnchanged(t, true, in)
			// (UDP to a node address opens no inbound flow: ingress_miss only.)
			e.expect6(t, before, map[string]uint64{"ingress_miss": 1})
		})
	}
	if n := len(e.natEntries6(t)); n != 4 {
		t.Errorf("IPv6 NAT table has %d entries, want the 4 of the two mappings", n)
	}
}

// TestIPv6Inbound: a UDP flow an outside host opens towards a pod's IPv6
// address (routable pod IPs) keeps the pod address in its replies
// (docs/behaviour.md §7, for IPv6).
func TestIPv6Inbound(t *testing.T) {
	e := newEnv6(t, config6{})
	in := udp6(remote6, 5000, pod6A, 53).frame(t)
	before := e.snap(t)
	e.passUnchanged(t, true, in)
	// Counted as an inbound flow (earlier datapaths also counted it as a
	// miss).
	if got, v4 := e.moved6(t, before); got["ingress_inbound"] != 1 || len(v4) != 0 || len(got) > 2 || (len(got) == 2 && got["ingress_miss"] != 1) {
		t.Errorf("IPv6 counters moved %v, IPv4 %v; want ingress_inbound once", got, v4)
	}
	e.requirePassed6(t, false, udp6(pod6A, 53, remote6, 5000).frame(t), "egress_inbound")
}

// TestIPv6NoInterfaceAddress: a new IPv6 flow through an interface without
// a global IPv6 address is dropped, never sent with the pod address
// (docs/behaviour.md §4.5, fail closed); IPv4 on the same interface is unaffected.
func TestIPv6NoInterfaceAddress(t *testing.T) {
	e := newEnv6(t, config6{noIface6: true})
	in := tcp6(pod6A, 40000, remote6, 443, "S").frame(t)
	before := e.snap(t)
	r := e.egress(t, in)
	requireVerdict(t, r, actShot)
	e.expect6(t, before, map[string]uint64{"egress_no_iface": 1})
	if n := len(e.natEntries6(t)); n != 0 {
		t.Errorf("IPv6 NAT table has %d entries", n)
	}
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
}

// TestIPv6Disabled: without --enable-ipv6 (settings.SetIPv6(false)) every
// IPv6 packet passes both programs byte for byte, counted as "other" in the
// IPv6 counters, even one that would be translated with it and even with a
// mapping in ipm_nat6.
func TestIPv6Disabled(t *testing.T) {
	e := newEnv6(t, config6{})
	pod := tcp6(pod6A, 40000, remote6, 443, "S")
	port := e.masquerade6(t, pod)
	if err := e.settings.SetIPv6(false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		ingress bool
		p       pkt6
	}{
		{"egress new tcp flow", false, tcp6(pod6A, 40001, remote6, 443, "S")},
		{"egress packet of a mapped flow", false, tcp6(pod6A, 40000, remote6, 443, "A")},
		{"egress udp", false, udp6(pod6A, 40001, remote6, 53)},
		{"egress echo", false, echo6(pod6A, remote6, 5)},
		{"egress behind hop-by-hop", false, udp6(pod6A, 40001, remote6, 53).withExts(extHopByHop)},
		{"ingress reply of a mapped flow", true, replyTo6(pod, port)},
		{"ingress udp", true, udp6(remote6, 53, node6, 40001)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.frame(t)
			before := e.snap(t)
			r, counter := e.through(t, tc.ingress, in), "egress_other"
			if tc.ingress {
				counter = "ingress_other"
			}
			requireVerdict(t, r, actPass)
			requireUnchanged(t, r.out, in)
			e.expect6(t, before, map[string]uint64{counter: 1})
		})
	}
	if n := len(e.natEntries6(t)); n != 2 {
		t.Errorf("IPv6 NAT table has %d entries, want the first mapping's 2 only", n)
	}
}

// ndFrames are neighbour discovery (133-137), MLD (130-132, 143) and
// ICMPv6 messages around them, as a node sends and receives them on its
// uplink: link-local and unspecified sources, multicast destinations, MLD
// behind a hop-by-hop Router Alert.
func ndFrames(t testing.TB) map[string][]byte {
	allNodes := netip.MustParseAddr("ff02::1")
	allRouters := netip.MustParseAddr("ff02::2")
	mldv2 := netip.MustParseAddr("ff02::16")
	solicited := netip.MustParseAddr("ff02::1:ff00:2")
	mac := []byte{1, 1, 0x02, 0, 0, 0, 0, 0x0a} // source/target link-layer address option
	tgt := node6.As16()
	target := append(append([]byte{0, 0, 0, 0}, tgt[:]...), mac...)
	na := append(append([]byte{0x60, 0, 0, 0}, tgt[:]...), 2, 1, 0x02, 0, 0, 0, 0, 0x0b)
	grp := netip.MustParseAddr("ff02::1:3").As16()
	mld := append([]byte{0, 0, 0, 0}, grp[:]...) // max response delay, reserved, group
	mldv2Report := append([]byte{0, 0, 0, 1, 4, 0, 0, 0}, grp[:]...)
	ra := append([]byte{64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}, mac...)
	redirect := append(append(append([]byte{0, 0, 0, 0}, tgt[:]...), tgt[:]...), mac...)
	return map[string][]byte{
		"router solicitation (133)":                  icmp6Other(node6LL, allRouters, icmp6RS, append([]byte{0, 0, 0, 0}, mac...)).frame(t),
		"router solicitation from ::":                icmp6Other(netip.IPv6Unspecified(), allRouters, icmp6RS, []byte{0, 0, 0, 0}).frame(t),
		"router advertisement (134)":                 icmp6Other(ll6, allNodes, icmp6RA, ra).frame(t),
		"neighbour solicitation (135)":               icmp6Other(node6LL, solicited, icmp6NS, target).frame(t),
		"neighbour solicitation, global":             icmp6Other(node6, solicited, icmp6NS, target).frame(t),
		"neighbour solicitation for dad, from ::":    icmp6Other(netip.IPv6Unspecified(), solicited, icmp6NS, target[:20]).frame(t),
		"neighbour advertisement (136)":              icmp6Other(node6LL, ll6, icmp6NA, na).frame(t),
		"neighbour advertisement from a pod address": icmp6Other(pod6A, remote6, icmp6NA, na).frame(t),
		"redirect (137)":                             icmp6Other(ll6, node6LL, icmp6Redirect, redirect).frame(t),
		"mld query (130)":                            icmp6Other(ll6, allNodes, icmp6MLDQuery, mld).withExts(extHopByHop).frame(t),
		"mld report (131)":                           icmp6Other(node6LL, netip.MustParseAddr("ff02::1:3"), icmp6MLDReport, mld).withExts(extHopByHop).frame(t),
		"mld done (132)":                             icmp6Other(node6LL, allRouters, icmp6MLDDone, mld).withExts(extHopByHop).frame(t),
		"mldv2 report (143)":                         icmp6Other(node6LL, mldv2, icmp6MLDv2Report, mldv2Report).withExts(extHopByHop).frame(t),
		"mldv2 report from ::":                       icmp6Other(netip.IPv6Unspecified(), mldv2, icmp6MLDv2Report, mldv2Report).withExts(extHopByHop).frame(t),
		"echo request with code 1":                   func() []byte { p := echo6(pod6A, remote6, 1); p.icmpCode = 1; return p.frame(t) }(),
	}
}

// TestIPv6NeighbourDiscovery: neighbour discovery, router solicitation and
// advertisement and MLD are never touched, in either direction, whatever
// their addresses (docs/behaviour.md §5.7): byte-identical, "other", and no state.
func TestIPv6NeighbourDiscovery(t *testing.T) {
	e := newEnv6(t, config6{config: config{nonMasq: []netip.Prefix{}}, nonMasq6: []netip.Prefix{}, masqLinkLocal6: true})
	for name, in := range ndFrames(t) {
		t.Run(name, func(t *testing.T) {
			if err := checkFrame6(in); err != nil {
				t.Fatal(err)
			}
			for _, dir := range []string{"egress", "ingress"} {
				before := e.snap(t)
				r := e.through(t, dir != "egress", in)
				requireVerdict(t, r, actPass)
				requireUnchanged(t, r.out, in)
				e.expect6(t, before, map[string]uint64{dir + "_other": 1})
			}
		})
	}
	if n := len(e.natEntries6(t)); n != 0 {
		t.Errorf("IPv6 NAT table has %d entries", n)
	}
	if n := mapLen(t, e.dp.Maps.IpmInbound6); n != 0 {
		t.Errorf("ipm_inbound6 has %d entries", n)
	}
}

// TestIPv6Malformed: truncated and malformed IPv6 packets pass both
// programs byte for byte and are counted as malformed, also when a
// well-formed packet of the same flow is translated (docs/behaviour.md §13, as
// TestMalformed does for IPv4: a transport header must be whole, within
// the packet and within its payload length).
func TestIPv6Malformed(t *testing.T) {
	envs := newEnvCache(t)
	type build func(t testing.TB, ingress bool) []byte
	base := func(proto uint8) func(t testing.TB, ingress bool) pkt6 {
		return func(t testing.TB, ingress bool) pkt6 {
			switch {
			case proto == protoTCP && !ingress:
				return tcp6(pod6A, 40000, remote6, 443, "S")
			case proto == protoTCP:
				return tcp6(remote6, 443, node6, 40000, "SA")
			case proto == protoUDP && !ingress:
				return udp6(pod6A, 40001, remote6, 53)
			case proto == protoUDP:
				return udp6(remote6, 53, node6, 40001)
			case !ingress:
				return echo6(pod6A, remote6, 0x4242)
			}
			return echoReply6(remote6, node6, 0x4242)
		}
	}
	cut := func(proto uint8, exts []uint8, keep func(l4 int) int) build {
		return func(t testing.TB, ingress bool) []byte {
			f := base(proto)(t, ingress).withExts(exts...).frame(t)
			i, _ := walk6(ip6Of(f), 16)
			f = f[:keep(14+i.l4)]
			return setPayloadLen6(f, len(f)-54)
		}
	}
	for _, tc := range []struct {
		name  string
		build build
	}{
		{"ipv6 header only, next header tcp", cut(protoTCP, nil, func(l4 int) int { return l4 })},
		{"tcp header cut to 10 bytes", cut(protoTCP, nil, func(l4 int) int { return l4 + 10 })},
		{"tcp header cut to 16 bytes (no checksum)", cut(protoTCP, nil, func(l4 int) int { return l4 + 16 })},
		{"tcp header cut to 19 bytes", cut(protoTCP, nil, func(l4 int) int { return l4 + 19 })},
		{"udp header cut to 3 bytes", cut(protoUDP, nil, func(l4 int) int { return l4 + 3 })},
		{"udp header cut to 4 bytes (ports only)", cut(protoUDP, nil, func(l4 int) int { return l4 + 4 })},
		{"udp header cut to 7 bytes", cut(protoUDP, nil, func(l4 int) int { return l4 + 7 })},
		{"icmpv6 header cut to 4 bytes", cut(protoICMPv6, nil, func(l4 int) int { return l4 + 4 })},
		{"icmpv6 echo cut to 7 bytes", cut(protoICMPv6, nil, func(l4 int) int { return l4 + 7 })},
		{"hop-by-hop header cut to 1 byte", cut(protoTCP, []uint8{extHopByHop}, func(l4 int) int { return l4 - 8 + 1 })},
		{"destination options longer than the packet", cut(protoTCP, []uint8{extDstOpts}, func(l4 int) int { return l4 - 16 + 8 })},
		{"fragment header cut to 6 bytes", cut(protoUDP, []uint8{extFragment}, func(l4 int) int { return l4 - 8 + 6 })},
		{"tcp behind a routing header, cut to 12 bytes", cut(protoTCP, []uint8{extRouting}, func(l4 int) int { return l4 + 12 })},
		{"ip version 4 behind the IPv6 ethertype", func(t testing.TB, in bool) []byte {
			f := base(protoTCP)(t, in).frame(t)
			f[14] = 0x40 | f[14]&0x0f
			return f
		}},
		{"ip version 0", func(t testing.TB, in bool) []byte {
			f := base(protoUDP)(t, in).frame(t)
			f[14] &= 0x0f
			return f
		}},
		{"payload length 0 (not GSO) with a tcp segment behind it", func(t testing.TB, in bool) []byte {
			return setPayloadLen6(base(protoTCP)(t, in).frame(t), 0)
		}},
		{"payload length ends inside the tcp header", func(t testing.TB, in bool) []byte {
			return setPayloadLen6(base(protoTCP)(t, in).frame(t), 10)
		}},
		{"payload length ends inside the udp header", func(t testing.TB, in bool) []byte {
			return setPayloadLen6(base(protoUDP)(t, in).frame(t), 6)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, dir := range []string{"egress", "ingress"} {
				t.Run(dir, func(t *testing.T) {
					e := envs.get(t, config6{config: config{keepPorts: true}})
					ingress := dir == "ingress"
					if ingress {
						// The flows of the ingress frames, mapped to the
						// pods' own ports.
						for _, p := range []pkt6{tcp6(pod6A, 40000, remote6, 443, "S"), udp6(pod6A, 40001, remote6, 53), echo6(pod6A, remote6, 0x4242)} {
							if port := e.masquerade6(t, p); port != p.sport {
								t.Fatalf("mapping %v got node port %d", p.tuple, port)
							}
						}
					}
					entries := len(e.natEntries6(t))
					in := tc.build(t, ingress)
					if refusedByTestRun(in) {
						t.Fatalf("BPF_PROG_TEST_RUN refuses the %d-byte frame", len(in))
					}
					before := e.snap(t)
					r := e.through(t, ingress, in)
					got, v4 := e.moved6(t, before)
					if r.ret != actPass {
						t.Errorf("verdict %s, counters %v: want the frame passed unchanged", verdictName(r.ret), got)
					} else {
						requireUnchanged(t, r.out, in)
					}
					if len(got) != 1 || got[dir+"_malformed"] != 1 || len(v4) != 0 {
						t.Errorf("counters moved IPv6 %v, IPv4 %v; want %s_malformed once", got, v4, dir)
					}
					if n := len(e.natEntries6(t)); n != entries {
						t.Errorf("IPv6 NAT table went from %d to %d entries", entries, n)
					}
				})
			}
		})
	}
}

// skbGSO is a struct __sk_buff (192 bytes, UAPI) as BPF_PROG_TEST_RUN's
// ctx_in, with only gso_size (offset 176) set: the test-run skb is then a
// GSO packet, as a BIG TCP super-packet is.
func skbGSO(size uint32) [192]byte {
	var ctx [192]byte
	binary.NativeEndian.PutUint32(ctx[176:], size)
	return ctx
}

// TestIPv6PayloadLengthZero: an IPv6 GSO packet with payload length 0 is
// what the stack hands tc egress for a BIG TCP super-packet (more than
// 64 KiB; recent kernels no longer insert a jumbo hop-by-hop option). Like
// IPv4's tot_len 0, it is translated, its checksum updated over the frame's
// whole length. Without GSO, payload length 0 means an empty payload: see
// TestIPv6Malformed.
func TestIPv6PayloadLengthZero(t *testing.T) {
	e := newEnv6(t, config6{})
	p := tcp6(pod6A, 40000, remote6, 443, "S")
	in := setPayloadLen6(p.frame(t), 0)
	before := e.snap(t)
	opts := ebpf.RunOptions{Data: append([]byte(nil), in...), DataOut: make([]byte, len(in)+256), Context: skbGSO(1400)}
	ret, err := e.dp.Programs.IpmEgress.Run(&opts)
	if err != nil {
		t.Fatalf("test run with gso_size: %v", err)
	}
	requireVerdict(t, result{ret: int32(ret)}, actPass)
	e.expect6(t, before, map[string]uint64{"egress_new_flow": 1})
	out := append([]byte(nil), opts.DataOut...)
	setPayloadLen6(out, len(out)-54)
	u := decode6(t, out)
	if u.src != node6 || u.dst != remote6 || u.dport != 443 || !e.inRanges(u.sport) {
		t.Fatalf("left as %v, want from %s", u, node6)
	}
	requireSame6(t, out, p.with(tuple{protoTCP, node6, remote6, u.sport, 443}).frame(t))
	requireChecksums6(t, out)
}
