package maps

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The two halves MasqHalves4 builds must be the pair the expiry joins: the
// reply key of the egress half, and the egress key back from the reply half.
func TestMasqHalves4ArePaired(t *testing.T) {
	var c codec4
	pod := netip.MustParseAddrPort("10.244.1.2:40000")
	remote := netip.MustParseAddrPort("203.0.113.10:443")
	node := netip.MustParseAddrPort("172.31.0.2:1030")
	ok, o, ik, i := MasqHalves4(unix.IPPROTO_TCP, pod, remote, node, 3, 5*time.Second)
	if got := replyKey(c.tuple(ok), c.half(o)); got != c.tuple(ik) {
		t.Fatalf("reply key %+v, want %+v", got, c.tuple(ik))
	}
	if got := originalKey(c.tuple(ik), c.half(i)); got != c.tuple(ok) {
		t.Fatalf("original key %+v, want %+v", got, c.tuple(ok))
	}
	f := makeFlow(c.tuple(ok), c.half(o), c.half(i), true)
	if f.Pod != pod || f.Remote != remote || f.Node != node || f.State() != "established" {
		t.Fatalf("flow %v (%s)", f, f.State())
	}
	if v := egressView(c.tuple(ok), c.half(o)); v.State() != f.State() || v.LastSeen != f.LastSeen {
		t.Fatalf("the egress half alone tells %v (%s) last seen %v, both halves %s last seen %v", v, v.State(), v.LastSeen, f.State(), f.LastSeen)
	}
}
