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

// cpuJudgedFrom is the smallest table whose expiry CPU is held against the
// per-million goal: below it a pass takes a few ms, under the 10 ms
// resolution of /proc's CPU times.
const cpuJudgedFrom = 100_000

func (s scaleResult) cpuPerMillion() float64 { return s.ExpiryCPU / (float64(s.Entries) / 1e6) }

// packetRatio is the worse of egress and ingress: 90 % fill over empty.
func (d *scaleDatapath) packetRatio() float64 {
	if d == nil {
		return math.NaN()
	}
	return math.Max(d.EgressFull.median()/d.EgressEmpty.median(), d.IngressFull.median()/d.IngressEmpty.median())
}

func fmtEntries(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// scaleMarkdown writes the scale phase's table, one column per size.
func (r *Results) scaleMarkdown(w io.Writer) {
	if len(r.Scale) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("#### Large NAT tables (agent on a table filled through the maps; datapath test runs)\n\n")
	p("Run: %s.\n\n| figure |", r.ScaleOptions)
	for _, s := range r.Scale {
		p(" %s entries |", fmtInt(float64(s.Entries)))
	}
	p(" goal |\n|---|")
	for range r.Scale {
		p("---:|")
	}
	p("---|\n")
	row := func(label, goal string, cell func(s scaleResult) string) {
		p("| %s |", label)
		for _, s := range r.Scale {
			p(" %s |", cell(s))
		}
		p(" %s |\n", goal)
	}
	row("agent --nat-max-entries; fill through the maps, s", "", func(s scaleResult) string {
		return fmt.Sprintf("%s; %.1f", fmtInt(float64(s.Capacity)), s.FillSeconds)
	})
	row("agent VmHWM: before the fill / after the expiry passes / at the end (scrapes, debug)", "peak ≤ 40 MiB", func(s scaleResult) string {
		return fmt.Sprintf("%.1f / %.1f / **%.1f** MiB", mb(s.StartHWM), mb(s.PassHWM), mb(s.PeakHWM))
	})
	row("expiry: agent CPU (user + system) per pass, s", "", func(s scaleResult) string {
		return fmt.Sprintf("%.3f (%d passes, %s)", s.ExpiryCPU, s.Passes, s.PassSource)
	})
	row("expiry: CPU per pass per million entries, s", "≤ 1 s", func(s scaleResult) string {
		if s.Entries < cpuJudgedFrom {
			return fmt.Sprintf("(%.2f)", s.cpuPerMillion())
		}
		return fmt.Sprintf("**%.2f**", s.cpuPerMillion())
	})
	row("expiry: pass duration from the agent's metric, s", "", func(s scaleResult) string {
		if s.ExpiryMetric == 0 {
			return "no metric"
		}
		return fmt.Sprintf("%.3f", s.ExpiryMetric)
	})
	row("/metrics scrape, ms: median (min-max)", "< 100 ms", func(s scaleResult) string {
		return fmt.Sprintf("**%s** (%s-%s)", fmtMs(s.Scrape.median()), fmtMs(s.Scrape.min()), fmtMs(s.Scrape.max()))
	})
	row("IPv4 entries the scrape reports (`ip_masq_agent_nat_entries`)", "", func(s scaleResult) string {
		return fmtInt(s.TableMetric)
	})
	row("`ip-masq-agent debug`: wall ms / peak RSS / output", "", func(s scaleResult) string {
		return fmt.Sprintf("%s ms / %.1f MiB / %.1f MB", fmtMs(s.Debug.median()), mb(s.DebugMaxRSS), float64(s.DebugBytes)/1e6)
	})
	dp := func(f func(d *scaleDatapath) string) func(s scaleResult) string {
		return func(s scaleResult) string {
			if s.DP == nil {
				return "-"
			}
			return f(s.DP)
		}
	}
	row("datapath table: capacity; entries at 90 %; distinct flows per direction in the cycle", "", dp(func(d *scaleDatapath) string {
		return fmt.Sprintf("%s; %s; %s", fmtInt(float64(d.Capacity)), fmtInt(float64(d.Filled)), fmtInt(float64(d.Cycle)))
	}))
	pair := func(empty, full sample) string {
		return fmt.Sprintf("%s / %s (%.2f)", fmtInt(empty.median()), fmtInt(full.median()), full.median()/empty.median())
	}
	row("established egress, ns per packet: cycle only / 90 % fill (ratio)", "", dp(func(d *scaleDatapath) string { return pair(d.EgressEmpty, d.EgressFull) }))
	row("reverse ingress, ns per packet: cycle only / 90 % fill (ratio)", "", dp(func(d *scaleDatapath) string { return pair(d.IngressEmpty, d.IngressFull) }))
	// The control (scale_lookup.go): the bare lookup, and what the
	// datapath costs beyond it. Where the datapath's difference between
	// the tables is the lookup's, the rows "minus bare lookup" stay near
	// 1.00. Absent from results.json files written before it: "-".
	lookup := func(f func(d *scaleDatapath) string) func(s scaleResult) string {
		return dp(func(d *scaleDatapath) string {
			if len(d.LookupEmpty) == 0 || len(d.LookupFull) == 0 {
				return "-"
			}
			return f(d)
		})
	}
	minus := func(empty, full, ctlEmpty, ctlFull sample) string {
		if len(ctlEmpty) == 0 || len(ctlFull) == 0 {
			return "-"
		}
		e, f := empty.median()-ctlEmpty.median(), full.median()-ctlFull.median()
		return fmt.Sprintf("%s / %s (%.2f)", fmtInt(e), fmtInt(f), f/e)
	}
	row("control: bare hash lookup of the egress cycle's keys, ns per run: cycle only / 90 % fill (ratio)", "", lookup(func(d *scaleDatapath) string { return pair(d.LookupEmpty, d.LookupFull) }))
	row("control: the same lookup, then last_seen_ns of the entry found rewritten in place, ns per run: cycle only / 90 % fill (ratio)", "", lookup(func(d *scaleDatapath) string {
		if len(d.TouchEmpty) == 0 || len(d.TouchFull) == 0 {
			return "-"
		}
		return pair(d.TouchEmpty, d.TouchFull)
	}))
	row("established egress minus bare lookup, ns: cycle only / 90 % fill (ratio)", "", lookup(func(d *scaleDatapath) string {
		return minus(d.EgressEmpty, d.EgressFull, d.LookupEmpty, d.LookupFull)
	}))
	row("reverse ingress minus bare lookup, ns: cycle only / 90 % fill (ratio)", "", lookup(func(d *scaleDatapath) string {
		return minus(d.IngressEmpty, d.IngressFull, d.LookupEmpty, d.LookupFull)
	}))
	row("established egress minus lookup and write, ns: cycle only / 90 % fill (ratio)", "", lookup(func(d *scaleDatapath) string {
		return minus(d.EgressEmpty, d.EgressFull, d.TouchEmpty, d.TouchFull)
	}))
	p("\nThe agent's table holds the given number of entries (valid established TCP flows, both halves) in a table of twice that capacity; " +
		"the datapath's table is a separate one of the given capacity. Test runs: medians over interleaved samples of both tables; " +
		"the packet walks a cycle of distinct flows (each translation leads to the next flow's entry), so no single entry stays hot. " +
		"The control is a program doing nothing but the NAT table's hash lookup (bpf_map_lookup_elem) of the egress cycle's keys in turn, run the same way in the same two tables " +
		"(every run checked to find its key); the datapath minus it is what the datapath does besides that lookup (established egress does one lookup of this table per packet; ingress now and then a second, left in its remainder), test-run cost cancelled. " +
		"Where that stays the same in both tables (ratio near 1.00), the difference between them is the kernel's hash lookup, not the datapath's code. " +
		"The second control also rewrites the entry's last_seen_ns with its own value, as the datapath touches the entry: in the kernel's hash map an element's value starts 64 bytes after the element, mostly on another cache line than its key, which the bare lookup does not reach. " +
		"CPU per pass in brackets: below the 10 ms resolution of /proc's CPU times, not judged.\n\n")
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

// scaleTargets writes one row per goal with every size.
func (r *Results) scaleTargets(w io.Writer) {
	if len(r.Scale) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	goal := func(label string, judge func(s scaleResult) (string, bool, bool)) {
		var cells, verdicts []string
		for _, s := range r.Scale {
			v, ok, judged := judge(s)
			cells = append(cells, fmtEntries(s.Entries)+": "+v)
			switch {
			case !judged:
				verdicts = append(verdicts, "-")
			case ok:
				verdicts = append(verdicts, "yes")
			default:
				verdicts = append(verdicts, "**no**")
			}
		}
		p("| %s | %s | %s |\n", label, strings.Join(cells, "; "), strings.Join(verdicts, ", "))
	}
	goal("agent peak memory (VmHWM) ≤ 40 MiB at every table size", func(s scaleResult) (string, bool, bool) {
		return fmt.Sprintf("%.1f MiB", mb(s.PeakHWM)), mb(s.PeakHWM) <= goalAgentMiB, true
	})
	goal("expiry ≤ 1 s of CPU per pass per million entries", func(s scaleResult) (string, bool, bool) {
		v := s.cpuPerMillion()
		return fmt.Sprintf("%.2f s", v), v <= goalCPUPerMillion, s.Entries >= cpuJudgedFrom
	})
	goal("one /metrics scrape < 100 ms", func(s scaleResult) (string, bool, bool) {
		m := s.Scrape.median()
		return fmtMs(m) + " ms", m < goalScrapeMs, true
	})
	goal("per-packet cost at 90 % fill within 10 % of an empty table's (worse of egress, ingress)", func(s scaleResult) (string, bool, bool) {
		v := s.DP.packetRatio()
		return fmt.Sprintf("%.2f", v), v <= goalPerPacketRatio, s.DP != nil
	})
}

// ScaleChart draws each goal's figure as a fraction of the goal (1 = the
// goal; below it holds) against the table size, both axes logarithmic.
func (r *Results) ScaleChart(file string) error {
	if len(r.Scale) == 0 {
		return nil
	}
	pl := plot.New()
	pl.Title.Text = "Large NAT tables: measured / goal (below 1 holds)"
	pl.X.Label.Text = "NAT entries (log scale)"
	pl.Y.Label.Text = "measured / goal (log scale)"
	pl.X.Scale, pl.Y.Scale = plot.LogScale{}, plot.LogScale{}
	var xt plot.ConstantTicks
	for _, s := range r.Scale {
		xt = append(xt, plot.Tick{Value: float64(s.Entries), Label: fmtEntries(s.Entries)})
	}
	pl.X.Tick.Marker = xt
	pl.X.Min, pl.X.Max = float64(r.Scale[0].Entries)*0.6, float64(r.Scale[len(r.Scale)-1].Entries)*1.6
	pl.Y.Tick.Marker = plot.ConstantTicks{{Value: 0.01, Label: "0.01"}, {Value: 0.1, Label: "0.1"}, {Value: 1, Label: "1 (goal)"},
		{Value: 10, Label: "10"}, {Value: 100, Label: "100"}, {Value: 1000, Label: "1000"}}
	pl.Legend.Top, pl.Legend.Left = true, true
	pl.Add(plotter.NewGrid())

	series := []struct {
		name  string
		c     color.Color
		shape draw.GlyphDrawer
		v     func(s scaleResult) float64
	}{
		{"agent peak memory / 40 MiB", color.RGBA{30, 100, 200, 255}, draw.CircleGlyph{}, func(s scaleResult) float64 { return mb(s.PeakHWM) / goalAgentMiB }},
		{"expiry CPU per pass per million entries / 1 s", color.RGBA{200, 60, 40, 255}, draw.SquareGlyph{}, func(s scaleResult) float64 {
			if s.Entries < cpuJudgedFrom {
				return math.NaN()
			}
			return s.cpuPerMillion() / goalCPUPerMillion
		}},
		{"/metrics scrape / 100 ms", color.RGBA{40, 150, 60, 255}, draw.TriangleGlyph{}, func(s scaleResult) float64 { return s.Scrape.median() / goalScrapeMs }},
		{"ns per packet at 90 % fill / (1.1 x empty)", color.RGBA{140, 60, 160, 255}, draw.PyramidGlyph{}, func(s scaleResult) float64 { return s.DP.packetRatio() / goalPerPacketRatio }},
	}
	lo, hi := 0.5, 2.0
	for _, se := range series {
		var pts plotter.XYs
		for _, s := range r.Scale {
			v := se.v(s)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			v = math.Max(v, 0.005) // a log axis has no 0
			pts = append(pts, plotter.XY{X: float64(s.Entries), Y: v})
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		if len(pts) == 0 {
			continue
		}
		line, scatter, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		line.Color, line.Width = se.c, vg.Points(1.5)
		scatter.Color, scatter.Shape, scatter.Radius = se.c, se.shape, vg.Points(3.5)
		pl.Add(line, scatter)
		pl.Legend.Add(se.name, line, scatter)
	}
	goalLine, err := plotter.NewLine(plotter.XYs{{X: pl.X.Min, Y: 1}, {X: pl.X.Max, Y: 1}})
	if err != nil {
		return err
	}
	goalLine.Color, goalLine.Width, goalLine.Dashes = color.Black, vg.Points(1), []vg.Length{vg.Points(5), vg.Points(3)}
	pl.Add(goalLine)
	pl.Y.Min, pl.Y.Max = lo/2, hi*4 // room for the legend above the lines
	return pl.Save(7*vg.Inch, 4.5*vg.Inch, file)
}
