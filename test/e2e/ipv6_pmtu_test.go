package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
		ds := tp.V6
		for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
			if mtu := routeMTU(t, pod, Far6); mtu != 0 {
				t.Fatalf("%s: route to %s has mtu %d before any traffic", pod, Far6, mtu)
			}
		}

		t.Run("tcp upload", func(t *testing.T) {
			before := readStats6(t, a)
			c, err := ds.Pod1.DialTCP(ds.Far.TCPAddr(), 0, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Peer.Addr() != Node6 {
				t.Errorf("far server saw %s, want address %s", c.Peer, Node6)
			}
			start := time.Now()
			if err := uploadEcho(c, UploadSize, UploadDeadline); err != nil {
				t.Fatalf("upload of %d bytes through the MTU %d hop (%v): %v; IPv6 datapath counters %v",
					UploadSize, LowMTU, time.Since(start).Round(time.Millisecond), err, readStats6(t, a).delta(before))
			}
			t.Logf("uploaded %d bytes over IPv6 and read them back in %v", UploadSize, time.Since(start).Round(time.Millisecond))
			if mtu := routeMTU(t, tp.Pod1, Far6); mtu != LowMTU {
				t.Errorf("pod1: route to %s has mtu %d after the upload, want %d", Far6, mtu, LowMTU)
			}
			if d := readStats6(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("IPv6 ingress_icmp_error did not grow: %v", d)
			}
		})

		t.Run("ping", func(t *testing.T) {
			// 1400 bytes of payload make 1448-byte packets: too big for the
			// hop. ping reports the translated error ("Packet too big:
			// mtu=1280" from the router), then fits the next requests.
			before := readStats6(t, a)
			out, _ := tp.Pod2.Exec("ping", "-6", "-n", "-M", "do", "-s", "1400", "-c", "3", "-i", "0.2", "-W", "1", Far6.String())
			if !regexp.MustCompile(`mtu ?= ?1280`).MatchString(out) {
				t.Errorf("pod2: ping -6 -M do -s 1400 %s does not report mtu 1280:\n%s", Far6, out)
			}
			if !strings.Contains(out, "From "+RouterNode6.String()) {
				t.Errorf("pod2: ping did not get the router's error (From %s):\n%s", RouterNode6, out)
			}
			if mtu := routeMTU(t, tp.Pod2, Far6); mtu != LowMTU {
				t.Errorf("pod2: route to %s has mtu %d, want %d", Far6, mtu, LowMTU)
			}
			if d := readStats6(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("IPv6 ingress_icmp_error did not grow: %v", d)
			}
			if out, err := tp.Pod2.Exec("ping", "-6", "-n", "-M", "do", "-s", "1200", "-c", "1", "-W", "2", Far6.String()); err != nil {
				t.Errorf("pod2: ping -6 -M do -s 1200 %s: %v\n%s", Far6, err, out)
			}
		})

		t.Run("udp", func(t *testing.T) {
			tp.Pod2.IP(t, "-6", "route", "flush", "cache")
			if mtu := routeMTU(t, tp.Pod2, Far6); mtu != 0 {
				t.Fatalf("pod2: route to %s still has mtu %d after a flush", Far6, mtu)
			}
			before := readStats6(t, a)
			checkUDPPMTU6(t, tp.Pod2, ds.Far.UDPAddr())
			if d := readStats6(t, a).delta(before); d["ingress_icmp_error"] == 0 {
				t.Errorf("IPv6 ingress_icmp_error did not grow: %v", d)
			}
		})
	})
}

// checkUDPPMTU6 is checkUDPPMTU for IPv6: a 1400-byte datagram with
// IPV6_PMTUDISC_DO on a connected socket brings the router's "packet too
// big" to the socket's error queue (IPV6_RECVERR), IPV6_MTU becomes 1280,
// the next big datagram fails with EMSGSIZE, and one that fits is answered
// through the NAT.
func checkUDPPMTU6(t *testing.T, n *Netns, dst netip.AddrPort) {
	t.Helper()
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1); err != nil {
			return err
		}
		return unix.Connect(fd, &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())})
	})
	if err != nil {
		t.Fatalf("%s: udp6 socket to %s: %v", n, dst, err)
	}
	defer unix.Close(fd)

	big := bytes.Repeat([]byte("x"), 1400)
	if _, err := unix.Write(fd, big); err != nil {
		t.Fatalf("%s: first 1400-byte datagram to %s: %v (the path MTU must not be known yet)", n, dst, err)
	}
	ee, offender, err := waitErrQueue6(fd, ProbeTimeout)
	if err != nil {
		t.Fatalf("%s: udp to %s: no error on the socket after a 1400-byte datagram: %v", n, dst, err)
	}
	if ee.Origin != unix.SO_EE_ORIGIN_ICMP6 || ee.Type != 2 || ee.Code != 0 || ee.Info != LowMTU ||
		unix.Errno(ee.Errno) != unix.EMSGSIZE || offender != RouterNode6 {
		t.Errorf("%s: udp to %s: error queue has origin %d type %d code %d info %d errno %v from %s; "+
			"want ICMPv6 (3) packet too big (2/0) mtu %d EMSGSIZE from %s",
			n, dst, ee.Origin, ee.Type, ee.Code, ee.Info, unix.Errno(ee.Errno), offender, LowMTU, RouterNode6)
	}
	if mtu, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU); err != nil || mtu != LowMTU {
		t.Errorf("%s: udp to %s: IPV6_MTU %d (%v), want %d", n, dst, mtu, err, LowMTU)
	}
	if _, err := unix.Write(fd, big); !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("%s: udp to %s: second 1400-byte datagram: %v, want EMSGSIZE", n, dst, err)
	}
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
	if token != string(small) || !strings.HasPrefix(peer, "["+Node6.String()+"]:") {
		t.Errorf("%s: udp to %s: answer %.40q... (peer %q), want the token back and the node address", n, dst, buf[:m], peer)
	}
}

// waitErrQueue6 polls the socket's error queue until an IPV6_RECVERR
// message arrives; it returns the extended error and its offender.
func waitErrQueue6(fd int, timeout time.Duration) (unix.SockExtendedErr, netip.Addr, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	oob := make([]byte, 512)
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err == nil {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return unix.SockExtendedErr{}, netip.Addr{}, err
			}
			for _, m := range msgs {
				if m.Header.Level != unix.SOL_IPV6 || m.Header.Type != unix.IPV6_RECVERR {
					continue
				}
				const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
				if len(m.Data) < eeLen+24 {
					return unix.SockExtendedErr{}, netip.Addr{}, fmt.Errorf("short IPV6_RECVERR message (%d bytes)", len(m.Data))
				}
				ee := *(*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
				// The offender is a sockaddr_in6 right after it: family,
				// port, flow info, then the address.
				return ee, netip.AddrFrom16([16]byte(m.Data[eeLen+8 : eeLen+24])), nil
			}
			return unix.SockExtendedErr{}, netip.Addr{}, errors.New("no IPV6_RECVERR control message")
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
