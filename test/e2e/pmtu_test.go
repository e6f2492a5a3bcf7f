package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UploadSize and UploadDeadline: a 4 MB upload through the 1280-byte hop
// takes well under a second when PMTU discovery works; without the
// translated "fragmentation needed" it never finishes.
const (
	UploadSize     = 4 << 20
	UploadDeadline = 20 * time.Second
)

// TestPMTUDiscovery: behind a hop with MTU 1280, a server with MTU 1500 is
// reached from the pods through the NAT with path MTU discovery (DF set, the
// Linux default). The router answers the pods' 1500-byte packets with
// "fragmentation needed, MTU 1280" sent to the node address; only an error
// translated back to the pod (outer destination and quote) lets the pod learn
// the path MTU (docs/behaviour.md §5.4).
func TestPMTUDiscovery(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		requireAgent(t)
		tp := NewTopology(t, WithLowMTUHop())
		a := startAgentOn(t, tp, AgentOptions{Mode: mode, Config: cfgPrivate})
		testPMTU(t, tp, pmtuFamily{
			name: "IPv4", pod1: tp.Pod1, far: tp.Far, farIP: FarIP, node: NodeIP, router: RouterNodeIP,
			stats: func(t testing.TB) dpStats { return readStats(t, a) }, sock: errQueue4,
		})
	})
}

// TestIPv6PMTUDiscovery: behind a hop with MTU 1280 (the IPv6 minimum), a
// server with MTU 1500 is reached from the pods through the NAT. IPv6
// routers never fragment: the router answers a pod's 1500-byte packet with
// "packet too big, MTU 1280" sent to the node's address, and only an error
// translated back to the pod (outer destination and quote, ICMPv6 checksum
// over the new pseudo-header) lets the pod learn the path MTU; without it a
// 4 MB upload black-holes (docs/behaviour.md §5.7).
func TestIPv6PMTUDiscovery(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent6(t, mode, WithLowMTUHop())
		testPMTU(t, tp, pmtuFamily{
			name: "IPv6", flag: []string{"-6"}, pod1: tp.V6.Pod1, far: tp.V6.Far, farIP: Far6, node: Node6, router: RouterNode6,
			stats: func(t testing.TB) dpStats { return readStats6(t, a) }, sock: errQueue6,
		})
	})
}

// pmtuFamily is what the IPv4 and the IPv6 path MTU tests differ in.
type pmtuFamily struct {
	name                string
	flag                []string // ping's and ip's option for the family
	pod1                *Netns   // tp.Pod1 with the family's address, to dial from
	far                 *Host
	farIP, node, router netip.Addr
	stats               func(testing.TB) dpStats // the family's datapath counters
	sock                errQueueFamily
}

// testPMTU runs the path MTU cases of one family on a topology with the low
// MTU hop: a TCP upload, ping with DF, and a UDP socket with DF.
func testPMTU(t *testing.T, tp *Topology, f pmtuFamily) {
	// Before anything was sent, no pod knows a smaller path MTU.
	for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
		if mtu := routeMTU(t, pod, f.farIP); mtu != 0 {
			t.Fatalf("%s: route to %s has mtu %d before any traffic", pod, f.farIP, mtu)
		}
	}
	// Each case must see the translated error counted.
	icmpErrorCounted := func(t *testing.T, before dpStats) {
		t.Helper()
		if d := f.stats(t).delta(before); d["ingress_icmp_error"] == 0 {
			t.Errorf("%s ingress_icmp_error did not grow: %v", f.name, d)
		}
	}

	t.Run("tcp upload", func(t *testing.T) {
		before := f.stats(t)
		c, err := f.pod1.DialTCP(f.far.TCPAddr(), 0, ProbeTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if c.Peer.Addr() != f.node {
			t.Errorf("far server saw %s, want address %s", c.Peer, f.node)
		}
		start := time.Now()
		if err := uploadEcho(c, UploadSize, UploadDeadline); err != nil {
			t.Fatalf("upload of %d bytes through the MTU %d hop (%v): %v; %s datapath counters %v",
				UploadSize, LowMTU, time.Since(start).Round(time.Millisecond), err, f.name, f.stats(t).delta(before))
		}
		t.Logf("uploaded %d bytes over %s and read them back in %v", UploadSize, f.name, time.Since(start).Round(time.Millisecond))
		if mtu := routeMTU(t, tp.Pod1, f.farIP); mtu != LowMTU {
			t.Errorf("pod1: route to %s has mtu %d after the upload, want %d", f.farIP, mtu, LowMTU)
		}
		icmpErrorCounted(t, before)
	})

	t.Run("ping", func(t *testing.T) {
		// 1400 bytes of payload make packets too big for the hop. ping
		// prints the translated error (IPv4: "Frag needed and DF set (mtu
		// = 1280)", IPv6: "Packet too big: mtu=1280" from the router), and
		// for IPv4 then the local one for the next requests ("message too
		// long, mtu=1280"); without the error it prints nothing but a loss.
		ping := func(size, count string, more ...string) []string {
			args := append(append([]string{"ping"}, f.flag...), "-n", "-M", "do", "-s", size, "-c", count)
			return append(append(args, more...), f.farIP.String())
		}
		before := f.stats(t)
		args := ping("1400", "3", "-i", "0.2", "-W", "1")
		out, _ := tp.Pod2.Exec(args...)
		if !regexp.MustCompile(`mtu ?= ?1280`).MatchString(out) {
			t.Errorf("pod2: %s does not report mtu 1280:\n%s", strings.Join(args, " "), out)
		}
		if !strings.Contains(out, "From "+f.router.String()) {
			t.Errorf("pod2: ping did not get the router's error (From %s):\n%s", f.router, out)
		}
		if mtu := routeMTU(t, tp.Pod2, f.farIP); mtu != LowMTU {
			t.Errorf("pod2: route to %s has mtu %d, want %d", f.farIP, mtu, LowMTU)
		}
		icmpErrorCounted(t, before)
		// What fits the path goes through, masqueraded.
		args = ping("1200", "1", "-W", "2")
		if out, err := tp.Pod2.Exec(args...); err != nil {
			t.Errorf("pod2: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})

	t.Run("udp", func(t *testing.T) {
		// Forget what the ping taught pod2.
		tp.Pod2.IP(t, append(f.flag, "route", "flush", "cache")...)
		if mtu := routeMTU(t, tp.Pod2, f.farIP); mtu != 0 {
			t.Fatalf("pod2: route to %s still has mtu %d after a flush", f.farIP, mtu)
		}
		before := f.stats(t)
		checkUDPPMTU(t, tp.Pod2, f.far.UDPAddr(), f.sock, f.router, f.node)
		icmpErrorCounted(t, before)
	})
}

// uploadEcho writes size random bytes on the connection to a TCPServer and
// reads the echo back concurrently, all within timeout.
func uploadEcho(c *TCPConn, size int, timeout time.Duration) error {
	data := make([]byte, size)
	rand.Read(data)
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, size)
	n, rerr := io.ReadFull(c.r, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w (%d bytes echoed)", err, n)
	}
	if rerr != nil {
		return fmt.Errorf("read echo: %w (%d of %d bytes)", rerr, n, size)
	}
	if !bytes.Equal(got, data) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

var routeMTURe = regexp.MustCompile(`\bmtu (\d+)\b`)

// routeMTU returns the path MTU that the namespace's route cache holds for
// dst (`ip route get`), 0 when none.
func routeMTU(t testing.TB, n *Netns, dst netip.Addr) int {
	t.Helper()
	out := n.MustExec(t, "ip", "route", "get", dst.String())
	m := routeMTURe.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	var mtu int
	fmt.Sscan(m[1], &mtu)
	return mtu
}

// errQueueFamily is the socket API of one family for the error queue
// checks: the options that turn on path MTU discovery and IP_RECVERR, and
// the extended error that a "fragmentation needed" or "packet too big"
// leaves on the queue.
type errQueueFamily struct {
	domain, level            int // socket domain; option and control message level
	mtuDiscover, pmtuDo, mtu int
	recvErr                  int
	origin, tooBigT, tooBigC uint8 // SO_EE_ORIGIN_ICMP(6), ICMP type and code
	tooBig                   string
	offenderAt, offenderLen  int // the address in the sockaddr after the extended error
	sockaddr                 func(netip.AddrPort) unix.Sockaddr
}

var (
	errQueue4 = errQueueFamily{
		domain: unix.AF_INET, level: unix.IPPROTO_IP,
		mtuDiscover: unix.IP_MTU_DISCOVER, pmtuDo: unix.IP_PMTUDISC_DO, mtu: unix.IP_MTU, recvErr: unix.IP_RECVERR,
		origin: unix.SO_EE_ORIGIN_ICMP, tooBigT: 3, tooBigC: 4, tooBig: "ICMP (2) fragmentation needed (3/4)",
		offenderAt: 4, offenderLen: 4, // sockaddr_in: family, port, address
		sockaddr: func(a netip.AddrPort) unix.Sockaddr {
			return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
		},
	}
	errQueue6 = errQueueFamily{
		domain: unix.AF_INET6, level: unix.IPPROTO_IPV6,
		mtuDiscover: unix.IPV6_MTU_DISCOVER, pmtuDo: unix.IPV6_PMTUDISC_DO, mtu: unix.IPV6_MTU, recvErr: unix.IPV6_RECVERR,
		origin: unix.SO_EE_ORIGIN_ICMP6, tooBigT: 2, tooBigC: 0, tooBig: "ICMPv6 (3) packet too big (2/0)",
		offenderAt: 8, offenderLen: 16, // sockaddr_in6: family, port, flow info, address
		sockaddr: func(a netip.AddrPort) unix.Sockaddr {
			return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
		},
	}
)

// checkUDPPMTU sends a 1400-byte datagram with DF (path MTU discovery "do")
// on a connected UDP socket of family f from the namespace to dst, and
// expects the router's "fragmentation needed" or "packet too big" on the
// socket's error queue (IP(V6)_RECVERR), a path MTU of 1280 on the socket
// (IP(V6)_MTU), EMSGSIZE for the next big datagram, and a datagram that
// fits to be answered through the NAT, seen from the node address.
func checkUDPPMTU(t *testing.T, n *Netns, dst netip.AddrPort, f errQueueFamily, router, node netip.Addr) {
	t.Helper()
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(f.domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, f.level, f.mtuDiscover, f.pmtuDo); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, f.level, f.recvErr, 1); err != nil {
			return err
		}
		return unix.Connect(fd, f.sockaddr(dst))
	})
	if err != nil {
		t.Fatalf("%s: udp socket to %s: %v", n, dst, err)
	}
	defer unix.Close(fd)

	big := bytes.Repeat([]byte("x"), 1400)
	if _, err := unix.Write(fd, big); err != nil {
		t.Fatalf("%s: first 1400-byte datagram to %s: %v (the path MTU must not be known yet)", n, dst, err)
	}
	ee, offender, err := waitErrQueueOf(fd, f, ProbeTimeout)
	if err != nil {
		t.Fatalf("%s: udp to %s: no error on the socket after a 1400-byte datagram with DF: %v", n, dst, err)
	}
	if ee.Origin != f.origin || ee.Type != f.tooBigT || ee.Code != f.tooBigC || ee.Info != LowMTU ||
		unix.Errno(ee.Errno) != unix.EMSGSIZE || offender != router {
		t.Errorf("%s: udp to %s: error queue has origin %d type %d code %d info %d errno %v from %s; "+
			"want %s mtu %d EMSGSIZE from %s",
			n, dst, ee.Origin, ee.Type, ee.Code, ee.Info, unix.Errno(ee.Errno), offender, f.tooBig, LowMTU, router)
	}
	if mtu, err := unix.GetsockoptInt(fd, f.level, f.mtu); err != nil || mtu != LowMTU {
		t.Errorf("%s: udp to %s: path MTU of the socket %d (%v), want %d", n, dst, mtu, err, LowMTU)
	}
	if _, err := unix.Write(fd, big); !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("%s: udp to %s: second 1400-byte datagram: %v, want EMSGSIZE", n, dst, err)
	}
	// A datagram that fits the path is answered by the far server, which
	// saw the node address.
	small := []byte("fits-" + randomSuffix(8) + strings.Repeat("y", 1100))
	if _, err := unix.Write(fd, small); err != nil {
		t.Fatalf("%s: udp to %s: 1100-byte datagram: %v", n, dst, err)
	}
	buf := make([]byte, 4096)
	tv := unix.NsecToTimeval(ProbeTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	m, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("%s: udp to %s: no answer to a datagram that fits: %v", n, dst, err)
	}
	token, peer, _ := strings.Cut(string(buf[:m]), " ")
	if p, err := netip.ParseAddrPort(peer); token != string(small) || err != nil || p.Addr() != node {
		t.Errorf("%s: udp to %s: answer %.40q... (peer %q), want the token back and the node address", n, dst, buf[:m], peer)
	}
}

// waitErrQueue polls the socket's error queue until an IP_RECVERR message
// arrives; it returns the extended error and the address of its offender.
func waitErrQueue(fd int, timeout time.Duration) (unix.SockExtendedErr, netip.Addr, error) {
	return waitErrQueueOf(fd, errQueue4, timeout)
}

// waitErrQueueOf is waitErrQueue for a socket of family f.
func waitErrQueueOf(fd int, f errQueueFamily, timeout time.Duration) (unix.SockExtendedErr, netip.Addr, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	oob := make([]byte, 512)
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err == nil {
			return parseRecvErr(oob[:oobn], f)
		}
		if !errors.Is(err, unix.EAGAIN) {
			return unix.SockExtendedErr{}, netip.Addr{}, err
		}
		if time.Now().After(deadline) {
			return unix.SockExtendedErr{}, netip.Addr{}, fmt.Errorf("nothing within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func parseRecvErr(oob []byte, f errQueueFamily) (unix.SockExtendedErr, netip.Addr, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return unix.SockExtendedErr{}, netip.Addr{}, err
	}
	for _, m := range msgs {
		if int(m.Header.Level) != f.level || int(m.Header.Type) != f.recvErr {
			continue
		}
		const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		at := eeLen + f.offenderAt
		if len(m.Data) < at+f.offenderLen {
			return unix.SockExtendedErr{}, netip.Addr{}, fmt.Errorf("short IP(V6)_RECVERR message (%d bytes)", len(m.Data))
		}
		ee := *(*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
		// The offender (SO_EE_OFFENDER) is a sockaddr right after it.
		off, _ := netip.AddrFromSlice(m.Data[at : at+f.offenderLen])
		return ee, off, nil
	}
	return unix.SockExtendedErr{}, netip.Addr{}, errors.New("no IP(V6)_RECVERR control message")
}
