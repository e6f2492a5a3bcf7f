package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

func TestMasqueradeCIDRsAccepted(t *testing.T) {
	for _, tc := range []accepted{
		{"absent: no exceptions", "nonMasqueradeCIDRs: [10.0.0.0/8]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8") })},
		{"yaml block list inside a default range", "masqueradeCIDRs:\n  - 10.1.2.0/24\n  - 192.168.7.7/32\n", noReserved,
			withDefaults(noReserved, func(c *Config) { c.MasqueradeCIDRs = prefixes("10.1.2.0/24", "192.168.7.7/32") })},
		{"yaml flow list, key in other case", "MasqueradeCidrs: [10.1.2.0/24]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.MasqueradeCIDRs = prefixes("10.1.2.0/24") })},
		{"json", `{"nonMasqueradeCIDRs": ["10.0.0.0/8"], "masqueradeCIDRs": ["10.1.2.0/24"]}`, noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8")
				c.MasqueradeCIDRs = prefixes("10.1.2.0/24")
			})},
		{"ipv6 with --enable-ipv6", "nonMasqueradeCIDRs: ['fd00::/8']\nmasqueradeCIDRs: ['fd00:1::/64']", withIPv6,
			withDefaults(withIPv6, func(c *Config) {
				c.NonMasqueradeCIDRs = prefixes("fd00::/8")
				c.MasqueradeCIDRs = prefixes("fd00:1::/64")
			})},
		{"null and empty list mean none", "masqueradeCIDRs: null", noReserved, Default(noReserved)},
		{"empty list", "masqueradeCIDRs: []", noReserved, Default(noReserved)},
		{"an exception inside link-local", "masqueradeCIDRs: [169.254.169.254/32]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.MasqueradeCIDRs = prefixes("169.254.169.254/32") })},
		{"link-local itself once masqLinkLocal is true", "masqLinkLocal: true\nmasqueradeCIDRs: [169.254.0.0/16]", noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.MasqLinkLocal = true
				c.MasqueradeCIDRs = prefixes("169.254.0.0/16")
			})},
		{"shorter than a non-masquerade prefix is no conflict", "nonMasqueradeCIDRs: [10.1.0.0/16]\nmasqueradeCIDRs: [10.0.0.0/8]", noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.NonMasqueradeCIDRs = prefixes("10.1.0.0/16")
				c.MasqueradeCIDRs = prefixes("10.0.0.0/8")
			})},
		{"both lists exactly at cidrLimit", "cidrLimit: 3\nnonMasqueradeCIDRs: [10.0.0.0/8, 11.0.0.0/8]\nmasqueradeCIDRs: [10.1.0.0/16]", noReserved,
			withDefaults(noReserved, func(c *Config) {
				c.CIDRLimit = 3
				c.NonMasqueradeCIDRs = prefixes("10.0.0.0/8", "11.0.0.0/8")
				c.MasqueradeCIDRs = prefixes("10.1.0.0/16")
			})},
		{"duplicates within the exceptions", "masqueradeCIDRs: [10.1.0.0/16, 10.1.0.0/16]", noReserved,
			withDefaults(noReserved, func(c *Config) { c.MasqueradeCIDRs = prefixes("10.1.0.0/16", "10.1.0.0/16") })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireParses(t, tc.doc, tc.o, tc.want)
			sameBothWays(t, []byte(tc.doc), tc.o)
		})
	}
}

func TestMasqueradeCIDRsRejected(t *testing.T) {
	for _, tc := range []rejected{
		{"same prefix in both lists", "nonMasqueradeCIDRs: [10.0.0.0/8, 10.1.0.0/16]\nmasqueradeCIDRs: [10.1.0.0/16]", noReserved,
			[]string{"10.1.0.0/16", "both masqueradeCIDRs and nonMasqueradeCIDRs"}},
		{"same prefix as a default range", "masqueradeCIDRs: [192.168.0.0/16]", noReserved,
			[]string{"192.168.0.0/16", "both"}},
		{"same prefix as a reserved default range", "masqueradeCIDRs: [203.0.113.0/24]", allRanges,
			[]string{"203.0.113.0/24", "both"}},
		{"same ipv6 prefix in both lists", "nonMasqueradeCIDRs: ['fd00::/8']\nmasqueradeCIDRs: ['fd00::/8']", withIPv6,
			[]string{"fd00::/8", "both"}},
		{"link-local itself", "masqueradeCIDRs: [169.254.0.0/16]", noReserved,
			[]string{"169.254.0.0/16", "masqLinkLocal: true"}},
		{"ipv6 link-local itself", "masqueradeCIDRs: ['fe80::/10']", withIPv6,
			[]string{"fe80::/10", "masqLinkLocalIPv6: true"}},
		{"not aligned", "masqueradeCIDRs: [10.1.2.3/24]", noReserved, []string{`"10.1.2.3/24"`, "10.1.2.0/24", "not aligned"}},
		{"garbage", "masqueradeCIDRs: [nope]", noReserved, []string{`"nope"`}},
		{"ipv6 not enabled", "masqueradeCIDRs: ['fd00::/64']", noReserved, []string{`"fd00::/64"`, "--enable-ipv6"}},
		{"not a list", "masqueradeCIDRs: 10.1.0.0/16", noReserved, []string{"masqueradeCIDRs", "list of CIDR strings"}},
		{"both lists over cidrLimit", "cidrLimit: 2\nnonMasqueradeCIDRs: [10.0.0.0/8, 11.0.0.0/8]\nmasqueradeCIDRs: [10.1.0.0/16]", noReserved,
			[]string{"3 CIDRs together", "2 and 1", "cidrLimit 2"}},
		{"exceptions count with the default list", "cidrLimit: 3\nmasqueradeCIDRs: [10.1.0.0/16]", noReserved,
			[]string{"4 CIDRs together", "3 and 1", "cidrLimit 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireRejected(t, tc.doc, tc.o, tc.want...)
		})
	}
}

func TestExceptionsSplitsFamilies(t *testing.T) {
	c := Config{MasqueradeCIDRs: prefixes("10.1.0.0/16", "fd00:1::/64", "10.1.0.0/16", "10.2.0.0/16")}
	v4, v6 := c.Exceptions(true)
	if !reflect.DeepEqual(v4, prefixes("10.1.0.0/16", "10.2.0.0/16")) || !reflect.DeepEqual(v6, prefixes("fd00:1::/64")) {
		t.Errorf("Exceptions(true) = %v, %v", v4, v6)
	}
	v4, v6 = c.Exceptions(false)
	if len(v4) != 2 || len(v6) != 0 || v6 == nil {
		t.Errorf("Exceptions(false) = %v, %v; want two IPv4 and an empty, non-nil IPv6", v4, v6)
	}
}

func TestYAMLRoundTrips(t *testing.T) {
	for _, o := range []Options{noReserved, allRanges, withIPv6} {
		for _, doc := range []string{"", "nonMasqueradeCIDRs: []", "masqLinkLocal: true\nresyncInterval: 1m30s\ncidrLimit: 19",
			"nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.1.0.0/16, 10.2.3.4/32]"} {
			c, err := Parse([]byte(doc), o)
			if err != nil {
				t.Fatalf("Parse(%q): %v", doc, err)
			}
			back, err := Parse(c.YAML(), o)
			if err != nil || !reflect.DeepEqual(back, c) {
				t.Errorf("Parse(YAML of %q) = %+v, %v; want %+v\n%s", doc, back, err, c, c.YAML())
			}
		}
	}
}

// FuzzParse: the parser never panics, and a document it accepts means the
// same when written back out, in YAML and in JSON.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "null", "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.1.0.0/16]",
		"masqueradeCIDRs:\n  - 10.1.2.0/24  # partner\ncidrLimit: 10\n",
		`{"masqueradeCIDRs": ["fd00::/64"], "nonMasqueradeCIDRs": ["fd00::/8"], "masqLinkLocalIPv6": true}`,
		"masqLinkLocal: true\nmasqueradeCIDRs: [169.254.0.0/16]\nresyncInterval: 5s",
		"nonMasqueradeCIDRs: ~\nMASQUERADECIDRS: []\nunknown: 1",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, doc []byte, ipv6 bool) {
		o := Options{EnableIPv6: ipv6}
		c, err := Parse(doc, o)
		if err != nil {
			return
		}
		c.UnknownKeys = nil
		back, err := Parse(c.YAML(), o)
		if err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("accepted %q as %+v, but its YAML %q parses as %+v, %v", doc, c, c.YAML(), back, err)
		}
		js, err := json.Marshal(map[string]any{
			keyNonMasqueradeCIDRs: c.NonMasqueradeCIDRs, keyMasqueradeCIDRs: c.MasqueradeCIDRs,
			keyCIDRLimit: c.CIDRLimit, keyMasqLinkLocal: c.MasqLinkLocal, keyMasqLinkLocalIPv6: c.MasqLinkLocalIPv6,
			keyResyncInterval: c.ResyncInterval.String(),
		})
		if err != nil {
			t.Fatal(err)
		}
		back, err = Parse(js, o)
		if err != nil {
			t.Fatalf("accepted %q, but its JSON %s is rejected: %v", doc, js, err)
		}
		if fmt.Sprint(back) != fmt.Sprint(c) {
			t.Fatalf("accepted %q as %+v, but its JSON %s parses as %+v", doc, c, js, back)
		}
	})
}
