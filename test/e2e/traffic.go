package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ProbeTimeout bounds one probe (connect plus answer) where an answer is
// expected; a probe that must fail waits this long too.
const ProbeTimeout = 3 * time.Second

// reuseAddr sets SO_REUSEADDR, so that a fixed local port can be bound again
// while an earlier socket on it lingers.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}

// network names the Go network of proto ("tcp", "udp") for the family of a:
// "tcp4" for IPv4, "tcp6" for IPv6.
func network(proto string, a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// --- TCP -------------------------------------------------------------------

// TCPServer accepts connections, writes the peer address it saw as the first
// line ("10.244.1.2:40000\n") and then echoes every byte back.
type TCPServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	peers []netip.AddrPort
	conns map[net.Conn]struct{}
}

// ListenTCP starts a TCPServer on addr inside the namespace; t.Cleanup stops it.
func (n *Netns) ListenTCP(t testing.TB, addr netip.AddrPort) *TCPServer {
	t.Helper()
	s := &TCPServer{conns: map[net.Conn]struct{}{}}
	err := n.Do(func() (err error) {
		lc := net.ListenConfig{Control: reuseAddr}
		s.ln, err = lc.Listen(context.Background(), network("tcp", addr.Addr()), addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("netns %s: listen tcp %s: %v", n.Name, addr, err)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

func (s *TCPServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		peer := addrPortOf(c.RemoteAddr())
		s.mu.Lock()
		s.peers = append(s.peers, peer)
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			if _, err := fmt.Fprintf(c, "%s\n", peer); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

// Peers returns the peer address of every connection accepted so far.
func (s *TCPServer) Peers() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.peers...)
}

// Close stops the server and closes its connections.
func (s *TCPServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// TCPConn is a client connection to a TCPServer.
type TCPConn struct {
	net.Conn
	Peer netip.AddrPort // the client address the server saw
	r    *bufio.Reader
}

// DialTCP connects from inside the namespace to a TCPServer at dst, from
// localPort (0: ephemeral), and reads the peer line. The connection can be
// used from any goroutine.
func (n *Netns) DialTCP(dst netip.AddrPort, localPort uint16, timeout time.Duration) (*TCPConn, error) {
	var conn net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout, Control: reuseAddr}
		if localPort != 0 {
			d.LocalAddr = &net.TCPAddr{Port: int(localPort)}
		}
		conn, err = d.Dial(network("tcp", dst.Addr()), dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: tcp dial %s from port %d: %w", n.Name, dst, localPort, err)
	}
	c := &TCPConn{Conn: conn, r: bufio.NewReader(conn)}
	conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.r.ReadString('\n')
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("netns %s: tcp %s -> %s: read peer line: %w", n.Name, conn.LocalAddr(), dst, err)
	}
	c.Peer, err = netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("netns %s: tcp %s -> %s: bad peer line %q: %w", n.Name, conn.LocalAddr(), dst, line, err)
	}
	return c, nil
}

// Local returns the client's own address.
func (c *TCPConn) Local() netip.AddrPort { return addrPortOf(c.LocalAddr()) }

// Echo sends msg and waits until the same bytes come back.
func (c *TCPConn) Echo(msg []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("tcp %s: write: %w", c.LocalAddr(), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c.r, got); err != nil {
		return fmt.Errorf("tcp %s: read echo: %w", c.LocalAddr(), err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("tcp %s: echo %q, want %q", c.LocalAddr(), got, msg)
	}
	return nil
}

// TCPPeer opens a new connection from the namespace to dst, exchanges one
// echo and closes it; it returns the client address the server saw.
func (n *Netns) TCPPeer(dst netip.AddrPort, localPort uint16, timeout time.Duration) (netip.AddrPort, error) {
	c, err := n.DialTCP(dst, localPort, timeout)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	if err := c.Echo([]byte("hello "+randomSuffix(8)+"\n"), timeout); err != nil {
		return netip.AddrPort{}, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return c.Peer, nil
}

// --- UDP -------------------------------------------------------------------

// UDPServer answers every datagram "<token>" with "<token> <peer address>" and
// remembers which peer sent which token.
type UDPServer struct {
	conn *net.UDPConn
	done chan struct{}
	mu   sync.Mutex
	seen map[string]netip.AddrPort
}

// ListenUDP starts a UDPServer on addr inside the namespace; t.Cleanup stops it.
func (n *Netns) ListenUDP(t testing.TB, addr netip.AddrPort) *UDPServer {
	t.Helper()
	s := &UDPServer{conn: n.listenUDP(t, addr), done: make(chan struct{}), seen: map[string]netip.AddrPort{}}
	go s.serve()
	t.Cleanup(func() { s.conn.Close(); <-s.done })
	return s
}

// listenUDP opens a UDP socket on addr inside the namespace, for a server.
func (n *Netns) listenUDP(t testing.TB, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := n.Do(func() (err error) {
		conn, err = net.ListenUDP(network("udp", addr.Addr()), net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("netns %s: listen udp %s: %v", n.Name, addr, err)
	}
	return conn
}

func (s *UDPServer) serve() {
	serveReads(s.done, 2048, s.conn.ReadFromUDPAddrPort, func(b []byte, peer netip.AddrPort) {
		token := string(b)
		s.mu.Lock()
		s.seen[token] = peer
		s.mu.Unlock()
		s.conn.WriteToUDPAddrPort([]byte(token+" "+peer.String()), peer)
	})
}

// serveReads hands every read of read (into a buffer of bufSize bytes) to
// handle, skipping failed reads, until the socket is closed; then it closes
// done.
func serveReads[A any](done chan struct{}, bufSize int, read func([]byte) (int, A, error), handle func(b []byte, from A)) {
	defer close(done)
	buf := make([]byte, bufSize)
	for {
		n, from, err := read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		handle(buf[:n], from)
	}
}

// Seen returns the peer that sent token, if the server received it.
func (s *UDPServer) Seen(token string) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.seen[token]
	return p, ok
}

// UDPReply is the outcome of one UDP exchange.
type UDPReply struct {
	Token string         // what was sent (set also when the exchange failed)
	Local netip.AddrPort // the client's own address (address unspecified)
	Peer  netip.AddrPort // the client address the server saw
}

// UDPPeer sends one datagram from the namespace (from localPort, 0:
// ephemeral) to a UDPServer at dst and waits for its answer, which must come
// from dst itself.
func (n *Netns) UDPPeer(dst netip.AddrPort, localPort uint16, timeout time.Duration) (UDPReply, error) {
	rep := UDPReply{Token: "udp-" + randomSuffix(16)}
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		lc := net.ListenConfig{Control: reuseAddr}
		pc, err = lc.ListenPacket(context.Background(), network("udp", dst.Addr()), fmt.Sprintf(":%d", localPort))
		return err
	})
	if err != nil {
		return rep, fmt.Errorf("netns %s: udp bind port %d: %w", n.Name, localPort, err)
	}
	defer pc.Close()
	rep.Local = addrPortOf(pc.LocalAddr())
	if _, err := pc.WriteTo([]byte(rep.Token), net.UDPAddrFromAddrPort(dst)); err != nil {
		return rep, fmt.Errorf("netns %s: udp send to %s: %w", n.Name, dst, err)
	}
	pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	for {
		m, from, err := pc.ReadFrom(buf)
		if err != nil {
			return rep, fmt.Errorf("netns %s: udp %s -> %s: no answer: %w", n.Name, pc.LocalAddr(), dst, err)
		}
		token, peer, ok := strings.Cut(string(buf[:m]), " ")
		if !ok || token != rep.Token {
			continue // an answer to an earlier exchange on this port
		}
		if got := addrPortOf(from); got != dst {
			return rep, fmt.Errorf("netns %s: udp answer from %s, want %s", n.Name, got, dst)
		}
		rep.Peer, err = netip.ParseAddrPort(peer)
		if err != nil {
			return rep, fmt.Errorf("netns %s: udp bad answer %q: %w", n.Name, buf[:m], err)
		}
		return rep, nil
	}
}

// --- ICMP ------------------------------------------------------------------

// Echo request and reply types, ICMP and ICMPv6.
const (
	icmpEchoReply    = 0
	icmpEchoRequest  = 8
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
)

// icmpSocket is the raw socket network, local address and echo types of
// a's family. An ICMPv6 raw socket has the kernel compute the checksum of
// what it sends (over the IPv6 pseudo-header) and verify what it delivers.
func icmpSocket(a netip.Addr) (netw, laddr string, request, reply byte) {
	if a.Is6() && !a.Is4In6() {
		return "ip6:ipv6-icmp", "::", icmp6EchoRequest, icmp6EchoReply
	}
	return "ip4:icmp", "0.0.0.0", icmpEchoRequest, icmpEchoReply
}

// icmpChecksum is the Internet checksum of b.
func icmpChecksum(b []byte) uint16 { return ^uint16(sum16(b, 0)) }

// sum16 is the one's complement sum of b folded to 16 bits, not inverted.
func sum16(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return sum
}

func icmpEcho(typ uint8, id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return b
}

// ICMPListener is a raw ICMP socket on a host that records the source address
// of every echo request by its payload. The kernel still answers the request
// itself; the listener also recomputes the ICMP checksum of what it receives
// (raw sockets get packets before the ICMP layer verifies them). On an IPv6
// host (the namespace's Addr) it listens for ICMPv6, whose raw sockets get
// only packets with a right checksum (the kernel drops the others).
type ICMPListener struct {
	conn    net.PacketConn
	request byte
	v6      bool
	done    chan struct{}
	mu      sync.Mutex
	seen    map[string]netip.Addr
	badSums int
}

// ListenICMP starts an ICMPListener inside the namespace; t.Cleanup stops it.
func (n *Netns) ListenICMP(t testing.TB) *ICMPListener {
	t.Helper()
	l := &ICMPListener{done: make(chan struct{}), seen: map[string]netip.Addr{}}
	netw, laddr, req, _ := icmpSocket(n.Addr)
	l.request, l.v6 = req, netw != "ip4:icmp"
	err := n.Do(func() (err error) {
		l.conn, err = net.ListenPacket(netw, laddr)
		return err
	})
	if err != nil {
		t.Fatalf("netns %s: raw icmp socket: %v", n.Name, err)
	}
	go l.serve()
	t.Cleanup(func() { l.conn.Close(); <-l.done })
	return l
}

func (l *ICMPListener) serve() {
	serveReads(l.done, 2048, l.conn.ReadFrom, func(b []byte, from net.Addr) {
		if len(b) < 8 || b[0] != l.request {
			return
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		l.mu.Lock()
		if !l.v6 && icmpChecksum(b) != 0 {
			l.badSums++
		} else {
			l.seen[string(b[8:])] = src.Unmap()
		}
		l.mu.Unlock()
	})
}

// Source waits up to timeout for the echo request carrying payload and
// returns its source address.
func (l *ICMPListener) Source(payload string, timeout time.Duration) (netip.Addr, bool) {
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		a, ok := l.seen[payload]
		l.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return a, ok
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BadChecksums counts echo requests that arrived with a wrong ICMP checksum.
func (l *ICMPListener) BadChecksums() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.badSums
}

// Ping sends one echo request with identifier id from the namespace to dst
// and waits for the matching reply (same identifier, sequence and payload,
// from dst, correct checksum). It returns the payload, a unique token.
func (n *Netns) Ping(dst netip.Addr, id uint16, timeout time.Duration) (string, error) {
	payload := "ping-" + randomSuffix(16)
	var pc net.PacketConn
	netw, laddr, request, reply := icmpSocket(dst)
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(netw, laddr)
		return err
	})
	if err != nil {
		return payload, fmt.Errorf("netns %s: raw icmp socket: %w", n.Name, err)
	}
	defer pc.Close()
	const seq = 1
	if _, err := pc.WriteTo(icmpEcho(request, id, seq, []byte(payload)), &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return payload, fmt.Errorf("netns %s: send echo request to %s: %w", n.Name, dst, err)
	}
	pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	for {
		m, from, err := pc.ReadFrom(buf)
		if err != nil {
			return payload, fmt.Errorf("netns %s: ping %s id %d: no reply: %w", n.Name, dst, id, err)
		}
		b := buf[:m]
		if m < 8 || b[0] != reply || string(b[8:]) != payload {
			continue
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		switch {
		case src.Unmap() != dst:
			return payload, fmt.Errorf("netns %s: echo reply from %s, want %s", n.Name, src, dst)
		case binary.BigEndian.Uint16(b[4:]) != id || binary.BigEndian.Uint16(b[6:]) != seq:
			return payload, fmt.Errorf("netns %s: echo reply id %d seq %d, want id %d seq %d",
				n.Name, binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), id, seq)
		case reply == icmpEchoReply && icmpChecksum(b) != 0: // ICMPv6: verified by the kernel
			return payload, fmt.Errorf("netns %s: echo reply from %s with a wrong ICMP checksum", n.Name, src)
		}
		return payload, nil
	}
}

// PingSource pings the host from the namespace with identifier id and
// returns the source address the host saw on the echo request.
func (h *Host) PingSource(from *Netns, id uint16, timeout time.Duration) (netip.Addr, error) {
	payload, err := from.Ping(h.Addr, id, timeout)
	if err != nil {
		return netip.Addr{}, err
	}
	src, ok := h.ICMP.Source(payload, time.Second)
	if !ok {
		return netip.Addr{}, fmt.Errorf("netns %s: echo reply arrived but %s recorded no request %q", from.Name, h.Name, payload)
	}
	return src, nil
}

// randomID returns a random ICMP identifier.
func randomID() uint16 {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return binary.BigEndian.Uint16(b[:])
}

// --- stream ----------------------------------------------------------------

// streamMsgLen is the size of one stream message: a 15-digit sequence number
// and a newline.
const streamMsgLen = 16

// Stream is a long-lived TCP connection that sends a small message every
// interval and reads its echo, recording the longest time without an echo.
type Stream struct {
	conn     *TCPConn
	interval time.Duration
	start    time.Time

	sent, echoed atomic.Int64
	stop         chan struct{}
	writerDone   chan struct{}
	readerDone   chan struct{}
	stopping     atomic.Bool

	mu       sync.Mutex
	lastEcho time.Time
	maxGap   time.Duration
	err      error
	stopped  *StreamResult
}

// StreamResult is what a Stream observed.
type StreamResult struct {
	Peer   netip.AddrPort // the client address the server saw
	Sent   int64
	Echoed int64
	MaxGap time.Duration // longest time without an echo (also before the first and after the last)
	Err    error         // the first error: reset, timeout, wrong echo
}

func (r StreamResult) String() string {
	return fmt.Sprintf("peer %s, sent %d, echoed %d, max gap %v, error %v", r.Peer, r.Sent, r.Echoed, r.MaxGap, r.Err)
}

// StartStream connects from the namespace to the TCPServer at dst and starts
// sending one message every interval.
func (n *Netns) StartStream(dst netip.AddrPort, interval time.Duration) (*Stream, error) {
	c, err := n.DialTCP(dst, 0, ProbeTimeout)
	if err != nil {
		return nil, err
	}
	s := &Stream{
		conn: c, interval: interval, start: time.Now(),
		stop: make(chan struct{}), writerDone: make(chan struct{}), readerDone: make(chan struct{}),
	}
	s.lastEcho = s.start
	go s.write()
	go s.read()
	return s, nil
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *Stream) write() {
	defer close(s.writerDone)
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		msg := fmt.Sprintf("%015d\n", s.sent.Load())
		s.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := s.conn.Write([]byte(msg)); err != nil {
			s.fail(fmt.Errorf("write message %d: %w", s.sent.Load(), err))
			return
		}
		s.sent.Add(1)
	}
}

func (s *Stream) read() {
	defer close(s.readerDone)
	buf := make([]byte, streamMsgLen)
	for {
		s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s.conn.r, buf); err != nil {
			if !s.stopping.Load() {
				s.fail(fmt.Errorf("read echo %d: %w", s.echoed.Load(), err))
			}
			return
		}
		now := time.Now()
		if want := fmt.Sprintf("%015d\n", s.echoed.Load()); string(buf) != want {
			s.fail(fmt.Errorf("echo %q, want %q", buf, want))
			return
		}
		s.echoed.Add(1)
		s.mu.Lock()
		if gap := now.Sub(s.lastEcho); gap > s.maxGap {
			s.maxGap = gap
		}
		s.lastEcho = now
		s.mu.Unlock()
	}
}

// Err returns the first error seen so far.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Echoed is the number of echoes received so far.
func (s *Stream) Echoed() int64 { return s.echoed.Load() }

// Stop stops sending, waits for the outstanding echoes (up to 2 s), closes
// the connection and returns the result. It can be called more than once.
func (s *Stream) Stop() StreamResult {
	s.mu.Lock()
	if s.stopped != nil {
		defer s.mu.Unlock()
		return *s.stopped
	}
	s.mu.Unlock()
	stopAt := time.Now()
	close(s.stop)
	<-s.writerDone
	for deadline := time.Now().Add(2 * time.Second); s.echoed.Load() < s.sent.Load() && time.Now().Before(deadline); {
		select {
		case <-s.readerDone:
			deadline = time.Time{}
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.stopping.Store(true)
	s.conn.SetReadDeadline(time.Now())
	<-s.readerDone
	s.conn.Close()

	s.mu.Lock()
	defer s.mu.Unlock()
	res := StreamResult{Peer: s.conn.Peer, Sent: s.sent.Load(), Echoed: s.echoed.Load(), MaxGap: s.maxGap, Err: s.err}
	if gap := stopAt.Sub(s.lastEcho); gap > res.MaxGap {
		res.MaxGap = gap
	}
	if res.Err == nil && res.Echoed < res.Sent {
		res.Err = fmt.Errorf("%d of %d messages never came back", res.Sent-res.Echoed, res.Sent)
	}
	s.stopped = &res
	return res
}
