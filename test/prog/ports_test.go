package prog

import (
	"maps"
	"slices"
	"testing"

	ipmaps "github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestPortKeep: with --random-fully=false the node port (ICMP identifier) is
// the pod's own when that tuple is free, another one when it is taken, and
// one from --to-ports when the pod's port is outside them (docs/behaviour.md §5).
func TestPortKeep(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		e := newEnv(t, config{keepPorts: true})
		if got := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S")); got != 40000 {
			t.Errorf("first flow: node port %d, want the pod's 40000", got)
		}
		if got := e.masquerade(t, tcpPkt(podB, 40000, remote, 443, "S")); got == 40000 {
			t.Errorf("second pod, same port, same remote: node port 40000 taken twice")
		}
		// Uniqueness is per remote endpoint and protocol.
		if got := e.masquerade(t, tcpPkt(podB, 40000, remote2, 443, "S")); got != 40000 {
			t.Errorf("another remote: node port %d, want 40000", got)
		}
		if got := e.masquerade(t, tcpPkt(podB, 40000, remote, 444, "S")); got != 40000 {
			t.Errorf("another remote port: node port %d, want 40000", got)
		}
		if got := e.masquerade(t, udpPkt(podB, 40000, remote, 443)); got != 40000 {
			t.Errorf("udp: node port %d, want 40000", got)
		}
	})
	t.Run("icmp", func(t *testing.T) {
		e := newEnv(t, config{keepPorts: true})
		if got := e.masquerade(t, echoRequest(podA, remote, 0x4242)); got != 0x4242 {
			t.Errorf("first ping: identifier 0x%04x, want the pod's 0x4242", got)
		}
		if got := e.masquerade(t, echoRequest(podB, remote, 0x4242)); got == 0x4242 {
			t.Errorf("second pod, same identifier, same remote: 0x4242 taken twice")
		}
	})
	t.Run("pod port outside --to-ports", func(t *testing.T) {
		e := newEnv(t, config{keepPorts: true, ports: []ipmaps.PortRange{{First: 20000, Last: 20009}}})
		e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S")) // masquerade checks the range
	})
	t.Run("host reservation", func(t *testing.T) {
		// A host socket (or a flow netfilter NATed) uses node:40000 with
		// remote:443, reserved in the NAT table: no pod mapping may take
		// it (docs/behaviour.md §8), and its replies are not translated.
		e := newEnv(t, config{keepPorts: true})
		e.putEntry(t, natKey(dirIngress, protoTCP, remote, nodeAddr, 443, 40000), kindHost, nodeAddr, 40000)
		if got := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S")); got == 40000 {
			t.Errorf("pod flow took the host's tuple node:40000 -> %s:443", remote)
		}
		in := tcpPkt(remote, 443, nodeAddr, 40000, "SA").frame(t)
		e.requirePassed(t, true, in, "ingress_host")
	})
}

// TestPortRangeExhaustion: a 10-port --to-ports range carries 10 concurrent
// flows to one remote endpoint; the 11th fails closed, dropped and counted
// (docs/behaviour.md §9), while the existing flows and flows to other endpoints go on.
func TestPortRangeExhaustion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ranges []ipmaps.PortRange
	}{
		{"one range", []ipmaps.PortRange{{First: 20000, Last: 20009}}},
		{"three ranges", []ipmaps.PortRange{{First: 2000, Last: 2002}, {First: 3000, Last: 3001}, {First: 4000, Last: 4004}}},
		{"single ports", []ipmaps.PortRange{{First: 1111, Last: 1111}, {First: 2222, Last: 2222}, {First: 3333, Last: 3337}, {First: 65534, Last: 65535}, {First: 1024, Last: 1024}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, keep := range []bool{false, true} {
				e := newEnv(t, config{ports: tc.ranges, keepPorts: keep})
				want := map[uint16]bool{}
				for _, r := range tc.ranges {
					for p := int(r.First); p <= int(r.Last); p++ {
						want[uint16(p)] = true
					}
				}
				// Pod ports from the range itself, each used by two
				// pods: without --random-fully the first keeps it, the
				// second must get another one.
				sorted := slices.Sorted(maps.Keys(want))
				got := map[uint16]bool{}
				for i := range 10 {
					src := podA
					if i >= 5 {
						src = podB
					}
					p := e.masquerade(t, tcpPkt(src, sorted[i%5], remote, 443, "S"))
					if got[p] {
						t.Fatalf("random-fully=%v: node port %d given to two flows to the same remote", !keep, p)
					}
					if keep && i < 5 && p != sorted[i] {
						t.Errorf("random-fully=false: %s:%d got node port %d, want its own (free)", src, sorted[i], p)
					}
					got[p] = true
				}
				if !maps.Equal(got, want) {
					t.Fatalf("random-fully=%v: ports %v, want exactly %v", !keep, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
				}

				before := e.readCounters(t)
				r := e.egress(t, tcpPkt(podC, sorted[0], remote, 443, "S").frame(t))
				requireVerdict(t, r, actShot)
				e.expectCounters(t, before, map[string]uint64{"egress_no_port": 1})
				if n := len(e.natEntries(t)); n != 20 {
					t.Errorf("NAT table has %d entries after the failed flow, want the 20 of the 10 flows", n)
				}

				// Existing flows are unaffected; other endpoints and
				// protocols have their own port space.
				e.masquerade(t, tcpPkt(podB, sorted[3], remote, 443, "A"))
				e.masquerade(t, tcpPkt(podC, sorted[0], remote, 444, "S"))
				e.masquerade(t, udpPkt(podC, sorted[0], remote, 443))
			}
		})
	}
}

// TestPortRanges: with a multi-range --to-ports, every node port comes from
// those ranges, and ports from more than one range are used.
func TestPortRanges(t *testing.T) {
	ranges := []ipmaps.PortRange{{First: 1024, Last: 1100}, {First: 30000, Last: 30010}, {First: 60000, Last: 60001}}
	e := newEnv(t, config{ports: ranges})
	used := map[int]bool{}
	for i := range uint16(60) {
		var p uint16
		if i%2 == 0 {
			p = e.masquerade(t, tcpPkt(podA, 40000+i, remote, 443, "S"))
		} else {
			p = e.masquerade(t, udpPkt(podA, 40000+i, remote, 53))
		}
		for ri, r := range ranges {
			if p >= r.First && p <= r.Last {
				used[ri] = true
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("60 flows used only ranges %v of %v", used, ranges)
	}
}

// TestTableFull: when the NAT table has no room, a new flow is dropped and
// counted, no half-made mapping stays, and existing flows go on (docs/behaviour.md §9).
func TestTableFull(t *testing.T) {
	// 5 entries: two flows take 4; the third gets its reply half into the
	// last slot and then fails on its egress half, which must give the
	// reply half back.
	// Both flows got their answer: early drop spares them
	// (TestEarlyDropSparesReplied).
	e := newEnv(t, config{natEntries: 5})
	p1 := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	p2 := e.masquerade(t, udpPkt(podA, 40001, remote, 53))
	requireVerdict(t, e.ingress(t, tcpPkt(remote, 443, nodeAddr, p1, "SA").frame(t)), actPass)
	requireVerdict(t, e.ingress(t, udpPkt(remote, 53, nodeAddr, p2).frame(t)), actPass)

	before := e.readCounters(t)
	requireVerdict(t, e.egress(t, tcpPkt(podA, 40002, remote, 443, "S").frame(t)), actShot)
	e.expectCounters(t, before, map[string]uint64{"egress_table_full": 1})
	if n := len(e.natEntries(t)); n != 4 {
		t.Errorf("NAT table has %d entries, want the 4 of the two flows", n)
	}
	snap, err := e.nat.Read()
	if err != nil {
		t.Fatal(err)
	}
	if snap.Orphans != 0 {
		t.Errorf("%d orphan reply halves left", snap.Orphans)
	}
	if got := e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "A")); got != p1 {
		t.Errorf("existing flow: node port %d, want %d", got, p1)
	}
}
