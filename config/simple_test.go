package config

import (
	"reflect"
	"strings"
	"testing"
)

// simpleDocs are documents of the shape readSimple reads itself, and of shapes
// close to it that it must leave to YAML; every one must parse the same both
// ways.
var simpleDocs = []struct {
	doc    string
	simple bool // readSimple answers for it
}{
	{"cidrLimit: 3\nnonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\n  - 192.168.0.0/16\n", true},
	{"nonMasqueradeCIDRs:\n- 10.0.0.0/8\n- 'fd00::/8'\n- \"2001:db8::/32\"\ncidrLimit: 10\n", true},
	{"# header\n\nnonMasqueradeCIDRs:   # the list\n  # a comment line\n  - 10.0.0.0/8   # trailing\n\n  - 100.64.0.0/10\nmasqLinkLocal: true\nmasqLinkLocalIPv6: false # c\nresyncInterval: 1m30s\n", true},
	{"NonMasqueradeCIDRs: []\nCIDRLIMIT: 0\nRESYNCINTERVAL: 2s", true},
	{"nonMasqueradeCIDRs:\ncidrLimit:\nmasqLinkLocal: ~\nresyncInterval: null\n", true},
	{"nonMasqueradeCIDRs: null\n", true},
	{"nonMasqueradeCIDRs:\n  - 10.0.0.1/8\n  - 10.0.0.0/33\n  - 1.2.3.4/08\n  - 'fd00::1/8'\n  - '::ffff:10.0.0.0/104'\n  - 'fe80::1%eth0/64'\n  - ''\n  - ' 10.0.0.0/8'\n", true},
	{"cidrLimit: 1\nnonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 11.0.0.0/8\n", true},
	{"cidrLimit: -1\nresyncInterval: 0s\n", true},
	{"resyncInterval: 1.2.3s\n", true},
	{"resyncInterval: 5mh\n", true},
	{"# only a comment\n", true},

	// Left to YAML.
	{"cidrLimit: 010\n", false},             // octal in YAML 1.1
	{"cidrLimit: +5\n", false},              // a sign
	{"cidrLimit: 1_000\n", false},           // YAML 1.1 digit separator
	{"cidrLimit: 0x10\n", false},            // hexadecimal
	{"cidrLimit: 99999999999\n", false},     // too long
	{"masqLinkLocal: yes\n", false},         // YAML 1.1 boolean
	{"masqLinkLocal: True\n", false},        // YAML boolean
	{"masqLinkLocal: 'true'\n", false},      // a string
	{"resyncInterval: 60\n", false},         // a number
	{"resyncInterval: '60s'\n", false},      // quoted
	{"resyncInterval: -5s\n", false},        // a sign
	{"resyncInterval:\n  60s\n", false},     // on the next line
	{"cidrLimit: 3\ncidrLimit: 4\n", false}, // repeated
	{"cidrLimit: 3\nCIDRLimit: 4\n", false}, // repeated in other case
	{"snatTarget: 1.2.3.4\ncidrLimit: 9\n", false},
	{"nonMasqueradeCIDRs: [10.0.0.0/8]\n", false},
	{"nonMasqueradeCIDRs: 10.0.0.0/8\n", false},
	{"nonMasqueradeCIDRs:\n  - 10\n", false},
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8:\n", false},   // a mapping
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8: x\n", false}, // a mapping
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n    10.1.0.0/16\n", false},
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n - 10.1.0.0/16\n", false},
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n    - 10.1.0.0/16\n", false},
	{"nonMasqueradeCIDRs:\n  -\n", false},
	{"nonMasqueradeCIDRs:\n  - ~\n", false},
	{"nonMasqueradeCIDRs:\n  - null\n", false},
	{"nonMasqueradeCIDRs:\n  - ::/0\n", false},
	{"nonMasqueradeCIDRs:\n  - 'it''s/8'\n", false},
	{"nonMasqueradeCIDRs:\n  - \"10.0.0.0\\/8\"\n", false},
	{"nonMasqueradeCIDRs:\n  - &a 10.0.0.0/8\n  - *a\n", false},
	{"nonMasqueradeCIDRs:\n  - !!str 10.0.0.0/8\n", false},
	{"nonMasqueradeCIDRs:\n  - 10.0.0.0/8#x\n", false},
	{"nonMasqueradeCIDRs:\n\t- 10.0.0.0/8\n", false},
	{"nonMasqueradeCIDRs:\r\n  - 10.0.0.0/8\r\n", false},
	{"\ufeffcidrLimit: 3\n", false},
	{"cidrLimit: 3\n---\ncidrLimit: bad\n", false},
	{"---\ncidrLimit: 3\n", false},
	{"cidrLimit : 3\n", false},
	{"cidrLimit:3\n", false},
	{"  cidrLimit: 3\n", false},
	{"cidrLimit: 3\n  masqLinkLocal: true\n", false},
	{"masqLinkLocal:\n  - true\n", false},
	{"nonMasqueradeCIDRs: []\n  - 10.0.0.0/8\n", false},
	{"- 10.0.0.0/8\n", false},
	{"{\"cidrLimit\": 3}", false},
	{"hello", false},
}

func TestReadSimpleAgreesWithYAML(t *testing.T) {
	var docs []string
	for _, d := range simpleDocs {
		docs = append(docs, d.doc)
		if _, ok := readSimple([]byte(d.doc)); ok != d.simple {
			t.Errorf("readSimple(%q): ok %v, want %v", d.doc, ok, d.simple)
		}
	}
	docs = append(docs, string(benchDoc(100)))
	for _, d := range docs {
		for _, o := range []Options{noReserved, allRanges, withIPv6} {
			sameBothWays(t, []byte(d), o)
		}
	}
}

// sameBothWays checks that parse gives the same with and without readSimple.
func sameBothWays(t *testing.T, doc []byte, o Options) {
	t.Helper()
	want, wantErr := parse(doc, o, false)
	got, gotErr := parse(doc, o, true)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Errorf("Parse(%q, %+v): error %v, as YAML %v", doc, o, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(%q, %+v) = %+v, as YAML %+v", doc, o, got, want)
	}
}

func TestReadSimpleReadsTheBenchFile(t *testing.T) {
	doc := benchDoc(10000)
	fields, ok := readSimple(doc)
	if !ok || len(fields) != 2 || len(fields[1].list) != 10000 {
		t.Fatalf("readSimple of the bench's file: ok %v, %d fields", ok, len(fields))
	}
}

func FuzzReadSimple(f *testing.F) {
	for _, d := range simpleDocs {
		f.Add(d.doc)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if strings.Count(doc, "\n") > 50 {
			return
		}
		sameBothWays(t, []byte(doc), withIPv6)
	})
}

var cidrStrings = []string{
	"10.0.0.0/8", "10.0.0.1/8", "10.0.0.0/08", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "010.0.0.0/8",
	"0.0.0.0/0", "255.255.255.255/32", "1.2.3.4", "1.2.3.4/", "/8", "", " 10.0.0.0/8", "10.0.0.0/8 ",
	"fd00::/8", "fd00::1/8", "::/0", "::1/128", "::ffff:10.0.0.0/104", "::ffff:10.0.0.0/96", "fe80::1%eth0/64",
	"2001:db8::/32", "2001:DB8::/32", "1:2:3:4:5:6:1.2.3.4/128", "fd00::/129", "10.0.0.0/8/8",
}

func TestParseCIDRAgreesWithNet(t *testing.T) {
	for _, s := range cidrStrings {
		for _, v6 := range []bool{false, true} {
			sameCIDR(t, s, v6)
		}
	}
}

func sameCIDR(t *testing.T, s string, enableIPv6 bool) {
	t.Helper()
	got, gotErr := parseCIDR(s, enableIPv6)
	want, wantErr := parseCIDRSlow(s, enableIPv6)
	if got != want || (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Errorf("parseCIDR(%q, %v) = %v, %v; net.ParseCIDR way %v, %v", s, enableIPv6, got, gotErr, want, wantErr)
	}
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range cidrStrings {
		f.Add(s, false)
	}
	f.Fuzz(sameCIDR)
}
