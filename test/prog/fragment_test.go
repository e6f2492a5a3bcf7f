package prog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// fragments splits the IPv4 packet of a frame at the given payload offsets
// (multiples of 8) into fragment frames, every header checksum right.
func fragments(t testing.TB, frame []byte, cuts ...int) [][]byte {
	t.Helper()
	ip := ipPacket(frame)
	ihl := int(ip[0]&0xf) * 4
	payload := ip[ihl:]
	var out [][]byte
	eachFragment(t, len(payload), cuts, func(start, end int, more bool) {
		f := append(append([]byte(nil), frame[:14]...), ip[:ihl]...)
		f = append(f, payload[start:end]...)
		binary.BigEndian.PutUint16(f[14+2:], uint16(ihl+end-start))
		fl := uint16(start / 8)
		if more {
			fl |= 0x2000 // more fragments
		}
		binary.BigEndian.PutUint16(f[14+6:], fl)
		out = append(out, fixIPCsum(f))
	})
	return out
}

// eachFragment calls part with each piece [start, end) of a payload of n
// bytes cut at the given offsets, which must be multiples of 8, and whether
// more pieces follow.
func eachFragment(t testing.TB, n int, cuts []int, part func(start, end int, more bool)) {
	t.Helper()
	start := 0
	for i := 0; i <= len(cuts); i++ {
		end := n
		if i < len(cuts) {
			end = cuts[i]
		}
		if start%8 != 0 {
			t.Fatalf("fragment offset %d not a multiple of 8", start)
		}
		part(start, end, end < n)
		start = end
	}
}

// bigUDP is a UDP datagram large enough to fragment, as a large DNS answer.
func bigUDP(p pkt) pkt {
	p.payload = bytes.Repeat([]byte("0123456789abcdef"), 100)
	return p
}

// requireFragment checks a translated fragment: byte for byte want except
// the checksums, its IP header checksum right, and for a first fragment the
// UDP checksum equal to the one of the whole translated datagram (it covers
// the whole datagram, so it cannot be recomputed from the fragment alone).
func requireFragment(t testing.TB, got, want []byte) {
	t.Helper()
	requireSameExceptChecksums(t, got, want)
	if err := checkFrame(got); err != nil {
		t.Fatal(err)
	}
	l4 := 14 + int(want[14]&0xf)*4
	if binary.BigEndian.Uint16(want[14+6:])&0x1fff == 0 {
		if g, w := udpChecksum(got), udpChecksum(want); g != w && !(g^w == 0xffff && (g == 0 || w == 0)) {
			t.Fatalf("first fragment: UDP checksum 0x%04x, want the whole translated datagram's 0x%04x", g, w)
		}
	} else if string(got[l4:]) != string(want[l4:]) {
		t.Fatal("later fragment: payload changed")
	}
}

// TestFirstFragment: the first fragment of a masqueraded datagram carries the
// UDP header and is translated like a whole datagram, its checksum updated
// for the whole datagram; its reply's first fragment comes back (docs/behaviour.md §5).
func TestFirstFragment(t *testing.T) {
	e := newEnv(t, config{})
	p := bigUDP(udpPkt(podA, 40000, remote, 53))
	frags := fragments(t, p.frame(t), 800)
	r := e.egress(t, frags[0])
	requireVerdict(t, r, actPass)
	d, _ := parseFrame(r.out) // gopacket does not decode L4 in a fragment
	if d.src != nodeAddr {
		t.Fatalf("first fragment left with source %s, want %s", d.src, nodeAddr)
	}
	translated := p.with(tuple{protoUDP, nodeAddr, remote, d.sport, 53})
	requireFragment(t, r.out, fragments(t, translated.frame(t), 800)[0])

	reply := bigUDP(udpPkt(remote, 53, nodeAddr, d.sport))
	back := e.ingress(t, fragments(t, reply.frame(t), 800)[0])
	requireVerdict(t, back, actPass)
	requireFragment(t, back.out, fragments(t, reply.with(tuple{protoUDP, remote, podA, 53, 40000}).frame(t), 800)[0])
}

// TestLaterFragments: every fragment of a masqueraded datagram is translated,
// in both directions, the later ones too once their first fragment passed
// (docs/behaviour.md §5). Otherwise they leave with the pod address (which the
// destination cannot reassemble with the first fragment) and the replies'
// later fragments never reach the pod: large DNS answers over UDP fail.
func TestLaterFragments(t *testing.T) {
	e := newEnv(t, config{})
	p := bigUDP(udpPkt(podA, 40000, remote, 53))
	frags := fragments(t, p.frame(t), 504, 1008)
	r := e.egress(t, frags[0])
	requireVerdict(t, r, actPass)
	d, _ := parseFrame(r.out)
	port := d.sport
	want := fragments(t, p.with(tuple{protoUDP, nodeAddr, remote, port, 53}).frame(t), 504, 1008)
	for _, i := range []int{2, 1} { // out of order
		got := e.egress(t, frags[i])
		requireVerdict(t, got, actPass)
		if string(got.out) == string(frags[i]) {
			t.Errorf("egress fragment %d of a masqueraded datagram left untranslated, with the pod source %s", i+1, podA)
			continue
		}
		requireFragment(t, got.out, want[i])
	}

	reply := bigUDP(udpPkt(remote, 53, nodeAddr, port))
	rf := fragments(t, reply.frame(t), 504, 1008)
	rwant := fragments(t, reply.with(tuple{protoUDP, remote, podA, 53, 40000}).frame(t), 504, 1008)
	for i := range rf {
		got := e.ingress(t, rf[i])
		requireVerdict(t, got, actPass)
		if i > 0 && string(got.out) == string(rf[i]) {
			t.Errorf("ingress fragment %d of a reply passed untranslated, to the node address: the pod never gets it", i+1)
			continue
		}
		requireFragment(t, got.out, rwant[i])
	}
}

// TestOrphanFragments: a non-first fragment seen before (or without) its
// first fragment cannot be mapped without buffering (docs/behaviour.md §5). On egress it
// is dropped and counted when its datagram may be masqueraded (leaving with
// the pod address would leak it), and passes unchanged when it cannot be (a
// node source, a non-masquerade destination). On ingress it passes to the
// host unchanged and is counted.
func TestOrphanFragments(t *testing.T) {
	l4 := 14 + 20
	for _, tc := range []struct {
		name    string
		ingress bool
		f       []byte
		verdict int32
		counter string
	}{
		{"egress, last udp fragment to a masqueraded destination", false, setFrag(udpPkt(podA, 40000, remote, 53).frame(t), false, 185), actShot, "egress_frag_orphan"},
		{"egress, middle tcp fragment to a masqueraded destination", false, setFrag(tcpPkt(podA, 40000, remote, 443, "A").frame(t), true, 1), actShot, "egress_frag_orphan"},
		{"egress, icmp fragment at the largest offset", false, setFrag(echoRequest(podA, remote, 1).frame(t), false, 0x1fff), actShot, "egress_frag_orphan"},
		{"egress, fragment to a non-masquerade destination", false, setFrag(udpPkt(podA, 40000, inCluster, 53).frame(t), false, 185), actPass, "egress_fragment"},
		{"egress, fragment to link-local", false, setFrag(udpPkt(podA, 40000, metadata, 53).frame(t), false, 185), actPass, "egress_fragment"},
		{"egress, fragment from the node", false, setFrag(udpPkt(nodeAddr, 40000, remote, 53).frame(t), false, 185), actPass, "egress_fragment"},
		{"egress, fragment cut short", false, setFrag(tcpPkt(podA, 40000, inCluster, 443, "A").frame(t)[:l4+2], true, 3), actPass, "egress_fragment"},
		{"ingress, last udp fragment", true, setFrag(udpPkt(remote, 53, nodeAddr, 40000).frame(t), false, 185), actPass, "ingress_frag_orphan"},
		{"ingress, middle tcp fragment", true, setFrag(tcpPkt(remote, 443, nodeAddr, 40000, "A").frame(t), true, 1), actPass, "ingress_frag_orphan"},
		{"ingress, fragment to a pod address", true, setFrag(udpPkt(remote, 53, podA, 40000).frame(t), false, 185), actPass, "ingress_frag_orphan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{})
			before := e.readCounters(t)
			r := e.through(t, tc.ingress, tc.f)
			requireVerdict(t, r, tc.verdict)
			if tc.verdict == actPass {
				requireUnchanged(t, r.out, tc.f)
			}
			e.expectCounters(t, before, map[string]uint64{tc.counter: 1})
		})
	}
}

// TestFragmentsOfOtherProtocols: the datapath passes other protocols
// unchanged (docs/behaviour.md §5: "address-only translation or pass"), so every
// fragment of their datagrams must pass too: a first fragment that passed
// decides for the rest, as for TCP, UDP and ICMP.
func TestFragmentsOfOtherProtocols(t *testing.T) {
	for _, proto := range []uint8{47, 50, 132} { // GRE, ESP, SCTP
		t.Run(fmt.Sprintf("protocol %d", proto), func(t *testing.T) {
			e := newEnv(t, config{})
			full := setProto(bigUDP(udpPkt(podA, 40000, remote, 53)).frame(t), proto)
			frags := fragments(t, full, 800)
			for i, f := range frags {
				before := e.readCounters(t)
				r := e.egress(t, f)
				if r.ret != actPass || string(r.out) != string(f) {
					t.Fatalf("fragment %d of a protocol-%d datagram whose first fragment passed unchanged: verdict %s, counters %v; want it passed unchanged like its first",
						i+1, proto, verdictName(r.ret), e.countersMoved(t, before))
				}
			}
		})
	}
}
