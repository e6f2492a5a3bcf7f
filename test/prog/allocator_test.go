package prog

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// allocatorProbes is IPM_PORT_PROBES in bpf/nat.h: after a uniformly random
// start, the allocator tries this many consecutive ports of the ranges.
const allocatorProbes = 64

// TestAllocatorFailureRate measures how often a new flow finds no free node
// port as the ports to one destination fill up, and holds it to what the
// allocator's definition predicts: a new flow fails exactly when the 64
// ports from its random start are all taken. For a given set of taken ports
// that probability is the fraction of start ports whose window is full,
// computed here from the same set; the measured failure rate of many flows
// must stay within 4 standard deviations of the binomial around it (plus one
// flow's worth of slack). A biased start, a short walk or a walk that skips
// free ports falls outside. The fill levels: half full and 90 % (a window of
// 64 taken ports is then very unlikely), and 97 %, where failures begin in a
// 256-port --to-ports range (the test logs the measured and predicted rates).
func TestAllocatorFailureRate(t *testing.T) {
	requireRoot(t)
	const first, n, attempts = 20000, 256, 400
	e := newEnv(t, config{ports: []maps.PortRange{{First: first, Last: first + n - 1}}})
	rng := rand.New(rand.NewPCG(7, 11))
	for _, fill := range []float64{0.5, 0.9, 0.97} {
		e.deleteEntries(t, nil)
		taken := make([]bool, n)
		for _, i := range rng.Perm(n)[:int(fill*n)] {
			taken[i] = true
			e.putEntry(t, natKey(dirIngress, protoTCP, remote, nodeAddr, 443, uint16(first+i)), kindMasq, podB, uint16(1000+i))
		}
		baseline := e.natEntries(t)

		full := 0
		for s := range n {
			all := true
			for j := range allocatorProbes {
				if !taken[(s+j)%n] {
					all = false
					break
				}
			}
			if all {
				full++
			}
		}
		p := float64(full) / n

		fails := 0
		for a := range attempts {
			r := e.egress(t, tcpPkt(podA, uint16(30000+a), remote, 443, "S").frame(t))
			switch r.ret {
			case actShot:
				fails++
			case actPass:
			default:
				t.Fatalf("verdict %d", r.ret)
			}
			e.deleteEntries(t, baseline)
		}
		rate := float64(fails) / attempts
		bound := 4*math.Sqrt(p*(1-p)/attempts) + 1.0/attempts
		t.Logf("fill %.0f%%: %d of %d flows failed (%.3f), predicted %.3f ± %.3f", fill*100, fails, attempts, rate, p, bound)
		if p == 0 && fails != 0 {
			t.Errorf("fill %.0f%%: %d flows failed although every window of %d ports had a free one", fill*100, fails, allocatorProbes)
		}
		if math.Abs(rate-p) > bound {
			t.Errorf("fill %.0f%%: failure rate %.3f, want %.3f ± %.3f", fill*100, rate, p, bound)
		}
	}
}

// TestAllocatorFindsTheLastPort: a range no larger than the probe walk is
// searched completely, so its last free port is always found, wherever it is.
func TestAllocatorFindsTheLastPort(t *testing.T) {
	requireRoot(t)
	const first, n = 30000, allocatorProbes
	e := newEnv(t, config{ports: []maps.PortRange{{First: first, Last: first + n - 1}}})
	for free := range n {
		e.deleteEntries(t, nil)
		for i := range n {
			if i != free {
				e.putEntry(t, natKey(dirIngress, protoTCP, remote, nodeAddr, 443, uint16(first+i)), kindMasq, podB, uint16(1000+i))
			}
		}
		for range 3 {
			baseline := e.natEntries(t)
			got := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
			if got != uint16(first+free) {
				t.Fatalf("free port %d: got %d", first+free, got)
			}
			e.deleteEntries(t, baseline)
		}
	}
}
