package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestDocsListEveryCounter: every datapath counter is a value of the event
// label of ip_masq_agent_datapath_packets_total, so the table of events in
// docs/behaviour.md §14.1 must name each one.
func TestDocsListEveryCounter(t *testing.T) {
	data, err := os.ReadFile("../../docs/behaviour.md")
	if err != nil {
		t.Fatal(err)
	}
	_, metrics, ok := strings.Cut(string(data), "\n### §14.1 Metrics\n")
	if !ok {
		t.Fatal("docs/behaviour.md has no §14.1 Metrics")
	}
	metrics, _, _ = strings.Cut(metrics, "\n### ")
	for _, f := range maps.Fields(loader.BPFIpmCounters{}) {
		if !strings.Contains(metrics, "`"+f.Name+"`") {
			t.Errorf("docs/behaviour.md §14.1 has no row for the counter %s", f.Name)
		}
	}
}

// TestMetricsWithoutDatapath: before the datapath is loaded, /metrics
// serves the agent's own metrics and both probes say it is starting.
func TestMetricsWithoutDatapath(t *testing.T) {
	o := newObserver()
	n, err := testutil.GatherAndCount(o.metrics.reg)
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	if n == 0 {
		t.Error("no metrics")
	}
	if err := testutil.GatherAndCompare(o.metrics.reg, strings.NewReader(`
# HELP ip_masq_agent_config_syncs_total Full reads of the config file, by result: success (applied), invalid (rejected, the last good config stays in force), error (valid, but writing the datapath failed).
# TYPE ip_masq_agent_config_syncs_total counter
ip_masq_agent_config_syncs_total{result="error"} 0
ip_masq_agent_config_syncs_total{result="invalid"} 0
ip_masq_agent_config_syncs_total{result="success"} 0
`), "ip_masq_agent_config_syncs_total"); err != nil {
		t.Error(err)
	}
	for _, check := range []func() []string{o.healthy, o.ready} {
		if p := check(); len(p) == 0 || !strings.HasPrefix(p[0], "starting") {
			t.Errorf("probe before the datapath is loaded: %q, want starting", p)
		}
	}
}

// TestConfigSyncedMetrics: each sync outcome moves the counters and gauges
// it should, and readiness follows whether the file in place is in force.
func TestConfigSyncedMetrics(t *testing.T) {
	o := newObserver()
	m := o.metrics
	configured := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("fd00::/8")}
	effective := append([]netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fe80::/10")}, configured...)
	set := maps.NewCIDRSet(configured, effective)

	o.configSynced(syncResult{outcome: syncSuccess, took: 3 * time.Millisecond, applied: set})
	if v := testutil.ToFloat64(m.configSyncs.WithLabelValues(syncSuccess)); v != 1 {
		t.Errorf("syncs{success} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.cidrs.WithLabelValues("ipv4", "configured")); v != 2 {
		t.Errorf("cidrs{configured} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.cidrs.WithLabelValues("ipv4", "link_local")); v != 1 {
		t.Errorf("cidrs{ipv4,link_local} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.cidrs.WithLabelValues("ipv6", "configured")); v != 1 {
		t.Errorf("cidrs{ipv6,configured} = %v, want 1", v)
	}
	last := testutil.ToFloat64(m.configLastOK)
	if time.Since(time.Unix(int64(last), 0)) > time.Minute {
		t.Errorf("last success %v, want about now", last)
	}
	if p := o.ready(); containsPrefix(p, "config") {
		t.Errorf("ready after a good sync: %q", p)
	}

	bad := errors.New(`CIDR "10.0.0.1/8" is not aligned`)
	o.configSynced(syncResult{outcome: syncInvalid, took: time.Millisecond, err: bad})
	if v := testutil.ToFloat64(m.configSyncs.WithLabelValues(syncInvalid)); v != 1 {
		t.Errorf("syncs{invalid} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.configRejected); v != 1 {
		t.Errorf("config_rejected = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.cidrs.WithLabelValues("ipv4", "configured")); v != 2 {
		t.Errorf("cidrs{configured} = %v after a rejected file, want the last good 2", v)
	}
	if v := testutil.ToFloat64(m.configLastOK); v != last {
		t.Errorf("last success moved on a rejected file: %v -> %v", last, v)
	}
	if p := o.ready(); !containsPrefix(p, "config file not in force") || !strings.Contains(strings.Join(p, "\n"), "10.0.0.1/8") {
		t.Errorf("ready after a rejected file: %q, want the reason", p)
	}

	o.configSynced(syncResult{outcome: syncError, took: time.Millisecond, err: errors.New("write trie")})
	if v := testutil.ToFloat64(m.configSyncs.WithLabelValues(syncError)); v != 1 {
		t.Errorf("syncs{error} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.configRejected); v != 0 {
		t.Errorf("config_rejected = %v after a valid file, want 0", v)
	}
	if n := testutil.CollectAndCount(m.configDuration); n != 1 {
		t.Errorf("%d duration series, want 1", n)
	}

	o.configSynced(syncResult{outcome: syncSuccess, applied: set})
	if p := o.ready(); containsPrefix(p, "config") {
		t.Errorf("ready after a good sync again: %q", p)
	}
}

func containsPrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// freeAddress returns a loopback address with a port that was free a moment
// ago.
func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func fetch(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestServeListeners: equal addresses share one listener with all three
// paths; an empty address turns its endpoints off; a taken port is an error
// that names it; the servers stop with the context.
func TestServeListeners(t *testing.T) {
	t.Run("one listener", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		addr := freeAddress(t)
		o := newObserver()
		if err := o.serve(ctx, addr, addr); err != nil {
			t.Fatal(err)
		}
		if code, body := fetch(t, "http://"+addr+"/metrics"); code != 200 || !strings.Contains(body, "ip_masq_agent_build_info") {
			t.Errorf("/metrics: %d\n%.300s", code, body)
		}
		if code, body := fetch(t, "http://"+addr+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
			t.Errorf("/healthz before the datapath: %d %q, want 503 starting", code, body)
		}
		if code, _ := fetch(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz before the datapath: %d, want 503", code)
		}
		cancel()
		if err := eventuallyDown(addr); err != nil {
			t.Error(err)
		}
	})
	t.Run("metrics off", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		addr := freeAddress(t)
		if err := newObserver().serve(ctx, "", addr); err != nil {
			t.Fatal(err)
		}
		if code, _ := fetch(t, "http://"+addr+"/metrics"); code != http.StatusNotFound {
			t.Errorf("/metrics with --metrics-address empty: %d, want 404", code)
		}
	})
	t.Run("port taken", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		free := freeAddress(t)
		err = newObserver().serve(context.Background(), free, l.Addr().String())
		if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
			t.Errorf("serve on a taken port: %v, want an error naming %s", err, l.Addr())
		}
		// The listener opened before the failure is closed again.
		if c, err := net.Dial("tcp", free); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the failed start", free)
		}
	})
}

// eventuallyDown waits until nothing accepts connections on addr.
func eventuallyDown(addr string) error {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New(addr + " still accepts connections after the context ended")
}
