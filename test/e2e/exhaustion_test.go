package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Exhaustion settings: ten node ports, and hold times short enough to watch
// them expire. A closed or idle flow keeps its port for HoldTime (the
// remote's TIME_WAIT protection), and the agent collects every 200 ms.
const (
	exhaustPorts = "40000-40009"
	exhaustFirst = 40000
	exhaustCount = 10
	HoldTime     = 3 * time.Second
)

// TestPortExhaustion: with --to-ports=40000-40009, ten concurrent flows from
// the pods to one destination get the ten node ports; the eleventh is
// dropped and counted as egress_no_port, never sent with the pod address
// (the internet host, which drops private sources, sees nothing); the first
// ten keep working; a flow to another destination still gets a port; and
// once the ten are closed (TCP) or idle (UDP), their ports stay held for the
// hold time and then serve new flows. TCP and UDP. (docs/behaviour.md §4.5, §9.4.)
func TestPortExhaustion(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		hold := HoldTime.String()
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{
			"--to-ports=" + exhaustPorts,
			"--tcp-fin-timeout=" + hold, "--tcp-rst-timeout=" + hold,
			"--udp-timeout=" + hold, "--udp-stream-timeout=" + hold,
			"--gc-interval=200ms",
		}})
		const otherPort = 8090
		other := netip.AddrPortFrom(InternetIP, otherPort)
		tp.Internet.ListenTCP(t, other)
		tp.Internet.ListenUDP(t, other)
		pods := []*Netns{tp.Pod1, tp.Pod2}
		rpf := func() int64 { return counter(t, tp.Internet.Netns, "TcpExt.IPReversePathFilter") }
		inRange := func(p netip.AddrPort) bool {
			return p.Addr() == NodeIP && p.Port() >= exhaustFirst && p.Port() < exhaustFirst+exhaustCount
		}

		t.Run("tcp", func(t *testing.T) {
			dst := tp.Internet.TCPAddr()
			// open opens ten connections, retrying each for up to
			// patience, and checks that they got the ten ports.
			open := func(patience time.Duration) ([]*TCPConn, error) {
				var conns []*TCPConn
				seen := map[netip.AddrPort]bool{}
				timeout := attemptTimeout(patience)
				for i := 0; i < exhaustCount; i++ {
					var c *TCPConn
					err := eventually(patience, func() (err error) {
						c, err = pods[i%2].DialTCP(dst, 0, timeout)
						return err
					})
					if err != nil {
						closeAll(conns)
						return nil, fmt.Errorf("connection %d: %w", i+1, err)
					}
					conns = append(conns, c)
					if !inRange(c.Peer) || seen[c.Peer] {
						closeAll(conns)
						return nil, fmt.Errorf("connection %d seen as %s, want a new port of %s:%s", i+1, c.Peer, NodeIP, exhaustPorts)
					}
					seen[c.Peer] = true
				}
				return conns, nil
			}
			conns, err := open(0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { closeAll(conns) }()

			before, rpfBefore, peers := readStats(t, a), rpf(), len(tp.Internet.TCP.Peers())
			if c, err := tp.Pod1.DialTCP(dst, 0, dropTimeout); err == nil {
				c.Close()
				t.Errorf("11th connection to %s: connected as %s, want dropped", dst, c.Peer)
			}
			if d := readStats(t, a).delta(before); d["egress_no_port"] == 0 {
				t.Errorf("11th connection: egress_no_port did not grow: %v", d)
			}
			if n := len(tp.Internet.TCP.Peers()); n != peers {
				t.Errorf("11th connection: internet server accepted %d connections, want none", n-peers)
			}
			if n := rpf() - rpfBefore; n != 0 {
				t.Errorf("11th connection: internet host dropped %d packets with a private source (IPReversePathFilter)", n)
			}
			for i, c := range conns {
				if err := c.Echo([]byte(fmt.Sprintf("still here %d\n", i)), ProbeTimeout); err != nil {
					t.Errorf("connection %d after the 11th failed: %v", i+1, err)
				}
			}
			if c, err := tp.Pod1.DialTCP(other, 0, ProbeTimeout); err != nil {
				t.Errorf("connection to another destination %s: %v", other, err)
			} else {
				if !inRange(c.Peer) {
					t.Errorf("connection to %s seen as %s, want a port of %s:%s", other, c.Peer, NodeIP, exhaustPorts)
				}
				c.Close()
			}

			closeAll(conns)
			conns = nil
			closed := time.Now()
			time.Sleep(100 * time.Millisecond) // FIN, FIN, ACK
			if c, err := tp.Pod1.DialTCP(dst, 0, time.Second); err == nil {
				c.Close()
				t.Errorf("new connection %v after closing the ten: seen as %s, want the ports held for %v",
					time.Since(closed).Round(time.Millisecond), c.Peer, HoldTime)
			}
			// Ten new connections get the ten ports once they are back.
			if conns, err = open(HoldTime + 5*time.Second); err != nil {
				t.Fatalf("ten new connections after the hold time: %v", err)
			}
			t.Logf("ports came back: ten new connections open %v after the first ten closed", time.Since(closed).Round(time.Millisecond))
		})

		t.Run("udp", func(t *testing.T) {
			dst := tp.Internet.UDPAddr()
			// open opens ten flows, retrying each for up to patience, and
			// checks that they got the ten ports.
			open := func(patience time.Duration) ([]*udpClient, error) {
				var socks []*udpClient
				seen := map[netip.AddrPort]bool{}
				timeout := attemptTimeout(patience)
				for i := 0; i < exhaustCount; i++ {
					var u *udpClient
					var p netip.AddrPort
					err := eventually(patience, func() (err error) {
						u = openUDP(t, pods[i%2], 0)
						p, err = u.exchange(dst, timeout)
						if err != nil {
							u.pc.Close()
						}
						return err
					})
					if err != nil {
						return socks, fmt.Errorf("flow %d: %w", i+1, err)
					}
					socks = append(socks, u)
					if !inRange(p) || seen[p] {
						return socks, fmt.Errorf("flow %d seen as %s, want a new port of %s:%s", i+1, p, NodeIP, exhaustPorts)
					}
					seen[p] = true
				}
				return socks, nil
			}
			socks, err := open(0)
			if err != nil {
				t.Fatal(err)
			}
			var ports []netip.AddrPort
			for _, u := range socks {
				p, err := u.exchange(dst, ProbeTimeout)
				if err != nil {
					t.Fatal(err)
				}
				ports = append(ports, p)
			}

			before, rpfBefore := readStats(t, a), rpf()
			rep, err := tp.Pod1.UDPPeer(dst, 0, dropTimeout)
			if err == nil {
				t.Errorf("11th flow to %s: answered (server saw %s), want dropped", dst, rep.Peer)
			}
			if p, ok := tp.Internet.UDP.Seen(rep.Token); ok {
				t.Errorf("11th flow: the server received it from %s", p)
			}
			if d := readStats(t, a).delta(before); d["egress_no_port"] == 0 {
				t.Errorf("11th flow: egress_no_port did not grow: %v", d)
			}
			if n := rpf() - rpfBefore; n != 0 {
				t.Errorf("11th flow: internet host dropped %d packets with a private source (IPReversePathFilter)", n)
			}
			for i, u := range socks {
				if p, err := u.exchange(dst, ProbeTimeout); err != nil || p != ports[i] {
					t.Errorf("flow %d after the 11th failed: server saw %s (%v), earlier %s", i+1, p, err, ports[i])
				}
			}
			if rep, err := tp.Pod1.UDPPeer(other, 0, ProbeTimeout); err != nil {
				t.Errorf("flow to another destination %s: %v", other, err)
			} else if !inRange(rep.Peer) {
				t.Errorf("flow to %s seen as %s, want a port of %s:%s", other, rep.Peer, NodeIP, exhaustPorts)
			}

			for _, u := range socks {
				u.pc.Close()
			}
			idle := time.Now()
			if rep, err := tp.Pod1.UDPPeer(dst, 0, time.Second); err == nil {
				t.Errorf("new flow %v after the ten went idle: seen as %s, want the ports held for %v",
					time.Since(idle).Round(time.Millisecond), rep.Peer, HoldTime)
			}
			if _, err := open(HoldTime + 5*time.Second); err != nil {
				t.Fatalf("ten new flows after the hold time: %v", err)
			}
			t.Logf("ports came back: ten new flows answered %v after the first ten went idle", time.Since(idle).Round(time.Millisecond))
		})
	})
}

// attemptTimeout bounds one attempt: a single one may take ProbeTimeout,
// retried ones are shorter.
func attemptTimeout(patience time.Duration) time.Duration {
	if patience > 0 {
		return time.Second
	}
	return ProbeTimeout
}

func closeAll(conns []*TCPConn) {
	for _, c := range conns {
		c.Close()
	}
}
