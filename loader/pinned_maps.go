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
// and writes (IPM_LAYOUT_VERSION in bpf/ipmasq.h).
const Layout = 2

// stateMaps hold what a restart must not lose; a pinned one that no longer
// fits the spec (a new size from a flag) is replaced, which resets the flows
// in it, so that case is logged as a warning.
var stateMaps = map[string]bool{"ipm_nat4": true, "ipm_nat6": true, "ipm_inbound4": true, "ipm_inbound6": true,
	"ipm_hostres4": true, "ipm_hostres6": true, "ipm_nomasq_tcp4": true, "ipm_nomasq_tcp6": true}

// reusePinnedMaps opens the maps pinned in dir that this spec can use as they
// are. A map pinned by a build with another layout version is not used: all
// of them are dropped together, on purpose, and the datapath starts clean.
func reusePinnedMaps(spec *ebpf.CollectionSpec, dir string) (map[string]*ebpf.Map, error) {
	if v, ok := pinnedLayout(dir); ok && v != Layout {
		klog.InfoS("Pinned maps have another layout version: starting with empty maps", "pinned", v, "current", Layout)
		return map[string]*ebpf.Map{}, nil
	}
	reuse := map[string]*ebpf.Map{}
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
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		if err := ms.Compatible(m); err != nil {
			m.Close()
			if stateMaps[name] {
				klog.InfoS("WARNING: pinned map does not fit the current flags, replacing it: its flows are lost", "map", name, "reason", err)
			} else {
				klog.V(2).InfoS("Replacing pinned map", "map", name, "reason", err)
			}
			continue
		}
		reuse[name] = m
	}
	return reuse, nil
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
		return Layout, true
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
