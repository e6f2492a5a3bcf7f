package prog

import (
	"bytes"
	"net/netip"
	"testing"
)

// big6 gives p a payload that needs fragments at a 1280-byte MTU.
func big6(p pkt6) pkt6 {
	p.payload = bytes.Repeat([]byte("0123456789abcdef"), 100)
	return p
}

// withSource returns an IPv6 frame with another source (destination) address
// and nothing else changed: what a later fragment must become.
func withAddr6(frame []byte, source bool, a netip.Addr) []byte {
	f := append([]byte(nil), frame...)
	off := 14 + 24
	if source {
		off = 14 + 8
	}
	b := a.As16()
	copy(f[off:], b[:])
	return f
}

// runFragments runs every fragment through prog (egress or ingress) in the
// given order and returns the outputs in that order; each must pass and move
// exactly its counter.
func (e *env) runFragments(t *testing.T, ingress bool, frags [][]byte, counters []string) [][]byte {
	t.Helper()
	var outs [][]byte
	for i, f := range frags {
		before := e.snap(t)
		r := e.through(t, ingress, f)
		got, v4 := e.moved6(t, before)
		if r.ret != actPass {
			t.Fatalf("fragment %d: verdict %s, counters moved IPv6 %v, IPv4 %v; want pass and %s\n%s", i, verdictName(r.ret), got, v4, counters[i], hexdump(f))
		}
		if len(got) != 1 || got[counters[i]] != 1 || len(v4) != 0 {
			t.Fatalf("fragment %d: counters moved IPv6 %v, IPv4 %v; want %s once\n%s", i, got, v4, counters[i], hexdump(f))
		}
		outs = append(outs, r.out)
	}
	return outs
}

// TestIPv6Fragments: every fragment of a masqueraded datagram is translated
// in both directions (docs/behaviour.md §5.7): the first like a whole datagram (its
// transport checksum, which covers the whole datagram, updated), the later
// ones, which carry no ports, by the address the first got; reassembled,
// each direction's datagram is the translated datagram with every checksum
// right. Whatever the extension headers before or after the fragment
// header, and whatever the order of the later fragments.
func TestIPv6Fragments(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      pkt6
		unfrag int   // leading extension headers of p that stay out of the fragments
		cuts   []int // fragment boundaries in the fragmentable part
		order  []int // order of the later fragments
	}{
		{"udp, 3 fragments", big6(udp6(pod6A, 40000, remote6, 53)), 0, []int{1232, 1408}, []int{1, 2}},
		{"udp, later fragments reversed", big6(udp6(pod6A, 40000, remote6, 53)), 0, []int{512, 1024, 1408}, []int{3, 2, 1}},
		{"udp, hop-by-hop and routing before the fragment header", big6(udp6(pod6A, 40000, remote6, 53)).withExts(extHopByHop, extRouting), 2, []int{1200}, []int{1}},
		{"icmpv6 echo", big6(echo6(pod6A, remote6, 0x5151)), 0, []int{1232}, []int{1}},
		{"tcp", big6(tcp6(pod6A, 40000, remote6, 443, "S")), 0, []int{800}, []int{1}},
		// RFC 8200 4.1: destination options for the final destination
		// come after the fragment header, in the fragmentable part; every
		// fragment header then names them as its next header.
		{"udp, destination options after the fragment header", big6(udp6(pod6A, 40000, remote6, 53)).withExts(extDstOpts), 0, []int{1200}, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv6(t, config6{})

			// Egress: the pod's datagram.
			frags := fragments6(t, tc.p.frame(t), tc.unfrag, 0x1234abcd, tc.cuts...)
			order := append([]int{0}, tc.order...)
			in := make([][]byte, len(order))
			counters := make([]string, len(order))
			for i, k := range order {
				in[i], counters[i] = frags[k], "egress_fragment"
			}
			counters[0] = "egress_new_flow"
			outs := e.runFragments(t, false, in, counters)
			u := decode6(t, outs[0])
			if u.src != node6 || u.dst != tc.p.dst || u.dport != tc.p.dport {
				t.Fatalf("first fragment left as %v", u)
			}
			port := u.sport
			for i := 1; i < len(outs); i++ {
				if want := withAddr6(in[i], true, node6); !bytes.Equal(outs[i], want) {
					t.Fatalf("later fragment %d left as\n%swant only its source changed to %s:\n%s", order[i], hexdump(outs[i]), node6, hexdump(want))
				}
			}
			got := reassemble6(t, outs)
			want := tc.p.with(tuple{tc.p.proto, node6, tc.p.dst, port, tc.p.dport}).packet(t)
			requireSame6(t, ether6(got), ether6(want))
			if err := checkPacket6(got, false); err != nil {
				t.Fatalf("reassembled egress datagram: %v", err)
			}

			// Ingress: the remote's answer, as large, to the node port.
			reply := replyTo6(tc.p, port)
			reply.payload = tc.p.payload
			rfrags := fragments6(t, reply.frame(t), tc.unfrag, 0x5678, tc.cuts...)
			rin := make([][]byte, len(order))
			for i, k := range order {
				rin[i], counters[i] = rfrags[k], "ingress_fragment"
			}
			counters[0] = "ingress_translated"
			routs := e.runFragments(t, true, rin, counters)
			for i := 1; i < len(routs); i++ {
				if want := withAddr6(rin[i], false, tc.p.src); !bytes.Equal(routs[i], want) {
					t.Fatalf("later reply fragment %d became\n%swant only its destination changed to %s:\n%s", order[i], hexdump(routs[i]), tc.p.src, hexdump(want))
				}
			}
			got = reassemble6(t, routs)
			want = reply.with(tuple{reply.proto, reply.src, tc.p.src, reply.sport, tc.p.sport}).packet(t)
			requireSame6(t, ether6(got), ether6(want))
			if err := checkPacket6(got, false); err != nil {
				t.Fatalf("reassembled reply: %v", err)
			}
		})
	}
}

// TestIPv6FragmentAheadOfFirst: a later fragment that leaves before its
// first fragment cannot be mapped without buffering: towards a masqueraded
// destination it is dropped and counted (it would leak the pod address and
// never reassemble with a translated first); towards a non-masquerade
// destination, or from a node address, it passes. A later fragment
// arriving without a translated first reaches the host unchanged.
func TestIPv6FragmentAheadOfFirst(t *testing.T) {
	e := newEnv6(t, config6{})
	later := func(p pkt6) []byte { return fragments6(t, big6(p).frame(t), 0, 99, 1200)[1] }

	for _, tc := range []struct {
		name    string
		frame   []byte
		verdict int32
		counter string
	}{
		{"to a masqueraded destination", later(udp6(pod6A, 40000, remote6, 53)), actShot, "egress_frag_orphan"},
		{"to the vpc", later(udp6(pod6A, 40000, vpc6, 53)), actPass, "egress_fragment"},
		{"to a link-local peer", later(udp6(pod6A, 40000, ll6, 53)), actPass, "egress_fragment"},
		{"from the node", later(udp6(node6, 40000, remote6, 53)), actPass, "egress_fragment"},
	} {
		t.Run("egress "+tc.name, func(t *testing.T) {
			before := e.snap(t)
			r := e.egress(t, tc.frame)
			requireVerdict(t, r, tc.verdict)
			if tc.verdict == actPass {
				requireUnchanged(t, r.out, tc.frame)
			}
			e.expect6(t, before, map[string]uint64{tc.counter: 1})
		})
	}
	t.Run("ingress without a first", func(t *testing.T) {
		f := later(udp6(remote6, 53, node6, 40000))
		e.requirePassed6(t, true, f, "ingress_frag_orphan")
	})
	t.Run("later fragments of a non-masqueraded datagram", func(t *testing.T) {
		frags := fragments6(t, big6(udp6(pod6A, 40000, vpc6, 53)).frame(t), 0, 100, 1200)
		outs := e.runFragments(t, false, frags, []string{"egress_nomasq", "egress_fragment"})
		for i := range frags {
			requireUnchanged(t, outs[i], frags[i])
		}
	})
	if n := len(e.natEntries6(t)); n != 0 {
		t.Errorf("IPv6 NAT table has %d entries", n)
	}
}
