package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// expirySpread is the share of --gc-interval a pass is spread over (one
// half): a million-entry table is read in a thousand chunks with pauses
// between them instead of one burst that holds a core, and the other half
// is slack for a table that grew since the pass the pace was set from.
const expirySpread = 2

// expiryChunk is how many entries one chunk of a walk reads (maps'
// walkChunk), to estimate the chunks of the first pass.
const expiryChunk = 1024

// Reasons of a failed collection, the values of the reason label of
// ip_masq_agent_expiry_failures_total.
const (
	failRead   = "read"   // the map could not be read to its end: entries were not looked at
	failDelete = "delete" // an expired entry could not be deleted
	failSettle = "settle" // the /24 table could not be settled after the IPv4 NAT pass
)

// expiryTable is one map the expiry cleans, under its label (docs/behaviour.md §14):
// nat_ipv4, nat_ipv6 (mappings with their host reservations), inbound_ipv4,
// inbound_ipv6 (connections opened from outside), exempt_ipv4, exempt_ipv6
// (TCP connections opened non-masqueraded).
type expiryTable struct {
	name   string
	family string // ipv4, ipv6: the family label of the NAT gauges
	nat    *maps.NATTable
	rec    *maps.Inbound
}

// tableResult is what one table's collection did in one pass.
type tableResult struct {
	table   string
	family  string
	took    time.Duration
	scanned int
	removed int
	reason  string // "" when it succeeded, else failRead, failDelete or failSettle
	err     error
	nat     *maps.PassStats // NAT tables: the pass's counts, for the gauges
}

// expiryReport is what the expiry tells the observer.
type expiryReport interface {
	passStarted(time.Time)
	passProgressed(time.Time) // a chunk read
	tableCollected(tableResult)
	passEnded(time.Time)
}

// expiry removes expired entries from every table on its own goroutine, a
// pass every interval, so that the run loop (config syncs, interface
// repairs, SIGTERM) never waits for a pass over a large table.
type expiry struct {
	interval time.Duration
	timeouts maps.Timeouts
	tables   []expiryTable
	// nonMasq settles the /24 table from the IPv4 NAT pass. It is shared
	// with the config sync on the run loop: NonMasq serializes SettleDir
	// with Apply and Forget under its own lock.
	nonMasq *maps.NonMasq
	clock   *datapathClock
	report  expiryReport

	pace   pacer
	chunks int // chunks the last pass read: the next one is spread over them
}

func newExpiry(interval time.Duration, to maps.Timeouts, nats []*maps.NATTable, inbounds, exempts []*maps.Inbound,
	nonMasq *maps.NonMasq, clock *datapathClock, report expiryReport) *expiry {
	e := &expiry{interval: interval, timeouts: to, nonMasq: nonMasq, clock: clock, report: report}
	families := []string{"ipv4", "ipv6"}
	for i, fam := range families {
		e.tables = append(e.tables,
			expiryTable{name: "nat_" + fam, family: fam, nat: nats[i]},
			expiryTable{name: "inbound_" + fam, family: fam, rec: inbounds[i]},
			expiryTable{name: "exempt_" + fam, family: fam, rec: exempts[i]})
		nats[i].Pace = e.pace.pace
		e.chunks += nats[i].Capacity() / expiryChunk
		inbounds[i].Pace, exempts[i].Pace = e.pace.pace, e.pace.pace
	}
	return e
}

// run makes a pass every interval until ctx ends. A pass starts only after
// the previous one ended; ticks that fall into a pass are skipped.
func (e *expiry) run(ctx context.Context) {
	everyTick(ctx, e.interval, func() { e.pass(ctx) })
}

// everyTick calls f at every tick of interval until ctx ends. A call starts
// only after the previous one returned; ticks that fall into a call are
// dropped by the ticker.
func everyTick(ctx context.Context, interval time.Duration, f func()) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f()
	}
}

// pass collects every table once. An error in one table's collection does
// not stop the others'; a ctx that ends stops the pass between two chunks.
func (e *expiry) pass(ctx context.Context) {
	start := time.Now()
	e.report.passStarted(start)
	defer func() { e.report.passEnded(time.Now()) }()
	// The expiry decides by the datapath's clock: keep it calibrated.
	e.clock.check()
	e.pace.start(ctx, e.interval/expirySpread, e.chunks)
	e.pace.progressed = e.report.passProgressed
	defer func() { e.chunks = max(e.pace.chunks, 1) }()
	for _, t := range e.tables {
		r := e.collect(t)
		if ctx.Err() != nil {
			return // stopping: a walk cut short is no failure
		}
		if t.name == "nat_ipv4" && r.reason == "" {
			// Covered /24s that no mapping leads into any more stop
			// sending their packets through the flow lookup.
			if mapped, readAt := t.nat.Mapped24(); mapped != nil {
				settled, err := e.nonMasq.SettleDir(mapped, readAt)
				if err != nil {
					r.reason, r.err = failSettle, fmt.Errorf("settle the /24 table: %w", err)
				}
				klog.V(4).InfoS("Settled non-masquerade /24s", "count", settled)
			}
		}
		if r.err != nil {
			klog.ErrorS(r.err, "Expiry failed", "table", r.table, "reason", r.reason)
		}
		klog.V(4).InfoS("Expired", "table", r.table, "scanned", r.scanned, "removed", r.removed, "took", r.took)
		e.report.tableCollected(r)
	}
}

// collect runs one table's collection and says how it went.
func (e *expiry) collect(t expiryTable) tableResult {
	r := tableResult{table: t.name, family: t.family}
	start := time.Now()
	if t.nat != nil {
		r.removed, r.err = t.nat.Collect(e.timeouts)
		s := t.nat.LastPass()
		r.scanned = s.Scanned
		switch {
		case !s.Complete:
			r.reason = failRead
		case r.err != nil:
			r.reason = failDelete
		default:
			r.nat = &s
		}
	} else {
		r.removed, r.err = t.rec.Collect(e.timeouts)
		r.scanned = t.rec.Scanned()
		if r.err != nil {
			r.reason = failRead
		}
	}
	r.took = time.Since(start)
	return r
}

// pacer spreads a pass's chunks evenly over a budget: before each chunk
// after the first of a map, it waits until that chunk's share of the budget
// has come. Once the budget is spent (the tables grew) it waits no more, so
// a pass takes at most the budget plus its own work.
type pacer struct {
	ctx    context.Context
	begin  time.Time
	budget time.Duration
	step   time.Duration // one chunk's share of the budget
	chunks int           // chunks read so far in this pass
	// progressed, when set, hears of each chunk read: a pass that reads
	// on is alive however long it takes (progress.go).
	progressed func(time.Time)
}

// start begins a pass expected to read about chunks chunks.
func (p *pacer) start(ctx context.Context, budget time.Duration, chunks int) {
	p.ctx, p.begin, p.budget, p.chunks = ctx, time.Now(), budget, 0
	p.step = budget / time.Duration(max(chunks, 1))
}

// pace is the tables' Pace hook: it returns ctx's error when the agent
// stops, which ends the walk between two chunks.
func (p *pacer) pace() error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	p.chunks++
	if p.progressed != nil {
		p.progressed(time.Now())
	}
	elapsed := time.Since(p.begin)
	wait := time.Duration(p.chunks)*p.step - elapsed
	if wait <= 0 || elapsed >= p.budget {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.ctx.Done():
		return p.ctx.Err()
	case <-t.C:
		return nil
	}
}
