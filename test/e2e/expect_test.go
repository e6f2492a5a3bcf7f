package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// checkSeen compares the client address a server saw with want. When want is
// the client's own address (no translation), the port must be unchanged too.
func checkSeen(from *Netns, local, seen netip.AddrPort, want netip.Addr) error {
	switch {
	case seen.Addr() != want:
		return fmt.Errorf("server saw %s, want address %s", seen, want)
	case want == from.Addr && seen.Port() != local.Port():
		return fmt.Errorf("server saw %s, want %s:%d (port unchanged)", seen, want, local.Port())
	}
	return nil
}

// tcpSeen opens a new TCP connection from -> to, checks one echo and returns
// what the server saw.
func tcpSeen(from *Netns, to *Host, localPort uint16, timeout time.Duration) (local, seen netip.AddrPort, err error) {
	c, err := from.DialTCP(to.TCPAddr(), localPort, timeout)
	if err != nil {
		return local, seen, err
	}
	defer c.Close()
	if err := c.Echo([]byte("check "+randomSuffix(8)+"\n"), timeout); err != nil {
		return local, seen, err
	}
	return c.Local(), c.Peer, nil
}

// expectTCP checks that a new TCP connection from -> to works and that the
// server sees the source address want.
func expectTCP(t *testing.T, from *Netns, to *Host, want netip.Addr) {
	t.Helper()
	local, seen, err := tcpSeen(from, to, 0, ProbeTimeout)
	if err == nil {
		err = checkSeen(from, local, seen, want)
	}
	if err != nil {
		t.Errorf("TCP %s -> %s: %v", from, to, err)
	}
}

// expectUDP checks that a UDP exchange from -> to works and that the server
// sees the source address want.
func expectUDP(t *testing.T, from *Netns, to *Host, want netip.Addr) {
	t.Helper()
	rep, err := from.UDPPeer(to.UDPAddr(), 0, ProbeTimeout)
	if err == nil {
		err = checkSeen(from, rep.Local, rep.Peer, want)
	}
	if err != nil {
		t.Errorf("UDP %s -> %s: %v", from, to, err)
	}
}

// expectPing checks that an echo request from -> to is answered and that the
// host saw it from want.
func expectPing(t *testing.T, from *Netns, to *Host, want netip.Addr) {
	t.Helper()
	src, err := to.PingSource(from, randomID(), ProbeTimeout)
	if err == nil && src != want {
		err = fmt.Errorf("host saw the echo request from %s, want %s", src, want)
	}
	if err != nil {
		t.Errorf("ping %s -> %s: %v", from, to, err)
	}
}

// expectSource runs expectTCP, expectUDP and expectPing.
func expectSource(t *testing.T, from *Netns, to *Host, want netip.Addr) {
	t.Helper()
	expectTCP(t, from, to, want)
	expectUDP(t, from, to, want)
	expectPing(t, from, to, want)
}

// expectDropped checks that TCP, UDP and ping from -> to all fail and that
// the host's servers received nothing.
func expectDropped(t *testing.T, from *Netns, to *Host) {
	t.Helper()
	const timeout = time.Second
	before := len(to.TCP.Peers())
	if _, err := from.DialTCP(to.TCPAddr(), 0, timeout); err == nil {
		t.Errorf("TCP %s -> %s: connected, want dropped", from, to)
	}
	if n := len(to.TCP.Peers()); n != before {
		t.Errorf("TCP %s -> %s: server accepted %d connections, want none", from, to, n-before)
	}
	rep, err := from.UDPPeer(to.UDPAddr(), 0, timeout)
	if err == nil {
		t.Errorf("UDP %s -> %s: answered (server saw %s), want dropped", from, to, rep.Peer)
	}
	if peer, ok := to.UDP.Seen(rep.Token); ok {
		t.Errorf("UDP %s -> %s: server received the datagram from %s, want dropped", from, to, peer)
	}
	payload, err := from.Ping(to.Addr, randomID(), timeout)
	if err == nil {
		t.Errorf("ping %s -> %s: answered, want dropped", from, to)
	}
	if src, ok := to.ICMP.Source(payload, 0); ok {
		t.Errorf("ping %s -> %s: host received the echo request from %s, want dropped", from, to, src)
	}
}

// eventually calls check every 100 ms until it returns nil or timeout has
// passed; it returns the last error.
func eventually(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
