package main

import (
	"math"
	"os"
	"testing"
)

// The pass duration is read from whichever form the agent exports, and of
// per-family series the one that spent the time.
func TestExpiryFromMetrics(t *testing.T) {
	before := parseMetrics(`# TYPE ip_masq_agent_expiry_pass_duration_seconds histogram
ip_masq_agent_expiry_pass_duration_seconds_sum{family="ipv4"} 2
ip_masq_agent_expiry_pass_duration_seconds_count{family="ipv4"} 4
ip_masq_agent_expiry_pass_duration_seconds_sum{family="ipv6"} 0.001
ip_masq_agent_expiry_pass_duration_seconds_count{family="ipv6"} 4
`)
	after := parseMetrics(`ip_masq_agent_expiry_pass_duration_seconds_bucket{family="ipv4",le="+Inf"} 7
ip_masq_agent_expiry_pass_duration_seconds_sum{family="ipv4"} 11
ip_masq_agent_expiry_pass_duration_seconds_count{family="ipv4"} 7
ip_masq_agent_expiry_pass_duration_seconds_sum{family="ipv6"} 0.002
ip_masq_agent_expiry_pass_duration_seconds_count{family="ipv6"} 7
`)
	for _, c := range []struct {
		name          string
		before, after map[string]float64
		want          float64
	}{
		{"histogram, between the scrapes", before, after, 3},
		{"histogram, no earlier scrape", nil, after, 11.0 / 7},
		{"gauge", nil, parseMetrics("ip_masq_agent_expiry_pass_duration_seconds 0.25\n"), 0.25},
		{"none", nil, parseMetrics("ip_masq_agent_nat_entries{family=\"ipv4\"} 10\n"), 0},
	} {
		if got := expiryFromMetrics(c.before, c.after); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCPUSecondsOfThisProcess(t *testing.T) {
	if _, err := cpuSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
