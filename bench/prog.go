package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// Nanoseconds per packet of each datapath path, from BPF_PROG_TEST_RUN
// repeats on the real object (docs/performance.md). A test run repeats the program on the
// same buffer, so a translated packet would take another path on the second
// repeat; each path below is set up so that every repeat takes it, and the
// datapath's own counters prove it: after each sample exactly one counter
// moved, by exactly the number of repeats.

// pathResult is one measured path.
type pathResult struct {
	Name    string
	Detail  string
	Counter string
	Repeats int
	Ns      sample // one value per sample: kernel-measured ns per repeat
	Target  string // the target for this path, if any
}

// progEnv is one loaded datapath on a private bpffs, configured like the
// agent would be, in a throwaway network namespace (test runs use its
// loopback, ifindex 1). It writes the maps through the generated types
// directly rather than through the maps package, so that the bench depends
// only on the object's layout.
type progEnv struct {
	bpffs    string
	dp       *loader.Datapath
	settings loader.BPFIpmSettings
}

const testIfindex = 1

// openObject loads another build of the datapath (same maps and programs)
// from an ELF file, unpinned: for measuring a change to bpf/ before it is
// generated into loader/ (ipm-bench -phases prog -object FILE).
func openObject(file string, natEntries uint32) (*loader.Datapath, error) {
	spec, err := ebpf.LoadCollectionSpec(file)
	if err != nil {
		return nil, err
	}
	if ms, ok := spec.Maps["ipm_nat4"]; ok && natEntries != 0 {
		ms.MaxEntries = natEntries
	}
	var objs loader.BPFObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load %s: %+v", file, err)
	}
	return &loader.Datapath{Maps: objs.BPFMaps, Programs: objs.BPFPrograms}, nil
}

func newProgEnv(natEntries uint32, object string) (*progEnv, error) {
	dir, err := os.MkdirTemp("", "ipm-bench-bpffs-")
	if err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	e := &progEnv{bpffs: dir}
	if object != "" {
		e.dp, err = openObject(object, natEntries)
	} else {
		e.dp, err = loader.Open(loader.Options{PinPath: filepath.Join(dir, "ipm"), NATMaxEntries: natEntries})
	}
	if err != nil {
		e.close()
		return nil, fmt.Errorf("open datapath: %+v", err)
	}
	// --to-ports unset (1024-65535), --random-fully.
	e.settings.LayoutVersion = loader.Layout
	e.settings.RandomFully = 1
	e.settings.RangeCount = 1
	e.settings.PortCount = 65535 - 1024 + 1
	e.settings.Ranges[0].First, e.settings.Ranges[0].Last = 1024, 65535
	err = e.setCIDRs(defaultNM)
	if err == nil {
		err = e.setIfaceAddr(nodeIP)
	}
	for i, a := range []netip.Addr{nodeIP, netip.MustParseAddr("127.0.0.1")} {
		if err == nil {
			err = e.dp.Maps.IpmLocal4.Put(be32(a), loader.BPFIpmLocal{Ifindex: testIfindex})
		}
		// And inline in the settings, as the agent does for a few.
		e.settings.Local4[i] = be32(a)
		e.settings.Local4Count++
	}
	// The jiffies clock, calibrated as the agent does at start.
	if err == nil {
		var cal maps.ClockCalibration
		cal, err = maps.NewClock(e.dp).Calibrate(200 * time.Millisecond)
		e.settings.ClockBaseNs, e.settings.ClockBaseJiffies, e.settings.NsPerJiffy = cal.BaseNs, cal.BaseJiffies, cal.NsPerJiffy
	}
	if err == nil {
		err = e.dp.Maps.IpmSettings.Put(uint32(0), &e.settings)
	}
	if err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// setIfaceAddr sets the masquerade address of the test runs' interface.
func (e *progEnv) setIfaceAddr(a netip.Addr) error {
	return e.dp.Maps.IpmIfaces.Put(uint32(testIfindex), loader.BPFIpmIface{Addr4: be32(a)})
}

// setCIDRs writes c plus link-local (and the masquerade exceptions) into the idle trie (emptied first) and
// the idle half of the /24 table, and makes them the active ones, as the
// agent does.
func (e *progEnv) setCIDRs(c []netip.Prefix, exceptions ...netip.Prefix) error {
	idle := 1 - e.settings.ActiveCidrs
	trie := [2]*ebpf.Map{e.dp.Maps.IpmCidr40, e.dp.Maps.IpmCidr41}[idle]
	var k loader.BPFIpmCidr4Key
	var old []loader.BPFIpmCidr4Key
	it := trie.Iterate()
	var v loader.BPFIpmCidrValue
	for it.Next(&k, &v) {
		old = append(old, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range old {
		if err := trie.Delete(&k); err != nil {
			return err
		}
	}
	put := func(p netip.Prefix, o loader.BPFIpmCidrOrigin) error {
		k := loader.BPFIpmCidr4Key{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
		return trie.Put(&k, loader.BPFIpmCidrValue{Origin: o})
	}
	if err := put(linkLocal, loader.BPFIpmCidrOriginIPM_CIDR_LINK_LOCAL); err != nil {
		return err
	}
	for _, p := range c {
		if err := put(p, loader.BPFIpmCidrOriginIPM_CIDR_CONFIGURED); err != nil {
			return err
		}
	}
	for _, p := range exceptions {
		if err := put(p, loader.BPFIpmCidrOriginIPM_CIDR_MASQUERADE); err != nil {
			return err
		}
	}
	set := maps.CIDRSet{linkLocal: maps.LinkLocal}
	for _, p := range c {
		set[p] = maps.Configured
	}
	set.WithExceptions(exceptions)
	if err := maps.WriteCIDR4Dir(e.dp.Maps.IpmCidr4Dir, idle, set); err != nil {
		return err
	}
	e.settings.ActiveCidrs = idle
	return e.dp.Maps.IpmSettings.Put(uint32(0), &e.settings)
}

func (e *progEnv) close() {
	if e.dp != nil {
		e.dp.Close()
	}
	if err := unix.Unmount(e.bpffs, 0); err != nil {
		unix.Unmount(e.bpffs, unix.MNT_DETACH)
	}
	os.Remove(e.bpffs)
}

func (e *progEnv) readCounters() (map[string]uint64, error) {
	return readCounters(e.dp.Maps.IpmStats)
}

// readCounters sums the per-CPU datapath counters of every entry of the
// stats map (one per address family), keyed by their C names.
func readCounters(m *ebpf.Map) (map[string]uint64, error) {
	out := map[string]uint64{}
	for key := uint32(0); key < m.MaxEntries(); key++ {
		var perCPU []loader.BPFIpmCounters
		if err := m.Lookup(key, &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		for _, c := range perCPU {
			v := reflect.ValueOf(c)
			for i := 0; i < v.NumField(); i++ {
				if v.Field(i).Kind() == reflect.Uint64 {
					out[snake(v.Type().Field(i).Name)] += v.Field(i).Uint()
				}
			}
		}
	}
	return out, nil
}

// snake turns a generated field name (EgressNewFlow) into the C name.
func snake(s string) string {
	var b strings.Builder
	for i, c := range s {
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}

// run runs prog repeat times on frame and checks that every repeat ended on
// counter (and passed the packet on).
func (e *progEnv) run(prog *ebpf.Program, frame []byte, repeat int, counter string) (time.Duration, error) {
	before, err := e.readCounters()
	if err != nil {
		return 0, err
	}
	// A signal interrupts a long test run now and then; the library then
	// starts it again from the beginning, so the counters are read again
	// for the run that counts (an error leaves the old ones, and the check
	// below fails).
	ret, per, err := prog.Benchmark(append([]byte(nil), frame...), repeat, func() {
		if b, err := e.readCounters(); err == nil {
			before = b
		}
	})
	if err != nil {
		return 0, fmt.Errorf("test run: %w", err)
	}
	if int32(ret) != -1 { // TC_ACT_UNSPEC
		return 0, fmt.Errorf("verdict %d, want TC_ACT_UNSPEC", int32(ret))
	}
	after, err := e.readCounters()
	if err != nil {
		return 0, err
	}
	moved := map[string]uint64{}
	for k, v := range after {
		// The lru_* counters count new entries of the LRU maps besides a
		// packet's verdict (a host packet's first reservation), not paths.
		if strings.HasPrefix(k, "lru_") {
			continue
		}
		if d := v - before[k]; d != 0 {
			moved[k] = d
		}
	}
	if len(moved) != 1 || moved[counter] != uint64(repeat) {
		return 0, fmt.Errorf("after %d repeats the counters moved %v, want only %s by %d: some repeats took another path", repeat, moved, counter, repeat)
	}
	return per, nil
}

// clearNAT empties the NAT table.
func (e *progEnv) clearNAT() error {
	m := e.dp.Maps.IpmNat4
	var k loader.BPFIpmNatKey
	var keys []loader.BPFIpmNatKey
	var v loader.BPFIpmNatEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

func natKey(dir loader.BPFIpmDir, src, dst netip.AddrPort) loader.BPFIpmNatKey {
	return loader.BPFIpmNatKey{Saddr: be32(src.Addr()), Daddr: be32(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port()), Proto: 6, Dir: dir}
}

func (e *progEnv) putMasq(k loader.BPFIpmNatKey, to netip.AddrPort) error {
	v := loader.BPFIpmNatEntry{Addr: be32(to.Addr()), Port: be16(to.Port()), Kind: loader.BPFIpmKindIPM_KIND_MASQ, Ifindex: testIfindex}
	return e.dp.Maps.IpmNat4.Put(&k, &v)
}

// progOptions size the test runs.
type progOptions struct {
	Samples    int // samples per path
	Repeats    int // repeats per sample
	NewFlows   int // repeats per new-flow sample (each a new mapping; the table is emptied between samples)
	ManyCIDRs  int // the large CIDR set
	NATEntries uint32
	Object     string // an ELF to measure instead of the embedded object
}

// measurePaths measures every path; it must run in a throwaway network
// namespace (see inNetns).
func measurePaths(o progOptions, many []netip.Prefix) ([]pathResult, error) {
	e, err := newProgEnv(o.NATEntries, o.Object)
	if err != nil {
		return nil, err
	}
	defer e.close()
	eg, in := e.dp.Programs.IpmEgress, e.dp.Programs.IpmIngress

	a := netip.AddrPortFrom(podIP, 40000)
	b := netip.AddrPortFrom(netip.MustParseAddr("10.244.7.7"), 50000)
	d := netip.AddrPortFrom(serverIP, 443)
	// The address new flows are masqueraded to in the new-flow path: not an
	// address of the node, so a translated SYN is a new pod flow again on
	// the next repeat.
	masqTo := netip.MustParseAddr("172.31.0.3")

	var out []pathResult
	sampleOf := func(r *pathResult, prog *ebpf.Program, frame []byte, repeat int, before func() error) error {
		// One unrecorded warm-up sample.
		for i := -1; i < o.Samples; i++ {
			if before != nil {
				if err := before(); err != nil {
					return err
				}
			}
			per, err := e.run(prog, frame, repeat, r.Counter)
			if err != nil {
				return fmt.Errorf("%s: %w", r.Name, err)
			}
			if i >= 0 {
				r.Ns = append(r.Ns, float64(per.Nanoseconds()))
			}
		}
		r.Repeats = repeat
		out = append(out, *r)
		return nil
	}

	// The floor: a program that only returns TC_ACT_UNSPEC, run the same
	// way. What the test-run loop and the call into a program cost here
	// (retpolines make that call indirect and slow on this kind of CPU);
	// tcx pays a similar call per packet for real.
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load the empty program: %w", err)
	}
	defer empty.Close()
	floor := pathResult{Name: "floor: empty program", Detail: "returns TC_ACT_UNSPEC at once; the cost of the test run itself, included in every figure", Repeats: o.Repeats}
	for i := -1; i < o.Samples; i++ {
		_, per, err := empty.Benchmark(tcpFrame(a, d, tcpACK|tcpPSH, 64), o.Repeats, nil)
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			floor.Ns = append(floor.Ns, float64(per.Nanoseconds()))
		}
	}
	out = append(out, floor)

	// Established egress: two egress halves map A -> B and B -> A towards
	// D, so every repeat rewrites address and port (and both checksums).
	if err := e.putMasq(natKey(loader.BPFIpmDirIPM_DIR_EGRESS, a, d), b); err != nil {
		return nil, err
	}
	if err := e.putMasq(natKey(loader.BPFIpmDirIPM_DIR_EGRESS, b, d), a); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "established egress", Detail: "TCP ACK+PSH, 64 B payload, source address and port rewritten", Counter: "egress_translated", Target: "≤ 100 ns"},
		eg, tcpFrame(a, d, tcpACK|tcpPSH, 64), o.Repeats, nil); err != nil {
		return nil, err
	}

	// Reverse ingress: two ingress halves, the same alternation.
	if err := e.putMasq(natKey(loader.BPFIpmDirIPM_DIR_INGRESS, d, a), b); err != nil {
		return nil, err
	}
	if err := e.putMasq(natKey(loader.BPFIpmDirIPM_DIR_INGRESS, d, b), a); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "reverse ingress", Detail: "TCP ACK+PSH, 64 B payload, destination address and port rewritten", Counter: "ingress_translated"},
		in, tcpFrame(d, a, tcpACK|tcpPSH, 64), o.Repeats, nil); err != nil {
		return nil, err
	}

	// Pass-through.
	if err := sampleOf(&pathResult{Name: "pass-through: not IP", Detail: "ARP request on egress", Counter: "egress_other"},
		eg, arpFrame(), o.Repeats, nil); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "pass-through: IPv6, --enable-ipv6 off", Detail: "IPv6 TCP SYN on egress", Counter: "egress_other"},
		eg, ipv6Frame(), o.Repeats, nil); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "pass-through: ingress miss", Detail: "TCP to the node matching no mapping", Counter: "ingress_miss"},
		in, tcpFrame(d, netip.AddrPortFrom(nodeIP, 40001), tcpACK, 64), o.Repeats, nil); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "pass-through: host egress", Detail: "the node's own TCP (tuple reserved by the warm-up)", Counter: "egress_host"},
		eg, tcpFrame(netip.AddrPortFrom(nodeIP, 40002), d, tcpACK, 64), o.Repeats, nil); err != nil {
		return nil, err
	}

	// Non-masquerade egress, 3 CIDRs then the large set.
	// A running connection's segments, the per-packet cost; a SYN also
	// records its connection (so a config change does not reset it), once
	// per connection.
	if err := sampleOf(&pathResult{Name: "non-masquerade egress, 3 CIDRs", Detail: "TCP ACK+PSH, 64 B payload, to 10.0.3.4 (in 10.0.0.0/8); 3 CIDRs + link-local, decided by the /24 table", Counter: "egress_nomasq"},
		eg, tcpFrame(a, netip.AddrPortFrom(netip.MustParseAddr("10.0.3.4"), 443), tcpACK, 64), o.Repeats, nil); err != nil {
		return nil, err
	}
	if err := sampleOf(&pathResult{Name: "non-masquerade SYN, 3 CIDRs", Detail: "TCP SYN to 10.0.3.4 (in 10.0.0.0/8), recorded in ipm_nomasq_tcp4; decided by the /24 table", Counter: "egress_nomasq"},
		eg, tcpFrame(a, netip.AddrPortFrom(netip.MustParseAddr("10.0.3.4"), 443), tcpSYN, 0), o.Repeats, nil); err != nil {
		return nil, err
	}
	if err := e.setCIDRs(many); err != nil {
		return nil, err
	}
	// Two destinations in the large set: one in a prefix of /24 or
	// shorter, which the /24 table (ipm_cidr4_dir) answers alone, and one
	// in a longer prefix, which the table sends on to the trie.
	for _, nm := range []struct {
		short  bool
		target string
		how    string
	}{{true, "≤ 60 ns", "decided by the /24 table"}, {false, "", "the /24 table sends it to the trie"}} {
		dst, ok := lastPrefix(many, nm.short)
		if !ok {
			continue
		}
		if err := sampleOf(&pathResult{Name: fmt.Sprintf("non-masquerade egress, %d CIDRs, in a /%d", len(many), dst.Bits()),
			Detail:  fmt.Sprintf("TCP ACK+PSH, 64 B payload, to %s (in %s); %d CIDRs + link-local; %s", dst.Addr().Next(), dst, len(many), nm.how),
			Counter: "egress_nomasq", Target: nm.target},
			eg, tcpFrame(a, netip.AddrPortFrom(dst.Addr().Next(), 443), tcpACK, 64), o.Repeats, nil); err != nil {
			return nil, err
		}
	}

	// The same number of CIDRs split across both lists: half of them
	// non-masquerade, half masquerade exceptions inside those. The
	// decision must cost what it costs with one list.
	nonMasq, exceptions := splitLists(many)
	if err := e.setCIDRs(nonMasq, exceptions...); err != nil {
		return nil, err
	}
	split := maps.CIDRSet{linkLocal: maps.LinkLocal}
	for _, p := range nonMasq {
		split[p] = maps.Configured
	}
	split.WithExceptions(exceptions)
	for _, nm := range []struct {
		short bool
		how   string
	}{{true, "decided by the /24 table"}, {false, "the /24 table sends it to the trie"}} {
		dst, ok := splitProbe(split, nonMasq, nm.short, false)
		if !ok {
			continue
		}
		if err := sampleOf(&pathResult{Name: fmt.Sprintf("non-masquerade egress, %d CIDRs in both lists, in a /%d", len(nonMasq)+len(exceptions), dst.Bits()),
			Detail:  fmt.Sprintf("TCP SYN to %s (in %s, outside its exception); %d non-masquerade + %d masqueradeCIDRs + link-local; %s", splitAddr(dst), dst, len(nonMasq), len(exceptions), nm.how),
			Counter: "egress_nomasq"},
			eg, tcpFrame(a, netip.AddrPortFrom(splitAddr(dst), 443), tcpSYN, 0), o.Repeats, nil); err != nil {
			return nil, err
		}
	}

	// New-flow egress: every repeat is a SYN of a flow without a mapping,
	// so it allocates a random node port, inserts both halves and rewrites.
	if err := e.setIfaceAddr(masqTo); err != nil {
		return nil, err
	}
	for _, nm := range []struct {
		short bool
		how   string
	}{{true, "decided by the /24 table"}, {false, "the /24 table sends it to the trie"}} {
		exc, ok := splitProbe(split, exceptions, nm.short, true)
		if !ok {
			continue
		}
		if err := sampleOf(&pathResult{Name: fmt.Sprintf("new-flow egress, %d CIDRs in both lists, to an exception /%d", len(nonMasq)+len(exceptions), exc.Bits()),
			Detail:  fmt.Sprintf("TCP SYN to %s (in the exception %s inside a non-masquerade prefix); %s; %d flows per sample into an emptied table", exc.Addr().Next(), exc, nm.how, o.NewFlows),
			Counter: "egress_new_flow"},
			eg, tcpFrame(a, netip.AddrPortFrom(exc.Addr().Next(), 443), tcpSYN, 0), o.NewFlows, e.clearNAT); err != nil {
			return nil, err
		}
	}
	syn := tcpFrame(a, d, tcpSYN, 0)
	for _, n := range []int{len(defaultNM), len(many)} {
		if err := e.setCIDRs(many[:n]); err != nil {
			return nil, err
		}
		if err := sampleOf(&pathResult{Name: fmt.Sprintf("new-flow egress, %d CIDRs", n),
			Detail:  fmt.Sprintf("TCP SYN, random port of 1024-65535, both halves inserted; %d flows per sample into an emptied table of %d entries", o.NewFlows, o.NATEntries),
			Counter: "egress_new_flow"},
			eg, syn, o.NewFlows, e.clearNAT); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// lastPrefix returns the last prefix of c that is /24 or shorter (short) or
// longer than /24 (!short).
func lastPrefix(c []netip.Prefix, short bool) (netip.Prefix, bool) {
	for i := len(c) - 1; i >= 0; i-- {
		if (c[i].Bits() <= 24) == short {
			return c[i], true
		}
	}
	return netip.Prefix{}, false
}

// splitLists turns c into two lists of the same total length: the first
// half non-masquerade, and for each of them (as long as there are
// entries to spend) a masquerade exception two bits (or one) longer at its
// start.
func splitLists(c []netip.Prefix) (nonMasq, exceptions []netip.Prefix) {
	half := (len(c) + 1) / 2
	nonMasq = c[:half]
	seen := map[netip.Prefix]bool{}
	for _, p := range nonMasq {
		seen[p] = true
	}
	for _, p := range nonMasq {
		if len(nonMasq)+len(exceptions) == len(c) {
			break
		}
		// Two bits longer, else one: a prefix of the list may be taken.
		for _, more := range []int{2, 1} {
			if p.Bits()+more > 32 {
				continue
			}
			if e := netip.PrefixFrom(p.Addr(), p.Bits()+more); !seen[e] {
				seen[e] = true
				exceptions = append(exceptions, e)
				break
			}
		}
	}
	return nonMasq, exceptions
}

// splitAddr is an address of p outside the exception at its start: the one
// before its last.
func splitAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	for i := 0; i < 1<<(32-p.Bits())-2; i++ {
		a = a.Next()
	}
	return a
}

// splitProbe returns the last prefix of list whose probe the /24 table
// decides alone (short) or sends to the trie, and whose probe address the
// longest prefix of set decides as masquerade (true) or not, so the sample
// counts what it claims. A non-masquerade prefix is table-level when its
// exception is too (/22 or shorter).
func splitProbe(set maps.CIDRSet, list []netip.Prefix, short, masquerade bool) (netip.Prefix, bool) {
	limit := 22
	if masquerade {
		limit = 24
	}
	for i := len(list) - 1; i >= 0; i-- {
		p := list[i]
		if (p.Bits() <= limit) != short {
			continue
		}
		probe := splitAddr(p)
		if masquerade {
			probe = p.Addr().Next()
		}
		if _, m, _ := set.Decide(probe); m == masquerade && (p.Bits() < 32 || masquerade) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
