package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

type (
	NATKey   = loader.BPFIpmNatKey
	NATEntry = loader.BPFIpmNatEntry
)

const (
	dirEgress   = loader.BPFIpmDirIPM_DIR_EGRESS
	dirIngress  = loader.BPFIpmDirIPM_DIR_INGRESS
	kindMasq    = loader.BPFIpmKindIPM_KIND_MASQ
	kindHost    = loader.BPFIpmKindIPM_KIND_HOST
	flagFin     = loader.BPFIpmEntryFlagsIPM_F_FIN
	flagRst     = loader.BPFIpmEntryFlagsIPM_F_RST
	flagReplied = loader.BPFIpmEntryFlagsIPM_F_REPLIED
)

// Timeouts are how long a flow is kept after its last packet, by state
// (SPEC 3.7).
type Timeouts struct {
	TCPSyn, TCPEstablished, TCPFin, TCPRst time.Duration
	UDP, UDPStream, ICMP                   time.Duration
}

// NATTable is ipm_nat4.
type NATTable struct{ m *ebpf.Map }

func NewNATTable(d *loader.Datapath) *NATTable { return &NATTable{m: d.Maps.IpmNat4} }

// Capacity is the table's bound in entries (two per flow).
func (t *NATTable) Capacity() int { return int(t.m.MaxEntries()) }

// Now is the datapath's clock: bpf_ktime_get_ns is CLOCK_MONOTONIC, which
// wall time must never be compared with.
func Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return time.Duration(ts.Nano())
}

// Flow is a translated flow: both halves of one mapping, as the debug
// command and the collector see it.
type Flow struct {
	Proto    uint8
	Pod      netip.AddrPort // the pod's address and port (ICMP: identifier)
	Remote   netip.AddrPort
	Node     netip.AddrPort // what the pod's source becomes
	Out, In  NATEntry       // the halves; In is zero when missing
	HasIn    bool
	LastSeen time.Duration // newer of the halves' last packets
}

// State names the flow's lifecycle stage, which decides its timeout.
func (f Flow) State() string {
	return state(f.Proto, f.Out.Flags|f.In.Flags, f.In.LastSeenNs != 0)
}

// Timeout is how long the flow lives after its last packet.
func (f Flow) Timeout(t Timeouts) time.Duration { return timeout(f.Proto, f.State(), t) }

func state(proto uint8, flags loader.BPFIpmEntryFlags, replied bool) string {
	switch {
	case proto == unix.IPPROTO_TCP && flags&flagRst != 0:
		return "reset"
	case proto == unix.IPPROTO_TCP && flags&flagFin != 0:
		return "closing"
	case replied:
		return "established"
	default:
		return "opening"
	}
}

func timeout(proto uint8, state string, t Timeouts) time.Duration {
	switch proto {
	case unix.IPPROTO_TCP:
		switch state {
		case "reset":
			return t.TCPRst
		case "closing":
			return t.TCPFin
		case "established":
			return t.TCPEstablished
		}
		return t.TCPSyn
	case unix.IPPROTO_UDP:
		if state == "established" {
			return t.UDPStream
		}
		return t.UDP
	}
	return t.ICMP
}

// Reservation is a tuple held for a host socket or a flow netfilter NATed to
// the node address (SPEC 3.6), keyed as the reply would arrive.
type Reservation struct {
	Key   NATKey
	Entry NATEntry
}

// State is the reserved flow's lifecycle stage.
func (r Reservation) State() string {
	return state(r.Key.Proto, r.Entry.Flags, r.Entry.Flags&flagReplied != 0)
}

// Host is the node's side of the reserved tuple.
func (r Reservation) Host() netip.AddrPort {
	return netip.AddrPortFrom(addrFromBE(r.Key.Daddr), portFromBE(r.Key.Dport))
}

func (f Flow) String() string {
	return fmt.Sprintf("%s -> %s via %s %s %s", f.Pod, f.Remote, f.Node, protoName(f.Proto), f.State())
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// replyKey is the ingress key that belongs to an egress half.
func replyKey(k NATKey, e NATEntry) NATKey {
	r := NATKey{Saddr: k.Daddr, Daddr: e.Addr, Sport: k.Dport, Dport: e.Port, Proto: k.Proto, Dir: dirIngress}
	if k.Proto == unix.IPPROTO_ICMP {
		r.Sport = 0
	}
	return r
}

// originalKey is the egress key that belongs to an ingress half.
func originalKey(k NATKey, e NATEntry) NATKey {
	o := NATKey{Saddr: e.Addr, Daddr: k.Saddr, Sport: e.Port, Dport: k.Sport, Proto: k.Proto, Dir: dirEgress}
	if k.Proto == unix.IPPROTO_ICMP {
		o.Dport = 0
	}
	return o
}

func makeFlow(k NATKey, out NATEntry, in NATEntry, hasIn bool) Flow {
	f := Flow{
		Proto:  k.Proto,
		Pod:    netip.AddrPortFrom(addrFromBE(k.Saddr), portFromBE(k.Sport)),
		Remote: netip.AddrPortFrom(addrFromBE(k.Daddr), portFromBE(k.Dport)),
		Node:   netip.AddrPortFrom(addrFromBE(out.Addr), portFromBE(out.Port)),
		Out:    out, In: in, HasIn: hasIn,
	}
	f.LastSeen = time.Duration(max(out.LastSeenNs, in.LastSeenNs, out.CreatedNs))
	return f
}

// Snapshot is one pass over the table.
type Snapshot struct {
	Flows    []Flow
	Reserved []Reservation
	Orphans  map[NATKey]NATEntry // reply halves without their egress half
	Entries  int
}

// Read walks the table once. Entries change under it; the collector
// re-reads before it deletes anything.
func (t *NATTable) Read() (Snapshot, error) {
	all := map[NATKey]NATEntry{}
	var k NATKey
	var e NATEntry
	it := t.m.Iterate()
	for it.Next(&k, &e) {
		all[k] = e
	}
	if err := it.Err(); err != nil {
		return Snapshot{}, fmt.Errorf("read NAT table: %w", err)
	}
	s := Snapshot{Orphans: map[NATKey]NATEntry{}, Entries: len(all)}
	paired := map[NATKey]bool{}
	for k, e := range all {
		if k.Dir != dirEgress || e.Kind != kindMasq {
			continue
		}
		rk := replyKey(k, e)
		in, ok := all[rk]
		paired[rk] = ok
		s.Flows = append(s.Flows, makeFlow(k, e, in, ok))
	}
	for k, e := range all {
		switch {
		case k.Dir == dirIngress && e.Kind == kindMasq && !paired[k]:
			s.Orphans[k] = e
		case e.Kind == kindHost:
			s.Reserved = append(s.Reserved, Reservation{Key: k, Entry: e})
		}
	}
	return s, nil
}

// Collect deletes the flows whose timeout has passed, both halves together,
// and reply halves left without their egress half. Each candidate is read
// again just before deletion and kept if a packet used it meanwhile.
func (t *NATTable) Collect(to Timeouts) (removed int, err error) {
	snap, err := t.Read()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, f := range snap.Flows {
		if Now()-f.LastSeen <= f.Timeout(to) {
			continue
		}
		k := NATKey{Saddr: addrToBE(f.Pod.Addr()), Daddr: addrToBE(f.Remote.Addr()),
			Sport: portToBE(f.Pod.Port()), Dport: portToBE(f.Remote.Port()), Proto: f.Proto, Dir: dirEgress}
		ok, err := t.removeIfExpired(k, to)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			removed++
		}
	}
	for _, r := range snap.Reserved {
		if t.removeReservationIfExpired(r.Key, to) {
			removed++
		}
	}
	for rk, in := range snap.Orphans {
		// Give a half-created mapping time to get its egress half.
		if Now()-time.Duration(max(in.LastSeenNs, in.CreatedNs)) <= to.TCPRst {
			continue
		}
		var out NATEntry
		if err := t.m.Lookup(originalKey(rk, in), &out); err == nil {
			continue // paired again meanwhile
		}
		if err := t.m.Delete(rk); err == nil {
			removed++
		}
	}
	return removed, errors.Join(errs...)
}

// removeIfExpired re-reads a flow's halves and deletes them if it is still
// expired: the reply half first, so a packet racing with the deletion finds
// no mapping in ingress rather than a reply half that outlives its flow.
func (t *NATTable) removeIfExpired(k NATKey, to Timeouts) (bool, error) {
	var out, in NATEntry
	if err := t.m.Lookup(k, &out); err != nil {
		return false, nil // gone already
	}
	rk := replyKey(k, out)
	hasIn := t.m.Lookup(rk, &in) == nil
	f := makeFlow(k, out, in, hasIn)
	if Now()-f.LastSeen <= f.Timeout(to) {
		return false, nil
	}
	if hasIn {
		if err := t.m.Delete(rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, fmt.Errorf("delete reply half: %w", err)
		}
	}
	if err := t.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, fmt.Errorf("delete egress half: %w", err)
	}
	return true, nil
}

// removeReservationIfExpired re-reads a host reservation and deletes it if
// its flow has been idle for longer than its state allows.
func (t *NATTable) removeReservationIfExpired(k NATKey, to Timeouts) bool {
	var e NATEntry
	if err := t.m.Lookup(k, &e); err != nil || e.Kind != kindHost {
		return false
	}
	r := Reservation{Key: k, Entry: e}
	if Now()-time.Duration(max(e.LastSeenNs, e.CreatedNs)) <= timeout(k.Proto, r.State(), to) {
		return false
	}
	return t.m.Delete(k) == nil
}
