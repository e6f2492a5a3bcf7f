package prog

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// IP protocol numbers.
const (
	protoICMP uint8 = 1
	protoTCP  uint8 = 6
	protoUDP  uint8 = 17
)

// ICMP types.
const (
	icmpEchoReply   uint8 = 0
	icmpUnreachable uint8 = 3
	icmpEcho        uint8 = 8
	icmpTimeExceed  uint8 = 11
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

// tuple is what the datapath keys a packet by. For ICMP echo the identifier
// is sport in a request and dport in a reply, the other port 0.
type tuple struct {
	proto        uint8
	src, dst     netip.Addr
	sport, dport uint16
}

func (u tuple) String() string {
	return fmt.Sprintf("proto %d %s:%d -> %s:%d", u.proto, u.src, u.sport, u.dst, u.dport)
}

// reply is the tuple of the answer to u.
func (u tuple) reply() tuple {
	return tuple{proto: u.proto, src: u.dst, dst: u.src, sport: u.dport, dport: u.sport}
}

// pkt describes a frame to build with gopacket.
type pkt struct {
	tuple
	flags      string // TCP flags: letters of "SAFRP"
	icmpType   uint8
	icmpCode   uint8
	payload    []byte
	ipOptions  []layers.IPv4Option
	noUDPCsum  bool
	ipFlags    layers.IPv4Flag
	fragOffset uint16 // in 8-byte units
	// TCP sequence and acknowledgement numbers and window; 0: the
	// defaults 0x01020304, 0x0a0b0c0d and 64240.
	seq, ack uint32
	win      uint16
	wscale   uint8 // a SYN's window scale option is value-1; 0: none
}

// synAcked is what a remote's answer acknowledges of a SYN with the default
// sequence number: a refused connection's RST carries it.
const synAcked = 0x01020304 + 1

// refusal is the remote's RST|ACK refusing the SYN of a flow to it.
func refusal(remote netip.Addr, rport uint16, node netip.Addr, nodePort uint16) pkt {
	r := tcpPkt(remote, rport, node, nodePort, "RA")
	r.ack = synAcked
	return r
}

func tcpPkt(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags string) pkt {
	return pkt{tuple: tuple{protoTCP, src, dst, sport, dport}, flags: flags, payload: []byte("GET / HTTP/1.1\r\n\r\n"), ipFlags: layers.IPv4DontFragment}
}

func udpPkt(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) pkt {
	return pkt{tuple: tuple{protoUDP, src, dst, sport, dport}, payload: []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01")}
}

func echoRequest(src, dst netip.Addr, id uint16) pkt {
	return pkt{tuple: tuple{protoICMP, src, dst, id, 0}, icmpType: icmpEcho, payload: []byte("ping payload 0123456789abcdef")}
}

func echoReply(src, dst netip.Addr, id uint16) pkt {
	return pkt{tuple: tuple{protoICMP, src, dst, 0, id}, icmpType: icmpEchoReply, payload: []byte("ping payload 0123456789abcdef")}
}

// withOptions adds n bytes (a multiple of 4) of IPv4 options: NOPs and a
// Router Alert (RFC 2113), then End of List padding.
func withOptions(p pkt, n int) pkt {
	p.ipOptions = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	for i := 4; i < n-1; i++ {
		p.ipOptions = append(p.ipOptions, layers.IPv4Option{OptionType: 1})
	}
	if n > 4 {
		p.ipOptions = append(p.ipOptions, layers.IPv4Option{OptionType: 0})
	}
	return p
}

func (p pkt) noUDPChecksum() pkt { p.noUDPCsum = true; return p }

// with returns p with the tuple u.
func (p pkt) with(u tuple) pkt { p.tuple = u; return p }

// frame serializes p into an Ethernet frame with every length and checksum
// right (gopacket pads it to Ethernet's 60-byte minimum).
func (p pkt) frame(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version: 4, TOS: 0x10, Id: 0x1234, Flags: p.ipFlags, FragOffset: p.fragOffset, TTL: 63,
		Protocol: layers.IPProtocol(p.proto), SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(), Options: p.ipOptions,
	}
	var l4 gopacket.SerializableLayer
	switch p.proto {
	case protoTCP:
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: cmp.Or(p.seq, 0x01020304), Window: cmp.Or(p.win, 64240),
			SYN: strings.Contains(p.flags, "S"), ACK: strings.Contains(p.flags, "A"), FIN: strings.Contains(p.flags, "F"),
			RST: strings.Contains(p.flags, "R"), PSH: strings.Contains(p.flags, "P"),
		}
		if tcp.ACK {
			tcp.Ack = cmp.Or(p.ack, 0x0a0b0c0d)
		}
		if tcp.SYN {
			tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}
			if p.wscale > 0 {
				tcp.Options = append(tcp.Options, layers.TCPOption{OptionType: layers.TCPOptionKindNop},
					layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{p.wscale - 1}})
			}
		}
		tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case protoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	case protoICMP:
		id := p.sport
		if p.icmpType == icmpEchoReply {
			id = p.dport
		}
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, p.icmpCode), Id: id, Seq: 7}
	default:
		t.Fatalf("pkt: protocol %d", p.proto)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, l4, gopacket.Payload(p.payload)); err != nil {
		t.Fatalf("serialize %v: %v", p.tuple, err)
	}
	f := append([]byte(nil), buf.Bytes()...)
	if p.noUDPCsum {
		l4off := 14 + int(f[14]&0xf)*4
		f[l4off+6], f[l4off+7] = 0, 0
	}
	return f
}

// decoded is an output frame as gopacket reads it.
type decoded struct {
	tuple
	ip   *layers.IPv4
	tcp  *layers.TCP
	udp  *layers.UDP
	icmp *layers.ICMPv4
}

// decode reads an IPv4 frame with gopacket and returns its tuple in the
// datapath's conventions.
func decode(t testing.TB, frame []byte) decoded {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("decode output: %v\n%s", el.Error(), hexdump(frame))
	}
	var d decoded
	ipl, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok {
		t.Fatalf("output has no IPv4 layer\n%s", hexdump(frame))
	}
	d.ip = ipl
	d.proto = uint8(ipl.Protocol)
	d.src, _ = netip.AddrFromSlice(ipl.SrcIP.To4())
	d.dst, _ = netip.AddrFromSlice(ipl.DstIP.To4())
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		d.tcp, d.sport, d.dport = l, uint16(l.SrcPort), uint16(l.DstPort)
	case *layers.UDP:
		d.udp, d.sport, d.dport = l, uint16(l.SrcPort), uint16(l.DstPort)
	}
	if ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		d.icmp = ic
		switch ic.TypeCode.Type() {
		case icmpEcho:
			d.sport = ic.Id
		case icmpEchoReply:
			d.dport = ic.Id
		}
	}
	return d
}

// checksumOffsets returns the offsets in frame of the IPv4 header checksum
// and of the L4 checksum (-1 when it has none that we rewrite).
func checksumOffsets(frame []byte) (ipc, l4c int) {
	l4 := 14 + int(frame[14]&0xf)*4
	switch frame[14+9] {
	case protoTCP:
		return 14 + 10, l4 + 16
	case protoUDP:
		return 14 + 10, l4 + 6
	case protoICMP:
		return 14 + 10, l4 + 2
	}
	return 14 + 10, -1
}

// requireSameExceptChecksums fails unless got equals want byte for byte,
// except in the two checksum fields, which requireChecksums verifies from
// scratch instead (0x0000 and 0xffff are the same ones' complement zero, so
// an incremental update may legitimately pick the other one).
func requireSameExceptChecksums(t testing.TB, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("output is %d bytes, want %d\ngot:\n%swant:\n%s", len(got), len(want), hexdump(got), hexdump(want))
	}
	ipc, l4c := checksumOffsets(want)
	var diffs []string
	for i := range want {
		if i == ipc || i == ipc+1 || i == l4c || i == l4c+1 {
			continue
		}
		if got[i] != want[i] {
			diffs = append(diffs, fmt.Sprintf("byte %d: 0x%02x, want 0x%02x", i, got[i], want[i]))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("output differs from the expected frame:\n%s\ngot:\n%swant:\n%s", strings.Join(diffs, "\n"), hexdump(got), hexdump(want))
	}
}

// requireUnchanged fails unless the program left the frame byte for byte.
func requireUnchanged(t testing.TB, got, in []byte) {
	t.Helper()
	if string(got) != string(in) {
		t.Fatalf("frame changed, want it unchanged\ngot:\n%sin:\n%s", hexdump(got), hexdump(in))
	}
}

func udpChecksum(frame []byte) uint16 {
	l4 := 14 + int(frame[14]&0xf)*4
	return binary.BigEndian.Uint16(frame[l4+6:])
}

func hexdump(b []byte) string { return hex.Dump(b) }
