package prog

import (
	"net/netip"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestSourceCIDRs: with --source-cidrs only pod sources get new mappings; a
// routed source behind the node (a VM, a VPN client) leaves unchanged and
// is counted, a flow mapped before the switch keeps its mapping, node
// addresses stay host traffic, and without the flag every source is
// masqueraded as upstream does.
func TestSourceCIDRs(t *testing.T) {
	routed := netip.MustParseAddr("100.70.0.9")
	e := newEnv6(t, config6{})
	src := maps.NewSources(e.dp, e.settings)

	// Unset: the routed source is masqueraded like a pod.
	e.masquerade(t, udpPkt(routed, 30000, remote, 53))
	early := udpPkt(routed, 30001, remote, 53)
	earlyPort := e.masquerade(t, early)

	if err := src.Set([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}); err != nil {
		t.Fatal(err)
	}
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S"))
	e.masquerade6(t, udp6(pod6A, 40000, remote6, 53))

	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"ipv4 tcp", tcpPkt(routed, 40001, remote, 443, "S").frame(t)},
		{"ipv4 udp", udpPkt(routed, 40002, remote, 53).frame(t)},
		{"ipv4 icmp", echoRequest(routed, remote, 77).frame(t)},
		{"ipv6 udp", udp6(netip.MustParseAddr("2001:db8:77::9"), 40003, remote6, 53).frame(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.requirePassed(t, false, tc.in, "egress_not_source")
		})
	}

	// A flow mapped before keeps its mapping: the check is made only
	// where a new mapping would be.
	r := e.egress(t, early.frame(t))
	requireVerdict(t, r, actPass)
	if d := decode(t, r.out); d.src != nodeAddr || d.sport != earlyPort {
		t.Fatalf("mapped flow left as %s:%d, want %s:%d", d.src, d.sport, nodeAddr, earlyPort)
	}
	// The node's own traffic is host traffic, in or out of the list.
	before := e.readCounters(t)
	r = e.egress(t, udpPkt(nodeOther, 5353, remote, 53).frame(t))
	requireVerdict(t, r, actPass)
	e.expectCounters(t, before, map[string]uint64{"egress_host": 1})

	// Unset again: the routed source is masqueraded once more.
	if err := src.Set(nil); err != nil {
		t.Fatal(err)
	}
	if held, on, err := src.Read(); err != nil || on || len(held) != 0 {
		t.Fatalf("after Set(nil): %v, on %t, %v; want nothing, off", held, on, err)
	}
	e.masquerade(t, udpPkt(routed, 30002, remote, 53))
}
