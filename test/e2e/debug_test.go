package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// runDebug runs `ip-masq-agent debug --pin-path=... args...` in the node
// namespace and returns its standard output and standard error.
func runDebug(t *testing.T, a *Agent, pinPath string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	argv := append([]string{"netns", "exec", a.Topo.Node.Name, agentBin, "debug", "--pin-path=" + pinPath}, args...)
	cmd := exec.Command("ip", argv...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestDebugCommand: `ip-masq-agent debug` prints the active CIDRs, the NAT
// table in human terms (pod -> remote via node, protocol, state, idle time)
// with host reservations, the interfaces and the counters; it reads the pins
// next to a running agent without disturbing it, and after the agent
// stopped.
func TestDebugCommand(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		tcp, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 40000, ProbeTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer tcp.Close()
		if err := tcp.Echo([]byte("established\n"), ProbeTimeout); err != nil {
			t.Fatal(err)
		}
		udp, err := tp.Pod1.UDPPeer(tp.Internet.UDPAddr(), 40001, ProbeTimeout)
		if err != nil {
			t.Fatal(err)
		}
		pingID := randomID()
		if _, err := tp.Internet.PingSource(tp.Pod2, pingID, ProbeTimeout); err != nil {
			t.Fatal(err)
		}
		host, err := tp.Node.DialTCP(tp.Internet.TCPAddr(), 45000, ProbeTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer host.Close()

		check := func(t *testing.T, out string) {
			t.Helper()
			for _, want := range []string{
				// Flows, exactly as the README shows them.
				fmt.Sprintf(`(?m)^  10\.244\.1\.2:40000 -> 203\.0\.113\.10:8080 via 172\.31\.0\.2:%d tcp established \d+s$`, tcp.Peer.Port()),
				fmt.Sprintf(`(?m)^  10\.244\.1\.2:40001 -> 203\.0\.113\.10:8081 via 172\.31\.0\.2:%d udp established \d+s$`, udp.Peer.Port()),
				fmt.Sprintf(`(?m)^  10\.244\.1\.3:%d -> 203\.0\.113\.10:0 via 172\.31\.0\.2:\d+ icmp established \d+s$`, pingID),
				// The host's connection holds its tuple.
				`(?m)^  172\.31\.0\.2:45000 -> 203\.0\.113\.10:8080 tcp established \d+s$`,
				// The active set, with the link-local range it implies.
				`(?m)^  10\.0\.0\.0/8 +configured$`,
				`(?m)^  169\.254\.0\.0/16 +link-local`,
				`(?m)^Non-masquerade CIDRs \(trie [01] active, 2 prefixes\):$`,
				`(?m)^NAT table \(IPv4\): \d+ of 262144 entries in use, [3-9] flows, [1-9]\d* host reservations`,
				`(?m)^NAT table \(IPv6\): 0 of 1024 entries in use, 0 flows`, // token size without --enable-ipv6
				// The interface and how it is attached.
				fmt.Sprintf(`(?m)^  %s +ifindex \d+ +masquerade as 172\.31\.0\.2 +ingress %s, egress %s$`, Uplink, mode, mode),
				`(?m)^Node ports: \[1024-65535\] \(64512 ports\), random-fully true$`,
			} {
				if !regexp.MustCompile(want).MatchString(out) {
					t.Errorf("debug output has no line matching %s", want)
				}
			}
			counters := map[string]uint64{}
			for _, m := range regexp.MustCompile(`(?m)^  ([a-z_]+) +(\d+) +\d+$`).FindAllStringSubmatch(out, -1) {
				counters[m[1]], _ = strconv.ParseUint(m[2], 10, 64)
			}
			for _, c := range []string{"egress_new_flow", "egress_translated", "ingress_translated", "egress_host"} {
				if counters[c] == 0 {
					t.Errorf("counter %s is %d, want it counted", c, counters[c])
				}
			}
			if t.Failed() {
				t.Logf("debug output:\n%s", out)
			}
		}

		t.Run("agent running", func(t *testing.T) {
			out, stderr, err := runDebug(t, a, a.PinPath)
			if err != nil {
				t.Fatalf("debug: %v\n%s%s", err, out, stderr)
			}
			if stderr != "" {
				t.Errorf("debug wrote to stderr: %s", stderr)
			}
			check(t, out)
			t.Logf("debug output:\n%s", out)
			if !a.Running() {
				t.Error("the agent stopped while debug ran")
			}
		})

		t.Run("filters and json", func(t *testing.T) {
			testDebugFilters(t, a, tcp.Peer.Port())
		})

		// The agent still holds its lock and works after debug.
		if err := tcp.Echo([]byte("after debug\n"), ProbeTimeout); err != nil {
			t.Error(err)
		}
		t.Run("agent stopped", func(t *testing.T) {
			a.Stop(t, syscall.SIGTERM)
			out, stderr, err := runDebug(t, a, a.PinPath)
			if err != nil {
				t.Fatalf("debug without an agent: %v\n%s%s", err, out, stderr)
			}
			check(t, out)
		})

		t.Run("wrong pin path", func(t *testing.T) {
			out, stderr, err := runDebug(t, a, filepath.Join(a.BPFFS, "nothing-here"))
			if err == nil || !strings.Contains(stderr, "no ip-masq-agent pins") {
				t.Errorf("debug on an empty path: %v, stderr %q, stdout %q; want a non-zero exit and a clear message", err, stderr, out)
			}
		})
	})
}

// debugLine is one line of `debug -o json` (docs/json-output.md).
type debugLine struct {
	Kind      string  `json:"kind"`
	Family    string  `json:"family"`
	Proto     string  `json:"proto"`
	Pod       string  `json:"pod"`
	Remote    string  `json:"remote"`
	Node      string  `json:"node"`
	State     string  `json:"state"`
	ReplyHalf bool    `json:"reply_half"`
	Replied   bool    `json:"replied"`
	Capacity  int     `json:"capacity"`
	Entries   int     `json:"entries"`
	Flows     int     `json:"flows"`
	Shown     int     `json:"shown"`
	Complete  bool    `json:"complete"`
	Error     *string `json:"error"`
}

// debugJSON runs `debug -o json args...` and decodes every line, failing
// the test on a line that is not one JSON object.
func debugJSON(t *testing.T, a *Agent, args ...string) []debugLine {
	t.Helper()
	out, stderr, err := runDebug(t, a, a.PinPath, append([]string{"-o", "json"}, args...)...)
	if err != nil || stderr != "" {
		t.Fatalf("debug -o json %v: %v\n%s%s", args, err, out, stderr)
	}
	var lines []debugLine
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var d debugLine
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			t.Fatalf("debug -o json %v: line %q is no JSON object: %v", args, l, err)
		}
		if err := json.Unmarshal([]byte(l), &d); err != nil || d.Kind == "" {
			t.Fatalf("debug -o json %v: line %q: %v (kind %q)", args, l, err, d.Kind)
		}
		lines = append(lines, d)
	}
	return lines
}

// testDebugFilters: `debug -o json` prints the flows, host reservations
// and a closing table object per family, one JSON object a line; --pod,
// --remote, --state and --limit choose what is printed.
func testDebugFilters(t *testing.T, a *Agent, tcpNodePort uint16) {
	all := debugJSON(t, a)
	tables := map[string]debugLine{}
	var flows, reservations []debugLine
	for _, d := range all {
		switch d.Kind {
		case "table":
			tables[d.Family] = d
		case "flow":
			flows = append(flows, d)
		case "reservation":
			reservations = append(reservations, d)
		default:
			t.Errorf("line of unknown kind %q", d.Kind)
		}
	}
	if v4 := tables["ipv4"]; v4.Capacity != 262144 || !v4.Complete || v4.Flows < 3 || v4.Shown != len(flows)+len(reservations) {
		t.Errorf("ipv4 table object %+v, want capacity 262144 (the default --nat-max-entries), complete, at least 3 flows, every entry shown (%d)", v4, len(flows)+len(reservations))
	}
	if _, ok := tables["ipv6"]; !ok {
		t.Error("no ipv6 table object")
	}
	wantTCP := debugLine{Kind: "flow", Family: "ipv4", Proto: "tcp", Pod: "10.244.1.2:40000", Remote: "203.0.113.10:8080",
		Node: fmt.Sprintf("172.31.0.2:%d", tcpNodePort), State: "established", ReplyHalf: true, Replied: true}
	found := false
	for _, f := range flows {
		found = found || f == wantTCP
	}
	if !found {
		t.Errorf("no flow %+v in %+v", wantTCP, flows)
	}
	found = false
	for _, r := range reservations {
		found = found || r.Node == "172.31.0.2:45000" && r.Remote == "203.0.113.10:8080" && r.Proto == "tcp"
	}
	if !found {
		t.Errorf("no host reservation of 172.31.0.2:45000 in %+v", reservations)
	}

	entries := func(lines []debugLine) (out []debugLine) {
		for _, d := range lines {
			if d.Kind != "table" {
				out = append(out, d)
			}
		}
		return out
	}
	pod := entries(debugJSON(t, a, "--pod", "10.244.1.2"))
	if len(pod) < 2 {
		t.Errorf("--pod 10.244.1.2: %d entries, want its TCP and UDP flow", len(pod))
	}
	for _, d := range pod {
		if d.Kind != "flow" || !strings.HasPrefix(d.Pod, "10.244.1.2:") {
			t.Errorf("--pod 10.244.1.2 printed %+v", d)
		}
	}
	remote := entries(debugJSON(t, a, "--remote", "203.0.113.10:8081"))
	if len(remote) != 1 || remote[0].Proto != "udp" || remote[0].Remote != "203.0.113.10:8081" {
		t.Errorf("--remote 203.0.113.10:8081: %+v, want the UDP flow alone", remote)
	}
	for _, d := range entries(debugJSON(t, a, "--state", "opening")) {
		if d.State != "opening" {
			t.Errorf("--state opening printed %+v", d)
		}
	}
	limited := debugJSON(t, a, "--limit", "1")
	if n := len(entries(limited)); n != 1 {
		t.Errorf("--limit 1: %d entries, want 1 (one family has entries)", n)
	}

	out, _, err := runDebug(t, a, a.PinPath, "--pod", "10.244.1.3")
	if err != nil {
		t.Fatalf("debug --pod: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^  10\.244\.1\.3:\d+ -> 203\.0\.113\.10:0 via 172\.31\.0\.2:\d+ icmp established \d+s$`).MatchString(out) ||
		strings.Contains(out, "10.244.1.2:40000") || strings.Contains(out, "172.31.0.2:45000 ->") {
		t.Errorf("debug --pod 10.244.1.3 (text) shows other flows or misses its own:\n%s", out)
	}
	if _, stderr, err := runDebug(t, a, a.PinPath, "--state", "bogus"); err == nil || !strings.Contains(stderr, "--state") {
		t.Errorf("debug --state bogus: %v %q, want a non-zero exit naming --state", err, stderr)
	}
}

// TestBPFToolNamedFields: every map pinned under --pin-path carries BTF, so
// `bpftool map dump pinned` prints named fields (docs/behaviour.md §14): every entry of a
// non-empty map is shown "formatted", with its key and value as objects of
// named fields.
func TestBPFToolNamedFields(t *testing.T) {
	requireAgent(t)
	if _, err := exec.LookPath("bpftool"); err != nil {
		t.Fatal("bpftool is not installed (make setup installs it)")
	}
	t.Parallel()
	tp, a := startAgent(t, AgentOptions{Mode: AttachModes[0], Config: cfgPrivate})
	c, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), 0, ProbeTimeout) // fills the NAT table
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectSource(t, tp.Node, tp.Internet, NodeIP) // host reservations

	entries, err := os.ReadDir(a.PinPath)
	if err != nil {
		t.Fatal(err)
	}
	nonEmpty := 0
	var memlock int64
	for _, e := range entries {
		if e.IsDir() { // links/
			continue
		}
		path := filepath.Join(a.PinPath, e.Name())
		out, err := exec.Command("bpftool", "-j", "map", "show", "pinned", path).CombinedOutput()
		if err != nil {
			t.Errorf("bpftool map show pinned %s: %v\n%s", path, err, out)
			continue
		}
		var info struct {
			Name    string `json:"name"`
			BTFID   int    `json:"btf_id"`
			Memlock int64  `json:"bytes_memlock"`
			Entries int64  `json:"max_entries"`
			MapType string `json:"type"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Errorf("bpftool map show %s: %v\n%s", e.Name(), err, out)
			continue
		}
		memlock += info.Memlock
		t.Logf("map %s: %s, %d entries at most, %d bytes", e.Name(), info.MapType, info.Entries, info.Memlock)
		if info.BTFID == 0 {
			t.Errorf("map %s (%s) has no BTF: bpftool prints raw bytes", e.Name(), info.Name)
		}
		out, err = exec.Command("bpftool", "-j", "map", "dump", "pinned", path).Output()
		if err != nil {
			t.Errorf("bpftool map dump pinned %s: %v", path, err)
			continue
		}
		var dump []map[string]json.RawMessage
		if err := json.Unmarshal(out, &dump); err != nil {
			t.Errorf("bpftool map dump %s: %v\n%.500s", e.Name(), err, out)
			continue
		}
		if len(dump) > 0 {
			nonEmpty++
		}
		for i, entry := range dump {
			f, ok := entry["formatted"]
			if !ok {
				t.Errorf("map %s entry %d is not formatted (no BTF for its key or value): %s", e.Name(), i, out)
				break
			}
			if !strings.Contains(string(f), `"value"`) || (e.Name() != "ipm_stats" && e.Name() != "ipm_settings" && !strings.Contains(string(f), `"key"`)) {
				t.Errorf("map %s entry %d: formatted entry without key or value: %s", e.Name(), i, f)
				break
			}
			if !regexp.MustCompile(`"value":\s*(\[\s*)?\{`).Match(f) && !regexp.MustCompile(`"values":`).Match(f) {
				t.Errorf("map %s entry %d: value has no named fields: %s", e.Name(), i, f)
				break
			}
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("%s:\n%.1500s", e.Name(), out)
		}
	}
	t.Logf("memory of the pinned maps (bytes_memlock): %.1f MiB", float64(memlock)/(1<<20))
	if nonEmpty < 5 {
		t.Errorf("only %d pinned maps had entries to check, want at least 5 (nat, a trie, settings, ifaces, local, stats)", nonEmpty)
	}
}
