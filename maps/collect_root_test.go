package maps

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// lookupCounter is codec4 that counts its direct lookups: the expiry must
// decide a flow by its egress half alone and read its reply half only when
// that half says the flow has expired.
type lookupCounter struct {
	codec4
	lookups int
}

func (c *lookupCounter) lookup(m *ebpf.Map, t tuple) (half, bool) {
	c.lookups++
	return c.codec4.lookup(m, t)
}

// The collect tests' node, remote and timeouts.
var (
	collectNode    = netip.MustParseAddr("172.31.0.2")
	collectRemote  = netip.MustParseAddr("203.0.113.10")
	collectTimeout = Timeouts{TCPSyn: time.Minute, TCPEstablished: 24 * time.Hour, TCPFin: time.Minute, TCPRst: 10 * time.Second,
		UDP: 30 * time.Second, UDPStream: 2 * time.Minute, ICMP: 30 * time.Second}
)

// newCollectTable makes an empty ipm_nat4 and ipm_hostres4 and a NAT table
// over them whose direct lookups are counted.
func newCollectTable(t *testing.T) (*ebpf.Map, *lookupCounter, *NATTable) {
	spec := rootSpec(t)
	nat := newTestMap(t, spec, "ipm_nat4")
	counter := &lookupCounter{}
	return nat, counter, &NATTable{m: nat, hostres: newTestMap(t, spec, "ipm_hostres4"), c: counter}
}

// TestCollectDecidesByEgressHalf: each case is one flow (or one reply half
// alone) with its halves as the datapath leaves them, and what one Collect
// must do with it: keep it or delete it, how it is counted, and how many
// direct lookups deciding it may cost. The egress half carries the reply
// half's copy (bpf/reply_mirror.h); where that copy lags the reply half (an
// entry from a datapath without it), the flow is read again before anything
// is deleted and kept.
func TestCollectDecidesByEgressHalf(t *testing.T) {
	nat, counter, table := newCollectTable(t)
	node, remote, to := collectNode, collectRemote, collectTimeout
	now := Now()
	ago := func(d time.Duration) uint64 { return uint64(now - d) }

	type halfState struct {
		seen  uint64 // 0: no packet (the reply half: no reply)
		flags Flags
	}
	cases := []struct {
		name        string
		proto       uint8
		out, in     *halfState // nil: the half is missing
		kept        bool
		state       string // counted as, when kept with its egress half
		wantLookups int
	}{
		{"established, idle an hour, the copy current", unix.IPPROTO_TCP,
			&halfState{ago(time.Hour), flagReplied}, &halfState{ago(time.Hour), 0}, true, "established", 0},
		{"half-closed by the pod, idle two minutes", unix.IPPROTO_TCP,
			&halfState{ago(2 * time.Minute), flagReplied | flagFin}, &halfState{ago(2 * time.Minute), 0}, true, "established", 0},
		{"opening, a second old", unix.IPPROTO_TCP,
			&halfState{ago(time.Second), 0}, &halfState{0, 0}, true, "opening", 0},
		{"the copy lags: reply half fresh, egress half old and unmarked", unix.IPPROTO_TCP,
			&halfState{ago(time.Hour), 0}, &halfState{ago(time.Second), 0}, true, "established", 2},
		{"closed by both sides, idle two minutes", unix.IPPROTO_TCP,
			&halfState{ago(2 * time.Minute), flagReplied | flagFin | flagPeerFin}, &halfState{ago(2 * time.Minute), flagFin}, false, "", 2},
		{"reset by the remote, idle 20 s", unix.IPPROTO_TCP,
			&halfState{ago(20 * time.Second), flagReplied | flagRst}, &halfState{ago(20 * time.Second), flagRst}, false, "", 2},
		{"UDP, idle an hour", unix.IPPROTO_UDP,
			&halfState{ago(time.Hour), flagReplied}, &halfState{ago(time.Hour), 0}, false, "", 2},
		{"a reply half alone, idle an hour: not checked yet", unix.IPPROTO_TCP,
			nil, &halfState{ago(time.Hour), 0}, true, "", 0},
		{"a reply half alone, idle 25 hours", unix.IPPROTO_TCP,
			nil, &halfState{ago(25 * time.Hour), 0}, false, "", 1},
		{"only the pod still talks: reply half idle 25 hours", unix.IPPROTO_TCP,
			&halfState{ago(time.Second), flagReplied}, &halfState{ago(25 * time.Hour), 0}, true, "established", 1},
	}
	var c codec4
	type keys struct{ out, in NATKey }
	made := make([]keys, len(cases))
	for i, tc := range cases {
		pod := netip.AddrFrom4([4]byte{10, 244, 0, byte(i + 1)})
		port := uint16(2000 + i)
		ko := tuple{Src: pod, Dst: remote, Sport: 40000, Dport: 443, Proto: tc.proto, Dir: dirEgress}
		ki := tuple{Src: remote, Dst: node, Sport: 443, Dport: port, Proto: tc.proto, Dir: dirIngress}
		made[i] = keys{c.key(ko), c.key(ki)}
		if tc.out != nil {
			v := NATEntry{CreatedNs: tc.out.seen, LastSeenNs: tc.out.seen, Addr: AddrToBE(node), Port: PortToBE(port),
				Kind: kindMasq, Flags: tc.out.flags}
			if err := nat.Put(&made[i].out, &v); err != nil {
				t.Fatal(err)
			}
		}
		if tc.in != nil {
			v := NATEntry{CreatedNs: tc.in.seen, LastSeenNs: tc.in.seen, Addr: AddrToBE(pod), Port: PortToBE(40000),
				Kind: kindMasq, Flags: tc.in.flags}
			if tc.out != nil {
				v.CreatedNs = tc.out.seen // created together
			}
			if err := nat.Put(&made[i].in, &v); err != nil {
				t.Fatal(err)
			}
		}
	}

	if _, err := table.Collect(to); err != nil {
		t.Fatal(err)
	}
	wantLookups := 0
	wantFlows := map[FlowClass]int{}
	for i, tc := range cases {
		wantLookups += tc.wantLookups
		var v NATEntry
		for _, k := range []struct {
			present bool
			key     NATKey
			name    string
		}{{tc.out != nil, made[i].out, "egress"}, {tc.in != nil, made[i].in, "reply"}} {
			if !k.present {
				continue
			}
			if got := nat.Lookup(&k.key, &v) == nil; got != tc.kept {
				t.Errorf("%s: %s half kept %v, want %v", tc.name, k.name, got, tc.kept)
			}
		}
		if tc.kept && tc.state != "" {
			wantFlows[FlowClass{tc.proto, tc.state}]++
		}
	}
	last := table.LastPass()
	for class, n := range wantFlows {
		if last.Flows[class] != n {
			t.Errorf("flows counted %v, want %v", last.Flows, wantFlows)
			break
		}
	}
	if len(last.Flows) != len(wantFlows) {
		t.Errorf("flows counted %v, want %v", last.Flows, wantFlows)
	}
	if counter.lookups != wantLookups {
		t.Errorf("%d direct lookups, want %d: flows whose egress half shows them alive must cost none", counter.lookups, wantLookups)
	}
}

// TestCollectLeavesAnotherFlowsReplyHalf: an expired flow's reply key may be
// held by another flow by the time the agent reads it (the datapath removed
// the first and gave its node port, towards the same remote, to a new flow).
// The expiry deletes a reply half only when it points back to the flow it
// deletes: deleting the other flow's would break it and let a later flow on
// that port receive its replies.
func TestCollectLeavesAnotherFlowsReplyHalf(t *testing.T) {
	nat, _, table := newCollectTable(t)
	node, remote, to := collectNode, collectRemote, collectTimeout
	old, fresh := netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("10.244.0.2")
	hour, now := uint64(Now()-time.Hour), uint64(Now())
	c := codec4{}
	stale := c.key(tuple{Src: old, Dst: remote, Sport: 1000, Dport: 53, Proto: unix.IPPROTO_UDP, Dir: dirEgress})
	newOut := c.key(tuple{Src: fresh, Dst: remote, Sport: 2000, Dport: 53, Proto: unix.IPPROTO_UDP, Dir: dirEgress})
	shared := c.key(tuple{Src: remote, Dst: node, Sport: 53, Dport: 3000, Proto: unix.IPPROTO_UDP, Dir: dirIngress})
	for _, e := range []struct {
		k NATKey
		v NATEntry
	}{
		{stale, NATEntry{CreatedNs: hour, LastSeenNs: hour, Addr: AddrToBE(node), Port: PortToBE(3000), Kind: kindMasq}},
		{newOut, NATEntry{CreatedNs: now, LastSeenNs: now, Addr: AddrToBE(node), Port: PortToBE(3000), Kind: kindMasq}},
		// The new flow is answered and busy: its reply half must not keep
		// the expired flow alive either.
		{shared, NATEntry{CreatedNs: now, LastSeenNs: now, Addr: AddrToBE(fresh), Port: PortToBE(2000), Kind: kindMasq}},
	} {
		if err := nat.Put(&e.k, &e.v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := table.Collect(to); err != nil {
		t.Fatal(err)
	}
	var v NATEntry
	if nat.Lookup(&stale, &v) == nil {
		t.Errorf("the expired flow's egress half was kept")
	}
	if nat.Lookup(&newOut, &v) != nil || nat.Lookup(&shared, &v) != nil {
		t.Errorf("the new flow lost a half: the expiry deleted the reply half that now belongs to it")
	}
}

// TestCollectReadsTheCopyByte: the datapath keeps the reply half's copy in
// the egress half's reply_flags byte. The expiry decides by it alone while
// it shows the flow alive, and the two halves decide once it shows it
// expired: a stale copied RST (a pod's SYN restarted the mapping while an old
// reply was being copied) never deletes a live connection.
func TestCollectReadsTheCopyByte(t *testing.T) {
	nat, counter, table := newCollectTable(t)
	node, remote, to := collectNode, collectRemote, collectTimeout
	now := Now()
	cases := []struct {
		name            string
		idle            time.Duration
		copied, inFlags Flags
		kept            bool
		lookups         int
	}{
		{"established, the copy current", time.Hour, flagReplied, 0, true, 0},
		{"a stale copied RST on a live connection", 20 * time.Second, flagReplied | flagRst, 0, true, 2},
		{"reset by the remote", 20 * time.Second, flagReplied | flagRst, flagRst, false, 2},
		{"closed by both sides", 2 * time.Minute, flagReplied | flagPeerFin, flagFin, false, 2},
	}
	var c codec4
	type keys struct{ out, in NATKey }
	made := make([]keys, len(cases))
	for i, tc := range cases {
		pod := netip.AddrFrom4([4]byte{10, 244, 2, byte(i + 1)})
		port := uint16(3000 + i)
		made[i] = keys{
			c.key(tuple{Src: pod, Dst: remote, Sport: 40000, Dport: 443, Proto: unix.IPPROTO_TCP, Dir: dirEgress}),
			c.key(tuple{Src: remote, Dst: node, Sport: 443, Dport: port, Proto: unix.IPPROTO_TCP, Dir: dirIngress}),
		}
		seen := uint64(now - tc.idle)
		podFin := Flags(0)
		if tc.inFlags&flagFin != 0 {
			podFin = flagFin
		}
		out := NATEntry{CreatedNs: seen, LastSeenNs: seen, Addr: AddrToBE(node), Port: PortToBE(port), Kind: kindMasq,
			Flags: podFin, ReplyFlags: tc.copied}
		in := NATEntry{CreatedNs: seen, LastSeenNs: seen, Addr: AddrToBE(pod), Port: PortToBE(40000), Kind: kindMasq, Flags: tc.inFlags}
		if err := nat.Put(&made[i].out, &out); err != nil {
			t.Fatal(err)
		}
		if err := nat.Put(&made[i].in, &in); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := table.Collect(to); err != nil {
		t.Fatal(err)
	}
	want := 0
	for i, tc := range cases {
		want += tc.lookups
		var v NATEntry
		if got := nat.Lookup(&made[i].out, &v) == nil; got != tc.kept {
			t.Errorf("%s: kept %v, want %v", tc.name, got, tc.kept)
		}
	}
	if counter.lookups != want {
		t.Errorf("%d direct lookups, want %d", counter.lookups, want)
	}
}
