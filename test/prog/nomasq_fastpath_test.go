package prog

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestNonMasqueradeFastPath: a /24 that a config change makes
// non-masquerade keeps translating the flows masqueraded before (docs/behaviour.md §4)
// while they hold mappings; once the agent's NAT table read shows none is
// left (SettleDir), pod packets into it pass without their flow being looked
// up, and the host's own packets still get their tuples reserved.
func TestNonMasqueradeFastPath(t *testing.T) {
	dst := netip.MustParseAddr("198.51.100.7")
	e := newEnv(t, config{})
	long := maps.Timeouts{TCPSyn: time.Hour, TCPEstablished: time.Hour, TCPFin: time.Hour, TCPRst: time.Hour,
		UDP: time.Hour, UDPStream: time.Hour, ICMP: time.Hour}
	send := func(t *testing.T, p pkt, counter string) {
		t.Helper()
		before := e.readCounters(t)
		requireVerdict(t, e.egress(t, p.frame(t)), actPass)
		e.expectCounters(t, before, map[string]uint64{counter: 1})
	}
	settle := func(t *testing.T) int {
		t.Helper()
		// The read must begin a grace after the flip (maps.settleGrace).
		time.Sleep(1100 * time.Millisecond)
		if _, err := e.nat.Collect(long); err != nil {
			t.Fatal(err)
		}
		n, err := e.nonMasq.SettleDir(e.nat.Mapped24())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	flow := udpPkt(podA, 40000, dst, 53)

	send(t, flow, "egress_new_flow")
	e.applyNonMasq(t, append(append([]netip.Prefix(nil), defaultNonMasq...), netip.MustParsePrefix("198.51.100.0/24")), false)
	send(t, flow, "egress_translated")
	send(t, udpPkt(podA, 40001, dst, 53), "egress_nomasq")

	// A mapping still leads into 198.51.100.0/24: it stays looked up.
	if n := settle(t); n == 0 {
		t.Fatalf("SettleDir settled nothing: the /8s of the defaults hold no mapping")
	}
	send(t, flow, "egress_translated")
	if v := e.blockVerdict(t, dst); v != 3 {
		t.Fatalf("%s: /24 verdict %d with a mapping into it, want 3 (IPM_BLOCK_NOMASQ_MAPPED)", dst, v)
	}

	// The mapping expires (here: is deleted): the /24 settles, the flow's
	// next packet is a new non-masquerade one, and the host's tuples to it
	// are still reserved.
	e.deleteEntries(t, nil)
	settle(t)
	if v := e.blockVerdict(t, dst); v != 1 {
		t.Fatalf("%s: /24 verdict %d without mappings, want 1 (IPM_BLOCK_NOMASQ)", dst, v)
	}
	send(t, flow, "egress_nomasq")
	send(t, tcpPkt(nodeAddr, 41000, dst, 443, "S"), "egress_host")
	if n := mapLen(t, e.dp.Maps.IpmNat4); n != 0 {
		t.Errorf("NAT table holds %d entries, want none", n)
	}
	if n := mapLen(t, e.dp.Maps.IpmHostres4); n != 1 {
		t.Errorf("%d host reservations, want the host's one", n)
	}
}

// blockVerdict reads the active ipm_cidr4_dir verdict of a's /24.
func (e *env) blockVerdict(t *testing.T, a netip.Addr) uint8 {
	t.Helper()
	v, err := maps.ReadDirVerdict(e.dp.Maps.IpmCidr4Dir, uint32(e.settings.ActiveCIDRs()), a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLocalAddressesInlineAndMapped: the node's addresses are recognised
// both when the settings carry them inline (up to four) and when there are
// more and the datapath asks ipm_local4.
func TestLocalAddressesInlineAndMapped(t *testing.T) {
	many := []netip.Addr{nodeAddr, nodeOther, netip.MustParseAddr("127.0.0.1")}
	for i := 1; i <= 4; i++ {
		many = append(many, netip.AddrFrom4([4]byte{172, 31, 50, byte(i)}))
	}
	for _, tc := range []struct {
		name  string
		local []netip.Addr
	}{{"three, inline", many[:3]}, {"seven, in ipm_local4", many}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{local: tc.local})
			for i, a := range tc.local {
				before := e.readCounters(t)
				requireVerdict(t, e.egress(t, tcpPkt(a, uint16(42000+i), remote, 443, "S").frame(t)), actPass)
				e.expectCounters(t, before, map[string]uint64{"egress_host": 1})
			}
			before := e.readCounters(t)
			requireVerdict(t, e.egress(t, tcpPkt(netip.MustParseAddr("172.31.50.99"), 42100, remote, 443, "S").frame(t)), actPass)
			e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1})
		})
	}
}
