package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// TestLRUEvictionsMetric: a flood of host flows from the node (UDP datagrams
// from 80,000 node ports to the router's discard port) overfills the host
// reservations, and ip_masq_agent_lru_evictions_total{map="hostres"} shows
// about as many evictions as reservations are really missing from the
// pinned map, while the other LRU maps show none (docs/behaviour.md §14.1).
// One attach mode: the count does not depend on it.
func TestLRUEvictionsMetric(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp, a := startAgent(t, AgentOptions{Mode: AttachModes[0], Config: cfgPrivate, ExtraArgs: []string{"--gc-interval=1s"}})
	if err := waitProbe(tp.Node, "/readyz", 200, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if v := scrape(t, tp.Node).Must(t, "ip_masq_agent_lru_evictions_total", "map=hostres", "family=ipv4"); v != 0 {
		t.Fatalf("hostres evictions before the flood: %v, want 0", v)
	}

	const flood = 80000
	dst := netip.AddrPortFrom(RouterNodeIP, 9)
	src := func(i int) netip.AddrPort { return netip.AddrPortFrom(NodeIP, uint16(1024+i%60000)) }
	srcPort := func(i int) uint16 { return uint16(1024 + i%60000) }
	dstPort := func(i int) uint16 { return 9 + uint16(i/60000) }
	pkts := make([][]byte, 0, flood)
	for i := 0; i < flood; i++ {
		pkts = append(pkts, udpPacket(src(i), netip.AddrPortFrom(dst.Addr(), dstPort(i)), 64, []byte("x")))
	}
	if err := tp.Node.sendRaw(pkts...); err != nil {
		t.Fatal(err)
	}

	// The truth: the flood's tuples missing from the pinned map.
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.PinPath, "ipm_hostres4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ne := func(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }
	be := func(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }
	missing := 0
	var v loader.BPFIpmNatEntry
	for i := 0; i < flood; i++ {
		k := loader.BPFIpmNatKey{Saddr: ne(RouterNodeIP), Daddr: ne(NodeIP), Sport: be(dstPort(i)), Dport: be(srcPort(i)),
			Proto: 17, Dir: loader.BPFIpmDirIPM_DIR_INGRESS}
		if m.Lookup(&k, &v) != nil {
			missing++
		}
	}
	if capacity := int(m.MaxEntries()); missing < flood-capacity {
		t.Fatalf("%d of %d reservations missing from a map of %d: the flood did not overfill it", missing, flood, capacity)
	}

	// The next passes (every second) catch up with it.
	margin := float64(missing/100 + 10)
	var got float64
	err = eventually(10*time.Second, func() error {
		got = scrape(t, tp.Node).Must(t, "ip_masq_agent_lru_evictions_total", "map=hostres", "family=ipv4")
		if got < float64(missing)-margin || got > float64(missing)+margin {
			return fmt.Errorf("hostres evictions %v, %d reservations are really missing", got, missing)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("%d host flows: %d reservations evicted, the metric says %v", flood, missing, got)
	after := scrape(t, tp.Node)
	for _, name := range []string{"inbound", "nomasq_tcp", "frag"} {
		for _, fam := range []string{"ipv4", "ipv6"} {
			if v := after.Must(t, "ip_masq_agent_lru_evictions_total", "map="+name, "family="+fam); v != 0 {
				t.Errorf("%s %s evictions: %v, want 0", name, fam, v)
			}
		}
	}
}
