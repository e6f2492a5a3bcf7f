package main

import (
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// metricsNamespace prefixes every metric of the agent.
const metricsNamespace = "ip_masq_agent"

// Outcomes of a configuration sync, the values of the result label.
const (
	syncSuccess = "success" // the file (or the defaults, without a file) is in force
	syncInvalid = "invalid" // the file was rejected; the last good config stays
	syncError   = "error"   // the file was valid, writing it to the datapath failed
)

// syncResult is what one full read and apply of the config file did.
type syncResult struct {
	outcome string
	took    time.Duration
	err     error        // why, unless outcome is syncSuccess
	applied maps.CIDRSet // the set now in force, when one was written
}

// agentMetrics are the agent's Prometheus metrics (docs/behaviour.md §14). Datapath
// counters and attachments are read from the maps at every scrape; the NAT
// table's counts come from the last expiry pass (reading a million entries
// at every scrape would cost seconds); the config sync and expiry metrics
// are pushed by their loops.
type agentMetrics struct {
	reg *prometheus.Registry

	configSyncs     *prometheus.CounterVec
	configDuration  prometheus.Histogram
	configLastOK    prometheus.Gauge
	configRejected  prometheus.Gauge
	cidrs           *prometheus.GaugeVec
	natExpired      prometheus.Counter
	masqAddrMissing *prometheus.GaugeVec
	expiry          *expiryMetrics
	localStored     *prometheus.GaugeVec
	localDropped    *prometheus.GaugeVec

	datapath datapathCollector
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	m.configSyncs = newCounterVec("config_syncs_total",
		"Full reads of the config file, by result: success (applied), invalid (rejected, the last good config stays in force), error (valid, but writing the datapath failed).", "result")
	for _, r := range []string{syncSuccess, syncInvalid, syncError} {
		m.configSyncs.WithLabelValues(r) // show every result from the start, at 0
	}
	m.configDuration = prometheus.NewHistogram(histogramOpts("config_sync_duration_seconds",
		"Time to read, validate and apply the config file.",
		prometheus.ExponentialBuckets(0.0005, 4, 9))) // 0.5 ms to 33 s
	m.configLastOK = newGauge("config_last_success_timestamp_seconds",
		"Unix time of the last sync that applied the config file; 0 before the first.")
	m.configRejected = newGauge("config_rejected",
		"1 while the config file in place is rejected and the last good configuration stays in force, else 0.")
	m.cidrs = newGaugeVec("nonmasquerade_cidrs",
		"Prefixes in the active non-masquerade set, by family (ipv4, ipv6) and origin (configured in the file, or link_local: 169.254.0.0/16 unless masqLinkLocal, fe80::/10 unless masqLinkLocalIPv6; masquerade: the exceptions of masqueradeCIDRs, which are masqueraded).", "family", "origin")
	m.natExpired = newCounter("nat_expired_total",
		"NAT table entries removed by the agent's expiry (whole flows and host reservations).")
	m.masqAddrMissing = newGaugeVec("masquerade_address_missing",
		"1 while an address chosen with --masquerade-address is not on its interface (new flows of its family through it are dropped), else 0.", "interface", "address")
	m.localStored = newGaugeVec("local_addresses",
		"Addresses of the node that the datapath knows as the host's, by family.", "family")
	m.localDropped = newGaugeVec("local_addresses_dropped",
		"Addresses of the node left out of the datapath's map because it is full, by family: host traffic from them is masqueraded like a pod's.", "family")
	for _, f := range []string{"ipv4", "ipv6"} {
		m.localDropped.WithLabelValues(f) // 0 from the start, for alerts
	}
	buildInfo := newGaugeVec("build_info",
		"Always 1; the labels say which build runs.", "version", "goversion")
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)

	m.reg.MustRegister(m.configSyncs, m.configDuration, m.configLastOK, m.configRejected, m.cidrs,
		m.natExpired, m.masqAddrMissing, m.localStored, m.localDropped, buildInfo, &m.datapath,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.expiry = newExpiryMetrics(m.reg)
	return m
}

// setDatapath makes the scrapes read dp's maps from now on.
func (m *agentMetrics) setDatapath(dp *loader.Datapath) { m.datapath.dp.Store(dp) }

// configSynced records one sync.
func (m *agentMetrics) configSynced(r syncResult) {
	m.configSyncs.WithLabelValues(r.outcome).Inc()
	m.configDuration.Observe(r.took.Seconds())
	if r.outcome == syncSuccess {
		m.configLastOK.SetToCurrentTime()
	}
	if r.outcome == syncInvalid {
		m.configRejected.Set(1)
	} else {
		m.configRejected.Set(0)
	}
	if r.applied != nil {
		type key struct {
			v4     bool
			origin maps.Origin
		}
		counts := map[key]int{}
		for p, o := range r.applied {
			counts[key{p.Addr().Is4(), o}]++
		}
		for _, v4 := range []bool{true, false} {
			family := "ipv6"
			if v4 {
				family = "ipv4"
			}
			m.cidrs.WithLabelValues(family, "configured").Set(float64(counts[key{v4, maps.Configured}]))
			m.cidrs.WithLabelValues(family, "link_local").Set(float64(counts[key{v4, maps.LinkLocal}]))
			m.cidrs.WithLabelValues(family, "masquerade").Set(float64(counts[key{v4, maps.Masquerade}]))
		}
	}
}

// masqueradeAddress records whether a --masquerade-address is missing.
func (m *agentMetrics) masqueradeAddress(iface string, addr netip.Addr, missing bool) {
	v := 0.0
	if missing {
		v = 1
	}
	m.masqAddrMissing.WithLabelValues(iface, addr.String()).Set(v)
}

// collected records one table's expiry: the expiry metrics, and for a NAT
// table its entries removed and the counts its pass found.
func (m *agentMetrics) collected(r tableResult) {
	m.expiry.collected(r)
	if r.nat != nil {
		m.datapath.passes.store(r.family, *r.nat)
	}
	if r.table == "nat_ipv4" || r.table == "nat_ipv6" {
		m.natExpired.Add(float64(r.removed))
	}
}

// localAddresses records how many node addresses the datapath holds and
// how many did not fit, per family (IPv4, IPv6).
func (m *agentMetrics) localAddresses(stored, dropped [2]int) {
	for i, f := range []string{"ipv4", "ipv6"} {
		m.localStored.WithLabelValues(f).Set(float64(stored[i]))
		m.localDropped.WithLabelValues(f).Set(float64(dropped[i]))
	}
}

// datapathCollector reads the counters and attachments at scrape time, so
// that they are as fresh as the scrape and cost nothing between scrapes;
// the NAT table's counts are those of the last expiry pass.
type datapathCollector struct {
	dp     atomic.Pointer[loader.Datapath]
	passes natPasses
}

var (
	descPackets = prometheus.NewDesc(metricsNamespace+"_datapath_packets_total",
		"Packets seen by the datapath programs, by family (ipv4, ipv6) and event: the ipm_stats counter that counted them (egress_new_flow, ingress_miss, ...; see the README).",
		[]string{"family", "event"}, nil)
	descNATEntries = prometheus.NewDesc(metricsNamespace+"_nat_entries",
		"Entries in use in the NAT table of a family (two per masqueraded flow), as the last expiry pass left it.", []string{"family"}, nil)
	descNATCapacity = prometheus.NewDesc(metricsNamespace+"_nat_capacity_entries",
		"Size of the NAT table of a family in entries (--nat-max-entries); a new flow that finds it full is dropped.", []string{"family"}, nil)
	descNATFlows = prometheus.NewDesc(metricsNamespace+"_nat_flows",
		"Masqueraded flows in the NAT tables as the last expiry pass left them, by family, protocol and state (opening, established, closing, reset).",
		[]string{"family", "protocol", "state"}, nil)
	descNATReserved = prometheus.NewDesc(metricsNamespace+"_nat_host_reservations",
		"Node tuples reserved for host sockets and flows that netfilter NATed to the node address, by family, as the last expiry pass left them.", []string{"family"}, nil)
	descAttached = prometheus.NewDesc(metricsNamespace+"_interface_attached",
		"1 when the datapath programs run on both tc hooks of a managed interface, else 0.",
		[]string{"interface"}, nil)
)

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descNATEntries, descNATCapacity, descNATFlows, descNATReserved, descAttached} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	dp := c.dp.Load()
	if dp == nil {
		return // not loaded yet
	}
	for _, fam := range families(dp) {
		c.collectFamily(ch, fam)
	}

	ifaces, err := managedInterfaces(dp)
	if err != nil {
		klog.ErrorS(err, "Metrics: reading the managed interfaces failed")
		ch <- prometheus.NewInvalidMetric(descAttached, err)
		return
	}
	for _, i := range ifaces {
		v := 0.0
		if i.ingress != "" && i.egress != "" {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, v, i.name)
	}
}

// protoName names an IP protocol as the flows print it.
func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	}
	return "other"
}

// managedInterface is one interface of ipm_ifaces and what the kernel says
// is attached to it.
type managedInterface struct {
	ifindex         int
	name            string
	addr            netip.Addr // IPv4 masquerade address; invalid when none yet
	addr6           netip.Addr // IPv6 masquerade address; invalid when none yet
	ingress, egress loader.Mode
	err             error // of the attachment query
}

// managedInterfaces lists the interfaces the agent manages (ipm_ifaces)
// and queries the kernel for our programs on each. An interface that has
// vanished since is listed with its index as name.
func managedInterfaces(dp *loader.Datapath) ([]managedInterface, error) {
	var out []managedInterface
	var k uint32
	var v loader.BPFIpmIface
	it := dp.Maps.IpmIfaces.Iterate()
	for it.Next(&k, &v) {
		v4, v6 := maps.IfaceAddrs(v)
		out = append(out, managedInterface{ifindex: int(k), addr: v4, addr6: v6})
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		out[i].name = interfaceName(out[i].ifindex)
		out[i].ingress, out[i].egress, out[i].err = loader.Attachment(out[i].ifindex)
	}
	return out, nil
}

// family is one address family's counters and NAT table.
type family struct {
	name     string // label value: ipv4, ipv6
	counters maps.Family
	nat      *maps.NATTable
}

// families lists the families whose maps exist (an older pin set may lack
// the IPv6 ones).
func families(dp *loader.Datapath) []family {
	out := []family{}
	if dp.Maps.IpmNat4 != nil {
		out = append(out, family{"ipv4", maps.IPv4, maps.NewNATTable(dp)})
	}
	if dp.Maps.IpmNat6 != nil {
		out = append(out, family{"ipv6", maps.IPv6, maps.NewNAT6Table(dp)})
	}
	return out
}

func (c *datapathCollector) collectFamily(ch chan<- prometheus.Metric, fam family) {
	dp := c.dp.Load()
	if cnt, err := maps.NewCounters(dp).ReadFamily(fam.counters); err != nil {
		klog.ErrorS(err, "Metrics: reading the datapath counters failed", "family", fam.name)
		ch <- prometheus.NewInvalidMetric(descPackets, err)
	} else {
		for _, f := range maps.Fields(cnt) {
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(f.Value), fam.name, f.Name)
		}
	}

	ch <- prometheus.MustNewConstMetric(descNATCapacity, prometheus.GaugeValue, float64(fam.nat.Capacity()), fam.name)
	s, ok := c.passes.load(fam.name)
	if !ok {
		return // no complete expiry pass yet: not known
	}
	ch <- prometheus.MustNewConstMetric(descNATEntries, prometheus.GaugeValue, float64(s.Entries), fam.name)
	ch <- prometheus.MustNewConstMetric(descNATReserved, prometheus.GaugeValue, float64(s.Reserved), fam.name)
	type key struct{ proto, state string }
	flows := map[key]int{}
	for c, n := range s.Flows {
		flows[key{protoName(c.Proto), c.State}] += n
	}
	for k, n := range flows {
		ch <- prometheus.MustNewConstMetric(descNATFlows, prometheus.GaugeValue, float64(n), fam.name, k.proto, k.state)
	}
}
