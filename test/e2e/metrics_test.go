package e2e

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
)

// TestMetrics scrapes /metrics from inside the node namespace while traffic
// flows: the datapath counters move, the NAT table shows the flows (as the
// next expiry pass finds them) and its capacity, the expiry reports its
// passes, the config sync metrics count successes, and a rejected config
// shows up (counter, gauge and readiness) until a good file returns.
func TestMetrics(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		// A short interval: the NAT gauges come from the expiry passes.
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--gc-interval=1s"}})
		node := tp.Node
		if err := waitProbe(node, "/readyz", http.StatusOK, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		before := scrape(t, node)

		stream, err := tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Stop()
		expectSource(t, tp.Pod2, tp.Internet, NodeIP) // one TCP, UDP and ICMP flow each
		expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)         // not masqueraded
		time.Sleep(500 * time.Millisecond)
		during := scrape(t, node)
		time.Sleep(500 * time.Millisecond)
		later := scrape(t, node)

		grew := func(event string, from, to Metrics, min float64) {
			t.Helper()
			a, b := from.packets(t, event), to.packets(t, event)
			if b-a < min {
				t.Errorf("%s: %v -> %v, want it to grow by at least %v", event, a, b, min)
			}
		}
		grew("egress_new_flow", before, during, 4) // stream, TCP, UDP, ICMP
		grew("egress_translated", before, during, 10)
		grew("ingress_translated", before, during, 10)
		grew("egress_nomasq", before, during, 3)
		// The stream alone keeps them moving between two scrapes.
		grew("egress_translated", during, later, 10)
		grew("ingress_translated", during, later, 10)

		// The flows show up with the next complete expiry pass,
		during = waitMetrics(t, node, NATFlowsTimeout, func(m Metrics) bool {
			tcp, _ := m.Value("ip_masq_agent_nat_flows", "protocol=tcp", "state=established")
			udp, _ := m.Value("ip_masq_agent_nat_flows", "protocol=udp")
			icmp, _ := m.Value("ip_masq_agent_nat_flows", "protocol=icmp")
			// and a pass has gone through every table.
			passes, _ := m.Value("ip_masq_agent_expiry_pass_duration_seconds", "table=exempt_ipv6")
			return tcp >= 1 && udp >= 1 && icmp >= 1 && passes >= 1
		})
		for _, table := range []string{"nat_ipv4", "inbound_ipv4", "exempt_ipv4", "nat_ipv6", "inbound_ipv6", "exempt_ipv6"} {
			if v := during.Must(t, "ip_masq_agent_expiry_pass_duration_seconds", "table="+table); v < 1 {
				t.Errorf("expiry_pass_duration_seconds{%s} has %v observations, want at least one pass", table, v)
			}
			if v := during.Must(t, "ip_masq_agent_expiry_last_success_timestamp_seconds", "table="+table); time.Since(time.Unix(int64(v), 0)) > time.Minute {
				t.Errorf("expiry_last_success_timestamp_seconds{%s} = %v, want about now", table, v)
			}
			if v := during.Must(t, "ip_masq_agent_expiry_failures_total", "table="+table); v != 0 {
				t.Errorf("expiry_failures_total{%s} = %v, want 0", table, v)
			}
		}
		if v := during.Must(t, "ip_masq_agent_expiry_entries_scanned_total", "table=nat_ipv4"); v < 8 {
			t.Errorf("expiry_entries_scanned_total{nat_ipv4} = %v, want at least the flows' entries", v)
		}
		if v := during.Must(t, "ip_masq_agent_nat_flows", "protocol=tcp", "state=established"); v < 1 {
			t.Errorf("nat_flows{tcp,established} = %v, want at least the stream", v)
		}
		for _, proto := range []string{"udp", "icmp"} {
			if v, _ := during.Value("ip_masq_agent_nat_flows", "protocol="+proto); v < 1 {
				t.Errorf("nat_flows{protocol=%s} = %v, want at least 1", proto, v)
			}
		}
		if v := during.Must(t, "ip_masq_agent_nat_entries"); v < 8 {
			t.Errorf("nat_entries = %v, want two per flow (at least 8)", v)
		}
		if v := during.Must(t, "ip_masq_agent_nat_capacity_entries", "family=ipv4"); v != 262144 {
			t.Errorf("nat_capacity_entries = %v, want the default --nat-max-entries 262144", v)
		}
		if v := during.Must(t, "ip_masq_agent_interface_attached", "interface="+Uplink); v != 1 {
			t.Errorf("interface_attached{%s} = %v, want 1", Uplink, v)
		}
		if v := during.Must(t, "ip_masq_agent_nonmasquerade_cidrs", "family=ipv4", "origin=configured"); v != 1 {
			t.Errorf("nonmasquerade_cidrs{configured} = %v, want 1 (10.0.0.0/8)", v)
		}
		if v := during.Must(t, "ip_masq_agent_nonmasquerade_cidrs", "family=ipv4", "origin=link_local"); v != 1 {
			t.Errorf("nonmasquerade_cidrs{link_local} = %v, want 1 (169.254.0.0/16)", v)
		}
		if v := during.Must(t, "ip_masq_agent_config_syncs_total", "result=success"); v < 1 {
			t.Errorf("config_syncs_total{success} = %v, want at least 1", v)
		}
		if v := during.Must(t, "ip_masq_agent_config_sync_duration_seconds"); v < 1 {
			t.Errorf("config_sync_duration_seconds has %v observations, want at least 1", v)
		}
		if v := during.Must(t, "ip_masq_agent_config_last_success_timestamp_seconds"); time.Since(time.Unix(int64(v), 0)) > time.Minute {
			t.Errorf("config_last_success_timestamp_seconds = %v, want about now", v)
		}
		if v := during.Must(t, "ip_masq_agent_config_rejected"); v != 0 {
			t.Errorf("config_rejected = %v with a good file, want 0", v)
		}
		if _, ok := during.Value("ip_masq_agent_build_info"); !ok {
			t.Error("no ip_masq_agent_build_info")
		}
		if rss, ok := during.Value("process_resident_memory_bytes"); ok {
			t.Logf("agent resident memory: %.1f MiB", rss/(1<<20))
		}
		if _, ok := during.Value("go_goroutines"); !ok {
			t.Error("no Go runtime metrics (go_goroutines)")
		}

		// A rejected file: counted, flagged, and the pod turns unready
		// while the datapath keeps the last good config.
		okTime := during.Must(t, "ip_masq_agent_config_last_success_timestamp_seconds")
		off := a.LogOffset()
		WriteConfigRename(t, a.ConfigPath, cfgInvalid)
		if err := a.WaitLog(LogRejected, off, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		bad := scrape(t, node)
		if v := bad.Must(t, "ip_masq_agent_config_syncs_total", "result=invalid"); v < 1 {
			t.Errorf("config_syncs_total{invalid} = %v after a rejected file, want at least 1", v)
		}
		if v := bad.Must(t, "ip_masq_agent_config_rejected"); v != 1 {
			t.Errorf("config_rejected = %v after a rejected file, want 1", v)
		}
		if v := bad.Must(t, "ip_masq_agent_config_last_success_timestamp_seconds"); v != okTime {
			t.Errorf("config_last_success_timestamp_seconds moved from %v to %v on a rejected file", okTime, v)
		}
		if v := bad.Must(t, "ip_masq_agent_nonmasquerade_cidrs", "family=ipv4", "origin=configured"); v != 1 {
			t.Errorf("nonmasquerade_cidrs{configured} = %v after a rejected file, want the last good 1", v)
		}
		code, body := healthProbe(node, "/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "10.0.0.1/8") {
			t.Errorf("/readyz with a rejected file: %d %q, want 503 naming 10.0.0.1/8", code, body)
		}
		if code, body := healthProbe(node, "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz with a rejected file: %d %q, want 200 (a restart would not help)", code, body)
		}
		expectTCP(t, tp.Pod1, tp.VPC, Pod1IP) // the last good config is in force

		// The same good file as before the rejection: ready again.
		WriteConfigRename(t, a.ConfigPath, cfgPrivate)
		if err := waitProbe(node, "/readyz", http.StatusOK, ConfigEffectTimeout); err != nil {
			t.Error(err)
		}
		good := scrape(t, node)
		if v := good.Must(t, "ip_masq_agent_config_rejected"); v != 0 {
			t.Errorf("config_rejected = %v after the good file returned, want 0", v)
		}
		if v := good.Must(t, "ip_masq_agent_config_last_success_timestamp_seconds"); v < okTime {
			t.Errorf("config_last_success_timestamp_seconds went back from %v to %v", okTime, v)
		}
		if res := stream.Stop(); res.Err != nil || res.Peer.Addr() != NodeIP {
			t.Errorf("stream during the scrapes: %v", res)
		}
	})
}

// NATFlowsTimeout bounds the wait for flows to show in the NAT gauges: the
// next expiry pass at --gc-interval=1s, generous for a loaded machine.
const NATFlowsTimeout = 30 * time.Second

// waitMetrics scrapes until ok holds, or fails the test after timeout; it
// returns the scrape that satisfied ok.
func waitMetrics(t testing.TB, ns *Netns, timeout time.Duration, ok func(Metrics) bool) Metrics {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := scrape(t, ns)
		if ok(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics did not show what the test waits for within %v", timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestHealthDetectsDetach: when a program of ours vanishes from a hook, the
// same agent process attaches it again and /healthz stays or turns good
// without a restart; while a repair fails (tcx: the link pin is blocked, so
// the new link cannot be kept), /healthz is 503 naming the interface, and
// good again once the repair succeeds.
func TestHealthDetectsDetach(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		pid := a.Pid()
		if err := waitProbe(tp.Node, "/healthz", http.StatusOK, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		switch mode {
		case "tcx":
			pin := filepath.Join(a.PinPath, "links", Uplink+"_egress")
			l, err := link.LoadPinnedLink(pin, nil)
			if err != nil {
				t.Fatalf("open the pinned egress link: %v", err)
			}
			// A non-empty directory where the pin goes: the agent can
			// attach a new link but not pin it, so the repair fails.
			if err := os.Remove(pin); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(pin, "blocked"), 0o700); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(pin) })
			err = l.Detach()
			l.Close()
			if err != nil {
				t.Fatalf("detach the egress link: %v", err)
			}
			if err := waitProbe(tp.Node, "/healthz", http.StatusServiceUnavailable, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if _, body := healthProbe(tp.Node, "/healthz"); !strings.Contains(body, Uplink) || !strings.Contains(body, "not attached") {
				t.Errorf("/healthz while the repair fails: %q, want it to name %s as not attached", body, Uplink)
			}
			if v := scrape(t, tp.Node).Must(t, "ip_masq_agent_interface_attached", "interface="+Uplink); v != 0 {
				t.Errorf("interface_attached{%s} = %v while the repair fails, want 0", Uplink, v)
			}
			if err := a.WaitLog("Repairing attachment failed", 0, 5*time.Second); err != nil {
				t.Errorf("no failed repair logged while the pin is blocked: %v", err)
			}
			if err := os.RemoveAll(pin); err != nil {
				t.Fatal(err)
			}
		case "tc":
			tp.Node.MustExec(t, "tc", "filter", "del", "dev", Uplink, "egress")
		}
		if err := waitProbe(tp.Node, "/healthz", http.StatusOK, 5*time.Second); err != nil {
			t.Errorf("after the repair: %v\n%s", err, a.Logs())
		}
		if v := scrape(t, tp.Node).Must(t, "ip_masq_agent_interface_attached", "interface="+Uplink); v != 1 {
			t.Errorf("interface_attached{%s} = %v after the repair, want 1", Uplink, v)
		}
		if a.Pid() != pid {
			t.Errorf("the agent restarted (pid %d, was %d)", a.Pid(), pid)
		}
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
	})
}

// TestListenerTaken: when the health port is taken, the agent exits non-zero
// naming the address, before it creates pins or attaches anything.
func TestListenerTaken(t *testing.T) {
	requireAgent(t)
	t.Parallel()
	tp := NewTopology(t)
	var l net.Listener
	if err := tp.Node.Do(func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:9442")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pin := filepath.Join(mountBPFFS(t), "ipm")
	cmd := exec.Command("ip", "netns", "exec", tp.Node.Name, agentBin,
		"--config=/nonexistent/ip-masq-agent", "--interfaces="+Uplink, "--pin-path="+pin)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("agent still running with its health port taken:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "127.0.0.1:9442") {
		t.Errorf("agent with its health port taken: %v, want a non-zero exit naming 127.0.0.1:9442:\n%s", err, out)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin directory %s exists (%v): the datapath was touched before the listener failed", pin, err)
	}
	if out, _ := tp.Node.Exec("tc", "filter", "show", "dev", Uplink, "egress"); strings.Contains(out, "ipm_") {
		t.Errorf("a filter of ours is attached:\n%s", out)
	}
}
