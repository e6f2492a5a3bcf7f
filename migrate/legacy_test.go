package migrate

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// These tests need no privileges: they build x_tables blobs the way
// iptables-legacy lays them out and check the parsing and the rewrite.

// sEntry is one entry of a synthetic table.
type sEntry struct {
	chain   string       // the chain it is in (documentation; parsing derives it)
	target  string       // standardTarget, errorTarget or an extension
	verdict int32        // of a standard target without jump
	jump    string       // standard target: jump to this chain's first rule
	next    bool         // standard target: fall through to the next entry
	gotoF   bool         // -g instead of -j
	errName string       // of an ERROR entry
	dst     netip.Prefix // -d
	comment string       // -m comment --comment
}

func (e sEntry) size(f *xtFamily) int {
	n := f.entrySize + targetHdr + 8 // standard: verdict, aligned
	if e.comment != "" {
		n += matchHdr + 256
	}
	switch e.target {
	case errorTarget:
		n += 32 - 8 // errorname[30], aligned: 64 in all
	case standardTarget:
	default:
		n += 24 - 8 // nf_nat_ipv4_multi_range_compat
	}
	return n
}

// build lays the entries out; hooks names the chain of each valid hook.
func build(t *testing.T, f *xtFamily, ents []sEntry) (xtInfo, []byte) {
	t.Helper()
	offs := make([]int, len(ents)+1)
	first := map[string]int{} // chain -> offset of its first rule
	for i, e := range ents {
		offs[i+1] = offs[i] + e.size(f)
		if e.target == errorTarget {
			first[e.errName] = offs[i+1]
		}
	}
	var info xtInfo
	for h, name := range hookNames {
		i := slices.IndexFunc(ents, func(e sEntry) bool { return e.chain == name })
		if i < 0 {
			continue
		}
		last := i
		for last+1 < len(ents) && ents[last+1].chain == name {
			last++
		}
		info.validHooks |= 1 << h
		info.hookEntry[h], info.underflow[h] = uint32(offs[i]), uint32(offs[last])
	}
	blob := make([]byte, offs[len(ents)])
	for i, e := range ents {
		b := blob[offs[i]:offs[i+1]]
		if e.dst.IsValid() {
			a := e.dst.Addr().AsSlice()
			copy(b[f.srcAt+f.addrLen:], a)
			for k := 0; k < e.dst.Bits(); k++ {
				b[f.srcAt+3*f.addrLen+k/8] |= 0x80 >> (k % 8)
			}
		}
		if e.gotoF {
			b[f.flagsAt] |= f.gotoFlag
		}
		m := f.entrySize
		if e.comment != "" {
			native.PutUint16(b[m:], matchHdr+256)
			copy(b[m+2:], "comment")
			copy(b[m+matchHdr:], e.comment)
			m += matchHdr + 256
		}
		native.PutUint16(b[f.targetOffsetAt():], uint16(m))
		native.PutUint16(b[f.targetOffsetAt()+2:], uint16(len(b)))
		native.PutUint16(b[m:], uint16(len(b)-m))
		copy(b[m+2:], e.target)
		switch {
		case e.target == errorTarget:
			copy(b[m+targetHdr:], e.errName)
		case e.target != standardTarget:
		case e.jump != "":
			off, ok := first[e.jump]
			if !ok {
				t.Fatalf("no chain %s", e.jump)
			}
			native.PutUint32(b[m+targetHdr:], uint32(off))
		case e.next:
			native.PutUint32(b[m+targetHdr:], uint32(offs[i+1]))
		default:
			native.PutUint32(b[m+targetHdr:], uint32(e.verdict))
		}
	}
	info.numEntries = uint32(len(ents))
	info.size = uint32(len(blob))
	return info, blob
}

func head(name string) sEntry { return sEntry{chain: name, target: errorTarget, errName: name} }
func ret(chain string) sEntry { return sEntry{chain: chain, verdict: verdictReturn} }
func policy(chain string) sEntry {
	return sEntry{chain: chain, verdict: verdictAccept}
}

// upstreamTable has upstream's chain between two others, two jumps to it in
// POSTROUTING (the first is the hook's first rule; the second is reached by
// the fall-through of a rule without target) and jumps between the others.
func upstreamTable() []sEntry {
	j := func(chain, to string) sEntry {
		return sEntry{chain: chain, jump: to, comment: "jump to " + to}
	}
	return []sEntry{
		{chain: "PREROUTING", dst: netip.MustParsePrefix("192.0.2.0/24"), jump: "AAA"},
		policy("PREROUTING"),
		policy("INPUT"),
		policy("OUTPUT"),
		j("POSTROUTING", "IP-MASQ-AGENT"),
		{chain: "POSTROUTING", dst: netip.MustParsePrefix("192.0.2.0/24"), next: true, comment: "counts only"},
		j("POSTROUTING", "IP-MASQ-AGENT"),
		{chain: "POSTROUTING", jump: "OTHER", gotoF: true},
		policy("POSTROUTING"),
		head("AAA"),
		{chain: "AAA", jump: "OTHER"},
		ret("AAA"),
		head("IP-MASQ-AGENT"),
		{chain: "IP-MASQ-AGENT", dst: netip.MustParsePrefix("169.254.0.0/16"), verdict: verdictReturn, comment: "local"},
		{chain: "IP-MASQ-AGENT", dst: netip.MustParsePrefix("10.0.0.0/8"), verdict: verdictReturn, comment: "local"},
		{chain: "IP-MASQ-AGENT", target: "MASQUERADE", comment: "outbound"},
		ret("IP-MASQ-AGENT"),
		head("OTHER"),
		{chain: "OTHER", dst: netip.MustParsePrefix("198.51.100.0/24"), verdict: verdictDrop},
		ret("OTHER"),
		{target: errorTarget, errName: errorTarget},
	}
}

// parsedUpstream builds the IPv4 upstreamTable and parses it back.
func parsedUpstream(t *testing.T) (*xtFamily, *xtTable) {
	t.Helper()
	f := xtFamilies[IPv4]
	info, blob := build(t, f, upstreamTable())
	tb, err := parseTable(f, info, blob)
	if err != nil {
		t.Fatal(err)
	}
	return f, tb
}

func renderAll(t *xtTable) []string {
	var out []string
	for i := range t.entries {
		out = append(out, t.render(i))
	}
	return out
}

func TestLegacyRebuild(t *testing.T) {
	f, old := parsedUpstream(t)
	p, err := old.plan("IP-MASQ-AGENT")
	if err != nil || p == nil {
		t.Fatalf("plan = %+v, %v", p, err)
	}
	var jumps, rules []string
	for _, i := range p.jumps {
		jumps = append(jumps, old.render(i))
	}
	for _, i := range p.rules {
		rules = append(rules, old.render(i))
	}
	wantJumps := []string{
		"-A POSTROUTING -m comment --comment \"jump to IP-MASQ-AGENT\" -j IP-MASQ-AGENT",
		"-A POSTROUTING -m comment --comment \"jump to IP-MASQ-AGENT\" -j IP-MASQ-AGENT",
	}
	wantRules := []string{
		"-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment local -j RETURN",
		"-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment local -j RETURN",
		"-A IP-MASQ-AGENT -m comment --comment outbound -j MASQUERADE",
	}
	if !slices.Equal(jumps, wantJumps) || !slices.Equal(rules, wantRules) {
		t.Errorf("jumps %q\nrules %q\nwant %q\n     %q", jumps, rules, wantJumps, wantRules)
	}

	n, err := old.rebuild(p.remove)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseTable(f, n.info, n.blob)
	if err != nil {
		t.Fatalf("the rebuilt table does not parse: %v", err)
	}
	// Every kept entry reads the same (same chain, same jump targets by
	// name, the fall-through still a fall-through), and the hooks start
	// where they should.
	want := renderAll(old)
	want = slices.DeleteFunc(want, func(s string) bool { return strings.Contains(s, "IP-MASQ-AGENT") })
	t.Logf("rebuilt:\n%s", strings.Join(renderAll(got), "\n"))
	if g := renderAll(got); !slices.Equal(g, want) {
		t.Errorf("rebuilt:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(want, "\n"))
	}
	if g := got.render(0); g != "-A PREROUTING -d 192.0.2.0/24 -j AAA" {
		t.Errorf("first entry %q", g)
	}
	post := got.entries[slices.IndexFunc(got.entries, func(e xtEntry) bool { return e.off == int(n.info.hookEntry[hookPostrouting]) })]
	if post.chain != PostroutingChain || got.render(slices.Index(got.entries, post)) != "-A POSTROUTING -d 192.0.2.0/24 -m comment --comment \"counts only\"" {
		t.Errorf("POSTROUTING starts at %+v", post)
	}
	if len(n.fromOld) != len(old.entries)-len(p.remove) || n.fromOld[0] != 0 {
		t.Errorf("entry map %v", n.fromOld)
	}
	// Counters follow their entries.
	oldCounters := make([]byte, counterSize*len(old.entries))
	for i := range old.entries {
		oldCounters[i*counterSize] = byte(i)
	}
	for i, c := range n.counters(oldCounters) {
		if i%counterSize == 0 && int(c) != n.fromOld[i/counterSize] {
			t.Errorf("counter of new entry %d came from %d", i/counterSize, c)
		}
	}
}

func TestLegacyPlanAbsentOrReferenced(t *testing.T) {
	_, tb := parsedUpstream(t)
	if p, err := tb.plan("NO-SUCH-CHAIN"); p != nil || err != nil {
		t.Errorf("absent chain: %+v, %v", p, err)
	}
	// Chain AAA jumps to OTHER too, not only POSTROUTING: refused.
	if p, err := tb.plan("OTHER"); p != nil || err == nil || !strings.Contains(err.Error(), "chain AAA") {
		t.Errorf("referenced chain: %+v, %v", p, err)
	}
	// The table's end marker is not a chain.
	if p, err := tb.plan(errorTarget); p != nil || err != nil {
		t.Errorf("ERROR: %+v, %v", p, err)
	}
}

// TestLegacyCorruptTables: truncated or damaged blobs give errors, never a
// panic or a rewrite that does not parse again.
func TestLegacyCorruptTables(t *testing.T) {
	f := xtFamilies[IPv4]
	info, blob := build(t, f, upstreamTable())
	try := func(info xtInfo, b []byte) {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("panic: %v", r)
			}
		}()
		tb, err := parseTable(f, info, b)
		if err != nil {
			return
		}
		tb.render(0)
		p, err := tb.plan("IP-MASQ-AGENT")
		if err != nil || p == nil {
			return
		}
		for _, i := range append(p.jumps, p.rules...) {
			tb.render(i)
		}
		n, err := tb.rebuild(p.remove)
		if err != nil {
			return
		}
		if _, err := parseTable(f, n.info, n.blob); err != nil {
			t.Errorf("rewrite of a damaged table does not parse: %v", err)
		}
	}
	for l := 0; l < len(blob); l++ {
		short := info
		short.size = uint32(l)
		try(short, blob[:l])
	}
	for i := range blob {
		for _, v := range []byte{0x00, 0x01, 0x7f, 0xff} {
			b := slices.Clone(blob)
			b[i] = v
			try(info, b)
		}
	}
	for h := range numHooks {
		bad := info
		bad.hookEntry[h] += 8
		try(bad, blob)
		bad = info
		bad.underflow[h] = info.size
		try(bad, blob)
	}
}
