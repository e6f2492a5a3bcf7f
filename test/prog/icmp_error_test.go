package prog

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// A router on the path between the node and the remote.
var router = netip.MustParseAddr("198.51.100.1")

// icmpError builds an ICMP error frame src -> dst of type/code whose body is
// quote (the start of the offending IP packet). For "fragmentation needed"
// the next-hop MTU is 1400.
func icmpError(t testing.TB, src, dst netip.Addr, typ, code uint8, quote []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: 0x777, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	if typ == icmpUnreachable && code == 4 {
		ic.Seq = 1400
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, ic, gopacket.Payload(quote)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// ipPacket returns the IP packet of a frame, without Ethernet header and
// padding.
func ipPacket(frame []byte) []byte {
	ip := frame[14:]
	return ip[:int(ip[2])<<8|int(ip[3])]
}

// quoteOf returns the first n bytes of the IP packet of frame (all when n
// is 0), as an ICMP error quotes it.
func quoteOf(frame []byte, n int) []byte {
	ip := ipPacket(frame)
	if n == 0 || n > len(ip) {
		n = len(ip)
	}
	return append([]byte(nil), ip[:n]...)
}

// requireQuoteChecksums checks the quoted packet inside an ICMP error frame:
// its IP header checksum always, its L4 checksum when the quote holds the
// whole packet.
func requireQuoteChecksums(t testing.TB, frame []byte, whole bool) {
	t.Helper()
	l4 := 14 + int(frame[14]&0xf)*4
	inner := frame[l4+8:]
	ihl := int(inner[0]&0xf) * 4
	if csum(inner[:ihl]) != 0 {
		t.Fatalf("quoted IPv4 header checksum wrong (want 0x%04x)\n%s", fieldSum(nil, inner[:ihl], 10), hexdump(frame))
	}
	if whole {
		if err := checkFrame(append(append([]byte(nil), frame[:14]...), inner...)); err != nil {
			t.Fatalf("quoted packet: %v\n%s", err, hexdump(frame))
		}
	}
}

// TestIngressICMPError: an ICMP error about a translated packet, from any
// router on the path, is translated back to the pod: outer destination and
// the quoted packet (source address and port, identifier), with every
// checksum the packet carries right, also for quotes of only 8 bytes of L4
// header (docs/behaviour.md §5, §6). Fragmentation-needed must reach the pod for PMTU
// discovery to work through the NAT.
func TestIngressICMPError(t *testing.T) {
	for _, tc := range []struct {
		name       string
		out        pkt
		from       netip.Addr
		typ, code  uint8
		quoteBytes int // 0: the whole packet
	}{
		{"tcp fragmentation needed, whole packet quoted", tcpPkt(podA, 40000, remote, 443, "S"), router, icmpUnreachable, 4, 0},
		{"tcp fragmentation needed, 8 bytes of tcp quoted", tcpPkt(podA, 40000, remote, 443, "S"), router, icmpUnreachable, 4, 28},
		{"udp port unreachable from the remote, 8 bytes of udp quoted", udpPkt(podA, 40001, remote, 53), remote, icmpUnreachable, 3, 28},
		{"udp port unreachable, whole datagram quoted", udpPkt(podA, 40001, remote, 53), remote, icmpUnreachable, 3, 0},
		{"icmp echo, time exceeded", echoRequest(podA, remote, 0x4242), router, icmpTimeExceed, 0, 0},
		{"tcp with ip options, host unreachable", withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 8), router, icmpUnreachable, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{})
			orig := tc.out.frame(t)
			r := e.egress(t, orig)
			requireVerdict(t, r, actPass)

			in := icmpError(t, tc.from, nodeAddr, tc.typ, tc.code, quoteOf(r.out, tc.quoteBytes))
			want := icmpError(t, tc.from, podA, tc.typ, tc.code, quoteOf(orig, tc.quoteBytes))
			before := e.readCounters(t)
			got := e.ingress(t, in)
			requireVerdict(t, got, actPass)
			if string(got.out) == string(in) {
				t.Fatalf("ICMP error about the translated %v passed untranslated: the pod never learns of it (PMTU discovery through the NAT fails)\n%s", tc.out.tuple, hexdump(in))
			}
			requireSameExceptChecksums(t, got.out, want)
			requireChecksums(t, got.out)
			requireQuoteChecksums(t, got.out, tc.quoteBytes == 0)
			e.expectCounters(t, before, map[string]uint64{"ingress_icmp_error": 1})
		})
	}
}

// TestIngressICMPErrorMismatch: an ICMP error whose quote matches no mapping
// passes unchanged (docs/behaviour.md §6).
func TestIngressICMPErrorMismatch(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	for _, tc := range []struct {
		name  string
		quote pkt
	}{
		{"wrong node port", tcpPkt(nodeAddr, 40001, remote, 443, "S")},
		{"wrong remote port", tcpPkt(nodeAddr, 40000, remote, 444, "S")},
		{"wrong remote", tcpPkt(nodeAddr, 40000, remote2, 443, "S")},
		{"wrong protocol", udpPkt(nodeAddr, 40000, remote, 443)},
		{"about the host's own traffic", tcpPkt(nodeAddr, 22, remote, 443, "S")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := icmpError(t, router, nodeAddr, icmpUnreachable, 4, quoteOf(tc.quote.frame(t), 0))
			e.requirePassed(t, true, in, "ingress_miss")
		})
	}
}

// TestEgressICMPErrorFromNode: an ICMP error the node itself sends about a
// pod's flow (outer source the node, quoting the remote's packet to the
// pod, for example fragmentation needed on the way to the pod) leaves with
// the quote translated to the node address and port, so the remote can
// match it (docs/behaviour.md §5).
func TestEgressICMPErrorFromNode(t *testing.T) {
	e := newEnv(t, config{})
	out := tcpPkt(podA, 40000, remote, 443, "S")
	port := e.masquerade(t, out)
	arrived := tcpPkt(remote, 443, nodeAddr, port, "SA").frame(t)
	r := e.ingress(t, arrived)
	requireVerdict(t, r, actPass)

	in := icmpError(t, nodeAddr, remote, icmpUnreachable, 4, quoteOf(r.out, 0))
	want := icmpError(t, nodeAddr, remote, icmpUnreachable, 4, quoteOf(arrived, 0))
	before := e.readCounters(t)
	got := e.egress(t, in)
	requireVerdict(t, got, actPass)
	if string(got.out) == string(in) {
		t.Fatalf("node's ICMP error about %v left quoting the pod address\n%s", out.tuple, hexdump(in))
	}
	requireSameExceptChecksums(t, got.out, want)
	requireChecksums(t, got.out)
	requireQuoteChecksums(t, got.out, true)
	e.expectCounters(t, before, map[string]uint64{"egress_icmp_error": 1})
}

// TestEgressICMPErrorFromPod: a pod's own ICMP error about a translated reply
// (port unreachable for the remote's datagram) leaves from the node address,
// quoting the datagram as the remote sent it (docs/behaviour.md §5).
func TestEgressICMPErrorFromPod(t *testing.T) {
	e := newEnv(t, config{})
	out := udpPkt(podA, 40001, remote, 53)
	port := e.masquerade(t, out)
	arrived := udpPkt(remote, 53, nodeAddr, port).frame(t)
	r := e.ingress(t, arrived)
	requireVerdict(t, r, actPass)

	for _, n := range []int{0, 28} {
		in := icmpError(t, podA, remote, icmpUnreachable, 3, quoteOf(r.out, n))
		want := icmpError(t, nodeAddr, remote, icmpUnreachable, 3, quoteOf(arrived, n))
		before := e.readCounters(t)
		got := e.egress(t, in)
		requireVerdict(t, got, actPass)
		requireSameExceptChecksums(t, got.out, want)
		requireChecksums(t, got.out)
		requireQuoteChecksums(t, got.out, n == 0)
		e.expectCounters(t, before, map[string]uint64{"egress_icmp_error": 1})
	}
}

// TestICMPErrorWithTrailer: bytes after the IP packet (an Ethernet trailer,
// which tc ingress still sees before ip_rcv trims the skb to tot_len) are
// not part of the ICMP error. A quote of 8 bytes of TCP has no TCP checksum
// whatever follows, and a quote whose L4 header lies beyond tot_len is too
// short to match anything. The trailer must stay as it was and the ICMP
// checksum, which covers only the IP packet, right (docs/behaviour.md §5, §13).
func TestICMPErrorWithTrailer(t *testing.T) {
	trailer := []byte{0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef}
	t.Run("8 bytes of tcp quoted", func(t *testing.T) {
		e := newEnv(t, config{})
		orig := tcpPkt(podA, 40000, remote, 443, "S").frame(t)
		r := e.egress(t, orig)
		requireVerdict(t, r, actPass)

		in := append(icmpError(t, router, nodeAddr, icmpUnreachable, 4, quoteOf(r.out, 28)), trailer...)
		want := append(icmpError(t, router, podA, icmpUnreachable, 4, quoteOf(orig, 28)), trailer...)
		got := e.ingress(t, in)
		requireVerdict(t, got, actPass)
		if string(got.out[len(got.out)-len(trailer):]) != string(trailer) {
			t.Errorf("trailer after the IP packet changed: % x, want % x", got.out[len(got.out)-len(trailer):], trailer)
		}
		if err := checkFrame(got.out); err != nil {
			t.Errorf("checksums: %v\n%s", err, hexdump(got.out))
		}
		requireSameExceptChecksums(t, got.out, want)
	})
	t.Run("quoted tcp header beyond tot_len", func(t *testing.T) {
		e := newEnv(t, config{})
		r := e.egress(t, tcpPkt(podA, 40000, remote, 443, "S").frame(t))
		requireVerdict(t, r, actPass)

		// The ICMP error quotes the IP header only; the quoted packet's
		// first 8 TCP bytes follow the IP packet, in the trailer.
		q := quoteOf(r.out, 28)
		in := append(icmpError(t, router, nodeAddr, icmpUnreachable, 4, q[:20]), q[20:]...)
		in = append(in, trailer...)
		before := e.readCounters(t)
		got := e.ingress(t, in)
		requireVerdict(t, got, actPass)
		if string(got.out) != string(in) {
			err := checkFrame(got.out)
			t.Fatalf("ICMP error whose quote holds no L4 header was rewritten (from bytes after the IP packet); checksums: %v\nin:\n%sout:\n%s", err, hexdump(in), hexdump(got.out))
		}
		e.expectCounters(t, before, map[string]uint64{"ingress_other": 1})
	})
}
