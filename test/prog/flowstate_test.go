package prog

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// actRedirect is TC_ACT_REDIRECT: the program redirected the packet (here:
// a reset turned back to the interface's ingress).
const actRedirect int32 = 7

// requireResetFor checks that out is the RST answering the pod's segment p:
// MAC addresses swapped, addresses and ports swapped, sequence number from
// p's acknowledgement, RST|ACK acknowledging p's payload, no payload, every
// checksum right (recomputed from scratch).
func requireResetFor(t testing.TB, out []byte, p pkt, in []byte) {
	t.Helper()
	pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if eth == nil || ip == nil || tcp == nil {
		t.Fatalf("output is not an Ethernet/IPv4/TCP frame\n%s", hexdump(out))
	}
	if eth.DstMAC.String() != macA.String() || eth.SrcMAC.String() != macB.String() {
		t.Errorf("MACs %s -> %s, want swapped %s -> %s", eth.SrcMAC, eth.DstMAC, macB, macA)
	}
	if ip.SrcIP.String() != p.dst.String() || ip.DstIP.String() != p.src.String() ||
		uint16(tcp.SrcPort) != p.dport || uint16(tcp.DstPort) != p.sport {
		t.Errorf("reset %s:%d -> %s:%d, want %s:%d -> %s:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort, p.dst, p.dport, p.src, p.sport)
	}
	if !tcp.RST || !tcp.ACK || tcp.SYN || tcp.FIN || tcp.PSH || len(tcp.Payload) != 0 {
		t.Errorf("reset flags/payload wrong: %+v", tcp)
	}
	orig := decode(t, in).tcp
	seg := uint32(len(orig.Payload))
	if orig.SYN {
		seg++
	}
	if orig.FIN {
		seg++
	}
	if tcp.Seq != orig.Ack || tcp.Ack != orig.Seq+seg {
		t.Errorf("reset seq %#x ack %#x, want %#x %#x", tcp.Seq, tcp.Ack, orig.Ack, orig.Seq+seg)
	}
	if int(ip.Length) != 40 || len(out) < 54 {
		t.Errorf("reset IP length %d, frame %d bytes", ip.Length, len(out))
	}
	requireChecksums(t, out[:54])
}

// requireEgressUnchanged runs p through egress and requires it passed
// byte for byte, counted once as counter.
func (e *env) requireEgressUnchanged(t testing.TB, p pkt, counter string) {
	t.Helper()
	in := p.frame(t)
	e.requirePassed(t, false, in, counter)
}

// TestUnknownMidStreamReset: a pod's TCP segment without SYN and without a
// mapping, towards a masqueraded destination (its mapping expired, was
// evicted or lost), never leaves with the pod address: it becomes a RST
// back to the pod, so the application fails at once instead of hanging. A
// RST is never answered with a reset: it is dropped.
func TestUnknownMidStreamReset(t *testing.T) {
	e := newEnv(t, config{})
	for _, p := range []pkt{
		tcpPkt(podA, 40000, remote, 443, "PA"),
		tcpPkt(podA, 40000, remote, 443, "A"),
		tcpPkt(podA, 40000, remote, 443, "FA"),
		tcpPkt(podA, 80, remote, 51000, "SA"), // answer to a SYN from outside never seen
	} {
		in := p.frame(t)
		before := e.readCounters(t)
		r := e.egress(t, in)
		requireVerdict(t, r, actRedirect)
		requireResetFor(t, r.out, p, in)
		e.expectCounters(t, before, map[string]uint64{"egress_tcp_reset": 1})
	}
	rst := tcpPkt(podA, 40000, remote, 443, "R").frame(t)
	before := e.readCounters(t)
	requireVerdict(t, e.egress(t, rst), actShot)
	e.expectCounters(t, before, map[string]uint64{"egress_tcp_unknown_drop": 1})

	// The case that matters: a live connection whose mapping expired.
	e.masquerade(t, tcpPkt(podB, 41000, remote, 443, "S"))
	e.deleteEntries(t, nil)
	mid := tcpPkt(podB, 41000, remote, 443, "PA")
	in := mid.frame(t)
	r := e.egress(t, in)
	requireVerdict(t, r, actRedirect)
	requireResetFor(t, r.out, mid, in)
	if n := len(e.natEntries(t)); n != 0 {
		t.Errorf("NAT table has %d entries, want none", n)
	}
}

// TestExemptTCPPasses: mid-stream segments of connections known to be exempt
// pass unchanged: opened from outside (the SYN arrived on ingress), or
// opened while the destination was not masqueraded (the pod's SYN, through
// the /24 fast path and through the trie).
func TestExemptTCPPasses(t *testing.T) {
	e := newEnv(t, config{nonMasq: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("198.18.0.1/32")}})
	before := e.readCounters(t)
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 51000, podA, 80, "S").frame(t)), actPass)
	e.expectCounters(t, before, map[string]uint64{"ingress_inbound": 1})
	// A segment from outside that is not a SYN records nothing.
	requireVerdict(t, e.ingress(t, tcpPkt(remote2, 51000, podA, 80, "A").frame(t)), actPass)

	trie := netip.MustParseAddr("198.18.0.1")
	for _, syn := range []pkt{tcpPkt(podB, 40000, inCluster, 443, "S"), tcpPkt(podB, 40001, trie, 443, "S")} {
		requireVerdict(t, e.egress(t, syn.frame(t)), actPass)
	}
	// The non-masquerade set loses both: only the recorded connections pass.
	e.applyNonMasq(t, []netip.Prefix{}, true)
	for _, tc := range []struct {
		p       pkt
		counter string
	}{
		{tcpPkt(podA, 80, remote, 51000, "SA"), "egress_inbound"},
		{tcpPkt(podA, 80, remote, 51000, "PA"), "egress_inbound"},
		{tcpPkt(podB, 40000, inCluster, 443, "PA"), "egress_tcp_no_map"},
		{tcpPkt(podB, 40001, trie, 443, "PA"), "egress_tcp_no_map"},
	} {
		e.requireEgressUnchanged(t, tc.p, tc.counter)
	}
	unknown := tcpPkt(podA, 80, remote2, 51000, "SA")
	in := unknown.frame(t)
	r := e.egress(t, in)
	requireVerdict(t, r, actRedirect)
	requireResetFor(t, r.out, unknown, in)
}

// TestSynRestartsMapping: a client that closes with a RST and reconnects
// from the same port gets a fresh mapping (no inherited RST, new times, no
// reply yet), not one that lives 10 s after going quiet.
func TestSynRestartsMapping(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	port := e.masquerade(t, syn)
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 443, nodeAddr, port, "SA").frame(t)), actPass)
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "RA"))
	outKey := natKey(dirEgress, protoTCP, podA, remote, 40000, 443)
	inKey := natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)
	if out := e.natEntries(t)[outKey]; out.Flags&loader.BPFIpmEntryFlagsIPM_F_RST == 0 {
		t.Fatalf("RST not recorded: flags %d", out.Flags)
	}
	created := e.natEntries(t)[outKey].CreatedNs
	time.Sleep(20 * time.Millisecond)
	if got := e.masquerade(t, syn); got != port {
		t.Fatalf("reconnect got node port %d, want the mapping's %d", got, port)
	}
	all := e.natEntries(t)
	out, in := all[outKey], all[inKey]
	if out.Flags&3 != 0 || in.Flags != 0 || in.LastSeenNs != 0 || out.CreatedNs <= created {
		t.Errorf("after the new SYN: egress flags %d created %d (was %d), ingress flags %d last seen %d; want a fresh mapping",
			out.Flags, out.CreatedNs, created, in.Flags, in.LastSeenNs)
	}
	snap, err := e.nat.Read()
	if err != nil || len(snap.Flows) != 1 || snap.Flows[0].State() != "opening" {
		t.Fatalf("state after reconnect: %v %+v, want one opening flow", err, snap.Flows)
	}
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 443, nodeAddr, port, "SA").frame(t)), actPass)
	if snap, _ = e.nat.Read(); snap.Flows[0].State() != "established" {
		t.Errorf("state after the new SYN-ACK: %s, want established", snap.Flows[0].State())
	}
}

// TestOutOfWindowReset: a RST or FIN from the remote counts only inside the
// pod's receive window (from the pod's last ACK and window, scaled by its
// SYN's window scale); a blind one is translated (the pod judges it itself)
// but leaves the mapping's lifetime alone.
func TestOutOfWindowReset(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	syn.wscale = 7 + 1 // scale 7
	port := e.masquerade(t, syn)
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 443, nodeAddr, port, "SA").frame(t)), actPass)
	ack := tcpPkt(podA, 40000, remote, 443, "A")
	ack.ack, ack.win = 1_000_000, 100 // window 100 << 7 = 12800 bytes
	e.masquerade(t, ack)
	inKey := natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)
	for _, tc := range []struct {
		flags string
		seq   uint32
		ok    bool
	}{
		{"R", 2_000_000, false},
		{"R", 999_999, false},
		{"R", 1_000_000 + 12801, false},
		{"FA", 1_000_000 + 20000, false},
		{"FA", 1_000_000 - 20000, false},
		{"R", 1_000_000 + 12800, true},
		{"R", 1_000_000, true},
		{"FA", 1_000_000 - 100, true},
	} {
		clearFlags := func() {
			v := e.natEntries(t)[inKey]
			v.Flags = 0
			if err := e.dp.Maps.IpmNat4.Put(&inKey, &v); err != nil {
				t.Fatal(err)
			}
		}
		clearFlags()
		p := tcpPkt(remote, 443, nodeAddr, port, tc.flags)
		p.seq = tc.seq
		before := e.readCounters(t)
		r := e.ingress(t, p.frame(t))
		requireVerdict(t, r, actPass)
		if d := decode(t, r.out); d.dst != podA || d.dport != 40000 {
			t.Errorf("%s seq %d: not translated to the pod: %v", tc.flags, tc.seq, d.tuple)
		}
		got := e.natEntries(t)[inKey].Flags&3 != 0
		if got != tc.ok {
			t.Errorf("%s seq %d (pod acked 1000000, window 12800): recorded %v, want %v", tc.flags, tc.seq, got, tc.ok)
		}
		want := "ingress_translated"
		if !tc.ok {
			want = "ingress_tcp_implausible"
		}
		e.expectCounters(t, before, map[string]uint64{want: 1})
	}
}

// TestInboundUDPRecords: a UDP flow opened from outside stays exempt while
// the pod keeps answering, however quiet the remote; a remote inside the
// non-masquerade set is not recorded (its replies pass anyway).
func TestInboundUDPRecords(t *testing.T) {
	e := newEnv(t, config{})
	requireVerdict(t, e.ingress(t, udpPkt(remote, 51000, podA, 53).frame(t)), actPass)
	k := natKey(dirEgress, protoUDP, podA, remote, 53, 51000)
	var v loader.BPFIpmInbound
	if err := e.dp.Maps.IpmInbound4.Lookup(&k, &v); err != nil {
		t.Fatalf("inbound flow not recorded: %v", err)
	}
	v.LastSeenNs = uint64(maps.Now() - 170*time.Second)
	if err := e.dp.Maps.IpmInbound4.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
	out := udpPkt(podA, 53, remote, 51000).frame(t)
	e.passUnchanged(t, false, out)
	if err := e.dp.Maps.IpmInbound4.Lookup(&k, &v); err != nil {
		t.Fatal(err)
	}
	if age := maps.Now() - time.Duration(v.LastSeenNs); age > time.Second+clockSlack {
		t.Errorf("the pod's answer did not refresh the record: idle %v", age)
	}

	before := e.readCounters(t)
	requireVerdict(t, e.ingress(t, udpPkt(inCluster, 51000, podB, 53).frame(t)), actPass)
	e.expectCounters(t, before, map[string]uint64{"ingress_miss": 1})
	if n := mapLen(t, e.dp.Maps.IpmInbound4); n != 1 {
		t.Errorf("ipm_inbound4 has %d entries, want 1 (nothing for the in-cluster remote)", n)
	}
}

// TestHostFlowMovedKeepsItsAddress: a host flow from an address that is not
// the interface's primary, moved off a tuple a pod mapping holds, keeps its
// own source address; only the port moves.
func TestHostFlowMovedKeepsItsAddress(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	// A pod mapping that holds nodeOther's tuple (as if nodeOther had
	// been the primary when it was made).
	e.putEntry(t, natKey(dirIngress, protoTCP, remote, nodeOther, 443, 40000), kindMasq, podA, 40000)
	host := tcpPkt(nodeOther, 40000, remote, 443, "S")
	r := e.egress(t, host.frame(t))
	requireVerdict(t, r, actPass)
	moved := decode(t, r.out)
	if moved.src != nodeOther || moved.sport == 40000 {
		t.Fatalf("host SYN from %s left as %v, want its own address on another port", nodeOther, moved.tuple)
	}
	requireChecksums(t, r.out)
	reply := e.ingress(t, tcpPkt(remote, 443, nodeOther, moved.sport, "SA").frame(t))
	requireVerdict(t, reply, actPass)
	if d := decode(t, reply.out); d.dst != nodeOther || d.dport != 40000 {
		t.Errorf("reply went to %s:%d, want %s:40000", d.dst, d.dport, nodeOther)
	}
}

// TestIngressICMPErrorFragments: an ICMP error that arrives in fragments
// (a long quote) has its later fragments follow the first: their
// destination is rewritten to the pod too.
func TestIngressICMPErrorFragments(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	orig := udpPkt(podA, 40000, remote, 53)
	orig.payload = make([]byte, 600)
	port := e.masquerade(t, orig)
	sent := orig.with(tuple{protoUDP, nodeAddr, remote, port, 53}).frame(t)
	errFrame := icmpError(t, router, nodeAddr, icmpUnreachable, 4, quoteOf(sent, 0))
	frags := fragments(t, errFrame, 40) // ICMP header, quoted IP and UDP headers, 4 bytes
	if len(frags) != 2 {
		t.Fatalf("%d fragments", len(frags))
	}
	r := e.ingress(t, frags[0])
	requireVerdict(t, r, actPass)
	if got := netip.AddrFrom4([4]byte(r.out[30:34])); got != podA {
		t.Fatalf("first fragment to %s, want %s", got, podA)
	}
	before := e.readCounters(t)
	r = e.ingress(t, frags[1])
	requireVerdict(t, r, actPass)
	if got := netip.AddrFrom4([4]byte(r.out[30:34])); got != podA {
		t.Errorf("later fragment to %s, want %s", got, podA)
	}
	if csum(r.out[14:34]) != 0 {
		t.Errorf("later fragment's IP header checksum wrong")
	}
	e.expectCounters(t, before, map[string]uint64{"ingress_fragment": 1})
}

// TestStaleExemptionCollected: the record of a connection opened towards a
// non-masquerade remote goes once idle past the established timeout, so a
// later mid-stream segment on that tuple towards a now masqueraded remote is
// reset rather than passed with the pod address; a recent record stays.
func TestStaleExemptionCollected(t *testing.T) {
	e := newEnv(t, config{nonMasq: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, syn := range []pkt{tcpPkt(podB, 40000, inCluster, 443, "S"), tcpPkt(podB, 40001, inCluster, 443, "S")} {
		requireVerdict(t, e.egress(t, syn.frame(t)), actPass)
	}
	to := maps.Timeouts{TCPEstablished: time.Hour, UDPStream: time.Minute}
	old := natKey(dirEgress, protoTCP, podB, inCluster, 40000, 443)
	var v loader.BPFIpmInbound
	m := e.dp.Maps.IpmNomasqTcp4
	if err := m.Lookup(&old, &v); err != nil {
		t.Fatalf("the SYN left no record: %v", err)
	}
	v.CreatedNs = uint64(maps.Now() - 2*time.Hour)
	v.LastSeenNs = v.CreatedNs
	if err := m.Put(&old, &v); err != nil {
		t.Fatal(err)
	}
	removed, err := maps.NewNomasqTCP(e.dp).Collect(to)
	if err != nil || removed != 1 {
		t.Fatalf("Collect removed %d, %v; want the one stale record", removed, err)
	}

	e.applyNonMasq(t, []netip.Prefix{}, true)
	e.requireEgressUnchanged(t, tcpPkt(podB, 40001, inCluster, 443, "PA"), "egress_tcp_no_map")
	stale := tcpPkt(podB, 40000, inCluster, 443, "PA")
	in := stale.frame(t)
	r := e.egress(t, in)
	requireVerdict(t, r, actRedirect)
	requireResetFor(t, r.out, stale, in)
}
