package loader

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// migrationBPFFS mounts a fresh bpffs for one test and returns the pin path
// inside it.
func migrationBPFFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads the datapath and mounts a bpffs")
	}
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "ipm")
}

func openDatapath(t *testing.T, pin string, entries uint32) *Datapath {
	t.Helper()
	d, err := Open(Options{PinPath: pin, NATMaxEntries: entries})
	if err != nil {
		t.Fatalf("open datapath with %d NAT entries: %+v", entries, err)
	}
	return d
}

// newMap makes a map as an older build would have, closed with the test.
func newMap(t *testing.T, spec *ebpf.MapSpec) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// openOver pins old, as an older build would have left its maps, in pin
// and starts this build's datapath over them, through its migration.
func openOver(t *testing.T, pin string, old map[string]*ebpf.Map) *Datapath {
	t.Helper()
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, m := range old {
		if err := m.Pin(filepath.Join(pin, name)); err != nil {
			t.Fatal(err)
		}
	}
	d := openDatapath(t, pin, 256)
	if err := d.CompleteMigration(); err != nil {
		d.Close()
		t.Fatal(err)
	}
	return d
}

func addr4(i int) uint32 { return binary.BigEndian.Uint32([]byte{10, 244, byte(i >> 8), byte(i)}) }

// testFlow4 is flow i of the tests: pod 10.244.x.y:1000+i -> 203.0.113.7:443
// masqueraded to 172.31.0.2:20000+i, both halves last used at lastUsed.
func testFlow4(i int, lastUsed uint64) (out, rk BPFIpmNatKey, ov, rv BPFIpmNatEntry) {
	remote := binary.NativeEndian.Uint32([]byte{203, 0, 113, 7})
	node := binary.NativeEndian.Uint32([]byte{172, 31, 0, 2})
	pod := binary.NativeEndian.Uint32([]byte{10, 244, byte(i >> 8), byte(i)})
	be16 := func(p int) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, uint16(p))) }
	out = BPFIpmNatKey{Saddr: pod, Daddr: remote, Sport: be16(1000 + i), Dport: be16(443), Proto: 6, Dir: BPFIpmDirIPM_DIR_EGRESS}
	rk = BPFIpmNatKey{Saddr: remote, Daddr: node, Sport: be16(443), Dport: be16(20000 + i), Proto: 6, Dir: BPFIpmDirIPM_DIR_INGRESS}
	ov = BPFIpmNatEntry{CreatedNs: lastUsed, LastSeenNs: lastUsed, Addr: node, Port: be16(20000 + i), Kind: BPFIpmKindIPM_KIND_MASQ, Ifindex: 1}
	rv = BPFIpmNatEntry{CreatedNs: lastUsed, LastSeenNs: lastUsed, Addr: pod, Port: be16(1000 + i), Kind: BPFIpmKindIPM_KIND_MASQ, Ifindex: 1}
	return
}

func putFlow4(t *testing.T, m *ebpf.Map, i int, lastUsed uint64) {
	t.Helper()
	out, rk, ov, rv := testFlow4(i, lastUsed)
	if err := m.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(&out, &ov); err != nil {
		t.Fatal(err)
	}
}

// flowHalves reports which halves of flow i m holds.
func flowHalves(m *ebpf.Map, i int) (egress, reply bool) {
	out, rk, _, _ := testFlow4(i, 0)
	var v BPFIpmNatEntry
	return m.Lookup(&out, &v) == nil, m.Lookup(&rk, &v) == nil
}

func pinnedMaxEntries(t *testing.T, pin, name string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.MaxEntries()
}

// openWith100Flows opens a datapath with a NAT table of 256 entries, pinned
// on a fresh bpffs, that holds flows 0-99: flow i last used i seconds before
// now.
func openWith100Flows(t *testing.T) (pin string, d *Datapath, now uint64) {
	t.Helper()
	pin = migrationBPFFS(t)
	d = openDatapath(t, pin, 256)
	now = uint64(monotonic())
	for i := range 100 {
		putFlow4(t, d.Maps.IpmNat4, i, now-uint64(i)*uint64(time.Second))
	}
	return pin, d, now
}

// TestMigrateGrow: a larger --nat-max-entries carries every flow, host
// reservation, inbound record and the settings over; the old pins stay
// until the takeover, and what the old programs create between the first
// copy and the takeover is copied too.
func TestMigrateGrow(t *testing.T) {
	pin, d, now := openWith100Flows(t)
	_, hk, hv, _ := testFlow4(500, now)
	hv.Kind = BPFIpmKindIPM_KIND_HOST
	if err := d.Maps.IpmHostres4.Put(&hk, &hv); err != nil {
		t.Fatal(err)
	}
	ik, _, _, _ := testFlow4(600, now)
	if err := d.Maps.IpmInbound4.Put(&ik, &BPFIpmInbound{CreatedNs: now, LastSeenNs: now}); err != nil {
		t.Fatal(err)
	}
	settings := BPFIpmSettings{LayoutVersion: Layout, ActiveCidrs: 1, Local4Count: 1, NsPerJiffy: 4_000_000}
	if err := d.Maps.IpmSettings.Put(uint32(0), &settings); err != nil {
		t.Fatal(err)
	}
	old := d.Maps.IpmNat4
	d.Maps.IpmNat4 = nil // kept open as the old programs would
	defer old.Close()
	d.Close()

	d = openDatapath(t, pin, 1024)
	defer d.Close()
	if got := d.Maps.IpmNat4.MaxEntries(); got != 1024 {
		t.Fatalf("new NAT table has %d entries, want 1024", got)
	}
	for i := range 100 {
		if e, r := flowHalves(d.Maps.IpmNat4, i); !e || !r {
			t.Errorf("flow %d after the first copy: egress half %v, reply half %v", i, e, r)
		}
	}
	if got := pinnedMaxEntries(t, pin, "ipm_nat4"); got != 256 {
		t.Errorf("before the takeover the pin holds a table of %d entries, want the old 256", got)
	}
	var s BPFIpmSettings
	if err := d.Maps.IpmSettings.Lookup(uint32(0), &s); err != nil || s.ActiveCidrs != 1 || s.NsPerJiffy != 4_000_000 {
		t.Errorf("settings not carried over: %+v, %v", s, err)
	}
	// The old programs open a flow after the first copy.
	putFlow4(t, old, 100, uint64(monotonic()))
	if err := d.CompleteMigration(); err != nil {
		t.Fatal(err)
	}
	if e, r := flowHalves(d.Maps.IpmNat4, 100); !e || !r {
		t.Errorf("flow opened between the first copy and the takeover: egress half %v, reply half %v", e, r)
	}
	if got := pinnedMaxEntries(t, pin, "ipm_nat4"); got != 1024 {
		t.Errorf("after the takeover the pin holds a table of %d entries, want 1024", got)
	}
	if n := mapCount(t, d.Maps.IpmNat4); n != 202 {
		t.Errorf("new table holds %d entries, want the 202 of the 101 flows", n)
	}
	var v BPFIpmNatEntry
	if err := d.Maps.IpmHostres4.Lookup(&hk, &v); err != nil {
		t.Errorf("host reservation not carried over: %v", err)
	}
	var in BPFIpmInbound
	if err := d.Maps.IpmInbound4.Lookup(&ik, &in); err != nil {
		t.Errorf("inbound record not carried over: %v", err)
	}
}

// TestMigrateShrink: a smaller --nat-max-entries keeps the most recently
// used flows, each with both halves; a reply half without its flow is left.
func TestMigrateShrink(t *testing.T) {
	// Flow i was last used i seconds ago: 0-63 are the newest.
	pin, d, now := openWith100Flows(t)
	_, rk, _, rv := testFlow4(200, now)
	if err := d.Maps.IpmNat4.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d = openDatapath(t, pin, 128)
	defer d.Close()
	if err := d.CompleteMigration(); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		e, r := flowHalves(d.Maps.IpmNat4, i)
		if e != r {
			t.Errorf("flow %d: only one half carried over (egress %v, reply %v)", i, e, r)
		}
		if want := i < 64; e != want {
			t.Errorf("flow %d (idle %ds): carried over %v, want %v", i, i, e, want)
		}
	}
	var v BPFIpmNatEntry
	if d.Maps.IpmNat4.Lookup(&rk, &v) == nil {
		t.Error("an orphan reply half was carried over")
	}
}

// TestMigrateUpgrade plays an upgrade of the layout: maps of an older layout
// made by hand (inbound records of 8 bytes, a shorter settings value) are
// converted by that version's upgrade functions and carried over.
func TestMigrateUpgrade(t *testing.T) {
	pin := migrationBPFFS(t)
	const oldLayout = Layout
	layoutVersion = Layout + 1
	upgrades[oldLayout] = map[string]valueUpgrade{
		// The old record was its creation time alone.
		"ipm_inbound4": func(old []byte) ([]byte, error) {
			return binary.NativeEndian.AppendUint64(append([]byte(nil), old...), binary.NativeEndian.Uint64(old)), nil
		},
	}
	t.Cleanup(func() { layoutVersion = Layout; delete(upgrades, oldLayout) })

	settings := newMap(t, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 24, MaxEntries: 1})
	sv := make([]byte, 24)
	binary.NativeEndian.PutUint32(sv[0:], oldLayout)
	binary.NativeEndian.PutUint32(sv[4:], 1) // active_cidrs
	if err := settings.Put(uint32(0), sv); err != nil {
		t.Fatal(err)
	}
	inbound := newMap(t, &ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 8, MaxEntries: 65536})
	ik, _, _, _ := testFlow4(7, 0)
	if err := inbound.Put(&ik, uint64(12345)); err != nil {
		t.Fatal(err)
	}
	d := openOver(t, pin, map[string]*ebpf.Map{"ipm_settings": settings, "ipm_inbound4": inbound})
	defer d.Close()
	var in BPFIpmInbound
	if err := d.Maps.IpmInbound4.Lookup(&ik, &in); err != nil || in.CreatedNs != 12345 || in.LastSeenNs != 12345 {
		t.Errorf("inbound record after the upgrade: %+v, %v; want created and last seen 12345", in, err)
	}
	var s BPFIpmSettings
	if err := d.Maps.IpmSettings.Lookup(uint32(0), &s); err != nil || s.ActiveCidrs != 1 || s.LayoutVersion != Layout+1 {
		t.Errorf("settings after the upgrade: %+v, %v; want the active trie kept and the new layout version", s, err)
	}
	if v, ok := pinnedLayout(pin); !ok || v != Layout+1 {
		t.Errorf("pinned layout after the upgrade: %d %v, want %d", v, ok, Layout+1)
	}
}

func mapCount(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	err := readAll(m, func(_, _ []byte) { n++ })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCountersGrow: counters pinned by a build with fewer of them (new
// counters go at the end of struct ipm_counters, so its size changes without
// a layout version) are replaced by a map of this build's size, and the
// start does not fail; the state maps next to them are reused with their
// entries.
func TestCountersGrow(t *testing.T) {
	pin := migrationBPFFS(t)
	size := int(unsafe.Sizeof(BPFIpmCounters{}))
	old := newMap(t, &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: uint32(size - 5*8), MaxEntries: 2})
	hostres := newMap(t, &ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: uint32(unsafe.Sizeof(BPFIpmNatKey{})),
		ValueSize: uint32(unsafe.Sizeof(BPFIpmNatEntry{})), MaxEntries: 65536})
	_, rk, _, rv := testFlow4(3, 42)
	rv.Kind = BPFIpmKindIPM_KIND_HOST
	if err := hostres.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	d := openOver(t, pin, map[string]*ebpf.Map{"ipm_stats": old, "ipm_hostres4": hostres})
	defer d.Close()
	if got := d.Maps.IpmStats.ValueSize(); got != uint32(size) {
		t.Errorf("counters of %d bytes after the start, want %d", got, size)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(pin, "ipm_stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if got := pinned.ValueSize(); got != uint32(size) {
		t.Errorf("pinned counters of %d bytes, want %d", got, size)
	}
	var v BPFIpmNatEntry
	if err := d.Maps.IpmHostres4.Lookup(&rk, &v); err != nil || v.CreatedNs != 42 {
		t.Errorf("host reservation after the start: %+v, %v; want it kept", v, err)
	}
}
