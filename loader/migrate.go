package loader

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A pinned state map that this build cannot use as it is (another
// --nat-max-entries, or an older layout) is not replaced by an empty one,
// which would cut every live flow. The sequence (docs/table-pressure.md):
//
//  1. Open creates the new map and copies the old map's live entries into
//     it, values upgraded to this layout, the most recently used first
//     when they do not all fit; the new programs are loaded with it.
//  2. Attach takes over from the old programs, which used the old map until
//     then.
//  3. CompleteMigration copies what the old programs created between step 1
//     and the takeover (insert-if-absent), then replaces the pins, the
//     settings (which carry the layout version) last.
//
// An agent that dies before step 3 leaves the old pins, and the next start
// migrates again from them.

// migratedMaps are the pinned maps whose entries survive a resize or an
// upgrade, with how their entries are grouped.
var migratedMaps = map[string]groupReader{
	"ipm_nat4":     natFlows(4),
	"ipm_nat6":     natFlows(16),
	"ipm_hostres4": singleEntries,
	"ipm_hostres6": singleEntries,
	"ipm_inbound4": singleEntries,
	"ipm_inbound6": singleEntries,
	// TCP connections opened while their remote was not masqueraded.
	"ipm_nomasq_tcp4": singleEntries,
	"ipm_nomasq_tcp6": singleEntries,
	// Carries the active trie index, the node addresses and the clock
	// calibration over to the new programs until the agent rewrites them.
	"ipm_settings": nil,
}

// valueUpgrade turns one value of a map from layout version v into version
// v+1.
type valueUpgrade func(old []byte) ([]byte, error)

// upgrades[v] are the maps whose values change from layout v to v+1, and
// how; a map not listed keeps its values. Keys never change with the
// layout, and ipm_settings only ever grows at its end (its common prefix is
// copied). A layout version without an entry here for every version up to
// this build's starts with empty maps.
var upgrades = map[uint32]map[string]valueUpgrade{
	// Layout 2 gave NAT entries (and the host reservations, which share
	// their type) TCP window tracking at the end: tcp_ack in the former
	// padding, then tcp_win, tcp_wscale and padding. A carried-over entry
	// holds zeros there with IPM_F_ACK and IPM_F_WSCALE clear, so it takes
	// any RST or FIN as plausible until the pod's next ACK, as before.
	1: {
		"ipm_nat4":     zeroExtend(int(unsafe.Sizeof(BPFIpmNatEntry{}))),
		"ipm_hostres4": zeroExtend(int(unsafe.Sizeof(BPFIpmNatEntry{}))),
		"ipm_nat6":     zeroExtend(int(unsafe.Sizeof(BPFIpmNat6Entry{}))),
		"ipm_hostres6": zeroExtend(int(unsafe.Sizeof(BPFIpmNat6Entry{}))),
	},
}

// zeroExtend is the upgrade of a value that only grew at its end.
func zeroExtend(size int) valueUpgrade {
	return func(old []byte) ([]byte, error) {
		if len(old) > size {
			return nil, fmt.Errorf("value of %d bytes is longer than the new %d", len(old), size)
		}
		return append(append(make([]byte, 0, size), old...), make([]byte, size-len(old))...), nil
	}
}

// layoutVersion is Layout, a variable so that a test can play an upgrade.
var layoutVersion uint32 = Layout

// canUpgrade reports whether maps of layout from can be carried over.
func canUpgrade(from uint32) bool {
	if from > layoutVersion {
		return false // written by a newer build: never guess
	}
	for v := from; v < layoutVersion; v++ {
		if upgrades[v] == nil {
			return false
		}
	}
	return true
}

// upgradeValue brings a value of map name from layout from to this build's.
func upgradeValue(name string, from uint32, v []byte) ([]byte, error) {
	for ; from < layoutVersion; from++ {
		if up := upgrades[from][name]; up != nil {
			var err error
			if v, err = up(v); err != nil {
				return nil, fmt.Errorf("upgrade %s from layout %d: %w", name, from, err)
			}
		}
	}
	return v, nil
}

// migration is one map being carried over.
type migration struct {
	name     string
	old, new *ebpf.Map
	from     uint32        // layout version of old
	copiedAt time.Duration // CLOCK_MONOTONIC when the first copy began
}

// group is what is copied together: one entry, or both halves of a flow
// (reply half first, as the datapath creates them).
type group struct {
	keys, values [][]byte
	lastUsed     uint64 // newest of creation and last packets, CLOCK_MONOTONIC ns
	created      uint64
}

// groupReader calls fn for every group of entries of the old map, values
// upgraded to this build's layout.
type groupReader func(m *migration, fn func(group)) error

// monotonic is the clock of the datapath's timestamps.
func monotonic() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// readAll calls fn for every entry of m, as raw bytes (reused between calls).
func readAll(m *ebpf.Map, fn func(k, v []byte)) error {
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

// firstCopy copies old into new; when the groups do not all fit, the most
// recently used ones. Returns the entries copied and dropped.
func (m *migration) firstCopy() (copied, dropped int, err error) {
	m.copiedAt = monotonic()
	if m.name == "ipm_settings" {
		return copySettings(m.old, m.new)
	}
	read := migratedMaps[m.name]
	// Pass 1: the last use of every group, to find the cutoff when they do
	// not all fit. 8 bytes per group, once per resize.
	var uses []uint64
	total := 0
	err = read(m, func(g group) {
		uses = append(uses, g.lastUsed)
		total += len(g.keys)
	})
	if err != nil {
		return 0, 0, err
	}
	var cutoff uint64
	if capacity := int(m.new.MaxEntries()); total > capacity {
		// Groups are nearly all the same size: keep the newest that fit
		// by count, with the average size.
		slices.Sort(uses)
		keep := int(float64(capacity) / float64(total) * float64(len(uses)))
		cutoff = ^uint64(0)
		if keep > 0 {
			cutoff = uses[len(uses)-keep]
		}
	}
	var oldestKept, newestDropped uint64
	err = read(m, func(g group) {
		if g.lastUsed < cutoff || !insertGroup(m.new, g) {
			dropped += len(g.keys)
			newestDropped = max(newestDropped, g.lastUsed)
			return
		}
		copied += len(g.keys)
		if oldestKept == 0 || g.lastUsed < oldestKept {
			oldestKept = g.lastUsed
		}
	})
	if dropped > 0 {
		now := uint64(monotonic())
		klog.InfoS("WARNING: the new map is smaller than its live entries: kept the most recently used, dropped the rest",
			"map", m.name, "kept", copied, "dropped", dropped, "capacity", m.new.MaxEntries(),
			"droppedIdleAtLeast", time.Duration(now-min(now, newestDropped)).Round(time.Millisecond))
	}
	return copied, dropped, err
}

// secondCopy copies the groups the old programs created since the first
// copy began, where the new map has none of their keys.
func (m *migration) secondCopy() (int, error) {
	if m.name == "ipm_settings" {
		return 0, nil // the agent has written the new one since
	}
	// The datapath's jiffies clock trails CLOCK_MONOTONIC by a few ticks.
	since := uint64(max(0, m.copiedAt-time.Second))
	copied := 0
	err := migratedMaps[m.name](m, func(g group) {
		if g.created >= since && insertGroup(m.new, g) {
			copied += len(g.keys)
		}
	})
	return copied, err
}

// insertGroup inserts every key of g that is absent, all or none: a flow
// whose half is taken in the new map already (a new flow of the new
// programs holds that node port) is not copied.
func insertGroup(m *ebpf.Map, g group) bool {
	for i := range g.keys {
		if err := m.Update(g.keys[i], g.values[i], ebpf.UpdateNoExist); err != nil {
			for j := 0; j < i; j++ {
				m.Delete(g.keys[j])
			}
			return false
		}
	}
	return true
}

// copySettings copies the common prefix of the single settings value.
func copySettings(old, new *ebpf.Map) (int, int, error) {
	v := make([]byte, old.ValueSize())
	if err := old.Lookup(uint32(0), v); err != nil {
		return 0, 0, fmt.Errorf("read settings: %w", err)
	}
	nv := make([]byte, new.ValueSize())
	copy(nv, v)
	// layout_version, first: the new map holds this build's layout.
	nativeEndian.PutUint32(nv[0:4], layoutVersion)
	if err := new.Update(uint32(0), nv, ebpf.UpdateAny); err != nil {
		return 0, 0, fmt.Errorf("write settings: %w", err)
	}
	return 1, 0, nil
}

// stamps reads the created and last-seen times every value of a state map
// starts with (ipm_nat_entry, ipm_nat6_entry, ipm_inbound).
func stamps(v []byte) (created, lastSeen uint64) {
	return nativeEndian.Uint64(v[0:8]), nativeEndian.Uint64(v[8:16])
}

// singleEntries reads a map whose entries stand alone.
func singleEntries(m *migration, fn func(group)) error {
	var errs []error
	err := readAll(m.old, func(k, v []byte) {
		nv, err := upgradeValue(m.name, m.from, v)
		if err == nil && len(nv) != int(m.new.ValueSize()) {
			err = fmt.Errorf("value of %d bytes after upgrade, want %d", len(nv), m.new.ValueSize())
		}
		if err != nil {
			errs = append(errs, err)
			return
		}
		created, last := stamps(nv)
		fn(group{keys: [][]byte{clone(k)}, values: [][]byte{clone(nv)}, lastUsed: max(created, last), created: created})
	})
	return errors.Join(append(errs, err)...)
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// closeMigrations closes the old maps of migrations that will not happen.
func closeMigrations(ms []*migration) {
	for _, m := range ms {
		m.old.Close()
	}
}

// CompleteMigration finishes carrying maps over once the new programs have
// taken over every interface (Attach): it copies what the old programs
// created since Open and replaces the pins. Without a pending migration it
// does nothing.
func (d *Datapath) CompleteMigration() error {
	var errs []error
	// The settings last: they carry the layout version a later start reads.
	slices.SortStableFunc(d.migrations, func(a, b *migration) int {
		return boolInt(a.name == "ipm_settings") - boolInt(b.name == "ipm_settings")
	})
	for _, m := range d.migrations {
		n, err := m.secondCopy()
		if err != nil {
			errs = append(errs, fmt.Errorf("copy %s again: %w", m.name, err))
		}
		if err := pinAtomically(m.new, filepath.Join(d.PinPath, m.name)); err != nil {
			errs = append(errs, err)
		}
		klog.InfoS("Carried a pinned map over", "map", m.name, "entriesSinceFirstCopy", n, "maxEntries", m.new.MaxEntries())
		m.old.Close()
	}
	d.migrations = nil
	return errors.Join(errs...)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
