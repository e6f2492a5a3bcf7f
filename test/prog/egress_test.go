package prog

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// inRanges reports whether port is in one of the configured ranges.
func (e *env) inRanges(port uint16) bool {
	for _, r := range e.ports {
		if port >= r.First && port <= r.Last {
			return true
		}
	}
	return false
}

// masquerade runs p through egress and requires the translation docs/behaviour.md §5
// describes: the source becomes the node address and a node port from the
// configured ranges (an ICMP echo identifier from the 16-bit space), every
// other byte stays, every checksum is right (a UDP checksum of 0 stays 0). It
// returns the node port or identifier.
func (e *env) masquerade(t testing.TB, p pkt) uint16 {
	t.Helper()
	decode4 := func(t testing.TB, b []byte) tuple { return decode(t, b).tuple }
	out, d := e.egressMasqueraded(t, p.frame(t), p.tuple, decode4, nodeAddr, protoICMP)
	want := p.with(tuple{p.proto, nodeAddr, p.dst, d.sport, p.dport}).frame(t)
	requireSameExceptChecksums(t, out, want)
	requireChecksums(t, out)
	if p.noUDPCsum && udpChecksum(out) != 0 {
		t.Fatalf("UDP checksum 0x%04x, want 0 (none) kept", udpChecksum(out))
	}
	return d.sport
}

// egressMasqueraded runs in, the frame of the tuple sent, through egress
// and requires it to pass with only the source changed (read with decode),
// to node and, but for the echo protocol echo (its identifier comes from
// the 16-bit space), a port of the configured ranges. It returns the frame
// that left and its tuple.
func (e *env) egressMasqueraded(t testing.TB, in []byte, sent tuple, decode func(testing.TB, []byte) tuple,
	node netip.Addr, echo uint8) (out []byte, got tuple) {
	t.Helper()
	r := e.egress(t, in)
	requireVerdict(t, r, actPass)
	out, got = r.out, decode(t, r.out)
	if got.src != node {
		t.Fatalf("source %s, want the node's address %s\n%s", got.src, node, hexdump(out))
	}
	if got.proto != sent.proto || got.dst != sent.dst || got.dport != sent.dport {
		t.Fatalf("output %v, want only the source of %v changed", got, sent)
	}
	if sent.proto != echo && !e.inRanges(got.sport) {
		t.Fatalf("node port %d outside --to-ports %v", got.sport, e.ports)
	}
	return out, got
}

// requireMapping checks the NAT table holds exactly the two halves of the
// mapping of orig to node:nodePort, with the expected keys and values.
func (e *env) requireMapping(t testing.TB, orig tuple, nodePort uint16, since time.Duration) {
	t.Helper()
	ov, iv := requireHalves(t, e.natEntries(t), natKey, protoICMP, func(v maps.NATEntry) natHalf {
		return natHalf{fromBE32(v.Addr), fromBE16(v.Port), v.Kind, v.Ifindex, v.CreatedNs}
	}, orig, nodeAddr, nodePort, since)
	if ov.LastSeenNs != ov.CreatedNs || iv.LastSeenNs != 0 {
		t.Errorf("last seen: egress %d (want %d, its creation), ingress %d (want 0: no reply yet)", ov.LastSeenNs, ov.CreatedNs, iv.LastSeenNs)
	}
	requireOneFlow(t, "NATTable", e.nat, orig, nodeAddr, nodePort)
}

// natHalf is what requireHalves checks of a raw NAT half of either family.
type natHalf struct {
	addr      netip.Addr
	port      uint16
	kind      loader.BPFIpmKind
	ifindex   uint32
	createdNs uint64
}

// requireHalves checks that the raw entries all (of one family, keyed as
// key makes them; icmp is the family's echo protocol) hold exactly the two
// halves of the mapping of orig to node:nodePort, made since since, and
// returns them.
func requireHalves[K comparable, V any](t testing.TB, all map[K]V, key func(loader.BPFIpmDir, uint8, netip.Addr, netip.Addr, uint16, uint16) K,
	icmp uint8, decode func(V) natHalf, orig tuple, node netip.Addr, nodePort uint16, since time.Duration) (ov, iv V) {
	t.Helper()
	until := maps.Now()
	out := key(dirEgress, orig.proto, orig.src, orig.dst, orig.sport, orig.dport)
	rsport := orig.dport
	if orig.proto == icmp {
		rsport = 0
	}
	in := key(dirIngress, orig.proto, orig.dst, node, rsport, nodePort)
	if len(all) != 2 {
		t.Errorf("NAT table of %s has %d entries, want the 2 halves of one mapping: %+v", node, len(all), all)
	}
	ov, ok := all[out]
	if !ok {
		t.Fatalf("no egress half %+v in %+v", out, all)
	}
	iv, ok = all[in]
	if !ok {
		t.Fatalf("no ingress half %+v in %+v", in, all)
	}
	o, i := decode(ov), decode(iv)
	if o.addr != node || o.port != nodePort || o.kind != kindMasq || o.ifindex != testIfindex {
		t.Errorf("egress half %+v, want %s port %d kind masq ifindex %d", ov, node, nodePort, testIfindex)
	}
	if i.addr != orig.src || i.port != orig.sport || i.kind != kindMasq || i.ifindex != testIfindex {
		t.Errorf("ingress half %+v, want %s port %d kind masq ifindex %d", iv, orig.src, orig.sport, testIfindex)
	}
	for name, h := range map[string]natHalf{"egress": o, "ingress": i} {
		if c := time.Duration(h.createdNs); c < since-clockSlack || c > until {
			t.Errorf("%s half created at %v, want within [%v, %v] of CLOCK_MONOTONIC", name, c, since, until)
		}
	}
	return ov, iv
}

// requireOneFlow checks that table (named name) reads as the one flow of
// orig through node:nodePort, with both halves.
func requireOneFlow(t testing.TB, name string, table *maps.NATTable, orig tuple, node netip.Addr, nodePort uint16) {
	t.Helper()
	snap, err := table.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Flows) != 1 || snap.Orphans != 0 {
		t.Fatalf("%s.Read: %d flows, %d orphans; want 1 flow, no orphan", name, len(snap.Flows), snap.Orphans)
	}
	f := snap.Flows[0]
	wantPod := netip.AddrPortFrom(orig.src, orig.sport)
	wantRemote := netip.AddrPortFrom(orig.dst, orig.dport)
	wantNode := netip.AddrPortFrom(node, nodePort)
	if f.Proto != orig.proto || f.Pod != wantPod || f.Remote != wantRemote || f.Node != wantNode || !f.HasIn {
		t.Errorf("%s.Read flow %v (has reply half %v), want %s -> %s via %s", name, f, f.HasIn, wantPod, wantRemote, wantNode)
	}
}

// TestEgressMasquerade: the first packet of a flow from a pod to a
// masqueraded destination creates a mapping and leaves with the node address
// and a node port (docs/behaviour.md §4, §5); both halves are in the NAT table.
func TestEgressMasquerade(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  config
		p    pkt
	}{
		{"tcp syn", config{}, tcpPkt(podA, 40000, remote, 443, "S")},
		{"udp", config{}, udpPkt(podA, 40001, remote, 53)},
		{"udp checksum 0 stays 0", config{}, udpPkt(podA, 40002, remote, 53).noUDPChecksum()},
		{"icmp echo request", config{}, echoRequest(podA, remote, 0x4242)},
		{"icmp echo id 0", config{}, echoRequest(podA, remote, 0)},
		{"tcp syn, 4 bytes of ip options", config{}, withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 4)},
		{"tcp syn, 40 bytes of ip options (ihl 15)", config{}, withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 40)},
		{"udp, 8 bytes of ip options", config{}, withOptions(udpPkt(podA, 40000, remote, 53), 8)},
		{"udp checksum 0, ip options", config{}, withOptions(udpPkt(podA, 40000, remote, 53), 12).noUDPChecksum()},
		{"icmp, ip options", config{}, withOptions(echoRequest(podA, remote, 7), 4)},
		{"udp, empty payload", config{}, func() pkt { p := udpPkt(podA, 40000, remote, 9); p.payload = nil; return p }()},
		{"tcp syn, port 1", config{}, tcpPkt(podA, 1, remote, 443, "S")},
		{"tcp syn, port 65535 to 65535", config{}, tcpPkt(podA, 65535, remote, 65535, "S")},
		{"link-local with masqLinkLocal", config{masqLinkLocal: true}, tcpPkt(podA, 40000, metadata, 80, "S")},
		{"in-cluster with an empty nonMasqueradeCIDRs", config{nonMasq: []netip.Prefix{}}, udpPkt(podA, 40000, inCluster, 53)},
		{"private destination outside the configured list", config{nonMasq: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, udpPkt(podA, 40000, netip.MustParseAddr("10.9.3.4"), 53)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg)
			before := e.readCounters(t)
			since := maps.Now()
			port := e.masquerade(t, tc.p)
			e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1})
			e.requireMapping(t, tc.p.tuple, port, since)
		})
	}
}

// TestEgressReusesMapping: later packets of a flow leave with the same node
// port; another pod's flow to the same destination gets another one.
func TestEgressReusesMapping(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first pkt
		later []pkt
	}{
		{"tcp", tcpPkt(podA, 40000, remote, 443, "S"), []pkt{
			tcpPkt(podA, 40000, remote, 443, "A"),
			tcpPkt(podA, 40000, remote, 443, "PA"),
			tcpPkt(podA, 40000, remote, 443, "S"), // a retransmitted SYN
			tcpPkt(podA, 40000, remote, 443, "FA"),
		}},
		{"udp", udpPkt(podA, 40000, remote, 53), []pkt{udpPkt(podA, 40000, remote, 53), udpPkt(podA, 40000, remote, 53).noUDPChecksum()}},
		{"icmp", echoRequest(podA, remote, 99), []pkt{echoRequest(podA, remote, 99), echoRequest(podA, remote, 99)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{})
			since := maps.Now()
			port := e.masquerade(t, tc.first)
			before := e.readCounters(t)
			for i, p := range tc.later {
				if got := e.masquerade(t, p); got != port {
					t.Fatalf("packet %d: node port %d, want the flow's %d", i+2, got, port)
				}
			}
			e.expectCounters(t, before, map[string]uint64{"egress_translated": uint64(len(tc.later))})
			e.requireMapping(t, tc.first.tuple, port, since)

			other := tc.first.with(tuple{tc.first.proto, podB, tc.first.dst, tc.first.sport, tc.first.dport})
			if got := e.masquerade(t, other); got == port {
				t.Fatalf("%v got node port %d, already the mapping of %v", other.tuple, got, tc.first.tuple)
			}
		})
	}
}

// TestEgressPassUnchanged: packets of pods that are not masqueraded leave
// byte for byte as they came, create no state, and count why (docs/behaviour.md §4). The
// node's own traffic is in TestHostTraffic.
func TestEgressPassUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     config
		p       pkt
		counter string
	}{
		{"tcp syn to a non-masquerade cidr", config{}, tcpPkt(podA, 40000, inCluster, 443, "S"), "egress_nomasq"},
		{"udp to a non-masquerade cidr", config{}, udpPkt(podA, 40000, inCluster, 53), "egress_nomasq"},
		{"icmp to a non-masquerade cidr", config{}, echoRequest(podA, inCluster, 1), "egress_nomasq"},
		{"to 172.16.0.0/12", config{}, udpPkt(podA, 40000, netip.MustParseAddr("172.20.1.1"), 53), "egress_nomasq"},
		{"to 192.168.0.0/16", config{}, udpPkt(podA, 40000, netip.MustParseAddr("192.168.255.255"), 53), "egress_nomasq"},
		{"to a configured /32", config{nonMasq: []netip.Prefix{netip.MustParsePrefix("203.0.113.10/32")}}, tcpPkt(podA, 40000, remote, 443, "S"), "egress_nomasq"},
		{"link-local by default", config{}, tcpPkt(podA, 40000, metadata, 80, "S"), "egress_nomasq"},
		{"link-local with an empty nonMasqueradeCIDRs", config{nonMasq: []netip.Prefix{}}, udpPkt(podA, 40000, netip.MustParseAddr("169.254.0.1"), 53), "egress_nomasq"},
		{"icmp echo reply from a pod (to an outside ping)", config{}, echoReply(podA, remote, 3), "egress_inbound"},
		{"icmp timestamp request", config{}, func() pkt { p := echoRequest(podA, remote, 3); p.icmpType = 13; return p }(), "egress_other"},
		{"icmp echo request, code 1", config{}, func() pkt { p := echoRequest(podA, remote, 3); p.icmpCode = 1; return p }(), "egress_other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg)
			e.requireEgressUnchanged(t, tc.p, tc.counter)
			if n := len(e.natEntries(t)); n != 0 {
				t.Errorf("NAT table has %d entries, want none", n)
			}
		})
	}
}

// TestEgressNoInterfaceAddress: until the agent knows the interface's
// address, a new flow fails closed instead of leaking the pod address.
func TestEgressNoInterfaceAddress(t *testing.T) {
	e := newEnv(t, config{noIfaceAddr: true})
	before := e.readCounters(t)
	requireVerdict(t, e.egress(t, tcpPkt(podA, 40000, remote, 443, "S").frame(t)), actShot)
	e.expectCounters(t, before, map[string]uint64{"egress_no_iface": 1})
	if n := len(e.natEntries(t)); n != 0 {
		t.Errorf("NAT table has %d entries, want none", n)
	}
}

// TestEgressConfigChange: the masquerade decision is made on a flow's first
// packet and kept (docs/behaviour.md §4): a masqueraded flow stays masqueraded when its
// destination joins the non-masquerade set, a connection opened unmasqueraded
// is not rewritten mid-stream when its destination leaves it, and new flows
// follow the new set.
func TestEgressConfigChange(t *testing.T) {
	e := newEnv(t, config{})
	masqd := tcpPkt(podA, 40000, remote, 443, "S")
	port := e.masquerade(t, masqd)
	plain := tcpPkt(podA, 40001, inCluster, 443, "S")
	if r := e.egress(t, plain.frame(t)); r.ret != actPass || string(r.out) != string(plain.frame(t)) {
		t.Fatalf("SYN to %s: changed or dropped", inCluster)
	}

	// remote joins the set, 10.0.0.0/8 leaves it.
	e.applyNonMasq(t, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, false)

	before := e.readCounters(t)
	if got := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "PA")); got != port {
		t.Fatalf("established flow: node port %d, want %d", got, port)
	}
	e.expectCounters(t, before, map[string]uint64{"egress_translated": 1})

	e.requirePassed(t, false, tcpPkt(podA, 40001, inCluster, 443, "PA").frame(t), "egress_tcp_no_map")
	e.requirePassed(t, false, tcpPkt(podA, 40002, remote, 443, "S").frame(t), "egress_nomasq")

	before = e.readCounters(t)
	e.masquerade(t, udpPkt(podA, 40003, inCluster, 53))
	e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1})
}

// TestEntryFlags: FIN and RST are recorded in the half of the direction that
// carried them, which decides the flow's timeout (docs/flow-state.md); the
// remote's are copied into the egress half as IPM_F_PEER_FIN and IPM_F_RST
// (bpf/reply_mirror.h). A connection is
// closing once both sides sent a FIN (one FIN is a half-close, which may go
// on carrying data); the remote's FIN and RST count only inside the pod's
// window (TestOutOfWindowReset).
func TestEntryFlags(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	port := e.masquerade(t, syn)
	state := func() string {
		snap, err := e.nat.Read()
		if err != nil || len(snap.Flows) != 1 {
			t.Fatalf("read NAT table: %v, %d flows", err, len(snap.Flows))
		}
		return snap.Flows[0].State()
	}
	if s := state(); s != "opening" {
		t.Errorf("after SYN: state %q, want opening", s)
	}
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 443, nodeAddr, port, "SA").frame(t)), actPass)
	if s := state(); s != "established" {
		t.Errorf("after SYN-ACK: state %q, want established", s)
	}
	// The pod acknowledges up to 0x0a0b0c0d (tcpPkt's default).
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "FA"))
	if s := state(); s != "established" {
		t.Errorf("after the pod's FIN (half-closed): state %q, want established", s)
	}
	fin := tcpPkt(remote, 443, nodeAddr, port, "FA")
	fin.seq = 0x0a0b0c0d
	requireVerdict(t, e.ingress(t, fin.frame(t)), actPass)
	if s := state(); s != "closing" {
		t.Errorf("after both FINs: state %q, want closing", s)
	}
	rst := tcpPkt(remote, 443, nodeAddr, port, "R")
	rst.seq = 0x0a0b0c0d
	requireVerdict(t, e.ingress(t, rst.frame(t)), actPass)
	if s := state(); s != "reset" {
		t.Errorf("after RST: state %q, want reset", s)
	}
	all := e.natEntries(t)
	out := all[natKey(dirEgress, protoTCP, podA, remote, 40000, 443)]
	in := all[natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)]
	// The egress half: the pod's own FIN in its flags, and the copy of
	// the reply half's state (a reply came, the remote's FIN and RST) in
	// a byte of its own, so the two directions never write the same byte.
	const finFlag = loader.BPFIpmEntryFlagsIPM_F_FIN
	wantCopy := flagRst | flagReplied | flagPeerFin
	if out.Flags&(finFlag|flagRst) != finFlag || out.ReplyFlags != wantCopy || in.Flags&(finFlag|flagRst) != finFlag|flagRst {
		t.Errorf("flags: egress %#x (want FIN, not RST), its copy %#x (want %#x), ingress %#x (want FIN|RST)", out.Flags, out.ReplyFlags, wantCopy, in.Flags)
	}
	if in.LastSeenNs == 0 {
		t.Errorf("ingress half never touched by the replies")
	}
}
