package maps

import (
	"net/netip"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Tier 1 with privileges: ipm_local4, ipm_local6 and the settings as the
// datapath declares them, unpinned.

func newTestLocal(t *testing.T) *LocalAddrs {
	t.Helper()
	spec := rootSpec(t)
	return &LocalAddrs{
		m4:       newTestMap(t, spec, loader.BPFMapIpmLocal4),
		m6:       newTestMap(t, spec, loader.BPFMapIpmLocal6),
		settings: &Settings{m: newTestMap(t, spec, loader.BPFMapIpmSettings)},
	}
}

// nthAddr4 is the n-th address after base.
func nthAddr4(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func mustLocal(t *testing.T, l *LocalAddrs, a netip.Addr, want bool) {
	t.Helper()
	got, err := l.IsLocal(a)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("IsLocal(%s) = %v, want %v", a, got, want)
	}
}

// More node addresses than the map holds (every ClusterIP on kube-ipvs0)
// must not stop the sync: the first ones in the caller's order are kept,
// the rest reported, and an address that appears with a higher priority
// takes the place of the last one kept.
func TestLocalAddrsOverflow(t *testing.T) {
	l := newTestLocal(t)
	capacity := int(l.m4.MaxEntries())
	const over = 100
	uplink := netip.MustParseAddr("192.0.2.10")
	uplink6 := netip.MustParseAddr("2001:db8::10")
	addrs := []LocalAddr{{uplink, 2}, {uplink6, 2}}
	base := netip.MustParseAddr("10.96.0.0")
	for i := range capacity + over {
		addrs = append(addrs, LocalAddr{nthAddr4(base, i), 7})
	}
	res, err := l.Sync(addrs)
	if err != nil {
		t.Fatalf("Sync past capacity returned an error: %v", err)
	}
	// The uplink address plus capacity-1 of the dummy's fit.
	if res.Stored4 != capacity || res.Dropped4() != over+1 {
		t.Errorf("stored %d dropped %d, want %d and %d", res.Stored4, res.Dropped4(), capacity, over+1)
	}
	if res.Stored6 != 1 || res.Dropped6() != 0 {
		t.Errorf("IPv6: stored %d dropped %d, want 1 and 0", res.Stored6, res.Dropped6())
	}
	mustLocal(t, l, uplink, true)
	mustLocal(t, l, uplink6, true)
	mustLocal(t, l, nthAddr4(base, 0), true)
	mustLocal(t, l, nthAddr4(base, capacity-2), true)
	mustLocal(t, l, nthAddr4(base, capacity-1), false)
	if got := res.Dropped[0].Addr; got != nthAddr4(base, capacity-1) {
		t.Errorf("first dropped %s, want %s", got, nthAddr4(base, capacity-1))
	}
	if s := l.settings.val; s.Local4Count != uint32(capacity) {
		t.Errorf("settings count %d, want %d (what the map holds)", s.Local4Count, capacity)
	}

	// A new address of the uplink comes first: it gets in although the
	// map is full, and the last dummy address kept makes room.
	second := netip.MustParseAddr("192.0.2.11")
	res, err = l.Sync(append([]LocalAddr{{second, 2}}, addrs...))
	if err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	if res.Stored4 != capacity || res.Dropped4() != over+2 {
		t.Errorf("second sync: stored %d dropped %d, want %d and %d", res.Stored4, res.Dropped4(), capacity, over+2)
	}
	mustLocal(t, l, second, true)
	mustLocal(t, l, uplink, true)
	mustLocal(t, l, nthAddr4(base, capacity-3), true)
	mustLocal(t, l, nthAddr4(base, capacity-2), false)

	// Back to a small node: everything fits, the stale entries are gone
	// and the settings carry the addresses inline again.
	res, err = l.Sync([]LocalAddr{{uplink, 2}, {uplink6, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored4 != 1 || len(res.Dropped) != 0 {
		t.Errorf("small sync: stored %d dropped %d, want 1 and 0", res.Stored4, len(res.Dropped))
	}
	if n := countEntries(t, l); n != 2 {
		t.Errorf("%d entries left in the maps, want 2", n)
	}
	mustLocal(t, l, nthAddr4(base, 0), false)
	if s := l.settings.val; s.Local4Count != 1 || s.Local4[0] != AddrToBE(uplink) {
		t.Errorf("settings count %d first %x, want the uplink address inline", s.Local4Count, s.Local4[0])
	}
}

func countEntries(t *testing.T, l *LocalAddrs) int {
	t.Helper()
	h4, err := readLocal(l.m4)
	if err != nil {
		t.Fatal(err)
	}
	h6, err := readLocal(l.m6)
	if err != nil {
		t.Fatal(err)
	}
	return len(h4) + len(h6)
}
