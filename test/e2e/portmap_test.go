package e2e

import (
	"fmt"
	"net/netip"
	"testing"
)

// The hostPort of pod2, inside a --to-ports range of four node ports, so
// that our pod mappings want it too.
const (
	hostPort     = 46601
	hostPortTo   = "--to-ports=46600-46603"
	farPortFirst = 46600
	farPortLast  = 46603
)

// portmapIPTables is what the CNI portmap plugin writes for pod2's hostPort
// 46601 (TCP to its port 8080, UDP to 8081): CNI-HOSTPORT-DNAT from
// PREROUTING and OUTPUT for local destinations, a CNI-DN chain per
// container that marks hairpin traffic for CNI-HOSTPORT-MASQ and DNATs.
var portmapIPTables = fmt.Sprintf(`*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-ipme0pod2hostport - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cbr0\" id: \"ipme-pod2\"" -m multiport --dports %[1]d -j CNI-DN-ipme0pod2hostport
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"cbr0\" id: \"ipme-pod2\"" -m multiport --dports %[1]d -j CNI-DN-ipme0pod2hostport
-A CNI-DN-ipme0pod2hostport -s 10.244.1.0/24 -p tcp -m tcp --dport %[1]d -j CNI-HOSTPORT-SETMARK
-A CNI-DN-ipme0pod2hostport -s 127.0.0.1/32 -p tcp -m tcp --dport %[1]d -j CNI-HOSTPORT-SETMARK
-A CNI-DN-ipme0pod2hostport -p tcp -m tcp --dport %[1]d -j DNAT --to-destination 10.244.1.3:8080
-A CNI-DN-ipme0pod2hostport -s 10.244.1.0/24 -p udp -m udp --dport %[1]d -j CNI-HOSTPORT-SETMARK
-A CNI-DN-ipme0pod2hostport -s 127.0.0.1/32 -p udp -m udp --dport %[1]d -j CNI-HOSTPORT-SETMARK
-A CNI-DN-ipme0pod2hostport -p udp -m udp --dport %[1]d -j DNAT --to-destination 10.244.1.3:8081
COMMIT
`, hostPort)

// TestHostPortDNAT: a hostPort DNAT like the CNI portmap plugin's on a node
// port inside --to-ports, next to pod flows we masquerade from the same
// range, in both attach modes. The hostPort connection's replies leave
// un-DNATed by conntrack, with the node address and the hostPort as source:
// a host flow to us, whose node tuple we reserve, so no pod mapping is given
// that node port towards the same remote (docs/behaviour.md §8). With
// --random-fully=false a pod flow from the hostPort wants exactly that node
// port, so the collision is certain.
func TestHostPortDNAT(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		requireAgent(t)
		tp := NewTopology(t)
		iptablesRestore(t, tp.Node, portmapIPTables)
		tp.Pod2.ListenTCP(t, netip.AddrPortFrom(Pod2IP, TCPPort))
		tp.Pod2.ListenUDP(t, netip.AddrPortFrom(Pod2IP, UDPPort))
		a := startAgentOn(t, tp, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{hostPortTo, "--random-fully=false"}})
		node := netip.AddrPortFrom(NodeIP, hostPort)
		inRange := func(p netip.AddrPort) error {
			if p.Addr() != NodeIP || p.Port() < farPortFirst || p.Port() > farPortLast {
				return fmt.Errorf("seen as %s, want %s with a port of --to-ports", p, NodeIP)
			}
			return nil
		}

		// A pod flow holds the hostPort's node port towards another remote
		// (the internet host's server), and the internet host connects to
		// the hostPort from an ephemeral port: different tuples, both work.
		t.Run("other remote", func(t *testing.T) {
			pod, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), hostPort, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer pod.Close()
			if pod.Peer != node {
				t.Errorf("pod1 -> %s from port %d: seen as %s, want %s (its own port is free)", tp.Internet.TCPAddr(), hostPort, pod.Peer, node)
			}
			in, err := tp.Internet.DialTCP(node, 0, ProbeTimeout)
			if err != nil {
				t.Fatalf("internet -> hostPort %s: %v", node, err)
			}
			defer in.Close()
			if in.Peer.Addr() != InternetIP {
				t.Errorf("pod2 saw the hostPort connection from %s, want the internet host", in.Peer)
			}
			podUDP := openUDP(t, tp.Pod1, hostPort)
			if seen, err := podUDP.exchange(tp.Internet.UDPAddr(), ProbeTimeout); err != nil || seen != node {
				t.Errorf("pod1 udp from port %d: seen as %s (%v), want %s", hostPort, seen, err, node)
			}
			inUDP := openUDP(t, tp.Internet.Netns, 0)
			if seen, err := inUDP.exchange(node, ProbeTimeout); err != nil || seen.Addr() != InternetIP {
				t.Errorf("internet udp -> hostPort: pod2 saw %s (%v), want the internet host", seen, err)
			}
			for _, c := range []*TCPConn{pod, in} {
				if err := c.Echo([]byte("both\n"), ProbeTimeout); err != nil {
					t.Error(err)
				}
			}
			if _, err := inUDP.exchange(node, ProbeTimeout); err != nil {
				t.Errorf("internet udp -> hostPort again: %v", err)
			}
		})

		// The internet host connects to the hostPort from port remotePort,
		// then a pod opens flows from the hostPort towards that very
		// remote port: its mapping must get another node port, else the
		// remote would see two flows on one tuple and replies would go to
		// the wrong one.
		const remotePort = 47001
		remote := netip.AddrPortFrom(InternetIP, remotePort)
		t.Run("same remote tcp", func(t *testing.T) {
			in, err := tp.Internet.DialTCP(node, remotePort, ProbeTimeout)
			if err != nil {
				t.Fatalf("internet -> hostPort %s: %v", node, err)
			}
			defer in.Close()
			if in.Peer != remote {
				t.Errorf("pod2 saw the hostPort connection from %s, want %s", in.Peer, remote)
			}
			expectReservedNotMapped(t, a, "tcp", hostPort, remote)
			// The remote port also serves, for the pod.
			tp.Internet.ListenTCP(t, remote)
			pod, err := tp.Pod1.DialTCP(remote, hostPort, ProbeTimeout)
			if err != nil {
				t.Fatalf("pod1 -> %s: %v", remote, err)
			}
			defer pod.Close()
			if err := inRange(pod.Peer); err != nil || pod.Peer == node {
				t.Errorf("pod1 -> %s from port %d: %v; must not be %s, which the hostPort connection holds", remote, hostPort, err, node)
			}
			for _, c := range []*TCPConn{in, pod} {
				if err := c.Echo([]byte("both\n"), ProbeTimeout); err != nil {
					t.Error(err)
				}
			}
			expectReservedNotMapped(t, a, "tcp", hostPort, remote)
		})

		t.Run("same remote udp", func(t *testing.T) {
			// One socket of the internet host talks to the hostPort and
			// receives the pod's datagrams, as a peer-to-peer or NTP-like
			// protocol does.
			in := openUDP(t, tp.Internet.Netns, remotePort)
			if seen, err := in.exchange(node, ProbeTimeout); err != nil || seen != remote {
				t.Fatalf("internet udp :%d -> hostPort: pod2 saw %s (%v), want %s", remotePort, seen, err, remote)
			}
			expectReservedNotMapped(t, a, "udp", hostPort, remote)
			pod := openUDP(t, tp.Pod1, hostPort)
			if err := pod.send(remote, "from-pod1"); err != nil {
				t.Fatal(err)
			}
			seen := in.expectFrom(t, "from-pod1", func(p netip.AddrPort) error {
				if err := inRange(p); err != nil {
					return err
				}
				if p == node {
					return fmt.Errorf("the pod's mapping took %s, which the hostPort flow holds", node)
				}
				return nil
			})
			// The remote answers the pod through the pod's mapping, and
			// the hostPort flow still reaches pod2.
			if err := in.send(seen, "to-pod1"); err != nil {
				t.Fatal(err)
			}
			pod.expectFrom(t, "to-pod1", func(p netip.AddrPort) error {
				if p != remote {
					return fmt.Errorf("want %s", remote)
				}
				return nil
			})
			if got, err := in.exchange(node, ProbeTimeout); err != nil || got != remote {
				t.Errorf("internet udp :%d -> hostPort again: pod2 saw %s (%v), want %s", remotePort, got, err, remote)
			}
			expectReservedNotMapped(t, a, "udp", hostPort, remote)
		})
	})
}
