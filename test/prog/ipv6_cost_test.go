package prog

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// The IPv6 counterparts of cost_test.go's established paths: two halves
// map A:p -> B:q and B:q -> A:p, so every repeat of a test run on the same
// buffer is a real translation of the 16-byte address and the port, and an
// even number of repeats gives the input back (measure checks it).
var (
	cost6A = netip.AddrPortFrom(pod6A, 40000)
	cost6B = netip.AddrPortFrom(netip.MustParseAddr("fd00:10:244:7::7"), 50000)
	cost6D = netip.AddrPortFrom(remote6, 443)
)

// requireAlternation6 checks one repeat: the frame becomes its translation
// to want with every checksum right, and three repeats give the same.
func requireAlternation6(t *testing.T, prog *ebpf.Program, in []byte, want pkt6) {
	t.Helper()
	for _, n := range []uint32{1, 3} {
		opts := ebpf.RunOptions{Data: append([]byte(nil), in...), DataOut: make([]byte, len(in)+256), Repeat: n}
		if _, err := prog.Run(&opts); err != nil {
			t.Fatal(err)
		}
		requireSame6(t, opts.DataOut, want.frame(t))
		requireChecksums6(t, opts.DataOut)
	}
}

// TestIPv6EstablishedEgressCost: established-flow IPv6 egress, every repeat
// a real translation of the source address and port (docs/performance.md, docs/behaviour.md §5.7).
func TestIPv6EstablishedEgressCost(t *testing.T) {
	e := newEnv6(t, config6{})
	a, b, d := cost6A, cost6B, cost6D
	e.putEntry6(t, natKey6(dirEgress, protoTCP, a.Addr(), d.Addr(), a.Port(), d.Port()), kindMasq, b.Addr(), b.Port())
	e.putEntry6(t, natKey6(dirEgress, protoTCP, b.Addr(), d.Addr(), b.Port(), d.Port()), kindMasq, a.Addr(), a.Port())
	p := tcp6(a.Addr(), a.Port(), d.Addr(), d.Port(), "PA")
	requireAlternation6(t, e.dp.Programs.IpmEgress, p.frame(t), tcp6(b.Addr(), b.Port(), d.Addr(), d.Port(), "PA"))
	ns := e.measure(t, e.dp.Programs.IpmEgress, p.frame(t), actPass, "egress_translated")
	t.Logf("IPv6 established egress (TCP, address and port rewritten): %s per packet over %d repeats", fmtNs(ns), costRepeats())
}

// TestIPv6ReverseIngressCost: IPv6 reply ingress, every repeat a real
// translation of the destination address and port.
func TestIPv6ReverseIngressCost(t *testing.T) {
	e := newEnv6(t, config6{})
	a, b, d := cost6A, cost6B, cost6D
	e.putEntry6(t, natKey6(dirIngress, protoTCP, d.Addr(), a.Addr(), d.Port(), a.Port()), kindMasq, b.Addr(), b.Port())
	e.putEntry6(t, natKey6(dirIngress, protoTCP, d.Addr(), b.Addr(), d.Port(), b.Port()), kindMasq, a.Addr(), a.Port())
	p := tcp6(d.Addr(), d.Port(), a.Addr(), a.Port(), "PA")
	requireAlternation6(t, e.dp.Programs.IpmIngress, p.frame(t), tcp6(d.Addr(), d.Port(), b.Addr(), b.Port(), "PA"))
	ns := e.measure(t, e.dp.Programs.IpmIngress, p.frame(t), actPass, "ingress_translated")
	t.Logf("IPv6 reverse ingress (TCP, address and port rewritten): %s per packet over %d repeats", fmtNs(ns), costRepeats())
}
