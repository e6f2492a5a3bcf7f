package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BigUDPPort is the port of the bigUDPServer that the fragment tests start.
const BigUDPPort = 8083

// bigUDPServer answers a request "<token> <reply size>\n<pattern>" with
// "<token> <peer address> ok\n<pattern>" of the asked size, after checking
// the request's pattern, so both directions can be made as large as wanted.
// A request whose pattern is wrong is answered "<token> <peer> bad".
type bigUDPServer struct {
	conn *net.UDPConn
	done chan struct{}
	mu   sync.Mutex
	seen map[string]netip.AddrPort
}

// pattern is the filler of big datagrams: position-dependent, so a fragment
// in the wrong place or a lost one shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
		if i%100 == 99 {
			b[i] = '\n'
		}
	}
	return b
}

func listenBigUDP(t testing.TB, n *Netns, addr netip.AddrPort) *bigUDPServer {
	t.Helper()
	s := &bigUDPServer{conn: n.listenUDP(t, addr), done: make(chan struct{})}
	go s.serve()
	t.Cleanup(func() { s.conn.Close(); <-s.done })
	return s
}

func (s *bigUDPServer) serve() {
	serveReads(s.done, 65536, s.conn.ReadFromUDPAddrPort, func(b []byte, peer netip.AddrPort) {
		head, body, _ := bytes.Cut(b, []byte("\n"))
		token, sizeStr, _ := strings.Cut(string(head), " ")
		size, err := strconv.Atoi(sizeStr)
		if err != nil || size > 65000 {
			return
		}
		verdict := "ok"
		if !bytes.Equal(body, pattern(len(body))) {
			verdict = "bad"
		}
		reply := []byte(fmt.Sprintf("%s %s %s\n", token, peer, verdict))
		if size > len(reply) {
			reply = append(reply, pattern(size-len(reply))...)
		}
		s.conn.WriteToUDPAddrPort(reply, peer)
	})
}

// bigUDPExchange sends a request of reqSize bytes from the namespace (from
// localPort, 0: ephemeral) to a bigUDPServer at dst, asking for respSize
// bytes back, checks both patterns and returns the peer the server saw.
func bigUDPExchange(n *Netns, dst netip.AddrPort, localPort uint16, reqSize, respSize int, timeout time.Duration) (netip.AddrPort, error) {
	var pc net.PacketConn
	if err := n.Do(func() (err error) {
		pc, err = (&net.ListenConfig{Control: reuseAddr}).ListenPacket(context.Background(), network("udp", dst.Addr()), fmt.Sprintf(":%d", localPort))
		return err
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: udp bind port %d: %w", n, localPort, err)
	}
	defer pc.Close()
	token := "big-" + randomSuffix(12)
	req := []byte(fmt.Sprintf("%s %d\n", token, respSize))
	req = append(req, pattern(reqSize-len(req))...)
	if _, err := pc.WriteTo(req, net.UDPAddrFromAddrPort(dst)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: udp send %d bytes to %s: %w", n, len(req), dst, err)
	}
	pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65536)
	for {
		m, from, err := pc.ReadFrom(buf)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%s: udp %d bytes to %s, %d back: no answer: %w", n, reqSize, dst, respSize, err)
		}
		head, body, _ := bytes.Cut(buf[:m], []byte("\n"))
		f := strings.Fields(string(head))
		if len(f) != 3 || f[0] != token {
			continue
		}
		switch {
		case addrPortOf(from) != dst:
			return netip.AddrPort{}, fmt.Errorf("%s: answer from %s, want %s", n, from, dst)
		case f[2] != "ok":
			return netip.AddrPort{}, fmt.Errorf("%s: server received a corrupted %d-byte request", n, reqSize)
		case m != respSize:
			return netip.AddrPort{}, fmt.Errorf("%s: answer of %d bytes, want %d", n, m, respSize)
		case !bytes.Equal(body, pattern(len(body))):
			return netip.AddrPort{}, fmt.Errorf("%s: corrupted %d-byte answer", n, m)
		}
		return netip.ParseAddrPort(f[1])
	}
}

// TestFragments: UDP datagrams larger than the MTU, masqueraded, fragmented
// by the pod (requests) and by the remote server (replies): every fragment is
// translated both ways, the server sees the node address and gets the whole
// request, the pod gets the whole reply, every checksum verifies (the
// receivers reassemble and check the UDP checksum over the whole datagram),
// and no fragment counts as an orphan. Also a fragmented ping. (docs/behaviour.md
// §5.5.)
func TestFragments(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		listenBigUDP(t, tp.Internet.Netns, netip.AddrPortFrom(InternetIP, BigUDPPort))
		dst := netip.AddrPortFrom(InternetIP, BigUDPPort)

		for _, c := range []struct {
			name          string
			req, resp     int
			fragsOut, fIn bool
		}{
			{"request and reply fragmented", 4000, 4000, true, true},
			{"reply fragmented (large DNS answer)", 100, 4000, false, true},
			{"request fragmented", 4000, 100, true, false},
			{"many fragments both ways", 30000, 30000, true, true},
		} {
			t.Run(c.name, func(t *testing.T) {
				before := readStats(t, a)
				peer, err := bigUDPExchange(tp.Pod1, dst, 0, c.req, c.resp, ProbeTimeout)
				if err != nil {
					t.Fatalf("%v; datapath counters %v", err, readStats(t, a).delta(before))
				}
				if peer.Addr() != NodeIP {
					t.Errorf("server saw %s, want address %s", peer, NodeIP)
				}
				d := readStats(t, a).delta(before)
				if c.fragsOut && d["egress_fragment"] == 0 {
					t.Errorf("egress_fragment did not grow: %v", d)
				}
				if c.fIn && d["ingress_fragment"] == 0 {
					t.Errorf("ingress_fragment did not grow: %v", d)
				}
				if d["egress_frag_orphan"] != 0 || d["ingress_frag_orphan"] != 0 {
					t.Errorf("fragments counted as orphans: %v", d)
				}
			})
		}

		t.Run("both pods, same source port, at once", func(t *testing.T) {
			// Fragments of the two pods' datagrams share the node address
			// on the way out and on the way back; each must reach its pod.
			const port = 47000
			var wg sync.WaitGroup
			peers := make([]netip.AddrPort, 2)
			for i, pod := range []*Netns{tp.Pod1, tp.Pod2} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 5; j++ {
						p, err := bigUDPExchange(pod, dst, port, 6000, 6000, ProbeTimeout)
						if err != nil {
							t.Errorf("round %d: %v", j, err)
							return
						}
						if p.Addr() != NodeIP || (peers[i].IsValid() && p != peers[i]) {
							t.Errorf("%s round %d: server saw %s (before: %s), want one port of %s", pod, j, p, peers[i], NodeIP)
						}
						peers[i] = p
					}
				}()
			}
			wg.Wait()
			if peers[0] == peers[1] {
				t.Errorf("both pods seen as %s", peers[0])
			}
		})

		t.Run("ping", func(t *testing.T) {
			before := readStats(t, a)
			out, err := tp.Pod1.Exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "4000", InternetIP.String())
			if err != nil || !strings.Contains(out, " 2 received") {
				t.Errorf("pod1: ping -s 4000 %s: %v\n%s", InternetIP, err, out)
			}
			d := readStats(t, a).delta(before)
			if d["egress_fragment"] == 0 || d["ingress_fragment"] == 0 {
				t.Errorf("fragments not counted both ways: %v", d)
			}
		})
	})
}
