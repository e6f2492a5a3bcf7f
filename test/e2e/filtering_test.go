package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// quietTime is how long a pod socket must stay without data or error after
// packets that must not reach it.
const quietTime = 500 * time.Millisecond

// TestExactMatchFiltering: while pod1 has a masqueraded UDP flow and a TCP
// connection to the internet host, packets to their node ports from any other
// remote endpoint (another port of the same host, the VPC host, the
// link-local host, the router) reach the node unchanged and never the pod;
// ICMP errors about the flows do reach it, from the remote itself and from
// the router on the path, while ICMP errors whose quote is not exactly the
// flow's do not. (docs/behaviour.md §6.1.)
func TestExactMatchFiltering(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		podIn := func() map[string]int64 {
			c, err := tp.Pod1.Counters()
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		// podQuiet fails the test if any packet reached pod1's IP layer
		// for itself since before (delivered to a protocol, or dropped
		// there as malformed or misaddressed), and lists what its
		// counters say about them. Not Ip.InReceives: that also counts
		// the node's IGMPv3 reports flooded on cni0 after the topology
		// comes up, which pod1 drops before any of these counters.
		reached := func(c map[string]int64) int64 {
			return c["Ip.InDelivers"] + c["Ip.InHdrErrors"] + c["Ip.InAddrErrors"] +
				c["Ip.InUnknownProtos"] + c["Ip.InDiscards"] + c["Ip.ReasmReqds"]
		}
		podQuiet := func(t *testing.T, before map[string]int64) {
			t.Helper()
			after := podIn()
			if n := reached(after) - reached(before); n != 0 {
				var grew []string
				for k, v := range after {
					if v != before[k] {
						grew = append(grew, fmt.Sprintf("%s+%d", k, v-before[k]))
					}
				}
				slices.Sort(grew)
				t.Errorf("pod1 received %d packets, want none; its counters grew: %s", n, strings.Join(grew, " "))
			}
		}

		// Other endpoints: (namespace, source address and port).
		type sender struct {
			name string
			ns   *Netns
			src  netip.AddrPort
		}
		others := func(remotePort uint16) []sender {
			return []sender{
				{"internet host, other port", tp.Internet.Netns, netip.AddrPortFrom(InternetIP, remotePort+1)},
				{"vpc host, same port", tp.VPC.Netns, netip.AddrPortFrom(VPCIP, remotePort)},
				{"link-local host, same port", tp.LinkLocal.Netns, netip.AddrPortFrom(LinkLocalIP, remotePort)},
				{"router, same port", tp.Router, netip.AddrPortFrom(RouterNodeIP, remotePort)},
			}
		}

		t.Run("udp from other endpoints", func(t *testing.T) {
			u := openUDP(t, tp.Pod1, 0) // unconnected: takes datagrams from anyone
			node, err := u.exchange(tp.Internet.UDPAddr(), ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if node.Addr() != NodeIP {
				t.Fatalf("server saw %s, want address %s", node, NodeIP)
			}
			before, inBefore, noPorts := readStats(t, a), podIn(), counter(t, tp.Node, "Udp.NoPorts")
			senders := others(UDPPort)
			for _, s := range senders {
				if err := s.ns.sendRaw(udpPacket(s.src, node, 64, []byte("not for the pod: "+s.name))); err != nil {
					t.Fatal(err)
				}
			}
			u.expectNothing(t, quietTime, "datagrams from other endpoints to the mapping's node port")
			podQuiet(t, inBefore)
			// They reached the node, which has no socket on that port.
			if n := counter(t, tp.Node, "Udp.NoPorts") - noPorts; n != int64(len(senders)) {
				t.Errorf("node: Udp.NoPorts grew by %d, want %d (one per sender)", n, len(senders))
			}
			if d := readStats(t, a).delta(before); d["ingress_miss"] < uint64(len(senders)) || d["ingress_translated"] != 0 {
				t.Errorf("datapath: want %d ingress_miss and no ingress_translated: %v", len(senders), d)
			}
			if again, err := u.exchange(tp.Internet.UDPAddr(), ProbeTimeout); err != nil || again != node {
				t.Errorf("the flow afterwards: server saw %s (%v), want %s", again, err, node)
			}
		})

		t.Run("tcp from other endpoints", func(t *testing.T) {
			c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 0, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			node := c.Peer
			if node.Addr() != NodeIP {
				t.Fatalf("server saw %s, want address %s", node, NodeIP)
			}
			before, inBefore, inSegs := readStats(t, a), podIn(), counter(t, tp.Node, "Tcp.InSegs")
			senders := others(TCPPort)
			for _, s := range senders {
				pkts := [][]byte{
					tcpPacket(s.src, node, tcpSYN, 1000, 0, nil),
					tcpPacket(s.src, node, tcpACK|tcpPSH, 2000, 3000, []byte("not for the pod: "+s.name)),
				}
				if err := s.ns.sendRaw(pkts...); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(quietTime)
			podQuiet(t, inBefore)
			if n := counter(t, tp.Node, "Tcp.InSegs") - inSegs; n != int64(2*len(senders)) {
				t.Errorf("node: Tcp.InSegs grew by %d, want %d (two per sender)", n, 2*len(senders))
			}
			// The node answers each probe with a RST; where the datapath
			// reserves the tuple of a host RST, the data segment after
			// the SYN counts as ingress_host instead of ingress_miss.
			if d := readStats(t, a).delta(before); d["ingress_miss"]+d["ingress_host"] < uint64(2*len(senders)) || d["ingress_translated"] != 0 {
				t.Errorf("datapath: want %d ingress_miss or ingress_host and no ingress_translated: %v", 2*len(senders), d)
			}
			if err := c.Echo([]byte("undisturbed\n"), ProbeTimeout); err != nil {
				t.Errorf("the connection afterwards: %v", err)
			}
		})

		t.Run("port unreachable from the remote", func(t *testing.T) {
			// Nothing listens on port 9 of the internet host: its port
			// unreachable, about the node port, must make the pod's
			// connected socket fail.
			before := readStats(t, a)
			dst := netip.AddrPortFrom(InternetIP, 9)
			u, err := dialUDP(tp.Pod1, dst, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if _, err := u.Write([]byte("anyone?")); err != nil {
				t.Fatal(err)
			}
			u.SetReadDeadline(time.Now().Add(ProbeTimeout))
			_, err = u.Read(make([]byte, 64))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("pod1 udp -> %s: read: %v, want ECONNREFUSED; datapath counters %v", dst, err, readStats(t, a).delta(before))
			}
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("ingress_icmp_error did not grow: %v", d)
			}
		})

		t.Run("time exceeded from the router", func(t *testing.T) {
			// TTL 2: the node forwards with TTL 1, the router cannot.
			before := readStats(t, a)
			u, err := dialUDP(tp.Pod1, tp.Internet.UDPAddr(), 2)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if _, err := u.Write([]byte("too far")); err != nil {
				t.Fatal(err)
			}
			ee, from, err := udpErrQueue(u, ProbeTimeout)
			switch {
			case err != nil:
				t.Errorf("pod1 udp with TTL 2: no error queued: %v; datapath counters %v", err, readStats(t, a).delta(before))
			case ee.Origin != unix.SO_EE_ORIGIN_ICMP || ee.Type != 11 || ee.Code != 0 || from != RouterNodeIP:
				t.Errorf("pod1 udp with TTL 2: error origin %d type %d code %d from %s, want ICMP time exceeded (11/0) from %s",
					ee.Origin, ee.Type, ee.Code, from, RouterNodeIP)
			}

			start := time.Now()
			_, err = dialTCPTTL(tp.Pod1, tp.Internet.TCPAddr(), 2, ProbeTimeout)
			if !errors.Is(err, syscall.EHOSTUNREACH) {
				t.Errorf("pod1 tcp connect with TTL 2: %v, want EHOSTUNREACH (no route to host)", err)
			} else if took := time.Since(start); took > 900*time.Millisecond {
				t.Errorf("pod1 tcp connect with TTL 2 failed after %v: the first SYN's error did not arrive", took)
			}
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] < 2 {
				t.Errorf("ingress_icmp_error grew by %d, want >= 2: %v", d["ingress_icmp_error"], d)
			}
		})

		t.Run("icmp errors quoting another tuple", func(t *testing.T) {
			u, err := dialUDP(tp.Pod1, tp.Internet.UDPAddr(), 0)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			node, err := udpConnExchange(u, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			// Port unreachable about packets the node never sent for
			// this flow: another remote port, another remote address,
			// another node port.
			unreach := func(from netip.Addr, quotedSrc, quotedDst netip.AddrPort) []byte {
				return icmpErrorPacket(from, NodeIP, 3, 3, udpPacket(quotedSrc, quotedDst, 64, []byte("q")), 8)
			}
			wrong := [][]byte{
				unreach(InternetIP, node, netip.AddrPortFrom(InternetIP, UDPPort+1)),
				unreach(InternetIP, node, netip.AddrPortFrom(VPCIP, UDPPort)),
				unreach(InternetIP, netip.AddrPortFrom(NodeIP, node.Port()^1), tp.Internet.UDPAddr()),
			}
			before, inBefore := readStats(t, a), podIn()
			if err := tp.Internet.sendRaw(wrong...); err != nil {
				t.Fatal(err)
			}
			if ee, from, err := udpErrQueue(u, quietTime); err == nil {
				t.Errorf("pod1 got an error (type %d code %d from %s) for an ICMP error quoting another tuple", ee.Type, ee.Code, from)
			}
			podQuiet(t, inBefore)
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] != 0 || d["ingress_miss"] < uint64(len(wrong)) {
				t.Errorf("datapath: want %d ingress_miss and no ingress_icmp_error: %v", len(wrong), d)
			}

			// Control: the same packet quoting the flow's exact tuple,
			// sent by the router, with a quote of only 8 bytes of UDP.
			before = readStats(t, a)
			if err := tp.Router.sendRaw(unreach(RouterNodeIP, node, tp.Internet.UDPAddr())); err != nil {
				t.Fatal(err)
			}
			ee, from, err := udpErrQueue(u, ProbeTimeout)
			switch {
			case err != nil:
				t.Errorf("pod1: no error for a port unreachable quoting its flow: %v; datapath counters %v", err, readStats(t, a).delta(before))
			case ee.Type != 3 || ee.Code != 3 || from != RouterNodeIP:
				t.Errorf("pod1: error type %d code %d from %s, want port unreachable (3/3) from %s", ee.Type, ee.Code, from, RouterNodeIP)
			}
		})
	})
}

// dialUDP opens a connected UDP socket from the namespace to dst with
// IP_RECVERR on, and IP_TTL ttl unless 0.
func dialUDP(n *Netns, dst netip.AddrPort, ttl int) (*net.UDPConn, error) {
	var conn net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
				if serr == nil && ttl != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
				}
			})
			return errors.Join(err, serr)
		}}
		conn, err = d.Dial("udp4", dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: udp dial %s: %w", n, dst, err)
	}
	return conn.(*net.UDPConn), nil
}

// udpConnExchange runs one token exchange with a UDPServer on a connected
// socket and returns the client address the server saw.
func udpConnExchange(u *net.UDPConn, timeout time.Duration) (netip.AddrPort, error) {
	token := "udp-" + randomSuffix(16)
	if _, err := u.Write([]byte(token)); err != nil {
		return netip.AddrPort{}, err
	}
	u.SetReadDeadline(time.Now().Add(timeout))
	defer u.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for {
		m, err := u.Read(buf)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("udp %s -> %s: %w", u.LocalAddr(), u.RemoteAddr(), err)
		}
		if got, peer, ok := strings.Cut(string(buf[:m]), " "); ok && got == token {
			return netip.ParseAddrPort(peer)
		}
	}
}

// udpErrQueue waits up to timeout for an IP_RECVERR message on the socket's
// error queue.
func udpErrQueue(u *net.UDPConn, timeout time.Duration) (unix.SockExtendedErr, netip.Addr, error) {
	rc, err := u.SyscallConn()
	if err != nil {
		return unix.SockExtendedErr{}, netip.Addr{}, err
	}
	var ee unix.SockExtendedErr
	var from netip.Addr
	var qerr error
	if err := rc.Control(func(fd uintptr) { ee, from, qerr = waitErrQueue(int(fd), timeout) }); err != nil {
		return ee, from, err
	}
	return ee, from, qerr
}

// dialTCPTTL connects from the namespace to dst with IP_TTL ttl.
func dialTCPTTL(n *Netns, dst netip.AddrPort, ttl int, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl) })
			return errors.Join(err, serr)
		}}
		conn, err = d.Dial("tcp4", dst.String())
		return err
	})
	return conn, err
}
