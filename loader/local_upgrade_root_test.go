package loader

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// TestUpgradeLocalAddrMaps: pins of ipm_local4/ipm_local6 from a build
// before they grew (4,096 entries, preallocated) are replaced by this
// build's definition on the first start, not reused and not an error, so
// an upgrade on a node with more addresses than the old size works.
func TestUpgradeLocalAddrMaps(t *testing.T) {
	pin := migrationBPFFS(t)
	openDatapath(t, pin, 0).Close()
	for _, name := range []string{BPFMapIpmLocal4, BPFMapIpmLocal6} {
		path := filepath.Join(pin, name)
		cur, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cur.Info()
		if err != nil {
			t.Fatal(err)
		}
		cur.Close()
		// The old definition, pinned where the agent looks.
		old, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: info.KeySize, ValueSize: info.ValueSize, MaxEntries: 4096})
		if err != nil {
			t.Fatal(err)
		}
		if err := pinAtomically(old, path); err != nil {
			t.Fatal(err)
		}
		old.Close()
	}

	d := openDatapath(t, pin, 0)
	defer d.Close()
	for _, name := range []string{BPFMapIpmLocal4, BPFMapIpmLocal6} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.MaxEntries() != 65536 || m.Flags()&1 == 0 { // BPF_F_NO_PREALLOC
			t.Errorf("%s pinned with %d entries, flags %#x after the upgrade; want 65536, not preallocated", name, m.MaxEntries(), m.Flags())
		}
		m.Close()
	}
	var v BPFIpmLocal
	for i := range 5000 {
		if err := d.Maps.IpmLocal4.Put(addr4(i), &v); err != nil {
			t.Fatalf("address %d into the upgraded ipm_local4: %v", i+1, err)
		}
	}
}
