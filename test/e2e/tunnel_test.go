package e2e

import (
	"net/netip"
	"testing"
	"time"
)

// Inner addresses of the VXLAN tunnel between a pod and the internet host.
var (
	tunnelPodIP    = netip.MustParseAddr("192.168.77.1")
	tunnelRemoteIP = netip.MustParseAddr("192.168.77.2")
)

// vxlanPort is the tunnel's UDP port on both ends, also its source port,
// so that with --random-fully=false the node keeps it and the far end's
// packets to the node address find the mapping.
const vxlanPort = "4789"

// addVXLAN creates vx0 in n: VXLAN with outer UDP checksums (udpcsum, the
// inner TCP checksum left to offload), towards remote, with inner address
// addr/24.
func addVXLAN(t *testing.T, n *Netns, remote, addr netip.Addr) {
	t.Helper()
	n.IP(t, "link", "add", "vx0", "type", "vxlan", "id", "77", "remote", remote.String(),
		"dstport", vxlanPort, "srcport", vxlanPort, "4790", "udpcsum", "udp6zerocsumtx", "udp6zerocsumrx")
	n.IP(t, "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", "vx0")
	n.IP(t, "link", "set", "vx0", "up")
}

// TestPodTunnelChecksums: a pod that runs a UDP tunnel with outer UDP
// checksums offloads its inner TCP checksum (CHECKSUM_PARTIAL whose
// csum_start is the inner TCP header); the outer UDP checksum is a full one
// and must stay right after the outer source address is masqueraded. TCP
// through the tunnel works, and every receiver verifies every checksum
// (FailOnChecksumErrors).
func TestPodTunnelChecksums(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--random-fully=false"}})
		addVXLAN(t, tp.Pod1, tp.Internet.Addr, tunnelPodIP)
		addVXLAN(t, tp.Internet.Netns, NodeIP, tunnelRemoteIP)
		srv := tp.Internet.ListenTCP(t, netip.AddrPortFrom(tunnelRemoteIP, 9090))
		defer srv.Close()
		before := readStats(t, a)
		c, err := tp.Pod1.DialTCP(netip.AddrPortFrom(tunnelRemoteIP, 9090), 0, 10*time.Second)
		if err != nil {
			t.Fatalf("TCP through the pod's VXLAN tunnel: %v (datapath counters %v, receive checksum errors %v)",
				err, readStats(t, a).delta(before), tp.ChecksumErrors(t))
		}
		defer c.Close()
		for i := 0; i < 20; i++ {
			if err := c.Echo(make([]byte, 1000), 5*time.Second); err != nil {
				t.Fatalf("echo %d through the tunnel: %v (checksum errors %v)", i, err, tp.ChecksumErrors(t))
			}
		}
		if c.Peer.Addr() != tunnelPodIP {
			t.Errorf("the far end saw %s inside the tunnel, want %s", c.Peer, tunnelPodIP)
		}
		if d := readStats(t, a).delta(before); d["egress_new_flow"]+d["egress_translated"] == 0 || d["ingress_translated"] == 0 {
			t.Errorf("the tunnel's outer packets were not masqueraded both ways: counters %v", d)
		}
	})
}
