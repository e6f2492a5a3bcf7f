package loader

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestUpgradeFromLayout1: maps pinned by a build of layout 1 (NAT entries
// without TCP window tracking) are carried over, their values grown to this
// build's size with the new fields zero, everything else unchanged.
func TestUpgradeFromLayout1(t *testing.T) {
	if !canUpgrade(1) {
		t.Fatal("layout 1 cannot be upgraded: its flows would be lost on upgrade")
	}
	cases := []struct {
		name           string
		oldSize, today int
	}{
		{"ipm_nat4", 32, int(unsafe.Sizeof(BPFIpmNatEntry{}))},
		{"ipm_hostres4", 32, int(unsafe.Sizeof(BPFIpmNatEntry{}))},
		{"ipm_nat6", 40, int(unsafe.Sizeof(BPFIpmNat6Entry{}))},
		{"ipm_hostres6", 40, int(unsafe.Sizeof(BPFIpmNat6Entry{}))},
	}
	for _, c := range cases {
		old := make([]byte, c.oldSize)
		for i := range old {
			old[i] = byte(i + 1)
		}
		got, err := upgradeValue(c.name, 1, old)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(got) != c.today {
			t.Fatalf("%s: upgraded value has %d bytes, want %d", c.name, len(got), c.today)
		}
		if !bytes.Equal(got[:c.oldSize], old) || !bytes.Equal(got[c.oldSize:], make([]byte, c.today-c.oldSize)) {
			t.Fatalf("%s: upgraded value % x, want the old bytes then zeros", c.name, got)
		}
	}
	// Values that did not change keep their bytes.
	in := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	if got, err := upgradeValue("ipm_inbound4", 1, in); err != nil || !bytes.Equal(got, in) {
		t.Fatalf("ipm_inbound4 upgraded to % x, %v; want it unchanged", got, err)
	}
	if _, err := zeroExtend(8)(make([]byte, 9)); err == nil {
		t.Fatal("a value longer than the new layout was accepted")
	}
}
