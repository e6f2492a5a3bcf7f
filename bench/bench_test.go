package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets this test binary also act as the connection client and
// server that the harness starts in the pod and remote namespaces.
func TestMain(m *testing.M) {
	if runRole() {
		return
	}
	os.Exit(m.Run())
}

// TestSmoke runs every phase of the harness with tiny sizes and checks that
// it produced its outputs. It asserts nothing about the numbers: benchmarks
// are not tests.
func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bench smoke: needs root (network namespaces, bpffs, BPF); run `sudo make bench-smoke`")
	}
	for _, tool := range []string{"iperf3", "iptables-restore", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("bench smoke: %s not installed (`sudo make setup`)", tool)
		}
	}
	agent := os.Getenv("IPME_AGENT_BIN")
	if agent == "" {
		agent = filepath.Join(t.TempDir(), "ip-masq-agent")
		cmd := exec.Command("go", "build", "-o", agent, "./cmd/ip-masq-agent")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build the agent: %v\n%s", err, out)
		}
	}
	o := smokeOptions()
	o.AgentBin, o.Out = agent, t.TempDir()
	o.Log = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeOutputs(res, o.Out); err != nil {
		t.Fatal(err)
	}

	md, err := os.ReadFile(filepath.Join(o.Out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, section := range []string{"TCP throughput", "New connections per second", "Applying 100 CIDRs",
		"Nanoseconds per packet", "Cross-check under real traffic", "Memory", "Large NAT tables", "Targets"} {
		if !strings.Contains(string(md), section) {
			t.Errorf("results.md has no %q section:\n%s", section, md)
		}
	}
	png, err := os.ReadFile(filepath.Join(o.Out, "conn-rate.png"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Error("conn-rate.png is not a PNG")
	}
	if png, err := os.ReadFile(filepath.Join(o.Out, "scale.png")); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("scale.png: not a PNG (%v)", err)
	}
	var back Results
	js, err := os.ReadFile(filepath.Join(o.Out, "results.json"))
	if err == nil {
		err = json.Unmarshal(js, &back)
	}
	if err != nil {
		t.Fatalf("results.json: %v", err)
	}
	for _, m := range o.Modes {
		if len(back.Throughput[m]) == 0 || len(back.ConnRate[o.CIDRCounts[0]][m]) == 0 {
			t.Errorf("%s: no throughput or connection-rate figure", m)
		}
	}
	if len(back.Paths) == 0 || len(back.Apply.Agent) == 0 || back.Memory.RestRSS == 0 {
		t.Error("a phase produced nothing: test runs, config apply or memory")
	}
	if len(back.Scale) != len(o.Scale.Sizes) {
		t.Fatalf("scale phase: %d of %d table sizes measured", len(back.Scale), len(o.Scale.Sizes))
	}
	for _, s := range back.Scale {
		// The agent must have seen the table the harness wrote, and the
		// datapath runs must have produced figures.
		if int(s.TableMetric) != s.Entries || s.PeakHWM == 0 || len(s.Scrape) == 0 || len(s.Debug) == 0 || s.DP == nil || len(s.DP.EgressFull) == 0 || len(s.DP.LookupFull) == 0 || len(s.DP.TouchFull) == 0 {
			t.Errorf("scale phase at %d entries: incomplete %+v", s.Entries, s)
		}
	}
}

func TestCIDRsAreDistinctAndMissTheServer(t *testing.T) {
	c := cidrs(10000, 1)
	seen := map[string]bool{}
	for _, p := range c {
		if seen[p.String()] {
			t.Fatalf("duplicate %s", p)
		}
		seen[p.String()] = true
		if p.Contains(serverIP) {
			t.Fatalf("%s contains the server address", p)
		}
		if p != p.Masked() {
			t.Fatalf("%s is not aligned", p)
		}
	}
	if len(c) != 10000 {
		t.Fatalf("got %d CIDRs", len(c))
	}
}

func TestSample(t *testing.T) {
	s := sample{5, 1, 3, 2, 4}
	if s.median() != 3 || s.min() != 1 || s.max() != 5 || s.quantile(0.25) != 2 {
		t.Fatalf("median %v min %v max %v q1 %v", s.median(), s.min(), s.max(), s.quantile(0.25))
	}
}
