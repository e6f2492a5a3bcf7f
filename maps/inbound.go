package maps

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Inbound is ipm_inbound4 or ipm_inbound6: UDP flows and TCP connections that outside hosts opened towards pods,
// whose replies keep the pod address (docs/behaviour.md §7). The map is an LRU, so a
// flood of them cannot grow it; Collect removes the idle ones so that a
// stale entry cannot exempt a later pod-initiated flow on the same tuple.
type Inbound struct {
	m *ebpf.Map
	// Pace, when set, runs between the chunks of a walk (NATTable.Pace).
	Pace    func() error
	collect func(i *Inbound, to Timeouts) (int, error)
	scanned atomic.Int64  // entries the last Collect read
	removed atomic.Uint64 // entries Collect ever deleted, for LRUEvictions
}

// Scanned is how many entries the last Collect read, also when it failed
// part way.
func (i *Inbound) Scanned() int { return int(i.scanned.Load()) }

func NewInbound(d *loader.Datapath) *Inbound {
	return &Inbound{m: d.Maps.IpmInbound4, collect: collectInbound[NATKey]}
}

func NewInbound6(d *loader.Datapath) *Inbound {
	return &Inbound{m: d.Maps.IpmInbound6, collect: collectInbound[loader.BPFIpmNat6Key]}
}

// NewNomasqTCP is ipm_nomasq_tcp4, the TCP connections a pod opened while
// their remote was not masqueraded: records of the same shape, collected the
// same way. A stale one would let a later connection on the same tuple,
// masqueraded this time, leave with the pod address once its mapping is gone.
func NewNomasqTCP(d *loader.Datapath) *Inbound {
	return &Inbound{m: d.Maps.IpmNomasqTcp4, collect: collectInbound[NATKey]}
}

// NewNomasqTCP6 is ipm_nomasq_tcp6.
func NewNomasqTCP6(d *loader.Datapath) *Inbound {
	return &Inbound{m: d.Maps.IpmNomasqTcp6, collect: collectInbound[loader.BPFIpmNat6Key]}
}

// Removed is how many entries Collect deleted since the Inbound was made.
// Safe to call while a Collect runs.
func (i *Inbound) Removed() uint64 { return i.removed.Load() }

// idleLimit is how long an entry for a flow of proto may stay idle: a TCP
// connection as long as an established mapping (its packets refresh it in
// both directions), a UDP flow as long as a stream.
func idleLimit(proto uint8, to Timeouts) time.Duration {
	if proto == unix.IPPROTO_TCP {
		return to.TCPEstablished
	}
	return to.UDPStream
}

// keyProto is the protocol of a key of either family.
func keyProto(k any) uint8 {
	switch k := k.(type) {
	case *NATKey:
		return k.Proto
	case *loader.BPFIpmNat6Key:
		return k.Proto
	}
	return 0
}

// Collect deletes the entries idle for longer than their protocol allows and
// returns how many it removed. It streams the map: entries evicted meanwhile
// do not stop it, and those deleted before an error stay counted.
func (i *Inbound) Collect(to Timeouts) (int, error) { return i.collect(i, to) }

// collectInbound is Collect for the map's key type K.
func collectInbound[K any](i *Inbound, to Timeouts) (int, error) {
	var w walker[K, loader.BPFIpmInbound]
	removed, scanned := 0, 0
	defer func() { i.scanned.Store(int64(scanned)) }()
	err := w.walk(i.m, i.Pace, func(k *K, v *loader.BPFIpmInbound) {
		scanned++
		limit := idleLimit(keyProto(k), to)
		if Now()-time.Duration(v.LastSeenNs) <= limit {
			return
		}
		// Re-check: a datagram may have refreshed it meanwhile.
		var again loader.BPFIpmInbound
		if err := i.m.Lookup(k, &again); err != nil || Now()-time.Duration(again.LastSeenNs) <= limit {
			return
		}
		// Counted before the deletion, as for host reservations
		// (NATTable.removeReservationIfExpired).
		i.removed.Add(1)
		if i.m.Delete(k) != nil {
			i.removed.Add(^uint64(0))
			return
		}
		removed++
	})
	if err != nil {
		return removed, fmt.Errorf("read inbound records: %w", err)
	}
	return removed, nil
}
