package e2e

// Helpers of the hard-case tests (docs/behaviour.md §4-§9): datapath counters, a persistent
// UDP client, and hand-built packets sent from any namespace.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dropTimeout is how long a probe that must fail (its packets are dropped)
// waits.
const dropTimeout = 1500 * time.Millisecond

// startAgentOn starts the agent on a topology the test built itself (for
// example with WithLowMTUHop) and fails the test at its end on any checksum
// error counted by a receiver, like startAgent.
func startAgentOn(t *testing.T, tp *Topology, opts AgentOptions) *Agent {
	t.Helper()
	a := StartAgent(t, tp, opts)
	tp.FailOnChecksumErrors(t)
	return a
}

// dpStats are the IPv4 datapath counters (struct ipm_counters), summed over
// the CPUs, by their C names ("egress_no_port").
type dpStats map[string]uint64

// readStats reads the IPv4 datapath counters, see readStatsKey.
func readStats(t testing.TB, a *Agent) dpStats {
	t.Helper()
	return readStatsKey(t, a, 0, "IPv4")
}

// readStatsKey reads the agent's pinned ipm_stats map with bpftool, which
// prints the fields by name from the map's BTF, and sums the counters of
// key (0: IPv4, 1: IPv6, named family in messages) over the CPUs.
func readStatsKey(t testing.TB, a *Agent, key uint32, family string) dpStats {
	t.Helper()
	pin := filepath.Join(a.PinPath, "ipm_stats")
	out, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", pin).Output()
	if err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v", pin, err)
	}
	var dump []struct {
		Formatted struct {
			Key    uint32 `json:"key"`
			Values []struct {
				Value map[string]uint64 `json:"value"`
			} `json:"values"`
		} `json:"formatted"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v\n%s", pin, err, out)
	}
	s := dpStats{}
	for _, e := range dump {
		if e.Formatted.Key != key {
			continue
		}
		for _, cpu := range e.Formatted.Values {
			for k, v := range cpu.Value {
				s[k] += v
			}
		}
	}
	if len(s) == 0 {
		t.Fatalf("bpftool map dump pinned %s: no formatted %s counters:\n%s", pin, family, out)
	}
	return s
}

// delta returns the counters that grew from before to s, by name.
func (s dpStats) delta(before dpStats) dpStats {
	d := dpStats{}
	for k, v := range s {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

func (s dpStats) String() string {
	var parts []string
	for k, v := range s {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

// counter reads one /proc/net/snmp or netstat counter of the namespace.
func counter(t testing.TB, n *Netns, name string) int64 {
	t.Helper()
	c, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := c[name]
	if !ok {
		t.Fatalf("%s: no counter %s", n, name)
	}
	return v
}

// --- a UDP socket that stays open ------------------------------------------

// udpClient is a UDP socket in a namespace, bound to a fixed or ephemeral
// port, that talks to the UDPServers of the topology (token protocol).
type udpClient struct {
	ns *Netns
	pc net.PacketConn
}

// openUDP binds a UDP socket in the namespace to port (0: ephemeral);
// t.Cleanup closes it.
func openUDP(t testing.TB, n *Netns, port uint16) *udpClient {
	t.Helper()
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("netns %s: udp bind port %d: %v", n.Name, port, err)
	}
	t.Cleanup(func() { pc.Close() })
	return &udpClient{ns: n, pc: pc}
}

// Port is the socket's local port.
func (c *udpClient) Port() uint16 { return addrPortOf(c.pc.LocalAddr()).Port() }

// exchange sends a token to the UDPServer at dst and waits for its answer,
// which must come from dst; it returns the client address the server saw.
func (c *udpClient) exchange(dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	token := "udp-" + randomSuffix(16)
	if _, err := c.pc.WriteTo([]byte(token), net.UDPAddrFromAddrPort(dst)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s udp :%d -> %s: send: %w", c.ns, c.Port(), dst, err)
	}
	c.pc.SetReadDeadline(time.Now().Add(timeout))
	defer c.pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for {
		m, from, err := c.pc.ReadFrom(buf)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%s udp :%d -> %s: no answer: %w", c.ns, c.Port(), dst, err)
		}
		got, peer, ok := strings.Cut(string(buf[:m]), " ")
		if !ok || got != token {
			continue
		}
		if f := addrPortOf(from); f != dst {
			return netip.AddrPort{}, fmt.Errorf("%s udp :%d -> %s: answer from %s", c.ns, c.Port(), dst, f)
		}
		return netip.ParseAddrPort(peer)
	}
}

// expectNothing fails unless the socket receives nothing for d.
func (c *udpClient) expectNothing(t testing.TB, d time.Duration, what string) {
	t.Helper()
	c.pc.SetReadDeadline(time.Now().Add(d))
	defer c.pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	if m, from, err := c.pc.ReadFrom(buf); err == nil {
		t.Errorf("%s: %s udp :%d received %q from %s, want nothing", what, c.ns, c.Port(), buf[:m], from)
	}
}

// --- hand-built packets ----------------------------------------------------

// ipv4Packet builds an IPv4 header (no options, DF clear) in front of
// payload, with a correct header checksum.
func ipv4Packet(src, dst netip.Addr, proto uint8, ttl uint8, id uint16, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	b[8] = ttl
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^uint16(sum16(b[:20], 0)))
	copy(b[20:], payload)
	return b
}

// pseudoSum is the sum of the IPv4 pseudo-header of an L4 segment.
func pseudoSum(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	ph := make([]byte, 12)
	copy(ph, s[:])
	copy(ph[4:], d[:])
	ph[9] = proto
	binary.BigEndian.PutUint16(ph[10:], uint16(l4len))
	return sum16(ph, 0)
}

// udpPacket builds an IPv4/UDP packet with correct checksums.
func udpPacket(src, dst netip.AddrPort, ttl uint8, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	c := ^uint16(sum16(u, pseudoSum(src.Addr(), dst.Addr(), unix.IPPROTO_UDP, len(u))))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return ipv4Packet(src.Addr(), dst.Addr(), unix.IPPROTO_UDP, ttl, uint16(randomID()), u)
}

// TCP flags of tcpPacket.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// tcpPacket builds an IPv4/TCP segment (no options) with correct checksums.
func tcpPacket(src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload []byte) []byte {
	h := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(h[0:], src.Port())
	binary.BigEndian.PutUint16(h[2:], dst.Port())
	binary.BigEndian.PutUint32(h[4:], seq)
	binary.BigEndian.PutUint32(h[8:], ack)
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	copy(h[20:], payload)
	binary.BigEndian.PutUint16(h[16:], ^uint16(sum16(h, pseudoSum(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, len(h)))))
	return ipv4Packet(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, 64, uint16(randomID()), h)
}

// icmpErrorPacket builds an ICMP error of type/code from src to dst that
// quotes the first quoteLen bytes after the IP header of the packet quoted
// (IP header plus quoteLen bytes, as RFC 792 asks for at least 8).
func icmpErrorPacket(src, dst netip.Addr, typ, code uint8, quoted []byte, quoteLen int) []byte {
	q := quoted[:min(len(quoted), 20+quoteLen)]
	b := make([]byte, 8+len(q))
	b[0], b[1] = typ, code
	copy(b[8:], q)
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return ipv4Packet(src, dst, unix.IPPROTO_ICMP, 64, uint16(randomID()), b)
}

// sendRaw sends complete IPv4 packets from inside the namespace through a raw
// socket (IPPROTO_RAW implies IP_HDRINCL: the packet leaves as built, routed
// by its destination).
func (n *Netns) sendRaw(pkts ...[]byte) error {
	return n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("netns %s: raw socket: %w", n.Name, err)
		}
		defer unix.Close(fd)
		for _, p := range pkts {
			to := &unix.SockaddrInet4{}
			copy(to.Addr[:], p[16:20])
			if err := unix.Sendto(fd, p, 0, to); err != nil {
				return fmt.Errorf("netns %s: raw send to %v: %w", n.Name, netip.AddrFrom4(to.Addr), err)
			}
		}
		return nil
	})
}
