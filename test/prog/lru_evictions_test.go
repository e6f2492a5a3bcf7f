package prog

import (
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestLRUEvictionsDerived: a flood of host flows overfills the host
// reservations (ipm_hostres4, an LRU map of 65,536) through the egress
// program; the kernel evicts silently, and the count the agent derives
// (new entries counted by the datapath, minus removals, minus the entries
// left) matches the reservations really missing, checked key by key. The
// agent's own removals are not taken for evictions, and the count never
// decreases (docs/behaviour.md §14.1).
func TestLRUEvictionsDerived(t *testing.T) {
	e := newEnv(t, config{})
	m := e.dp.Maps.IpmHostres4
	nats := [2]*maps.NATTable{e.nat, maps.NewNAT6Table(e.dp)}
	inbound := [2]*maps.Inbound{maps.NewInbound(e.dp), maps.NewInbound6(e.dp)}
	nomasq := [2]*maps.Inbound{maps.NewNomasqTCP(e.dp), maps.NewNomasqTCP6(e.dp)}
	ev := maps.NewLRUEvictions(e.dp, nats, inbound, nomasq)
	evicted := func(t *testing.T) uint64 {
		t.Helper()
		if err := ev.Update(); err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, x := range ev.Read() {
			if x.Map == "hostres" && x.Family == maps.IPv4 {
				n = x.Evicted
			} else if x.Evicted != 0 {
				t.Errorf("%s family %d: %d evictions, want none", x.Map, x.Family, x.Evicted)
			}
		}
		return n
	}

	// Reservations that exist before the base is taken count as neither
	// added nor evicted.
	send := func(t *testing.T, first, n int) {
		t.Helper()
		for i := first; i < first+n; i++ {
			requireVerdict(t, e.egress(t, udpPkt(nodeAddr, uint16(1024+i%60000), remote, uint16(1000+i/60000)).frame(t)), actPass)
		}
	}
	send(t, 0, 1000)
	if got := evicted(t); got != 0 {
		t.Fatalf("base: %d evictions, want 0", got)
	}

	// Overfill: the flood is larger than the map by a quarter.
	capacity := int(m.MaxEntries())
	flood := capacity + capacity/4
	before := newReservations(t, e)
	send(t, 1000, flood)
	if d := newReservations(t, e) - before; d != uint64(flood) {
		t.Errorf("lru_hostres_new grew by %d, want %d (one per new tuple)", d, flood)
	}
	// The truth: the flood's reservations that are gone, plus the
	// earlier ones gone since.
	missing := 0
	var v maps.NATEntry
	for i := 0; i < 1000+flood; i++ {
		k := natKey(dirIngress, protoUDP, remote, nodeAddr, uint16(1000+i/60000), uint16(1024+i%60000))
		if m.Lookup(&k, &v) != nil {
			missing++
		}
	}
	if missing < flood-capacity {
		t.Fatalf("only %d reservations missing after %d new ones into %d: the map did not evict", missing, flood, capacity)
	}
	got := evicted(t)
	// Nothing runs concurrently here, so the derivation is exact; the
	// margin is for an LRU that counts differently on another kernel.
	if margin := uint64(missing / 100); got+margin < uint64(missing) || got > uint64(missing)+margin {
		t.Errorf("derived %d evictions, %d reservations are really missing", got, missing)
	}
	t.Logf("%d new reservations into %d: %d evicted, derived %d", flood, capacity, missing, got)

	// A tuple already reserved is no new entry.
	before = newReservations(t, e)
	send(t, 1000+flood-10, 10)
	if d := newReservations(t, e) - before; d != 0 {
		t.Errorf("lru_hostres_new grew by %d for tuples already reserved", d)
	}

	// The agent's expiry removes every reservation (every timeout 1 ns):
	// removals, not evictions.
	time.Sleep(10 * time.Millisecond)
	tiny := maps.Timeouts{TCPSyn: 1, TCPEstablished: 1, TCPFin: 1, TCPRst: 1, UDP: 1, UDPStream: 1, ICMP: 1}
	if _, err := e.nat.Collect(tiny); err != nil {
		t.Fatal(err)
	}
	if n := mapLen(t, m); n != 0 {
		t.Fatalf("%d reservations left after the expiry", n)
	}
	if after := evicted(t); after != got {
		t.Errorf("after the expiry removed %d reservations: %d evictions, want still %d", e.nat.ReservationsRemoved(), after, got)
	}
	// New ones that fit evict nothing.
	send(t, 0, 1000)
	if after := evicted(t); after != got {
		t.Errorf("after 1000 new reservations into an empty map: %d evictions, want still %d", after, got)
	}
}

// newReservations reads lru_hostres_new of IPv4.
func newReservations(t *testing.T, e *env) uint64 {
	t.Helper()
	c, err := e.counters.ReadFamily(maps.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	return c.LruHostresNew
}
