package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// bgProc is a long-running child process with its output kept.
type bgProc struct {
	cmd    *exec.Cmd
	out    syncBuffer
	exited chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startBg(args ...string) (*bgProc, error) {
	p := &bgProc{cmd: exec.Command(args[0], args[1:]...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(args, " "), err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *bgProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s.
func (p *bgProc) stop() {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitOutput waits until substr appears in the output after offset from.
func (p *bgProc) waitOutput(substr string, from int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out := p.out.String()
		if from <= len(out) && strings.Contains(out[from:], substr) {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("exited before printing %q: %s", substr, lastLines(out, 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("did not print %q within %v: %s", substr, timeout, lastLines(out, 20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// agentProc is the real agent binary running in a node namespace:
//
//	ip netns exec NODE ip-masq-agent --config=F --interfaces=eth0 --pin-path=BPFFS/ipm
//
// with its own bpffs mounted outside /sys, and its config file alone in a
// directory that the agent watches.
type agentProc struct {
	*bgProc
	ConfigPath string
	BPFFS      string
	PinPath    string
	applies    int // configs written so far, for sentinels
}

func startAgent(bin string, t *Topo, initial []netip.Prefix, extra ...string) (*agentProc, error) {
	a := &agentProc{BPFFS: filepath.Join(t.dir, "bpffs")}
	a.PinPath = filepath.Join(a.BPFFS, "ipm")
	a.ConfigPath = filepath.Join(t.dir, "config", "ip-masq-agent")
	if err := os.MkdirAll(filepath.Dir(a.ConfigPath), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(a.ConfigPath, configFile(initial, -1), 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.BPFFS, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", a.BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s: %w", a.BPFFS, err)
	}
	p, err := startBg(append([]string{"ip", "netns", "exec", t.Node, bin,
		"--config=" + a.ConfigPath, "--interfaces=" + defaultDev, "--pin-path=" + a.PinPath}, extra...)...)
	if err != nil {
		a.unmount()
		return nil, err
	}
	a.bgProc = p
	if err := p.waitOutput("Datapath ready", 0, 30*time.Second); err != nil {
		a.stop()
		return nil, fmt.Errorf("agent in %s: %w", t.Node, err)
	}
	return a, nil
}

func (a *agentProc) unmount() {
	if err := unix.Unmount(a.BPFFS, 0); err != nil {
		unix.Unmount(a.BPFFS, unix.MNT_DETACH)
	}
}

// stop ends the agent (SIGTERM leaves the datapath attached; the namespace's
// deletion takes the links with it) and unmounts its bpffs.
func (a *agentProc) stop() {
	if a.bgProc != nil {
		a.bgProc.stop()
	}
	a.unmount()
}

// configFile is an ip-masq-agent config listing c; sentinelIdx >= 0 adds
// the sentinel prefix of that index.
func configFile(c []netip.Prefix, sentinelIdx int) []byte {
	var b bytes.Buffer
	n := len(c)
	if sentinelIdx >= 0 {
		n++
	}
	fmt.Fprintf(&b, "cidrLimit: %d\nnonMasqueradeCIDRs:\n", max(n, 64))
	for _, p := range c {
		fmt.Fprintf(&b, "  - %s\n", p)
	}
	if sentinelIdx >= 0 {
		fmt.Fprintf(&b, "  - %s\n", sentinel(sentinelIdx))
	}
	return b.Bytes()
}

// applyResult is one config change as seen from both sides.
type applyResult struct {
	Total      time.Duration // file written (rename) -> active trie holds the new set
	AgentSync  time.Duration // the agent's own "Applied configuration" duration (read, parse, write, flip)
	LogLatency time.Duration // file written -> the log line read by the harness
}

// apply writes a config with c plus a fresh sentinel and measures how long
// until the datapath decides with it: the harness polls the pinned maps
// every 0.5 ms (ipm_settings.active_cidrs, then an LPM lookup of the
// sentinel in the active trie), because the flip is the last thing the agent
// does and is what packets see.
func (a *agentProc) apply(c []netip.Prefix, timeout time.Duration) (applyResult, error) {
	var r applyResult
	a.applies++
	idx := a.applies
	settings, err := ebpf.LoadPinnedMap(filepath.Join(a.PinPath, "ipm_settings"), nil)
	if err != nil {
		return r, err
	}
	defer settings.Close()
	var tries [2]*ebpf.Map
	for i := range tries {
		tries[i], err = ebpf.LoadPinnedMap(filepath.Join(a.PinPath, fmt.Sprintf("ipm_cidr4_%d", i)), nil)
		if err != nil {
			return r, err
		}
		defer tries[i].Close()
	}
	s := sentinel(idx)
	key := loader.BPFIpmCidr4Key{Prefixlen: 32, Addr: be32(s.Addr().Next())}
	inEffect := func() bool {
		var st loader.BPFIpmSettings
		if settings.Lookup(uint32(0), &st) != nil || st.ActiveCidrs > 1 {
			return false
		}
		var v loader.BPFIpmCidrValue
		return tries[st.ActiveCidrs].Lookup(&key, &v) == nil
	}
	if inEffect() {
		return r, errors.New("sentinel active before the write")
	}
	// Written next to the watched directory, renamed in: one event, as a
	// tool replacing the file (or kubelet's symlink swap) makes.
	tmp := filepath.Join(filepath.Dir(filepath.Dir(a.ConfigPath)), "config.tmp")
	logFrom := len(a.out.String())
	start := time.Now()
	if err := os.WriteFile(tmp, configFile(c, idx), 0o600); err != nil {
		return r, err
	}
	if err := os.Rename(tmp, a.ConfigPath); err != nil {
		return r, err
	}
	for !inEffect() {
		if time.Since(start) > timeout {
			return r, fmt.Errorf("config of %d CIDRs not in effect after %v: %s", len(c), timeout, lastLines(a.out.String(), 5))
		}
		time.Sleep(500 * time.Microsecond)
	}
	r.Total = time.Since(start)
	if err := a.waitOutput("Applied configuration", logFrom, 10*time.Second); err != nil {
		return r, err
	}
	r.LogLatency = time.Since(start)
	r.AgentSync = appliedDuration(a.out.String()[logFrom:])
	return r, nil
}

var durationRE = regexp.MustCompile(`Applied configuration.* duration="?([0-9.]+[a-zµ]+)`)

func appliedDuration(logs string) time.Duration {
	m := durationRE.FindStringSubmatch(logs)
	if m == nil {
		return 0
	}
	d, _ := time.ParseDuration(m[1])
	return d
}

// memory reads VmRSS and VmHWM of a process, in bytes.
func memory(pid int) (rss, hwm uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v * 1024
		case "VmHWM:":
			hwm = v * 1024
		}
	}
	return rss, hwm, nil
}

// mapMemory is one pinned map's size.
type mapMemory struct {
	Name       string
	Type       string
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32
	Nominal    uint64 // (key + value) x max_entries (x CPUs for per-CPU maps)
	Memlock    uint64 // the kernel's own figure (fdinfo memlock)
}

// pinnedMaps reads every map pinned directly under dir.
func pinnedMaps(dir string) ([]mapMemory, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []mapMemory
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue // not a map (a lock file, a link)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return nil, err
		}
		mm := mapMemory{Name: e.Name(), Type: info.Type.String(), KeySize: info.KeySize, ValueSize: info.ValueSize,
			MaxEntries: info.MaxEntries, Flags: info.Flags}
		mm.Nominal = uint64(info.KeySize+info.ValueSize) * uint64(info.MaxEntries)
		if info.Type == ebpf.PerCPUArray || info.Type == ebpf.PerCPUHash || info.Type == ebpf.LRUCPUHash {
			cpus, _ := ebpf.PossibleCPU()
			mm.Nominal = uint64(info.KeySize)*uint64(info.MaxEntries) + uint64(info.ValueSize)*uint64(info.MaxEntries)*uint64(cpus)
		}
		mm.Memlock, _ = info.Memlock()
		out = append(out, mm)
	}
	return out, nil
}
