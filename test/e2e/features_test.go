package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A second server address on the VPC host, next to VPCIP in the same /24.
var vpcNeighbourIP = netip.MustParseAddr("10.100.0.11")

const cfgException = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqueradeCIDRs:\n  - 10.100.0.11/32\n"

// addVPCNeighbour gives the VPC host a second address with a TCP server.
func addVPCNeighbour(t *testing.T, tp *Topology) netip.AddrPort {
	t.Helper()
	tp.VPC.IP(t, "addr", "add", vpcNeighbourIP.String()+"/24", "dev", "eth0")
	dst := netip.AddrPortFrom(vpcNeighbourIP, TCPPort)
	tp.VPC.ListenTCP(t, dst)
	return dst
}

// waitPeer opens new TCP connections from -> dst until the server sees the
// address want.
func waitPeer(from *Netns, dst netip.AddrPort, want netip.Addr, timeout time.Duration) error {
	return eventually(timeout, func() error {
		seen, err := from.TCPPeer(dst, 0, time.Second)
		if err != nil {
			return err
		}
		if seen.Addr() != want {
			return fmt.Errorf("TCP %s -> %s: server saw %s, want address %s", from, dst, seen, want)
		}
		return nil
	})
}

// TestMasqueradeExceptionLive: an exception inside a non-masquerade range is
// masqueraded while its neighbour in the same /24 is not; adding and
// removing it takes effect live.
func TestMasqueradeExceptionLive(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		neighbour := addVPCNeighbour(t, tp)
		if err := waitPeer(tp.Pod1, neighbour, Pod1IP, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		WriteConfigRename(t, a.ConfigPath, cfgException)
		if err := waitPeer(tp.Pod1, neighbour, NodeIP, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP) // the neighbour keeps the pod address
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		expectSource(t, tp.Pod1, tp.LinkLocal, Pod1IP)
		WriteConfigRename(t, a.ConfigPath, cfgPrivate)
		if err := waitPeer(tp.Pod1, neighbour, Pod1IP, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
	})
}

// runAgentCmd runs the agent binary with args in the node namespace.
func runAgentCmd(t *testing.T, tp *Topology, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.Node.Name, agentBin}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// explainJSON is what the tests read of `explain -o json`.
type explainJSON struct {
	Source, Destination, Family, Proto string
	Verdict, Reason                    string
	DecidedBy                          *struct{ Prefix, List string } `json:"decided_by"`
	Overrides                          *struct{ Prefix, List string } `json:"overrides"`
	SourceIsNode                       bool                           `json:"source_is_node"`
	SourceInSourceCIDRs                *bool                          `json:"source_in_source_cidrs"`
	Interface                          *struct {
		Name              string
		Managed           bool
		MasqueradeAddress *string `json:"masquerade_address"`
	}
	Flows []map[string]any
}

func explainAgent(t *testing.T, a *Agent, args ...string) explainJSON {
	t.Helper()
	out, errOut, code := runAgentCmd(t, a.Topo, append(append([]string{"explain"}, args...), "--pin-path="+a.PinPath, "-o", "json")...)
	if code != 0 {
		t.Fatalf("explain %v: exit %d: %s", args, code, errOut)
	}
	var e explainJSON
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("explain %v: %v\n%s", args, err, out)
	}
	return e
}

// TestExplainCommand: explain beside a running agent gives each kind of
// answer, and the live mapping of a flow with its state and time left.
func TestExplainCommand(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp, a := startAgent(t, AgentOptions{Mode: "auto", Config: cfgException, ExtraArgs: []string{"--source-cidrs=10.244.0.0/16"}})
	conn, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 40000, ProbeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Echo([]byte("live\n"), ProbeTimeout); err != nil {
		t.Fatal(err)
	}
	node := NodeIP.String()
	for _, tc := range []struct {
		name, src, dst string
		verdict        string
		decided, list  string
		overrides      string
		sourceIsNode   bool
		inSources      *bool
		address        *string
	}{
		{"outside every prefix", "10.244.1.2", "203.0.113.10", "masquerade", "", "", "", false, ptr(true), &node},
		{"non-masquerade prefix", "10.244.1.2", "10.100.0.10", "keep", "10.0.0.0/8", "nonMasqueradeCIDRs", "", false, ptr(true), &node},
		{"exception wins over a shorter prefix", "10.244.1.2", "10.100.0.11", "masquerade", "10.100.0.11/32", "masqueradeCIDRs", "10.0.0.0/8", false, ptr(true), &node},
		{"link-local default", "10.244.1.2", "169.254.169.254", "keep", "169.254.0.0/16", "link-local default (masqLinkLocal: false)", "", false, ptr(true), &node},
		{"node source", node, "203.0.113.10", "keep", "", "", "", true, ptr(false), &node},
		{"source outside --source-cidrs", "192.0.2.7", "203.0.113.10", "keep", "", "", "", false, ptr(false), &node},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := explainAgent(t, a, tc.src, tc.dst, "udp", "53")
			if e.Verdict != tc.verdict || e.SourceIsNode != tc.sourceIsNode {
				t.Errorf("verdict %s, node source %t; want %s, %t (%s)", e.Verdict, e.SourceIsNode, tc.verdict, tc.sourceIsNode, e.Reason)
			}
			if got := e.DecidedBy; (tc.decided == "") != (got == nil) || got != nil && (got.Prefix != tc.decided || got.List != tc.list) {
				t.Errorf("decided by %+v, want %s of %s", got, tc.decided, tc.list)
			}
			if got := e.Overrides; (tc.overrides == "") != (got == nil) || got != nil && got.Prefix != tc.overrides {
				t.Errorf("overrides %+v, want %q", got, tc.overrides)
			}
			if (e.SourceInSourceCIDRs == nil) != (tc.inSources == nil) || e.SourceInSourceCIDRs != nil && *e.SourceInSourceCIDRs != *tc.inSources {
				t.Errorf("source in --source-cidrs %v, want %v", e.SourceInSourceCIDRs, *tc.inSources)
			}
			if e.Interface == nil || e.Interface.Name != Uplink || !e.Interface.Managed ||
				e.Interface.MasqueradeAddress == nil || *e.Interface.MasqueradeAddress != *tc.address {
				t.Errorf("interface %+v, want %s managed, masquerading to %s", e.Interface, Uplink, *tc.address)
			}
			if len(e.Flows) != 0 {
				t.Errorf("flows %v, want none", e.Flows)
			}
		})
	}
	t.Run("unmanaged interface", func(t *testing.T) {
		e := explainAgent(t, a, "10.244.1.2", "10.244.1.3")
		if e.Verdict != "keep" || e.Interface == nil || e.Interface.Name != "cni0" || e.Interface.Managed {
			t.Errorf("got %+v, want keep through the unmanaged cni0", e)
		}
	})
	t.Run("live mapping", func(t *testing.T) {
		e := explainAgent(t, a, "10.244.1.2", "203.0.113.10", "tcp", "8080")
		if len(e.Flows) != 1 {
			t.Fatalf("flows %v, want the one connection", e.Flows)
		}
		f := e.Flows[0]
		keys := []string{"family", "proto", "pod", "remote", "node", "state", "idle_seconds", "expires_in_seconds", "replied"}
		if len(f) != len(keys) {
			t.Errorf("flow %v has other keys than %v", f, keys)
		}
		want := map[string]any{"family": "ipv4", "proto": "tcp", "pod": "10.244.1.2:40000", "remote": "203.0.113.10:8080",
			"node": conn.Peer.String(), "state": "established", "replied": true}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("flow %s = %v, want %v", k, f[k], v)
			}
		}
		left, _ := f["expires_in_seconds"].(float64)
		if idle, _ := f["idle_seconds"].(float64); idle < 0 || idle > 60 || left < 6*3600-60 || left > 6*3600 {
			t.Errorf("idle %v s, expires in %v s; want a fresh established flow with about 6 h left", f["idle_seconds"], left)
		}
		out, _, code := runAgentCmd(t, tp, "explain", "10.244.1.2", "203.0.113.10", "tcp", "8080", "--pin-path="+a.PinPath)
		if code != 0 || !strings.Contains(out, "New flows: MASQUERADED") || !strings.Contains(out, "10.244.1.2:40000 -> 203.0.113.10:8080 via") {
			t.Errorf("text output (exit %d):\n%s", code, out)
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		if _, errOut, code := runAgentCmd(t, tp, "explain", "10.244.1.2", "--pin-path="+a.PinPath); code != 2 || !strings.Contains(errOut, "SRC DST") {
			t.Errorf("exit %d, %q; want 2 and the usage", code, errOut)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// TestCheckCommand: check validates files offline like the agent, with its
// flags, without root or a datapath.
func TestCheckCommand(t *testing.T) {
	requireAgent(t)
	// A directory and a copy of the binary that an unprivileged user can
	// read: the check must need no privileges.
	dir, err := os.MkdirTemp("", "ipm-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	checkBin := filepath.Join(dir, "ip-masq-agent")
	if err := os.WriteFile(checkBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(checkBin, append([]string{"check"}, args...)...)
		// Not root: nothing here may need privileges.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	for _, tc := range []struct {
		name    string
		content string
		flags   []string
		code    int
		want    []string
	}{
		{"good", cfgException, nil, 0, []string{"valid", "10.0.0.0/8", "169.254.0.0/16  # link-local", "10.100.0.11/32"}},
		{"defaults with reserved ranges", "cidrLimit: 20\n", []string{"--nomasq-all-reserved-ranges"}, 0, []string{"240.0.0.0/4", "cidrLimit: 20 (11 used)"}},
		{"ipv6 with the flag", "nonMasqueradeCIDRs: ['fd00::/8']\nmasqueradeCIDRs: ['fd00:1::/64']\n", []string{"--enable-ipv6"}, 0, []string{"fd00::/8", "fd00:1::/64", "fe80::/10"}},
		{"ipv6 without the flag", "nonMasqueradeCIDRs: ['fd00::/8']\n", nil, 1, []string{"--enable-ipv6"}},
		{"conflict", "masqueradeCIDRs: [10.0.0.0/8]\n", nil, 1, []string{"10.0.0.0/8 is in both"}},
		{"not aligned", "nonMasqueradeCIDRs: [10.0.0.1/8]\n", nil, 1, []string{"not aligned"}},
		{"over the limit", "cidrLimit: 1\nmasqueradeCIDRs: [10.1.0.0/16]\n", nil, 1, []string{"4 CIDRs together"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.content)
			out, errOut, code := run(append([]string{"--config", p}, tc.flags...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output does not mention %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
	if _, errOut, code := run("--config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("missing file: exit %d, %q", code, errOut)
	}
}

// TestMasqueradeAddress: --masquerade-address makes the flows of an
// interface leave with a secondary address; while that address is missing,
// new flows fail closed (counted, logged, in the metric) and recover when it
// appears.
func TestMasqueradeAddress(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		secondary := netip.MustParseAddr("172.31.0.9")
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate,
			ExtraArgs: []string{"--masquerade-address=" + Uplink + "=" + secondary.String()}})
		if err := a.WaitLog("Chosen masquerade address is not on the interface", 0, ReadyTimeout); err != nil {
			t.Fatal(err)
		}
		before := readStats(t, a)["egress_no_iface"]
		if _, err := tp.Pod1.TCPPeer(tp.Internet.TCPAddr(), 0, time.Second); err == nil {
			t.Fatal("a flow went out while the chosen address is missing")
		}
		if readStats(t, a)["egress_no_iface"] <= before {
			t.Errorf("egress_no_iface did not count the dropped flow")
		}
		if e := explainAgent(t, a, Pod1IP.String(), InternetIP.String()); e.Verdict != "drop" {
			t.Errorf("explain: %s, want drop (%s)", e.Verdict, e.Reason)
		}
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP) // not masqueraded: unaffected
		from := a.LogOffset()
		tp.Node.IP(t, "addr", "add", secondary.String()+"/24", "dev", Uplink)
		if err := a.WaitLog("Masquerading to the chosen address", from, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		if _, err := waitSeen(tp.Pod1, tp.Internet, secondary, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		expectSource(t, tp.Pod1, tp.Internet, secondary)
		// The host's own traffic keeps the primary address.
		expectSource(t, tp.Node, tp.Internet, NodeIP)
	})
}

// TestSourceCIDRs: with --source-cidrs only pods are masqueraded; a host
// routed through the node (a VM) keeps its address, counted; without the
// flag (a restart) it is masqueraded as upstream does.
func TestSourceCIDRs(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgMasqAll,
			ExtraArgs: []string{"--source-cidrs=" + NodePodCIDR.String()}})
		vmIP, vmGW := netip.MustParseAddr("10.99.0.5"), netip.MustParseAddr("10.99.0.1")
		vm := newNetns(t, tp.ID, "vm")
		vm.Addr = vmIP
		vm.Sysctl(t, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
		vm.IP(t, "link", "set", "lo", "up")
		vm.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-vm", "netns", tp.Node.Name)
		vm.IP(t, "link", "set", "eth0", "up")
		tp.Node.IP(t, "link", "set", "veth-vm", "up")
		vm.IP(t, "addr", "add", vmIP.String()+"/24", "dev", "eth0")
		tp.Node.IP(t, "addr", "add", vmGW.String()+"/24", "dev", "veth-vm")
		vm.IP(t, "route", "add", "default", "via", vmGW.String())
		tp.Router.IP(t, "route", "add", "10.99.0.0/24", "via", NodeIP.String())
		tp.VPC.IP(t, "route", "add", "10.99.0.0/24", "via", RouterVPCIP.String())

		before := readStats(t, a)["egress_not_source"]
		expectTCP(t, vm, tp.VPC, vmIP)
		expectUDP(t, vm, tp.VPC, vmIP)
		expectSource(t, tp.Pod1, tp.VPC, NodeIP)
		if readStats(t, a)["egress_not_source"] <= before {
			t.Errorf("egress_not_source did not count the routed flows")
		}

		a.Stop(t, syscall.SIGTERM)
		a.Args = a.Args[:len(a.Args)-1] // without --source-cidrs
		a.Start(t)
		if err := waitPeer(vm, netip.AddrPortFrom(VPCIP, TCPPort), NodeIP, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMasqueradeExceptionIPv6: the same for IPv6 (the trie decides): an
// exception inside fd00::/8 is masqueraded to the node's IPv6 address, its
// neighbour keeps the pod address, live.
func TestMasqueradeExceptionIPv6(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent6(t, mode)
		ds := tp.V6
		neighbour := netip.MustParseAddr("fd00:100::11")
		ds.VPC.IP(t, "-6", "addr", "add", neighbour.String()+"/64", "dev", "eth0", "nodad")
		dst := netip.AddrPortFrom(neighbour, TCPPort)
		ds.VPC.ListenTCP(t, dst)
		if err := waitPeer(ds.Pod1, dst, Pod1IP6, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		WriteConfigRename(t, a.ConfigPath, cfg6+"masqueradeCIDRs:\n  - 'fd00:100::11/128'\n")
		if err := waitPeer(ds.Pod1, dst, Node6, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		if err := waitPeer(ds.Pod1, netip.AddrPortFrom(VPC6, TCPPort), Pod1IP6, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		if e := explainAgent(t, a, Pod1IP6.String(), neighbour.String(), "tcp", "8080"); e.Verdict != "masquerade" ||
			e.DecidedBy == nil || e.DecidedBy.Prefix != "fd00:100::11/128" || e.Overrides == nil || e.Overrides.Prefix != "fd00::/8" {
			t.Errorf("explain: %+v", e)
		}
		WriteConfigRename(t, a.ConfigPath, cfg6)
		if err := waitPeer(ds.Pod1, dst, Pod1IP6, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
	})
}
