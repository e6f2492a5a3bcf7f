package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// Tier 1 with privileges: the real datapath's maps, loaded and pinned on a
// bpffs of the test's own, no program attached. Run with -race: the expiry
// goroutine, the config sync and the scrape share NonMasq and the metrics.

func openTestDatapath(t *testing.T) *loader.Datapath {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load the datapath and mount a bpffs; run `sudo go test ./cmd/...`")
	}
	dir := t.TempDir()
	if err := syscall.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	dp, err := loader.Open(loader.Options{PinPath: filepath.Join(dir, "ipm"), NATMaxEntries: 1 << 16, SmallIPv6: true})
	if err != nil {
		t.Fatalf("open the datapath: %+v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func be16(p uint16) uint16 { return p>>8 | p<<8 }

// fillFlows writes n UDP flows (both halves) into ipm_nat4, last seen at
// seen (CLOCK_MONOTONIC), pods numbered from first.
func fillFlows(t *testing.T, dp *loader.Datapath, first, n int, seen time.Duration) {
	t.Helper()
	node, remote := netip.MustParseAddr("172.31.0.2"), netip.MustParseAddr("203.0.113.10")
	var keys []loader.BPFIpmNatKey
	var vals []loader.BPFIpmNatEntry
	for i := first; i < first+n; i++ {
		pod := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		port := uint16(1024 + i)
		keys = append(keys,
			loader.BPFIpmNatKey{Saddr: be32(pod), Daddr: be32(remote), Sport: be16(40000), Dport: be16(53), Proto: syscall.IPPROTO_UDP, Dir: loader.BPFIpmDirIPM_DIR_EGRESS},
			loader.BPFIpmNatKey{Saddr: be32(remote), Daddr: be32(node), Sport: be16(53), Dport: be16(port), Proto: syscall.IPPROTO_UDP, Dir: loader.BPFIpmDirIPM_DIR_INGRESS})
		vals = append(vals,
			loader.BPFIpmNatEntry{CreatedNs: uint64(seen), LastSeenNs: uint64(seen), Addr: be32(node), Port: be16(port), Kind: loader.BPFIpmKindIPM_KIND_MASQ},
			loader.BPFIpmNatEntry{CreatedNs: uint64(seen), LastSeenNs: uint64(seen), Addr: be32(pod), Port: be16(40000), Kind: loader.BPFIpmKindIPM_KIND_MASQ})
	}
	if _, err := dp.Maps.IpmNat4.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatalf("fill ipm_nat4: %v", err)
	}
}

var testTimeouts = maps.Timeouts{TCPSyn: time.Minute, TCPEstablished: 24 * time.Hour, TCPFin: time.Minute, TCPRst: 10 * time.Second,
	UDP: 30 * time.Second, UDPStream: 2 * time.Minute, ICMP: 30 * time.Second}

func newTestExpiry(t *testing.T, dp *loader.Datapath, interval time.Duration, obs *observer) (*expiry, *maps.NonMasq) {
	t.Helper()
	settings, err := maps.OpenSettings(dp)
	if err != nil {
		t.Fatal(err)
	}
	nonMasq := maps.NewNonMasq(dp, settings)
	clock := &datapathClock{clock: maps.NewClock(dp), settings: settings}
	obs.progress.setInterval(interval)
	return newExpiry(interval, testTimeouts,
		[]*maps.NATTable{maps.NewNATTable(dp), maps.NewNAT6Table(dp)},
		[]*maps.Inbound{maps.NewInbound(dp), maps.NewInbound6(dp)},
		[]*maps.Inbound{maps.NewNomasqTCP(dp), maps.NewNomasqTCP6(dp)},
		nonMasq, clock, obs), nonMasq
}

// TestExpiryBesideConfigSync: the expiry goroutine removes the expired flows
// and reports every table while the run loop applies configurations to the
// same NonMasq and scrapes read the metrics; it ends promptly with ctx.
func TestExpiryBesideConfigSync(t *testing.T) {
	dp := openTestDatapath(t)
	const live, expired = 300, 700
	fillFlows(t, dp, 0, expired, maps.Now()-time.Hour)
	fillFlows(t, dp, expired, live, maps.Now()+time.Hour) // stays live for the test
	obs := newObserver()
	obs.setDatapath(dp)
	exp, nonMasq := newTestExpiry(t, dp, 20*time.Millisecond, obs)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		exp.run(ctx)
	}()
	sets := []maps.CIDRSet{
		maps.NewCIDRSet([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}),
		maps.NewCIDRSet([]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}),
	}
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		if err := nonMasq.Apply(sets[i%2]); err != nil {
			t.Fatalf("apply beside the expiry: %v", err)
		}
		if _, err := testutil.GatherAndCount(obs.metrics.reg); err != nil {
			t.Fatalf("scrape beside the expiry: %v", err)
		}
		if s, ok := obs.metrics.datapath.passes.load("ipv4"); ok && s.Entries == 2*live && i >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no pass left only the live flows within a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the expiry did not stop within 30 s of ctx ending")
	}
	t.Logf("stopped %v after ctx ended", time.Since(stopped))

	for _, table := range expiryTables {
		if n := passCount(t, obs, table); n == 0 {
			t.Errorf("no pass over %s recorded", table)
		}
		for _, reason := range []string{failRead, failDelete} {
			if v := testutil.ToFloat64(obs.metrics.expiry.failures.WithLabelValues(table, reason)); v != 0 {
				t.Errorf("expiry_failures_total{%s,%s} = %v", table, reason, v)
			}
		}
	}
	if v := testutil.ToFloat64(obs.metrics.natExpired); v != expired {
		t.Errorf("nat_expired_total = %v, want the %d expired flows", v, expired)
	}
	if p := obs.progress.failing(); len(p) != 0 {
		t.Errorf("readiness after good passes: %q", p)
	}
}

// TestExpiryStopsMidPass: a pass paced over a long interval is sleeping
// between two chunks when ctx ends; it returns at once instead of sleeping
// on, and a walk cut short is not counted as a failure.
func TestExpiryStopsMidPass(t *testing.T) {
	dp := openTestDatapath(t)
	fillFlows(t, dp, 0, 3000, maps.Now()+time.Hour) // 6000 entries: several chunks
	obs := newObserver()
	exp, _ := newTestExpiry(t, dp, time.Hour, obs)
	exp.chunks = 2 // half an hour a chunk
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(200 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	exp.pass(ctx)
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the pass returned %v after it started, want soon after ctx ended (200 ms)", d)
	}
	if v := testutil.ToFloat64(obs.metrics.expiry.failures.WithLabelValues("nat_ipv4", failRead)); v != 0 {
		t.Errorf("a pass cut short by ctx counted as a failure: %v", v)
	}
	if p := obs.progress.stuck(time.Now()); len(p) != 0 {
		t.Errorf("a stopped pass still counts as running: %q", p)
	}
}

// passCount is how many passes over table the duration histogram holds.
func passCount(t *testing.T, obs *observer, table string) uint64 {
	t.Helper()
	fams, err := obs.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != metricsNamespace+"_expiry_pass_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}
