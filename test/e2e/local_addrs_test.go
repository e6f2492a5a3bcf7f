package e2e

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ipvsAddrs is how many addresses the test puts on kube-ipvs0: a cluster
// with 10,000 Services under kube-proxy's IPVS mode, which holds every
// ClusterIP on that dummy interface of every node.
const ipvsAddrs = 10000

// addIPVSAddrs creates kube-ipvs0 in the node namespace with n /32s from
// 10.96.0.1 on, in one `ip -batch` (one netlink request each, no fork). A
// kernel without the dummy driver gets a veth pair with both ends in the
// node instead: an address is the node's whatever link carries it, and,
// like kube-proxy's dummy, the link stays down.
func addIPVSAddrs(t *testing.T, node *Netns, n int) {
	t.Helper()
	if _, err := node.Exec("ip", "link", "add", "kube-ipvs0", "type", "dummy"); err != nil {
		t.Logf("no dummy interface (%v): kube-ipvs0 is a veth", err)
		node.IP(t, "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kube-ipvs0p")
	}
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "address add 10.96.%d.%d/32 dev kube-ipvs0\n", i/256, i%256)
	}
	batch := filepath.Join(t.TempDir(), "ipvs.batch")
	if err := os.WriteFile(batch, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	node.IP(t, "-batch", batch)
}

// TestManyNodeAddresses: a node with 10,000 ClusterIPs on kube-ipvs0 (the
// map of node addresses held 4,096 and the agent did not start). The agent
// starts and turns ready, a pod is masqueraded, and the node's own
// connections keep their address and port.
func TestManyNodeAddresses(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		requireAgent(t)
		tp := NewTopology(t)
		addIPVSAddrs(t, tp.Node, ipvsAddrs)
		a := startAgentOn(t, tp, AgentOptions{Mode: mode, Config: cfgPrivate})
		if err := waitProbe(tp.Node, "/readyz", http.StatusOK, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		if _, seen, err := tcpSeen(tp.Node, tp.Internet, 45000, ProbeTimeout); err != nil || seen != netip.AddrPortFrom(NodeIP, 45000) {
			t.Errorf("TCP node:45000 -> internet: server saw %s (%v), want %s:45000", seen, err, NodeIP)
		}
		if rep, err := tp.Node.UDPPeer(tp.Internet.UDPAddr(), 45001, ProbeTimeout); err != nil || rep.Peer != netip.AddrPortFrom(NodeIP, 45001) {
			t.Errorf("UDP node:45001 -> internet: server saw %s (%v), want %s:45001", rep.Peer, err, NodeIP)
		}
		m := scrape(t, tp.Node)
		// Loopback, eth0 and cni0 besides kube-ipvs0.
		if v := m.Must(t, "ip_masq_agent_local_addresses", "family=ipv4"); v < ipvsAddrs+3 {
			t.Errorf("local_addresses{ipv4} = %v, want at least %d", v, ipvsAddrs+3)
		}
		if v := m.Must(t, "ip_masq_agent_local_addresses_dropped", "family=ipv4"); v != 0 {
			t.Errorf("local_addresses_dropped{ipv4} = %v, want 0", v)
		}
		if rss, ok := m.Value("process_resident_memory_bytes"); ok {
			t.Logf("agent resident memory with %d node addresses: %.1f MiB", ipvsAddrs, rss/(1<<20))
		}
		// What the map costs at this size (docs/behaviour.md §8.1).
		if out, err := tp.Node.Exec("bpftool", "map", "show", "pinned", filepath.Join(a.PinPath, "ipm_local4")); err == nil {
			t.Logf("ipm_local4 with %d addresses: %s", ipvsAddrs, strings.Join(strings.Fields(out), " "))
		}
	})
}
