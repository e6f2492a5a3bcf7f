package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestEarlyDropUnderSpray: with a NAT table of 64 entries (32 flows), one
// pod sprays UDP datagrams to ever new ports of the internet host, where
// nothing answers, so the table stays full of flows that never get a reply;
// meanwhile the other pod's new TCP connections still open, masqueraded, and
// keep working while the spray goes on: their flows got replies, so early
// drop takes the spray's oldest flows instead (counted as nat_early_drop).
func TestEarlyDropUnderSpray(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--nat-max-entries=64"}})
		spray := openUDP(t, tp.Pod2, 0)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				dst := netip.AddrPortFrom(InternetIP, uint16(20000+i%20000))
				spray.pc.WriteTo([]byte("spray"), net.UDPAddrFromAddrPort(dst))
				time.Sleep(200 * time.Microsecond)
			}
		}()
		defer func() { close(stop); wg.Wait() }()

		// The spray has filled the table once early drop starts.
		if err := eventually(10*time.Second, func() error {
			if d := readStats(t, a); d["nat_early_drop"] == 0 {
				return fmt.Errorf("no early drop yet: %v", d)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		before := readStats(t, a)
		var conns []*TCPConn
		defer func() { closeAll(conns) }()
		for i := range 5 {
			c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 0, ProbeTimeout)
			if err != nil {
				t.Fatalf("connection %d of the other pod during the spray: %v", i+1, err)
			}
			conns = append(conns, c)
			if c.Peer.Addr() != NodeIP {
				t.Errorf("connection %d seen as %s, want the node address %s", i+1, c.Peer, NodeIP)
			}
		}
		time.Sleep(time.Second) // the spray goes on, early drop with it
		for i, c := range conns {
			if err := c.Echo([]byte(fmt.Sprintf("still here %d\n", i)), ProbeTimeout); err != nil {
				t.Errorf("connection %d after a second more of spray: %v", i+1, err)
			}
		}
		d := readStats(t, a).delta(before)
		t.Logf("during the connections: %v", d)
		if d["nat_early_drop"] == 0 {
			t.Errorf("nat_early_drop did not grow while the spray went on: %v", d)
		}
	})
}

// withFlag returns args with the flag name set to value (replaced or added).
func withFlag(args []string, name, value string) []string {
	out := []string{}
	for _, a := range args {
		if !strings.HasPrefix(a, "--"+name+"=") {
			out = append(out, a)
		}
	}
	return append(out, "--"+name+"="+value)
}

// TestResizeUnderTraffic: a 10 ms echo stream through the NAT survives two
// restarts that change --nat-max-entries (larger, then smaller than at
// first) without an error and without a pause of a second: its mapping is
// carried over into each new table before the new programs take over, and
// the pins then hold the new size.
func TestResizeUnderTraffic(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--nat-max-entries=4096"}})
		masq, err := tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer masq.Stop()
		time.Sleep(500 * time.Millisecond)
		for _, size := range []uint32{16384, 1024} {
			a.Stop(t, syscall.SIGTERM)
			a.Args = withFlag(a.Args, "nat-max-entries", fmt.Sprint(size))
			from := a.LogOffset()
			a.Start(t)
			if err := a.WaitLog("Carried a pinned map over", from, 5*time.Second); err != nil {
				t.Fatalf("restart with --nat-max-entries=%d: %v", size, err)
			}
			m, err := ebpf.LoadPinnedMap(filepath.Join(a.PinPath, "ipm_nat4"), &ebpf.LoadPinOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := m.MaxEntries(); got != size {
				t.Errorf("pinned NAT table after the restart: %d entries, want %d", got, size)
			}
			m.Close()
			time.Sleep(500 * time.Millisecond)
		}
		res := masq.Stop()
		t.Logf("stream: %v", res)
		if res.Err != nil || res.MaxGap >= time.Second || res.Peer.Addr() != NodeIP {
			t.Errorf("stream across two resizes: %v; want no error, max gap < 1s, peer %s", res, NodeIP)
		}
	})
}
