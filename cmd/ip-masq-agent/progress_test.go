package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// TestExpiryFailuresMakeUnready: a table whose collection fails
// expiryFailLimit passes in a row makes /readyz fail with the table and the
// error, one success clears it, and /healthz never fails for it (a restart
// would not fix the map, and a crash loop would stop every table's expiry).
func TestExpiryFailuresMakeUnready(t *testing.T) {
	o := newObserver()
	o.progress.setInterval(10 * time.Second)
	readErr := errors.New("read NAT table: boom")
	fail := func() {
		o.passStarted(time.Now())
		o.tableCollected(tableResult{table: "nat_ipv4", family: "ipv4", reason: failRead, err: readErr})
		o.tableCollected(tableResult{table: "inbound_ipv4", family: "ipv4", scanned: 5})
		o.passEnded(time.Now())
	}
	for i := 1; i < expiryFailLimit; i++ {
		fail()
		if p := o.progress.failing(); len(p) != 0 {
			t.Fatalf("after %d failed passes: %q, want ready until %d", i, p, expiryFailLimit)
		}
	}
	fail()
	p := o.progress.failing()
	if len(p) != 1 || !strings.Contains(p[0], "nat_ipv4") || !strings.Contains(p[0], "boom") {
		t.Errorf("after %d failed passes: %q, want one problem naming nat_ipv4 and the error", expiryFailLimit, p)
	}
	if p := o.progress.stuck(time.Now()); len(p) != 0 {
		t.Errorf("liveness with failing expiry: %q, want none", p)
	}
	if v := testutil.ToFloat64(o.metrics.expiry.failures.WithLabelValues("nat_ipv4", failRead)); v != expiryFailLimit {
		t.Errorf("expiry_failures_total{nat_ipv4,read} = %v, want %d", v, expiryFailLimit)
	}
	if v := testutil.ToFloat64(o.metrics.expiry.lastOK.WithLabelValues("nat_ipv4")); v != 0 {
		t.Errorf("expiry_last_success_timestamp_seconds{nat_ipv4} = %v, want 0 without a success", v)
	}
	if v := testutil.ToFloat64(o.metrics.expiry.lastOK.WithLabelValues("inbound_ipv4")); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("expiry_last_success_timestamp_seconds{inbound_ipv4} = %v, want about now", v)
	}
	if v := testutil.ToFloat64(o.metrics.expiry.scanned.WithLabelValues("inbound_ipv4")); v != 5*expiryFailLimit {
		t.Errorf("expiry_entries_scanned_total{inbound_ipv4} = %v, want %d", v, 5*expiryFailLimit)
	}

	// One good pass clears it.
	o.tableCollected(tableResult{table: "nat_ipv4", family: "ipv4"})
	if p := o.progress.failing(); len(p) != 0 {
		t.Errorf("after a good pass: %q, want ready", p)
	}
}

// TestStuckLoops: /healthz fails when the run loop has not come round for
// loopStall, or a pass has read nothing for passOverrun intervals (at
// least loopStall); a slow but moving agent stays live, also through a pass
// over a huge table that reads on for longer than that.
func TestStuckLoops(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		interval  time.Duration
		loopAgo   time.Duration // 0: never stamped
		passSince time.Duration // 0: no pass running
		readAgo   time.Duration // 0: the pass read nothing since it started
		want      string        // "" for live
	}{
		{name: "starting", interval: 10 * time.Second},
		{name: "loop fresh", interval: 10 * time.Second, loopAgo: time.Second},
		{name: "loop quiet but within the stall", interval: 10 * time.Second, loopAgo: loopStall - time.Second},
		{name: "loop stuck", interval: 10 * time.Second, loopAgo: loopStall + time.Second, want: "run loop stuck"},
		{name: "pass slow", interval: time.Minute, loopAgo: time.Second, passSince: 9 * time.Minute},
		{name: "pass stuck", interval: time.Minute, loopAgo: time.Second, passSince: 11 * time.Minute, want: "expiry stuck"},
		{name: "long pass reading on", interval: 10 * time.Second, loopAgo: time.Second, passSince: time.Hour, readAgo: time.Second},
		{name: "long pass stopped reading", interval: 10 * time.Second, loopAgo: time.Second, passSince: time.Hour, readAgo: loopStall + time.Second, want: "expiry stuck"},
		{name: "short interval: at least the stall", interval: time.Second, loopAgo: time.Second, passSince: time.Minute},
		{name: "short interval stuck", interval: time.Second, loopAgo: time.Second, passSince: loopStall + time.Second, want: "expiry stuck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p progress
			p.setInterval(tc.interval)
			if tc.loopAgo != 0 {
				p.loop(now.Add(-tc.loopAgo))
			}
			if tc.passSince != 0 {
				p.passStarted(now.Add(-tc.passSince))
			}
			if tc.readAgo != 0 {
				p.passProgressed(now.Add(-tc.readAgo))
			}
			got := p.stuck(now)
			if tc.want == "" && len(got) != 0 || tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)) {
				t.Errorf("stuck = %q, want %q", got, tc.want)
			}
			p.passEnded(now)
			if tc.want == "expiry stuck" && len(p.stuck(now)) != 0 {
				t.Error("still stuck after the pass ended")
			}
		})
	}
}

// TestNATGaugesFromLastPass: the NAT gauges show the last complete pass the
// expiry reported, without reading the table.
func TestNATGaugesFromLastPass(t *testing.T) {
	o := newObserver()
	o.tableCollected(tableResult{table: "nat_ipv4", family: "ipv4", removed: 3, nat: &maps.PassStats{
		Entries: 8, Reserved: 2, Complete: true,
		Flows: map[maps.FlowClass]int{{Proto: 6, State: "established"}: 3, {Proto: 17, State: "established"}: 1},
	}})
	s, ok := o.metrics.datapath.passes.load("ipv4")
	if !ok || s.Entries != 8 || s.Reserved != 2 || s.Flows[maps.FlowClass{Proto: 6, State: "established"}] != 3 {
		t.Errorf("stored pass %+v %v", s, ok)
	}
	if _, ok := o.metrics.datapath.passes.load("ipv6"); ok {
		t.Error("a pass for ipv6 that never ran")
	}
	if v := testutil.ToFloat64(o.metrics.natExpired); v != 3 {
		t.Errorf("nat_expired_total = %v, want 3", v)
	}
}

// TestPacerSpreadsAndStops: the pacer spreads chunks over its budget, stops
// waiting once the budget is spent, and returns at once when ctx ends.
func TestPacerSpreadsAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var p pacer
	p.start(ctx, 200*time.Millisecond, 4) // 50 ms a chunk
	begin := time.Now()
	for i := 0; i < 2; i++ {
		if err := p.pace(); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(begin); d < 90*time.Millisecond {
		t.Errorf("two chunks took %v, want their share of the budget (100 ms)", d)
	}
	// Far more chunks than expected: no wait past the budget.
	time.Sleep(200 * time.Millisecond)
	begin = time.Now()
	for i := 0; i < 100; i++ {
		if err := p.pace(); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("chunks past the budget waited %v", d)
	}

	p.start(ctx, time.Hour, 1)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	begin = time.Now()
	if err := p.pace(); !errors.Is(err, context.Canceled) {
		t.Errorf("pace when ctx ends: %v, want context.Canceled", err)
	}
	if d := time.Since(begin); d > 30*time.Second {
		t.Errorf("pace returned %v after ctx ended", d)
	}
}
