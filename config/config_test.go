package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

var (
	private  = []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}
	reserved = []string{
		"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
		"100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
		"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
	}
	noReserved = Options{}
	allRanges  = Options{NoMasqAllReservedRanges: true}
	withIPv6   = Options{EnableIPv6: true}
)

// withDefaults returns the defaults for o with edit applied.
func withDefaults(o Options, edit func(*Config)) Config {
	c := Default(o)
	if edit != nil {
		edit(&c)
	}
	return c
}

// accepted is a document that must parse under o to want.
type accepted struct {
	name string
	doc  string
	o    Options
	want Config
}

// rejected is a document that Parse must reject under o with an error
// that contains every one of want.
type rejected struct {
	name string
	doc  string
	o    Options
	want []string
}

// requireParses fails unless doc parses under o to want.
func requireParses(t *testing.T, doc string, o Options, want Config) {
	t.Helper()
	got, err := Parse([]byte(doc), o)
	if err != nil {
		t.Fatalf("Parse(%q): %v", doc, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(%q)\n got %+v\nwant %+v", doc, got, want)
	}
}

// requireRejected fails unless Parse rejects doc under o, returns no
// config with the error, and the error mentions every one of want.
func requireRejected(t *testing.T, doc string, o Options, want ...string) {
	t.Helper()
	got, err := Parse([]byte(doc), o)
	if err == nil {
		t.Fatalf("Parse(%q) = %+v, want an error", doc, got)
	}
	if !reflect.DeepEqual(got, Config{}) {
		t.Errorf("Parse returned a config with its error: %+v", got)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

func TestDefault(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want []string
	}{
		{"private ranges", noReserved, private},
		{"all reserved ranges", allRanges, reserved},
		{"ipv6 does not change the list", withIPv6, private},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := Config{
				NonMasqueradeCIDRs: prefixes(tc.want...),
				CIDRLimit:          64,
				ResyncInterval:     60 * time.Second,
			}
			if got := Default(tc.o); !reflect.DeepEqual(got, want) {
				t.Errorf("Default(%+v) = %+v, want %+v", tc.o, got, want)
			}
		})
	}
	// Default must hand out fresh slices: a caller editing one must not
	// change the next.
	a := Default(allRanges)
	a.NonMasqueradeCIDRs[0] = netip.MustParsePrefix("1.0.0.0/8")
	if b := Default(allRanges); b.NonMasqueradeCIDRs[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("Default shares its list between calls: got %v", b.NonMasqueradeCIDRs[0])
	}
}

func TestParseAccepts(t *testing.T) {
	for _, tc := range []accepted{
		// Documents that mean "all defaults".
		{"empty", "", noReserved, Default(noReserved)},
		{"empty with reserved ranges", "", allRanges, Default(allRanges)},
		{"whitespace", "  \n\t\n", noReserved, Default(noReserved)},
		{"comment only", "# nothing configured yet\n# really\n", allRanges, Default(allRanges)},
		{"null", "null\n", noReserved, Default(noReserved)},
		{"tilde null", "~", allRanges, Default(allRanges)},
		{"document marker only", "---\n", noReserved, Default(noReserved)},
		{"empty mapping", "{}", allRanges, Default(allRanges)},

		// A missing key takes its default; the default list depends on the
		// reserved-ranges option only when the key is absent.
		{"only cidrLimit", "cidrLimit: 100", allRanges, withDefaults(allRanges, func(c *Config) { c.CIDRLimit = 100 })},
		{"only masqLinkLocal", "masqLinkLocal: true", noReserved, withDefaults(noReserved, func(c *Config) { c.MasqLinkLocal = true })},
		{"only masqLinkLocalIPv6", "masqLinkLocalIPv6: true", noReserved, withDefaults(noReserved, func(c *Config) { c.MasqLinkLocalIPv6 = true })},
		{"only resyncInterval", `resyncInterval: 1m30s`, noReserved, withDefaults(noReserved, func(c *Config) { c.ResyncInterval = 90 * time.Second })},
		{"explicit list overrides reserved default", "nonMasqueradeCIDRs: [10.0.0.0/8]", allRanges,
			withDefaults(allRanges, func(c *Config) { c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8") })},
		{"empty list", "nonMasqueradeCIDRs: []", allRanges,
			withDefaults(allRanges, func(c *Config) { c.NonMasqueradeCIDRs = []netip.Prefix{} })},
		{"null list", "nonMasqueradeCIDRs: null", allRanges,
			withDefaults(allRanges, func(c *Config) { c.NonMasqueradeCIDRs = []netip.Prefix{} })},
		{"list key without value", "nonMasqueradeCIDRs:\nmasqLinkLocal: false\n", noReserved,
			withDefaults(noReserved, func(c *Config) { c.NonMasqueradeCIDRs = []netip.Prefix{} })},
		{"null scalars keep defaults", "cidrLimit: null\nmasqLinkLocal: ~\nresyncInterval:\n", noReserved, Default(noReserved)},

		// Full documents in both syntaxes.
		{"full yaml", `
nonMasqueradeCIDRs:
  - 10.0.0.0/8
  - 100.64.0.0/10   # carrier-grade NAT
cidrLimit: 10
masqLinkLocal: true
masqLinkLocalIPv6: true
resyncInterval: 30s
`, noReserved, Config{
			NonMasqueradeCIDRs: prefixes("10.0.0.0/8", "100.64.0.0/10"),
			CIDRLimit:          10, MasqLinkLocal: true, MasqLinkLocalIPv6: true,
			ResyncInterval: 30 * time.Second,
		}},
		{"full json", `{"nonMasqueradeCIDRs": ["10.0.0.0/8", "fd00::/8"], "cidrLimit": 2,
			"masqLinkLocal": false, "masqLinkLocalIPv6": true, "resyncInterval": "5m"}`, withIPv6, Config{
			NonMasqueradeCIDRs: prefixes("10.0.0.0/8", "fd00::/8"),
			CIDRLimit:          2, MasqLinkLocalIPv6: true, ResyncInterval: 5 * time.Minute,
		}},
		{"json indented with tabs", "{\n\t\"cidrLimit\": 3,\n\t\"nonMasqueradeCIDRs\": []\n}\n", noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 3; c.NonMasqueradeCIDRs = []netip.Prefix{} })},
		{"json with a trailing comma is read as yaml", `{"cidrLimit": 3,}`, noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 3 })},
		{"yaml flow mapping", "{nonMasqueradeCIDRs: [192.168.0.0/16], cidrLimit: 1}", noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 1; c.NonMasqueradeCIDRs = prefixes("192.168.0.0/16") })},

		// Keys match case-insensitively (upstream decodes with encoding/json).
		{"keys in other case", `
NonMasqueradeCIDRs: [10.0.0.0/8]
CIDRLIMIT: 7
masqlinklocal: true
MasqLinkLocalIPv6: true
RESYNCINTERVAL: 2s
`, noReserved, Config{
			NonMasqueradeCIDRs: prefixes("10.0.0.0/8"),
			CIDRLimit:          7, MasqLinkLocal: true, MasqLinkLocalIPv6: true,
			ResyncInterval: 2 * time.Second,
		}},
		{"json with Go field names", `{"NonMasqueradeCIDRs":["10.42.0.0/16"],"MasqLinkLocal":true,"ResyncInterval":"1m0s"}`, noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.NonMasqueradeCIDRs = prefixes("10.42.0.0/16")
				c.MasqLinkLocal = true
			})},
		{"last of repeated json key wins", `{"cidrLimit": 1, "CIDRLimit": 5}`, noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 5 })},

		// Unknown keys are ignored and reported.
		{"unknown keys", "snatTarget: 1.2.3.4\nnonMasqueradeCIDR: [1.0.0.0/8]\ncidrLimit: 9\n", noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.CIDRLimit = 9
				c.UnknownKeys = []string{"nonMasqueradeCIDR", "snatTarget"} // YAML keys come sorted
			})},
		{"unknown json keys keep file order", `{"zeta": 1, "alpha": {"x": [1]}}`, noReserved,
			withDefaults(noReserved, func(c *Config) { c.UnknownKeys = []string{"zeta", "alpha"} })},

		// Validation that accepts.
		{"duplicates and overlaps", "nonMasqueradeCIDRs: [10.0.0.0/8, 10.0.0.0/8, 10.1.0.0/16, 0.0.0.0/0]", noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0")
			})},
		{"host routes", "nonMasqueradeCIDRs: [203.0.113.7/32, '2001:db8::1/128']", withIPv6,
			withDefaults(withIPv6, func(c *Config) { c.NonMasqueradeCIDRs = prefixes("203.0.113.7/32", "2001:db8::1/128") })},
		{"ipv6 when enabled", "nonMasqueradeCIDRs: ['fd00::/8', 10.0.0.0/8, '::/0']", withIPv6,
			withDefaults(withIPv6, func(c *Config) { c.NonMasqueradeCIDRs = prefixes("fd00::/8", "10.0.0.0/8", "::/0") })},
		{"exactly cidrLimit", "cidrLimit: 2\nnonMasqueradeCIDRs: [10.0.0.0/8, 10.0.0.0/8]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 2; c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8", "10.0.0.0/8") })},
		{"cidrLimit 0 with empty list", "cidrLimit: 0\nnonMasqueradeCIDRs: []", noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 0; c.NonMasqueradeCIDRs = []netip.Prefix{} })},
		{"prefix length with leading zero, as net.ParseCIDR", "nonMasqueradeCIDRs: [10.0.0.0/08]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8") })},
		{"large limit", "cidrLimit: 100000", noReserved, withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 100000 })},
		{"only the first yaml document counts", "cidrLimit: 3\n---\ncidrLimit: bad\n", noReserved,
			withDefaults(noReserved, func(c *Config) { c.CIDRLimit = 3 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireParses(t, tc.doc, tc.o, tc.want)
		})
	}
}

func TestParseRejects(t *testing.T) {
	many := make([]string, 30)
	for i := range many {
		many[i] = fmt.Sprintf("10.0.%d.1/16", i)
	}
	for _, tc := range []rejected{
		// CIDR syntax and alignment.
		{"not aligned", "nonMasqueradeCIDRs: [10.0.0.1/8]", noReserved, []string{`"10.0.0.1/8"`, "10.0.0.0/8", "not aligned"}},
		{"not aligned ipv6", "nonMasqueradeCIDRs: ['fd00::1/8']", withIPv6, []string{`"fd00::1/8"`, "fd00::/8"}},
		{"no prefix length", "nonMasqueradeCIDRs: [10.0.0.0]", noReserved, []string{`"10.0.0.0"`, "could not be parsed"}},
		{"prefix too long", "nonMasqueradeCIDRs: [10.0.0.0/33]", noReserved, []string{`"10.0.0.0/33"`}},
		{"garbage", "nonMasqueradeCIDRs: [not-a-cidr]", noReserved, []string{`"not-a-cidr"`}},
		{"empty string", `nonMasqueradeCIDRs: [""]`, noReserved, []string{`CIDR ""`}},
		{"null item", "nonMasqueradeCIDRs: [null]", noReserved, []string{`CIDR ""`}},
		{"spaces inside quotes", `nonMasqueradeCIDRs: [" 10.0.0.0/8"]`, noReserved, []string{`" 10.0.0.0/8"`}},
		{"leading zero octet", "nonMasqueradeCIDRs: [010.0.0.0/8]", noReserved, []string{`"010.0.0.0/8"`}},
		{"ipv4-mapped ipv6", "nonMasqueradeCIDRs: ['::ffff:10.0.0.0/104']", withIPv6, []string{"IPv4-mapped", "10.0.0.0/8"}},
		{"number item", "nonMasqueradeCIDRs: [10]", noReserved, []string{"nonMasqueradeCIDRs", "list of CIDR strings"}},
		{"string instead of list", "nonMasqueradeCIDRs: 10.0.0.0/8", noReserved, []string{"nonMasqueradeCIDRs", "list of CIDR strings", "a string"}},

		// IPv6 without --enable-ipv6.
		{"ipv6 not enabled", "nonMasqueradeCIDRs: ['fd00::/8']", noReserved, []string{`"fd00::/8"`, "--enable-ipv6"}},
		{"ipv6 not enabled, any-address", "nonMasqueradeCIDRs: ['::/0']", allRanges, []string{`"::/0"`, "--enable-ipv6"}},

		// cidrLimit.
		{"more than cidrLimit", "cidrLimit: 2\nnonMasqueradeCIDRs: [10.0.0.0/8, 11.0.0.0/8, 12.0.0.0/8]", noReserved,
			[]string{"3 CIDRs", "cidrLimit 2"}},
		{"duplicates count towards cidrLimit", "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8, 10.0.0.0/8]", noReserved,
			[]string{"2 CIDRs", "cidrLimit 1"}},
		{"cidrLimit applies to the default list", "cidrLimit: 2", noReserved, []string{"3 CIDRs", "cidrLimit 2"}},
		{"cidrLimit applies to the reserved default list", "cidrLimit: 10", allRanges, []string{"11 CIDRs", "cidrLimit 10"}},
		{"negative cidrLimit", "cidrLimit: -1\nnonMasqueradeCIDRs: []", noReserved, []string{"cidrLimit", "negative", "-1"}},
		{"cidrLimit as string", `cidrLimit: "64"`, noReserved, []string{"cidrLimit", "integer", `"64"`}},
		{"cidrLimit fractional", "cidrLimit: 1.5", noReserved, []string{"cidrLimit", "integer"}},

		// Booleans.
		{"masqLinkLocal not a bool", "masqLinkLocal: maybe", noReserved, []string{"masqLinkLocal", "true or false"}},
		{"masqLinkLocalIPv6 quoted bool", `masqLinkLocalIPv6: "true"`, noReserved, []string{"masqLinkLocalIPv6", "true or false"}},

		// resyncInterval.
		{"bare number", "resyncInterval: 60", noReserved, []string{"resyncInterval", "duration string", "a number 60"}},
		{"number in a string", `resyncInterval: "60"`, noReserved, []string{"resyncInterval", "missing unit"}},
		{"bad duration", "resyncInterval: soon", noReserved, []string{"resyncInterval", "duration"}},
		{"zero", "resyncInterval: 0s", noReserved, []string{"resyncInterval must be positive", "0s"}},
		{"negative", "resyncInterval: -5s", noReserved, []string{"resyncInterval must be positive", "-5s"}},
		{"list", "resyncInterval: [1s]", noReserved, []string{"resyncInterval", "a list"}},

		// Document shape.
		{"top-level list", "- 10.0.0.0/8", noReserved, []string{"mapping", "a list"}},
		{"top-level string", "hello", noReserved, []string{"mapping", "a string"}},
		{"top-level number", "42", noReserved, []string{"mapping", "a number"}},
		{"broken yaml", "nonMasqueradeCIDRs: [10.0.0.0/8", noReserved, []string{"YAML"}},
		{"unclosed json", `{"cidrLimit": 3`, noReserved, []string{"YAML"}},
		{"tab indented yaml", "nonMasqueradeCIDRs:\n\t- 10.0.0.0/8\n", noReserved, []string{"YAML"}},

		// One error lists every problem.
		{"every problem at once", `
nonMasqueradeCIDRs: [10.0.0.1/8, 'fd00::/8', bad]
cidrLimit: 1
masqLinkLocal: 3
resyncInterval: 0s
`, noReserved, []string{`"10.0.0.1/8"`, `"fd00::/8"`, `"bad"`, "3 CIDRs", "masqLinkLocal", "resyncInterval must be positive"}},
		{"long lists of bad CIDRs are cut short", "nonMasqueradeCIDRs: [" + strings.Join(many, ", ") + "]\ncidrLimit: 100", noReserved,
			[]string{`"10.0.0.1/16"`, `"10.0.19.1/16"`, "and 10 more invalid CIDRs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireRejected(t, tc.doc, tc.o, tc.want...)
		})
	}
}

func TestParseCutsShortLongErrorLists(t *testing.T) {
	var b strings.Builder
	b.WriteString("nonMasqueradeCIDRs:\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "- 10.%d.%d.1/16\n", i/256, i%256)
	}
	b.WriteString("cidrLimit: 10000\n")
	_, err := Parse([]byte(b.String()), noReserved)
	if err == nil {
		t.Fatal("want an error")
	}
	if lines := strings.Count(err.Error(), "\n") + 1; lines != maxCIDRErrors+1 {
		t.Errorf("error has %d lines, want %d:\n%v", lines, maxCIDRErrors+1, err)
	}
}

func TestParseManyCIDRs(t *testing.T) {
	// The datapath is sized for 10,000 CIDRs; the file must carry them.
	var b strings.Builder
	b.WriteString("cidrLimit: 10000\nnonMasqueradeCIDRs:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "- 10.%d.%d.0/24\n", i/256, i%256)
	}
	c, err := Parse([]byte(b.String()), noReserved)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.NonMasqueradeCIDRs) != 10000 {
		t.Errorf("got %d CIDRs, want 10000", len(c.NonMasqueradeCIDRs))
	}
	if _, err := Parse([]byte(strings.Replace(b.String(), "cidrLimit: 10000", "cidrLimit: 9999", 1)), noReserved); err == nil ||
		!strings.Contains(err.Error(), "10000 CIDRs") || !strings.Contains(err.Error(), "cidrLimit 9999") {
		t.Errorf("one over the limit: got %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()

	t.Run("missing file means defaults", func(t *testing.T) {
		for _, o := range []Options{noReserved, allRanges} {
			got, err := Load(filepath.Join(dir, "absent"), o)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, Default(o)) {
				t.Errorf("got %+v, want defaults %+v", got, Default(o))
			}
		}
	})

	t.Run("missing directory means defaults", func(t *testing.T) {
		got, err := Load(filepath.Join(dir, "no-such-dir", "ip-masq-agent"), noReserved)
		if err != nil || !reflect.DeepEqual(got, Default(noReserved)) {
			t.Errorf("got %+v, %v; want defaults", got, err)
		}
	})

	t.Run("dangling symlink means defaults", func(t *testing.T) {
		// What a ConfigMap volume shows when its key has gone.
		link := filepath.Join(dir, "dangling")
		if err := os.Symlink(filepath.Join(dir, "..data", "gone"), link); err != nil {
			t.Fatal(err)
		}
		got, err := Load(link, noReserved)
		if err != nil || !reflect.DeepEqual(got, Default(noReserved)) {
			t.Errorf("got %+v, %v; want defaults", got, err)
		}
	})

	t.Run("file is read", func(t *testing.T) {
		path := filepath.Join(dir, "ip-masq-agent")
		writeFile(t, path, "nonMasqueradeCIDRs: [10.0.0.0/8]\nresyncInterval: 10s\n")
		got, err := Load(path, allRanges)
		if err != nil {
			t.Fatal(err)
		}
		want := withDefaults(allRanges, func(c *Config) {
			c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8")
			c.ResyncInterval = 10 * time.Second
		})
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})

	t.Run("empty file means defaults", func(t *testing.T) {
		path := filepath.Join(dir, "empty")
		writeFile(t, path, "")
		got, err := Load(path, allRanges)
		if err != nil || !reflect.DeepEqual(got, Default(allRanges)) {
			t.Errorf("got %+v, %v; want defaults", got, err)
		}
	})

	t.Run("invalid file names the path", func(t *testing.T) {
		path := filepath.Join(dir, "bad")
		writeFile(t, path, "nonMasqueradeCIDRs: [10.0.0.1/8]\n")
		_, err := Load(path, noReserved)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "10.0.0.0/8") {
			t.Errorf("got %v, want an error naming %s and the network", err, path)
		}
	})

	t.Run("directory is an error", func(t *testing.T) {
		if _, err := Load(dir, noReserved); err == nil {
			t.Error("reading a directory: want an error")
		}
	})
}

func TestEffective(t *testing.T) {
	for _, tc := range []struct {
		name       string
		c          Config
		enableIPv6 bool
		v4, v6     []string
	}{
		{
			name: "defaults add link-local",
			c:    Default(noReserved),
			v4:   []string{"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"},
			v6:   []string{},
		},
		{
			name:       "defaults with ipv6 add fe80::/10",
			c:          Default(noReserved),
			enableIPv6: true,
			v4:         []string{"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"},
			v6:         []string{"fe80::/10"},
		},
		{
			name: "empty list masquerades everything but link-local",
			c:    Config{NonMasqueradeCIDRs: []netip.Prefix{}},
			v4:   []string{"169.254.0.0/16"},
			v6:   []string{},
		},
		{
			name:       "masqLinkLocal and masqLinkLocalIPv6 drop link-local",
			c:          Config{MasqLinkLocal: true, MasqLinkLocalIPv6: true},
			enableIPv6: true,
			v4:         []string{},
			v6:         []string{},
		},
		{
			name:       "masqLinkLocal alone keeps fe80::/10",
			c:          Config{MasqLinkLocal: true},
			enableIPv6: true,
			v4:         []string{},
			v6:         []string{"fe80::/10"},
		},
		{
			name:       "families are split, duplicates removed",
			c:          Config{NonMasqueradeCIDRs: prefixes("10.0.0.0/8", "fd00::/8", "10.0.0.0/8", "169.254.0.0/16", "fe80::/10", "10.1.0.0/16")},
			enableIPv6: true,
			v4:         []string{"169.254.0.0/16", "10.0.0.0/8", "10.1.0.0/16"},
			v6:         []string{"fe80::/10", "fd00::/8"},
		},
		{
			name: "ipv6 is left out unless enabled",
			c:    Config{NonMasqueradeCIDRs: prefixes("fd00::/8", "10.0.0.0/8")},
			v4:   []string{"169.254.0.0/16", "10.0.0.0/8"},
			v6:   []string{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6 := tc.c.Effective(tc.enableIPv6)
			if !reflect.DeepEqual(v4, prefixes(tc.v4...)) {
				t.Errorf("v4 = %v, want %v", v4, tc.v4)
			}
			if !reflect.DeepEqual(v6, prefixes(tc.v6...)) {
				t.Errorf("v6 = %v, want %v", v6, tc.v6)
			}
		})
	}
}

func TestEffectiveDoesNotChangeConfig(t *testing.T) {
	c := Config{NonMasqueradeCIDRs: prefixes("10.0.0.0/8", "10.0.0.0/8")}
	c.Effective(true)
	if !reflect.DeepEqual(c.NonMasqueradeCIDRs, prefixes("10.0.0.0/8", "10.0.0.0/8")) {
		t.Errorf("Effective changed the configured list: %v", c.NonMasqueradeCIDRs)
	}
}
