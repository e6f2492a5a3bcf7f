package prog

import (
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// reclaimTimeouts are short and all different, so each state's own timeout
// is what decides.
var reclaimTimeouts = maps.Timeouts{
	TCPSyn: 20 * time.Second, TCPEstablished: time.Hour, TCPFin: 40 * time.Second, TCPRst: 10 * time.Second,
	UDP: 30 * time.Second, UDPStream: 2 * time.Hour, ICMP: 15 * time.Second,
}

// ageFlow makes the flow u, masqueraded to node port port, look idle for
// idle: both halves stamped that far back, the reply half as never used
// unless replied, and flags set on the egress half; FIN and RST also on the
// reply half unless halfClosed (a FIN from the pod alone).
func (e *env) ageFlow(t testing.TB, u tuple, port uint16, idle time.Duration, replied bool, flags loader.BPFIpmEntryFlags, halfClosed bool) {
	t.Helper()
	m := e.dp.Maps.IpmNat4
	ok := natKey(dirEgress, u.proto, u.src, u.dst, u.sport, u.dport)
	rsport := u.dport
	if u.proto == protoICMP {
		rsport = 0
	}
	rk := natKey(dirIngress, u.proto, u.dst, nodeAddr, rsport, port)
	then := uint64(maps.Now() - idle)
	var out, in maps.NATEntry
	if err := m.Lookup(&ok, &out); err != nil {
		t.Fatalf("egress half of %v: %v", u, err)
	}
	if err := m.Lookup(&rk, &in); err != nil {
		t.Fatalf("reply half of %v: %v", u, err)
	}
	out.CreatedNs, out.LastSeenNs, out.Flags = then, then, flags
	in.CreatedNs, in.LastSeenNs, in.Flags = then, 0, flags
	if halfClosed {
		in.Flags = 0
	}
	if replied {
		in.LastSeenNs = then
	}
	if err := m.Put(&ok, &out); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(&rk, &in); err != nil {
		t.Fatal(err)
	}
}

// TestReclaimExpired: with one node port, a flow holding it past its
// timeout (the agent not running to remove it) gives it to a new flow: both
// of its halves go, counted as nat_reclaimed; a flow within its timeout
// keeps it and the new flow is refused. Each state has its own timeout
// (bpf/expiry.h mirrors the agent's rule).
func TestReclaimExpired(t *testing.T) {
	const port = 20000
	fin, rst := loader.BPFIpmEntryFlagsIPM_F_FIN, loader.BPFIpmEntryFlagsIPM_F_RST
	// Not a datapath flag: marks a case whose FIN is on the egress half only.
	const halfClosedFlag loader.BPFIpmEntryFlags = 1 << 7
	for _, tc := range []struct {
		name     string
		old      pkt
		idle     time.Duration
		replied  bool
		flags    loader.BPFIpmEntryFlags
		timeouts maps.Timeouts
		reclaim  bool
	}{
		{"tcp opening, expired", tcpPkt(podA, 40000, remote, 443, "S"), 21 * time.Second, false, 0, reclaimTimeouts, true},
		{"tcp opening, live", tcpPkt(podA, 40000, remote, 443, "S"), 19 * time.Second, false, 0, reclaimTimeouts, false},
		{"tcp established past the syn timeout", tcpPkt(podA, 40000, remote, 443, "S"), 59 * time.Minute, true, 0, reclaimTimeouts, false},
		{"tcp established, expired", tcpPkt(podA, 40000, remote, 443, "S"), 61 * time.Minute, true, 0, reclaimTimeouts, true},
		{"tcp closing, expired", tcpPkt(podA, 40000, remote, 443, "S"), 41 * time.Second, true, fin, reclaimTimeouts, true},
		{"tcp closing, live", tcpPkt(podA, 40000, remote, 443, "S"), 39 * time.Second, true, fin, reclaimTimeouts, false},
		// One FIN is a half-close: the other side may go on sending, so
		// the established timeout still holds (as in the agent's rule).
		{"tcp half-closed past the fin timeout", tcpPkt(podA, 40000, remote, 443, "S"), 41 * time.Second, true, fin | halfClosedFlag, reclaimTimeouts, false},
		{"tcp reset, expired", tcpPkt(podA, 40000, remote, 443, "S"), 11 * time.Second, true, rst | fin, reclaimTimeouts, true},
		{"tcp reset, live", tcpPkt(podA, 40000, remote, 443, "S"), 9 * time.Second, true, rst, reclaimTimeouts, false},
		{"udp, expired", udpPkt(podA, 40000, remote, 443), 31 * time.Second, false, 0, reclaimTimeouts, true},
		{"udp stream past the udp timeout", udpPkt(podA, 40000, remote, 443), time.Hour, true, 0, reclaimTimeouts, false},
		{"udp stream, expired", udpPkt(podA, 40000, remote, 443), 121 * time.Minute, true, 0, reclaimTimeouts, true},
		{"timeouts not written by an agent", tcpPkt(podA, 40000, remote, 443, "S"), 100 * time.Hour, false, 0, maps.Timeouts{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{ports: []maps.PortRange{{First: port, Last: port}}})
			if err := e.settings.SetTimeouts(tc.timeouts); err != nil {
				t.Fatal(err)
			}
			if got := e.masquerade(t, tc.old); got != port {
				t.Fatalf("first flow got port %d", got)
			}
			e.ageFlow(t, tc.old.tuple, port, tc.idle, tc.replied, tc.flags&^halfClosedFlag, tc.flags&halfClosedFlag != 0)
			next := tc.old.with(tuple{tc.old.proto, podB, remote, 40001, tc.old.dport})
			before := e.readCounters(t)
			if tc.reclaim {
				if got := e.masquerade(t, next); got != port {
					t.Fatalf("new flow got port %d, want the reclaimed %d", got, port)
				}
				e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_reclaimed": 1})
				if e.hasFlow(t, tc.old.tuple) {
					t.Error("the expired flow's egress half is still there")
				}
				e.requireMapping(t, next.tuple, port, 0)
				return
			}
			requireVerdict(t, e.egress(t, next.frame(t)), actShot)
			e.expectCounters(t, before, map[string]uint64{"egress_no_port": 1})
			if n := len(e.natEntries(t)); n != 2 || !e.hasFlow(t, tc.old.tuple) {
				t.Errorf("the live flow was touched: %d entries", n)
			}
		})
	}
}

// TestReclaimOrphanAndReservation: a reply half left without its egress half
// and an idle host reservation are reclaimed after their timeouts too (the
// agent removes both), a fresh host reservation never.
func TestReclaimOrphanAndReservation(t *testing.T) {
	const port = 20000
	for _, tc := range []struct {
		name    string
		kind    loader.BPFIpmKind
		idle    time.Duration
		reclaim bool
	}{
		{"orphan reply half, old", kindMasq, 11 * time.Second, true},
		{"orphan reply half, new", kindMasq, 5 * time.Second, false},
		{"host reservation, idle", kindHost, 21 * time.Second, true},
		{"host reservation, fresh", kindHost, 5 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{ports: []maps.PortRange{{First: port, Last: port}}})
			if err := e.settings.SetTimeouts(reclaimTimeouts); err != nil {
				t.Fatal(err)
			}
			k := natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)
			m := e.dp.Maps.IpmNat4
			if tc.kind == kindHost {
				m = e.dp.Maps.IpmHostres4
			}
			then := uint64(maps.Now() - tc.idle)
			v := maps.NATEntry{CreatedNs: then, LastSeenNs: then, Addr: be32(podC), Port: be16(1234), Kind: tc.kind, Ifindex: testIfindex}
			if tc.kind == kindHost {
				v.Addr, v.Port = be32(nodeAddr), be16(port)
			}
			if err := m.Put(&k, &v); err != nil {
				t.Fatal(err)
			}
			syn := tcpPkt(podA, 40000, remote, 443, "S")
			before := e.readCounters(t)
			if tc.reclaim {
				if got := e.masquerade(t, syn); got != port {
					t.Fatalf("new flow got port %d, want %d", got, port)
				}
				e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_reclaimed": 1})
				return
			}
			requireVerdict(t, e.egress(t, syn.frame(t)), actShot)
			e.expectCounters(t, before, map[string]uint64{"egress_no_port": 1})
		})
	}
}
