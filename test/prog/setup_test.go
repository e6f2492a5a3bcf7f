package prog

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// Verdicts of a tc program as (*ebpf.Program).Run returns them.
const (
	actPass int32 = -1 // TC_ACT_UNSPEC: the packet goes on (TCX_NEXT)
	actShot int32 = 2  // TC_ACT_SHOT: dropped
)

// A test run's skb sits on loopback, so the datapath sees ifindex 1.
const testIfindex = 1

// Addresses of the crafted traffic.
var (
	podA      = netip.MustParseAddr("10.244.1.2")
	podB      = netip.MustParseAddr("10.244.1.3")
	podC      = netip.MustParseAddr("10.244.2.4")
	nodeAddr  = netip.MustParseAddr("172.31.0.2")   // ifindex 1's address: the masquerade source
	nodeOther = netip.MustParseAddr("172.31.9.9")   // another address of the node
	remote    = netip.MustParseAddr("203.0.113.10") // outside every default non-masquerade CIDR
	remote2   = netip.MustParseAddr("203.0.113.20")
	inCluster = netip.MustParseAddr("10.0.3.4")        // in 10.0.0.0/8: not masqueraded
	metadata  = netip.MustParseAddr("169.254.169.254") // link-local
)

// defaultNonMasq is upstream's default nonMasqueradeCIDRs.
var defaultNonMasq = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// config is what a test configures through the maps package, as the agent
// would from its flags and config file. The zero value is the agent's
// default configuration.
type config struct {
	natEntries    uint32           // NAT table size; 0: 4096
	ports         []maps.PortRange // --to-ports; nil: 1024-65535
	keepPorts     bool             // --random-fully=false
	nonMasq       []netip.Prefix   // nonMasqueradeCIDRs; nil: upstream default, empty: none
	masqLinkLocal bool             // masqLinkLocal
	noIfaceAddr   bool             // leave ifindex 1 without an address
	local         []netip.Addr     // node addresses; nil: nodeAddr, nodeOther, 127.0.0.1
}

// env is one freshly loaded datapath on its own bpffs, configured.
type env struct {
	dp       *loader.Datapath
	settings *maps.Settings
	nonMasq  *maps.NonMasq
	nat      *maps.NATTable
	counters *maps.Counters
	ports    []maps.PortRange // the configured --to-ports
}

// requireRoot skips tests that need BPF_PROG_TEST_RUN and a bpffs mount.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("tier 2 (BPF program test runs): needs root for CAP_BPF, CAP_NET_ADMIN and a bpffs mount (CAP_SYS_ADMIN); run `sudo go test ./test/prog/`")
	}
}

// mountBPFFS mounts a fresh bpffs on a temporary directory and unmounts it
// when the test ends, after everything registered later has been closed.
func mountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount bpffs %s: %v (detaching it)", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// The datapath's clock is calibrated once per test binary, as the agent does
// at start (maps.Clock), so every program test runs the jiffies clock.
var (
	clockOnce sync.Once
	clockCal  maps.ClockCalibration
	clockErr  error
	// clockSlack is how far behind CLOCK_MONOTONIC a datapath timestamp
	// may be: one to two ticks, and the tick interrupt's lateness (10 ms
	// seen on 6.1 under software emulation).
	clockSlack time.Duration
)

func calibrateClock(t testing.TB, dp *loader.Datapath) maps.ClockCalibration {
	t.Helper()
	clockOnce.Do(func() {
		clockCal, clockErr = maps.NewClock(dp).Calibrate(200 * time.Millisecond)
		clockSlack = 2*time.Duration(clockCal.NsPerJiffy) + 20*time.Millisecond
	})
	if clockErr != nil {
		t.Fatalf("calibrate the datapath's clock: %v", clockErr)
	}
	return clockCal
}

// newEnv loads the datapath on a fresh bpffs and configures it with c.
func newEnv(t testing.TB, c config) *env {
	t.Helper()
	requireRoot(t)
	dir := mountBPFFS(t)
	n := c.natEntries
	if n == 0 {
		n = 4096
	}
	dp, err := loader.Open(loader.Options{PinPath: filepath.Join(dir, "ipm"), NATMaxEntries: n})
	if err != nil {
		t.Fatalf("open datapath: %+v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
	})
	e := &env{dp: dp, nat: maps.NewNATTable(dp), counters: maps.NewCounters(dp)}
	if e.settings, err = maps.OpenSettings(dp); err != nil {
		t.Fatal(err)
	}
	ports := c.ports
	if ports == nil {
		ports = []maps.PortRange{{First: 1024, Last: 65535}}
	}
	e.ports = ports
	if err := e.settings.SetPorts(ports, !c.keepPorts); err != nil {
		t.Fatal(err)
	}
	if _, err := e.settings.SetClock(calibrateClock(t, dp)); err != nil {
		t.Fatal(err)
	}
	e.nonMasq = maps.NewNonMasq(dp, e.settings)
	e.applyNonMasq(t, c.nonMasq, c.masqLinkLocal)
	addr := nodeAddr
	if c.noIfaceAddr {
		addr = netip.Addr{}
	}
	if err := maps.NewInterfaces(dp).Set(testIfindex, addr, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	local := c.local
	if local == nil {
		local = []netip.Addr{nodeAddr, nodeOther, netip.MustParseAddr("127.0.0.1")}
	}
	var la []maps.LocalAddr
	for _, a := range local {
		la = append(la, maps.LocalAddr{Addr: a, Ifindex: testIfindex})
	}
	if _, err := maps.NewLocalAddrs(dp, e.settings).Sync(la); err != nil {
		t.Fatal(err)
	}
	return e
}

// applyNonMasq makes configured (nil: the default list) plus the implied
// link-local range the active non-masquerade set.
func (e *env) applyNonMasq(t testing.TB, configured []netip.Prefix, masqLinkLocal bool) {
	t.Helper()
	if configured == nil {
		configured = defaultNonMasq
	}
	// The effective set: the configured prefixes plus the implied
	// link-local range.
	effective := slices.Clone(configured)
	if !masqLinkLocal {
		effective = append(effective, linkLocal)
	}
	if err := e.nonMasq.Apply(maps.NewCIDRSet(configured, effective)); err != nil {
		t.Fatal(err)
	}
}

// result is one program run: its verdict and the frame it left.
type result struct {
	ret int32
	out []byte
}

func (e *env) egress(t testing.TB, frame []byte) result {
	t.Helper()
	return run(t, e.dp.Programs.IpmEgress, frame)
}

func (e *env) ingress(t testing.TB, frame []byte) result {
	t.Helper()
	return run(t, e.dp.Programs.IpmIngress, frame)
}

// through runs frame through ingress or else egress.
func (e *env) through(t testing.TB, ingress bool, frame []byte) result {
	t.Helper()
	if ingress {
		return e.ingress(t, frame)
	}
	return e.egress(t, frame)
}

// requirePassed runs frame through ingress or else egress and requires it
// to pass byte for byte, counted once as counter and by no other counter.
func (e *env) requirePassed(t testing.TB, ingress bool, frame []byte, counter string) {
	t.Helper()
	before := e.readCounters(t)
	e.passUnchanged(t, ingress, frame)
	e.expectCounters(t, before, map[string]uint64{counter: 1})
}

// requirePassCounted runs frame through egress and requires it to pass,
// counted once as counter and by no other counter.
func (e *env) requirePassCounted(t testing.TB, frame []byte, counter string) {
	t.Helper()
	before := e.readCounters(t)
	requireVerdict(t, e.egress(t, frame), actPass)
	e.expectCounters(t, before, map[string]uint64{counter: 1})
}

// passUnchanged runs frame through ingress or else egress and requires it
// to pass byte for byte.
func (e *env) passUnchanged(t testing.TB, ingress bool, frame []byte) {
	t.Helper()
	r := e.through(t, ingress, frame)
	requireVerdict(t, r, actPass)
	requireUnchanged(t, r.out, frame)
}

// run runs prog once on a copy of frame.
func run(t testing.TB, prog *ebpf.Program, frame []byte) result {
	t.Helper()
	r, err := tryRun(prog, frame)
	if err != nil {
		t.Fatalf("run %s on %d bytes: %v", prog, len(frame), err)
	}
	return r
}

// tryRun runs prog once on a copy of frame. BPF_PROG_TEST_RUN refuses
// (EINVAL) frames shorter than an Ethernet header, and IPv4 (IPv6) frames
// without a full 20 (40) byte IP header, before the program runs.
func tryRun(prog *ebpf.Program, frame []byte) (result, error) {
	opts := ebpf.RunOptions{Data: append([]byte(nil), frame...), DataOut: make([]byte, len(frame)+256)}
	ret, err := prog.Run(&opts)
	if err != nil {
		return result{}, err
	}
	return result{ret: int32(ret), out: opts.DataOut}, nil
}

// refusedByTestRun reports whether BPF_PROG_TEST_RUN refuses frame before
// running the program (see tryRun).
func refusedByTestRun(frame []byte) bool {
	if len(frame) < 14 {
		return true
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		return len(frame) < 14+20
	case 0x86dd:
		return len(frame) < 14+40
	}
	return false
}

func verdictName(v int32) string {
	switch v {
	case actPass:
		return "pass (TC_ACT_UNSPEC)"
	case actShot:
		return "drop (TC_ACT_SHOT)"
	}
	return "unexpected verdict"
}

func requireVerdict(t testing.TB, r result, want int32) {
	t.Helper()
	if r.ret != want {
		t.Fatalf("verdict %d %s, want %d %s", r.ret, verdictName(r.ret), want, verdictName(want))
	}
}

// readCounters returns the datapath counters summed over CPUs, by C name:
// the verdicts and events, without the LRU maps' bookkeeping.
func (e *env) readCounters(t testing.TB) map[string]uint64 {
	t.Helper()
	c, err := e.counters.Read()
	return countersByName(t, c, err)
}

// countersByName returns the counters c (read with error err), by C name.
func countersByName(t testing.TB, c loader.BPFIpmCounters, err error) map[string]uint64 {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, f := range maps.Fields(c) {
		if !lruBookkeeping(f.Name) {
			out[f.Name] = f.Value
		}
	}
	return out
}

// lruBookkeeping tells the counters of new LRU map entries (lru_*), which
// move besides verdicts whenever a packet adds a record; the tests of
// verdicts leave them out, lru_evictions_test.go checks them.
func lruBookkeeping(name string) bool { return strings.HasPrefix(name, "lru_") }

// countersMoved returns the counters that changed from before to now, by how
// much.
func (e *env) countersMoved(t testing.TB, before map[string]uint64) map[string]uint64 {
	t.Helper()
	return movedSince(before, e.readCounters(t))
}

// movedSince returns the counters that changed from before to now, by how
// much.
func movedSince(before, now map[string]uint64) map[string]uint64 {
	moved := map[string]uint64{}
	for k, v := range now {
		if v != before[k] {
			moved[k] = v - before[k]
		}
	}
	return moved
}

// expectCounters checks that exactly the counters in want moved since
// before, each by the given amount: every verdict counts exactly once.
func (e *env) expectCounters(t testing.TB, before map[string]uint64, want map[string]uint64) {
	t.Helper()
	got := e.countersMoved(t, before)
	ok := len(got) == len(want)
	for k, v := range want {
		if got[k] != v {
			ok = false
		}
	}
	if !ok {
		t.Errorf("counters moved %v, want %v", got, want)
	}
}

// Byte order: the generated map types hold network-order fields as integers
// read in host order.

var (
	be32     = maps.AddrToBE
	be16     = maps.PortToBE
	fromBE16 = maps.PortFromBE
	fromBE32 = maps.AddrFromBE
)

// natKey is a NAT table key in the datapath's conventions: for ICMP echo the
// identifier is sport on egress and dport on ingress, the other port 0.
func natKey(dir loader.BPFIpmDir, proto uint8, saddr, daddr netip.Addr, sport, dport uint16) maps.NATKey {
	return maps.NATKey{Saddr: be32(saddr), Daddr: be32(daddr), Sport: be16(sport), Dport: be16(dport), Proto: proto, Dir: dir}
}

const (
	dirEgress  = loader.BPFIpmDirIPM_DIR_EGRESS
	dirIngress = loader.BPFIpmDirIPM_DIR_INGRESS
	kindMasq   = loader.BPFIpmKindIPM_KIND_MASQ
	kindHost   = loader.BPFIpmKindIPM_KIND_HOST
)

// putEntry writes one NAT table half directly, as a synthetic state. Host
// reservations (kind host) go where the datapath keeps them, ipm_hostres4.
func (e *env) putEntry(t testing.TB, k maps.NATKey, kind loader.BPFIpmKind, addr netip.Addr, port uint16) {
	t.Helper()
	v := maps.NATEntry{CreatedNs: uint64(maps.Now()), Addr: be32(addr), Port: be16(port), Kind: kind, Ifindex: testIfindex}
	m := e.dp.Maps.IpmNat4
	if kind == kindHost {
		m = e.dp.Maps.IpmHostres4
	}
	if err := m.Put(&k, &v); err != nil {
		t.Fatalf("write NAT entry: %v", err)
	}
}

// natEntries returns every raw entry of the NAT state: the NAT table and
// the host reservations beside it.
func (e *env) natEntries(t testing.TB) map[maps.NATKey]maps.NATEntry {
	t.Helper()
	return entriesOf[maps.NATKey, maps.NATEntry](t, e.dp.Maps.IpmNat4, e.dp.Maps.IpmHostres4)
}

// entriesOf returns every entry of the maps ms (a nil one left out), which
// share the key type K and the value type V.
func entriesOf[K comparable, V any](t testing.TB, ms ...*ebpf.Map) map[K]V {
	t.Helper()
	all := map[K]V{}
	var k K
	var v V
	for _, m := range ms {
		if m == nil {
			continue
		}
		it := m.Iterate()
		for it.Next(&k, &v) {
			all[k] = v
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return all
}

// clearMap deletes every entry of m.
func clearMap(t testing.TB, m *ebpf.Map) {
	t.Helper()
	var keys [][]byte
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
	}
}

// mapLen counts the entries of m.
func mapLen(t testing.TB, m *ebpf.Map) int {
	t.Helper()
	n := 0
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// deleteEntries removes every NAT entry not in keep.
func (e *env) deleteEntries(t testing.TB, keep map[maps.NATKey]maps.NATEntry) {
	t.Helper()
	for k := range e.natEntries(t) {
		if _, ok := keep[k]; ok {
			continue
		}
		for _, m := range []*ebpf.Map{e.dp.Maps.IpmNat4, e.dp.Maps.IpmHostres4} {
			if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatal(err)
			}
		}
	}
}
