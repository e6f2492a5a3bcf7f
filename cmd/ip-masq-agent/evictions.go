package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// evictionCollector serves the LRU maps' evictions that the last pass of
// maps.LRUEvictions derived (docs/behaviour.md §14.1).
type evictionCollector struct {
	ev   *maps.LRUEvictions
	desc *prometheus.Desc
}

func newEvictionCollector(ev *maps.LRUEvictions) *evictionCollector {
	return &evictionCollector{ev: ev, desc: prometheus.NewDesc(metricsNamespace+"_lru_evictions_total",
		"Entries the datapath's LRU maps evicted to make room for new ones, by map (hostres: host reservations, inbound: flows opened from outside, nomasq_tcp: connections opened non-masqueraded, frag: first fragments) and family; derived every --gc-interval as entries added minus removed minus left, counted from the agent's start.",
		[]string{"map", "family"}, nil)}
}

func (c *evictionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *evictionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.ev.Read() {
		fam := "ipv4"
		if e.Family == maps.IPv6 {
			fam = "ipv6"
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(e.Evicted), e.Map, fam)
	}
}

// trackEvictions serves ip_masq_agent_lru_evictions_total from reg and
// brings it up to date now (the base the counts start from) and then every
// interval until ctx ends. It walks the LRU maps on its own, apart from the
// expiry, and reads the removals of the expiry's NAT tables and record maps
// that ev was made with. The channel it returns closes once the goroutine
// has ended (after ctx), so the maps stay open until then.
func trackEvictions(ctx context.Context, reg prometheus.Registerer, ev *maps.LRUEvictions, interval time.Duration) <-chan struct{} {
	reg.MustRegister(newEvictionCollector(ev))
	update := func() {
		if err := ev.Update(); err != nil {
			klog.ErrorS(err, "Counting LRU map evictions failed")
		}
	}
	update()
	done := make(chan struct{})
	go func() {
		defer close(done)
		everyTick(ctx, interval, func() {
			update()
			klog.V(4).InfoS("Counted LRU map evictions", "evictions", ev.Read())
		})
	}()
	return done
}
