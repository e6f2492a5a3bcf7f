package prog

import (
	"testing"
)

// unmasquerade runs the reply p through ingress and requires it translated
// back to the pod: destination address and port (ICMP identifier) become
// to's, every other byte stays, every checksum is right.
func (e *env) unmasquerade(t testing.TB, p pkt, to tuple) {
	t.Helper()
	r := e.ingress(t, p.frame(t))
	requireVerdict(t, r, actPass)
	want := p.with(tuple{p.proto, p.src, to.src, p.sport, to.sport}) // ICMP: sport 0, dport the identifier
	if d := decode(t, r.out); d.tuple != want.tuple {
		t.Fatalf("reply %v became %v, want %v\n%s", p.tuple, d.tuple, want.tuple, hexdump(r.out))
	}
	requireSameExceptChecksums(t, r.out, want.frame(t))
	requireChecksums(t, r.out)
	if p.noUDPCsum && udpChecksum(r.out) != 0 {
		t.Fatalf("UDP checksum 0x%04x, want 0 (none) kept", udpChecksum(r.out))
	}
}

// replyTo builds the answer of the remote to a masqueraded packet: from the
// remote to the node address and node port (identifier).
func replyTo(p pkt, nodePort uint16) pkt {
	switch p.proto {
	case protoTCP:
		return tcpPkt(p.dst, p.dport, nodeAddr, nodePort, "SA")
	case protoUDP:
		r := udpPkt(p.dst, p.dport, nodeAddr, nodePort)
		r.noUDPCsum = p.noUDPCsum
		return r
	}
	return echoReply(p.dst, nodeAddr, nodePort)
}

// TestIngressReply: a reply that matches a mapping exactly is translated
// back to the pod's address and port (docs/behaviour.md §5, §6).
func TestIngressReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   config
		out   pkt
		reply func(p pkt, nodePort uint16) pkt // nil: replyTo
	}{
		{"tcp", config{}, tcpPkt(podA, 40000, remote, 443, "S"), nil},
		{"udp", config{}, udpPkt(podA, 40000, remote, 53), nil},
		{"udp checksum 0 stays 0", config{}, udpPkt(podA, 40000, remote, 53).noUDPChecksum(), nil},
		{"udp checksum 0 only in the reply", config{}, udpPkt(podA, 40000, remote, 53), func(p pkt, n uint16) pkt { return replyTo(p, n).noUDPChecksum() }},
		{"icmp echo reply", config{}, echoRequest(podA, remote, 0x4242), nil},
		{"tcp, kept port", config{keepPorts: true}, tcpPkt(podA, 40000, remote, 443, "S"), nil},
		{"icmp, kept identifier", config{keepPorts: true}, echoRequest(podA, remote, 0x4242), nil},
		{"tcp reply with ip options", config{}, tcpPkt(podA, 40000, remote, 443, "S"), func(p pkt, n uint16) pkt { return withOptions(replyTo(p, n), 12) }},
		{"udp reply with 40 bytes of ip options", config{}, udpPkt(podA, 40000, remote, 53), func(p pkt, n uint16) pkt { return withOptions(replyTo(p, n), 40) }},
		{"icmp reply with ip options", config{}, echoRequest(podA, remote, 9), func(p pkt, n uint16) pkt { return withOptions(replyTo(p, n), 4) }},
		{"tcp data", config{}, tcpPkt(podA, 40000, remote, 443, "S"), func(p pkt, n uint16) pkt { return tcpPkt(remote, 443, nodeAddr, n, "PA") }},
		{"tcp rst refusing the syn", config{}, tcpPkt(podA, 40000, remote, 443, "S"), func(p pkt, n uint16) pkt { return refusal(remote, 443, nodeAddr, n) }},
		{"link-local with masqLinkLocal", config{masqLinkLocal: true}, udpPkt(podA, 40000, metadata, 53), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg)
			port := e.masquerade(t, tc.out)
			reply := tc.reply
			if reply == nil {
				reply = replyTo
			}
			before := e.readCounters(t)
			for range 3 {
				e.unmasquerade(t, reply(tc.out, port), tc.out.tuple)
			}
			e.expectCounters(t, before, map[string]uint64{"ingress_translated": 3})
			if n := len(e.natEntries(t)); n != 2 {
				t.Errorf("NAT table has %d entries after replies, want the 2 of the mapping", n)
			}
		})
	}
}

// TestIngressMismatch: anything that does not match a mapping exactly
// (protocol, remote address and port, node address and port) reaches the
// host byte for byte as it came (docs/behaviour.md §6).
func TestIngressMismatch(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	// Known node ports: the pods' own (free) ports.
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.masquerade(t, udpPkt(podA, 40001, remote, 53))
	e.masquerade(t, echoRequest(podA, remote, 0x4242))
	// The controls: exact replies are translated.
	e.unmasquerade(t, tcpPkt(remote, 443, nodeAddr, 40000, "SA"), tuple{protoTCP, podA, remote, 40000, 443})
	e.unmasquerade(t, udpPkt(remote, 53, nodeAddr, 40001), tuple{protoUDP, podA, remote, 40001, 53})
	e.unmasquerade(t, echoReply(remote, nodeAddr, 0x4242), tuple{protoICMP, podA, remote, 0x4242, 0})

	for _, tc := range []struct {
		name    string
		p       pkt
		counter string
	}{
		{"tcp, wrong remote port", tcpPkt(remote, 444, nodeAddr, 40000, "SA"), "ingress_miss"},
		{"tcp, wrong remote address", tcpPkt(remote2, 443, nodeAddr, 40000, "SA"), "ingress_miss"},
		{"tcp, wrong node port", tcpPkt(remote, 443, nodeAddr, 40002, "SA"), "ingress_miss"},
		{"tcp, wrong node address", tcpPkt(remote, 443, nodeOther, 40000, "SA"), "ingress_miss"},
		{"tcp, to the pod address itself", tcpPkt(remote, 443, podA, 40000, "SA"), "ingress_miss"},
		{"udp to the tcp mapping", udpPkt(remote, 443, nodeAddr, 40000), "ingress_miss"},
		{"tcp to the udp mapping", tcpPkt(remote, 53, nodeAddr, 40001, "A"), "ingress_miss"},
		{"udp, wrong remote port", udpPkt(remote, 54, nodeAddr, 40001), "ingress_miss"},
		{"udp, wrong remote address", udpPkt(remote2, 53, nodeAddr, 40001), "ingress_miss"},
		{"udp, wrong node port", udpPkt(remote, 53, nodeAddr, 40000), "ingress_miss"},
		{"icmp echo reply, wrong identifier", echoReply(remote, nodeAddr, 0x4243), "ingress_miss"},
		{"icmp echo reply, wrong remote", echoReply(remote2, nodeAddr, 0x4242), "ingress_miss"},
		{"icmp echo reply, wrong node address", echoReply(remote, nodeOther, 0x4242), "ingress_miss"},
		{"icmp echo request with the mapped identifier", echoRequest(remote, nodeAddr, 0x4242), "ingress_miss"},
		{"icmp echo reply, code 1", func() pkt { p := echoReply(remote, nodeAddr, 0x4242); p.icmpCode = 1; return p }(), "ingress_other"},
		{"unsolicited tcp syn", tcpPkt(remote, 51000, nodeAddr, 22, "S"), "ingress_miss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.frame(t)
			e.requirePassed(t, true, in, tc.counter)
		})
	}
	if n := len(e.natEntries(t)); n != 6 {
		t.Errorf("NAT table has %d entries, want the 6 of the 3 mappings", n)
	}
}
