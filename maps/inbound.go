package maps

import (
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Inbound is ipm_inbound4 or ipm_inbound6: UDP flows and TCP connections that outside hosts opened towards pods,
// whose replies keep the pod address (docs/behaviour.md §7). The map is an LRU, so a
// flood of them cannot grow it; Collect removes the idle ones so that a
// stale entry cannot exempt a later pod-initiated flow on the same tuple.
type Inbound struct{ m *ebpf.Map }

func NewInbound(d *loader.Datapath) *Inbound { return &Inbound{m: d.Maps.IpmInbound4} }

func NewInbound6(d *loader.Datapath) *Inbound { return &Inbound{m: d.Maps.IpmInbound6} }

// idleLimit is how long an entry with key k may stay idle: a TCP
// connection as long as an established mapping (its packets refresh it in
// both directions), a UDP flow as long as a stream.
func (i *Inbound) idleLimit(k []byte, to Timeouts) time.Duration {
	// The protocol follows the addresses and ports of ipm_nat_key (12
	// bytes) or ipm_nat6_key (36 bytes).
	protoAt := 12
	if len(k) > 16 {
		protoAt = 36
	}
	if len(k) > protoAt && k[protoAt] == unix.IPPROTO_TCP {
		return to.TCPEstablished
	}
	return to.UDPStream
}

// Collect deletes the entries idle for longer than their protocol allows and
// returns how many it removed.
func (i *Inbound) Collect(to Timeouts) int {
	// The key is kept as raw bytes: it is ipm_nat_key or ipm_nat6_key.
	k := make([]byte, i.m.KeySize())
	var v loader.BPFIpmInbound
	var stale [][]byte
	it := i.m.Iterate()
	for it.Next(k, &v) {
		if Now()-time.Duration(v.LastSeenNs) > i.idleLimit(k, to) {
			stale = append(stale, append([]byte(nil), k...))
		}
	}
	removed := 0
	for _, k := range stale {
		// Re-check: a datagram may have refreshed it meanwhile.
		if err := i.m.Lookup(k, &v); err != nil || Now()-time.Duration(v.LastSeenNs) <= i.idleLimit(k, to) {
			continue
		}
		if i.m.Delete(k) == nil {
			removed++
		}
	}
	return removed
}
