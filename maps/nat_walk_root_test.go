package maps

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tier 1 with privileges: ipm_nat4 and ipm_hostres4 as the datapath
// declares them, unpinned, without programs.

// TestCollectWhileLRUEvicts: the host reservations (ipm_hostres4) are an LRU
// that evicts whenever a new tuple finds it full, also while the expiry
// walks it. A walk whose position is evicted must not abort the pass: the
// chunked reader keeps a bucket position, where the one-Iterate reader it
// replaced restarted from the first key on every evicted position and gave
// up ("iteration aborted"), failing the reservations' half of every pass
// on a busy node. Another goroutine keeps filling the reservations past
// their capacity during a Collect; the expired flows must still go, the
// live ones stay, and Collect return no error. With the one-Iterate reader
// forced in walk, this fails twice over: "iterate map LRUHash(ipm_hostres4):
// iteration aborted", and the NAT table's own walk aborts on the entries the
// collector deletes, leaving most expired flows in place.
func TestCollectWhileLRUEvicts(t *testing.T) {
	spec := rootSpec(t)
	nat := newTestMap(t, spec, "ipm_nat4")
	hostres := newTestMap(t, spec, "ipm_hostres4")
	table := &NATTable{m: nat, hostres: hostres, c: &codec4{}}
	var c codec4
	node := netip.MustParseAddr("172.31.0.2")
	remote := netip.MustParseAddr("203.0.113.10")

	// Flows: expired ones (idle an hour, UDP times out after 30 s) and
	// live ones, both halves each.
	const expired, live = 20000, 5000
	now := uint64(Now())
	var keys []NATKey
	var vals []NATEntry
	for i := 0; i < expired+live; i++ {
		pod := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		seen := now - uint64(time.Hour)
		if i >= expired {
			seen = now
		}
		port := uint16(1024 + i%60000)
		out := tuple{Src: pod, Dst: remote, Sport: 40000, Dport: 53, Proto: unix.IPPROTO_UDP, Dir: dirEgress}
		in := tuple{Src: remote, Dst: node, Sport: 53, Dport: port, Proto: unix.IPPROTO_UDP, Dir: dirIngress}
		keys = append(keys, c.key(out), c.key(in))
		vals = append(vals,
			NATEntry{CreatedNs: seen, LastSeenNs: seen, Addr: AddrToBE(node), Port: PortToBE(port), Kind: kindMasq},
			NATEntry{CreatedNs: seen, LastSeenNs: seen, Addr: AddrToBE(pod), Port: PortToBE(40000), Kind: kindMasq})
	}
	if _, err := nat.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatalf("fill ipm_nat4: %v", err)
	}

	// Reservations: live ones, filled to capacity and then past it, from
	// another goroutine, for as long as the Collect runs.
	reservation := func(i uint32) (NATKey, NATEntry) {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 16), byte(i >> 8)})
		k := c.key(tuple{Src: src, Dst: node, Sport: uint16(i), Dport: 45000, Proto: unix.IPPROTO_TCP, Dir: dirIngress})
		n := uint64(Now())
		return k, NATEntry{CreatedNs: n, LastSeenNs: n, Addr: AddrToBE(node), Port: PortToBE(45000), Flags: flagReplied}
	}
	capacity := hostres.MaxEntries()
	var next uint32
	fill := func(n uint32) {
		rk, rv := make([]NATKey, 0, 1024), make([]NATEntry, 0, 1024)
		for j := uint32(0); j < n; j++ {
			k, v := reservation(next)
			next++
			rk, rv = append(rk, k), append(rv, v)
			if len(rk) == cap(rk) || j == n-1 {
				if _, err := hostres.BatchUpdate(rk, rv, nil); err != nil {
					t.Errorf("fill ipm_hostres4: %v", err)
					return
				}
				rk, rv = rk[:0], rv[:0]
			}
		}
	}
	fill(capacity)

	// Between every two chunks of either walk, add 4,096 reservations,
	// each evicting another: the reservations' walk alone spans
	// capacity/1,024 chunks, so the map turns over several times under it
	// by construction, whatever the machine's speed.
	var churned uint32
	table.Pace = func() error {
		fill(4096)
		churned += 4096
		return nil
	}
	to := Timeouts{TCPSyn: time.Minute, TCPEstablished: 24 * time.Hour, TCPFin: time.Minute, TCPRst: 10 * time.Second,
		UDP: 30 * time.Second, UDPStream: 2 * time.Minute, ICMP: 30 * time.Second}
	removed, err := table.Collect(to)
	t.Logf("Collect removed %d, %d reservations added meanwhile (capacity %d)", removed, churned, capacity)
	if churned < capacity {
		t.Errorf("only %d reservations added during the Collect, want at least the capacity %d: no eviction under the walk", churned, capacity)
	}
	if err != nil {
		t.Errorf("Collect while the reservations evict: %v", err)
	}
	if s := table.LastPass(); !s.Complete {
		t.Errorf("the pass is not complete: %+v", s)
	}
	if removed < expired {
		t.Errorf("Collect removed %d, want at least the %d expired flows", removed, expired)
	}
	left := 0
	var k NATKey
	var v NATEntry
	it := nat.Iterate()
	for it.Next(&k, &v) {
		left++
		if v.LastSeenNs != now {
			t.Fatalf("an expired half is left: %+v", v)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if left != 2*live {
		t.Errorf("%d NAT entries left, want the %d halves of the live flows", left, 2*live)
	}
}
