package e2e

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A ClusterIP Service of the kind kube-proxy programs, whose one endpoint
// is the internet host, reached over the managed uplink: TCP port 80 goes
// to its TCP server, UDP port 81 to its UDP server.
var (
	clusterIP      = netip.MustParseAddr("10.96.0.10")
	clusterTCPPort = uint16(80)
	clusterUDPPort = uint16(81)
)

// kubeMarkMasq is kube-proxy's masquerade mark (--iptables-masquerade-bit 14).
const kubeMarkMasq = 0x4000

// kubeProxyIPTables is what kube-proxy's iptables mode writes for that
// Service with --masquerade-all (every connection to the Service is marked,
// so kube-proxy masquerades the pods' as well): the service portals in
// PREROUTING and OUTPUT, a KUBE-SVC chain that marks and picks the
// endpoint's KUBE-SEP chain, which DNATs, and KUBE-POSTROUTING, which
// masquerades what is marked. The chain names are hashes in kube-proxy;
// these are made up.
const kubeProxyIPTables = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-IPME4TCPWEBHTTP0 - [0:0]
:KUBE-SEP-IPME4TCPWEBEP000 - [0:0]
:KUBE-SVC-IPME4UDPWEBDNS00 - [0:0]
:KUBE-SEP-IPME4UDPWEBEP000 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-IPME4TCPWEBHTTP0
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 81 -j KUBE-SVC-IPME4UDPWEBDNS00
-A KUBE-SVC-IPME4TCPWEBHTTP0 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-IPME4TCPWEBHTTP0 -m comment --comment "default/web:http -> 203.0.113.10:8080" -j KUBE-SEP-IPME4TCPWEBEP000
-A KUBE-SEP-IPME4TCPWEBEP000 -s 203.0.113.10/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-IPME4TCPWEBEP000 -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 203.0.113.10:8080
-A KUBE-SVC-IPME4UDPWEBDNS00 -d 10.96.0.10/32 -p udp -m comment --comment "default/web:dns cluster IP" -m udp --dport 81 -j KUBE-MARK-MASQ
-A KUBE-SVC-IPME4UDPWEBDNS00 -m comment --comment "default/web:dns -> 203.0.113.10:8081" -j KUBE-SEP-IPME4UDPWEBEP000
-A KUBE-SEP-IPME4UDPWEBEP000 -s 203.0.113.10/32 -m comment --comment "default/web:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-IPME4UDPWEBEP000 -p udp -m comment --comment "default/web:dns" -m udp -j DNAT --to-destination 203.0.113.10:8081
COMMIT
`

// TestKubeProxyMasquerade: kube-proxy's Service NAT and its own masquerade
// in the node namespace, in iptables and in nftables mode, with our
// programs on the uplink in both attach modes. A pod's connection to the
// ClusterIP is DNATed to an endpoint behind the uplink and masqueraded by
// netfilter, so it reaches our egress program with the node address: we
// reserve its node tuple (a host flow) and never remap it, and its replies
// reach the pod through conntrack (docs/behaviour.md §4.1, §8). A pod flow
// that kube-proxy does not match is masqueraded by us meanwhile.
func TestKubeProxyMasquerade(t *testing.T) {
	for _, m := range []struct {
		name    string
		install func(t *testing.T, tp *Topology)
	}{
		{"iptables", func(t *testing.T, tp *Topology) { iptablesRestore(t, tp.Node, kubeProxyIPTables) }},
		{"nftables", kubeProxyNFTables},
	} {
		t.Run(m.name, func(t *testing.T) {
			forEachMode(t, func(t *testing.T, mode string) {
				requireAgent(t)
				tp := NewTopology(t)
				m.install(t, tp)
				a := startAgentOn(t, tp, AgentOptions{Mode: mode, Config: cfgPrivate})
				kubeProxyTraffic(t, tp, a)
			})
		})
	}
}

// kubeProxyTraffic runs pod connections to the Service and past it.
func kubeProxyTraffic(t *testing.T, tp *Topology, a *Agent) {
	tcpEP, udpEP := tp.Internet.TCPAddr(), tp.Internet.UDPAddr()

	before := readStats(t, a)
	svc, err := tp.Pod1.DialTCP(netip.AddrPortFrom(clusterIP, clusterTCPPort), 0, ProbeTimeout)
	if err != nil {
		t.Fatalf("pod1 -> ClusterIP tcp: %v", err)
	}
	defer svc.Close()
	if svc.Peer.Addr() != NodeIP {
		t.Fatalf("endpoint saw the pod's Service connection from %s, want kube-proxy's masquerade to %s", svc.Peer, NodeIP)
	}
	if err := svc.Echo([]byte("through the service\n"), ProbeTimeout); err != nil {
		t.Fatal(err)
	}
	svcUDP := openUDP(t, tp.Pod1, 0)
	udpSeen, err := svcUDP.exchange(netip.AddrPortFrom(clusterIP, clusterUDPPort), ProbeTimeout)
	if err == nil && udpSeen.Addr() != NodeIP {
		t.Errorf("endpoint saw the pod's Service datagram from %s, want %s", udpSeen, NodeIP)
	}
	if err != nil {
		t.Fatalf("pod1 -> ClusterIP udp: %v", err)
	}
	d := readStats(t, a).delta(before)
	if d["egress_host"] == 0 || d["ingress_host"] == 0 {
		t.Errorf("the Service flows were not host flows to the datapath: %v", d)
	}
	if d["egress_new_flow"] != 0 || d["egress_host_moved"] != 0 {
		t.Errorf("the datapath remapped a flow netfilter masqueraded: %v", d)
	}
	expectReservedNotMapped(t, a, "tcp", svc.Peer.Port(), tcpEP)
	expectReservedNotMapped(t, a, "udp", udpSeen.Port(), udpEP)

	// A pod flow that kube-proxy does not match, while the Service
	// connection stays open: masqueraded by us.
	direct, err := tp.Pod1.DialTCP(tcpEP, 0, ProbeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if direct.Peer.Addr() != NodeIP || direct.Peer == svc.Peer {
		t.Errorf("pod1 -> %s directly: seen as %s, want %s on a port of its own (Service connection %s)", tcpEP, direct.Peer, NodeIP, svc.Peer)
	}
	if nt := debugTuple(t, a, "tcp", direct.Peer.Port(), tcpEP); !nt.mapped {
		t.Errorf("pod1 -> %s directly: no masquerade mapping via %s", tcpEP, direct.Peer)
	}
	expectUDP(t, tp.Pod2, tp.Internet, NodeIP)

	// Both keep working, and the Service datagrams keep their tuple.
	for _, c := range []*TCPConn{svc, direct} {
		if err := c.Echo([]byte("again\n"), ProbeTimeout); err != nil {
			t.Error(err)
		}
	}
	if got, err := svcUDP.exchange(netip.AddrPortFrom(clusterIP, clusterUDPPort), ProbeTimeout); err != nil || got != udpSeen {
		t.Errorf("pod1 -> ClusterIP udp again: seen as %s (%v), want %s", got, err, udpSeen)
	}
}

// kubeProxyNFTables writes what kube-proxy's nftables mode writes for the
// same Service with --masquerade-all, in its own `ip kube-proxy` table: base
// chains nat-prerouting and nat-output jump to services, which sends the
// Service's address, protocol and port to its service chain (kube-proxy
// uses a verdict map keyed by all three; a rule per port here), which marks
// for masquerade and goes to the endpoint chain that DNATs;
// nat-postrouting jumps to masquerading, which masquerades what is marked.
func kubeProxyNFTables(t *testing.T, tp *Topology) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(tp.Node.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "kube-proxy"})
	chain := func(name string) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: tbl})
	}
	base := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: tbl, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio})
	}
	rule := func(ch *nftables.Chain, exprs ...expr.Any) {
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: exprs})
	}
	to := func(kind expr.VerdictKind, ch *nftables.Chain) expr.Any {
		return &expr.Verdict{Kind: kind, Chain: ch.Name}
	}
	mark := func(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

	// mark-for-masquerade: meta mark set mark or 0x4000
	markMasq := chain("mark-for-masquerade")
	rule(markMasq,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(^uint32(kubeMarkMasq)), Xor: mark(kubeMarkMasq)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
	// masquerading: mark and 0x4000 == 0 return; mark set mark xor 0x4000;
	// masquerade fully-random
	masq := chain("masquerading")
	rule(masq,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(kubeMarkMasq), Xor: mark(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark(0)},
		&expr.Verdict{Kind: expr.VerdictReturn})
	rule(masq,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark(^uint32(0)), Xor: mark(kubeMarkMasq)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
	rule(masq, &expr.Masq{FullyRandom: true})

	services := chain("services")
	for _, s := range []struct {
		svc, ep  string // chain names, hashed in kube-proxy, made up here
		proto    byte
		port     uint16
		endpoint netip.AddrPort
	}{
		{"service-IPMETCP0-default/web/tcp/http", "endpoint-IPMETCP1-default/web/tcp/http__203.0.113.10/8080",
			unix.IPPROTO_TCP, clusterTCPPort, tp.Internet.TCPAddr()},
		{"service-IPMEUDP0-default/web/udp/dns", "endpoint-IPMEUDP1-default/web/udp/dns__203.0.113.10/8081",
			unix.IPPROTO_UDP, clusterUDPPort, tp.Internet.UDPAddr()},
	} {
		// ip daddr <clusterIP> meta l4proto <proto> th dport <port>
		match := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: clusterIP.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{s.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, s.port)},
		}
		svc, ep := chain(s.svc), chain(s.ep)
		rule(services, append(match, to(expr.VerdictGoto, svc))...)
		rule(svc, append(match, to(expr.VerdictJump, markMasq))...)
		rule(svc, to(expr.VerdictGoto, ep))
		// ip saddr <endpoint> jump mark-for-masquerade (hairpin)
		rule(ep,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: s.endpoint.Addr().AsSlice()},
			to(expr.VerdictJump, markMasq))
		// meta l4proto <proto> dnat ip to <endpoint>
		rule(ep,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{s.proto}},
			&expr.Immediate{Register: 1, Data: s.endpoint.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, s.endpoint.Port())},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
	}
	rule(base("nat-prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest), to(expr.VerdictJump, services))
	rule(base("nat-output", nftables.ChainHookOutput, nftables.ChainPriorityNATDest), to(expr.VerdictJump, services))
	rule(base("nat-postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource), to(expr.VerdictJump, masq))
	if err := c.Flush(); err != nil {
		t.Fatalf("write the kube-proxy nftables table: %v", err)
	}
}
