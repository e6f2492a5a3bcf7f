package e2e

import (
	"bytes"
	"net/netip"
	"testing"
)

// TestInboundFlows: with nonMasqueradeCIDRs: [] (so the VPC is masqueraded
// for flows the pods open), the VPC host opens TCP and UDP flows to pod1's
// own address, as VPC-native networking allows. They work, the pod sees the
// VPC host's real address and port, and the VPC host gets the replies from
// the pod address: a reply sent from the node address would not match its
// socket (TCP would get a RST, UDP an answer from the wrong peer). (docs/behaviour.md
// §7.)
func TestInboundFlows(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgMasqAll})
		pod1TCP := netip.AddrPortFrom(Pod1IP, TCPPort)
		pod1UDP := netip.AddrPortFrom(Pod1IP, UDPPort)
		tp.Pod1.ListenTCP(t, pod1TCP)
		tp.Pod1.ListenUDP(t, pod1UDP)

		// The config in force: what pod1 opens to the VPC is masqueraded.
		expectTCP(t, tp.Pod1, tp.VPC, NodeIP)
		expectUDP(t, tp.Pod1, tp.VPC, NodeIP)

		t.Run("tcp", func(t *testing.T) {
			before := readStats(t, a)
			c, err := tp.VPC.DialTCP(pod1TCP, 0, ProbeTimeout)
			if err != nil {
				t.Fatalf("vpc -> pod1 %s: %v; datapath counters %v", pod1TCP, err, readStats(t, a).delta(before))
			}
			defer c.Close()
			if c.Peer != c.Local() || c.Peer.Addr() != VPCIP {
				t.Errorf("pod1 saw the connection from %s, want the VPC host's own %s", c.Peer, c.Local())
			}
			// A few round trips, one of them large (many segments each
			// way, all mid-stream for the datapath).
			for _, msg := range [][]byte{[]byte("inbound 1\n"), bytes.Repeat([]byte("0123456789abcdef"), 16384), []byte("inbound 3\n")} {
				if err := c.Echo(msg, ProbeTimeout); err != nil {
					t.Errorf("vpc -> pod1: %v", err)
				}
			}
			if d := readStats(t, a).delta(before); d["egress_new_flow"] != 0 {
				t.Errorf("the pod's replies created a mapping: %v", d)
			}
		})

		t.Run("udp", func(t *testing.T) {
			before := readStats(t, a)
			// Several exchanges from one VPC port: the first datagram
			// opens the flow, the rest run on it. UDPPeer fails unless
			// the answer comes from pod1's own address and port.
			c := openUDP(t, tp.VPC.Netns, 0)
			for i := 0; i < 3; i++ {
				peer, err := c.exchange(pod1UDP, ProbeTimeout)
				if err != nil {
					t.Fatalf("exchange %d: %v; datapath counters %v", i, err, readStats(t, a).delta(before))
				}
				if peer != netip.AddrPortFrom(VPCIP, c.Port()) {
					t.Errorf("exchange %d: pod1 saw %s, want %s:%d", i, peer, VPCIP, c.Port())
				}
			}
			// A second VPC port is a second flow.
			if rep, err := tp.VPC.UDPPeer(pod1UDP, 0, ProbeTimeout); err != nil {
				t.Error(err)
			} else if rep.Peer.Addr() != VPCIP || rep.Peer.Port() != rep.Local.Port() {
				t.Errorf("pod1 saw %s, want %s:%d", rep.Peer, VPCIP, rep.Local.Port())
			}
			d := readStats(t, a).delta(before)
			if d["ingress_inbound"] == 0 || d["egress_inbound"] == 0 {
				t.Errorf("inbound UDP flows not counted (ingress_inbound, egress_inbound): %v", d)
			}
			if d["egress_new_flow"] != 0 {
				t.Errorf("the pod's replies created a mapping: %v", d)
			}
		})

		// Flows the pod opens are still masqueraded afterwards, also to
		// the host that opened flows to it.
		expectTCP(t, tp.Pod1, tp.VPC, NodeIP)
		expectUDP(t, tp.Pod1, tp.VPC, NodeIP)
	})
}
