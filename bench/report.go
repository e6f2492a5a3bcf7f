package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Results is everything one run measured (also written as results.json).
type Results struct {
	Machine    Machine
	Options    string
	Throughput map[Mode]sample         // bits per second
	ConnRate   map[int]map[Mode]sample // CIDR count -> mode -> connections per second
	ConnFailed map[int]map[Mode]int64  // failed connections (timeouts, resets)
	AgentDrops map[int]map[Mode]uint64 // egress_table_full + egress_no_port + egress_race during the runs
	Apply      struct {
		CIDRs     int
		Agent     sample // ms: file written -> active trie flipped
		AgentSync sample // ms: the agent's own sync duration
		IPTables  sample // ms: iptables-restore --noflush wall time
		IPTLegacy sample // ms: the same with iptables-legacy-restore, when installed
	}
	Paths  []pathResult
	Stats  []statsResult
	Memory struct {
		RestRSS, RestHWM, ManyRSS, ManyHWM uint64
		ManyCIDRs                          int
		Maps                               []mapMemory
		MapsMany                           map[string]uint64 // memlock with the large set
	}
	Scale        []scaleResult
	ScaleOptions string
	Notes        []string
}

// Machine says where and when.
type Machine struct {
	CPU, Kernel, Date, LoadStart, LoadEnd string
	CPUs                                  int
}

// statsResult is one bpf_stats cross-check under real traffic.
type statsResult struct {
	Workload string
	Program  string
	Runs     uint64
	NsPerRun float64
	PerConn  float64 // ns of this program per connection (connection workload only)
}

var modeOrder = allModes

func (r *Results) modesIn(m map[Mode]sample) []Mode {
	var out []Mode
	for _, mo := range modeOrder {
		if _, ok := m[mo]; ok {
			out = append(out, mo)
		}
	}
	return out
}

// baseline is the no-NAT mode to compare a mode with: the one with the same
// conntrack setting (iptables needs conntrack, so it is compared with both).
func baseline(m Mode) Mode {
	if m == AgentCT || m == NoNATCT {
		return NoNATCT
	}
	return NoNAT
}

func med(m map[Mode]sample, mo Mode) float64 {
	s, ok := m[mo]
	if !ok || len(s) == 0 {
		return math.NaN()
	}
	return s.median()
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b uint64) string { return fmt.Sprintf("%.0f KiB", float64(b)/1024) }

// Markdown writes the tables.
func (r *Results) Markdown(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("Machine: %s, %d CPUs, Linux %s; %s; load average %s at the start, %s at the end.\n\n",
		r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, r.Machine.Date, r.Machine.LoadStart, r.Machine.LoadEnd)
	if r.Options != "" {
		p("Run: %s.\n\n", r.Options)
	}

	if len(r.Throughput) > 0 {
		p("#### TCP throughput (iperf3, one stream pod -> remote, interleaved runs)\n\n")
		p("| mode | median Gbit/s | vs no NAT | vs iptables | spread (Gbit/s) |\n|---|---:|---:|---:|---|\n")
		for _, mo := range r.modesIn(r.Throughput) {
			p("| %s | %s | %s | %s | %s |\n", mo, fmtGbps(med(r.Throughput, mo)),
				ratio(med(r.Throughput, mo), med(r.Throughput, baseline(mo))),
				ratio(med(r.Throughput, mo), med(r.Throughput, IPTables)), r.Throughput[mo].spread(fmtGbps))
		}
		p("\n")
	}

	if len(r.ConnRate) > 0 {
		counts := sortedKeys(r.ConnRate)
		p("#### New connections per second (connect, 1 byte each way, close with RST; destination masqueraded, not in the list)\n\n")
		p("| mode |")
		for _, n := range counts {
			p(" %d CIDRs |", n)
		}
		p("\n|---|")
		for range counts {
			p("---:|")
		}
		p("\n")
		for _, mo := range r.modesIn(r.ConnRate[counts[0]]) {
			p("| %s |", mo)
			for _, n := range counts {
				s := r.ConnRate[n][mo]
				p(" %s (%s) |", fmtInt(s.median()), s.spread(fmtInt))
			}
			p("\n")
		}
		rrow := func(label string, a, b Mode) {
			p("| %s |", label)
			for _, n := range counts {
				p(" %s |", ratio(med(r.ConnRate[n], a), med(r.ConnRate[n], b)))
			}
			p("\n")
		}
		rrow("ratio eBPF agent / no NAT", Agent, NoNAT)
		rrow("ratio iptables / no NAT", IPTables, NoNAT)
		rrow("ratio eBPF agent / iptables", Agent, IPTables)
		rrow("ratio eBPF + ct / no NAT + ct", AgentCT, NoNATCT)
		rrow("ratio eBPF + ct / iptables", AgentCT, IPTables)
		p("| eBPF agent vs its own 3-CIDR figure |")
		for _, n := range counts {
			p(" %s |", ratio(med(r.ConnRate[n], Agent), med(r.ConnRate[counts[0]], Agent)))
		}
		p("\n| iptables vs its own 3-CIDR figure |")
		for _, n := range counts {
			p(" %s |", ratio(med(r.ConnRate[n], IPTables), med(r.ConnRate[counts[0]], IPTables)))
		}
		var failed []string
		for _, n := range counts {
			for _, mo := range modeOrder {
				if f := r.ConnFailed[n][mo]; f > 0 {
					failed = append(failed, fmt.Sprintf("%s at %d CIDRs: %d", mo, n, f))
				}
				if d := r.AgentDrops[n][mo]; d > 0 {
					failed = append(failed, fmt.Sprintf("%s at %d CIDRs: %d new flows dropped by the datapath (table full, no port, race)", mo, n, d))
				}
			}
		}
		if len(failed) == 0 {
			failed = []string{"none"}
		}
		p("\n\nCells: median (min-max, interquartile range, number of runs). Failed connections over all runs: %s.\n\n", strings.Join(failed, "; "))
	}

	if len(r.Apply.Agent) > 0 || len(r.Apply.IPTables) > 0 {
		a := r.Apply
		p("#### Applying %d CIDRs\n\n", a.CIDRs)
		p("| what | median ms | spread (ms) |\n|---|---:|---|\n")
		p("| eBPF agent: config file renamed into place -> the active trie holds the new set (harness polls the pinned maps every 0.5 ms) | %s | %s |\n", fmtMs(a.Agent.median()), a.Agent.spread(fmtMs))
		p("| of which the agent's own sync (read, parse, validate, write the idle trie, flip; `duration` of its `Applied configuration` line) | %s | %s |\n", fmtMs(a.AgentSync.median()), a.AgentSync.spread(fmtMs))
		p("| iptables-restore --noflush of the same chain (%d RETURN rules + link-local + MASQUERADE; process wall time, nf_tables backend) | %s | %s |\n", a.CIDRs, fmtMs(a.IPTables.median()), a.IPTables.spread(fmtMs))
		if len(a.IPTLegacy) > 0 {
			p("| iptables-legacy-restore --noflush of the same | %s | %s |\n", fmtMs(a.IPTLegacy.median()), a.IPTLegacy.spread(fmtMs))
		}
		p("| ratio eBPF agent / iptables-restore | %s | |\n\n", ratio(a.Agent.median(), a.IPTables.median()))
	}

	if len(r.Paths) > 0 {
		p("#### Nanoseconds per packet (BPF_PROG_TEST_RUN; every repeat takes the path, checked on the datapath's counters)\n\n")
		p("| path | median ns | spread (ns) | target | repeats per sample | packet |\n|---|---:|---|---|---:|---|\n")
		for _, pr := range r.Paths {
			p("| %s | %s | %s | %s | %d | %s |\n", pr.Name, fmtInt(pr.Ns.median()), pr.Ns.spread(fmtInt), orDash(pr.Target), pr.Repeats, pr.Detail)
		}
		p("\n")
	}
	if len(r.Stats) > 0 {
		p("#### Cross-check under real traffic (BPF_ENABLE_STATS run time / run count of the agent's attached programs, node namespace)\n\n")
		p("| workload | program | runs | ns per run | ns per connection |\n|---|---|---:|---:|---:|\n")
		for _, s := range r.Stats {
			pc := "-"
			if s.PerConn > 0 {
				pc = fmtInt(s.PerConn)
			}
			p("| %s | %s | %d | %s | %s |\n", s.Workload, s.Program, s.Runs, fmtInt(s.NsPerRun), pc)
		}
		p("\n")
	}

	if r.Memory.RestRSS > 0 {
		m := r.Memory
		p("#### Memory\n\n")
		p("| agent | VmRSS | VmHWM |\n|---|---:|---:|\n")
		p("| at rest (3 CIDRs) | %s | %s |\n", mib(m.RestRSS), mib(m.RestHWM))
		if m.ManyRSS > 0 {
			p("| with %d CIDRs | %s | %s |\n", m.ManyCIDRs, mib(m.ManyRSS), mib(m.ManyHWM))
		}
		p("\n| pinned map (default sizes) | type | key B | value B | max entries | (key + value) x max entries | kernel memlock at rest | memlock with %d CIDRs |\n|---|---|---:|---:|---:|---:|---:|---:|\n", m.ManyCIDRs)
		var nom, ml, mlMany uint64
		for _, mm := range m.Maps {
			many := "-"
			if v, ok := m.MapsMany[mm.Name]; ok {
				many = kib(v)
				mlMany += v
			}
			p("| %s | %s | %d | %d | %d | %s | %s | %s |\n", mm.Name, mm.Type, mm.KeySize, mm.ValueSize, mm.MaxEntries, kib(mm.Nominal), kib(mm.Memlock), many)
			nom += mm.Nominal
			ml += mm.Memlock
		}
		p("| total | | | | | %s | %s | %s |\n\n", mib(nom), mib(ml), mib(mlMany))
	}
	r.scaleMarkdown(w)
	for _, n := range r.Notes {
		p("- %s\n", n)
	}
	if len(r.Notes) > 0 {
		p("\n")
	}
}

// Targets writes the targets with what this run measured. A
// measurement, not a test: nothing fails on "no".
func (r *Results) Targets(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	p("| target | this run | holds |\n|---|---|---|\n")
	if len(r.Throughput) > 0 {
		a, n, i := med(r.Throughput, Agent), med(r.Throughput, NoNAT), med(r.Throughput, IPTables)
		p("| throughput ≥ 0.95 × no NAT | %s | %s |\n", ratio(a, n), yes(a >= 0.95*n))
		p("| throughput ≥ 1.0 × iptables | %s | %s |\n", ratio(a, i), yes(a >= i))
	}
	if len(r.ConnRate) > 0 {
		counts := sortedKeys(r.ConnRate)
		for _, c := range counts {
			a, n := med(r.ConnRate[c], Agent), med(r.ConnRate[c], NoNAT)
			p("| new connections/s ≥ 0.9 × no NAT at %d CIDRs | %s | %s |\n", c, ratio(a, n), yes(a >= 0.9*n))
		}
		last := counts[len(counts)-1]
		a3, al := med(r.ConnRate[counts[0]], Agent), med(r.ConnRate[last], Agent)
		p("| at %d CIDRs within 10 %% of our %d-CIDR figure | %s | %s |\n", last, counts[0], ratio(al, a3), yes(al >= 0.9*a3))
	}
	if len(r.Apply.Agent) > 0 {
		m := r.Apply.Agent.median()
		p("| %d CIDRs in effect ≤ 100 ms after the write | %s ms (iptables-restore: %s ms) | %s |\n", r.Apply.CIDRs, fmtMs(m), fmtMs(r.Apply.IPTables.median()), yes(m <= 100))
	}
	for _, pr := range r.Paths {
		switch pr.Target {
		case "≤ 100 ns":
			p("| %s ≤ 100 ns | %s ns | %s |\n", pr.Name, fmtInt(pr.Ns.median()), yes(pr.Ns.median() <= 100))
		case "≤ 60 ns":
			p("| %s ≤ 60 ns | %s ns | %s |\n", pr.Name, fmtInt(pr.Ns.median()), yes(pr.Ns.median() <= 60))
		}
	}
	if r.Memory.ManyRSS > 0 {
		p("| agent resident memory ≤ 40 MB with %d CIDRs (VmRSS after the apply) | %s | %s |\n", r.Memory.ManyCIDRs, mib(r.Memory.ManyRSS), yes(float64(r.Memory.ManyRSS) <= 40e6))
		p("| the same for the peak (VmHWM, reached while parsing the file) | %s | %s |\n", mib(r.Memory.ManyHWM), yes(float64(r.Memory.ManyHWM) <= 40e6))
	}
	r.scaleTargets(w)
	p("\n")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys[V any](m map[int]V) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// errPoints is medians with min and max as error bars.
type errPoints struct {
	plotter.XYs
	plotter.YErrors
}

// Chart draws connections per second against the CIDR count (log scale),
// median of the runs with interquartile bars (min-max is in the table; on a
// shared machine single outliers would hide everything else), for each mode.
func (r *Results) Chart(file string) error {
	counts := sortedKeys(r.ConnRate)
	if len(counts) == 0 {
		return nil
	}
	pl := plot.New()
	pl.Title.Text = "New connections per second vs non-masquerade CIDRs"
	pl.X.Label.Text = "non-masquerade CIDRs (log scale); destination not in the list"
	pl.Y.Label.Text = "connections per second (median, interquartile range)"
	pl.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	for _, n := range counts {
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: fmt.Sprintf("%d", n)})
	}
	pl.X.Tick.Marker = ticks
	pl.X.Min, pl.X.Max = float64(counts[0])*0.7, float64(counts[len(counts)-1])*1.4
	pl.Y.Min = 0
	pl.Y.Tick.Marker = plot.TickerFunc(func(min, max float64) []plot.Tick {
		ts := plot.DefaultTicks{}.Ticks(min, max)
		for i := range ts {
			if ts[i].Label != "" {
				ts[i].Label = fmt.Sprintf("%.0f", ts[i].Value)
			}
		}
		return ts
	})
	pl.Legend.Top = false
	pl.Legend.Left = true
	pl.Legend.YOffs = vg.Points(4)
	pl.Add(plotter.NewGrid())

	styles := map[Mode]struct {
		c     color.Color
		dash  []vg.Length
		shape draw.GlyphDrawer
	}{
		NoNAT:    {color.RGBA{120, 120, 120, 255}, nil, draw.CircleGlyph{}},
		NoNATCT:  {color.RGBA{120, 120, 120, 255}, []vg.Length{vg.Points(4), vg.Points(3)}, draw.RingGlyph{}},
		IPTables: {color.RGBA{200, 60, 40, 255}, nil, draw.SquareGlyph{}},
		Agent:    {color.RGBA{30, 100, 200, 255}, nil, draw.TriangleGlyph{}},
		AgentCT:  {color.RGBA{30, 100, 200, 255}, []vg.Length{vg.Points(4), vg.Points(3)}, draw.PyramidGlyph{}},
	}
	maxY := 0.0
	for _, mo := range modeOrder {
		var pts errPoints
		for _, n := range counts {
			s, ok := r.ConnRate[n][mo]
			if !ok || len(s) == 0 {
				continue
			}
			m := s.median()
			pts.XYs = append(pts.XYs, plotter.XY{X: float64(n), Y: m})
			q1, q3 := s.quantile(0.25), s.quantile(0.75)
			pts.YErrors = append(pts.YErrors, struct{ Low, High float64 }{m - q1, q3 - m})
			maxY = math.Max(maxY, q3)
		}
		if len(pts.XYs) == 0 {
			continue
		}
		st := styles[mo]
		line, scatter, err := plotter.NewLinePoints(pts.XYs)
		if err != nil {
			return err
		}
		line.Color, line.Width, line.Dashes = st.c, vg.Points(1.5), st.dash
		scatter.Color, scatter.Shape, scatter.Radius = st.c, st.shape, vg.Points(3)
		bars, err := plotter.NewYErrorBars(pts)
		if err != nil {
			return err
		}
		bars.Color = st.c
		pl.Add(line, scatter, bars)
		pl.Legend.Add(string(mo), line, scatter)
	}
	pl.Y.Max = maxY * 1.1
	return pl.Save(7*vg.Inch, 4.5*vg.Inch, file)
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}
