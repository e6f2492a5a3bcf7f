package e2e

import (
	"net/netip"
	"testing"
)

// TestHostPortCollisionUDP is TestHostPortCollision for UDP: host sockets
// bound to explicit ports and pod flows share the node address, in both
// orders, and neither takes the other's tuple or replies (docs/behaviour.md §8).
// With --random-fully=false the agent wants the pod's own port, so
// the collision is certain.
func TestHostPortCollisionUDP(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--random-fully=false"}})
		dst := tp.Internet.UDPAddr()
		// Alternate exchanges on both sockets: each must get its own
		// answers, through an unchanged node port.
		both := func(t *testing.T, host, pod *udpClient, hostSeen, podSeen netip.AddrPort) {
			t.Helper()
			if hostSeen.Addr() != NodeIP || podSeen.Addr() != NodeIP || hostSeen == podSeen {
				t.Errorf("server saw host %s and pod %s, want two different ports of %s", hostSeen, podSeen, NodeIP)
			}
			for i := 0; i < 2; i++ {
				for _, c := range []struct {
					name string
					u    *udpClient
					want netip.AddrPort
				}{{"host", host, hostSeen}, {"pod", pod, podSeen}} {
					got, err := c.u.exchange(dst, ProbeTimeout)
					if err != nil {
						t.Errorf("%s: %v", c.name, err)
					} else if got != c.want {
						t.Errorf("%s: server saw %s, earlier %s", c.name, got, c.want)
					}
				}
			}
		}

		t.Run("host first", func(t *testing.T) {
			const port = 46200
			host := openUDP(t, tp.Node, port)
			hostSeen, err := host.exchange(dst, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if hostSeen != netip.AddrPortFrom(NodeIP, port) {
				t.Errorf("host socket seen as %s, want %s:%d (host traffic keeps its port)", hostSeen, NodeIP, port)
			}
			pod := openUDP(t, tp.Pod1, port)
			podSeen, err := pod.exchange(dst, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			both(t, host, pod, hostSeen, podSeen)
		})

		t.Run("pod first", func(t *testing.T) {
			pod := openUDP(t, tp.Pod1, 46300)
			podSeen, err := pod.exchange(dst, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			// The host now binds the very node port the pod's mapping
			// holds and talks to the same server.
			before := readStats(t, a)
			host := openUDP(t, tp.Node, podSeen.Port())
			hostSeen, err := host.exchange(dst, ProbeTimeout)
			if err != nil {
				t.Fatalf("host socket on the pod mapping's port %d: %v", podSeen.Port(), err)
			}
			if d := readStats(t, a).delta(before); d["egress_host_moved"] == 0 {
				t.Errorf("egress_host_moved did not grow: %v", d)
			}
			both(t, host, pod, hostSeen, podSeen)
		})
	})
}

// TestHostHoldsOnlyPort: with a single --to-ports port, a host socket that
// uses that port towards a server leaves no node port for a pod flow to the
// same server: the pod's flow is dropped and counted (never given the host's
// tuple, never sent with the pod address), the host's flow is undisturbed,
// and a pod flow to another server port gets the port (uniqueness is per
// remote endpoint). TCP and UDP. (docs/behaviour.md §8, §9.)
func TestHostHoldsOnlyPort(t *testing.T) {
	const port = 46500
	const otherTCPPort = 8090
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--to-ports=46500"}})
		tp.Internet.ListenTCP(t, netip.AddrPortFrom(InternetIP, otherTCPPort))
		tp.Internet.ListenUDP(t, netip.AddrPortFrom(InternetIP, UDPPort+10))

		t.Run("tcp", func(t *testing.T) {
			host, err := tp.Node.DialTCP(tp.Internet.TCPAddr(), port, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer host.Close()
			before := readStats(t, a)
			peers := len(tp.Internet.TCP.Peers())
			if c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 0, dropTimeout); err == nil {
				c.Close()
				t.Errorf("pod1 -> internet: connected as %s while the host holds the only node port", c.Peer)
			}
			if n := len(tp.Internet.TCP.Peers()); n != peers {
				t.Errorf("internet server accepted %d connections from pod1, want none", n-peers)
			}
			if d := readStats(t, a).delta(before); d["egress_no_port"] == 0 {
				t.Errorf("egress_no_port did not grow: %v", d)
			}
			if err := host.Echo([]byte("host\n"), ProbeTimeout); err != nil {
				t.Errorf("host connection: %v", err)
			}
			other := netip.AddrPortFrom(InternetIP, otherTCPPort)
			if c, err := tp.Pod1.DialTCP(other, 0, ProbeTimeout); err != nil {
				t.Errorf("pod1 -> %s (another server port): %v", other, err)
			} else {
				if c.Peer != netip.AddrPortFrom(NodeIP, port) {
					t.Errorf("pod1 -> %s: server saw %s, want %s:%d", other, c.Peer, NodeIP, port)
				}
				c.Close()
			}
		})

		t.Run("udp", func(t *testing.T) {
			host := openUDP(t, tp.Node, port)
			if _, err := host.exchange(tp.Internet.UDPAddr(), ProbeTimeout); err != nil {
				t.Fatal(err)
			}
			before := readStats(t, a)
			rep, err := tp.Pod1.UDPPeer(tp.Internet.UDPAddr(), 0, dropTimeout)
			if err == nil {
				t.Errorf("pod1 -> internet: answered (server saw %s) while the host holds the only node port", rep.Peer)
			}
			if p, ok := tp.Internet.UDP.Seen(rep.Token); ok {
				t.Errorf("internet server received pod1's datagram from %s, want it dropped", p)
			}
			if d := readStats(t, a).delta(before); d["egress_no_port"] == 0 {
				t.Errorf("egress_no_port did not grow: %v", d)
			}
			if got, err := host.exchange(tp.Internet.UDPAddr(), ProbeTimeout); err != nil || got != netip.AddrPortFrom(NodeIP, port) {
				t.Errorf("host socket: server saw %s (%v), want %s:%d", got, err, NodeIP, port)
			}
			other := netip.AddrPortFrom(InternetIP, UDPPort+10)
			if rep, err := tp.Pod1.UDPPeer(other, 0, ProbeTimeout); err != nil {
				t.Errorf("pod1 -> %s (another server port): %v", other, err)
			} else if rep.Peer != netip.AddrPortFrom(NodeIP, port) {
				t.Errorf("pod1 -> %s: server saw %s, want %s:%d", other, rep.Peer, NodeIP, port)
			}
		})
	})
}
