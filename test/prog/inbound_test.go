package prog

import (
	"net/netip"
	"testing"
)

// TestInboundFlows: where pod addresses are routable, a flow opened by an
// outside host towards a pod keeps working: the pod's replies leave with the
// pod address even though the outside host is not in the non-masquerade set
// (docs/behaviour.md §7). The outside host's packets pass ingress unchanged (they are
// not for the node) and the pod's answers pass egress unchanged, creating no
// NAT mapping.
func TestInboundFlows(t *testing.T) {
	for _, tc := range []struct {
		name        string
		in, out     []pkt
		inCounters  map[string]uint64 // for the first inbound packet
		outCounter  string
		inboundKeys int // entries expected in ipm_inbound4
	}{
		{"tcp", []pkt{tcpPkt(remote, 51000, podA, 80, "S"), tcpPkt(remote, 51000, podA, 80, "A")},
			[]pkt{tcpPkt(podA, 80, remote, 51000, "SA"), tcpPkt(podA, 80, remote, 51000, "PA")},
			map[string]uint64{"ingress_inbound": 1}, "egress_inbound", 1},
		{"udp", []pkt{udpPkt(remote, 51000, podA, 53), udpPkt(remote, 51000, podA, 53)},
			[]pkt{udpPkt(podA, 53, remote, 51000), udpPkt(podA, 53, remote, 51000)},
			map[string]uint64{"ingress_inbound": 1}, "egress_inbound", 1},
		{"icmp echo", []pkt{echoRequest(remote, podA, 0x77)}, []pkt{echoReply(podA, remote, 0x77)},
			map[string]uint64{"ingress_miss": 1}, "egress_inbound", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{})
			for i := range tc.in {
				in := tc.in[i].frame(t)
				before := e.readCounters(t)
				e.passUnchanged(t, true, in)
				if i == 0 {
					e.expectCounters(t, before, tc.inCounters)
				}

				out := tc.out[i].frame(t)
				before = e.readCounters(t)
				r := e.egress(t, out)
				requireVerdict(t, r, actPass)
				if string(r.out) != string(out) {
					d := decode(t, r.out)
					t.Fatalf("the pod's answer %v to a flow opened from outside left as %v: the outside host drops it", tc.out[i].tuple, d.tuple)
				}
				e.expectCounters(t, before, map[string]uint64{tc.outCounter: 1})
			}
			if n := len(e.natEntries(t)); n != 0 {
				t.Errorf("NAT table has %d entries, want none", n)
			}
			if n := mapLen(t, e.dp.Maps.IpmInbound4); n != tc.inboundKeys {
				t.Errorf("ipm_inbound4 has %d entries, want %d", n, tc.inboundKeys)
			}
		})
	}
}

// TestInboundToTheNode: UDP to a node address is the host's, not a flow
// towards a pod: it leaves no inbound state, and the host's reply is handled
// as host traffic.
func TestInboundToTheNode(t *testing.T) {
	e := newEnv(t, config{})
	before := e.readCounters(t)
	in := udpPkt(remote, 51000, nodeAddr, 53).frame(t)
	e.passUnchanged(t, true, in)
	e.expectCounters(t, before, map[string]uint64{"ingress_miss": 1})
	if n := mapLen(t, e.dp.Maps.IpmInbound4); n != 0 {
		t.Errorf("ipm_inbound4 has %d entries, want none", n)
	}
}

// TestInboundFloodBounded: state created by inbound packets is bounded, so
// outside hosts cannot fill the tables (docs/behaviour.md §7): UDP from many outside
// endpoints to pods never touches the NAT table, and pods' own flows are
// still masqueraded afterwards.
func TestInboundFloodBounded(t *testing.T) {
	e := newEnv(t, config{natEntries: 16})
	n := 2000
	if testing.Short() {
		n = 200
	}
	for i := range n {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		r := e.ingress(t, udpPkt(src, 5000, podA, uint16(1000+i%50)).frame(t))
		requireVerdict(t, r, actPass)
	}
	if got := len(e.natEntries(t)); got != 0 {
		t.Fatalf("inbound UDP created %d NAT entries", got)
	}
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.masquerade(t, udpPkt(podA, 40001, remote, 53))
}

// TestHostRepliesDoNotFillTheTable: the node answering outside hosts (a
// SYN-ACK or RST to an inbound SYN, a UDP reply of a node service, an echo
// reply) is state triggered by inbound packets, which must be bounded so
// that outside hosts cannot fill the tables and stop the pods' new flows
// (docs/behaviour.md §7, §9). Here the NAT table holds 64 entries, and outside hosts
// make the node answer 64 times.
func TestHostRepliesDoNotFillTheTable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(i int) pkt
	}{
		{"tcp syn-ack from a node port", func(i int) pkt { return tcpPkt(nodeAddr, 10250, remote2, uint16(20000+i), "SA") }},
		{"tcp rst from a closed node port", func(i int) pkt { return tcpPkt(nodeAddr, 9, remote2, uint16(20000+i), "RA") }},
		{"udp reply of a node service", func(i int) pkt { return udpPkt(nodeAddr, 53, remote2, uint16(20000+i)) }},
		{"icmp echo reply", func(i int) pkt {
			return echoReply(nodeAddr, netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), uint16(i))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{natEntries: 64})
			for i := range 64 {
				requireVerdict(t, e.egress(t, tc.answer(i).frame(t)), actPass)
			}
			before := e.readCounters(t)
			r := e.egress(t, tcpPkt(podA, 40000, remote, 443, "S").frame(t))
			if r.ret != actPass {
				t.Fatalf("a pod's new flow after the node answered 64 outside packets: %s, counters %v; NAT table holds %d entries made by the node's answers",
					verdictName(r.ret), e.countersMoved(t, before), len(e.natEntries(t)))
			}
		})
	}
}
