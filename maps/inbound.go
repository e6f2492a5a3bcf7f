package maps

import (
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Inbound is ipm_inbound4: UDP flows that outside hosts opened towards pods,
// whose replies keep the pod address (SPEC 3.5). The map is an LRU, so a
// flood of them cannot grow it; Collect removes the idle ones so that a
// stale entry cannot exempt a later pod-initiated flow on the same tuple.
type Inbound struct{ m *ebpf.Map }

func NewInbound(d *loader.Datapath) *Inbound { return &Inbound{m: d.Maps.IpmInbound4} }

// Collect deletes the entries idle for longer than to.UDPStream and returns
// how many it removed.
func (i *Inbound) Collect(to Timeouts) int {
	var k NATKey
	var v loader.BPFIpmInbound
	var stale []NATKey
	it := i.m.Iterate()
	for it.Next(&k, &v) {
		if Now()-time.Duration(v.LastSeenNs) > to.UDPStream {
			stale = append(stale, k)
		}
	}
	removed := 0
	for _, k := range stale {
		// Re-check: a datagram may have refreshed it meanwhile.
		if err := i.m.Lookup(k, &v); err != nil || Now()-time.Duration(v.LastSeenNs) <= to.UDPStream {
			continue
		}
		if i.m.Delete(k) == nil {
			removed++
		}
	}
	return removed
}
