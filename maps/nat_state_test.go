package maps

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"

	"golang.org/x/sys/unix"
)

// TestFlowState: a TCP flow is closing only once both sides sent a FIN (a
// half-closed connection keeps the established timeout); a RST in either
// half resets it; a reply makes it established.
func TestFlowState(t *testing.T) {
	to := Timeouts{TCPSyn: time.Minute, TCPEstablished: 6 * time.Hour, TCPFin: 2 * time.Minute, TCPRst: 10 * time.Second,
		UDP: time.Minute, UDPStream: 3 * time.Minute, ICMP: 30 * time.Second}
	k := tuple{Src: netip.MustParseAddr("10.244.1.2"), Dst: netip.MustParseAddr("203.0.113.10"), Sport: 40000, Dport: 443,
		Proto: unix.IPPROTO_TCP, Dir: dirEgress}
	for _, tc := range []struct {
		name       string
		out, in    Flags
		replied    bool
		want       string
		wantExpiry time.Duration
	}{
		{"opening", 0, 0, false, "opening", to.TCPSyn},
		{"established", 0, 0, true, "established", to.TCPEstablished},
		{"half-closed by the pod", flagFin, 0, true, "established", to.TCPEstablished},
		{"half-closed by the remote", 0, flagFin, true, "established", to.TCPEstablished},
		{"both FINs", flagFin, flagFin, true, "closing", to.TCPFin},
		{"reset by the remote", 0, flagRst, true, "reset", to.TCPRst},
		{"reset by the pod after its FIN", flagFin | flagRst, 0, true, "reset", to.TCPRst},
	} {
		in := half{Flags: tc.in}
		if tc.replied {
			in.LastSeen = time.Second
		}
		f := makeFlow(k, half{Flags: tc.out}, in, true)
		if f.State() != tc.want || f.Timeout(to) != tc.wantExpiry {
			t.Errorf("%s: state %q timeout %v, want %q %v", tc.name, f.State(), f.Timeout(to), tc.want, tc.wantExpiry)
		}
	}
}

// TestInboundIdleLimit: a TCP connection opened from outside keeps its
// record as long as an established mapping would live; a UDP flow as long as
// a stream, for keys of both families.
func TestInboundIdleLimit(t *testing.T) {
	to := Timeouts{TCPEstablished: 6 * time.Hour, UDPStream: 3 * time.Minute}
	for _, tc := range []struct {
		key  any
		want time.Duration
	}{
		{&NATKey{Proto: unix.IPPROTO_TCP}, to.TCPEstablished},
		{&NATKey{Proto: unix.IPPROTO_UDP}, to.UDPStream},
		{&loader.BPFIpmNat6Key{Proto: unix.IPPROTO_TCP}, to.TCPEstablished},
		{&loader.BPFIpmNat6Key{Proto: unix.IPPROTO_UDP}, to.UDPStream},
	} {
		if got := idleLimit(keyProto(tc.key), to); got != tc.want {
			t.Errorf("key %T %+v: idle limit %v, want %v", tc.key, tc.key, got, tc.want)
		}
	}
}
