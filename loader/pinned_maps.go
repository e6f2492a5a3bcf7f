package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"k8s.io/klog/v2"
)

// Layout is the version of the pinned maps' layout that this build reads
// and writes (IPM_LAYOUT_VERSION in bpf/ipmasq.h); migrate.go upgrades
// older ones.
const Layout = 2

// reusePinnedMaps opens the maps pinned in dir that this spec can use as they
// are. A state map (migratedMaps) that no longer fits, because a flag gave it
// another size or the pins have an older layout that this build can upgrade,
// is returned as a migration to carry over (migrate.go); any other map that
// does not fit is replaced. Pins of a layout this build cannot upgrade (a
// newer one, or one without upgrades) are all dropped together, on purpose,
// and the datapath starts clean.
func reusePinnedMaps(spec *ebpf.CollectionSpec, dir string) (map[string]*ebpf.Map, []*migration, error) {
	from := layoutVersion
	if v, ok := pinnedLayout(dir); ok && v != layoutVersion {
		if !canUpgrade(v) {
			klog.InfoS("Pinned maps have a layout version this build cannot upgrade: starting with empty maps", "pinned", v, "current", layoutVersion)
			return map[string]*ebpf.Map{}, nil, nil
		}
		from = v
	}
	reuse := map[string]*ebpf.Map{}
	var carry []*migration
	for name, ms := range spec.Maps {
		if ms.Name == "" || name[0] == '.' {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll(reuse)
			closeMigrations(carry)
			return nil, nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		_, migrated := migratedMaps[name]
		err = ms.Compatible(m)
		switch {
		case err == nil && from == layoutVersion:
			reuse[name] = m
		case migrated:
			carry = append(carry, &migration{name: name, old: m, from: from})
		default:
			m.Close()
			klog.V(2).InfoS("Replacing pinned map", "map", name, "reason", err, "layout", from)
		}
	}
	return reuse, carry, nil
}

// pinnedLayout reads the layout version recorded in the pinned settings map.
func pinnedLayout(dir string) (uint32, bool) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "ipm_settings"), nil)
	if err != nil {
		return 0, false
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil || info.ValueSize < 4 {
		return 0, false
	}
	value := make([]byte, info.ValueSize)
	if err := m.Lookup(uint32(0), value); err != nil {
		return 0, false
	}
	v := uint32(value[0]) | uint32(value[1])<<8 | uint32(value[2])<<16 | uint32(value[3])<<24
	if v == 0 {
		// Created but never written: nothing to protect.
		return layoutVersion, true
	}
	return v, true
}

// pinAtomically pins m at path, replacing whatever is pinned there in one
// step, so that there is never a moment without a pin.
func pinAtomically(m *ebpf.Map, path string) error {
	// bpffs refuses names with dots.
	tmp := filepath.Join(filepath.Dir(path), "tmp_"+filepath.Base(path))
	os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		m.Unpin()
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}

func closeAll(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}
