package prog

import (
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// earlyDropEntries is the NAT table of the early drop tests: 32 flows.
const earlyDropEntries = 64

// hasFlow reports whether the egress half of the flow u is in the IPv4 NAT
// table.
func (e *env) hasFlow(t testing.TB, u tuple) bool {
	t.Helper()
	_, ok := e.natEntries(t)[natKey(dirEgress, u.proto, u.src, u.dst, u.sport, u.dport)]
	return ok
}

// spray fills the table with n flows of podB that never get a reply, in
// order, and returns their tuples.
func (e *env) spray(t testing.TB, n int) []tuple {
	t.Helper()
	var flows []tuple
	for i := range n {
		p := udpPkt(podB, 30000, remote2, uint16(1000+i))
		e.masquerade(t, p)
		flows = append(flows, p.tuple)
	}
	return flows
}

// TestEarlyDrop: one pod fills the NAT table with flows that never get a
// reply; another pod's new flow still gets a mapping, in place of the two
// oldest of them (both halves removed, counted), and its reply is
// translated; the other unanswered flows stay. IPv4 and IPv6.
func TestEarlyDrop(t *testing.T) {
	t.Run("ipv4", func(t *testing.T) {
		e := newEnv(t, config{natEntries: earlyDropEntries})
		sprayed := e.spray(t, earlyDropEntries/2)
		if n := len(e.natEntries(t)); n != earlyDropEntries {
			t.Fatalf("after the spray the table holds %d entries, want it full (%d)", n, earlyDropEntries)
		}

		before := e.readCounters(t)
		syn := tcpPkt(podA, 40000, remote, 443, "S")
		port := e.masquerade(t, syn)
		e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 2})
		for i, u := range sprayed {
			if got, want := e.hasFlow(t, u), i >= 2; got != want {
				t.Errorf("sprayed flow %d (%v): in the table %v, want %v (the two oldest make room)", i, u, got, want)
			}
		}
		if n := len(e.natEntries(t)); n != earlyDropEntries-2 {
			t.Errorf("table holds %d entries, want %d: two flows out, one in, no half left", n, earlyDropEntries-2)
		}
		snap, err := e.nat.Read()
		if err != nil {
			t.Fatal(err)
		}
		if snap.Orphans != 0 {
			t.Errorf("%d reply halves left without their flow", snap.Orphans)
		}
		synAck := tcpPkt(remote, 443, nodeAddr, port, "SA")
		r := e.ingress(t, synAck.frame(t))
		requireVerdict(t, r, actPass)
		if d := decode(t, r.out); d.dst != podA || d.dport != 40000 {
			t.Errorf("reply of the new flow reached %s:%d, want %s:40000", d.dst, d.dport, podA)
		}

		// The room made by one early drop takes the next new flow
		// without another.
		before = e.readCounters(t)
		e.masquerade(t, tcpPkt(podA, 40001, remote, 443, "S"))
		e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1})
	})
	t.Run("ipv6", func(t *testing.T) {
		e := newEnv6(t, config6{config: config{natEntries: earlyDropEntries}})
		for i := range earlyDropEntries / 2 {
			e.masquerade6(t, udp6(pod6B, 30000, remote6b, uint16(1000+i)))
		}
		if n := mapLen(t, e.dp.Maps.IpmNat6); n != earlyDropEntries {
			t.Fatalf("after the spray the table holds %d entries, want it full (%d)", n, earlyDropEntries)
		}
		before := e.readCounters(t)
		e.masquerade6(t, tcp6(pod6A, 40000, remote6, 443, "S"))
		e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 2})
		if n := mapLen(t, e.dp.Maps.IpmNat6); n != earlyDropEntries-2 {
			t.Errorf("table holds %d entries, want %d", n, earlyDropEntries-2)
		}
	})
}

// TestEarlyDropSparesReplied: flows that got a reply are never dropped
// early, whatever their age; the oldest unanswered flows go instead, even
// when replied ones are older. Once every flow has its answer, a new flow is
// refused (also TestTableFull).
func TestEarlyDropSparesReplied(t *testing.T) {
	e := newEnv(t, config{natEntries: earlyDropEntries})
	var flows []pkt
	var ports []uint16
	for i := range earlyDropEntries / 2 {
		p := udpPkt(podB, 30000, remote2, uint16(1000+i))
		ports = append(ports, e.masquerade(t, p))
		flows = append(flows, p)
	}
	answer := func(p pkt, port uint16) {
		t.Helper()
		r := udpPkt(p.dst, p.dport, nodeAddr, port)
		if p.proto == protoTCP {
			r = tcpPkt(p.dst, p.dport, nodeAddr, port, "SA")
		}
		requireVerdict(t, e.ingress(t, r.frame(t)), actPass)
	}
	// Every flow but numbers 5 and 9 gets its answer.
	for i, p := range flows {
		if i != 5 && i != 9 {
			answer(p, ports[i])
		}
	}
	before := e.readCounters(t)
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	port := e.masquerade(t, syn)
	e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 2})
	for i, p := range flows {
		if got, want := e.hasFlow(t, p.tuple), i != 5 && i != 9; got != want {
			t.Errorf("flow %d: in the table %v, want %v", i, got, want)
		}
	}
	answer(syn, port)
	syn2 := tcpPkt(podA, 40001, remote, 443, "S")
	answer(syn2, e.masquerade(t, syn2))
	full := e.natEntries(t)
	if len(full) != earlyDropEntries {
		t.Fatalf("table holds %d entries, want it full", len(full))
	}
	before = e.readCounters(t)
	requireVerdict(t, e.egress(t, tcpPkt(podA, 40002, remote, 443, "S").frame(t)), actShot)
	e.expectCounters(t, before, map[string]uint64{"egress_table_full": 1})
	if after := e.natEntries(t); len(after) != len(full) {
		t.Errorf("a refused flow changed the table: %d entries, want %d", len(after), len(full))
	}
}

// TestEarlyDropRecordReused: a ring record whose tuple was closed and opened
// again since is not the flow it recorded (its creation time differs), so
// the newer flow is not dropped for the older one's place in the ring.
func TestEarlyDropRecordReused(t *testing.T) {
	e := newEnv(t, config{natEntries: 4})
	first := udpPkt(podB, 30000, remote2, 1000)
	e.masquerade(t, first)
	// The flow is removed (as expiry does) and the same tuple opens again:
	// the ring holds the old record and then the new one.
	e.deleteEntries(t, nil)
	port := e.masquerade(t, first)
	requireVerdict(t, e.ingress(t, udpPkt(remote2, 1000, nodeAddr, port).frame(t)), actPass)
	e.masquerade(t, udpPkt(podB, 30001, remote2, 1001)) // full now
	before := e.readCounters(t)
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 1})
	if !e.hasFlow(t, first.tuple) {
		t.Error("the replied flow on a reused tuple was dropped for its predecessor's ring record")
	}
}

// TestEarlyDropRingWraps: the ring's positions run on past its size; the
// records written across the end of the array are still found oldest first.
func TestEarlyDropRingWraps(t *testing.T) {
	const slots = 16384 // IPM_RECENT_SLOTS in bpf/maps.h
	e := newEnv(t, config{natEntries: earlyDropEntries})
	p := loader.BPFIpmRecentPos{Head: 3*slots - 10, Tail: 3*slots - 10}
	if err := e.dp.Maps.IpmRecentPos.Put(uint32(0), &p); err != nil {
		t.Fatal(err)
	}
	sprayed := e.spray(t, earlyDropEntries/2)
	before := e.readCounters(t)
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 2})
	for i, u := range sprayed {
		if got, want := e.hasFlow(t, u), i >= 2; got != want {
			t.Errorf("sprayed flow %d: in the table %v, want %v", i, got, want)
		}
	}
	if err := e.dp.Maps.IpmRecentPos.Lookup(uint32(0), &p); err != nil {
		t.Fatal(err)
	}
	if p.Head != 3*slots-10+earlyDropEntries/2+1 {
		t.Errorf("ring head %d, want %d: one record per new mapping", p.Head, 3*slots-10+earlyDropEntries/2+1)
	}
}

// TestEarlyDropExpired: in a table full of answered flows, the ones past
// their timeout give way to a new flow while no agent runs to remove them
// (counted as nat_reclaimed); without timeouts from an agent nothing
// answered is ever removed and the new flow is refused.
func TestEarlyDropExpired(t *testing.T) {
	for _, withTimeouts := range []bool{true, false} {
		t.Run(map[bool]string{true: "timeouts set", false: "no timeouts"}[withTimeouts], func(t *testing.T) {
			e := newEnv(t, config{natEntries: earlyDropEntries})
			if withTimeouts {
				if err := e.settings.SetTimeouts(reclaimTimeouts); err != nil {
					t.Fatal(err)
				}
			}
			for i := range earlyDropEntries / 2 {
				p := udpPkt(podB, 30000, remote2, uint16(1000+i))
				port := e.masquerade(t, p)
				requireVerdict(t, e.ingress(t, udpPkt(remote2, p.dport, nodeAddr, port).frame(t)), actPass)
				if i == 3 || i == 4 {
					// Answered, then idle past the UDP stream timeout.
					e.ageFlow(t, p.tuple, port, 3*time.Hour, true, 0, false)
					e.restampLastRecord(t, p.tuple)
				}
			}
			before := e.readCounters(t)
			r := e.egress(t, tcpPkt(podA, 40000, remote, 443, "S").frame(t))
			if !withTimeouts {
				requireVerdict(t, r, actShot)
				e.expectCounters(t, before, map[string]uint64{"egress_table_full": 1})
				return
			}
			requireVerdict(t, r, actPass)
			e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_reclaimed": 2})
			if n := len(e.natEntries(t)); n != earlyDropEntries-2 {
				t.Errorf("table holds %d entries, want %d", n, earlyDropEntries-2)
			}
		})
	}
}

// restampLastRecord gives the newest IPv4 ring record the creation time the
// egress half of u has now, as if ageFlow's time had really passed since
// the flow was created and recorded.
func (e *env) restampLastRecord(t testing.TB, u tuple) {
	t.Helper()
	var out maps.NATEntry
	k := natKey(dirEgress, u.proto, u.src, u.dst, u.sport, u.dport)
	if err := e.dp.Maps.IpmNat4.Lookup(&k, &out); err != nil {
		t.Fatal(err)
	}
	var pos loader.BPFIpmRecentPos
	if err := e.dp.Maps.IpmRecentPos.Lookup(uint32(0), &pos); err != nil {
		t.Fatal(err)
	}
	idx := uint32(pos.Head-1) % 16384 // IPM_RECENT_SLOTS
	var slot loader.BPFIpmRecent4Slot
	if err := e.dp.Maps.IpmRecent4.Lookup(idx, &slot); err != nil {
		t.Fatal(err)
	}
	if slot.Key != k {
		t.Fatalf("newest ring record is %+v, want the flow %v", slot.Key, u)
	}
	slot.CreatedNs = out.CreatedNs
	if err := e.dp.Maps.IpmRecent4.Put(idx, &slot); err != nil {
		t.Fatal(err)
	}
}

// TestEarlyDropLeavesAnotherFlowsReplyHalf: early drop deletes a flow's
// reply half only when that half still points back to the flow. Between
// reading a recorded flow and deleting its reply key, another CPU may have
// removed the flow and given its node port, towards the same remote, to a
// new flow; deleting that key would break the new flow and let a later one
// receive its replies. The state such a race leaves is made here directly:
// the oldest recorded flow's egress half names the node port another pod's
// unanswered flow to the same remote now holds.
func TestEarlyDropLeavesAnotherFlowsReplyHalf(t *testing.T) {
	e := newEnv(t, config{natEntries: earlyDropEntries})
	sprayed := e.spray(t, earlyDropEntries/2-1)
	victim := sprayed[0]
	other := udpPkt(podA, 50000, victim.dst, victim.dport) // the same remote and port
	port := e.masquerade(t, other)
	if n := len(e.natEntries(t)); n != earlyDropEntries {
		t.Fatalf("table holds %d entries, want it full (%d)", n, earlyDropEntries)
	}
	k := natKey(dirEgress, victim.proto, victim.src, victim.dst, victim.sport, victim.dport)
	v := e.natEntries(t)[k]
	v.Port = be16(port)
	if err := e.dp.Maps.IpmNat4.Put(&k, &v); err != nil {
		t.Fatal(err)
	}

	before := e.readCounters(t)
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "nat_early_drop": 2})
	if e.hasFlow(t, victim) {
		t.Errorf("the oldest flow %v was not dropped", victim)
	}
	reply := udpPkt(other.dst, other.dport, nodeAddr, port)
	r := e.ingress(t, reply.frame(t))
	requireVerdict(t, r, actPass)
	if d := decode(t, r.out); d.dst != podA || d.dport != 50000 {
		t.Errorf("reply to node port %d reached %s:%d, want %s:50000: early drop deleted another flow's reply half", port, d.dst, d.dport, podA)
	}
}
