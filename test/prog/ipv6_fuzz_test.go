package prog

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// IPv6 fuzz targets (docs/development.md, docs/behaviour.md §5.7): arbitrary IPv6 frames through the
// programs with --enable-ipv6, checked against an oracle written from the
// specification (parse6Frame, the oracles below), not from the C. The
// properties are those of fuzz_test.go for IPv4:
//   - the verdict is pass, or drop only where the specification says so (a
//     new flow that cannot be mapped, a later fragment ahead of its first);
//   - exactly the IPv6 counters the oracle names move, by one, and no IPv4
//     counter;
//   - a packet that is not translated leaves byte for byte as it came;
//   - a translated packet differs only in the translated address, port and
//     the checksums (for an ICMPv6 error: also its quote), its checksums are
//     right if the input's were (recomputed over the IPv6 pseudo-header), and
//     a UDP checksum of 0 stays 0;
//   - egress: the reply to a translated packet (addresses and ports of the
//     output swapped) is translated back on ingress to the original tuple.
// The EtherType is forced to IPv6 (the IPv4 targets cover the others).
// Every input starts from the same state: the IPv6 maps that packets write
// are brought back to the baseline mappings. Without -fuzz, `go test` runs
// the seed corpus.

// parsedTruncExt: an extension header reaches past the payload length. The
// packet passes unchanged, counted as malformed (or as other when the cut
// header is one more than the datapath walks).
const parsedTruncExt = "truncext"

// parsedTooMany: more extension headers than the datapath walks.
const parsedTooMany = "toomany"

// maxExtHeaders is how many extension headers the datapath walks
// (IPM_MAX_EXT_HEADERS in bpf/packet6.h); a longer chain is "other".
const maxExtHeaders = 6

// parsed6 is an IPv6 frame as the oracle reads it; offsets are in the frame.
type parsed6 struct {
	tuple
	l4       int // transport header
	end      int // end of the IPv6 packet (payload length, bounded by the frame)
	tcpFlags uint8
	icmpType uint8
	udpCsum0 bool
	first    bool // first fragment (offset 0, more fragments)
}

// parse6Frame reads an IPv6 frame as docs/behaviour.md §5.7 and §13 say the datapath
// must: version 6, else malformed; a payload length of 0 (without GSO, as
// here) leaves no room for a transport header: malformed; hop-by-hop,
// routing, destination options and fragment headers walked (each whole
// within the packet, else malformed; more than maxExtHeaders: other); a
// later fragment has no transport header; TCP, UDP and ICMPv6 need their
// fixed header (20, 8, 8 bytes) within the packet, else malformed; ICMPv6
// echo request and reply of code 0 have an identifier, errors (1-4) a
// quote, the rest (neighbour discovery, MLD, ...) is other, as is any other
// protocol.
func parse6Frame(f []byte) (parsed6, string) {
	var p parsed6
	ip := f[14:]
	if len(ip) < 40 || ip[0]>>4 != 6 {
		return p, parsedMalformed
	}
	pl := int(binary.BigEndian.Uint16(ip[4:]))
	p.src = netip.AddrFrom16([16]byte(ip[8:24]))
	p.dst = netip.AddrFrom16([16]byte(ip[24:40]))
	if pl == 0 {
		return p, parsedMalformed
	}
	p.end = min(14+40+pl, len(f))
	next, off, n := ip[6], 14+40, 0
	for {
		switch next {
		case extHopByHop, extRouting, extDstOpts, extFragment:
		default:
			goto transport
		}
		if n == maxExtHeaders {
			// Other; or malformed, by a datapath that tries to read one
			// header more and finds it cut: it passes unchanged either way.
			return p, parsedTooMany
		}
		n++
		if next == extFragment {
			if off+8 > p.end {
				return p, parsedTruncExt
			}
			fo := binary.BigEndian.Uint16(f[off+2:])
			next, off = f[off], off+8
			if fo&0xfff8 != 0 {
				p.proto = next
				return p, parsedFragment
			}
			p.first = fo&1 != 0
			continue
		}
		if off+2 > p.end {
			return p, parsedTruncExt
		}
		next, off = f[off], off+(int(f[off+1])+1)*8
		if off > p.end {
			return p, parsedTruncExt
		}
	}
transport:
	p.proto, p.l4 = next, off
	need := map[uint8]int{protoTCP: 20, protoUDP: 8, protoICMPv6: 8}[p.proto]
	if need == 0 {
		return p, parsedOther
	}
	if p.l4+need > p.end {
		return p, parsedMalformed
	}
	l4 := f[p.l4:]
	switch p.proto {
	case protoTCP:
		p.sport, p.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		p.tcpFlags = l4[13]
	case protoUDP:
		p.sport, p.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		p.udpCsum0 = l4[6] == 0 && l4[7] == 0
	case protoICMPv6:
		p.icmpType = l4[0]
		if l4[0] >= icmp6Unreach && l4[0] <= icmp6ParamProb {
			return p, parsedICMPError
		}
		var ok bool
		if p.sport, p.dport, ok = echoPorts(l4, icmp6Echo, icmp6EchoReply); !ok {
			return p, parsedOther
		}
	}
	return p, parsedOK
}

// quote6 is the packet quoted in an ICMPv6 error; offsets in the frame.
type quote6 struct {
	tuple
	ip, l4  int
	csumOff int  // its transport checksum when quoted and in use, else 0
	whole   bool // the quote holds the whole quoted packet
}

// parseQuote6 reads the quote of ICMPv6 error p: an IPv6 header, its
// extension headers (as parse6Frame, within the error; the quote's own
// payload length is the original packet's), not a later fragment, and at
// least 8 bytes of a TCP or UDP header or of an ICMPv6 echo; a TCP checksum
// is in the quote only with 18 bytes of TCP header.
func parseQuote6(f []byte, p parsed6) (quote6, bool) {
	q := quote6{ip: p.l4 + 8}
	if q.ip+40 > p.end || f[q.ip]>>4 != 6 {
		return q, false
	}
	q.src = netip.AddrFrom16([16]byte(f[q.ip+8 : q.ip+24]))
	q.dst = netip.AddrFrom16([16]byte(f[q.ip+24 : q.ip+40]))
	q.whole = q.ip+40+int(binary.BigEndian.Uint16(f[q.ip+4:])) == p.end
	next, off := f[q.ip+6], q.ip+40
	for n := 0; ; n++ {
		switch next {
		case extHopByHop, extRouting, extDstOpts, extFragment:
		default:
			q.proto, q.l4 = next, off
			goto transport
		}
		if n == maxExtHeaders {
			return q, false
		}
		if next == extFragment {
			if off+8 > p.end || binary.BigEndian.Uint16(f[off+2:])&0xfff8 != 0 {
				return q, false
			}
			next, off = f[off], off+8
			continue
		}
		if off+2 > p.end {
			return q, false
		}
		next, off = f[off], off+(int(f[off+1])+1)*8
	}
transport:
	if q.l4+8 > p.end {
		return q, false
	}
	l4 := f[q.l4:]
	switch q.proto {
	case protoTCP:
		q.sport, q.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		if q.l4+18 <= p.end {
			q.csumOff = q.l4 + 16
		}
	case protoUDP:
		q.sport, q.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		if l4[6] != 0 || l4[7] != 0 {
			q.csumOff = q.l4 + 6
		}
	case protoICMPv6:
		var ok bool
		if q.sport, q.dport, ok = echoPorts(l4, icmp6Echo, icmp6EchoReply); !ok {
			return q, false
		}
		q.csumOff = q.l4 + 2
	default:
		return q, false
	}
	return q, true
}

// nat6State is what the oracle knows of the IPv6 NAT table.
type nat6State struct {
	out map[tuple]netip.AddrPort // pod tuple -> node address and port
	in  map[tuple]tuple          // reply tuple to the node -> pod tuple
	pod map[tuple]podSide        // reply tuple -> the pod's side of a TCP mapping
}

func newNAT6State(e *env, t testing.TB) nat6State {
	s := nat6State{out: map[tuple]netip.AddrPort{}, in: map[tuple]tuple{}, pod: map[tuple]podSide{}}
	snap, err := maps.NewNAT6Table(e.dp).Read()
	if err != nil {
		t.Fatal(err)
	}
	all := e.natEntries6(t)
	for _, f := range snap.Flows {
		pod := tuple{f.Proto, f.Pod.Addr(), f.Remote.Addr(), f.Pod.Port(), f.Remote.Port()}
		node := tuple{f.Proto, f.Node.Addr(), f.Remote.Addr(), f.Node.Port(), f.Remote.Port()}
		if f.Proto == protoICMPv6 {
			pod.dport, node.dport = 0, 0
		}
		s.out[pod] = f.Node
		s.in[node.reply()] = pod
		if v, ok := all[natKey6(dirEgress, f.Proto, pod.src, pod.dst, pod.sport, pod.dport)]; ok && f.Proto == protoTCP {
			s.pod[node.reply()] = podSideOf(v.Flags, v.TcpAck, v.TcpWin, v.TcpWscale)
		}
	}
	return s
}

// expect6x is the oracle's verdict: the counters that must move (any one of
// the alternatives, when an equally valid design counts differently).
type expect6x struct {
	counters  []map[string]uint64
	drop      bool
	translate string // "": unchanged; "flow", "host", "icmp": translated
	reserve   bool   // egress: a host reservation must appear
	reset     bool   // egress: turned into a RST to the pod and redirected
}

func one6(counters ...string) []map[string]uint64 {
	var out []map[string]uint64
	for _, c := range counters {
		out = append(out, map[string]uint64{c: 1})
	}
	return out
}

func isNomasq6(a netip.Addr) bool {
	return linkLocal6.Contains(a) || slices.ContainsFunc(nonMasq6, func(p netip.Prefix) bool { return p.Contains(a) })
}

// classify6 parses an IPv6 frame and, where both programs treat it alike
// (malformed, too many extension headers, another protocol), says what the
// program of direction dir ("egress", "ingress") must do: done. Otherwise
// the program's own oracle decides on what the frame is.
func classify6(f []byte, dir string) (p parsed6, what string, x expect6x, done bool) {
	p, what = parse6Frame(f)
	switch what {
	case parsedTruncExt, parsedTooMany:
		return p, what, expect6x{counters: one6(dir+"_malformed", dir+"_other")}, true
	case parsedMalformed:
		if binary.BigEndian.Uint16(f[18:]) == 0 && f[14]>>4 == 6 {
			// An empty packet: malformed or, by its next header, other.
			return p, what, expect6x{counters: one6(dir+"_malformed", dir+"_other")}, true
		}
		fallthrough
	case parsedOther:
		return p, what, expect6x{counters: one6(dir + "_" + what)}, true
	}
	return p, what, x, false
}

// egressOracle6 says what ipm_egress must do with an IPv6 frame.
func egressOracle6(f []byte, s nat6State) (parsed6, quote6, expect6x) {
	p, what, x, done := classify6(f, "egress")
	var q quote6
	if done {
		return p, q, x
	}
	isLocal := slices.Contains(local6, p.src)
	switch what {
	case parsedFragment:
		if isLocal || isNomasq6(p.dst) {
			return p, q, expect6x{counters: one6("egress_fragment")}
		}
		return p, q, expect6x{counters: one6("egress_frag_orphan"), drop: true}
	case parsedICMPError:
		var ok bool
		if q, ok = parseQuote6(f, p); ok {
			if _, mapped := s.out[q.tuple.reply()]; mapped {
				return p, q, expect6x{counters: one6("egress_icmp_error"), translate: "icmp"}
			}
		}
		return p, q, expect6x{counters: one6("egress_other")}
	}
	if _, ok := s.out[p.tuple]; ok {
		return p, q, expect6x{counters: one6("egress_translated"), translate: "flow"}
	}
	opens := p.proto == protoUDP || (p.proto == protoTCP && p.tcpFlags&0x12 == 0x02) || (p.proto == protoICMPv6 && p.icmpType == icmp6Echo)
	if isLocal {
		rk := p.tuple.reply()
		if p.proto == protoICMPv6 {
			rk.sport, rk.dport = 0, p.sport
		}
		if _, taken := s.in[rk]; taken {
			if opens {
				return p, q, expect6x{counters: one6("egress_host_moved"), translate: "host"}
			}
			return p, q, expect6x{counters: one6("egress_host")}
		}
		return p, q, expect6x{counters: one6("egress_host"), reserve: true}
	}
	switch {
	case isNomasq6(p.dst):
		return p, q, expect6x{counters: one6("egress_nomasq")}
	case !opens && p.proto == protoTCP:
		// See egressOracle: never leaves with the pod address.
		if p.tcpFlags&0x04 != 0 || p.l4 != 14+40 {
			return p, q, expect6x{counters: one6("egress_tcp_unknown_drop"), drop: true}
		}
		return p, q, expect6x{counters: one6("egress_tcp_reset"), reset: true}
	case !opens:
		return p, q, expect6x{counters: one6("egress_inbound")}
	}
	return p, q, expect6x{counters: one6("egress_new_flow"), translate: "flow"}
}

// ingressOracle6 says what ipm_ingress must do with an IPv6 frame.
func ingressOracle6(f []byte, s nat6State) (parsed6, quote6, expect6x) {
	p, what, x, done := classify6(f, "ingress")
	var q quote6
	if done {
		return p, q, x
	}
	switch what {
	case parsedFragment:
		return p, q, expect6x{counters: one6("ingress_frag_orphan")}
	case parsedICMPError:
		var ok bool
		if q, ok = parseQuote6(f, p); !ok {
			return p, q, expect6x{counters: one6("ingress_other")}
		}
		if _, mapped := s.in[q.tuple.reply()]; mapped {
			return p, q, expect6x{counters: one6("ingress_icmp_error"), translate: "icmp"}
		}
		return p, q, expect6x{counters: one6("ingress_miss")}
	}
	if _, ok := s.in[p.tuple]; ok {
		return p, q, expect6x{counters: one6(remoteCounter(p.proto, s.pod[p.tuple], p.tcpFlags, f, p.l4)), translate: "flow"}
	}
	if !slices.Contains(local6, p.dst) && (p.proto == protoUDP && !isNomasq6(p.src) || p.proto == protoTCP && p.tcpFlags&0x12 == 0x02) {
		// A flow opened from outside towards a pod (earlier datapaths
		// also counted it as a miss).
		return p, q, expect6x{counters: []map[string]uint64{{"ingress_inbound": 1}, {"ingress_inbound": 1, "ingress_miss": 1}}}
	}
	return p, q, expect6x{counters: one6("ingress_miss")}
}

// requireCounters6 fails unless the IPv6 counters moved as one of the
// alternatives says, and no IPv4 counter moved.
func requireCounters6(t testing.TB, moved, v4 map[string]uint64, alts []map[string]uint64, in []byte) {
	t.Helper()
	delete(moved, "egress_csum_ambiguous") // not a verdict (see requireCounters)
	for _, want := range alts {
		ok := len(moved) == len(want) && len(v4) == 0
		for k, v := range want {
			ok = ok && moved[k] == v
		}
		if ok {
			return
		}
	}
	t.Fatalf("counters moved IPv6 %v, IPv4 %v; want IPv6 one of %v\n%s", moved, v4, alts, hexdump(in))
}

// endpointOffsets6 are the bytes of the source or destination address and
// port (ICMPv6 echo: identifier) of an IPv6 packet at ip with transport
// header at l4.
func endpointOffsets6(proto uint8, ip, l4 int, source bool) []int {
	offs := span(ip+24, 16)
	if source {
		offs = span(ip+8, 16)
	}
	switch {
	case proto == protoICMPv6:
		return append(offs, span(l4+4, 2)...)
	case source:
		return append(offs, span(l4, 2)...)
	}
	return append(offs, span(l4+2, 2)...)
}

// translatedOffsets6 are the bytes a translation may change: the endpoint
// and the transport checksum; for an ICMPv6 error its checksum, the outer
// address, and in the quote the endpoint and the transport checksum when the
// quote holds it.
func translatedOffsets6(p parsed6, q quote6, x expect6x, source bool) []int {
	if x.translate != "icmp" {
		return append(span(p.l4+l4ChecksumOffset6(p.proto), 2), endpointOffsets6(p.proto, 14, p.l4, source)...)
	}
	offs := span(p.l4+2, 2)
	offs = append(offs, endpointOffsets6(q.proto, q.ip, q.l4, !source)...)
	if q.csumOff != 0 {
		offs = append(offs, span(q.csumOff, 2)...)
	}
	if source {
		return append(offs, span(14+8, 16)...)
	}
	return append(offs, span(14+24, 16)...)
}

// requireTranslatedChecksums6: a translation keeps right checksums right
// (the transport checksum over the pseudo-header; for an ICMPv6 error its
// own and, when the whole packet is quoted, the quote's) and a UDP checksum
// of 0 at 0.
func requireTranslatedChecksums6(t testing.TB, in, out []byte, p parsed6, q quote6, x expect6x) {
	t.Helper()
	if checkPacket6(ip6Of(in), false) == nil {
		if err := checkPacket6(ip6Of(out), false); err != nil {
			t.Fatalf("input checksums right, output's wrong: %v\nin:\n%sout:\n%s", err, hexdump(in), hexdump(out))
		}
	}
	if x.translate != "icmp" {
		if p.proto == protoUDP && p.udpCsum0 && (out[p.l4+6] != 0 || out[p.l4+7] != 0) {
			t.Fatalf("UDP checksum 0 became 0x%02x%02x", out[p.l4+6], out[p.l4+7])
		}
		return
	}
	if q.whole {
		if checkPacket6(in[q.ip:p.end], false) == nil {
			if err := checkPacket6(out[q.ip:p.end], false); err != nil {
				t.Fatalf("quoted packet's checksum broken: %v\nin:\n%sout:\n%s", err, hexdump(in), hexdump(out))
			}
		}
	}
	if q.proto == protoUDP && q.csumOff == 0 && (out[q.l4+6] != 0 || out[q.l4+7] != 0) {
		t.Fatalf("quoted UDP checksum 0 changed")
	}
}

// setChecksum6 recomputes the transport checksum of a well-formed IPv6
// frame from scratch (a UDP checksum of 0 stays 0).
func setChecksum6(f []byte) {
	ip := ip6Of(f)
	i, err := walk6(ip, 16)
	if err != nil || i.fragmented() {
		return
	}
	seg := ip[i.l4:i.end]
	off := l4ChecksumOffset6(i.proto)
	if i.proto == protoUDP && seg[6] == 0 && seg[7] == 0 {
		return
	}
	c := fieldSum(pseudoHeader6(i.src, i.dst, i.proto, len(seg)), seg, off)
	if c == 0 && i.proto == protoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(seg[off:], c)
}

// replyFrame6 turns a translated egress frame into the remote's reply:
// addresses, ports and TCP sequence and acknowledgement numbers swapped (ICMPv6: an echo reply with the same
// identifier), the checksum recomputed if the frame's was right.
func replyFrame6(out []byte, p parsed6) []byte {
	r := append([]byte(nil), out...)
	valid := checkPacket6(ip6Of(out), false) == nil
	for i := range 16 {
		r[14+8+i], r[14+24+i] = r[14+24+i], r[14+8+i]
	}
	switch p.proto {
	case protoTCP, protoUDP:
		for i := range 2 {
			r[p.l4+i], r[p.l4+2+i] = r[p.l4+2+i], r[p.l4+i]
		}
		if p.proto == protoTCP {
			swapTCPSeqAck(r, p.l4)
		}
	case protoICMPv6:
		r[p.l4] = icmp6EchoReply
	}
	if valid {
		setChecksum6(r)
	}
	return r
}

// fuzzSeeds6 are IPv6 frames of every kind. m is a mapping in place (node
// port nodePort): its packets, a host flow on its tuple and ICMPv6 errors
// about it are among them.
func fuzzSeeds6(t testing.TB, ingress bool, m pkt6, nodePort uint16) [][]byte {
	var ps []pkt6
	sent := m.with(tuple{m.proto, node6, m.dst, nodePort, m.dport})                 // m as it left
	arrived := replyTo6(m, nodePort)                                                // its reply at the node
	delivered := arrived.with(tuple{m.proto, m.dst, m.src, arrived.sport, m.sport}) // and at the pod
	if ingress {
		ps = []pkt6{
			tcp6(remote6, 443, node6, 40000, "SA"),
			tcp6(remote6, 443, node6, 40000, "FA").withExts(extDstOpts),
			udp6(remote6, 53, node6, 40001),
			udp6(remote6, 53, node6, 40001).withExts(extHopByHop, extRouting),
			echoReply6(remote6, node6, 0x4242),
			echoReply6(remote6, node6, 0x4242).withExts(extFragment),
			tcp6(remote6, 444, node6, 40000, "SA"),
			echo6(remote6, node6, 0x4242),
			udp6(remote6, 5000, pod6A, 53),
			arrived,
		}
	} else {
		ps = []pkt6{
			tcp6(pod6A, 40000, remote6, 443, "S"),
			tcp6(pod6A, 40000, remote6, 443, "A"),
			udp6(pod6A, 40001, remote6, 53),
			udp6(pod6A, 40001, remote6, 53).noUDPChecksum(),
			echo6(pod6A, remote6, 0x4242),
			tcp6(pod6A, 40000, remote6, 443, "S").withExts(extHopByHop, extDstOpts, extRouting),
			udp6(pod6A, 40000, remote6, 53).withExts(extFragment),
			tcp6(pod6A, 40000, vpc6, 443, "S"),
			udp6(pod6A, 40000, ll6, 53),
			udp6(node6, 40000, remote6, 53),
			echoReply6(pod6A, remote6, 3),
			m,
			sent, // a host flow on the mapping's tuple
		}
	}
	var out [][]byte
	for _, p := range ps {
		out = append(out, p.frame(t))
	}
	for _, f := range ndFrames(t) {
		out = append(out, f)
	}
	base := out[0]
	big := big6(ps[2]).frame(t)
	frags := fragments6(t, big, 0, 77, 1200)
	out = append(out,
		frags[0], frags[1],
		setPayloadLen6(append([]byte(nil), base...), 0),
		setPayloadLen6(append([]byte(nil), base...), 10),
		append([]byte(nil), base[:14+40+12]...),
		ipv6Frame(t),
	)
	for _, n := range []int{0, 48} {
		if ingress {
			out = append(out, icmp6Error(t, router6, node6, icmp6TooBig, 0, quote6Of(sent.frame(t), n)),
				icmp6Error(t, remote6, node6, icmp6Unreach, 4, quote6Of(sent.frame(t), n)))
		} else {
			out = append(out, icmp6Error(t, node6, m.dst, icmp6TimeExceed, 0, quote6Of(delivered.frame(t), n)),
				icmp6Error(t, m.src, m.dst, icmp6Unreach, 4, quote6Of(delivered.frame(t), n)))
		}
	}
	return out
}

// asIPv6 returns the input with the IPv6 EtherType.
func asIPv6(in []byte) []byte {
	f := append([]byte(nil), in...)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	return f
}

// fuzz6 adds seeds to f and runs every input of a plausible size, made an
// IPv6 frame, through ingress or else egress; check judges the result and
// the IPv6 and IPv4 counters that moved. The NAT state goes back to
// baseline after each input.
func (e *env) fuzz6(f *testing.F, seeds [][]byte, ingress bool, baseline map[nat6Key]nat6Entry,
	check func(t *testing.T, in []byte, r result, moved, v4 map[string]uint64)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < 14+40 || len(raw) > maxFrame {
			return
		}
		in := asIPv6(raw)
		defer func() { e.reset6(t); e.restore6(t, baseline) }()
		before := e.snap(t)
		r := e.through(t, ingress, in)
		moved, v4 := e.moved6(t, before)
		check(t, in, r, moved, v4)
	})
}

// FuzzEgress6: arbitrary IPv6 frames through ipm_egress with
// --enable-ipv6, nonMasqueradeCIDRs [fd00::/8] and fe80::/10, with one
// mapping in place (UDP pod6B:41000 -> remote6:53, node port 41000); every
// translated flow is answered and the answer must come back to the original
// tuple.
func FuzzEgress6(f *testing.F) {
	requireRoot(f)
	e := newEnv6(f, config6{config: config{keepPorts: true}})
	m := udp6(pod6B, 41000, remote6, 53)
	port := e.masquerade6(f, m)
	baseline := e.natEntries6(f)
	state := newNAT6State(e, f)
	e.fuzz6(f, fuzzSeeds6(f, false, m, port), false, baseline, func(t *testing.T, in []byte, r result, moved, v4 map[string]uint64) {
		p, q, x := egressOracle6(in, state)

		switch {
		case x.reset:
			if r.ret != actRedirect {
				t.Fatalf("verdict %d, counters %v; oracle: a reset to the pod\n%s", r.ret, moved, hexdump(in))
			}
			requireCounters6(t, moved, v4, x.counters, in)
			if len(r.out) < 74 {
				t.Fatalf("reset is %d bytes", len(r.out))
			}
			requireChecksums6(t, r.out[:74])
			if d := decode6(t, r.out[:74]); d != p.tuple.reply() || r.out[14+40+13] != 0x14 {
				t.Fatalf("reset %v flags %#x, want RST|ACK for %v", d, r.out[14+40+13], p.tuple)
			}
			return
		case r.ret != actPass && r.ret != actShot:
			t.Fatalf("verdict %d, want pass (-1) or drop (2)", r.ret)
		case r.ret == actShot && x.translate == "flow" && len(moved) == 1 && (moved["egress_no_port"] == 1 || moved["egress_table_full"] == 1):
			return // fail closed: allowed for a new flow
		case (r.ret == actShot) != x.drop:
			t.Fatalf("verdict %s, counters %v; oracle: %+v\n%s", verdictName(r.ret), moved, x, hexdump(in))
		}
		requireCounters6(t, moved, v4, x.counters, in)
		if x.drop {
			return
		}
		if x.translate == "" {
			requireUnchanged(t, r.out, in)
			snap := e.nat6Snapshot(t)
			want := 0
			if x.reserve {
				want = 1
			}
			if len(snap.Flows) != len(state.out) || snap.Orphans != 0 || len(snap.Reserved) != want {
				t.Fatalf("%v: IPv6 NAT table has %d flows, %d orphans, %d host reservations; want %d, 0, %d", x.counters, len(snap.Flows), snap.Orphans, len(snap.Reserved), len(state.out), want)
			}
			return
		}

		requireOnlyChanged(t, in, r.out, translatedOffsets6(p, q, x, true)...)
		requireTranslatedChecksums6(t, in, r.out, p, q, x)
		if x.translate == "icmp" {
			oq, ok := parseQuote6(r.out, p)
			node := state.out[q.tuple.reply()]
			want := tuple{q.proto, q.src, node.Addr(), q.sport, node.Port()}
			if q.proto == protoICMPv6 {
				want.sport, want.dport = 0, node.Port()
			}
			if !ok || oq.tuple != want {
				t.Fatalf("ICMPv6 error quoting %v left quoting %v, want %v", q.tuple, oq.tuple, want)
			}
			if op, _ := parse6Frame(r.out); p.src == q.dst && op.src != node6 {
				t.Fatalf("the pod's own ICMPv6 error left from %s, want %s", op.src, node6)
			}
			return
		}
		op, what := parse6Frame(r.out)
		if what != parsedOK || op.src != node6 || op.dst != p.dst || op.dport != p.dport || op.proto != p.proto {
			t.Fatalf("%v became %v (%s), want source %s", p.tuple, op.tuple, what, node6)
		}
		if p.proto != protoICMPv6 && !e.inRanges(op.sport) {
			t.Fatalf("node port %d outside %v", op.sport, e.ports)
		}
		if want, ok := state.out[p.tuple]; ok && netip.AddrPortFrom(op.src, op.sport) != want {
			t.Fatalf("established %v left as %v, want %v", p.tuple, op.tuple, want)
		}
		if x.counters[0]["egress_new_flow"] == 1 || x.counters[0]["egress_host_moved"] == 1 {
			snap := e.nat6Snapshot(t)
			found := false
			for _, fl := range snap.Flows {
				found = found || (fl.Pod == netip.AddrPortFrom(p.src, p.sport) && fl.Node == netip.AddrPortFrom(node6, op.sport) && fl.HasIn)
			}
			if !found || len(snap.Flows) != len(state.out)+1 || snap.Orphans != 0 || len(snap.Reserved) != 0 {
				t.Fatalf("after a new flow: %d flows (want %d), %d orphans, %d reservations, mapping %v via %d found %v", len(snap.Flows), len(state.out)+1, snap.Orphans, len(snap.Reserved), p.tuple, op.sport, found)
			}
		}

		// The reply comes back to the original tuple.
		reply := replyFrame6(r.out, op)
		rp, _ := parse6Frame(reply)
		var pod podSide
		if v, ok := e.natEntries6(t)[natKey6(dirEgress, p.proto, p.src, p.dst, p.sport, p.dport)]; ok {
			pod = podSideOf(v.Flags, v.TcpAck, v.TcpWin, v.TcpWscale)
		}
		before := e.snap(t)
		back := e.ingress(t, reply)
		requireVerdict(t, back, actPass)
		moved, v4 = e.moved6(t, before)
		requireCounters6(t, moved, v4, one6(remoteCounter(rp.proto, pod, rp.tcpFlags, reply, rp.l4)), reply)
		rx := expect6x{translate: "flow"}
		requireOnlyChanged(t, reply, back.out, translatedOffsets6(rp, quote6{}, rx, false)...)
		requireTranslatedChecksums6(t, reply, back.out, rp, quote6{}, rx)
		bp, what := parse6Frame(back.out)
		if what != parsedOK || bp.tuple != p.reply() {
			t.Fatalf("reply %v came back as %v (%s), want %v", rp.tuple, bp.tuple, what, p.reply())
		}
	})
}

// FuzzIngress6: arbitrary IPv6 frames through ipm_ingress with
// --enable-ipv6 and three mappings in place (TCP, UDP, ICMPv6 echo; node
// ports = the pods' ports). Exactly the frames whose tuple is a mapping's
// reply tuple, and the ICMPv6 errors that quote a packet of a mapping, are
// translated, back to the pod.
func FuzzIngress6(f *testing.F) {
	requireRoot(f)
	e := newEnv6(f, config6{config: config{keepPorts: true}})
	flows := []pkt6{
		tcp6(pod6A, 40000, remote6, 443, "S"),
		udp6(pod6A, 40001, remote6, 53),
		echo6(pod6A, remote6, 0x4242),
	}
	for _, p := range flows {
		if port := e.masquerade6(f, p); port != p.sport {
			f.Fatalf("setting up mapping %v: node port %d, want the pod's", p.tuple, port)
		}
	}
	baseline := e.natEntries6(f)
	state := newNAT6State(e, f)
	e.fuzz6(f, fuzzSeeds6(f, true, flows[0], flows[0].sport), true, baseline, func(t *testing.T, in []byte, r result, moved, v4 map[string]uint64) {
		p, q, x := ingressOracle6(in, state)
		if r.ret != actPass {
			t.Fatalf("ingress verdict %d %s (counters %v): it only drops a half-rewritten packet, which must not happen\n%s", r.ret, verdictName(r.ret), moved, hexdump(in))
		}
		requireCounters6(t, moved, v4, x.counters, in)
		if snap := e.nat6Snapshot(t); len(snap.Flows) != len(state.out) || snap.Orphans != 0 || len(snap.Reserved) != 0 || len(e.natEntries6(t)) != len(baseline) {
			t.Fatalf("ingress changed the IPv6 NAT table: %d flows, %d orphans, %d reservations, %d entries; want %d flows, %d entries", len(snap.Flows), snap.Orphans, len(snap.Reserved), len(e.natEntries6(t)), len(state.out), len(baseline))
		}
		if x.translate == "" {
			requireUnchanged(t, r.out, in)
			return
		}
		requireOnlyChanged(t, in, r.out, translatedOffsets6(p, q, x, false)...)
		requireTranslatedChecksums6(t, in, r.out, p, q, x)
		if x.translate == "icmp" {
			oq, ok := parseQuote6(r.out, p)
			pod := state.in[q.tuple.reply()]
			if !ok || oq.tuple != pod {
				t.Fatalf("ICMPv6 error quoting %v became quoting %v, want %v", q.tuple, oq.tuple, pod)
			}
			if op, _ := parse6Frame(r.out); p.dst == q.src && op.dst != pod.src {
				t.Fatalf("ICMPv6 error to %s went on to %s, want the pod %s", p.dst, op.dst, pod.src)
			}
			return
		}
		op, what := parse6Frame(r.out)
		if pod := state.in[p.tuple]; what != parsedOK || op.tuple != pod.reply() {
			t.Fatalf("reply %v became %v (%s), want %v", p.tuple, op.tuple, what, pod.reply())
		}
	})
}

// nat6Snapshot reads the IPv6 NAT table as the agent does.
func (e *env) nat6Snapshot(t testing.TB) maps.Snapshot {
	t.Helper()
	snap, err := maps.NewNAT6Table(e.dp).Read()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// restore6 writes the baseline IPv6 NAT entries back (after reset6).
func (e *env) restore6(t testing.TB, baseline map[nat6Key]nat6Entry) {
	t.Helper()
	for k, v := range baseline {
		m := e.dp.Maps.IpmNat6
		if h := e.hostres6(); v.Kind == kindHost && h != nil {
			m = h
		}
		if err := m.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOracle6 checks the IPv6 fuzz oracle on the table tests' frames, so
// that it and the tables agree. Needs no privilege.
func TestOracle6(t *testing.T) {
	s := nat6State{out: map[tuple]netip.AddrPort{}, in: map[tuple]tuple{}}
	for _, tc := range []struct {
		f    []byte
		want string
	}{
		{tcp6(pod6A, 1, remote6, 2, "S").frame(t), "egress_new_flow"},
		{tcp6(pod6A, 1, remote6, 2, "S").withExts(extHopByHop, extDstOpts, extDstOpts, extRouting, extDstOpts, extDstOpts).frame(t), "egress_new_flow"},
		{tcp6(pod6A, 1, remote6, 2, "S").withExts(extHopByHop, extDstOpts, extDstOpts, extRouting, extDstOpts, extDstOpts, extDstOpts).frame(t), "egress_other"},
		{tcp6(pod6A, 1, remote6, 2, "SA").frame(t), "egress_tcp_reset"},
		{tcp6(pod6A, 1, vpc6, 2, "S").frame(t), "egress_nomasq"},
		{tcp6(pod6A, 1, ll6, 2, "S").frame(t), "egress_nomasq"},
		{udp6(node6Other, 1, remote6, 2).frame(t), "egress_host"},
		{echoReply6(pod6A, remote6, 1).frame(t), "egress_inbound"},
		{fragments6(t, big6(udp6(pod6A, 1, remote6, 2)).frame(t), 0, 1, 1200)[1], "egress_frag_orphan"},
		{fragments6(t, big6(udp6(pod6A, 1, vpc6, 2)).frame(t), 0, 1, 1200)[1], "egress_fragment"},
		{setPayloadLen6(udp6(pod6A, 1, remote6, 2).frame(t), 6), "egress_malformed"},
		{icmp6Error(t, pod6A, remote6, icmp6Unreach, 4, quote6Of(udp6(remote6, 2, pod6A, 1).frame(t), 48)), "egress_other"},
	} {
		_, _, x := egressOracle6(tc.f, s)
		if len(x.counters) == 0 || len(x.counters[0]) != 1 || x.counters[len(x.counters)-1][tc.want] != 1 {
			t.Errorf("oracle says %v, want %s\n%s", x.counters, tc.want, hexdump(tc.f))
		}
	}
	for name, f := range ndFrames(t) {
		if _, _, x := egressOracle6(f, s); len(x.counters) != 1 || x.counters[0]["egress_other"] != 1 {
			t.Errorf("%s: oracle says %v, want egress_other", name, x.counters)
		}
	}
	e := icmp6Error(t, router6, node6, icmp6TooBig, 0, quote6Of(tcp6(node6, 1, remote6, 2, "S").frame(t), 48))
	p, _ := parse6Frame(e)
	q, ok := parseQuote6(e, p)
	if !ok || q.tuple != (tuple{protoTCP, node6, remote6, 1, 2}) || q.csumOff != 0 || q.whole {
		t.Errorf("8-byte TCP quote read as %+v, %v", q, ok)
	}
}
