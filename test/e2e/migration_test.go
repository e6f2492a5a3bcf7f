package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ipmasq-ebpf/ip-masq-agent/migrate"
)

// Migration from the iptables agent (docs/behaviour.md §12): the node namespace gets the
// chain and POSTROUTING jump that kubernetes-sigs/ip-masq-agent v2.12
// programs, written with iptables-nft or iptables-legacy (Debian's iptables
// package ships both), and then the agent starts. These tests run in one
// attach mode, the first of AttachModes (tcx unless $IPME_ATTACH_MODES says
// otherwise): removing the chain does not depend on how the programs attach.

// Upstream's comments, verbatim.
const (
	upstreamJumpComment   = "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain"
	upstreamReturnComment = "ip-masq-agent: local traffic is not subject to MASQUERADE"
	upstreamMasqComment   = "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)"
	upstreamChain         = "IP-MASQ-AGENT"
)

// Log lines of the migration.
const (
	logMigrationSkipped = "Leaving any chain of the iptables ip-masq-agent in place"
	logNoNATTable       = "No iptables nat table to migrate from"
	logNoChain          = "No chain of the iptables ip-masq-agent"
)

var iptablesBackends = []string{migrate.BackendNFT, migrate.BackendLegacy}

// upstreamRules are the iptables arguments (after `-t nat`) with which the
// upstream agent builds its chain for nonMasqueradeCIDRs (link-local comes
// first unless masqLinkLocal), then its jump, in the order it runs them.
func upstreamRules(nonMasq ...string) [][]string {
	rules := [][]string{{"-N", upstreamChain}}
	for _, c := range append([]string{"169.254.0.0/16"}, nonMasq...) {
		rules = append(rules, []string{"-A", upstreamChain, "-m", "comment", "--comment", upstreamReturnComment, "-d", c, "-j", "RETURN"})
	}
	return append(rules,
		[]string{"-A", upstreamChain, "-m", "comment", "--comment", upstreamMasqComment, "-j", "MASQUERADE", "--random-fully"},
		[]string{"-A", "POSTROUTING", "-m", "comment", "--comment", upstreamJumpComment,
			"-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", upstreamChain})
}

// kubeRules stand for another user of the nat table (kube-proxy), whose
// rules must survive the migration untouched.
var kubeRules = [][]string{
	{"-N", "KUBE-POSTROUTING"},
	{"-A", "KUBE-POSTROUTING", "-s", "10.244.9.0/24", "-j", "RETURN"},
	{"-A", "POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"},
}

// iptables runs `iptables-<backend> -w -t nat args` in n for each rule.
func iptables(t *testing.T, n *Netns, backend string, rules ...[]string) {
	t.Helper()
	bin := "iptables-" + backend
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("%s not found: install Debian's iptables package (make setup)", bin)
	}
	for _, r := range rules {
		n.MustExec(t, append([]string{bin, "-w", "-t", "nat"}, r...)...)
	}
}

// natRules is the nat table of a backend in iptables-save syntax, without
// comment lines and counters.
func natRules(t *testing.T, n *Netns, backend string) []string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(n.MustExec(t, "iptables-"+backend+"-save", "-t", "nat"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l = strings.Join(strings.Fields(l)[:2], " ")
		}
		lines = append(lines, l)
	}
	return lines
}

func mentionsUpstream(l string) bool { return strings.Contains(l, upstreamChain) }

// netfilterTables says which tables exist in n, without creating any: the
// legacy ones from /proc/net/ip{,6}_tables_names, the nf_tables ones over
// netlink.
func netfilterTables(t *testing.T, n *Netns) string {
	t.Helper()
	out, err := n.Exec("sh", "-c", "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; true")
	if err != nil {
		t.Fatal(err)
	}
	legacy := strings.Fields(out)
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list nf_tables tables in %s: %v", n, err)
	}
	var nft []string
	for _, tb := range tables {
		nft = append(nft, fmt.Sprintf("%d/%s", tb.Family, tb.Name))
	}
	slices.Sort(legacy)
	slices.Sort(nft)
	return fmt.Sprintf("legacy %v, nf_tables %v", legacy, nft)
}

// migrationMode is the one attach mode these tests use.
func migrationMode() string { return AttachModes[0] }

// forEachBackend runs body once per iptables backend, in parallel
// subtests, each on a topology of its own.
func forEachBackend(t *testing.T, body func(t *testing.T, backend string, tp *Topology)) {
	requireRoot(t)
	t.Parallel()
	for _, backend := range iptablesBackends {
		t.Run(backend, func(t *testing.T) { body(t, backend, migrationTopology(t)) })
	}
}

// migrationTopology starts every migration test and subtest: a topology of
// its own, built in parallel with the other tests', whose receivers must
// count no checksum error.
func migrationTopology(t *testing.T) *Topology {
	t.Helper()
	requireRoot(t)
	t.Parallel()
	requireAgent(t)
	tp := NewTopology(t)
	tp.FailOnChecksumErrors(t)
	return tp
}

// TestMigrationRemovesUpstreamChain: the upstream chain (whose list, link-
// local only, masquerades traffic to the VPC) decides before the agent
// starts; the agent removes it and its jump, logs each removed rule, keeps
// every other rule of the table, and from then on its own config (10.0.0.0/8
// not masqueraded) decides.
func TestMigrationRemovesUpstreamChain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string, tp *Topology) {
		iptables(t, tp.Node, backend, kubeRules...)
		iptables(t, tp.Node, backend, upstreamRules()...)
		before := natRules(t, tp.Node, backend)
		expectTCP(t, tp.Pod1, tp.VPC, NodeIP) // the stale list decides

		a := StartAgent(t, tp, AgentOptions{Mode: migrationMode(), Config: cfgPrivate})

		after := natRules(t, tp.Node, backend)
		if want := slices.DeleteFunc(slices.Clone(before), mentionsUpstream); !slices.Equal(after, want) {
			t.Errorf("nat table after the start:\n%s\nwant:\n%s", strings.Join(after, "\n"), strings.Join(want, "\n"))
		}
		logs := a.Logs()
		for _, want := range []string{
			migrate.LogRemoved,
			`backend="` + backend + `"`,
			`chain="IP-MASQ-AGENT"`,
			"-A POSTROUTING -m comment --comment", // the jump, rendered
			"-m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT",
			"-d 169.254.0.0/16",
			"-j MASQUERADE --random-fully",
		} {
			if !strings.Contains(logs, want) {
				t.Errorf("agent logs do not mention %q", want)
			}
		}
		expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
		expectUDP(t, tp.Pod1, tp.VPC, Pod1IP)
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
		expectTCP(t, tp.Pod1, tp.LinkLocal, Pod1IP)

		// A restart finds nothing more to remove.
		off := a.LogOffset()
		a.Restart(t, syscall.SIGTERM)
		if strings.Contains(a.Logs()[off:], migrate.LogRemoved) {
			t.Error("the restarted agent removed something again")
		}
		if again := natRules(t, tp.Node, backend); !slices.Equal(again, after) {
			t.Errorf("nat table changed on restart:\n%s", strings.Join(again, "\n"))
		}
	})
}

// TestMigrationOptOut: with --remove-iptables-chain=false the chain and jump
// stay, and (netfilter running first) the stale list still decides.
func TestMigrationOptOut(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string, tp *Topology) {
		iptables(t, tp.Node, backend, upstreamRules()...)
		before := natRules(t, tp.Node, backend)

		a := StartAgent(t, tp, AgentOptions{Mode: migrationMode(), Config: cfgPrivate,
			ExtraArgs: []string{"--remove-iptables-chain=false"}})

		if after := natRules(t, tp.Node, backend); !slices.Equal(after, before) {
			t.Errorf("nat table changed:\n%s\nwant:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
		}
		if logs := a.Logs(); strings.Contains(logs, migrate.LogRemoved) || !strings.Contains(logs, logMigrationSkipped) {
			t.Errorf("agent logs: want %q and no %q", logMigrationSkipped, migrate.LogRemoved)
		}
		expectTCP(t, tp.Pod1, tp.VPC, NodeIP)
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
	})
}

// TestMigrationNothingToRemove: a node namespace that never had a nat table
// still has none after the agent started (no table created, so no NAT hooks
// and no conntrack turned on by the agent), and the agent says so at --v=2.
func TestMigrationNothingToRemove(t *testing.T) {
	tp := migrationTopology(t)
	before := netfilterTables(t, tp.Node)
	if strings.Contains(before, "nat") {
		t.Fatalf("the fresh node namespace already has a nat table: %s", before)
	}

	a := StartAgent(t, tp, AgentOptions{Mode: migrationMode(), Config: cfgPrivate})

	if after := netfilterTables(t, tp.Node); after != before {
		t.Errorf("netfilter tables before the agent: %s; after: %s", before, after)
	}
	logs := a.Logs()
	for _, b := range iptablesBackends {
		said := slices.ContainsFunc(strings.Split(logs, "\n"), func(l string) bool {
			return strings.Contains(l, `backend="`+b+`"`) &&
				(strings.Contains(l, logNoNATTable) || strings.Contains(l, logNoChain))
		})
		if !said {
			t.Errorf("agent logs do not say %q or %q for backend %s", logNoNATTable, logNoChain, b)
		}
	}
	if strings.Contains(logs, migrate.LogRemoved) {
		t.Error("the agent says it removed something")
	}
	expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
	expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
}

// TestMigrationWithoutIPTablesBinaries: the agent runs no binary, so on a
// node (or in an image) without iptables it still removes what both
// backends hold. Here it runs with an empty PATH; the chains are made with
// both backends in the same node namespace beforehand.
func TestMigrationWithoutIPTablesBinaries(t *testing.T) {
	tp := migrationTopology(t)
	for _, b := range iptablesBackends {
		iptables(t, tp.Node, b, upstreamRules()...)
	}

	logs := runAgentWithEnv(t, tp, []string{"PATH=" + t.TempDir()},
		"--config="+writeTempConfig(t, cfgPrivate), "--interfaces="+Uplink,
		"--attach-mode="+migrationMode(), "--v=2")

	for _, b := range iptablesBackends {
		if rules := slices.DeleteFunc(natRules(t, tp.Node, b), func(l string) bool { return !mentionsUpstream(l) }); len(rules) > 0 {
			t.Errorf("%s: still there:\n%s", b, strings.Join(rules, "\n"))
		}
		if !strings.Contains(logs, `backend="`+b+`"`) {
			t.Errorf("agent logs do not mention backend %s", b)
		}
	}
	if n := strings.Count(logs, migrate.LogRemoved); n != 2 {
		t.Errorf("agent logged %q %d times, want 2 (nft and legacy)", migrate.LogRemoved, n)
	}
	expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
	expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
}

func writeTempConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runAgentWithEnv starts the agent binary in the node namespace with env as
// its whole environment (the harness's Agent passes the test's own), waits
// for LogDatapathReady and returns the output so far. t.Cleanup kills the
// agent before the bpffs is unmounted.
func runAgentWithEnv(t *testing.T, tp *Topology, env []string, args ...string) string {
	t.Helper()
	bpffs := mountBPFFS(t)
	args = append([]string{"--pin-path=" + filepath.Join(bpffs, "ipm")}, args...)
	// `ip` is looked up in the test's PATH; it execs the agent by its
	// absolute path, so the agent's empty PATH does not matter to it.
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.Node.Name, agentBin}, args...)...)
	cmd.Env = env
	var out logBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("agent output (%s):\n%s", strings.Join(cmd.Args, " "), out.String())
		}
	})
	deadline := time.After(ReadyTimeout)
	for !strings.Contains(out.String(), LogDatapathReady) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("agent exited (%v) before %q", err, LogDatapathReady)
		case <-deadline:
			t.Fatalf("agent did not log %q within %v", LogDatapathReady, ReadyTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return out.String()
}
