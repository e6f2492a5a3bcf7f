package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Mode is one way the node namespace treats pod traffic leaving it.
type Mode string

const (
	NoNAT      Mode = "no NAT"
	NoNATCT    Mode = "no NAT + conntrack"
	IPTables   Mode = "iptables"
	Agent      Mode = "eBPF agent"
	AgentCT    Mode = "eBPF agent + conntrack"
	defaultDev      = "eth0"
)

var allModes = []Mode{NoNAT, NoNATCT, IPTables, Agent, AgentCT}

func (m Mode) short() string {
	return map[Mode]string{NoNAT: "nonat", NoNATCT: "nonatct", IPTables: "ipt", Agent: "ebpf", AgentCT: "ebpfct"}[m]
}

func (m Mode) masquerades() bool { return m == IPTables || m == Agent || m == AgentCT }
func (m Mode) agent() bool       { return m == Agent || m == AgentCT }
func (m Mode) conntrack() bool   { return m == NoNATCT || m == AgentCT }

// Topo is one mode's namespaces:
//
//	pod 10.244.1.2 ── vpod ┤cni0 10.244.1.1 [node] eth0 172.31.0.2 ── eth0 172.31.0.1 [remote] lo 203.0.113.10
//
// The node forwards; the remote host serves on 203.0.113.10, outside every
// non-masquerade CIDR, and routes 10.244.0.0/16 back to the node only in the
// no-NAT modes (so in the NAT modes a packet that leaves unmasqueraded gets
// no answer). Offloads stay at the veth defaults (TSO/GSO on).
type Topo struct {
	Mode              Mode
	Pod, Node, Remote string // namespace names
	dir               string // scratch directory: configs, rule files, bpffs
	agent             *agentProc
	servers           []*bgProc
}

func newTopo(id string, m Mode, scratch string) (t *Topo, err error) {
	p := nsPrefix + id + "-" + m.short() + "-"
	t = &Topo{Mode: m, Pod: p + "pod", Node: p + "node", Remote: p + "remote", dir: filepath.Join(scratch, m.short())}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return t, err
	}
	for _, ns := range []string{t.Pod, t.Node, t.Remote} {
		if _, err := sh("ip", "netns", "add", ns); err != nil {
			return t, err
		}
		if _, err := nsExec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
			return t, err
		}
	}
	steps := [][]string{
		{"-n", t.Pod, "link", "set", "lo", "up"},
		{"-n", t.Node, "link", "set", "lo", "up"},
		{"-n", t.Remote, "link", "set", "lo", "up"},
		{"-n", t.Pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpod", "netns", t.Node},
		{"-n", t.Node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", t.Remote},
		{"-n", t.Node, "link", "add", "cni0", "type", "bridge"},
		{"-n", t.Node, "link", "set", "vpod", "master", "cni0"},
		{"-n", t.Pod, "addr", "add", podIP.String() + "/24", "dev", "eth0"},
		{"-n", t.Node, "addr", "add", cniIP.String() + "/24", "dev", "cni0"},
		{"-n", t.Node, "addr", "add", nodeIP.String() + "/24", "dev", "eth0"},
		{"-n", t.Remote, "addr", "add", peerIP.String() + "/24", "dev", "eth0"},
		{"-n", t.Remote, "addr", "add", serverIP.String() + "/32", "dev", "lo"},
		{"-n", t.Pod, "link", "set", "eth0", "up"},
		{"-n", t.Node, "link", "set", "vpod", "up"},
		{"-n", t.Node, "link", "set", "cni0", "up"},
		{"-n", t.Node, "link", "set", "eth0", "up"},
		{"-n", t.Remote, "link", "set", "eth0", "up"},
		{"-n", t.Pod, "route", "add", "default", "via", cniIP.String()},
		{"-n", t.Node, "route", "add", "default", "via", peerIP.String()},
	}
	if !m.masquerades() {
		steps = append(steps, []string{"-n", t.Remote, "route", "add", "10.244.0.0/16", "via", nodeIP.String()})
	}
	for _, s := range steps {
		if _, err := sh(append([]string{"ip"}, s...)...); err != nil {
			return t, err
		}
	}
	if _, err := nsExec(t.Node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return t, err
	}
	if m.conntrack() {
		if err := t.restore(kubeProxyRules, false); err != nil {
			return t, err
		}
	}
	if m == IPTables {
		if err := t.restore(masqJump, false); err != nil {
			return t, err
		}
	}
	return t, nil
}

// restore loads rules with iptables-restore in the node namespace.
func (t *Topo) restore(rules string, noflush bool) error {
	args := []string{"iptables-restore", "-w"}
	if noflush {
		args = append(args, "--noflush")
	}
	_, err := nsExecStdin(t.Node, rules, args...)
	return err
}

// Close stops everything of the topology and deletes its namespaces.
func (t *Topo) Close() {
	for _, s := range t.servers {
		s.stop()
	}
	if t.agent != nil {
		t.agent.stop()
	}
	for _, ns := range []string{t.Pod, t.Node, t.Remote} {
		sh("ip", "netns", "del", ns)
	}
	os.RemoveAll(t.dir)
}

// kubeProxyRules make conntrack (and the nat hooks) active in the node
// namespace the way kube-proxy's iptables mode does, without any service.
const kubeProxyRules = `*filter
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
`

// masqJump is the POSTROUTING rule upstream ip-masq-agent ensures once.
const masqJump = `*nat
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
COMMIT
`

// masqRules is what upstream ip-masq-agent v2 restores (with --noflush) on
// every sync: the chain, flushed by its declaration, a RETURN for
// link-local and for each CIDR, and MASQUERADE last.
func masqRules(c []netip.Prefix) string {
	var b strings.Builder
	b.WriteString("*nat\n:IP-MASQ-AGENT - [0:0]\n")
	b.WriteString(`-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN` + "\n")
	for _, p := range c {
		fmt.Fprintf(&b, "-A IP-MASQ-AGENT -d %s -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN\n", p)
	}
	b.WriteString(`-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully` + "\n")
	b.WriteString("COMMIT\n")
	return b.String()
}
