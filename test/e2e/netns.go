// Package e2e holds the end-to-end tests of the agent: throwaway network
// namespaces wired as a node with pods, a router and three remote hosts, real
// TCP, UDP and ICMP traffic, and the agent binary running in the node
// namespace. Every test needs root (it creates namespaces, veths and a bpffs
// mount) and skips without it.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/ipmasq-ebpf/ip-masq-agent/test/nstest"
)

// nsPrefix starts the name of every namespace these tests create, so that a
// leftover is easy to recognise (`ip netns list | grep ipme-`).
const nsPrefix = "ipme-"

// requireRoot skips the test when it cannot create namespaces.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, veths, bpffs); run as root, e.g. `sudo go test ./test/e2e/`")
	}
}

// Netns is one named network namespace (`ip netns add`), so that both this
// process (through Handle) and child processes (`ip netns exec Name`) can use it.
type Netns struct {
	Name   string
	Role   string // "node", "pod1", ... for messages
	Handle netns.NsHandle
	Addr   netip.Addr // the namespace's main address in the topology
}

func (n *Netns) String() string { return n.Role }

// randomSuffix returns n random hex characters.
func randomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// newNetns creates the namespace `ipme-<id>-<role>` and registers its deletion
// with t.Cleanup. The caller's thread never changes namespace.
func newNetns(t testing.TB, id, role string) *Netns {
	t.Helper()
	name := nsPrefix + id + "-" + role
	return &Netns{Name: name, Role: role, Handle: nstest.Add(t, name)}
}

// inNS runs fn on a dedicated OS thread that has joined ns (nstest.Do).
func inNS(ns *Netns, fn func() error) error { return nstest.Do(ns.Handle, ns.Name, fn) }

// Do runs fn inside the namespace, see inNS.
func (n *Netns) Do(fn func() error) error { return inNS(n, fn) }

// Exec runs a command inside the namespace (`ip netns exec`) and returns its
// combined output.
func (n *Netns) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustExec is Exec that fails the test on error.
func (n *Netns) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// IP runs `ip -n NAME args...` and fails the test on error.
func (n *Netns) IP(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("netns %s: ip %s: %v: %s", n.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// Sysctl sets key=value pairs inside the namespace.
func (n *Netns) Sysctl(t testing.TB, kv ...string) {
	t.Helper()
	n.MustExec(t, append([]string{"sysctl", "-q", "-w"}, kv...)...)
}

// Counters reads the SNMP and extended counters of the namespace
// (/proc/net/snmp and /proc/net/netstat as seen from inside it), keyed
// "Group.Name", e.g. "Udp.InCsumErrors", "TcpExt.IPReversePathFilter".
func (n *Netns) Counters() (map[string]int64, error) {
	out, err := n.Exec("cat", "/proc/net/snmp", "/proc/net/netstat")
	if err != nil {
		return nil, err
	}
	return parseProcNetCounters(out)
}

// parseProcNetCounters parses the two-line header/value format of
// /proc/net/snmp and /proc/net/netstat.
func parseProcNetCounters(text string) (map[string]int64, error) {
	res := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	var header []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if header == nil || header[0] != fields[0] {
			header = fields
			continue
		}
		if len(fields) != len(header) {
			return nil, fmt.Errorf("parse counters: %s: %d names, %d values", fields[0], len(header), len(fields))
		}
		group := strings.TrimSuffix(fields[0], ":")
		for i := 1; i < len(fields); i++ {
			v, err := strconv.ParseInt(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("parse counters: %s.%s: %w", group, header[i], err)
			}
			res[group+"."+header[i]] = v
		}
		header = nil
	}
	return res, sc.Err()
}

// checksumCounters are the receive checksum error counters of the kernel.
var checksumCounters = []string{"IpExt.InCsumErrors", "Icmp.InCsumErrors", "Tcp.InCsumErrors", "Udp.InCsumErrors"}

// ChecksumErrors returns the receive checksum error counters of the namespace.
func (n *Netns) ChecksumErrors() (map[string]int64, error) {
	c, err := n.Counters()
	if err != nil {
		return nil, err
	}
	res := map[string]int64{}
	for _, k := range checksumCounters {
		res[k] = c[k]
	}
	return res, nil
}
