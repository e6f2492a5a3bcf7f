package prog

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// IPv6 frames for the program tests (docs/behaviour.md §5.7): built with gopacket, the
// extension headers and fragments assembled by hand, and every checksum
// recomputed from scratch over the IPv6 pseudo-header (RFC 8200 8.1) by the
// checker here, which shares no code with the builder.

// Protocol numbers of the IPv6 next-header chain.
const (
	protoICMPv6  uint8 = 58
	extHopByHop  uint8 = 0
	extRouting   uint8 = 43
	extFragment  uint8 = 44
	extDstOpts   uint8 = 60
	noNextHeader uint8 = 59
)

// ICMPv6 types (RFC 4443, 4861, 2710, 3810).
const (
	icmp6Unreach     uint8 = 1
	icmp6TooBig      uint8 = 2
	icmp6TimeExceed  uint8 = 3
	icmp6ParamProb   uint8 = 4
	icmp6Echo        uint8 = 128
	icmp6EchoReply   uint8 = 129
	icmp6MLDQuery    uint8 = 130
	icmp6MLDReport   uint8 = 131
	icmp6MLDDone     uint8 = 132
	icmp6RS          uint8 = 133
	icmp6RA          uint8 = 134
	icmp6NS          uint8 = 135
	icmp6NA          uint8 = 136
	icmp6Redirect    uint8 = 137
	icmp6MLDv2Report uint8 = 143
)

// Addresses of the crafted IPv6 traffic: the pods have unique-local
// addresses, the node a global one.
var (
	pod6A      = netip.MustParseAddr("fd00:10:244:1::2")
	pod6B      = netip.MustParseAddr("fd00:10:244:1::3")
	node6      = netip.MustParseAddr("2001:db8:31::2")  // ifindex 1's global IPv6: the masquerade source
	node6Other = netip.MustParseAddr("2001:db8:31::99") // another address of the node
	node6LL    = netip.MustParseAddr("fe80::2")         // the node's link-local address
	remote6    = netip.MustParseAddr("2001:db8:100::10")
	remote6b   = netip.MustParseAddr("2001:db8:100::20")
	vpc6       = netip.MustParseAddr("fd00:100::10") // in fd00::/8: not masqueraded
	ll6        = netip.MustParseAddr("fe80::1234")   // a link-local peer
	router6    = netip.MustParseAddr("2001:db8:31::1")
)

// nonMasq6 is the IPv6 nonMasqueradeCIDRs of the tests (as in the e2e
// config): the unique-local range the pods and the VPC live in.
var nonMasq6 = []netip.Prefix{netip.MustParsePrefix("fd00::/8")}

var linkLocal6 = netip.MustParsePrefix("fe80::/10")

// pkt6 describes an IPv6 frame to build.
type pkt6 struct {
	tuple
	flags     string // TCP flags: letters of "SAFRP"
	icmpType  uint8
	icmpCode  uint8
	payload   []byte  // after the transport header (ICMPv6: after the 8-byte echo header)
	body      []byte  // ICMPv6 other than echo: everything after type, code and checksum
	exts      []uint8 // extension headers between the IPv6 and the transport header, in order
	noUDPCsum bool
	seq       uint32 // TCP sequence number; 0: 0x01020304
	ack       uint32 // TCP acknowledgement number with ACK; 0: 0x0a0b0c0d
}

func tcp6(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags string) pkt6 {
	return pkt6{tuple: tuple{protoTCP, src, dst, sport, dport}, flags: flags, payload: []byte("GET / HTTP/1.1\r\n\r\n")}
}

func udp6(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) pkt6 {
	return pkt6{tuple: tuple{protoUDP, src, dst, sport, dport}, payload: []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x1c\x00\x01")}
}

func echo6(src, dst netip.Addr, id uint16) pkt6 {
	return pkt6{tuple: tuple{protoICMPv6, src, dst, id, 0}, icmpType: icmp6Echo, payload: []byte("ping6 payload 0123456789abcdef")}
}

func echoReply6(src, dst netip.Addr, id uint16) pkt6 {
	return pkt6{tuple: tuple{protoICMPv6, src, dst, 0, id}, icmpType: icmp6EchoReply, payload: []byte("ping6 payload 0123456789abcdef")}
}

// icmp6Other is an ICMPv6 message that is neither echo nor error (neighbour
// discovery, MLD): body follows type, code and checksum.
func icmp6Other(src, dst netip.Addr, typ uint8, body []byte) pkt6 {
	return pkt6{tuple: tuple{protoICMPv6, src, dst, 0, 0}, icmpType: typ, body: body}
}

func (p pkt6) with(u tuple) pkt6 { p.tuple = u; return p }

// withExts returns p with the given extension headers before its transport
// header.
func (p pkt6) withExts(kinds ...uint8) pkt6 {
	p.exts = append([]uint8(nil), kinds...)
	return p
}

func (p pkt6) noUDPChecksum() pkt6 { p.noUDPCsum = true; return p }

// extHeader builds one extension header of the given kind whose next header
// is next: hop-by-hop with a Router Alert (8 bytes), destination options
// with a PadN (16 bytes, length field 1), a segment routing header with one
// segment and segments left 0 (24 bytes, length field 2: already processed,
// so the IPv6 destination is the final one that the pseudo-header holds), or
// an atomic fragment header (offset 0, no more fragments).
func extHeader(kind, next uint8) []byte {
	switch kind {
	case extHopByHop:
		return []byte{next, 0, 5, 2, 0, 0, 1, 0}
	case extDstOpts:
		return append([]byte{next, 1, 1, 12}, make([]byte, 12)...)
	case extRouting:
		seg := segment.As16()
		return append([]byte{next, 2, 4, 0, 0, 0, 0, 0}, seg[:]...)
	case extFragment:
		return []byte{next, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef}
	}
	panic(fmt.Sprintf("extHeader: kind %d", kind))
}

// segment is the address in every routing header.
var segment = netip.MustParseAddr("2001:db8:5e9::1")

// extChain returns the extension headers of kinds chained to a transport
// header of protocol last, and the next-header value of the IPv6 header.
func extChain(kinds []uint8, last uint8) (first uint8, chain []byte) {
	first = last
	if len(kinds) > 0 {
		first = kinds[0]
	}
	for i, k := range kinds {
		next := last
		if i+1 < len(kinds) {
			next = kinds[i+1]
		}
		chain = append(chain, extHeader(k, next)...)
	}
	return first, chain
}

// transport serializes p's transport header and payload with gopacket, its
// checksum over the IPv6 pseudo-header of p's addresses.
func (p pkt6) transport(t testing.TB) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocol(p.proto), SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()}
	var ls []gopacket.SerializableLayer
	switch p.proto {
	case protoTCP:
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: cmp.Or(p.seq, 0x01020304), Window: 64800,
			SYN: strings.Contains(p.flags, "S"), ACK: strings.Contains(p.flags, "A"), FIN: strings.Contains(p.flags, "F"),
			RST: strings.Contains(p.flags, "R"), PSH: strings.Contains(p.flags, "P"),
		}
		if tcp.ACK {
			tcp.Ack = cmp.Or(p.ack, 0x0a0b0c0d)
		}
		if tcp.SYN {
			tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xa0}}}
		}
		tcp.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{tcp, gopacket.Payload(p.payload)}
	case protoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{udp, gopacket.Payload(p.payload)}
	case protoICMPv6:
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmpType, p.icmpCode)}
		ic.SetNetworkLayerForChecksum(ip)
		switch p.icmpType {
		case icmp6Echo, icmp6EchoReply:
			id := p.sport
			if p.icmpType == icmp6EchoReply {
				id = p.dport
			}
			ls = []gopacket.SerializableLayer{ic, &layers.ICMPv6Echo{Identifier: id, SeqNumber: 7}, gopacket.Payload(p.payload)}
		default:
			ls = []gopacket.SerializableLayer{ic, gopacket.Payload(p.body)}
		}
	default:
		return append([]byte(nil), p.payload...)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize %v: %v", p.tuple, err)
	}
	b := append([]byte(nil), buf.Bytes()...)
	if p.proto == protoUDP && p.noUDPCsum {
		b[6], b[7] = 0, 0
	}
	return b
}

// packet is p's IPv6 packet: header, extension headers, transport.
func (p pkt6) packet(t testing.TB) []byte {
	t.Helper()
	first, chain := extChain(p.exts, p.proto)
	return ipv6Packet(t, p.src, p.dst, first, append(chain, p.transport(t)...))
}

// frame is p's Ethernet frame.
func (p pkt6) frame(t testing.TB) []byte {
	t.Helper()
	return ether6(p.packet(t))
}

// ipv6Packet serializes an IPv6 header (gopacket, payload length fixed) in
// front of payload.
func ipv6Packet(t testing.TB, src, dst netip.Addr, next uint8, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, TrafficClass: 0x10, FlowLabel: 0x12345, HopLimit: 63,
		NextHeader: layers.IPProtocol(next), SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ip, gopacket.Payload(payload)); err != nil {
		t.Fatalf("serialize IPv6 %s -> %s: %v", src, dst, err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// ether6 puts an Ethernet header of type IPv6 in front of an IPv6 packet.
func ether6(ip []byte) []byte {
	f := make([]byte, 14, 14+len(ip))
	copy(f, macB)
	copy(f[6:], macA)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	return append(f, ip...)
}

// icmp6Error builds an ICMPv6 error frame src -> dst whose message is
// type/code, the 4-byte field (MTU of a packet too big: 1280; pointer of a
// parameter problem: 6, the next header field) and quote.
func icmp6Error(t testing.TB, src, dst netip.Addr, typ, code uint8, quote []byte) []byte {
	t.Helper()
	body := make([]byte, 4, 4+len(quote))
	switch typ {
	case icmp6TooBig:
		binary.BigEndian.PutUint32(body, 1280)
	case icmp6ParamProb:
		binary.BigEndian.PutUint32(body, 6)
	}
	p := icmp6Other(src, dst, typ, append(body, quote...))
	p.icmpCode = code
	return p.frame(t)
}

// ip6Of returns the IPv6 packet of a frame: after the Ethernet header, up to
// the end its payload length says.
func ip6Of(frame []byte) []byte {
	ip := frame[14:]
	n := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if n > len(ip) {
		n = len(ip)
	}
	return ip[:n]
}

// quote6Of returns the first n bytes of the IPv6 packet of frame (all when
// n is 0 or larger), as an ICMPv6 error quotes it.
func quote6Of(frame []byte, n int) []byte {
	ip := ip6Of(frame)
	if n == 0 || n > len(ip) {
		n = len(ip)
	}
	return append([]byte(nil), ip[:n]...)
}

// --- reading and checking -------------------------------------------------

// ip6Info is an IPv6 packet as RFC 8200 reads it.
type ip6Info struct {
	src, dst netip.Addr
	proto    uint8 // transport protocol; for a later fragment the fragment header's next header
	l4       int   // offset of the transport header in the packet (not for a later fragment)
	end      int   // 40 + payload length
	exts     int   // extension headers walked
	fragHdr  int   // offset of the fragment header, 0: none
	fragOff  int   // fragment offset in bytes
	more     bool  // M flag
	fragID   uint32
}

func (i ip6Info) fragmented() bool { return i.fragHdr != 0 && (i.fragOff != 0 || i.more) }
func (i ip6Info) laterFragment() bool {
	return i.fragHdr != 0 && i.fragOff != 0
}

// errTooManyExts: the chain is longer than maxExts.
var errTooManyExts = fmt.Errorf("too many extension headers")

// walk6 reads the header and walks at most maxExts extension headers
// (hop-by-hop, routing, destination options, fragment) of the IPv6 packet
// ip, stopping at a later fragment. It checks only what it needs to read:
// each header within the packet.
func walk6(ip []byte, maxExts int) (ip6Info, error) {
	var i ip6Info
	if len(ip) < 40 {
		return i, fmt.Errorf("IPv6 header of %d bytes", len(ip))
	}
	if ip[0]>>4 != 6 {
		return i, fmt.Errorf("IP version %d", ip[0]>>4)
	}
	i.src = netip.AddrFrom16([16]byte(ip[8:24]))
	i.dst = netip.AddrFrom16([16]byte(ip[24:40]))
	i.end = 40 + int(binary.BigEndian.Uint16(ip[4:]))
	if i.end > len(ip) {
		i.end = len(ip)
	}
	next, off := ip[6], 40
	for {
		switch next {
		case extHopByHop, extRouting, extDstOpts, extFragment:
		default:
			i.proto, i.l4 = next, off
			return i, nil
		}
		if i.exts == maxExts {
			return i, errTooManyExts
		}
		i.exts++
		if next == extFragment {
			if off+8 > i.end {
				return i, fmt.Errorf("fragment header cut")
			}
			fo := binary.BigEndian.Uint16(ip[off+2:])
			i.fragHdr, i.fragOff, i.more, i.fragID = off, int(fo&0xfff8), fo&1 != 0, binary.BigEndian.Uint32(ip[off+4:])
			next, off = ip[off], off+8
			if i.fragOff != 0 {
				i.proto = next
				return i, nil
			}
			continue
		}
		if off+2 > i.end {
			return i, fmt.Errorf("extension header %d cut", next)
		}
		next, off = ip[off], off+(int(ip[off+1])+1)*8
	}
}

// pseudoHeader6 is the IPv6 pseudo-header of an upper-layer checksum.
func pseudoHeader6(src, dst netip.Addr, proto uint8, l4len int) []byte {
	p := make([]byte, 40)
	s, d := src.As16(), dst.As16()
	copy(p, s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint32(p[32:], uint32(l4len))
	p[39] = proto
	return p
}

// l4ChecksumOffset6 is where the checksum of a transport header is.
func l4ChecksumOffset6(proto uint8) int {
	switch proto {
	case protoTCP:
		return 16
	case protoUDP:
		return 6
	}
	return 2 // ICMPv6
}

// checkPacket6 recomputes from scratch the transport checksum of an IPv6
// packet (TCP, UDP and ICMPv6, each over the pseudo-header with the
// packet's addresses, the upper-layer length and the protocol), after
// walking its extension headers. A fragment's checksum covers the whole
// datagram and is not checked here (see reassemble6). zeroUDP accepts a UDP
// checksum of 0, which IPv6 forbids (RFC 8200 8.1) but a test may keep.
func checkPacket6(ip []byte, zeroUDP bool) error {
	i, err := walk6(ip, 16)
	if err != nil {
		return err
	}
	if i.fragmented() {
		return nil
	}
	seg := ip[i.l4:i.end]
	var min int
	switch i.proto {
	case protoTCP:
		min = 20
	case protoUDP:
		min = 8
	case protoICMPv6:
		min = 4
	default:
		return nil
	}
	if len(seg) < min {
		return fmt.Errorf("protocol %d: transport header of %d bytes", i.proto, len(seg))
	}
	off := l4ChecksumOffset6(i.proto)
	if i.proto == protoUDP {
		if ul := int(binary.BigEndian.Uint16(seg[4:])); ul != len(seg) {
			return fmt.Errorf("UDP length %d in a datagram of %d bytes", ul, len(seg))
		}
		if seg[6] == 0 && seg[7] == 0 {
			if zeroUDP {
				return nil
			}
			return fmt.Errorf("UDP over IPv6 with checksum 0")
		}
	}
	ph := pseudoHeader6(i.src, i.dst, i.proto, len(seg))
	if csum(append(ph, seg...)) != 0 {
		return fmt.Errorf("protocol %d checksum 0x%04x, want 0x%04x", i.proto, binary.BigEndian.Uint16(seg[off:]), fieldSum(ph, seg, off))
	}
	return nil
}

// checkFrame6 checks an IPv6 frame's transport checksum (checkPacket6) and,
// for an ICMPv6 error quoting a whole packet, the quoted packet's checksum.
func checkFrame6(frame []byte) error {
	if len(frame) < 14 || binary.BigEndian.Uint16(frame[12:]) != 0x86dd {
		return fmt.Errorf("not an IPv6 frame")
	}
	ip := ip6Of(frame)
	if err := checkPacket6(ip, false); err != nil {
		return err
	}
	if q, ok := errorQuote6(ip); ok && quoteIsWhole6(q) {
		if err := checkPacket6(q, false); err != nil {
			return fmt.Errorf("quoted packet: %w", err)
		}
	}
	return nil
}

// errorQuote6 returns the quote of an ICMPv6 error packet.
func errorQuote6(ip []byte) ([]byte, bool) {
	i, err := walk6(ip, 16)
	if err != nil || i.fragmented() || i.proto != protoICMPv6 || i.l4+8+40 > i.end || ip[i.l4] < 1 || ip[i.l4] > 4 {
		return nil, false
	}
	return ip[i.l4+8 : i.end], true
}

// quoteIsWhole6 reports whether a quote holds its whole packet.
func quoteIsWhole6(q []byte) bool {
	return len(q) >= 40 && 40+int(binary.BigEndian.Uint16(q[4:])) == len(q)
}

// requireChecksums6 fails the test unless every checksum of frame is right.
func requireChecksums6(t testing.TB, frame []byte) {
	t.Helper()
	if err := checkFrame6(frame); err != nil {
		t.Fatalf("output checksums: %v\n%s", err, hexdump(frame))
	}
}

// tuple6 reads the tuple of an IPv6 frame (after walking its extension
// headers) in the datapath's conventions; ok is false for a later fragment
// or a frame walk6 cannot read.
func tuple6(frame []byte) (tuple, bool) {
	ip := ip6Of(frame)
	i, err := walk6(ip, 16)
	if err != nil || i.laterFragment() {
		return tuple{}, false
	}
	u := tuple{proto: i.proto, src: i.src, dst: i.dst}
	l4 := ip[i.l4:]
	switch {
	case (i.proto == protoTCP || i.proto == protoUDP) && len(l4) >= 4:
		u.sport, u.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case i.proto == protoICMPv6 && len(l4) >= 8 && l4[0] == icmp6Echo:
		u.sport = binary.BigEndian.Uint16(l4[4:])
	case i.proto == protoICMPv6 && len(l4) >= 8 && l4[0] == icmp6EchoReply:
		u.dport = binary.BigEndian.Uint16(l4[4:])
	}
	return u, true
}

// decode6 returns the tuple of an IPv6 frame (tuple6) and, where gopacket
// decodes the frame completely (no fragment or segment routing header),
// requires gopacket to read the same, so that the tests do not rely on
// walk6 alone.
func decode6(t testing.TB, frame []byte) tuple {
	t.Helper()
	u, ok := tuple6(frame)
	if !ok {
		t.Fatalf("output is not a readable IPv6 packet\n%s", hexdump(frame))
	}
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if p.ErrorLayer() != nil {
		return u
	}
	var g tuple
	if ip, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		g.src, _ = netip.AddrFromSlice(ip.SrcIP)
		g.dst, _ = netip.AddrFromSlice(ip.DstIP)
	}
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		g.proto, g.sport, g.dport = protoTCP, uint16(l.SrcPort), uint16(l.DstPort)
	case *layers.UDP:
		g.proto, g.sport, g.dport = protoUDP, uint16(l.SrcPort), uint16(l.DstPort)
	default:
		if ic, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
			g.proto = protoICMPv6
			if e, ok := p.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo); ok {
				if ic.TypeCode.Type() == icmp6Echo {
					g.sport = e.Identifier
				} else {
					g.dport = e.Identifier
				}
			}
		} else {
			return u
		}
	}
	if g != u {
		t.Fatalf("gopacket reads %v, walk6 %v\n%s", g, u, hexdump(frame))
	}
	return u
}

// checksumFields6 returns the offsets in frame of the checksum fields that
// a translation may legitimately write as 0xffff instead of 0x0000 (or the
// other way round): the transport checksum and, in an ICMPv6 error, the
// quote's.
func checksumFields6(frame []byte) []int {
	ip := ip6Of(frame)
	i, err := walk6(ip, 16)
	if err != nil || i.laterFragment() {
		return nil
	}
	offs := []int{14 + i.l4 + l4ChecksumOffset6(i.proto)}
	if q, ok := errorQuote6(ip); ok {
		qi, err := walk6(q, 16)
		qoff := 14 + len(ip) - len(q)
		if err == nil && !qi.laterFragment() && qi.l4+l4ChecksumOffset6(qi.proto)+2 <= len(q) {
			offs = append(offs, qoff+qi.l4+l4ChecksumOffset6(qi.proto))
		}
	}
	return offs
}

// requireSame6 fails unless got equals want byte for byte, except that a
// checksum field may hold 0x0000 for 0xffff and the other way round (the
// same ones' complement zero), and that the outer ICMPv6 checksum of an
// error, which requireChecksums6 verifies from scratch, is not compared.
func requireSame6(t testing.TB, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("output is %d bytes, want %d\ngot:\n%swant:\n%s", len(got), len(want), hexdump(got), hexdump(want))
	}
	skip := map[int]bool{}
	for _, off := range checksumFields6(want) {
		g, w := binary.BigEndian.Uint16(got[off:]), binary.BigEndian.Uint16(want[off:])
		if g == w || (g^w == 0xffff && (g == 0 || w == 0)) {
			skip[off], skip[off+1] = true, true
		}
	}
	var diffs []string
	for i := range want {
		if !skip[i] && got[i] != want[i] {
			diffs = append(diffs, fmt.Sprintf("byte %d: 0x%02x, want 0x%02x", i, got[i], want[i]))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("output differs from the expected frame:\n%s\ngot:\n%swant:\n%s", strings.Join(diffs, "\n"), hexdump(got), hexdump(want))
	}
}

// --- fragments ------------------------------------------------------------

// fragments6 splits the IPv6 packet of frame into fragment frames at the
// given offsets of the fragmentable part (multiples of 8). The first
// unfrag extension headers are the unfragmentable part and are repeated in
// every fragment; the fragment header (identification id) follows them.
func fragments6(t testing.TB, frame []byte, unfrag int, id uint32, cuts ...int) [][]byte {
	t.Helper()
	ip := ip6Of(frame)
	// Find the end of the unfragmentable part and the next-header field
	// that must point at the fragment header.
	nextField, off := 6, 40
	for range unfrag {
		nextField, off = off, off+(int(ip[off+1])+1)*8
	}
	unfragPart, rest := ip[:off], ip[off:]
	var out [][]byte
	eachFragment(t, len(rest), cuts, func(start, end int, more bool) {
		p := append([]byte(nil), unfragPart...)
		fh := make([]byte, 8)
		fh[0] = ip[nextField]
		fo := uint16(start)
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		p[nextField] = extFragment
		p = append(append(p, fh...), rest[start:end]...)
		binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		out = append(out, ether6(p))
	})
	return out
}

// reassemble6 puts fragment frames (in any order) back together into the
// packet they came from, as a receiver does: the unfragmentable part and
// addresses of the first fragment, the fragmentable parts by offset.
func reassemble6(t testing.TB, frames [][]byte) []byte {
	t.Helper()
	var head []byte
	var next uint8
	parts := map[int][]byte{}
	total := -1
	for _, f := range frames {
		ip := ip6Of(f)
		i, err := walk6(ip, 16)
		if err != nil || i.fragHdr == 0 {
			t.Fatalf("reassemble: not a fragment (%v)\n%s", err, hexdump(f))
		}
		data := ip[i.fragHdr+8 : i.end]
		parts[i.fragOff] = data
		if !i.more {
			total = i.fragOff + len(data)
		}
		if i.fragOff == 0 {
			head = append([]byte(nil), ip[:i.fragHdr]...)
			next = ip[i.fragHdr]
			// The next-header field that points at the fragment header.
			field, off := 6, 40
			for off < i.fragHdr {
				field, off = off, off+(int(ip[off+1])+1)*8
			}
			head[field] = next
		}
	}
	if head == nil || total < 0 {
		t.Fatal("reassemble: first or last fragment missing")
	}
	body := make([]byte, 0, total)
	for len(body) < total {
		part, ok := parts[len(body)]
		if !ok {
			t.Fatalf("reassemble: no fragment at offset %d", len(body))
		}
		body = append(body, part...)
	}
	p := append(head, body...)
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	return p
}

// setPayloadLen6 sets the payload length field of an IPv6 frame.
func setPayloadLen6(f []byte, n int) []byte {
	binary.BigEndian.PutUint16(f[14+4:], uint16(n))
	return f
}

// ipv6Net is a convenience for gopacket layers that want net.IP.
func ipv6Net(a netip.Addr) net.IP { return a.AsSlice() }

// TestChecksum6 proves the IPv6 checker: it accepts what gopacket builds
// (with and without extension headers, as fragments reassembled) and
// rejects every single corrupted checksum, covered byte and pseudo-header
// address. Needs no privilege.
func TestChecksum6(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    pkt6
	}{
		{"tcp", tcp6(pod6A, 40000, remote6, 443, "S")},
		{"udp", udp6(pod6A, 40000, remote6, 53)},
		{"icmpv6 echo", echo6(pod6A, remote6, 0x4242)},
		{"tcp behind hop-by-hop, routing, destination options", tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop, extRouting, extDstOpts)},
		{"udp behind an atomic fragment header", udp6(pod6A, 40000, remote6, 53).withExts(extFragment)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.p.frame(t)
			if err := checkFrame6(f); err != nil {
				t.Fatalf("gopacket's frame rejected: %v\n%s", err, hexdump(f))
			}
			if u := decode6(t, f); u != tc.p.tuple {
				t.Fatalf("decoded %v, want %v", u, tc.p.tuple)
			}
			i, err := walk6(ip6Of(f), 16)
			if err != nil || i.proto != tc.p.proto || i.exts != len(tc.p.exts) {
				t.Fatalf("walk6: %+v, %v", i, err)
			}
			l4 := 14 + i.l4
			port := l4 + 1 // low byte of the source port
			if tc.p.proto == protoICMPv6 {
				port = l4 + 5 // low byte of the identifier
			}
			for name, off := range map[string]int{
				"l4 checksum field":   l4 + l4ChecksumOffset6(tc.p.proto),
				"port or identifier":  port,
				"last payload byte":   len(f) - 1,
				"source address":      14 + 8 + 15,
				"destination address": 14 + 24,
			} {
				bad := append([]byte(nil), f...)
				bad[off] ^= 0x01
				if err := checkFrame6(bad); err == nil {
					t.Errorf("%s corrupted: accepted", name)
				}
			}
		})
	}
	t.Run("fragments reassembled", func(t *testing.T) {
		p := udp6(pod6A, 40000, remote6, 53)
		p.payload = bytes.Repeat([]byte("0123456789abcdef"), 100)
		whole := p.packet(t)
		frags := fragments6(t, ether6(whole), 0, 7, 1000, 1400)
		if len(frags) != 3 {
			t.Fatalf("%d fragments", len(frags))
		}
		got := reassemble6(t, [][]byte{frags[2], frags[0], frags[1]})
		if !bytes.Equal(got, whole) {
			t.Fatalf("reassembled packet differs\ngot:\n%swant:\n%s", hexdump(got), hexdump(whole))
		}
		if err := checkPacket6(got, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("icmpv6 error with a whole quote", func(t *testing.T) {
		q := quote6Of(tcp6(node6, 1234, remote6, 443, "S").frame(t), 0)
		f := icmp6Error(t, router6, node6, icmp6TooBig, 0, q)
		if err := checkFrame6(f); err != nil {
			t.Fatal(err)
		}
		// A byte of the quoted TCP payload is covered by both checksums.
		bad := append([]byte(nil), f...)
		bad[len(bad)-1] ^= 1
		if err := checkFrame6(bad); err == nil {
			t.Error("corrupted error accepted")
		}
		// With the outer checksum made right again, the quote's own
		// checksum must still catch it.
		ip := ip6Of(bad)
		binary.BigEndian.PutUint16(ip[42:], fieldSum(pseudoHeader6(router6, node6, protoICMPv6, len(ip)-40), ip[40:], 2))
		if err := checkFrame6(bad); err == nil || !strings.Contains(err.Error(), "quoted") {
			t.Errorf("quote with a wrong checksum in an error with a right one: %v", err)
		}
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
