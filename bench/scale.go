package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// The scale phase: the agent and the datapath with large NAT tables, each
// size side by side with a small one in the same run (docs/performance.md).
// For every size an agent runs in its own namespace on a table filled
// through the maps; the harness measures its memory over expiry passes and
// scrapes, the CPU of a pass, a scrape, `ip-masq-agent debug`; then the
// datapath's cost per packet over many distinct flows with the table at 90 %
// against the same table holding only those flows.

// scaleOptions size the phase.
type scaleOptions struct {
	Sizes      []int         // NAT entries (both halves of every flow) in the agent's table
	Passes     int           // expiry passes measured per size
	GCInterval time.Duration // the agent's --gc-interval: short, so passes follow each other
	Scrapes    int           // /metrics scrapes per size (median)
	CycleFlows int           // distinct flows the test-run packets walk per direction
	Samples    int           // test-run samples per table
	Repeats    int           // repeats per sample
}

// scaleResult is one table size.
type scaleResult struct {
	Entries     int     // written into the agent's table
	Capacity    int     // the agent's --nat-max-entries
	FillSeconds float64 // writing them through the maps
	StartHWM    uint64  // VmHWM before the fill
	PassHWM     uint64  // VmHWM after the expiry passes
	PeakHWM     uint64  // VmHWM at the end: fill, passes, scrapes
	EndRSS      uint64
	Passes      int
	PassSource  string  // how passes were counted: the agent's log, its metric, or the interval
	ExpiryCPU   float64 // seconds of agent CPU (user + system) per pass
	// ExpiryMetric is the pass duration the agent reports itself (wall
	// time, seconds; 0 when the agent has no such metric).
	ExpiryMetric float64
	TableMetric  float64 // ip_masq_agent_nat_entries{family="ipv4"} in the last scrape
	Scrape       sample  // ms per /metrics scrape
	ScrapeBytes  int
	Debug        sample // ms per `ip-masq-agent debug`
	DebugMaxRSS  uint64 // bytes, the largest of its runs
	DebugBytes   int64  // output of one run
	DP           *scaleDatapath
}

// scaleDatapath is the per-packet cost of established flows in a table of
// Capacity entries, with only the cycle's flows in it (empty) and at 90 %.
type scaleDatapath struct {
	Capacity, Filled, Cycle                            int
	EgressEmpty, EgressFull, IngressEmpty, IngressFull sample // ns per packet, test runs
	// The control: ns per run of a program doing only the NAT table's hash
	// lookup of the egress cycle's keys in the same tables (scale_lookup.go).
	LookupEmpty, LookupFull sample
	// The same, also rewriting the found entry's last_seen_ns in place.
	TouchEmpty, TouchFull sample
}

// The goals reported against (docs/performance.md); nothing fails on them.
const (
	goalAgentMiB       = 40
	goalCPUPerMillion  = 1.0 // s of CPU per pass per million entries
	goalScrapeMs       = 100
	goalPerPacketRatio = 1.10
)

// scaleNodeCIDR is the agent's node address on its eth0.
var scaleNodeCIDR = nodeIP.String() + "/24"

func (b *bench) scale(ctx context.Context) error {
	so := b.o.Scale
	b.res.ScaleOptions = fmt.Sprintf("sizes %s entries (capacity 2x); %d expiry passes at --gc-interval=%v; up to %d scrapes (3 when they take over 30 s); test runs: cycles of up to %d flows per direction, %d samples of %d repeats, capacity = size, 90 %% fill",
		joinInts(so.Sizes), so.Passes, so.GCInterval, so.Scrapes, so.CycleFlows, so.Samples, so.Repeats)
	for _, n := range so.Sizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := scaleResult{Entries: n, Capacity: 2 * n}
		if err := b.scaleAgent(ctx, &r); err != nil {
			return fmt.Errorf("%d entries: %w", n, err)
		}
		var err error
		r.DP, err = b.scaleDatapath(n)
		b.res.Scale = append(b.res.Scale, r)
		if err != nil {
			return fmt.Errorf("%d entries, datapath: %w", n, err)
		}
	}
	return nil
}

// scaleAgent runs the agent with a table of r.Entries entries and measures it.
func (b *bench) scaleAgent(ctx context.Context, r *scaleResult) error {
	so := b.o.Scale
	ns := nsPrefix + b.id + "-scale"
	if _, err := sh("ip", "netns", "add", ns); err != nil {
		return err
	}
	defer sh("ip", "netns", "del", ns)
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		// A veth pair inside the namespace: the agent needs an interface
		// with an address, and the dummy driver may be absent.
		{"link", "add", defaultDev, "type", "veth", "peer", "name", defaultDev + "p"},
		{"link", "set", defaultDev + "p", "up"},
		{"addr", "add", scaleNodeCIDR, "dev", defaultDev},
		{"link", "set", defaultDev, "up"},
	} {
		if _, err := sh(append([]string{"ip", "-n", ns}, c...)...); err != nil {
			return err
		}
	}
	t := &Topo{Node: ns, dir: filepath.Join(b.dir, fmt.Sprintf("scale-%d", r.Entries))}
	ag, err := startAgent(b.o.AgentBin, t, defaultNM, fmt.Sprintf("--nat-max-entries=%d", r.Capacity),
		"--gc-interval="+so.GCInterval.String(), "--v=4")
	if err != nil {
		return err
	}
	defer ag.stop()
	pid := ag.cmd.Process.Pid
	if _, r.StartHWM, err = memory(pid); err != nil {
		return err
	}

	mEmpty, _, _, err := b.scrape(ns)
	if err != nil {
		return err
	}
	nat, err := ebpf.LoadPinnedMap(filepath.Join(ag.PinPath, "ipm_nat4"), nil)
	if err != nil {
		return err
	}
	defer nat.Close()
	// The interface's index, as the datapath would record it in the halves.
	ifindex := uint32(0)
	if out, err := sh("ip", "-n", ns, "-o", "link", "show", defaultDev); err == nil {
		if i, _, ok := strings.Cut(out, ":"); ok {
			n, _ := strconv.Atoi(i)
			ifindex = uint32(n)
		}
	}
	start := time.Now()
	if err := fillFlows(nat, 0, r.Entries/2, nodeIP, ifindex, maps.Now()); err != nil {
		return err
	}
	r.FillSeconds = time.Since(start).Seconds()
	b.o.Log("scale %d: filled in %.1f s", r.Entries, r.FillSeconds)

	// The metric's state before the window, read before the CPU baseline
	// so that this scrape's own work is not counted; then the window starts
	// at the end of a pass (a pass begun during the fill or the scrape is
	// not counted), and ends at the end of the last.
	perPass := 60*time.Second + time.Duration(r.Entries/1000)*30*time.Millisecond
	// (Only when the agent has the metric, known from a scrape before the
	// fill: where a scrape reads the whole table it takes seconds.)
	var m0 map[string]float64
	if hasExpiryMetric(mEmpty) {
		if m0, _, _, err = b.scrape(ns); err != nil {
			return err
		}
	}
	pc := &passCounter{ag: ag, interval: so.GCInterval}
	// The pass count appears with the first pass, so it is looked for
	// whatever the empty table's scrape showed.
	pc.scrape = func() (map[string]float64, error) {
		m, _, _, err := b.scrape(ns)
		return m, err
	}
	if err := pc.wait(ctx, 1, perPass); err != nil {
		return err
	}
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	if err := pc.wait(ctx, so.Passes, time.Duration(so.Passes)*perPass); err != nil {
		return err
	}
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	r.Passes, r.PassSource = so.Passes, pc.source
	r.ExpiryCPU = (cpu1 - cpu0) / float64(so.Passes)
	if _, r.PassHWM, err = memory(pid); err != nil {
		return err
	}
	b.o.Log("scale %d: %.3f s CPU per expiry pass (%d passes, counted from %s), VmHWM %s", r.Entries, r.ExpiryCPU, r.Passes, r.PassSource, mib(r.PassHWM))

	var last map[string]float64
	var spent float64
	for i := range so.Scrapes {
		// Three will do where each takes many seconds.
		if i >= 3 && spent > 30_000 {
			break
		}
		m, ms, size, err := b.scrape(ns)
		if err != nil {
			return err
		}
		r.Scrape = append(r.Scrape, ms)
		r.ScrapeBytes, last, spent = size, m, spent+ms
		if i == 0 {
			r.ExpiryMetric = expiryFromMetrics(m0, m)
		}
	}
	r.TableMetric = last[`ip_masq_agent_nat_entries{family="ipv4"}`]
	b.o.Log("scale %d: scrape %.1f ms median (%d B), the agent reports %.0f entries, expiry metric %.3f s", r.Entries, r.Scrape.median(), r.ScrapeBytes, r.TableMetric, r.ExpiryMetric)

	runs := 3
	if r.Entries >= 1_000_000 {
		runs = 1
	}
	for range runs {
		ms, maxRSS, size, err := runDebug(b.o.AgentBin, ag.PinPath)
		if err != nil {
			return err
		}
		r.Debug = append(r.Debug, ms)
		r.DebugMaxRSS, r.DebugBytes = max(r.DebugMaxRSS, maxRSS), size
	}
	b.o.Log("scale %d: debug %.0f ms, maxrss %s, %d B of output", r.Entries, r.Debug.median(), mib(r.DebugMaxRSS), r.DebugBytes)
	if r.EndRSS, r.PeakHWM, err = memory(pid); err != nil {
		return err
	}
	if !ag.running() {
		return fmt.Errorf("the agent exited: %s", lastLines(ag.out.String(), 10))
	}
	return nil
}

// passCounter follows the agent's expiry passes: by its log line per
// table and pass (--v=4), or by the pass count of its duration metric
// (histogram or summary), whichever shows a pass first; without either,
// by the interval (an estimate, marked so: a pass longer than the interval
// is counted short).
type passCounter struct {
	ag       *agentProc
	interval time.Duration
	// scrape reads the metrics; nil when the agent has no pass count.
	scrape func() (map[string]float64, error)
	source string
}

// One line per pass over the IPv4 NAT table: the agent's line, and the one
// of builds before the expiry had its own goroutine.
var passLogRE = regexp.MustCompile(`"Expired" table="nat_ipv4"|"Expired NAT entries"[^\n]*table=0`)

func (p *passCounter) logged() int { return len(passLogRE.FindAllStringIndex(p.ag.out.String(), -1)) }

func (p *passCounter) counted() (int, bool) {
	if p.scrape == nil {
		return 0, false
	}
	m, err := p.scrape()
	if err != nil {
		return 0, false
	}
	// The largest series: one per family counts each pass once.
	n, ok := 0.0, false
	for k, v := range m {
		if name, _, _ := strings.Cut(k, "{"); name == expiryMetric+"_count" {
			n, ok = max(n, v), true
		}
	}
	return int(n), ok
}

// wait returns once n more passes ended.
func (p *passCounter) wait(ctx context.Context, n int, timeout time.Duration) error {
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	if strings.HasPrefix(p.source, "interval") {
		return sleep(time.Duration(n) * p.interval)
	}
	useLog, useMetric := p.source != "metric", p.source != "log" && p.scrape != nil
	baseLog := p.logged()
	baseMetric, _ := p.counted()
	deadline := time.Now().Add(timeout)
	var scraped time.Time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !p.ag.running() {
			return fmt.Errorf("the agent exited: %s", lastLines(p.ag.out.String(), 10))
		}
		if useLog && p.logged() >= baseLog+n {
			p.source = "log"
			return nil
		}
		if useMetric && time.Since(scraped) >= 250*time.Millisecond {
			c, ok := p.counted()
			scraped = time.Now()
			if ok && c >= baseMetric+n {
				p.source = "metric"
				return nil
			}
		}
		if time.Now().After(deadline) {
			if p.source != "" || baseLog > 0 {
				return fmt.Errorf("%d expiry passes did not end within %v", n, timeout)
			}
			p.source = "interval (no pass log line, no pass count)"
			return sleep(time.Duration(n) * p.interval)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuSeconds is a process's user + system time.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	// utime and stime are fields 14 and 15 of the whole line, in clock
	// ticks: USER_HZ, 100 on Linux.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / 100, nil
}

// scrape reads the agent's /metrics in namespace ns, over plain HTTP/1.0
// on a connection opened inside it, and returns its samples by name with
// labels, the time from connect to the last byte, and the size.
func (b *bench) scrape(ns string) (map[string]float64, float64, int, error) {
	var body []byte
	var took time.Duration
	err := inNetns(ns, func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", "127.0.0.1"+metricsPort, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		took = time.Since(start)
		return err
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("scrape: %w", err)
	}
	head, text, ok := strings.Cut(string(body), "\r\n\r\n")
	if !ok || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200") {
		return nil, 0, 0, fmt.Errorf("scrape: %.200q", body)
	}
	return parseMetrics(text), float64(took.Microseconds()) / 1000, len(text), nil
}

// metricsPort is the agent's default --metrics-address.
const metricsPort = ":9441"

func parseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(text, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// expiryMetric is the agent's pass duration metric, where it has one.
const expiryMetric = "ip_masq_agent_expiry_pass_duration_seconds"

func hasExpiryMetric(m map[string]float64) bool {
	for k := range m {
		if strings.HasPrefix(k, expiryMetric) {
			return true
		}
	}
	return false
}

// expiryFromMetrics is the mean pass duration between two scrapes: from a
// histogram or summary (_sum and _count), else a gauge of the last pass.
// Of labelled series (per family, say) the one with the most time: the
// IPv4 table in this phase. 0 when there is none.
func expiryFromMetrics(before, after map[string]float64) float64 {
	series := func(m map[string]float64, suffix string) map[string]float64 {
		out := map[string]float64{}
		for k, v := range m {
			if name, labels, _ := strings.Cut(k, "{"); name == expiryMetric+suffix {
				out[labels] = v
			}
		}
		return out
	}
	if counts := series(after, "_count"); len(counts) > 0 {
		sums, sums0, counts0 := series(after, "_sum"), series(before, "_sum"), series(before, "_count")
		best, bestSum := 0.0, -1.0
		for l, c := range counts {
			sum, c0, s0 := sums[l], counts0[l], sums0[l]
			if c <= c0 { // no pass in between: the mean over all
				c0, s0 = 0, 0
			}
			if c > c0 && sum-s0 > bestSum {
				best, bestSum = (sum-s0)/(c-c0), sum-s0
			}
		}
		return best
	}
	best := 0.0
	for _, v := range series(after, "") {
		best = max(best, v)
	}
	return best
}

// runDebug runs `ip-masq-agent debug` on the pins as a child and returns
// its wall time (ms), its peak resident memory and the size of its output.
func runDebug(bin, pinPath string) (float64, uint64, int64, error) {
	var out countWriter
	var errb strings.Builder
	cmd := exec.Command(bin, "debug", "--pin-path="+pinPath)
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	ms := float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		return 0, 0, 0, fmt.Errorf("debug: %w: %s", err, errb.String())
	}
	var maxRSS uint64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		maxRSS = uint64(ru.Maxrss) * 1024 // KiB on Linux
	}
	return ms, maxRSS, out.n, nil
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// scaleDatapath measures the established paths over a cycle of distinct
// flows in two datapaths of capacity entries loaded side by side, one
// holding only the cycles and one filled to 90 % with valid flows besides,
// their samples interleaved.
func (b *bench) scaleDatapath(capacity int) (*scaleDatapath, error) {
	so := b.o.Scale
	ns := nsPrefix + b.id + "-scaledp"
	if _, err := sh("ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	defer sh("ip", "netns", "del", ns)
	k := min(so.CycleFlows, capacity/8)
	d := &scaleDatapath{Capacity: capacity, Cycle: k}
	err := inNetns(ns, func() error {
		if _, err := sh("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		var envs [2]*progEnv // empty, full
		var frames [2][]byte // egress, ingress
		for i := range envs {
			e, err := newProgEnv(uint32(capacity), b.o.Prog.Object)
			if err != nil {
				return err
			}
			defer e.close()
			envs[i] = e
		}
		// The full table gets half of its other flows before the cycles
		// and half after: the kernel's hash puts a new entry at the head
		// of its bucket, so on average half of the entries sharing a
		// bucket with a cycle's flow lie in front of it, as when flows
		// come and go over time.
		flows := (capacity*9/10 - 2*k) / 2
		start := time.Now()
		if err := fillFlows(envs[1].dp.Maps.IpmNat4, 0, flows/2, nodeIP, testIfindex, maps.Now()); err != nil {
			return err
		}
		for _, e := range envs {
			for j, dir := range []loader.BPFIpmDir{loader.BPFIpmDirIPM_DIR_EGRESS, loader.BPFIpmDirIPM_DIR_INGRESS} {
				var err error
				if frames[j], err = putCycle(e.dp.Maps.IpmNat4, dir, k); err != nil {
					return err
				}
			}
		}
		if err := fillFlows(envs[1].dp.Maps.IpmNat4, flows/2, flows-flows/2, nodeIP, testIfindex, maps.Now()); err != nil {
			return err
		}
		d.Filled = 2*k + 2*flows
		b.o.Log("scale %d: datapath table filled to %d entries in %.1f s", capacity, d.Filled, time.Since(start).Seconds())
		var lookups [2][2]*lookupProg // bare, touch; per table
		for i, e := range envs {
			for t := range lookups {
				l, err := newLookupProg(e.dp.Maps.IpmNat4, k, t == 1)
				if err != nil {
					return err
				}
				defer l.close()
				lookups[t][i] = l
			}
		}
		out := [4][2]*sample{{&d.EgressEmpty, &d.EgressFull}, {&d.IngressEmpty, &d.IngressFull},
			{&d.LookupEmpty, &d.LookupFull}, {&d.TouchEmpty, &d.TouchFull}}
		for j, counter := range []string{"egress_translated", "ingress_translated", "bare lookup", "lookup and write"} {
			for s := -1; s < so.Samples; s++ { // one unrecorded warm-up
				for x := range envs {
					x := (x + s + 1) % 2 // alternate which table goes first
					e := envs[x]
					var per time.Duration
					var err error
					switch j {
					case 0:
						per, err = e.run(e.dp.Programs.IpmEgress, frames[0], so.Repeats, counter)
					case 1:
						per, err = e.run(e.dp.Programs.IpmIngress, frames[1], so.Repeats, counter)
					case 2, 3:
						per, err = lookups[j-2][x].run(frames[0], so.Repeats)
					}
					if err != nil {
						return fmt.Errorf("%s, %d entries: %w", counter, []int{2 * k, d.Filled}[x], err)
					}
					if s >= 0 {
						*out[j][x] = append(*out[j][x], float64(per.Nanoseconds()))
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.o.Log("scale %d: egress %.0f ns empty, %.0f ns at %d entries; ingress %.0f / %.0f ns; bare lookup %.0f / %.0f ns, with a write %.0f / %.0f ns", capacity,
		d.EgressEmpty.median(), d.EgressFull.median(), d.Filled, d.IngressEmpty.median(), d.IngressFull.median(),
		d.LookupEmpty.median(), d.LookupFull.median(), d.TouchEmpty.median(), d.TouchFull.median())
	return d, nil
}
