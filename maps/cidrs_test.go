package maps

import (
	"net/netip"
	"slices"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestNewCIDRSet(t *testing.T) {
	configured := prefixes("10.0.0.0/8", "169.254.0.0/16", "2001:db8::/32", "10.0.0.0/8")
	effective := prefixes("169.254.0.0/16", "fe80::/10", "10.0.0.0/8", "169.254.0.0/16", "2001:db8::/32")
	set := NewCIDRSet(configured, effective)
	want := CIDRSet{
		netip.MustParsePrefix("10.0.0.0/8"):     Configured,
		netip.MustParsePrefix("169.254.0.0/16"): Configured, // listed: configured wins
		netip.MustParsePrefix("2001:db8::/32"):  Configured,
		netip.MustParsePrefix("fe80::/10"):      LinkLocal,
	}
	if len(set) != len(want) {
		t.Fatalf("got %v, want %v (duplicates merged)", set, want)
	}
	for p, o := range want {
		if set[p] != o {
			t.Errorf("%s: origin %d, want %d", p, set[p], o)
		}
	}
}

func TestDiff(t *testing.T) {
	a := netip.MustParsePrefix("10.0.0.0/8")
	b := netip.MustParsePrefix("192.168.0.0/16")
	c := netip.MustParsePrefix("169.254.0.0/16")
	tests := []struct {
		name       string
		old, new   CIDRSet
		wantUpsert CIDRSet
		wantRemove []netip.Prefix
	}{
		{"empty to empty", CIDRSet{}, CIDRSet{}, CIDRSet{}, nil},
		{"fill", CIDRSet{}, CIDRSet{a: Configured, c: LinkLocal}, CIDRSet{a: Configured, c: LinkLocal}, nil},
		{"same", CIDRSet{a: Configured}, CIDRSet{a: Configured}, CIDRSet{}, nil},
		{"replace", CIDRSet{a: Configured}, CIDRSet{b: Configured}, CIDRSet{b: Configured}, []netip.Prefix{a}},
		{"origin change is rewritten", CIDRSet{c: LinkLocal}, CIDRSet{c: Configured}, CIDRSet{c: Configured}, nil},
		{"clear", CIDRSet{a: Configured, b: Configured}, CIDRSet{}, CIDRSet{}, []netip.Prefix{a, b}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			upsert, remove := Diff(tt.old, tt.new)
			if len(upsert) != len(tt.wantUpsert) {
				t.Errorf("upsert %v, want %v", upsert, tt.wantUpsert)
			}
			for p, o := range tt.wantUpsert {
				if got, ok := upsert[p]; !ok || got != o {
					t.Errorf("upsert[%s] = %d, %v; want %d", p, got, ok, o)
				}
			}
			slices.SortFunc(remove, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
			if !slices.Equal(remove, tt.wantRemove) {
				t.Errorf("remove %v, want %v", remove, tt.wantRemove)
			}
			// Applying the diff to old must give new.
			got := CIDRSet{}
			for p, o := range tt.old {
				got[p] = o
			}
			for _, p := range remove {
				delete(got, p)
			}
			for p, o := range upsert {
				got[p] = o
			}
			if len(got) != len(tt.new) {
				t.Fatalf("old+diff = %v, want %v", got, tt.new)
			}
			for p, o := range tt.new {
				if got[p] != o {
					t.Errorf("old+diff[%s] = %d, want %d", p, got[p], o)
				}
			}
		})
	}
}
