package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// fakeNonMasq records what configSync applies.
type fakeNonMasq struct {
	applied []maps.CIDRSet
	forgets int
}

func (f *fakeNonMasq) Apply(s maps.CIDRSet) error { f.applied = append(f.applied, s); return nil }
func (f *fakeNonMasq) Forget()                    { f.forgets++ }

func (f *fakeNonMasq) last(t *testing.T) maps.CIDRSet {
	t.Helper()
	if len(f.applied) == 0 {
		t.Fatal("nothing applied")
	}
	return f.applied[len(f.applied)-1]
}

var tenSlash8 = netip.MustParsePrefix("10.0.0.0/8")

func newTestSync(t *testing.T, content string) (*configSync, *fakeNonMasq, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	nm := &fakeNonMasq{}
	s := newConfigSync(path, config.Options{}, nm)
	s.sync()
	return s, nm, path
}

func TestConfigSyncSkipsUnchangedFile(t *testing.T) {
	s, nm, path := newTestSync(t, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	if nm.forgets != 1 || len(nm.applied) != 1 {
		t.Fatalf("start: %d forgets, %d applies; want 1, 1", nm.forgets, len(nm.applied))
	}
	s.changed() // an event in the directory, the file as it was
	if len(nm.applied) != 1 {
		t.Errorf("unchanged file applied again")
	}
	if err := os.WriteFile(path, []byte("nonMasqueradeCIDRs: [192.168.0.0/16]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.changed()
	if len(nm.applied) != 2 || nm.forgets != 1 {
		t.Fatalf("after a change: %d applies, %d forgets; want 2, 1 (a change trusts what was written)", len(nm.applied), nm.forgets)
	}
	if _, ok := nm.last(t)[netip.MustParsePrefix("192.168.0.0/16")]; !ok {
		t.Errorf("applied %v, want the new list", nm.last(t))
	}
	s.sync() // the periodic resync checks the tries
	if nm.forgets != 2 || len(nm.applied) != 3 {
		t.Errorf("resync: %d forgets, %d applies; want 2, 3", nm.forgets, len(nm.applied))
	}
}

// TestConfigSyncTruncatedFile: a file truncated to be rewritten in place is
// not read as empty (all defaults) when the rewrite follows within
// emptyRecheck.
func TestConfigSyncTruncatedFile(t *testing.T) {
	s, nm, path := newTestSync(t, "nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(emptyRecheck / 4)
		f.WriteString("nonMasqueradeCIDRs: [172.16.0.0/12]\n")
		f.Close()
	}()
	s.changed() // the event of the truncation, read while the file is empty
	<-done
	for _, set := range nm.applied[1:] {
		if _, ok := set[netip.MustParsePrefix("192.168.0.0/16")]; ok || len(set) == 4 {
			t.Errorf("applied the defaults of an empty file: %v", set)
		}
	}
	if got := nm.last(t); len(got) != 2 { // 172.16.0.0/12 and link-local
		t.Errorf("applied %v, want the rewritten list", got)
	}

	// A file that stays empty is empty: all defaults.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.changed()
	if d := time.Since(start); d < emptyRecheck {
		t.Errorf("empty file applied after %v, want a recheck after %v", d, emptyRecheck)
	}
	if _, ok := nm.last(t)[tenSlash8]; !ok || len(nm.last(t)) != 4 {
		t.Errorf("empty file: applied %v, want the defaults", nm.last(t))
	}
}
