package prog

import (
	"fmt"
	"net/netip"
	"testing"
)

// icmp6ErrorKinds are the four ICMPv6 errors (RFC 4443) with a typical code.
var icmp6ErrorKinds = []struct {
	name      string
	typ, code uint8
}{
	{"destination unreachable (port)", icmp6Unreach, 4},
	{"destination unreachable (administratively prohibited)", icmp6Unreach, 1},
	{"packet too big", icmp6TooBig, 0},
	{"time exceeded", icmp6TimeExceed, 0},
	{"parameter problem", icmp6ParamProb, 0},
}

// quoteLens are the quote sizes: the whole packet (as RFC 4443 asks, up to
// the minimum MTU), and the IPv6 header with only 8 bytes of the transport
// header (for TCP: ports and sequence number, no checksum).
var quoteLens = []struct {
	name string
	n    int
}{{"whole quote", 0}, {"8-byte transport quote", 40 + 8}}

// errorFlows are the flows whose packets the errors quote.
func errorFlows() []pkt6 {
	return []pkt6{
		tcp6(pod6A, 40000, remote6, 443, "S"),
		udp6(pod6A, 40001, remote6, 53),
		echo6(pod6A, remote6, 0x4242),
	}
}

func protoName6(p uint8) string {
	return map[uint8]string{protoTCP: "tcp", protoUDP: "udp", protoICMPv6: "icmpv6 echo"}[p]
}

// TestIPv6IngressICMPError: an ICMPv6 error about a translated packet, from
// a router on the path or from the remote itself, is translated back to the
// pod: the outer destination and the quoted packet's source address and
// port (identifier). The result is byte for byte the error the pod would
// have got without the NAT, with every checksum right: the outer ICMPv6
// checksum over its pseudo-header and the whole quote, and the quoted
// transport checksum (over the quoted packet's own pseudo-header) where the
// quote holds it (docs/behaviour.md §5.7). Packet too big must reach the pod
// for path MTU discovery.
func TestIPv6IngressICMPError(t *testing.T) {
	for _, flow := range errorFlows() {
		t.Run(protoName6(flow.proto), func(t *testing.T) {
			e := newEnv6(t, config6{})
			port := e.masquerade6(t, flow)
			sent := flow.with(tuple{flow.proto, node6, flow.dst, port, flow.dport}).frame(t) // as it left
			orig := flow.frame(t)                                                            // as the pod sent it
			for _, from := range []netip.Addr{router6, remote6} {
				for _, kind := range icmp6ErrorKinds {
					for _, q := range quoteLens {
						t.Run(fmt.Sprintf("%s from %s, %s", kind.name, from, q.name), func(t *testing.T) {
							in := icmp6Error(t, from, node6, kind.typ, kind.code, quote6Of(sent, q.n))
							e.requireTranslated6(t, e.ingress, in, "ingress_icmp_error",
								icmp6Error(t, from, pod6A, kind.typ, kind.code, quote6Of(orig, q.n)))
						})
					}
				}
			}
		})
	}
}

// TestIPv6EgressICMPError: an ICMPv6 error about a reply that was
// translated on ingress leaves with the quote as the reply arrived (node
// address and port), whether the pod sent it (its source becomes the
// node's too) or the node did about a pod's flow (its source stays), every
// checksum right (docs/behaviour.md §5.7; docs/behaviour.md §5).
func TestIPv6EgressICMPError(t *testing.T) {
	for _, flow := range errorFlows() {
		t.Run(protoName6(flow.proto), func(t *testing.T) {
			e := newEnv6(t, config6{})
			port := e.masquerade6(t, flow)
			arrived := replyTo6(flow, port)                                                                   // at the node
			delivered := arrived.with(tuple{arrived.proto, arrived.src, flow.src, arrived.sport, flow.sport}) // at the pod
			for _, sender := range []struct {
				name     string
				src, out netip.Addr // the error's source before and after
			}{{"sent by the pod", pod6A, node6}, {"sent by the node", node6, node6}} {
				for _, kind := range icmp6ErrorKinds {
					for _, q := range quoteLens {
						t.Run(fmt.Sprintf("%s %s, %s", kind.name, sender.name, q.name), func(t *testing.T) {
							in := icmp6Error(t, sender.src, flow.dst, kind.typ, kind.code, quote6Of(delivered.frame(t), q.n))
							e.requireTranslated6(t, e.egress, in, "egress_icmp_error",
								icmp6Error(t, sender.out, flow.dst, kind.typ, kind.code, quote6Of(arrived.frame(t), q.n)))
						})
					}
				}
			}
		})
	}
}

// TestIPv6ICMPErrorNotOurs: ICMPv6 errors about packets of no mapping (the
// host's own flows, other ports, other remotes, a quote that is itself an
// error or a later fragment) reach their destination unchanged.
func TestIPv6ICMPErrorNotOurs(t *testing.T) {
	e := newEnv6(t, config6{})
	flow := udp6(pod6A, 40001, remote6, 53)
	port := e.masquerade6(t, flow)
	host := udp6(node6, 45000, remote6, 53)
	if r := e.egress(t, host.frame(t)); r.ret != actPass {
		t.Fatal("host packet dropped")
	}
	laterFrag := fragments6(t, big6(flow.with(tuple{protoUDP, node6, remote6, port, 53})).frame(t), 0, 5, 1200)[1]
	for _, tc := range []struct {
		name    string
		ingress bool
		frame   []byte
		counter string
	}{
		{"ingress, about the host's own flow", true, icmp6Error(t, router6, node6, icmp6Unreach, 4, quote6Of(host.frame(t), 0)), "ingress_miss"},
		{"ingress, about another node port", true, icmp6Error(t, router6, node6, icmp6Unreach, 4, quote6Of(flow.with(tuple{protoUDP, node6, remote6, port + 1, 53}).frame(t), 0)), "ingress_miss"},
		{"ingress, about another remote", true, icmp6Error(t, router6, node6, icmp6TooBig, 0, quote6Of(flow.with(tuple{protoUDP, node6, remote6b, port, 53}).frame(t), 0)), "ingress_miss"},
		{"ingress, quoting a later fragment", true, icmp6Error(t, router6, node6, icmp6TimeExceed, 1, quote6Of(laterFrag, 0)), "ingress_other"},
		{"ingress, quoting an error", true, icmp6Error(t, router6, node6, icmp6Unreach, 0, quote6Of(icmp6Error(t, node6, remote6, icmp6Unreach, 4, quote6Of(host.frame(t), 48)), 0)), "ingress_other"},
		{"ingress, quote shorter than 8 bytes of udp", true, icmp6Error(t, router6, node6, icmp6Unreach, 4, quote6Of(flow.with(tuple{protoUDP, node6, remote6, port, 53}).frame(t), 40+6)), "ingress_other"},
		{"egress, about nothing translated", false, icmp6Error(t, pod6A, vpc6, icmp6Unreach, 4, quote6Of(udp6(vpc6, 53, pod6A, 40001).frame(t), 0)), "egress_other"},
		{"egress, the node's own about its own flow", false, icmp6Error(t, node6, remote6, icmp6Unreach, 4, quote6Of(udp6(remote6, 53, node6, 45000).frame(t), 0)), "egress_other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snap(t)
			r := e.through(t, tc.ingress, tc.frame)
			requireVerdict(t, r, actPass)
			requireUnchanged(t, r.out, tc.frame)
			e.expect6(t, before, map[string]uint64{tc.counter: 1})
		})
	}
}

// requireTranslated6 runs the ICMPv6 error in (its checksums right) through
// run and requires it to pass as want with every checksum right, counted
// once as counter and by no IPv4 counter.
func (e *env) requireTranslated6(t *testing.T, run func(testing.TB, []byte) result, in []byte, counter string, want []byte) {
	t.Helper()
	requireChecksums6(t, in)
	before := e.snap(t)
	r := run(t, in)
	got, v4 := e.moved6(t, before)
	if r.ret != actPass || len(got) != 1 || got[counter] != 1 || len(v4) != 0 {
		t.Fatalf("verdict %s, counters moved IPv6 %v, IPv4 %v; want pass and %s once", verdictName(r.ret), got, v4, counter)
	}
	requireSame6(t, r.out, want)
	requireChecksums6(t, r.out)
}
