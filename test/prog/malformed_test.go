package prog

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The flows whose well-formed packets are translated in TestMalformed, by
// protocol: egress from the pod, ingress the remote's reply to the node port
// (the pod's own: the environment keeps ports).
func malformedBase(t testing.TB, ingress bool, proto uint8) []byte {
	switch {
	case proto == protoTCP && !ingress:
		return tcpPkt(podA, 40000, remote, 443, "S").frame(t)
	case proto == protoTCP:
		return tcpPkt(remote, 443, nodeAddr, 40000, "SA").frame(t)
	case proto == protoUDP && !ingress:
		return udpPkt(podA, 40001, remote, 53).frame(t)
	case proto == protoUDP:
		return udpPkt(remote, 53, nodeAddr, 40001).frame(t)
	case !ingress:
		return echoRequest(podA, remote, 0x4242).frame(t)
	}
	return echoReply(remote, nodeAddr, 0x4242).frame(t)
}

// Frame surgery. Each keeps the IPv4 header checksum right where there is a
// header to sum, so that the one defect is the one the case names.

func setIHL(f []byte, words int) []byte { f[14] = f[14]&0xf0 | byte(words); return fixIPCsum(f) }
func setTotLen(f []byte, n int) []byte {
	binary.BigEndian.PutUint16(f[16:], uint16(n))
	return fixIPCsum(f)
}
func setProto(f []byte, p uint8) []byte       { f[14+9] = p; return fixIPCsum(f) }
func setEtherType(f []byte, et uint16) []byte { binary.BigEndian.PutUint16(f[12:], et); return f }
func setFrag(f []byte, mf bool, off uint16) []byte {
	v := off & 0x1fff
	if mf {
		v |= 0x2000
	}
	binary.BigEndian.PutUint16(f[14+6:], v)
	return fixIPCsum(f)
}

func fixIPCsum(f []byte) []byte {
	n := int(f[14]&0xf) * 4
	if n < 20 {
		n = 20
	}
	if len(f) < 14+n {
		return f
	}
	f[14+10], f[14+11] = 0, 0
	binary.BigEndian.PutUint16(f[14+10:], csum(f[14:14+n]))
	return f
}

// otherFrame serializes layers behind an Ethernet header of type et.
func otherFrame(t testing.TB, et layers.EthernetType, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: et}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, append([]gopacket.SerializableLayer{eth}, ls...)...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// ipv6Frame is a TCP SYN over IPv6, from a pod to a global address.
func ipv6Frame(t testing.TB) []byte {
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolTCP, HopLimit: 64,
		SrcIP: net.ParseIP("fd00::2"), DstIP: net.ParseIP("2001:db8::10")}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 443, SYN: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	return otherFrame(t, layers.EthernetTypeIPv6, ip, tcp)
}

// arpFrame is an ARP request for the node address.
func arpFrame(t testing.TB) []byte {
	return otherFrame(t, layers.EthernetTypeARP, &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: macA, SourceProtAddress: podA.AsSlice(),
		DstHwAddress: make(net.HardwareAddr, 6), DstProtAddress: nodeAddr.AsSlice(),
	})
}

// ipv6Counted says whether an IPv6 frame that passed moved the IPv4
// counters as docs/behaviour.md §4 allows: "other" in the IPv4 counters, or nothing
// there (counted with the IPv6 family, once the datapath has one).
func ipv6Counted(moved map[string]uint64, dir string) bool {
	return len(moved) == 0 || (len(moved) == 1 && moved[dir+"_other"] == 1)
}

// TestMalformed: malformed, truncated and odd packets pass byte for byte
// unchanged and are counted, in both directions (docs/behaviour.md §13), even when a
// well-formed packet of the same flow is translated. Fragments are in
// fragment_test.go.
func TestMalformed(t *testing.T) {
	l4 := 14 + 20
	cases := []struct {
		name    string
		proto   uint8               // the base frame's protocol
		mut     func([]byte) []byte // nil: build is used
		build   func(t testing.TB, ingress bool) []byte
		counter string // egress_<counter> and ingress_<counter>
	}{
		{name: "ethernet header only", proto: protoTCP, mut: func(f []byte) []byte { return f[:14] }, counter: "malformed"},
		{name: "ip header cut to 1 byte", proto: protoTCP, mut: func(f []byte) []byte { return f[:15] }, counter: "malformed"},
		{name: "ip header cut to 19 bytes", proto: protoTCP, mut: func(f []byte) []byte { return f[:14+19] }, counter: "malformed"},
		{name: "ihl 0", proto: protoTCP, mut: func(f []byte) []byte { return setIHL(f, 0) }, counter: "malformed"},
		{name: "ihl 4", proto: protoUDP, mut: func(f []byte) []byte { return setIHL(f, 4) }, counter: "malformed"},
		{name: "ip version 6 behind an IPv4 ethertype", proto: protoTCP, mut: func(f []byte) []byte { f[14] = 0x65; return fixIPCsum(f) }, counter: "malformed"},
		{name: "ip version 0", proto: protoUDP, mut: func(f []byte) []byte { f[14] = 0x05; return fixIPCsum(f) }, counter: "malformed"},
		{name: "tot_len below ihl", proto: protoTCP, mut: func(f []byte) []byte { return setTotLen(f, 19) }, counter: "malformed"},
		{name: "tot_len below ihl with options", proto: protoTCP, build: func(t testing.TB, in bool) []byte {
			f := withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 8).frame(t)
			if in {
				f = withOptions(tcpPkt(remote, 443, nodeAddr, 40000, "SA"), 8).frame(t)
			}
			return setTotLen(f, 24)
		}, counter: "malformed"},
		{name: "tot_len shorter than the tcp header", proto: protoTCP, mut: func(f []byte) []byte { return setTotLen(f, 20+19) }, counter: "malformed"},
		{name: "tot_len shorter than the udp header", proto: protoUDP, mut: func(f []byte) []byte { return setTotLen(f, 20+7) }, counter: "malformed"},
		{name: "tot_len shorter than the icmp header", proto: protoICMP, mut: func(f []byte) []byte { return setTotLen(f, 20+7) }, counter: "malformed"},
		{name: "tcp header truncated", proto: protoTCP, mut: func(f []byte) []byte { return f[:l4+19] }, counter: "malformed"},
		{name: "tcp header truncated to 4 bytes", proto: protoTCP, mut: func(f []byte) []byte { return f[:l4+4] }, counter: "malformed"},
		{name: "udp header truncated", proto: protoUDP, mut: func(f []byte) []byte { return f[:l4+7] }, counter: "malformed"},
		{name: "icmp header truncated", proto: protoICMP, mut: func(f []byte) []byte { return f[:l4+7] }, counter: "malformed"},
		{name: "ihl 15 over a 57-byte datagram", proto: protoUDP, mut: func(f []byte) []byte { return setIHL(f, 15) }, counter: "malformed"},
		{name: "ihl 15, tot_len 0, frame ends inside the options", proto: protoUDP, mut: func(f []byte) []byte {
			return setTotLen(setIHL(f[:14+40], 15), 0)
		}, counter: "malformed"},
		{name: "options truncate the tcp header", proto: protoTCP, build: func(t testing.TB, in bool) []byte {
			f := withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 40).frame(t)
			if in {
				f = withOptions(tcpPkt(remote, 443, nodeAddr, 40000, "SA"), 40).frame(t)
			}
			return f[:14+60+19]
		}, counter: "malformed"},
		{name: "arp", build: func(t testing.TB, _ bool) []byte { return arpFrame(t) }, counter: "other"},
		{name: "ipv6 tcp syn", build: func(t testing.TB, _ bool) []byte { return ipv6Frame(t) }, counter: "ipv6"},
		{name: "ipv4 packet behind an ipv6 ethertype", proto: protoTCP, mut: func(f []byte) []byte { return setEtherType(f, 0x86dd) }, counter: "ipv6"},
		{name: "ipv4 behind an 802.1q tag", build: func(t testing.TB, in bool) []byte {
			f := malformedBase(t, in, protoTCP)
			out := append([]byte(nil), f[:12]...)
			out = append(out, 0x81, 0x00, 0x00, 0x64) // VLAN 100
			return append(out, f[12:]...)
		}, counter: "other"},
		{name: "802.3 length instead of an ethertype", proto: protoUDP, mut: func(f []byte) []byte { return setEtherType(f, uint16(len(f)-14)) }, counter: "other"},
		{name: "gre", proto: protoUDP, mut: func(f []byte) []byte { return setProto(f, 47) }, counter: "other"},
		{name: "esp", proto: protoUDP, mut: func(f []byte) []byte { return setProto(f, 50) }, counter: "other"},
		{name: "sctp", proto: protoUDP, mut: func(f []byte) []byte { return setProto(f, 132) }, counter: "other"},
		{name: "ipip", proto: protoTCP, mut: func(f []byte) []byte { return setProto(f, 4) }, counter: "other"},
		{name: "protocol 255", proto: protoTCP, mut: func(f []byte) []byte { return setProto(f, 255) }, counter: "other"},
		{name: "icmp destination unreachable quoting no IPv4 packet", proto: protoICMP, mut: func(f []byte) []byte {
			f[l4], f[l4+1] = icmpUnreachable, 1
			return f
		}, counter: "other"},
		{name: "icmp time exceeded quoting no IPv4 packet", proto: protoICMP, mut: func(f []byte) []byte { f[l4] = icmpTimeExceed; return f }, counter: "other"},
	}

	for _, dir := range []string{"egress", "ingress"} {
		t.Run(dir, func(t *testing.T) {
			ingress := dir == "ingress"
			e := newEnv(t, config{keepPorts: true})
			prog := e.egress
			if ingress {
				prog = e.ingress
			}
			// Controls: the well-formed packets are translated.
			for _, proto := range []uint8{protoTCP, protoUDP, protoICMP} {
				f := malformedBase(t, false, proto)
				if r := e.egress(t, f); r.ret != actPass || string(r.out) == string(f) {
					t.Fatalf("control: egress did not translate a well-formed packet of protocol %d", proto)
				}
				if ingress {
					f = malformedBase(t, true, proto)
					if r := e.ingress(t, f); r.ret != actPass || string(r.out) == string(f) {
						t.Fatalf("control: ingress did not translate a well-formed reply of protocol %d", proto)
					}
				}
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					var in []byte
					if tc.build != nil {
						in = tc.build(t, ingress)
					} else {
						in = tc.mut(malformedBase(t, ingress, tc.proto))
					}
					if refusedByTestRun(in) {
						// The program bounds-checks these (the verifier
						// makes sure), but a test run cannot feed them.
						if _, err := tryRun(e.dp.Programs.IpmEgress, in); !errors.Is(err, unix.EINVAL) {
							t.Fatalf("test run of a %d-byte frame: %v, want EINVAL", len(in), err)
						}
						t.Skipf("BPF_PROG_TEST_RUN refuses an IPv4 frame without 20 bytes of IP header (EINVAL): not runnable here")
					}
					before := e.readCounters(t)
					r := prog(t, in)
					requireVerdict(t, r, actPass)
					requireUnchanged(t, r.out, in)
					if tc.counter == "ipv6" {
						// --enable-ipv6 is off: IPv6 passes.
						if moved := e.countersMoved(t, before); !ipv6Counted(moved, dir) {
							t.Errorf("IPv6 frame moved IPv4 counters %v", moved)
						}
						return
					}
					e.expectCounters(t, before, map[string]uint64{dir + "_" + tc.counter: 1})
				})
			}
			if n := len(e.natEntries(t)); n != 6 {
				t.Errorf("NAT table has %d entries, want the 6 of the 3 control flows", n)
			}
		})
	}
}
