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
		far := tp.Far

		// Before anything was sent, no pod knows a smaller path MTU.
		for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
			if mtu := routeMTU(t, pod, FarIP); mtu != 0 {
				t.Fatalf("%s: route to %s has mtu %d before any traffic", pod, FarIP, mtu)
			}
		}

		t.Run("tcp upload", func(t *testing.T) {
			before := readStats(t, a)
			c, err := tp.Pod1.DialTCP(far.TCPAddr(), 0, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Peer.Addr() != NodeIP {
				t.Errorf("far server saw %s, want address %s", c.Peer, NodeIP)
			}
			start := time.Now()
			if err := uploadEcho(c, UploadSize, UploadDeadline); err != nil {
				t.Fatalf("upload of %d bytes through the MTU %d hop (%v): %v; datapath counters %v",
					UploadSize, LowMTU, time.Since(start).Round(time.Millisecond), err, readStats(t, a).delta(before))
			}
			t.Logf("uploaded %d bytes and read them back in %v", UploadSize, time.Since(start).Round(time.Millisecond))
			if mtu := routeMTU(t, tp.Pod1, FarIP); mtu != LowMTU {
				t.Errorf("pod1: route to %s has mtu %d after the upload, want %d", FarIP, mtu, LowMTU)
			}
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("ingress_icmp_error did not grow: %v", d)
			}
		})

		t.Run("ping", func(t *testing.T) {
			// 1400 bytes of payload make 1428-byte packets: too big for the
			// hop. ping prints the translated error ("Frag needed and DF
			// set (mtu = 1280)") and then the local one for the next
			// requests ("message too long, mtu=1280"); without the error
			// it prints nothing but a loss.
			before := readStats(t, a)
			out, _ := tp.Pod2.Exec("ping", "-n", "-M", "do", "-s", "1400", "-c", "3", "-i", "0.2", "-W", "1", FarIP.String())
			if !regexp.MustCompile(`mtu ?= ?1280`).MatchString(out) {
				t.Errorf("pod2: ping -M do -s 1400 %s does not report mtu 1280:\n%s", FarIP, out)
			}
			if !strings.Contains(out, "From "+RouterNodeIP.String()) {
				t.Errorf("pod2: ping did not get the router's error (From %s):\n%s", RouterNodeIP, out)
			}
			if mtu := routeMTU(t, tp.Pod2, FarIP); mtu != LowMTU {
				t.Errorf("pod2: route to %s has mtu %d, want %d", FarIP, mtu, LowMTU)
			}
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("ingress_icmp_error did not grow: %v", d)
			}
			// What fits the path goes through, masqueraded.
			if out, err := tp.Pod2.Exec("ping", "-n", "-M", "do", "-s", "1200", "-c", "1", "-W", "2", FarIP.String()); err != nil {
				t.Errorf("pod2: ping -M do -s 1200 %s: %v\n%s", FarIP, err, out)
			}
		})

		t.Run("udp", func(t *testing.T) {
			// Forget what the ping taught pod2.
			tp.Pod2.IP(t, "route", "flush", "cache")
			if mtu := routeMTU(t, tp.Pod2, FarIP); mtu != 0 {
				t.Fatalf("pod2: route to %s still has mtu %d after a flush", FarIP, mtu)
			}
			before := readStats(t, a)
			checkUDPPMTU(t, tp.Pod2, far.UDPAddr())
			if d := readStats(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("ingress_icmp_error did not grow: %v", d)
			}
		})
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

// checkUDPPMTU sends a 1400-byte datagram with DF (IP_PMTUDISC_DO) on a
// connected UDP socket from the namespace to dst, and expects the router's
// "fragmentation needed" on the socket's error queue (IP_RECVERR), a path MTU
// of 1280 on the socket (IP_MTU), EMSGSIZE for the next big datagram, and a
// datagram that fits to be answered through the NAT.
func checkUDPPMTU(t *testing.T, n *Netns, dst netip.AddrPort) {
	t.Helper()
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
			return err
		}
		return unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
	})
	if err != nil {
		t.Fatalf("%s: udp socket to %s: %v", n, dst, err)
	}
	defer unix.Close(fd)

	big := bytes.Repeat([]byte("x"), 1400)
	if _, err := unix.Write(fd, big); err != nil {
		t.Fatalf("%s: first 1400-byte datagram to %s: %v (the path MTU must not be known yet)", n, dst, err)
	}
	ee, offender, err := waitErrQueue(fd, ProbeTimeout)
	if err != nil {
		t.Fatalf("%s: udp to %s: no error on the socket after a 1400-byte datagram with DF: %v", n, dst, err)
	}
	if ee.Origin != unix.SO_EE_ORIGIN_ICMP || ee.Type != 3 || ee.Code != 4 || ee.Info != LowMTU ||
		unix.Errno(ee.Errno) != unix.EMSGSIZE || offender != RouterNodeIP {
		t.Errorf("%s: udp to %s: error queue has origin %d type %d code %d info %d errno %v from %s; "+
			"want ICMP (2) fragmentation needed (3/4) mtu %d EMSGSIZE from %s",
			n, dst, ee.Origin, ee.Type, ee.Code, ee.Info, unix.Errno(ee.Errno), offender, LowMTU, RouterNodeIP)
	}
	if mtu, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU); err != nil || mtu != LowMTU {
		t.Errorf("%s: udp to %s: IP_MTU %d (%v), want %d", n, dst, mtu, err, LowMTU)
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
	if token != string(small) || !strings.HasPrefix(peer, NodeIP.String()+":") {
		t.Errorf("%s: udp to %s: answer %.40q... (peer %q), want the token back and the node address", n, dst, buf[:m], peer)
	}
}

// waitErrQueue polls the socket's error queue until an IP_RECVERR message
// arrives; it returns the extended error and the address of its offender.
func waitErrQueue(fd int, timeout time.Duration) (unix.SockExtendedErr, netip.Addr, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	oob := make([]byte, 512)
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err == nil {
			return parseRecvErr(oob[:oobn])
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

func parseRecvErr(oob []byte) (unix.SockExtendedErr, netip.Addr, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return unix.SockExtendedErr{}, netip.Addr{}, err
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_IP || m.Header.Type != unix.IP_RECVERR {
			continue
		}
		const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if len(m.Data) < eeLen+8 {
			return unix.SockExtendedErr{}, netip.Addr{}, fmt.Errorf("short IP_RECVERR message (%d bytes)", len(m.Data))
		}
		ee := *(*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
		// The offender (SO_EE_OFFENDER) is a sockaddr_in right after it.
		off := netip.AddrFrom4([4]byte(m.Data[eeLen+4 : eeLen+8]))
		return ee, off, nil
	}
	return unix.SockExtendedErr{}, netip.Addr{}, errors.New("no IP_RECVERR control message")
}
