package e2e

import (
	"bufio"
	"strconv"
	"strings"
	"testing"
)

// Configuration of the IPv6 tests: the IPv4 list of the other tests plus the
// unique-local range the pods and the VPC live in.
const (
	cfg6                  = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - fd00::/8\n"
	cfg6MasqLinkLocalIPv6 = cfg6 + "masqLinkLocalIPv6: true\n"
)

// startAgent6 builds a dual-stack topology (after opts) and starts the agent
// with --enable-ipv6 and cfg6. At the end of the test, a checksum error
// counted by any receiver, IPv4 or IPv6, fails it.
func startAgent6(t *testing.T, mode string, opts ...TopologyOption) (*Topology, *Agent) {
	t.Helper()
	requireAgent(t)
	tp := NewTopology(t, append(opts, WithDualStack())...)
	a := StartAgent(t, tp, AgentOptions{Mode: mode, Config: cfg6, ExtraArgs: []string{"--enable-ipv6"}})
	tp.FailOnChecksumErrors(t)
	failOnChecksumErrors6(t, tp)
	return tp, a
}

// checksumCounters6 are the kernel's IPv6 receive checksum error counters
// (/proc/net/snmp6); TCP over IPv6 counts in Tcp.InCsumErrors, which
// FailOnChecksumErrors reads.
var checksumCounters6 = []string{"Icmp6InCsumErrors", "Udp6InCsumErrors", "UdpLite6InCsumErrors"}

// snmp6 reads /proc/net/snmp6 of the namespace ("Name value" lines).
func snmp6(t testing.TB, n *Netns) map[string]int64 {
	t.Helper()
	out, err := n.Exec("cat", "/proc/net/snmp6")
	if err != nil {
		t.Errorf("read snmp6: %v", err)
		return nil
	}
	res := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			res[f[0]] = v
		}
	}
	return res
}

// failOnChecksumErrors6 makes the test fail at its end if any namespace of
// the topology counted an IPv6 receive checksum error.
func failOnChecksumErrors6(t testing.TB, tp *Topology) {
	t.Helper()
	t.Cleanup(func() {
		bad := map[string]int64{}
		for _, n := range tp.Namespaces() {
			c := snmp6(t, n)
			for _, k := range checksumCounters6 {
				if c[k] != 0 {
					bad[n.Role+" "+k] = c[k]
				}
			}
		}
		if len(bad) > 0 {
			t.Errorf("receivers counted IPv6 checksum errors: %v", bad)
		}
	})
}

// readStats6 reads the IPv6 datapath counters (key 1 of the agent's pinned
// ipm_stats), see readStatsKey.
func readStats6(t testing.TB, a *Agent) dpStats {
	t.Helper()
	return readStatsKey(t, a, 1, "IPv6")
}
