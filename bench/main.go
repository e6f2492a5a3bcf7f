// Command ipm-bench measures the eBPF ip-masq-agent side by side with the
// iptables rules of upstream ip-masq-agent and with no NAT at all, in one
// run, on the same network-namespace topology (docs/performance.md). It is a
// benchmark, not a test: it reports numbers and never fails on a timing.
//
//	sudo bin/ipm-bench -agent bin/ip-masq-agent -out bench/out   (make bench)
//
// It needs root, iperf3, iptables and the agent binary. Every namespace it
// creates is named ipmb-<id>-*, every bpffs is mounted under a temporary
// directory (never under /sys), and all of it is removed at the end, also
// on SIGINT/SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options size a run.
type Options struct {
	AgentBin     string
	Out          string
	Rounds       int           // interleaved rounds of every traffic figure
	ThroughputT  time.Duration // one iperf3 run
	ConnT        time.Duration // one connection-rate run
	ConnWorkers  int
	CIDRCounts   []int
	ApplyCIDRs   int
	ApplyRepeats int
	Prog         progOptions
	Scale        scaleOptions
	Modes        []Mode
	Phases       map[string]bool // empty: all of throughput, conn, apply, prog, stats, scale
	Log          func(format string, a ...any)
}

func defaultOptions() Options {
	return Options{
		AgentBin: "bin/ip-masq-agent", Out: "bench/out",
		Rounds: 5, ThroughputT: 4 * time.Second, ConnT: 3 * time.Second, ConnWorkers: 8,
		CIDRCounts: []int{3, 1000, 10000}, ApplyCIDRs: 10000, ApplyRepeats: 7,
		Prog: progOptions{Samples: 7, Repeats: 1_000_000, NewFlows: 8192, ManyCIDRs: 10000, NATEntries: 131072},
		Scale: scaleOptions{Sizes: []int{10_000, 1_000_000, 4_000_000}, Passes: 3, GCInterval: time.Second, Scrapes: 5,
			CycleFlows: 65536, Samples: 5, Repeats: 1_000_000},
		Modes: allModes,
	}
}

// smokeOptions is the pass CI may run: every phase, tiny sizes, seconds.
func smokeOptions() Options {
	o := defaultOptions()
	o.Rounds, o.ThroughputT, o.ConnT = 1, time.Second, 300*time.Millisecond
	o.CIDRCounts, o.ApplyCIDRs, o.ApplyRepeats = []int{3, 100}, 100, 1
	o.Prog = progOptions{Samples: 1, Repeats: 1000, NewFlows: 100, ManyCIDRs: 100, NATEntries: 131072}
	o.Scale = scaleOptions{Sizes: []int{1000, 4000}, Passes: 2, GCInterval: 200 * time.Millisecond, Scrapes: 2,
		CycleFlows: 256, Samples: 1, Repeats: 1000}
	return o
}

func main() {
	if runRole() {
		return
	}
	o := defaultOptions()
	smoke := flag.Bool("smoke", false, "tiny sizes: checks that every phase runs (seconds), numbers meaningless")
	flag.StringVar(&o.AgentBin, "agent", o.AgentBin, "agent binary")
	flag.StringVar(&o.Out, "out", o.Out, "output directory (results.md, results.json, conn-rate.png, scale.png)")
	rounds := flag.Int("rounds", o.Rounds, "interleaved rounds per traffic figure")
	tput := flag.Duration("throughput-time", o.ThroughputT, "length of one iperf3 run")
	connT := flag.Duration("conn-time", o.ConnT, "length of one connection-rate run")
	workers := flag.Int("conn-workers", o.ConnWorkers, "concurrent connections of the client")
	counts := flag.String("cidrs", "3,1000,10000", "CIDR counts of the connection-rate figure")
	repeats := flag.Int("repeats", o.Prog.Repeats, "test-run repeats per sample")
	samples := flag.Int("samples", o.Prog.Samples, "samples per datapath path")
	phases := flag.String("phases", "", "comma-separated subset of phases (throughput,conn,apply,prog,stats,scale); default all")
	sizes := flag.String("scale-sizes", joinInts(o.Scale.Sizes), "NAT table sizes (entries) of the scale phase")
	flag.StringVar(&o.Prog.Object, "object", "", "measure this datapath ELF in the prog phase instead of the embedded one (a bpf/ change before `make generate`)")
	replot := flag.String("replot", "", "measure nothing: write results.md and the chart into -out again from this results.json")
	only := flag.String("modes", "", "comma-separated subset of modes (nonat,nonatct,ipt,ebpf,ebpfct)")
	flag.Parse()
	if *smoke {
		s := smokeOptions()
		s.AgentBin, s.Out = o.AgentBin, o.Out
		o = s
	} else {
		o.Rounds, o.ThroughputT, o.ConnT, o.ConnWorkers = *rounds, *tput, *connT, *workers
		o.Prog.Repeats, o.Prog.Samples = *repeats, *samples
		o.CIDRCounts = nil
		for _, f := range strings.Split(*counts, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "invalid -cidrs %q\n", *counts)
				os.Exit(2)
			}
			o.CIDRCounts = append(o.CIDRCounts, n)
		}
	}
	if !*smoke {
		o.Scale.Sizes = nil
		for _, f := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 64 {
				fmt.Fprintf(os.Stderr, "invalid -scale-sizes %q (at least 64 entries each)\n", *sizes)
				os.Exit(2)
			}
			o.Scale.Sizes = append(o.Scale.Sizes, n)
		}
	}
	if *phases != "" {
		o.Phases = map[string]bool{}
		for _, f := range strings.Split(*phases, ",") {
			o.Phases[strings.TrimSpace(f)] = true
		}
	}
	if *only != "" {
		o.Modes = nil
		for _, f := range strings.Split(*only, ",") {
			for _, m := range allModes {
				if m.short() == strings.TrimSpace(f) {
					o.Modes = append(o.Modes, m)
				}
			}
		}
	}
	o.Log = func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	if *replot != "" {
		var res Results
		data, err := os.ReadFile(*replot)
		if err == nil {
			err = json.Unmarshal(data, &res)
		}
		if err == nil {
			err = writeOutputs(&res, o.Out)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, o)
	if res != nil {
		if werr := writeOutputs(res, o.Out); werr != nil {
			fmt.Fprintln(os.Stderr, werr)
		}
		res.Markdown(os.Stdout)
		res.Targets(os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// writeOutputs writes results.md, results.json, conn-rate.png and scale.png
// into dir.
func writeOutputs(r *Results, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	md.WriteString("### Results\n\n")
	r.Markdown(&md)
	md.WriteString("### Targets\n\n")
	r.Targets(&md)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644); err != nil {
		return err
	}
	if err := r.Chart(filepath.Join(dir, "conn-rate.png")); err != nil {
		return err
	}
	return r.ScaleChart(filepath.Join(dir, "scale.png"))
}
