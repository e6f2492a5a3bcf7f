package e2e

// Helpers of the tests that share the node with netfilter NAT of others
// (kube-proxy, the CNI portmap plugin): rule loading and the debug
// command's view of one node tuple.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// iptablesRestore loads rules (iptables-save syntax, tables with their
// COMMIT) into the namespace with iptables-nft-restore --noflush, as
// kube-proxy and the portmap plugin write theirs: chains of others are
// left as they are.
func iptablesRestore(t *testing.T, n *Netns, rules string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	n.MustExec(t, "iptables-nft-restore", "-w", "--noflush", f)
}

// nodeTuple is what `ip-masq-agent debug` says about the node tuple
// node:port towards remote: whether a host reservation holds it and
// whether a pod flow is masqueraded through it.
type nodeTuple struct {
	reserved, mapped bool
}

// debugTuple runs the debug command and looks for the tuple
// NodeIP:port -> remote of protocol proto in its NAT table.
func debugTuple(t *testing.T, a *Agent, proto string, port uint16, remote netip.AddrPort) nodeTuple {
	t.Helper()
	out, stderr, err := runDebug(t, a, a.PinPath)
	if err != nil {
		t.Fatalf("debug: %v\n%s%s", err, out, stderr)
	}
	node := regexp.QuoteMeta(netip.AddrPortFrom(NodeIP, port).String())
	rem := regexp.QuoteMeta(remote.String())
	res := regexp.MustCompile(fmt.Sprintf(`(?m)^  %s -> %s %s `, node, rem, proto))
	flow := regexp.MustCompile(fmt.Sprintf(`(?m)^  \S+ -> %s via %s %s `, rem, node, proto))
	nt := nodeTuple{reserved: res.MatchString(out), mapped: flow.MatchString(out)}
	if !nt.reserved || nt.mapped {
		t.Logf("debug output:\n%s", out)
	}
	return nt
}

// expectReservedNotMapped fails unless the node tuple is a host reservation
// and no pod flow is masqueraded through it (docs/behaviour.md §8).
func expectReservedNotMapped(t *testing.T, a *Agent, proto string, port uint16, remote netip.AddrPort) {
	t.Helper()
	nt := debugTuple(t, a, proto, port, remote)
	if !nt.reserved {
		t.Errorf("%s %s:%d -> %s: no host reservation", proto, NodeIP, port, remote)
	}
	if nt.mapped {
		t.Errorf("%s %s:%d -> %s: a pod flow is masqueraded through the node tuple", proto, NodeIP, port, remote)
	}
}

// readUDP waits for one datagram on c and returns its payload and sender.
func (c *udpClient) readUDP(timeout time.Duration) (string, netip.AddrPort, error) {
	c.pc.SetReadDeadline(time.Now().Add(timeout))
	defer c.pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	m, from, err := c.pc.ReadFrom(buf)
	if err != nil {
		return "", netip.AddrPort{}, fmt.Errorf("%s udp :%d: nothing received: %w", c.ns, c.Port(), err)
	}
	return string(buf[:m]), addrPortOf(from), nil
}

// send writes payload to dst.
func (c *udpClient) send(dst netip.AddrPort, payload string) error {
	if _, err := c.pc.WriteTo([]byte(payload), net.UDPAddrFromAddrPort(dst)); err != nil {
		return fmt.Errorf("%s udp :%d -> %s: send: %w", c.ns, c.Port(), dst, err)
	}
	return nil
}

// expectFrom reads one datagram and fails unless it is payload from want.
func (c *udpClient) expectFrom(t *testing.T, payload string, want func(netip.AddrPort) error) netip.AddrPort {
	t.Helper()
	got, from, err := c.readUDP(ProbeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, payload) {
		t.Fatalf("%s udp :%d: received %q from %s, want %q", c.ns, c.Port(), got, from, payload)
	}
	if err := want(from); err != nil {
		t.Fatalf("%s udp :%d: %q from %s: %v", c.ns, c.Port(), got, from, err)
	}
	return from
}
