package main

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// loopStall is how long the run loop may go without coming round before
// /healthz fails: it wakes at least every loopHeartbeat, so only a loop
// stuck in one of its steps (a hung netlink call, a deadlock) misses it.
const loopStall = 2 * time.Minute

// loopHeartbeat wakes the run loop when nothing else does, to prove it
// still comes round.
const loopHeartbeat = 15 * time.Second

// passOverrun is how many intervals a running expiry pass may go without
// reading a chunk before /healthz fails: a chunk takes milliseconds and the
// pacing waits at most half an interval between two, so a pass this quiet is
// stuck, not slow. A pass over a huge table may take longer than this as a
// whole and stays healthy while it reads on (a restart would only begin it
// again). At least loopStall, for very short intervals.
const passOverrun = 10

// expiryFailLimit is how many passes in a row a table's collection may fail
// before /readyz fails. Expiry errors never fail /healthz: a restart does
// not fix a map the kernel refuses to read, and a crash loop would stop the
// expiry of every other table too.
const expiryFailLimit = 3

// progress is what the liveness and readiness probes know of the agent's
// two loops: when the run loop last came round, whether an expiry pass runs
// and since when, and each table's run of failed passes. The loops stamp
// it; the probes read it (docs/behaviour.md §14).
type progress struct {
	mu        sync.Mutex
	interval  time.Duration // --gc-interval
	loopBeat  time.Time     // zero before the run loop started
	passStart time.Time     // zero while no pass runs
	passBeat  time.Time     // the running pass's last chunk read
	failed    map[string]int
	lastErr   map[string]error
}

// setInterval is called once with --gc-interval.
func (p *progress) setInterval(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval = d
}

// loop is stamped by the run loop each time it comes round.
func (p *progress) loop(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.loopBeat = now
}

func (p *progress) passStarted(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.passStart, p.passBeat = now, now
}

// passProgressed is stamped by the running pass at each chunk it reads.
func (p *progress) passProgressed(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.passStart.IsZero() {
		p.passBeat = now
	}
}

func (p *progress) passEnded(time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.passStart = time.Time{}
}

// table records whether one table's collection failed in a pass.
func (p *progress) table(name string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed == nil {
		p.failed, p.lastErr = map[string]int{}, map[string]error{}
	}
	if err == nil {
		delete(p.failed, name)
		delete(p.lastErr, name)
		return
	}
	p.failed[name]++
	p.lastErr[name] = err
}

// stuck is the liveness part: the run loop has not come round for
// loopStall, or a running expiry pass has read nothing for passOverrun
// intervals.
func (p *progress) stuck(now time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var problems []string
	if !p.loopBeat.IsZero() && now.Sub(p.loopBeat) > loopStall {
		problems = append(problems, fmt.Sprintf("run loop stuck: it last came round %s ago", now.Sub(p.loopBeat).Round(time.Second)))
	}
	limit := max(passOverrun*p.interval, loopStall)
	if !p.passStart.IsZero() && now.Sub(p.passBeat) > limit {
		problems = append(problems, fmt.Sprintf("expiry stuck: the pass running for %s has read nothing for %s, the interval is %s",
			now.Sub(p.passStart).Round(time.Second), now.Sub(p.passBeat).Round(time.Second), p.interval))
	}
	return problems
}

// failing is the readiness part: the tables whose collection failed
// expiryFailLimit passes in a row, with the last error.
func (p *progress) failing() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var problems []string
	for name, n := range p.failed {
		if n >= expiryFailLimit {
			problems = append(problems, fmt.Sprintf("expiry of %s failed %d passes in a row: %v", name, n, p.lastErr[name]))
		}
	}
	sort.Strings(problems)
	return problems
}
