package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

func TestParseExplainArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"10.244.1.2", "203.0.113.10"}, ""},
		{[]string{"10.244.1.2", "203.0.113.10", "TCP", "443"}, ""},
		{[]string{"fd00::2", "2001:db8::1", "icmp"}, ""},
		{[]string{"10.244.1.2"}, "SRC DST"},
		{[]string{"10.244.1.2", "203.0.113.10", "tcp", "443", "extra"}, "SRC DST"},
		{[]string{"pod", "203.0.113.10"}, `source "pod"`},
		{[]string{"10.244.1.2", "2001:db8::1"}, "different families"},
		{[]string{"10.244.1.2", "203.0.113.10", "sctp"}, `"sctp"`},
		{[]string{"10.244.1.2", "203.0.113.10", "tcp", "0"}, "port"},
		{[]string{"10.244.1.2", "203.0.113.10", "tcp", "65536"}, "port"},
		{[]string{"10.244.1.2", "203.0.113.10", "icmp", "8"}, "port"},
	} {
		_, err := parseExplainArgs(tc.args)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parseExplainArgs(%q) = %v, want %q", tc.args, err, tc.err)
		}
	}
}

// The verdict follows the datapath's order for a new flow.
func TestExplainVerdict(t *testing.T) {
	addr := "172.31.0.2"
	managed := &explainInterface{Name: "eth0", Managed: true, MasqueradeAddress: &addr}
	q4 := explainQuery{src: netip.MustParseAddr("10.244.1.2"), dst: netip.MustParseAddr("10.20.0.7")}
	q6 := explainQuery{src: netip.MustParseAddr("fd00::2"), dst: netip.MustParseAddr("2001:db8::1")}
	no, yes := false, true
	for _, tc := range []struct {
		name string
		a    explainAnswer
		ipv6 bool
		q    explainQuery
		want string
		why  string
	}{
		{"exception", explainAnswer{Interface: managed, DecidedBy: &explainPrefix{"10.20.0.0/16", "masqueradeCIDRs", true},
			Overrides: &explainPrefix{"10.0.0.0/8", "nonMasqueradeCIDRs", false}}, false, q4, "masquerade", "wins over the shorter 10.0.0.0/8"},
		{"non-masquerade", explainAnswer{Interface: managed, DecidedBy: &explainPrefix{"10.0.0.0/8", "nonMasqueradeCIDRs", false}}, false, q4, "keep", "10.0.0.0/8 of nonMasqueradeCIDRs"},
		{"no prefix", explainAnswer{Interface: managed}, false, q4, "masquerade", "no non-masquerade prefix"},
		{"ipv6 off", explainAnswer{Interface: managed}, false, q6, "keep", "--enable-ipv6"},
		{"ipv6 on", explainAnswer{Interface: managed}, true, q6, "masquerade", "leaves eth0 as 172.31.0.2"},
		{"unmanaged", explainAnswer{Interface: &explainInterface{Name: "cni0"}}, false, q4, "keep", "does not manage"},
		{"node source", explainAnswer{Interface: managed, SourceIsNode: true}, false, q4, "keep", "address of the node"},
		{"outside source cidrs", explainAnswer{Interface: managed, SourceCIDRs: &no}, false, q4, "keep", "--source-cidrs"},
		{"inside source cidrs", explainAnswer{Interface: managed, SourceCIDRs: &yes}, false, q4, "masquerade", "leaves eth0"},
		{"no address", explainAnswer{Interface: &explainInterface{Name: "eth0", Managed: true}}, false, q4, "drop", "dropped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := verdictOf(tc.a, tc.ipv6, tc.q, nil)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("verdict %s (%s), want %s mentioning %q", got, why, tc.want, tc.why)
			}
		})
	}
}

// The JSON output is one object with exactly the documented fields, the
// flows last, each with exactly the flow object's fields.
func TestExplainJSONShape(t *testing.T) {
	now := maps.Now()
	a := explainAnswer{Source: "10.244.1.2", Destination: "203.0.113.10", Family: "ipv4", Proto: "tcp", Verdict: "masquerade",
		flows: []maps.Flow{{Proto: 6, Pod: netip.MustParseAddrPort("10.244.1.2:40000"), Remote: netip.MustParseAddrPort("203.0.113.10:443"),
			Node: netip.MustParseAddrPort("172.31.0.2:51234"), Replied: true, HasIn: true, LastSeen: now - 12300*time.Millisecond}}}
	var b bytes.Buffer
	if err := writeExplainJSON(&b, a, timeoutsOf(newTestFlags(t))); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	for _, k := range []string{"source", "destination", "family", "proto", "port", "verdict", "reason", "decided_by", "overrides",
		"source_is_node", "source_in_source_cidrs", "interface", "flows"} {
		if _, ok := got[k]; !ok {
			t.Errorf("no field %q in %s", k, b.String())
		}
	}
	if len(got) != 13 {
		t.Errorf("%d fields, want 13: %s", len(got), b.String())
	}
	flows, _ := got["flows"].([]any)
	if len(flows) != 1 {
		t.Fatalf("flows %v", got["flows"])
	}
	f := flows[0].(map[string]any)
	want := map[string]any{"family": "ipv4", "proto": "tcp", "pod": "10.244.1.2:40000", "remote": "203.0.113.10:443",
		"node": "172.31.0.2:51234", "state": "established", "replied": true}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("flow %s = %v, want %v", k, f[k], v)
		}
	}
	if len(f) != 9 {
		t.Errorf("flow has %d fields, want 9: %v", len(f), f)
	}
	if idle := f["idle_seconds"].(float64); idle < 12.3 || idle > 13 {
		t.Errorf("idle_seconds %v, want about 12.3", idle)
	}
	if left := f["expires_in_seconds"].(float64); left < 6*3600-13 || left > 6*3600-12.3 {
		t.Errorf("expires_in_seconds %v, want 6 h less the idle time", left)
	}
}

// newTestFlags returns the flags at their defaults.
func newTestFlags(t *testing.T) *config.Flags {
	t.Helper()
	fs, f := config.NewFlagSet("test")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	return f
}
