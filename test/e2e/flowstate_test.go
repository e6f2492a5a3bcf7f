package e2e

import (
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// podSourceCounter counts, in the router, packets towards the internet
// whose source is a pod address: on the far side of the uplink none may
// ever appear. It returns a function reading the count.
func podSourceCounter(t *testing.T, tp *Topology) func() int {
	t.Helper()
	rule := []string{"PREROUTING", "-s", ClusterCIDR.String(), "-d", InternetLAN.String()}
	tp.Router.MustExec(t, append([]string{"iptables", "-w", "-t", "raw", "-I"}, rule...)...)
	t.Cleanup(func() { tp.Router.Exec(append([]string{"iptables", "-w", "-t", "raw", "-D"}, rule...)...) })
	return func() int {
		out := tp.Router.MustExec(t, "iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-n", "-x")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 2 && slices.Contains(f, ClusterCIDR.String()) {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
		t.Fatalf("pod-source counter rule not found:\n%s", out)
		return 0
	}
}

// TestIdleConnectionPastTimeout: an echo connection idle past a shortened
// --tcp-established-timeout either still works or fails within 5 s (the
// datapath answers the pod's next segment with a RST), and no packet with a
// pod source ever leaves the uplink.
func TestIdleConnectionPastTimeout(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate,
			ExtraArgs: []string{"--tcp-established-timeout=2s", "--gc-interval=1s"}})
		leaked := podSourceCounter(t, tp)
		c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 0, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Echo([]byte("before the silence\n"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		before := readStats(t, a)
		time.Sleep(6 * time.Second) // the timeout, two collections and margin
		start := time.Now()
		err = c.Echo([]byte("after the silence\n"), 10*time.Second)
		took := time.Since(start)
		switch {
		case err == nil:
			t.Logf("the connection still works after %v of silence", 6*time.Second)
		case took > 5*time.Second:
			t.Errorf("the connection hung %v before failing (%v), want a failure within 5 s", took, err)
		case !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset"):
			t.Errorf("the connection failed after %v with %v, want a reset", took, err)
		default:
			t.Logf("the connection was reset after %v: %v", took, err)
		}
		if d := readStats(t, a).delta(before); err != nil && d["egress_tcp_reset"] == 0 {
			t.Errorf("failed without a reset from the datapath: counters %v", d)
		}
		if n := leaked(); n != 0 {
			t.Errorf("%d packets with a pod source reached the router", n)
		}
		// A new connection works at once.
		if _, err := tp.Pod1.TCPPeer(tp.Internet.TCPAddr(), 0, 5*time.Second); err != nil {
			t.Errorf("new connection after the reset: %v", err)
		}
	})
}

// TestResetAndReconnectSamePort: a client that closes with a RST and
// reconnects from the same port (the same tuple, so the same mapping) keeps
// a working connection through 15 s of silence with the default timeouts:
// the new SYN starts the mapping afresh instead of inheriting the 10 s
// "reset" lifetime.
func TestResetAndReconnectSamePort(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--gc-interval=1s"}})
		leaked := podSourceCounter(t, tp)
		const port = 41234
		c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), port, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Echo([]byte("first\n"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// Close with a RST: linger 0.
		if tc, ok := c.Conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
		time.Sleep(200 * time.Millisecond)
		c, err = tp.Pod1.DialTCP(tp.Internet.TCPAddr(), port, 5*time.Second)
		if err != nil {
			t.Fatalf("reconnect from port %d: %v", port, err)
		}
		defer c.Close()
		if err := c.Echo([]byte("second\n"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		before := readStats(t, a)
		time.Sleep(15 * time.Second)
		if err := c.Echo([]byte("after 15 s of silence\n"), 5*time.Second); err != nil {
			t.Errorf("the reconnected connection broke after 15 s of silence: %v (counters %v)", err, readStats(t, a).delta(before))
		}
		if n := leaked(); n != 0 {
			t.Errorf("%d packets with a pod source reached the router", n)
		}
	})
}
