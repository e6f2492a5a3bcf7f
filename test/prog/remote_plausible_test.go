package prog

import (
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// onlyTimeouts gives every flow state an hour except the two under test.
func onlyTimeouts(rst, fin time.Duration) maps.Timeouts {
	return maps.Timeouts{TCPSyn: time.Hour, TCPEstablished: time.Hour, TCPFin: fin, TCPRst: rst,
		UDP: time.Hour, UDPStream: time.Hour, ICMP: time.Hour}
}

// TestBlindRSTBeforePodACK: between the pod's SYN and its first ACK, a RST
// from the remote counts only when it acknowledges that SYN exactly (a
// refused connection), as the pod's own stack in SYN-SENT judges it. A blind
// one (no ACK, or another acknowledgement) is translated for the pod to judge
// but recorded nowhere: recorded, it would mark the connection that then
// opens as reset for good, the agent would expire it after 10 s of silence
// instead of hours, and its next segment would be answered with a reset.
func TestBlindRSTBeforePodACK(t *testing.T) {
	e := newEnv(t, config{})
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	syn.seq = 1000
	port := e.masquerade(t, syn)
	inKey := natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)
	outKey := natKey(dirEgress, protoTCP, podA, remote, 40000, 443)
	rstFlags := loader.BPFIpmEntryFlagsIPM_F_RST

	for _, tc := range []struct {
		name  string
		flags string
		ack   uint32
	}{
		{"without ACK", "R", 0},
		{"acknowledging before the SYN", "RA", 1000},
		{"acknowledging far past the SYN", "RA", 1001 + 0x10000},
	} {
		rst := tcpPkt(remote, 443, nodeAddr, port, tc.flags)
		rst.seq, rst.ack = 0x5eed5eed, tc.ack
		before := e.readCounters(t)
		r := e.ingress(t, rst.frame(t))
		requireVerdict(t, r, actPass)
		if d := decode(t, r.out); d.dst != podA || d.dport != 40000 {
			t.Errorf("%s: not translated to the pod: %v", tc.name, d.tuple)
		}
		e.expectCounters(t, before, map[string]uint64{"ingress_tcp_implausible": 1})
		all := e.natEntries(t)
		if all[inKey].Flags&rstFlags != 0 || all[outKey].ReplyFlags&rstFlags != 0 || all[inKey].LastSeenNs != 0 {
			t.Fatalf("blind RST %s recorded: reply half %+v, egress half %+v", tc.name, all[inKey], all[outKey])
		}
	}

	// The handshake completes and data flows both ways.
	sa := tcpPkt(remote, 443, nodeAddr, port, "SA")
	sa.seq, sa.ack = 5000, 1001
	requireVerdict(t, e.ingress(t, sa.frame(t)), actPass)
	ack := tcpPkt(podA, 40000, remote, 443, "A")
	ack.seq, ack.ack, ack.win = 1001, 5001, 1000
	e.masquerade(t, ack)
	data := tcpPkt(remote, 443, nodeAddr, port, "PA")
	data.seq, data.ack = 5001, 1001
	requireVerdict(t, e.ingress(t, data.frame(t)), actPass)
	snap, err := e.nat.Read()
	if err != nil || len(snap.Flows) != 1 || snap.Flows[0].State() != "established" {
		t.Fatalf("after the handshake: %v %+v, want one established flow", err, snap.Flows)
	}
	time.Sleep(300 * time.Millisecond)
	if removed, err := e.nat.Collect(onlyTimeouts(100*time.Millisecond, time.Hour)); err != nil || removed != 0 {
		t.Fatalf("an established connection idle 300 ms, reset timeout 100 ms: %d flows removed (%v)", removed, err)
	}
	next := tcpPkt(podA, 40000, remote, 443, "PA")
	next.seq, next.ack = 1001, 5100
	if r := e.egress(t, next.frame(t)); r.ret != actPass {
		t.Fatalf("the pod's next segment: verdict %s, want it translated", verdictName(r.ret))
	}
}

// TestRefusalCounts: the remote's RST|ACK acknowledging the pod's SYN (a
// refused connection) resets the mapping, also after the pod retransmitted
// its SYN with another sequence number on the same tuple: the last SYN is
// the one acknowledged. A SYN that carried data (TCP Fast Open) is refused
// with an acknowledgement of its data too.
func TestRefusalCounts(t *testing.T) {
	e := newEnv(t, config{})
	for i, seqs := range [][]uint32{{1000}, {1000, 7000}, {0xffff_fff0}} {
		sport := uint16(41000 + i)
		var port uint16
		for _, seq := range seqs {
			syn := tcpPkt(podA, sport, remote, 443, "S")
			syn.seq = seq
			port = e.masquerade(t, syn)
		}
		isn := seqs[len(seqs)-1]
		if len(seqs) > 1 {
			stale := tcpPkt(remote, 443, nodeAddr, port, "RA")
			stale.ack = seqs[0] + 1
			before := e.readCounters(t)
			requireVerdict(t, e.ingress(t, stale.frame(t)), actPass)
			e.expectCounters(t, before, map[string]uint64{"ingress_tcp_implausible": 1})
		}
		refuse := tcpPkt(remote, 443, nodeAddr, port, "RA")
		refuse.seq, refuse.ack = 0, isn+1
		if i == 2 {
			refuse.ack = isn + 1 + 1400 // past 1400 bytes of Fast Open data, across 2^32
		}
		before := e.readCounters(t)
		requireVerdict(t, e.ingress(t, refuse.frame(t)), actPass)
		e.expectCounters(t, before, map[string]uint64{"ingress_translated": 1})
		eg := e.natEntries(t)[natKey(dirEgress, protoTCP, podA, remote, sport, 443)]
		if eg.ReplyFlags&loader.BPFIpmEntryFlagsIPM_F_RST == 0 {
			t.Errorf("SYNs %v: the refusal acknowledging %d was not recorded: egress half's copy %#x", seqs, isn+1, eg.ReplyFlags)
		}
	}
}

// TestRefusalOfAnOlderEntry: an entry the previous build wrote while its
// connection was opening has no SYN recorded (tcp_ack 0); a refusal then
// counts whatever it acknowledges, as it did before, rather than leaving the
// refused mapping to the SYN timeout.
func TestRefusalOfAnOlderEntry(t *testing.T) {
	e := newEnv(t, config{})
	syn := tcpPkt(podA, 42000, remote, 443, "S")
	syn.seq = 1000
	port := e.masquerade(t, syn)
	k := natKey(dirEgress, protoTCP, podA, remote, 42000, 443)
	v := e.natEntries(t)[k]
	v.TcpAck = 0
	if err := e.dp.Maps.IpmNat4.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
	refuse := tcpPkt(remote, 443, nodeAddr, port, "RA")
	refuse.ack = 0x12345678
	before := e.readCounters(t)
	requireVerdict(t, e.ingress(t, refuse.frame(t)), actPass)
	e.expectCounters(t, before, map[string]uint64{"ingress_translated": 1})
}

// TestImplausibleSegmentKeepsNothingAlive: a remote's segment outside the
// pod's window refreshes neither half. A spoofer who sends such segments
// with the remote's address to every node port would otherwise keep every
// closed mapping to that remote, and its node port, alive for good; replied
// flows are never dropped early, so the table would fill.
func TestImplausibleSegmentKeepsNothingAlive(t *testing.T) {
	e := newEnv(t, config{})
	syn := tcpPkt(podA, 40000, remote, 443, "S")
	syn.seq = 1000
	port := e.masquerade(t, syn)
	sa := tcpPkt(remote, 443, nodeAddr, port, "SA")
	sa.seq, sa.ack = 5000, 1001
	requireVerdict(t, e.ingress(t, sa.frame(t)), actPass)
	podSeg := func(flags string, seq, ack uint32) {
		p := tcpPkt(podA, 40000, remote, 443, flags)
		p.seq, p.ack, p.win = seq, ack, 1000 // window 1000 bytes, unscaled
		e.masquerade(t, p)
	}
	podSeg("A", 1001, 5001)
	inKey := natKey(dirIngress, protoTCP, remote, nodeAddr, 443, port)
	outKey := natKey(dirEgress, protoTCP, podA, remote, 40000, 443)

	// Plain segments: judged when they would move the flow's age into a
	// new period. Both halves are set back three seconds, as after a quiet
	// spell.
	age := func() {
		for _, k := range []maps.NATKey{inKey, outKey} {
			v := e.natEntries(t)[k]
			v.LastSeenNs = uint64(maps.Now() - 3*time.Second)
			if err := e.dp.Maps.IpmNat4.Put(&k, &v); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		seq uint32
		ok  bool
	}{
		{5001 + 1_000_000, false},   // far ahead
		{5001 + 0xfff0_0000, false}, // far behind (wrapped)
		{5001 + 1001, false},        // just past the window
		{5001 - 1001, false},        // more than a window behind
		{5001 + 1000, true},         // the window's edge
		{5001 - 1, true},            // a keepalive
		{5001, true},
	} {
		age()
		was := e.natEntries(t)
		p := tcpPkt(remote, 443, nodeAddr, port, "A")
		p.seq, p.ack = tc.seq, 1001
		before := e.readCounters(t)
		requireVerdict(t, e.ingress(t, p.frame(t)), actPass)
		now := e.natEntries(t)
		refreshed := now[inKey].LastSeenNs != was[inKey].LastSeenNs || now[outKey].LastSeenNs != was[outKey].LastSeenNs
		if refreshed != tc.ok {
			t.Errorf("ACK seq %d (pod acknowledged 5001, window 1000): refreshed %v, want %v", tc.seq, refreshed, tc.ok)
		}
		want := "ingress_translated"
		if !tc.ok {
			want = "ingress_tcp_implausible"
		}
		e.expectCounters(t, before, map[string]uint64{want: 1})
	}

	// Both sides close; then a RST far outside the window every 150 ms,
	// for four times the FIN timeout, must not keep the closed flow.
	podSeg("FA", 1001, 5001)
	rfin := tcpPkt(remote, 443, nodeAddr, port, "FA")
	rfin.seq, rfin.ack = 5001, 1002
	requireVerdict(t, e.ingress(t, rfin.frame(t)), actPass)
	podSeg("A", 1002, 5002)
	if snap, _ := e.nat.Read(); len(snap.Flows) != 1 || snap.Flows[0].State() != "closing" {
		t.Fatalf("want one closing flow: %+v", snap.Flows)
	}
	to := onlyTimeouts(time.Hour, 250*time.Millisecond)
	for range 7 {
		time.Sleep(150 * time.Millisecond)
		junk := tcpPkt(remote, 443, nodeAddr, port, "R")
		junk.seq = 0x80000000
		before := e.readCounters(t)
		requireVerdict(t, e.ingress(t, junk.frame(t)), actPass)
		// Judged implausible while mapped; a miss once collected.
		if moved := e.countersMoved(t, before); len(moved) != 1 || moved["ingress_tcp_implausible"]+moved["ingress_miss"] != 1 {
			t.Fatalf("out-of-window RST to a closed flow: counters moved %v", moved)
		}
		if _, err := e.nat.Collect(to); err != nil {
			t.Fatal(err)
		}
	}
	if snap, _ := e.nat.Read(); len(snap.Flows) != 0 {
		t.Errorf("closed flow still mapped after 1 s of out-of-window RSTs, FIN timeout 250 ms: %+v", snap.Flows)
	}
}

// TestIPv6RemotePlausible: the same rules for IPv6: a blind RST before the
// pod's first ACK and an out-of-window segment after it record nothing; the
// refusal of the SYN does.
func TestIPv6RemotePlausible(t *testing.T) {
	e := newEnv6(t, config6{config: config{keepPorts: true}})
	syn := tcp6(pod6A, 40000, remote6, 443, "S") // seq 0x01020304
	port := e.masquerade6(t, syn)
	inKey := natKey6(dirIngress, protoTCP, remote6, node6, 443, port)
	outKey := natKey6(dirEgress, protoTCP, pod6A, remote6, 40000, 443)
	rst := loader.BPFIpmEntryFlagsIPM_F_RST

	blind := tcp6(remote6, 443, node6, port, "R")
	before := e.snap(t)
	requireVerdict(t, e.ingress(t, blind.frame(t)), actPass)
	e.expect6(t, before, map[string]uint64{"ingress_tcp_implausible": 1})
	if all := e.natEntries6(t); all[inKey].Flags&rst != 0 || all[outKey].ReplyFlags&rst != 0 || all[inKey].LastSeenNs != 0 {
		t.Fatalf("blind RST before the pod's ACK recorded: %+v / %+v", all[inKey], all[outKey])
	}

	refuse := tcp6(remote6, 443, node6, port, "RA")
	refuse.ack = synAcked
	before = e.snap(t)
	requireVerdict(t, e.ingress(t, refuse.frame(t)), actPass)
	e.expect6(t, before, map[string]uint64{"ingress_translated": 1})
	if f := e.natEntries6(t)[outKey].ReplyFlags; f&rst == 0 {
		t.Fatalf("the refusal of the SYN was not recorded: egress half's copy %#x", f)
	}

	// A new connection on the tuple, established; the pod acknowledges
	// 0x0a0b0c0d with window 64800 (scale 0: its SYN has no option).
	e.masquerade6(t, syn)
	requireVerdict(t, e.ingress(t, tcp6(remote6, 443, node6, port, "SA").frame(t)), actPass)
	e.masquerade6(t, tcp6(pod6A, 40000, remote6, 443, "A"))
	v := e.natEntries6(t)[inKey]
	v.LastSeenNs = uint64(maps.Now() - 3*time.Second)
	if err := e.dp.Maps.IpmNat6.Put(&inKey, &v); err != nil {
		t.Fatal(err)
	}
	far := tcp6(remote6, 443, node6, port, "A")
	far.seq = 0x0a0b0c0d + 1_000_000
	before = e.snap(t)
	requireVerdict(t, e.ingress(t, far.frame(t)), actPass)
	e.expect6(t, before, map[string]uint64{"ingress_tcp_implausible": 1})
	if got := e.natEntries6(t)[inKey].LastSeenNs; got != v.LastSeenNs {
		t.Errorf("an out-of-window segment refreshed the reply half: last seen %d, was %d", got, v.LastSeenNs)
	}
	in := tcp6(remote6, 443, node6, port, "A")
	in.seq = 0x0a0b0c0d
	requireVerdict(t, e.ingress(t, in.frame(t)), actPass)
	if got := e.natEntries6(t)[inKey].LastSeenNs; got == v.LastSeenNs {
		t.Errorf("an in-window segment did not refresh the reply half")
	}
}
