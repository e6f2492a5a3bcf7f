package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// bench is one run: a topology per mode, built once and measured in turns.
type bench struct {
	o     Options
	self  string
	id    string
	dir   string
	topos map[Mode]*Topo
	res   *Results
}

// Run measures everything o asks for. It returns what it measured so far
// also when it fails halfway.
func Run(ctx context.Context, o Options) (*Results, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, bpffs, BPF)")
	}
	for _, tool := range []string{"ip", "iperf3", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: run `sudo make setup`", tool)
		}
	}
	agentBin, err := filepath.Abs(o.AgentBin)
	if err != nil {
		return nil, err
	}
	needAgent := len(o.Phases) == 0 || o.Phases["throughput"] || o.Phases["conn"] || o.Phases["apply"] || o.Phases["stats"] || o.Phases["scale"]
	if _, err := os.Stat(agentBin); err != nil && needAgent {
		return nil, fmt.Errorf("agent binary: %w (run `make build`)", err)
	}
	o.AgentBin = agentBin
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, self: self, id: randomID(), topos: map[Mode]*Topo{}, res: &Results{
		Throughput: map[Mode]sample{}, ConnRate: map[int]map[Mode]sample{},
		ConnFailed: map[int]map[Mode]int64{}, AgentDrops: map[int]map[Mode]uint64{},
	}}
	b.res.Machine = machine()
	onlyScale := len(o.Phases) == 1 && o.Phases["scale"]
	if !onlyScale {
		b.res.Options = fmt.Sprintf("%d interleaved rounds; iperf3 %v per run; connection runs of %v with %d concurrent connections over %d server ports; CIDR counts %s; %d applies of %d CIDRs; test runs: %d samples of %d repeats (new flows: %d per sample)",
			o.Rounds, o.ThroughputT, o.ConnT, o.ConnWorkers, connPorts, joinInts(o.CIDRCounts), o.ApplyRepeats, o.ApplyCIDRs, o.Prog.Samples, o.Prog.Repeats, o.Prog.NewFlows)
	}
	if b.dir, err = os.MkdirTemp("", "ipm-bench-"); err != nil {
		return nil, err
	}
	defer b.close()

	steps := []struct {
		name, phase string
		fn          func(context.Context) error
	}{
		{"topologies", "", b.setup},
		{"throughput", "throughput", b.throughput},
		{"connection rate", "conn", b.connRate},
		{"config apply", "apply", b.apply},
		{"test runs", "prog", b.testRuns},
		{"bpf_stats cross-check", "stats", b.statsCrossCheck},
		{"large NAT tables", "scale", b.scale},
	}
	want := func(phase string) bool { return len(o.Phases) == 0 || o.Phases[phase] }
	for _, s := range steps {
		if s.phase == "" && !(want("throughput") || want("conn") || want("apply") || want("stats")) {
			continue
		}
		if s.phase != "" && !want(s.phase) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return b.res, err
		}
		o.Log("== %s", s.name)
		if err := s.fn(ctx); err != nil {
			return b.res, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	b.res.Machine.LoadEnd = loadAvg()
	return b.res, nil
}

func (b *bench) close() {
	for _, t := range b.topos {
		t.Close()
	}
	os.RemoveAll(b.dir)
}

func (b *bench) has(m Mode) bool { _, ok := b.topos[m]; return ok }

// rotated is the mode order of round r: each mode goes first in turn.
func (b *bench) rotated(r int) []Mode {
	var ms []Mode
	for _, m := range b.o.Modes {
		if b.has(m) {
			ms = append(ms, m)
		}
	}
	out := make([]Mode, 0, len(ms))
	for i := range ms {
		out = append(out, ms[(r+i)%len(ms)])
	}
	return out
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), LoadStart: loadAvg()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return m
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) setup(ctx context.Context) error {
	first := cidrs(b.o.CIDRCounts[0], 1)
	for _, m := range b.o.Modes {
		t, err := newTopo(b.id, m, b.dir)
		if err != nil {
			return err
		}
		b.topos[m] = t
		if err := t.startServers(b.self); err != nil {
			return err
		}
		switch {
		case m == IPTables:
			if err := t.restore(masqRules(first), true); err != nil {
				return err
			}
		case m.agent():
			if t.agent, err = startAgent(b.o.AgentBin, t, first); err != nil {
				return err
			}
		}
		// A first short run: the path works (in the NAT modes the remote
		// host has no route to the pods, so this proves the masquerade).
		r, err := t.connRate(b.self, 2, 200*time.Millisecond)
		if err != nil {
			return err
		}
		if r.Conns == 0 {
			return fmt.Errorf("%s: sanity run: no connection succeeded, %d failed (%s)", m, r.Errors, r.FirstErr)
		}
		b.o.Log("%s: ready (%d connections in the sanity run, %d failed)", m, r.Conns, r.Errors)
	}
	if t := b.topos[Agent]; t != nil {
		time.Sleep(2 * time.Second)
		var err error
		mem := &b.res.Memory
		if mem.RestRSS, mem.RestHWM, err = memory(t.agent.cmd.Process.Pid); err != nil {
			return err
		}
		if mem.Maps, err = pinnedMaps(t.agent.PinPath); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) throughput(ctx context.Context) error {
	for r := range b.o.Rounds {
		for _, m := range b.rotated(r) {
			if err := ctx.Err(); err != nil {
				return err
			}
			bps, err := b.topos[m].throughput(b.o.ThroughputT)
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			b.res.Throughput[m] = append(b.res.Throughput[m], bps)
			b.o.Log("round %d %-24s %6.2f Gbit/s", r+1, m, bps/1e9)
		}
	}
	return nil
}

// configure makes n CIDRs the list of the iptables rules and of the agents.
func (b *bench) configure(c []netip.Prefix) error {
	if t := b.topos[IPTables]; t != nil {
		if err := t.restore(masqRules(c), true); err != nil {
			return err
		}
	}
	for _, m := range []Mode{Agent, AgentCT} {
		if t := b.topos[m]; t != nil {
			if _, err := t.agent.apply(c, 30*time.Second); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *bench) connRate(ctx context.Context) error {
	for _, n := range b.o.CIDRCounts {
		if err := b.configure(cidrs(n, 1)); err != nil {
			return err
		}
		b.res.ConnRate[n] = map[Mode]sample{}
		b.res.ConnFailed[n] = map[Mode]int64{}
		b.res.AgentDrops[n] = map[Mode]uint64{}
		time.Sleep(time.Second)
		for r := range b.o.Rounds {
			for _, m := range b.rotated(r) {
				if err := ctx.Err(); err != nil {
					return err
				}
				t := b.topos[m]
				var before uint64
				if t.agent != nil {
					before = agentDrops(t.agent.PinPath)
				}
				res, err := t.connRate(b.self, b.o.ConnWorkers, b.o.ConnT)
				if err != nil {
					return fmt.Errorf("%s: %w", m, err)
				}
				rate := float64(res.Conns) / res.Seconds
				b.res.ConnRate[n][m] = append(b.res.ConnRate[n][m], rate)
				b.res.ConnFailed[n][m] += res.Errors
				if t.agent != nil {
					b.res.AgentDrops[n][m] += agentDrops(t.agent.PinPath) - before
				}
				b.o.Log("%5d CIDRs round %d %-24s %8.0f conn/s (%d failed %s)", n, r+1, m, rate, res.Errors, res.FirstErr)
			}
		}
	}
	return nil
}

// agentDrops sums the datapath counters of new flows it had to drop.
func agentDrops(pin string) uint64 {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "ipm_stats"), nil)
	if err != nil {
		return 0
	}
	defer m.Close()
	c, err := readCounters(m)
	if err != nil {
		return 0
	}
	return c["egress_table_full"] + c["egress_no_port"] + c["egress_race"]
}

func (b *bench) apply(ctx context.Context) error {
	ag, ipt := b.topos[Agent], b.topos[IPTables]
	small := cidrs(3, 1)
	b.res.Apply.CIDRs = b.o.ApplyCIDRs
	var legacyNS string
	if _, err := exec.LookPath("iptables-legacy-restore"); err == nil {
		legacyNS = nsPrefix + b.id + "-legacy"
		if _, err := sh("ip", "netns", "add", legacyNS); err != nil {
			return err
		}
		defer sh("ip", "netns", "del", legacyNS)
	}
	timeRestore := func(ns, tool, rules string) (float64, error) {
		start := time.Now()
		_, err := nsExecStdin(ns, rules, tool, "-w", "--noflush")
		return float64(time.Since(start).Microseconds()) / 1000, err
	}
	for i := range b.o.ApplyRepeats {
		if err := ctx.Err(); err != nil {
			return err
		}
		many := cidrs(b.o.ApplyCIDRs, uint64(100+i))
		if ag != nil {
			// Both tries small first, so every measured apply writes the
			// whole set into a trie that holds a handful of prefixes.
			for range 2 {
				if _, err := ag.agent.apply(small, 30*time.Second); err != nil {
					return err
				}
			}
			time.Sleep(300 * time.Millisecond) // past the agent's debounce and retire grace
			r, err := ag.agent.apply(many, 30*time.Second)
			if err != nil {
				return err
			}
			b.res.Apply.Agent = append(b.res.Apply.Agent, float64(r.Total.Microseconds())/1000)
			b.res.Apply.AgentSync = append(b.res.Apply.AgentSync, float64(r.AgentSync.Microseconds())/1000)
			b.o.Log("apply %d: agent %v (own sync %v, log seen after %v)", i+1, r.Total.Round(time.Microsecond), r.AgentSync, r.LogLatency.Round(time.Microsecond))
		}
		if ipt != nil {
			if err := ipt.restore(masqRules(small), true); err != nil {
				return err
			}
			ms, err := timeRestore(ipt.Node, "iptables-restore", masqRules(many))
			if err != nil {
				return err
			}
			b.res.Apply.IPTables = append(b.res.Apply.IPTables, ms)
			b.o.Log("apply %d: iptables-restore %.1f ms", i+1, ms)
		}
		if legacyNS != "" {
			if _, err := timeRestore(legacyNS, "iptables-legacy-restore", masqJump+masqRules(small)); err != nil {
				return err
			}
			ms, err := timeRestore(legacyNS, "iptables-legacy-restore", masqRules(many))
			if err != nil {
				return err
			}
			b.res.Apply.IPTLegacy = append(b.res.Apply.IPTLegacy, ms)
			b.o.Log("apply %d: iptables-legacy-restore %.1f ms", i+1, ms)
		}
	}
	if ag != nil {
		time.Sleep(time.Second)
		mem := &b.res.Memory
		mem.ManyCIDRs = b.o.ApplyCIDRs
		var err error
		if mem.ManyRSS, mem.ManyHWM, err = memory(ag.agent.cmd.Process.Pid); err != nil {
			return err
		}
		mm, err := pinnedMaps(ag.agent.PinPath)
		if err != nil {
			return err
		}
		mem.MapsMany = map[string]uint64{}
		for _, m := range mm {
			mem.MapsMany[m.Name] = m.Memlock
		}
	}
	return nil
}

func (b *bench) testRuns(ctx context.Context) error {
	ns := nsPrefix + b.id + "-prog"
	if _, err := sh("ip", "netns", "add", ns); err != nil {
		return err
	}
	defer sh("ip", "netns", "del", ns)
	many := cidrs(b.o.Prog.ManyCIDRs, 1)
	return inNetns(ns, func() error {
		if _, err := sh("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		paths, err := measurePaths(b.o.Prog, many)
		b.res.Paths = paths
		for _, p := range paths {
			b.o.Log("%-40s median %4.0f ns (%.0f-%.0f)", p.Name, p.Ns.median(), p.Ns.min(), p.Ns.max())
		}
		return err
	})
}

// statsCrossCheck runs real traffic through the agent's topology with
// BPF_ENABLE_STATS held (it turns off when the descriptor is closed, unlike
// the kernel.bpf_stats_enabled sysctl, so a killed run cannot leave it on)
// and reads run time and run count of the agent's two attached programs.
func (b *bench) statsCrossCheck(ctx context.Context) error {
	t := b.topos[Agent]
	if t == nil {
		return nil
	}
	var progs []*ebpf.Program
	var names []string
	for _, dir := range []string{"egress", "ingress"} {
		l, err := link.LoadPinnedLink(filepath.Join(t.agent.PinPath, "links", defaultDev+"_"+dir), nil)
		if err != nil {
			b.res.Notes = append(b.res.Notes, fmt.Sprintf("bpf_stats cross-check skipped: no pinned tcx link (%v)", err))
			return nil
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return err
		}
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return err
		}
		defer p.Close()
		progs = append(progs, p)
		names = append(names, "ipm_"+dir)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF stats: %w", err)
	}
	defer stats.Close()
	snap := func() ([]ebpf.ProgramStats, error) {
		var out []ebpf.ProgramStats
		for _, p := range progs {
			s, err := p.Stats()
			if err != nil {
				return nil, err
			}
			out = append(out, *s)
		}
		return out, nil
	}
	record := func(workload string, before, after []ebpf.ProgramStats, conns int64) {
		for i := range progs {
			runs := after[i].RunCount - before[i].RunCount
			rt := after[i].Runtime - before[i].Runtime
			sr := statsResult{Workload: workload, Program: names[i], Runs: runs}
			if runs > 0 {
				sr.NsPerRun = float64(rt.Nanoseconds()) / float64(runs)
			}
			if conns > 0 {
				sr.PerConn = float64(rt.Nanoseconds()) / float64(conns)
			}
			b.res.Stats = append(b.res.Stats, sr)
			b.o.Log("bpf_stats %s %s: %d runs, %.0f ns per run", workload, names[i], runs, sr.NsPerRun)
		}
	}
	s0, err := snap()
	if err != nil {
		return err
	}
	if _, err := t.throughput(b.o.ThroughputT); err != nil {
		return err
	}
	s1, err := snap()
	if err != nil {
		return err
	}
	record("iperf3 stream (GSO packets: one run per up to 64 KiB)", s0, s1, 0)
	r, err := t.connRate(b.self, b.o.ConnWorkers, b.o.ConnT)
	if err != nil {
		return err
	}
	s2, err := snap()
	if err != nil {
		return err
	}
	record(fmt.Sprintf("connection runs (%d connections; %d CIDRs loaded)", r.Conns, b.o.ApplyCIDRs), s1, s2, r.Conns)
	return nil
}
