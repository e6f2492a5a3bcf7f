package main

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// expiryTables are the values of the table label, in pass order.
var expiryTables = []string{"nat_ipv4", "inbound_ipv4", "exempt_ipv4", "nat_ipv6", "inbound_ipv6", "exempt_ipv6"}

// expiryMetrics say whether the expiry keeps up (docs/behaviour.md §14): a
// table whose pass fails or stalls fills up until new flows are dropped.
type expiryMetrics struct {
	duration *prometheus.HistogramVec
	scanned  *prometheus.CounterVec
	failures *prometheus.CounterVec
	lastOK   *prometheus.GaugeVec
}

func newExpiryMetrics(reg *prometheus.Registry) *expiryMetrics {
	m := &expiryMetrics{}
	m.duration = prometheus.NewHistogramVec(histogramOpts("expiry_pass_duration_seconds",
		"Time one expiry pass took over a table, the pauses that spread it over half of --gc-interval included.",
		prometheus.ExponentialBuckets(0.001, 4, 10)), []string{"table"}) // 1 ms to 262 s
	m.scanned = newCounterVec("expiry_entries_scanned_total",
		"Entries the expiry read, by table.", "table")
	m.failures = newCounterVec("expiry_failures_total",
		"Expiry passes over a table that failed, by table and reason: read (the map could not be read to its end), delete (an expired entry could not be deleted), settle (the /24 table was not updated after the nat_ipv4 pass).", "table", "reason")
	m.lastOK = newGaugeVec("expiry_last_success_timestamp_seconds",
		"Unix time of the end of the last expiry pass over a table that succeeded; 0 before the first.", "table")
	for _, t := range expiryTables {
		m.scanned.WithLabelValues(t)
		m.lastOK.WithLabelValues(t)
		for _, r := range []string{failRead, failDelete} {
			m.failures.WithLabelValues(t, r) // every series from the start, at 0
		}
	}
	m.failures.WithLabelValues("nat_ipv4", failSettle)
	reg.MustRegister(m.duration, m.scanned, m.failures, m.lastOK)
	return m
}

// collected records one table's collection.
func (m *expiryMetrics) collected(r tableResult) {
	m.duration.WithLabelValues(r.table).Observe(r.took.Seconds())
	m.scanned.WithLabelValues(r.table).Add(float64(r.scanned))
	if r.reason != "" {
		m.failures.WithLabelValues(r.table, r.reason).Inc()
		return
	}
	m.lastOK.WithLabelValues(r.table).SetToCurrentTime()
}

// natPasses keeps the counts of the last complete pass over each family's
// NAT table for the scrape: the expiry goroutine writes them, the scrape
// reads them, and a scrape costs nothing at any table size.
type natPasses struct {
	mu   sync.Mutex
	last map[string]maps.PassStats // by family
}

func (n *natPasses) store(family string, s maps.PassStats) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.last == nil {
		n.last = map[string]maps.PassStats{}
	}
	n.last[family] = s
}

// load returns the family's last complete pass; false before the first.
func (n *natPasses) load(family string) (maps.PassStats, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, ok := n.last[family]
	return s, ok
}
