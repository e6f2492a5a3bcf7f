package prog

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Cost of each datapath path in nanoseconds per packet (docs/performance.md), measured
// with BPF_PROG_TEST_RUN repeats. These are measurements, logged, not timing
// assertions. A test run repeats on the same buffer, so each path is set up
// so that every repeat takes it, and the counters prove it did: exactly one
// counter moves, by at least the number of repeats.

// costRepeats is the number of repeats per measurement.
func costRepeats() uint32 {
	if testing.Short() {
		return 10_000
	}
	return 1_000_000
}

// measure runs prog repeat times on frame and returns the kernel's run time
// per repeat. Every repeat must end in verdict and move only counter. It then
// runs frame again with the same even number of repeats and requires the
// output to equal the input: for a translating path that proves the repeats
// alternated between two real translations.
func (e *env) measure(t *testing.T, prog *ebpf.Program, frame []byte, verdict int32, counter string) time.Duration {
	t.Helper()
	repeat := costRepeats()
	if repeat%2 != 0 {
		t.Fatal("the repeat count must be even")
	}
	before := e.readCounters(t)
	ret, perRun, err := prog.Benchmark(append([]byte(nil), frame...), int(repeat), nil)
	if err != nil {
		t.Fatal(err)
	}
	if int32(ret) != verdict {
		t.Fatalf("verdict %d %s, want %s", int32(ret), verdictName(int32(ret)), verdictName(verdict))
	}
	moved := e.countersMoved(t, before)
	if len(moved) != 1 || moved[counter] < uint64(repeat) {
		t.Fatalf("after %d repeats counters moved %v, want only %s, by at least %d: some repeats took another path", repeat, moved, counter, repeat)
	}

	opts := ebpf.RunOptions{Data: append([]byte(nil), frame...), DataOut: make([]byte, len(frame)+256), Repeat: repeat}
	if _, err := prog.Run(&opts); err != nil {
		t.Fatal(err)
	}
	requireUnchanged(t, opts.DataOut, frame)
	return perRun
}

// The established paths alternate a TCP segment between two translations:
// for egress two egress halves map the source A:p -> B:q and B:q -> A:p of a
// segment to D:r; for ingress two ingress halves map the destination of a
// segment from D:r the same way. B is not an address of the node.
var (
	costA = netip.AddrPortFrom(podA, 40000)
	costB = netip.AddrPortFrom(netip.MustParseAddr("10.244.7.7"), 50000)
	costD = netip.AddrPortFrom(remote, 443)
)

// TestEstablishedEgressCost: established-flow egress, every repeat a real
// translation of address and port.
func TestEstablishedEgressCost(t *testing.T) {
	establishedCost(t, ipv4, true, costA, costB, costD)
}

// TestReverseIngressCost: reply ingress, every repeat a real translation of
// the destination address and port.
func TestReverseIngressCost(t *testing.T) {
	establishedCost(t, ipv4, false, costA, costB, costD)
}

// establishedCost measures the established egress path (egress) or the
// reply ingress one of family f: two halves map the pod end A:p -> B:q and
// B:q -> A:p of a TCP flow with D:r, so that every repeat on the same
// buffer translates the segment.
func establishedCost(t *testing.T, f family, egress bool, a, b, d netip.AddrPort) {
	e := f.newEnv(t)
	prog, dir, counter, what := e.dp.Programs.IpmEgress, dirEgress, "egress_translated", "established egress"
	// seg is the segment of the flow between the pod end x and d, in
	// the program's direction.
	seg := func(x netip.AddrPort) (netip.AddrPort, netip.AddrPort) { return x, d }
	if !egress {
		prog, dir, counter, what = e.dp.Programs.IpmIngress, dirIngress, "ingress_translated", "reverse ingress"
		seg = func(x netip.AddrPort) (netip.AddrPort, netip.AddrPort) { return d, x }
	}
	for _, m := range [][2]netip.AddrPort{{a, b}, {b, a}} {
		src, dst := seg(m[0])
		f.putMasq(e, t, dir, protoTCP, src, dst, m[1])
	}
	src, dst := seg(a)
	in := f.tcp(t, src, dst, "PA")
	src, dst = seg(b)
	f.requireAlternation(t, prog, in, f.tcp(t, src, dst, "PA"))
	ns := e.measure(t, prog, in, actPass, counter)
	t.Logf("%s %s (TCP, address and port rewritten): %s per packet over %d repeats", f.name, what, fmtNs(ns), costRepeats())
}

// manyCIDRs returns n distinct /24s in 11.0.0.0/8.
func manyCIDRs(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for i := range n {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 8), byte(i), 0}), 24))
	}
	return out
}

// TestNonMasqueradeCost: egress to a non-masquerade destination, with the 3
// default CIDRs and with 10,000.
func TestNonMasqueradeCost(t *testing.T) {
	for _, n := range []int{0, 10_000} {
		t.Run(fmt.Sprintf("%d extra cidrs", n), func(t *testing.T) {
			e := newEnv(t, config{nonMasq: append(manyCIDRs(n), defaultNonMasq...)})
			set, err := e.nonMasq.Active()
			if err != nil {
				t.Fatal(err)
			}
			if want := n + len(defaultNonMasq) + 1; len(set) != want {
				t.Fatalf("active set has %d prefixes, want %d", len(set), want)
			}
			dst := inCluster
			if n > 0 {
				dst = netip.MustParseAddr("11.20.30.40") // in the 5,150th /24
			}
			ns := e.measure(t, e.dp.Programs.IpmEgress, tcpPkt(podA, 40000, dst, 443, "S").frame(t), actPass, "egress_nomasq")
			t.Logf("non-masquerade egress, %d CIDRs in the set (incl. link-local): %s per packet over %d repeats", len(set), fmtNs(ns), costRepeats())
		})
	}
}

// TestPassThroughCost: packets the programs do not look into (not IP),
// host traffic on egress, and packets to the host on ingress.
func TestPassThroughCost(t *testing.T) {
	e := newEnv(t, config{})
	arp := arpFrame(t)
	for _, tc := range []struct {
		name    string
		prog    *ebpf.Program
		frame   []byte
		counter string
	}{
		{"egress, not IP (ARP)", e.dp.Programs.IpmEgress, arp, "egress_other"},
		{"ingress, not IP (ARP)", e.dp.Programs.IpmIngress, arp, "ingress_other"},
		{"egress, the node's own TCP (reserved on the first repeat)", e.dp.Programs.IpmEgress, tcpPkt(nodeAddr, 40000, remote, 443, "PA").frame(t), "egress_host"},
		{"ingress, reply to the node's own TCP (host reservation)", e.dp.Programs.IpmIngress, tcpPkt(remote, 443, nodeAddr, 40000, "PA").frame(t), "ingress_host"},
		{"ingress, TCP matching nothing", e.dp.Programs.IpmIngress, tcpPkt(remote, 443, nodeAddr, 40001, "PA").frame(t), "ingress_miss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := e.measure(t, tc.prog, tc.frame, actPass, tc.counter)
			t.Logf("pass-through %s: %s per packet over %d repeats", tc.name, fmtNs(ns), costRepeats())
		})
	}
}

// TestNewFlowEgressCost: egress of a flow's first packet (lookup misses,
// allocation of a node port, both halves inserted, rewrite). A new flow
// cannot repeat, so each is one run of its own; the kernel's timer is then
// part of each figure (tens of nanoseconds).
func TestNewFlowEgressCost(t *testing.T) {
	flows := 4000
	if testing.Short() {
		flows = 200
	}
	e := newEnv(t, config{natEntries: uint32(2 * flows)})
	before := e.readCounters(t)
	var total time.Duration
	for i := range flows {
		f := tcpPkt(podA, uint16(10000+i), remote, 443, "S").frame(t)
		ret, d, err := e.dp.Programs.IpmEgress.Benchmark(f, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if int32(ret) != actPass {
			t.Fatalf("flow %d: verdict %d %s", i, int32(ret), verdictName(int32(ret)))
		}
		total += d
	}
	moved := e.countersMoved(t, before)
	if len(moved) != 1 || moved["egress_new_flow"] != uint64(flows) {
		t.Fatalf("counters moved %v, want egress_new_flow %d only", moved, flows)
	}
	// The same single runs on the cheapest path give the share of the
	// timer and the test-run machinery in each figure.
	var floor time.Duration
	arp := arpFrame(t)
	for range flows {
		_, d, err := e.dp.Programs.IpmEgress.Benchmark(arp, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		floor += d
	}
	t.Logf("new-flow egress (TCP SYN, random port in 1024-65535, table filling to %d of %d entries): %s per packet over %d flows, single runs; a single run of the not-IP (ARP) pass-through takes %s",
		2*flows, 2*flows, fmtNs(total/time.Duration(flows)), flows, fmtNs(floor/time.Duration(flows)))
}

func fmtNs(d time.Duration) string { return fmt.Sprintf("%d ns", d.Nanoseconds()) }
