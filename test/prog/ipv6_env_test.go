package prog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// config6 is a test's configuration with --enable-ipv6: the IPv4 side as
// in config, plus the IPv6 one. The zero value is the agent with
// --enable-ipv6 and nonMasqueradeCIDRs [fd00::/8] (plus IPv4's defaults).
type config6 struct {
	config
	nonMasq6       []netip.Prefix // IPv6 nonMasqueradeCIDRs; nil: fd00::/8, empty: none
	masqLinkLocal6 bool           // masqLinkLocalIPv6
	noIface6       bool           // leave ifindex 1 without a global IPv6 address
	disabled       bool           // --enable-ipv6 off (settings.SetIPv6(false))
}

// local6 are the node's IPv6 addresses in every test.
var local6 = []netip.Addr{node6, node6Other, node6LL, netip.MustParseAddr("::1")}

// newEnv6 loads the datapath (newEnv) and configures IPv6 as the agent does
// with --enable-ipv6: the interface's global IPv6 address, the node's IPv6
// addresses, both families' non-masquerade sets flipped in together, and
// the IPv6 switch.
func newEnv6(t testing.TB, c config6) *env {
	t.Helper()
	e := newEnv(t, c.config)
	addr4 := nodeAddr
	if c.noIfaceAddr {
		addr4 = netip.Addr{}
	}
	addr6 := node6
	if c.noIface6 {
		addr6 = netip.Addr{}
	}
	if err := maps.NewInterfaces(e.dp).Set(testIfindex, addr4, addr6); err != nil {
		t.Fatal(err)
	}
	var la []maps.LocalAddr
	local := c.local
	if local == nil {
		local = []netip.Addr{nodeAddr, nodeOther, netip.MustParseAddr("127.0.0.1")}
	}
	for _, a := range append(append([]netip.Addr(nil), local...), local6...) {
		la = append(la, maps.LocalAddr{Addr: a, Ifindex: testIfindex})
	}
	if _, err := maps.NewLocalAddrs(e.dp, e.settings).Sync(la); err != nil {
		t.Fatal(err)
	}
	e.applyNonMasqBoth(t, c)
	if err := e.settings.SetIPv6(!c.disabled); err != nil {
		t.Fatal(err)
	}
	return e
}

// applyNonMasqBoth makes the configured prefixes of both families plus the
// implied link-local ones the active set, as the agent's config sync does:
// NewCIDRSet(configured, effective) with effective = configured + implied.
func (e *env) applyNonMasqBoth(t testing.TB, c config6) {
	t.Helper()
	v4 := c.nonMasq
	if v4 == nil {
		v4 = defaultNonMasq
	}
	v6 := c.nonMasq6
	if v6 == nil {
		v6 = nonMasq6
	}
	configured := append(append([]netip.Prefix(nil), v4...), v6...)
	effective := append([]netip.Prefix(nil), configured...)
	if !c.masqLinkLocal {
		effective = append(effective, linkLocal)
	}
	if !c.masqLinkLocal6 {
		effective = append(effective, linkLocal6)
	}
	if err := e.nonMasq.Apply(maps.NewCIDRSet(configured, effective)); err != nil {
		t.Fatal(err)
	}
	set, err := e.nonMasq.Active()
	if err != nil {
		t.Fatal(err)
	}
	if len(set) != len(effective) {
		t.Fatalf("active non-masquerade set %v, want %v", set, effective)
	}
}

// counters by family, summed over CPUs, by C name.
func (e *env) familyCounters(t testing.TB, f maps.Family) map[string]uint64 {
	t.Helper()
	c, err := e.counters.ReadFamily(f)
	return countersByName(t, c, err)
}

// counterSnap is both families' counters at one moment.
type counterSnap struct{ v4, v6 map[string]uint64 }

func (e *env) snap(t testing.TB) counterSnap {
	t.Helper()
	return counterSnap{v4: e.familyCounters(t, maps.IPv4), v6: e.familyCounters(t, maps.IPv6)}
}

// moved6 returns what moved since before: the IPv6 counters, and the IPv4
// ones (which an IPv6 packet must never move).
func (e *env) moved6(t testing.TB, before counterSnap) (v6, v4 map[string]uint64) {
	t.Helper()
	now := e.snap(t)
	return movedSince(before.v6, now.v6), movedSince(before.v4, now.v4)
}

// expect6 checks that exactly the IPv6 counters in want moved since before,
// each by the given amount, and no IPv4 counter.
func (e *env) expect6(t testing.TB, before counterSnap, want map[string]uint64) {
	t.Helper()
	got, v4 := e.moved6(t, before)
	ok := len(got) == len(want) && len(v4) == 0
	for k, v := range want {
		ok = ok && got[k] == v
	}
	if !ok {
		t.Errorf("IPv6 counters moved %v (IPv4 counters %v), want IPv6 %v and no IPv4 counter", got, v4, want)
	}
}

// requirePassed6 is requirePassed for IPv6: the frame passes byte for byte,
// counted once as counter in the IPv6 counters and by no other counter.
func (e *env) requirePassed6(t testing.TB, ingress bool, frame []byte, counter string) {
	t.Helper()
	before := e.snap(t)
	e.passUnchanged(t, ingress, frame)
	e.expect6(t, before, map[string]uint64{counter: 1})
}

// --- the IPv6 NAT table -----------------------------------------------------

type (
	nat6Key   = loader.BPFIpmNat6Key
	nat6Entry = loader.BPFIpmNat6Entry
)

// be128 is an IPv6 address as the four uint32 whose memory holds it in
// network order (the generated types' view).
func be128(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func fromBE128(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return netip.AddrFrom16(b)
}

// natKey6 is an IPv6 NAT table key in the datapath's conventions (see
// natKey).
func natKey6(dir loader.BPFIpmDir, proto uint8, saddr, daddr netip.Addr, sport, dport uint16) nat6Key {
	return nat6Key{Saddr: be128(saddr), Daddr: be128(daddr), Sport: be16(sport), Dport: be16(dport), Proto: proto, Dir: dir}
}

// hostres6 is the map of IPv6 host reservations when the datapath keeps
// them apart from ipm_nat6 (ipm_hostres6), else nil. Found by name, so that
// these tests build against either layout.
func (e *env) hostres6() *ebpf.Map {
	f := reflect.Indirect(reflect.ValueOf(e.dp.Maps)).FieldByName("IpmHostres6")
	if !f.IsValid() {
		return nil
	}
	m, _ := f.Interface().(*ebpf.Map)
	return m
}

// natEntries6 returns every raw entry of the IPv6 NAT state: the NAT table
// and the host reservations beside it.
func (e *env) natEntries6(t testing.TB) map[nat6Key]nat6Entry {
	t.Helper()
	return entriesOf[nat6Key, nat6Entry](t, e.dp.Maps.IpmNat6, e.hostres6())
}

// putEntry6 writes one IPv6 NAT table half directly, as a synthetic state;
// a host reservation where the datapath keeps them.
func (e *env) putEntry6(t testing.TB, k nat6Key, kind loader.BPFIpmKind, addr netip.Addr, port uint16) {
	t.Helper()
	v := nat6Entry{CreatedNs: uint64(maps.Now()), Addr: be128(addr), Port: be16(port), Kind: kind, Ifindex: testIfindex}
	m := e.dp.Maps.IpmNat6
	if h := e.hostres6(); kind == kindHost && h != nil {
		m = h
	}
	if err := m.Put(&k, &v); err != nil {
		t.Fatalf("write IPv6 NAT entry: %v", err)
	}
}

// --- masquerade and its reply -------------------------------------------

// masquerade6 runs p (from a pod) through egress and requires the
// translation of docs/behaviour.md §5.7: the source becomes the node's global IPv6 address
// and a node port from the configured ranges (an ICMPv6 echo identifier
// from the 16-bit space), every other byte stays, every checksum is right.
// It returns the node port or identifier.
func (e *env) masquerade6(t testing.TB, p pkt6) uint16 {
	t.Helper()
	out, u := e.egressMasqueraded(t, p.frame(t), p.tuple, decode6, node6, protoICMPv6)
	requireSame6(t, out, p.with(tuple{p.proto, node6, p.dst, u.sport, p.dport}).frame(t))
	if p.noUDPCsum {
		if err := checkPacket6(ip6Of(out), true); err != nil {
			t.Fatal(err)
		}
	} else {
		requireChecksums6(t, out)
	}
	return u.sport
}

// replyTo6 is the remote's answer to a masqueraded packet p that left with
// node port nodePort: from the remote to the node.
func replyTo6(p pkt6, nodePort uint16) pkt6 {
	var r pkt6
	switch p.proto {
	case protoTCP:
		r = tcp6(p.dst, p.dport, node6, nodePort, "SA")
	case protoUDP:
		r = udp6(p.dst, p.dport, node6, nodePort)
	default:
		r = echoReply6(p.dst, node6, nodePort)
	}
	r.exts = p.exts
	return r
}

// unmasquerade6 runs the reply r through ingress and requires it
// translated back to the pod's address and port (identifier) of to, every
// other byte unchanged, every checksum right.
func (e *env) unmasquerade6(t testing.TB, r pkt6, to tuple) {
	t.Helper()
	res := e.ingress(t, r.frame(t))
	requireVerdict(t, res, actPass)
	want := r.with(tuple{r.proto, r.src, to.src, r.sport, to.sport}) // ICMPv6: sport 0, dport the identifier
	if u := decode6(t, res.out); u != want.tuple {
		t.Fatalf("reply %v became %v, want %v\n%s", r.tuple, u, want.tuple, hexdump(res.out))
	}
	requireSame6(t, res.out, want.frame(t))
	requireChecksums6(t, res.out)
}

// requireMapping6 checks the IPv6 NAT table holds exactly the two halves of
// the mapping of orig to node6:nodePort, as raw entries and as
// NATTable.Read (maps.NewNAT6Table) sees them.
func (e *env) requireMapping6(t testing.TB, orig tuple, nodePort uint16, since time.Duration) {
	t.Helper()
	requireHalves(t, e.natEntries6(t), natKey6, protoICMPv6, func(v nat6Entry) natHalf {
		return natHalf{fromBE128(v.Addr), fromBE16(v.Port), v.Kind, v.Ifindex, v.CreatedNs}
	}, orig, node6, nodePort, since)
	if n := len(e.natEntries(t)); n != 0 {
		t.Errorf("the IPv4 NAT table has %d entries after IPv6 traffic", n)
	}
	requireOneFlow(t, "NAT6Table", maps.NewNAT6Table(e.dp), orig, node6, nodePort)
}

// ipv6State are the IPv6 maps that packets write (the NAT table, host
// reservations, fragments, inbound flows), by generated field name.
var ipv6State = map[string]bool{"IpmNat6": true, "IpmHostres6": true, "IpmFrag6": true, "IpmInbound6": true, "IpmNomasqTcp6": true}

// reset6 empties the IPv6 maps that packets write so that one loaded
// datapath serves many subtests. The maps are found by name, so that
// whether the datapath keeps host reservations in a map of their own needs
// no change here.
func (e *env) reset6(t testing.TB) {
	t.Helper()
	v := reflect.Indirect(reflect.ValueOf(e.dp.Maps))
	for i := range v.NumField() {
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && m != nil && ipv6State[v.Type().Field(i).Name] {
			clearMap(t, m)
		}
	}
}

// envCache shares one loaded datapath per configuration among the subtests
// of a test: loading and verifying the programs is most of a test's time.
// Each get resets the IPv6 state.
type envCache struct {
	t    *testing.T // the parent test, which owns every env's cleanup
	envs map[string]*env
}

func newEnvCache(t *testing.T) *envCache { return &envCache{t: t, envs: map[string]*env{}} }

func (c *envCache) get(t testing.TB, c6 config6) *env {
	t.Helper()
	// %v prints a nil and an empty list alike; they differ here.
	key := fmt.Sprintf("%+v %v %v", c6, c6.nonMasq == nil, c6.nonMasq6 == nil)
	e, ok := c.envs[key]
	if !ok {
		e = newEnv6(c.t, c6)
		c.envs[key] = e
	}
	e.reset6(t)
	return e
}
