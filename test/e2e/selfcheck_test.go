package e2e

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestTopologySelfCheck validates the harness without the agent: the
// topology routes what it should and drops what it should, the servers see
// the real source addresses, receivers really verify checksums, and an
// iptables MASQUERADE stand-in for the agent is observed as masquerading.
// It builds two topologies and uses them at the same time, which is what
// lets the agent tests run in parallel.
func TestTopologySelfCheck(t *testing.T) {
	requireRoot(t)
	tps := []*Topology{NewTopology(t), NewTopology(t)}

	// No NAT anywhere yet: both topologies, concurrently, same addresses.
	t.Run("without NAT", func(t *testing.T) {
		for i, tp := range tps {
			t.Run(string(rune('a'+i)), func(t *testing.T) {
				t.Parallel()
				checkOffloads(t, tp)
				checkWithoutNAT(t, tp)
			})
		}
	})
	if t.Failed() {
		return
	}
	t.Run("receivers verify checksums", func(t *testing.T) { checkChecksumsVerified(t, tps[1]) })
	t.Run("MASQUERADE stand-in", func(t *testing.T) { checkMasqueradeStandIn(t, tps[0]) })
}

// checkOffloads checks the offload settings that docs/development.md relies on.
func checkOffloads(t *testing.T, tp *Topology) {
	txCsum := func(n *Netns, dev string) string {
		out := n.MustExec(t, "ethtool", "-k", dev)
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "tx-checksumming: "); ok {
				return strings.Fields(v)[0]
			}
		}
		t.Fatalf("%s: ethtool -k %s: no tx-checksumming line:\n%s", n, dev, out)
		return ""
	}
	for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
		if got := txCsum(pod, "eth0"); got != "on" {
			t.Errorf("%s eth0: tx-checksumming %s, want on", pod, got)
		}
	}
	for _, dev := range []string{"to-node", "to-inet", "to-vpc", "to-ll"} {
		if got := txCsum(tp.Router, dev); got != "off" {
			t.Errorf("router %s: tx-checksumming %s, want off", dev, got)
		}
	}
}

func checkWithoutNAT(t *testing.T, tp *Topology) {
	tp.FailOnChecksumErrors(t)
	// Routed hosts see the pods as they are.
	expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
	expectSource(t, tp.Pod2, tp.VPC, Pod2IP)
	expectSource(t, tp.Pod1, tp.LinkLocal, Pod1IP)
	// The node's own traffic reaches every host from the node address.
	expectSource(t, tp.Node, tp.Internet, NodeIP)
	expectSource(t, tp.Node, tp.VPC, NodeIP)
	expectSource(t, tp.Node, tp.LinkLocal, NodeIP)
	if _, seen, err := tcpSeen(tp.Node, tp.Internet, 45000, ProbeTimeout); err != nil || seen != netip.AddrPortFrom(NodeIP, 45000) {
		t.Errorf("TCP node:45000 -> internet: server saw %s (%v), want %s:45000", seen, err, NodeIP)
	}

	// The internet host drops pod sources, by reverse-path filtering on
	// arrival (so the router did forward them).
	rpf := func() int64 {
		c, err := tp.Internet.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return c["TcpExt.IPReversePathFilter"]
	}
	before := rpf()
	expectDropped(t, tp.Pod1, tp.Internet)
	// At least the first SYN, the datagram and the echo request.
	if got := rpf() - before; got < 3 {
		t.Errorf("internet host: IPReversePathFilter grew by %d, want >= 3", got)
	}
}

// checkChecksumsVerified shows that a NAT which gets the pseudo-header of a
// CHECKSUM_PARTIAL packet wrong is caught by the receiver in this topology,
// in both directions, and that it would not be without the router's tx
// checksum offload off.
func checkChecksumsVerified(t *testing.T, tp *Topology) {
	udpErrs := func(n *Netns) int64 {
		c, err := n.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return c["Udp.InCsumErrors"]
	}
	const timeout = time.Second

	t.Run("egress", func(t *testing.T) {
		// pod1 -> internet, source rewritten to the node address on the
		// node's uplink egress, IP header checksum fixed, UDP not.
		detach := attachBrokenSNAT(t, tp.Node, Uplink, false, Pod1IP, NodeIP)
		defer detach()
		before := udpErrs(tp.Internet.Netns)
		rep, err := tp.Pod1.UDPPeer(tp.Internet.UDPAddr(), 0, timeout)
		if err == nil {
			t.Errorf("UDP through the broken NAT was answered (server saw %s)", rep.Peer)
		}
		if peer, ok := tp.Internet.UDP.Seen(rep.Token); ok {
			t.Errorf("internet server received the datagram with a wrong checksum from %s", peer)
		}
		if got := udpErrs(tp.Internet.Netns) - before; got != 1 {
			t.Errorf("internet host: Udp.InCsumErrors grew by %d, want 1", got)
		}

		// Counter-check: with tx checksum offload on at the router the
		// packet stays CHECKSUM_PARTIAL to the receiver, which then takes
		// the wrong checksum without looking. This also proves that the pod
		// sends CHECKSUM_PARTIAL packets.
		tp.Router.MustExec(t, "ethtool", "-K", "to-inet", "tx", "on")
		defer tp.Router.MustExec(t, "ethtool", "-K", "to-inet", "tx", "off")
		before = udpErrs(tp.Internet.Netns)
		rep, _ = tp.Pod1.UDPPeer(tp.Internet.UDPAddr(), 0, timeout) // the answer goes to the node, not the pod
		if peer, ok := tp.Internet.UDP.Seen(rep.Token); !ok || peer.Addr() != NodeIP {
			t.Errorf("with router tx offload on: server saw %s (received: %v), want the broken packet accepted from %s", peer, ok, NodeIP)
		}
		if got := udpErrs(tp.Internet.Netns) - before; got != 0 {
			t.Errorf("with router tx offload on: Udp.InCsumErrors grew by %d, want 0", got)
		}
	})

	t.Run("ingress", func(t *testing.T) {
		// vpc -> pod1, source rewritten on the node's uplink ingress; the
		// router completed the checksum, pod1 must verify it.
		srv := tp.Pod1.ListenUDP(t, netip.AddrPortFrom(Pod1IP, 9000))
		if _, err := tp.VPC.UDPPeer(netip.AddrPortFrom(Pod1IP, 9000), 0, ProbeTimeout); err != nil {
			t.Fatalf("UDP vpc -> pod1 without the broken NAT: %v", err)
		}
		fake := netip.MustParseAddr("10.100.0.99")
		detach := attachBrokenSNAT(t, tp.Node, Uplink, true, VPCIP, fake)
		defer detach()
		before := udpErrs(tp.Pod1)
		rep, _ := tp.VPC.UDPPeer(netip.AddrPortFrom(Pod1IP, 9000), 0, timeout)
		if peer, ok := srv.Seen(rep.Token); ok {
			t.Errorf("pod1 server received the datagram with a wrong checksum from %s", peer)
		}
		if got := udpErrs(tp.Pod1) - before; got != 1 {
			t.Errorf("pod1: Udp.InCsumErrors grew by %d, want 1", got)
		}

		tp.Router.MustExec(t, "ethtool", "-K", "to-node", "tx", "on")
		defer tp.Router.MustExec(t, "ethtool", "-K", "to-node", "tx", "off")
		rep, _ = tp.VPC.UDPPeer(netip.AddrPortFrom(Pod1IP, 9000), 0, timeout)
		if peer, ok := srv.Seen(rep.Token); !ok || peer.Addr() != fake {
			t.Errorf("with router tx offload on: pod1 server saw %s (received: %v), want the broken packet accepted from %s", peer, ok, fake)
		}
	})
}

// attachBrokenSNAT attaches a tc program to dev of ns (egress or ingress)
// that rewrites the IPv4 source of UDP packets from -> to and fixes only the
// IP header checksum: the classic NAT bug of forgetting the L4 pseudo-header
// (for CHECKSUM_PARTIAL packets, the seed in the L4 checksum field).
func attachBrokenSNAT(t *testing.T, ns *Netns, dev string, ingress bool, from, to netip.Addr) (detach func()) {
	t.Helper()
	// The program compares raw packet words, so the constants are the
	// addresses' bytes read in the machine's byte order.
	raw := func(a netip.Addr) int32 { b := a.As4(); return int32(binary.NativeEndian.Uint32(b[:])) }
	var ethIPv4 [2]byte
	binary.BigEndian.PutUint16(ethIPv4[:], unix.ETH_P_IP)
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80 // offsetof(struct __sk_buff, data_end)
		ipCsum     = 14 + 10
		ipSrc      = 14 + 12
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "ipme_broken",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+20),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JNE.Imm32(asm.R5, int32(binary.NativeEndian.Uint16(ethIPv4[:])), "pass"),
			asm.LoadMem(asm.R5, asm.R2, 14+9, asm.Byte),
			asm.JNE.Imm32(asm.R5, unix.IPPROTO_UDP, "pass"),
			asm.LoadMem(asm.R5, asm.R2, ipSrc, asm.Word),
			asm.JNE.Imm32(asm.R5, raw(from), "pass"),
			// bpf_l3_csum_replace(skb, ipCsum, from, to, 4)
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, ipCsum),
			asm.Mov.Reg(asm.R3, asm.R5),
			asm.Mov.Imm32(asm.R4, raw(to)),
			asm.Mov.Imm(asm.R5, 4),
			asm.FnL3CsumReplace.Call(),
			// bpf_skb_store_bytes(skb, ipSrc, &to, 4, 0); the L4 checksum
			// is deliberately left alone.
			asm.Mov.Imm32(asm.R1, raw(to)),
			asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, ipSrc),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -4),
			asm.Mov.Imm(asm.R4, 4),
			asm.Mov.Imm(asm.R5, 0),
			asm.FnSkbStoreBytes.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("pass"), // TC_ACT_OK
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load broken SNAT program: %+v", err)
	}
	// NETLINK_ROUTE only: without a protocol list the handle also opens an
	// XFRM socket, which fails where xfrm_user is not loaded (minimal VMs).
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		prog.Close()
		t.Fatalf("netlink handle in %s: %v", ns, err)
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		prog.Close()
		h.Close()
		t.Fatalf("%s: link %s: %v", ns, dev, err)
	}
	qdisc := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
	}}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link.Attrs().Index, Parent: parent, Handle: netlink.MakeHandle(0, 1),
			Protocol: unix.ETH_P_ALL, Priority: 1,
		},
		Fd: prog.FD(), Name: "ipme_broken", DirectAction: true,
	}
	var once sync.Once
	detach = func() {
		once.Do(func() {
			if err := h.QdiscDel(qdisc); err != nil {
				t.Errorf("%s %s: delete clsact: %v", ns, dev, err)
			}
			prog.Close()
			h.Close()
		})
	}
	if err := h.QdiscAdd(qdisc); err != nil {
		prog.Close()
		h.Close()
		t.Fatalf("%s %s: add clsact: %v", ns, dev, err)
	}
	t.Cleanup(detach)
	if err := h.FilterAdd(filter); err != nil {
		t.Fatalf("%s %s: add bpf filter: %v", ns, dev, err)
	}
	return detach
}

// iptablesMasqueradeStandIn installs, in the node namespace, the one rule
// that the agent replaces: masquerade what leaves eth0 unless it goes to
// 10.0.0.0/8. Only the harness self-check uses it.
func iptablesMasqueradeStandIn(t *testing.T, tp *Topology) {
	rule := []string{"POSTROUTING", "-o", Uplink, "!", "-d", "10.0.0.0/8", "-j", "MASQUERADE"}
	tp.Node.MustExec(t, append([]string{"iptables", "-w", "-t", "nat", "-A"}, rule...)...)
	t.Cleanup(func() {
		if _, err := tp.Node.Exec(append([]string{"iptables", "-w", "-t", "nat", "-D"}, rule...)...); err != nil {
			t.Error(err)
		}
	})
}

func checkMasqueradeStandIn(t *testing.T, tp *Topology) {
	tp.FailOnChecksumErrors(t)
	iptablesMasqueradeStandIn(t, tp)

	expectSource(t, tp.Pod1, tp.Internet, NodeIP)
	expectSource(t, tp.Pod2, tp.Internet, NodeIP)
	expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
	expectSource(t, tp.Node, tp.Internet, NodeIP)

	// Two pods, same source port, same destination, at the same time.
	c1, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 40000, ProbeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := tp.Pod2.DialTCP(tp.Internet.TCPAddr(), 40000, ProbeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c1.Peer.Addr() != NodeIP || c2.Peer.Addr() != NodeIP || c1.Peer == c2.Peer {
		t.Errorf("same source port: server saw %s and %s, want two different ports of %s", c1.Peer, c2.Peer, NodeIP)
	}
	for _, c := range []*TCPConn{c1, c2, c1} {
		if err := c.Echo([]byte("both\n"), ProbeTimeout); err != nil {
			t.Error(err)
		}
	}

	// The stream helper through the NAT.
	s, err := tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	res := s.Stop()
	t.Logf("stream: %v", res)
	if res.Err != nil || res.MaxGap > 200*time.Millisecond || res.Echoed < 100 || res.Peer.Addr() != NodeIP {
		t.Errorf("stream through MASQUERADE: %v; want no error, max gap < 200ms, >= 100 echoes, peer %s", res, NodeIP)
	}

	// The stream notices a reset.
	s, err = tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	tp.Internet.TCP.Close() // closes every server connection: the stream sees EOF or a reset
	err = eventually(2*time.Second, func() error {
		if s.Err() == nil {
			return errors.New("no error yet")
		}
		return nil
	})
	res = s.Stop()
	if err != nil {
		t.Errorf("stream after the server closed: %v; want an error", res)
	}
}
