package prog

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// The fuzz targets feed arbitrary frames to the programs (docs/development.md) and check
// each run against an oracle written from the specification, not from the C:
// parseFrame says what the packet is, and that decides which counter must
// move and whether and how the packet must be translated. Properties:
//   - the verdict is pass, or drop only where the specification says so (a
//     new flow that cannot be mapped, a fragment ahead of its first);
//   - the counters the oracle names move, by one, and no other;
//   - a packet that is not translated leaves byte for byte as it came;
//   - a translated packet differs only in the translated address, port and
//     the checksums (for an ICMP error: also in its quote), its checksums are
//     right if the input's were, and a UDP checksum of 0 stays 0;
//   - egress: the reply to a translated packet (addresses and ports of the
//     output swapped) is translated back on ingress to the original tuple.
// Every input starts from the same state: the NAT table is brought back to
// its baseline, the fragment and inbound maps are emptied.
// Without -fuzz, `go test` runs the seed corpus below.

// maxFrame bounds fuzz inputs: an Ethernet frame of a 1500-byte MTU.
const maxFrame = 1514

// What parseFrame makes of a frame; the counter suffix of each outcome.
const (
	parsedOK        = "ok"
	parsedOther     = "other" // not IPv4, another protocol or ICMP type
	parsedMalformed = "malformed"
	parsedFragment  = "fragment"  // a non-first fragment
	parsedICMPError = "icmperror" // destination unreachable, time exceeded, parameter problem
)

// parsed is a frame as the oracle reads it.
type parsed struct {
	tuple
	l4       int // offset of the L4 header in the frame
	end      int // end of the IP packet in the frame (tot_len, or the frame when 0)
	tcpFlags uint8
	icmpType uint8
	udpCsum0 bool
}

// parseFrame reads a frame as docs/behaviour.md §4 to §6 and §13 say the datapath must:
// IPv4 by EtherType; version 4, IHL at least 5 and tot_len at least IHL
// (tot_len 0 is BIG TCP's, legal only on GSO packets, which a test run never
// has), else malformed; a non-first fragment has no L4
// header; TCP, UDP and ICMP need their whole header within the frame and
// within tot_len, else malformed; ICMP echo requests and replies of code 0
// have an identifier; ICMP errors carry a quote; anything else is "other".
func parseFrame(f []byte) (parsed, string) {
	var p parsed
	if len(f) < 14 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return p, parsedOther
	}
	ip := f[14:]
	if len(ip) < 20 {
		return p, parsedMalformed
	}
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < 20 || tot < ihl {
		return p, parsedMalformed
	}
	p.proto = ip[9]
	p.src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.dst = netip.AddrFrom4([4]byte(ip[16:20]))
	p.end = len(f)
	if tot != 0 && 14+tot < p.end {
		p.end = 14 + tot
	}
	if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
		return p, parsedFragment
	}
	p.l4 = 14 + ihl
	need := map[uint8]int{protoTCP: 20, protoUDP: 8, protoICMP: 8}[p.proto]
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
	case protoICMP:
		p.icmpType = l4[0]
		if l4[0] == icmpUnreachable || l4[0] == icmpTimeExceed || l4[0] == 12 {
			return p, parsedICMPError
		}
		var ok bool
		if p.sport, p.dport, ok = echoPorts(l4, icmpEcho, icmpEchoReply); !ok {
			return p, parsedOther
		}
	}
	return p, parsedOK
}

// echoPorts reads the identifier of an ICMP or ICMPv6 echo header as the
// oracle's ports: a request's is the source port, a reply's the
// destination port. ok is false for another type, or a code other than 0.
func echoPorts(l4 []byte, request, reply uint8) (sport, dport uint16, ok bool) {
	switch {
	case l4[1] != 0:
		return 0, 0, false
	case l4[0] == request:
		return binary.BigEndian.Uint16(l4[4:]), 0, true
	case l4[0] == reply:
		return 0, binary.BigEndian.Uint16(l4[4:]), true
	}
	return 0, 0, false
}

// quote is the packet quoted in an ICMP error.
type quote struct {
	tuple
	ip, l4  int  // offsets in the frame
	csumOff int  // offset of its L4 checksum when quoted and in use, else 0
	whole   bool // the quote holds the whole quoted packet
}

// parseQuote reads the quote of ICMP error p as docs/behaviour.md §5 describes it: an
// IPv4 header (not of a non-first fragment) and at least 8 bytes of its
// TCP, UDP or ICMP echo header, all within the ICMP message; a TCP checksum
// is in the quote only when 18 bytes of TCP header are.
func parseQuote(f []byte, p parsed) (quote, bool) {
	q := quote{ip: p.l4 + 8}
	if q.ip+20 > p.end || f[q.ip]>>4 != 4 {
		return q, false
	}
	ihl := int(f[q.ip]&0xf) * 4
	q.l4 = q.ip + ihl
	if ihl < 20 || q.l4+8 > p.end || binary.BigEndian.Uint16(f[q.ip+6:])&0x1fff != 0 {
		return q, false
	}
	q.proto = f[q.ip+9]
	q.src = netip.AddrFrom4([4]byte(f[q.ip+12 : q.ip+16]))
	q.dst = netip.AddrFrom4([4]byte(f[q.ip+16 : q.ip+20]))
	q.whole = q.ip+int(binary.BigEndian.Uint16(f[q.ip+2:])) == p.end
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
	case protoICMP:
		var ok bool
		if q.sport, q.dport, ok = echoPorts(l4, icmpEcho, icmpEchoReply); !ok {
			return q, false
		}
		q.csumOff = q.l4 + 2
	default:
		return q, false
	}
	return q, true
}

// natState is what the oracle knows of the NAT table: the mappings by
// their egress key and by their ingress key.
type natState struct {
	out map[tuple]netip.AddrPort // pod tuple -> node address and port
	in  map[tuple]tuple          // reply tuple to the node -> pod tuple
	pod map[tuple]podSide        // reply tuple -> the pod's side of a TCP mapping
}

func newNATState(e *env, t testing.TB) natState {
	s := natState{out: map[tuple]netip.AddrPort{}, in: map[tuple]tuple{}, pod: map[tuple]podSide{}}
	snap, err := e.nat.Read()
	if err != nil {
		t.Fatal(err)
	}
	all := e.natEntries(t)
	for _, f := range snap.Flows {
		pod := tuple{f.Proto, f.Pod.Addr(), f.Remote.Addr(), f.Pod.Port(), f.Remote.Port()}
		node := tuple{f.Proto, f.Node.Addr(), f.Remote.Addr(), f.Node.Port(), f.Remote.Port()}
		if f.Proto == protoICMP {
			pod.dport, node.dport = 0, 0
		}
		s.out[pod] = f.Node
		s.in[node.reply()] = pod
		if v, ok := all[natKey(dirEgress, f.Proto, pod.src, pod.dst, pod.sport, pod.dport)]; ok && f.Proto == protoTCP {
			s.pod[node.reply()] = podSideOf(v.Flags, v.TcpAck, v.TcpWin, v.TcpWscale)
		}
	}
	return s
}

// Oracle verdicts beyond a single counter.
type expect struct {
	counters  map[string]uint64
	drop      bool
	translate string // "": unchanged; "flow", "host", "icmp": translated
	reserve   bool   // egress: a host reservation must appear
	reset     bool   // egress: turned into a RST to the pod and redirected
}

func one(counter string) map[string]uint64 { return map[string]uint64{counter: 1} }

// egressOracle says what ipm_egress must do with a frame, given the NAT
// state and the default configuration.
func egressOracle(f []byte, local []netip.Addr, s natState) (parsed, quote, expect) {
	p, what := parseFrame(f)
	var q quote
	isLocal := slices.Contains(local, p.src)
	nomasq := false
	for _, n := range append(slices.Clone(defaultNonMasq), linkLocal) {
		nomasq = nomasq || n.Contains(p.dst)
	}
	switch what {
	case parsedOther, parsedMalformed:
		return p, q, expect{counters: one("egress_" + what)}
	case parsedFragment:
		if isLocal || nomasq {
			return p, q, expect{counters: one("egress_fragment")}
		}
		return p, q, expect{counters: one("egress_frag_orphan"), drop: true}
	case parsedICMPError:
		var ok bool
		if q, ok = parseQuote(f, p); ok {
			// The quote is remote -> pod; the pod's flow is its reverse.
			if _, mapped := s.out[q.tuple.reply()]; mapped {
				return p, q, expect{counters: one("egress_icmp_error"), translate: "icmp"}
			}
		}
		return p, q, expect{counters: one("egress_other")}
	}
	if _, ok := s.out[p.tuple]; ok {
		return p, q, expect{counters: one("egress_translated"), translate: "flow"}
	}
	opens := p.proto == protoUDP || (p.proto == protoTCP && p.tcpFlags&0x12 == 0x02) || (p.proto == protoICMP && p.icmpType == icmpEcho)
	if isLocal {
		rk := p.tuple.reply()
		if p.proto == protoICMP {
			rk.sport, rk.dport = 0, p.sport
		}
		if _, taken := s.in[rk]; taken {
			if opens {
				return p, q, expect{counters: one("egress_host_moved"), translate: "host"}
			}
			return p, q, expect{counters: one("egress_host")}
		}
		return p, q, expect{counters: one("egress_host"), reserve: true}
	}
	switch {
	case nomasq:
		return p, q, expect{counters: one("egress_nomasq")}
	case !opens && p.proto == protoTCP:
		// Mid-stream without a mapping and not known to be exempt: never
		// leaves with the pod address. A RST, or a segment behind IP
		// options, is dropped; anything else becomes a RST to the pod.
		if p.tcpFlags&0x04 != 0 || p.l4 != 14+20 {
			return p, q, expect{counters: one("egress_tcp_unknown_drop"), drop: true}
		}
		return p, q, expect{counters: one("egress_tcp_reset"), reset: true}
	case !opens:
		return p, q, expect{counters: one("egress_inbound")}
	}
	return p, q, expect{counters: one("egress_new_flow"), translate: "flow"}
}

// ingressOracle says what ipm_ingress must do with a frame.
func ingressOracle(f []byte, local []netip.Addr, s natState) (parsed, quote, expect) {
	p, what := parseFrame(f)
	var q quote
	switch what {
	case parsedOther, parsedMalformed:
		return p, q, expect{counters: one("ingress_" + what)}
	case parsedFragment:
		return p, q, expect{counters: one("ingress_frag_orphan")}
	case parsedICMPError:
		var ok bool
		if q, ok = parseQuote(f, p); !ok {
			return p, q, expect{counters: one("ingress_other")}
		}
		// The quote is node -> remote; its reply is the mapping's key.
		if _, mapped := s.in[q.tuple.reply()]; mapped {
			return p, q, expect{counters: one("ingress_icmp_error"), translate: "icmp"}
		}
		return p, q, expect{counters: one("ingress_miss")}
	}
	if _, ok := s.in[p.tuple]; ok {
		return p, q, expect{counters: one(remoteCounter(p.proto, s.pod[p.tuple], p.tcpFlags, f, p.l4)), translate: "flow"}
	}
	if !slices.Contains(local, p.dst) {
		// Towards a pod without a mapping: a UDP flow from a masqueraded
		// remote, or any TCP connection's SYN, is recorded as exempt.
		fromNomasq := false
		for _, n := range append(slices.Clone(defaultNonMasq), linkLocal) {
			fromNomasq = fromNomasq || n.Contains(p.src)
		}
		if (p.proto == protoUDP && !fromNomasq) || (p.proto == protoTCP && p.tcpFlags&0x12 == 0x02) {
			return p, q, expect{counters: one("ingress_inbound")}
		}
	}
	return p, q, expect{counters: one("ingress_miss")}
}

// requireOnlyChanged fails unless out equals in except at the given offsets.
func requireOnlyChanged(t testing.TB, in, out []byte, allowed ...int) {
	t.Helper()
	if len(in) != len(out) {
		t.Fatalf("translated frame is %d bytes, input %d", len(out), len(in))
	}
	ok := map[int]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	for i := range in {
		if in[i] != out[i] && !ok[i] {
			t.Fatalf("translation changed byte %d (0x%02x -> 0x%02x), outside the address, port and checksums\nin:\n%sout:\n%s", i, in[i], out[i], hexdump(in), hexdump(out))
		}
	}
}

// span returns n offsets from off.
func span(off, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = off + i
	}
	return s
}

// endpointOffsets are the bytes of the source or destination address and
// port (ICMP echo: identifier) of an IP packet at ip with L4 header at l4.
func endpointOffsets(proto uint8, ip, l4 int, source bool) []int {
	var offs []int
	if source {
		offs = span(ip+12, 4)
	} else {
		offs = span(ip+16, 4)
	}
	switch {
	case proto == protoICMP:
		return append(offs, span(l4+4, 2)...)
	case source:
		return append(offs, span(l4, 2)...)
	}
	return append(offs, span(l4+2, 2)...)
}

// l4ChecksumOffset is where the L4 checksum of a packet is.
func l4ChecksumOffset(proto uint8, l4 int) int {
	switch proto {
	case protoTCP:
		return l4 + 16
	case protoUDP:
		return l4 + 6
	}
	return l4 + 2
}

// translatedOffsets are the bytes a translation may change: the IP
// checksum, the endpoint and the L4 checksum; for an ICMP error its IP and
// ICMP checksums, the outer address, and in the quote the endpoint, the IP
// checksum and the L4 checksum when the quote holds it.
func translatedOffsets(p parsed, q quote, x expect, source bool) []int {
	offs := span(24, 2)
	if x.translate != "icmp" {
		offs = append(offs, span(l4ChecksumOffset(p.proto, p.l4), 2)...)
		return append(offs, endpointOffsets(p.proto, 14, p.l4, source)...)
	}
	offs = append(offs, span(p.l4+2, 2)...)
	offs = append(offs, span(q.ip+10, 2)...)
	offs = append(offs, endpointOffsets(q.proto, q.ip, q.l4, !source)...)
	if q.csumOff != 0 {
		offs = append(offs, span(q.csumOff, 2)...)
	}
	if source {
		return append(offs, span(26, 4)...)
	}
	return append(offs, span(30, 4)...)
}

// requireTranslatedChecksums: a translation keeps right checksums right
// (for an ICMP error: its own, its quote's IP header checksum and, when the
// whole packet is quoted, the quote's L4 checksum) and a UDP checksum of 0
// at 0.
func requireTranslatedChecksums(t testing.TB, in, out []byte, p parsed, q quote, x expect) {
	t.Helper()
	if checkFrame(in) == nil {
		if err := checkFrame(out); err != nil {
			t.Fatalf("input checksums right, output's wrong: %v\nin:\n%sout:\n%s", err, hexdump(in), hexdump(out))
		}
	}
	if x.translate != "icmp" {
		if p.proto == protoUDP && p.udpCsum0 && udpChecksum(out) != 0 {
			t.Fatalf("UDP checksum 0 became 0x%04x", udpChecksum(out))
		}
		return
	}
	qihl := int(in[q.ip]&0xf) * 4
	if csum(in[q.ip:q.ip+qihl]) == 0 && csum(out[q.ip:q.ip+qihl]) != 0 {
		t.Fatalf("quoted IPv4 header checksum broken\nin:\n%sout:\n%s", hexdump(in), hexdump(out))
	}
	if q.whole {
		inner := func(f []byte) []byte { return append(append([]byte(nil), f[:14]...), f[q.ip:p.end]...) }
		if checkFrame(inner(in)) == nil {
			if err := checkFrame(inner(out)); err != nil {
				t.Fatalf("quoted packet's checksums broken: %v\nin:\n%sout:\n%s", err, hexdump(in), hexdump(out))
			}
		}
	}
	if q.proto == protoUDP && q.csumOff == 0 && (out[q.l4+6] != 0 || out[q.l4+7] != 0) {
		t.Fatalf("quoted UDP checksum 0 changed")
	}
}

// replyFrame turns a translated egress frame into the remote's reply:
// addresses, ports and TCP sequence and acknowledgement numbers swapped (ICMP: an echo reply with the same
// identifier), every checksum recomputed if the frame's were right.
func replyFrame(out []byte, p parsed) []byte {
	r := append([]byte(nil), out...)
	valid := checkFrame(out) == nil
	for i := range 4 {
		r[26+i], r[30+i] = r[30+i], r[26+i]
	}
	switch p.proto {
	case protoTCP, protoUDP:
		for i := range 2 {
			r[p.l4+i], r[p.l4+2+i] = r[p.l4+2+i], r[p.l4+i]
		}
		if p.proto == protoTCP {
			swapTCPSeqAck(r, p.l4)
		}
	case protoICMP:
		r[p.l4] = icmpEchoReply
	}
	if valid {
		setChecksums(r)
	}
	return r
}

// swapTCPSeqAck makes a reply's sequence number the pod's acknowledgement,
// as a real remote's is: the datapath judges a remote's FIN or RST against
// the window the pod announced. Both fields are 16-bit aligned, so the swap
// leaves the checksum right. A header cut short keeps what it has.
func swapTCPSeqAck(r []byte, l4 int) {
	if len(r) < l4+12 {
		return
	}
	for i := range 4 {
		r[l4+4+i], r[l4+8+i] = r[l4+8+i], r[l4+4+i]
	}
}

// setChecksums recomputes every checksum of a well-formed frame from
// scratch (a UDP checksum of 0 stays 0).
func setChecksums(f []byte) {
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	binary.BigEndian.PutUint16(ip[10:], fieldSum(nil, ip[:ihl], 10))
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return // a fragment: its L4 checksum covers the whole datagram
	}
	seg := ip[ihl:tot]
	switch ip[9] {
	case protoTCP:
		binary.BigEndian.PutUint16(seg[16:], fieldSum(pseudoHeader(ip, protoTCP, len(seg)), seg, 16))
	case protoUDP:
		if seg[6] != 0 || seg[7] != 0 {
			c := fieldSum(pseudoHeader(ip, protoUDP, len(seg)), seg, 6)
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(seg[6:], c)
		}
	case protoICMP:
		binary.BigEndian.PutUint16(seg[2:], fieldSum(nil, seg, 2))
	}
}

// isIPv6 reports an IPv6 EtherType.
func isIPv6(f []byte) bool { return len(f) >= 14 && binary.BigEndian.Uint16(f[12:]) == 0x86dd }

// requireCounters fails unless exactly the counters in want moved, by
// their amounts.
func requireCounters(t testing.TB, moved, want map[string]uint64, in []byte) {
	t.Helper()
	// Not a verdict: counted besides one (a UDP checksum that equals its
	// own pseudo-header seed, in a build that cannot read the state).
	delete(moved, "egress_csum_ambiguous")
	ok := len(moved) == len(want)
	for k, v := range want {
		ok = ok && moved[k] == v
	}
	if !ok {
		t.Fatalf("counters moved %v, want %v\n%s", moved, want, hexdump(in))
	}
}

// resetState brings the NAT table back to baseline and empties the
// fragment and inbound maps.
func (e *env) resetState(t testing.TB, baseline map[maps.NATKey]maps.NATEntry) {
	t.Helper()
	e.deleteEntries(t, baseline)
	// The baseline's own values too: an input moves the pod's recorded
	// window or a mapping's flags, and the next input is judged against
	// the baseline, not against what the last one left.
	for k, v := range baseline {
		m := e.dp.Maps.IpmNat4
		var old maps.NATEntry
		if e.dp.Maps.IpmHostres4.Lookup(&k, &old) == nil {
			m = e.dp.Maps.IpmHostres4
		}
		if err := m.Put(&k, &v); err != nil {
			t.Fatalf("restore baseline entry %+v: %v", k, err)
		}
	}
	clearMap(t, e.dp.Maps.IpmFrag4)
	clearMap(t, e.dp.Maps.IpmInbound4)
	clearMap(t, e.dp.Maps.IpmNomasqTcp4)
}

// requireFuzzReset checks the reset a pod's unknown mid-stream segment in
// became: addresses and ports swapped, RST|ACK, sequence from the
// segment's acknowledgement (0 without ACK), no payload, checksums right.
func requireFuzzReset(t testing.TB, in, out []byte, p parsed) {
	t.Helper()
	if len(out) < 54 {
		t.Fatalf("reset is %d bytes\n%s", len(out), hexdump(out))
	}
	out = out[:54]
	d := decode(t, out)
	if d.tcp == nil || d.tuple != p.tuple.reply() || !d.tcp.RST || !d.tcp.ACK || len(d.tcp.Payload) != 0 {
		t.Fatalf("reset %v %+v, want a bare RST|ACK for %v\n%s", d.tuple, d.tcp, p.tuple, hexdump(out))
	}
	wantSeq := uint32(0)
	if p.tcpFlags&0x10 != 0 {
		wantSeq = binary.BigEndian.Uint32(in[p.l4+8:])
	}
	if d.tcp.Seq != wantSeq {
		t.Fatalf("reset seq %#x, want %#x\n%s", d.tcp.Seq, wantSeq, hexdump(in))
	}
	requireChecksums(t, out)
}

// fuzzSeeds are frames of every kind, built from the same packets as the
// table tests. m is a mapping in place: its egress and reply packets, and
// ICMP errors about it, are among them.
func fuzzSeeds(t testing.TB, ingress bool, m pkt, nodePort uint16) [][]byte {
	var ps []pkt
	if ingress {
		ps = []pkt{
			tcpPkt(remote, 443, nodeAddr, 40000, "SA"),
			tcpPkt(remote, 443, nodeAddr, 40000, "FA"),
			udpPkt(remote, 53, nodeAddr, 40001),
			udpPkt(remote, 53, nodeAddr, 40001).noUDPChecksum(),
			echoReply(remote, nodeAddr, 0x4242),
			withOptions(tcpPkt(remote, 443, nodeAddr, 40000, "A"), 8),
			withOptions(udpPkt(remote, 53, nodeAddr, 40001), 40),
			tcpPkt(remote, 444, nodeAddr, 40000, "SA"),
			echoRequest(remote, nodeAddr, 0x4242),
			udpPkt(remote, 5000, podA, 53),
		}
	} else {
		ps = []pkt{
			tcpPkt(podA, 40000, remote, 443, "S"),
			tcpPkt(podA, 40000, remote, 443, "A"),
			udpPkt(podA, 40001, remote, 53),
			udpPkt(podA, 40001, remote, 53).noUDPChecksum(),
			echoRequest(podA, remote, 0x4242),
			withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 8),
			withOptions(udpPkt(podA, 40000, remote, 53), 40),
			withOptions(echoRequest(podA, remote, 1), 4),
			tcpPkt(podA, 40000, inCluster, 443, "S"),
			udpPkt(nodeAddr, 40000, remote, 53),
			echoReply(podA, remote, 3),
			m,
			m.with(tuple{m.proto, nodeAddr, m.dst, nodePort, m.dport}), // a host flow on the mapping's tuple
		}
	}
	var out [][]byte
	for _, p := range ps {
		out = append(out, p.frame(t))
	}
	base := out[0]
	out = append(out,
		ipv6Frame(t),
		arpFrame(t),
		setIHL(slices.Clone(base), 4),
		setTotLen(slices.Clone(base), 0),
		setTotLen(slices.Clone(base), 30),
		setFrag(slices.Clone(base), false, 185),
		setFrag(slices.Clone(base), true, 0),
		setProto(slices.Clone(base), 47),
		slices.Clone(base[:14+20+10]),
	)
	// ICMP errors about the mapping m, whole and 8-byte quotes.
	sent := m.with(tuple{m.proto, nodeAddr, m.dst, nodePort, m.dport}).frame(t) // as it left
	arrived := m.with(tuple{m.proto, m.dst, m.src, m.dport, m.sport}).frame(t)  // a reply, translated
	for _, n := range []int{0, 28} {
		if ingress {
			out = append(out, icmpError(t, router, nodeAddr, icmpUnreachable, 4, quoteOf(sent, n)))
		} else {
			out = append(out, icmpError(t, nodeAddr, m.dst, icmpUnreachable, 4, quoteOf(arrived, n)),
				icmpError(t, m.src, m.dst, icmpUnreachable, 3, quoteOf(arrived, n)))
		}
	}
	return out
}

// fuzz adds seeds to f and runs every input the test run takes through
// ingress or else egress; check judges the result against the counters
// before the run. The NAT state goes back to baseline after each input.
func (e *env) fuzz(f *testing.F, seeds [][]byte, ingress bool, baseline map[maps.NATKey]maps.NATEntry,
	check func(t *testing.T, in []byte, r result, before map[string]uint64)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if refusedByTestRun(in) || len(in) > maxFrame {
			return
		}
		defer e.resetState(t, baseline)
		before := e.readCounters(t)
		check(t, in, e.through(t, ingress, in), before)
	})
}

// FuzzEgress: arbitrary frames through ipm_egress in the default
// configuration, with one mapping in place (TCP podB:41000 -> remote:443);
// every translated flow is answered and the answer must come back to the
// original tuple.
func FuzzEgress(f *testing.F) {
	requireRoot(f)
	e := newEnv(f, config{keepPorts: true})
	local := []netip.Addr{nodeAddr, nodeOther, netip.MustParseAddr("127.0.0.1")}
	m := tcpPkt(podB, 41000, remote, 443, "S")
	port := e.masquerade(f, m)
	baseline := e.natEntries(f)
	state := newNATState(e, f)
	e.fuzz(f, fuzzSeeds(f, false, m, port), false, baseline, func(t *testing.T, in []byte, r result, before map[string]uint64) {
		p, q, x := egressOracle(in, local, state)
		moved := e.countersMoved(t, before)

		switch {
		case x.reset:
			if r.ret != actRedirect {
				t.Fatalf("verdict %d, counters %v; oracle: a reset to the pod\n%s", r.ret, moved, hexdump(in))
			}
			requireCounters(t, moved, x.counters, in)
			requireFuzzReset(t, in, r.out, p)
			return
		case r.ret != actPass && r.ret != actShot:
			t.Fatalf("verdict %d, want pass (-1) or drop (2)", r.ret)
		case r.ret == actShot && x.translate == "flow" && len(moved) == 1 && (moved["egress_no_port"] == 1 || moved["egress_table_full"] == 1):
			return // fail closed: allowed for a new flow
		case (r.ret == actShot) != x.drop:
			t.Fatalf("verdict %s, counters %v; oracle: %+v\n%s", verdictName(r.ret), moved, x, hexdump(in))
		}
		if isIPv6(in) {
			// --enable-ipv6 is off: IPv6 passes unchanged.
			if r.ret != actPass || !ipv6Counted(moved, "egress") {
				t.Fatalf("IPv6 frame: verdict %s, IPv4 counters moved %v", verdictName(r.ret), moved)
			}
			requireUnchanged(t, r.out, in)
			return
		}
		requireCounters(t, moved, x.counters, in)
		if x.drop {
			return
		}
		if x.translate == "" {
			requireUnchanged(t, r.out, in)
			all := e.natEntries(t)
			if x.reserve {
				rk := natKey(dirIngress, p.proto, p.dst, p.src, p.dport, p.sport)
				if p.proto == protoICMP {
					rk.Sport, rk.Dport = 0, be16(p.sport)
				}
				if v, ok := all[rk]; len(all) != len(baseline)+1 || !ok || v.Kind != kindHost {
					t.Fatalf("host packet %v: NAT table %+v, want the baseline and the reservation %+v", p.tuple, all, rk)
				}
			} else if len(all) != len(baseline) {
				t.Fatalf("%v created %d NAT entries", x.counters, len(all)-len(baseline))
			}
			return
		}

		requireOnlyChanged(t, in, r.out, translatedOffsets(p, q, x, true)...)
		requireTranslatedChecksums(t, in, r.out, p, q, x)
		if x.translate == "icmp" {
			oq, ok := parseQuote(r.out, p)
			node := state.out[q.tuple.reply()]
			want := tuple{q.proto, q.src, node.Addr(), q.sport, node.Port()}
			if q.proto == protoICMP {
				want.sport, want.dport = 0, node.Port()
			}
			if !ok || oq.tuple != want {
				t.Fatalf("ICMP error quoting %v left quoting %v, want %v", q.tuple, oq.tuple, want)
			}
			if op, _ := parseFrame(r.out); p.src == q.dst && op.src != nodeAddr {
				t.Fatalf("the pod's own ICMP error left from %s, want %s", op.src, nodeAddr)
			}
			return
		}
		op, what := parseFrame(r.out)
		if what != parsedOK || op.src != nodeAddr || op.dst != p.dst || op.dport != p.dport || op.proto != p.proto {
			t.Fatalf("%v became %v (%s), want source %s", p.tuple, op.tuple, what, nodeAddr)
		}
		if p.proto != protoICMP && !e.inRanges(op.sport) {
			t.Fatalf("node port %d outside %v", op.sport, e.ports)
		}
		if want, ok := state.out[p.tuple]; ok && netip.AddrPortFrom(op.src, op.sport) != want {
			t.Fatalf("established %v left as %v, want %v", p.tuple, op.tuple, want)
		}
		if x.counters["egress_new_flow"] == 1 || x.counters["egress_host_moved"] == 1 {
			snap, err := e.nat.Read()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, fl := range snap.Flows {
				found = found || (fl.Pod == netip.AddrPortFrom(p.src, p.sport) && fl.Node == netip.AddrPortFrom(nodeAddr, op.sport) && fl.HasIn)
			}
			if !found || snap.Entries != len(baseline)+2 || snap.Orphans != 0 {
				t.Fatalf("after a new flow: %d entries (want %d), orphans %v, mapping %v via %d found %v", snap.Entries, len(baseline)+2, snap.Orphans, p.tuple, op.sport, found)
			}
		}

		// The reply comes back to the original tuple, judged against
		// what the egress half now records of the pod's side.
		reply := replyFrame(r.out, op)
		rp, _ := parseFrame(reply)
		var pod podSide
		if v, ok := e.natEntries(t)[natKey(dirEgress, p.proto, p.src, p.dst, p.sport, p.dport)]; ok {
			pod = podSideOf(v.Flags, v.TcpAck, v.TcpWin, v.TcpWscale)
		}
		before = e.readCounters(t)
		back := e.ingress(t, reply)
		requireVerdict(t, back, actPass)
		requireCounters(t, e.countersMoved(t, before), one(remoteCounter(rp.proto, pod, rp.tcpFlags, reply, rp.l4)), reply)
		rx := expect{translate: "flow"}
		requireOnlyChanged(t, reply, back.out, translatedOffsets(rp, quote{}, rx, false)...)
		requireTranslatedChecksums(t, reply, back.out, rp, quote{}, rx)
		bp, what := parseFrame(back.out)
		if what != parsedOK || bp.tuple != p.reply() {
			t.Fatalf("reply %v came back as %v (%s), want %v", rp.tuple, bp.tuple, what, p.reply())
		}
	})
}

// FuzzIngress: arbitrary frames through ipm_ingress with three mappings in
// place (TCP, UDP, ICMP echo; node ports = the pods' ports). Exactly the
// frames whose tuple is a mapping's reply tuple, and the ICMP errors that
// quote a packet of a mapping, are translated, back to the pod.
func FuzzIngress(f *testing.F) {
	requireRoot(f)
	e := newEnv(f, config{keepPorts: true})
	local := []netip.Addr{nodeAddr, nodeOther, netip.MustParseAddr("127.0.0.1")}
	flows := []pkt{
		tcpPkt(podA, 40000, remote, 443, "S"),
		udpPkt(podA, 40001, remote, 53),
		echoRequest(podA, remote, 0x4242),
	}
	for _, p := range flows {
		if port := e.masquerade(f, p); port != p.sport {
			f.Fatalf("setting up mapping %v: node port %d, want the pod's", p.tuple, port)
		}
	}
	baseline := e.natEntries(f)
	state := newNATState(e, f)
	e.fuzz(f, fuzzSeeds(f, true, flows[0], flows[0].sport), true, baseline, func(t *testing.T, in []byte, r result, before map[string]uint64) {
		p, q, x := ingressOracle(in, local, state)
		if r.ret != actPass {
			t.Fatalf("ingress verdict %d %s: it only drops a half-rewritten packet, which must not happen\n%s", r.ret, verdictName(r.ret), hexdump(in))
		}
		if moved := e.countersMoved(t, before); isIPv6(in) {
			if !ipv6Counted(moved, "ingress") {
				t.Fatalf("IPv6 frame: IPv4 counters moved %v", moved)
			}
		} else {
			requireCounters(t, moved, x.counters, in)
		}
		if n := len(e.natEntries(t)); n != len(baseline) {
			t.Fatalf("ingress changed the NAT table to %d entries from %d", n, len(baseline))
		}
		if x.translate == "" {
			requireUnchanged(t, r.out, in)
			return
		}
		requireOnlyChanged(t, in, r.out, translatedOffsets(p, q, x, false)...)
		requireTranslatedChecksums(t, in, r.out, p, q, x)
		if x.translate == "icmp" {
			oq, ok := parseQuote(r.out, p)
			pod := state.in[q.tuple.reply()]
			if !ok || oq.tuple != pod {
				t.Fatalf("ICMP error quoting %v became quoting %v, want %v", q.tuple, oq.tuple, pod)
			}
			if op, _ := parseFrame(r.out); p.dst == q.src && op.dst != pod.src {
				t.Fatalf("ICMP error to %s went on to %s, want the pod %s", p.dst, op.dst, pod.src)
			}
			return
		}
		op, what := parseFrame(r.out)
		if pod := state.in[p.tuple]; what != parsedOK || op.tuple != pod.reply() {
			t.Fatalf("reply %v became %v (%s), want %v", p.tuple, op.tuple, what, pod.reply())
		}
	})
}

// TestOracle checks the fuzz oracle on the table tests' frames, so that it
// and the tables agree. Needs no privilege.
func TestOracle(t *testing.T) {
	local := []netip.Addr{nodeAddr, nodeOther}
	s := natState{out: map[tuple]netip.AddrPort{}, in: map[tuple]tuple{}}
	for _, tc := range []struct {
		f    []byte
		want string
	}{
		{tcpPkt(podA, 1, remote, 2, "S").frame(t), "egress_new_flow"},
		{tcpPkt(podA, 1, remote, 2, "SA").frame(t), "egress_tcp_reset"},
		{tcpPkt(podA, 1, remote, 2, "RA").frame(t), "egress_tcp_unknown_drop"},
		{tcpPkt(podA, 1, inCluster, 2, "S").frame(t), "egress_nomasq"},
		{tcpPkt(podA, 1, metadata, 2, "S").frame(t), "egress_nomasq"},
		{udpPkt(nodeOther, 1, remote, 2).frame(t), "egress_host"},
		{echoReply(podA, remote, 1).frame(t), "egress_inbound"},
		{ipv6Frame(t), "egress_other"},
		{setIHL(tcpPkt(podA, 1, remote, 2, "S").frame(t), 4), "egress_malformed"},
		{setFrag(udpPkt(podA, 1, remote, 2).frame(t), true, 1), "egress_frag_orphan"},
		{setFrag(udpPkt(podA, 1, inCluster, 2).frame(t), true, 1), "egress_fragment"},
		{setTotLen(udpPkt(podA, 1, remote, 2).frame(t), 27), "egress_malformed"},
		{setTotLen(udpPkt(podA, 1, remote, 2).frame(t), 0), "egress_malformed"},
		{icmpError(t, podA, remote, icmpUnreachable, 3, quoteOf(udpPkt(remote, 2, podA, 1).frame(t), 28)), "egress_other"},
	} {
		_, _, x := egressOracle(tc.f, local, s)
		if len(x.counters) != 1 || x.counters[tc.want] != 1 {
			t.Errorf("oracle says %v, want %s\n%s", x.counters, tc.want, hexdump(tc.f))
		}
	}
	q, ok := parseQuote(icmpError(t, router, nodeAddr, icmpUnreachable, 4, quoteOf(tcpPkt(nodeAddr, 1, remote, 2, "S").frame(t), 28)), parsed{l4: 34, end: 14 + 20 + 8 + 28})
	if !ok || q.tuple != (tuple{protoTCP, nodeAddr, remote, 1, 2}) || q.csumOff != 0 || q.whole {
		t.Errorf("8-byte TCP quote read as %+v, %v", q, ok)
	}
}
