package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

type (
	NATKey   = loader.BPFIpmNatKey
	NATEntry = loader.BPFIpmNatEntry
	Flags    = loader.BPFIpmEntryFlags
)

const (
	dirEgress   = loader.BPFIpmDirIPM_DIR_EGRESS
	dirIngress  = loader.BPFIpmDirIPM_DIR_INGRESS
	kindMasq    = loader.BPFIpmKindIPM_KIND_MASQ
	flagFin     = loader.BPFIpmEntryFlagsIPM_F_FIN
	flagRst     = loader.BPFIpmEntryFlagsIPM_F_RST
	flagReplied = loader.BPFIpmEntryFlagsIPM_F_REPLIED
	flagPeerFin = loader.BPFIpmEntryFlagsIPM_F_PEER_FIN
)

// Timeouts are how long a flow is kept after its last packet, by state
// (docs/behaviour.md §9).
type Timeouts struct {
	TCPSyn, TCPEstablished, TCPFin, TCPRst time.Duration
	UDP, UDPStream, ICMP                   time.Duration
}

// Now is the datapath's clock: bpf_ktime_get_ns is CLOCK_MONOTONIC, which
// wall time must never be compared with. The expiry asks for it at every
// entry: one clock_gettime system call each was a seventh of a pass's CPU
// at a million flows. Go's monotonic readings come from the same
// CLOCK_MONOTONIC through the vDSO, so the time since one system call at
// start, added to that call's reading, is the clock without a system call.
func Now() time.Duration { return monoBase + time.Since(monoBaseAt) }

var monoBase, monoBaseAt = monotonicNow()

func monotonicNow() (time.Duration, time.Time) {
	var ts unix.Timespec
	at := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return time.Duration(ts.Nano()), at
}

// tuple is a NAT table key of either family in Go types.
type tuple struct {
	Src, Dst     netip.Addr
	Sport, Dport uint16
	Proto        uint8
	Dir          loader.BPFIpmDir
}

// half is a NAT table value of either family in Go types.
type half struct {
	Created, LastSeen time.Duration
	Addr              netip.Addr
	Port              uint16
	Kind              loader.BPFIpmKind
	Flags             Flags
	// Egress half: the reply half's activity as the datapath copies it
	// (bpf/reply_mirror.h). Entries written before the copy had a byte of
	// its own carry it in Flags.
	ReplyFlags Flags
}

// codec reads and writes one family's NAT map as tuples and halves.
type codec interface {
	walk(m *ebpf.Map, pace func() error, fn func(tuple, half)) error
	lookup(m *ebpf.Map, t tuple) (half, bool)
	remove(m *ebpf.Map, t tuple) error
}

// NATTable is ipm_nat4 with ipm_hostres4, or ipm_nat6 with ipm_hostres6:
// the mappings and the host reservations of one family.
type NATTable struct {
	m       *ebpf.Map
	hostres *ebpf.Map
	c       codec
	// Pace, when set, runs between the chunks of a walk: the expiry
	// spreads a pass over its interval with it. An error it returns ends
	// the walk (a stopping agent, a debug --limit reached).
	Pace func() error
	// The destinations' /24s of the flows left after the last complete
	// Collect, and when its read began (Mapped24); building is the set
	// the running pass fills.
	mapped, building *Set24
	readAt           time.Time
	last             atomic.Pointer[PassStats]
	// Host reservations Collect ever deleted, for LRUEvictions.
	hostresRemoved atomic.Uint64
}

// ReservationsRemoved is how many host reservations Collect deleted since
// the table was made. Safe to call while a Collect runs.
func (t *NATTable) ReservationsRemoved() uint64 { return t.hostresRemoved.Load() }

// Mapped24 returns the /24s (IPv4 address >> 8) that destinations of
// mappings fell into at the last complete Collect, and when its read began;
// nil before the first. For NonMasq.SettleDir; valid until the next Collect.
func (t *NATTable) Mapped24() (*Set24, time.Time) { return t.mapped, t.readAt }

// block24 is the /24 of an IPv4 address, as ipm_cidr4_dir indexes it.
func block24(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
}

// NewNATTable is the IPv4 NAT table.
func NewNATTable(d *loader.Datapath) *NATTable {
	return &NATTable{m: d.Maps.IpmNat4, hostres: d.Maps.IpmHostres4, c: &codec4{}}
}

// NewNAT6Table is the IPv6 NAT table.
func NewNAT6Table(d *loader.Datapath) *NATTable {
	return &NATTable{m: d.Maps.IpmNat6, hostres: d.Maps.IpmHostres6, c: &codec6{}}
}

// Capacity is the table's bound in entries (two per flow).
func (t *NATTable) Capacity() int { return int(t.m.MaxEntries()) }

// Flow is a translated flow: both halves of one mapping, as the debug
// command and the collector see it.
type Flow struct {
	Proto    uint8
	Pod      netip.AddrPort // the pod's address and port (ICMP: identifier)
	Remote   netip.AddrPort
	Node     netip.AddrPort // what the pod's source becomes
	Flags    Flags          // seen in either direction
	Replied  bool           // a reply came back
	HasIn    bool           // the reply half exists
	LastSeen time.Duration  // newer of the halves' last packets
}

// State names the flow's lifecycle stage, which decides its timeout.
func (f Flow) State() string { return state(f.Proto, f.Flags, f.Replied) }

// Timeout is how long the flow lives after its last packet.
func (f Flow) Timeout(t Timeouts) time.Duration { return timeout(f.Proto, f.State(), t) }

func (f Flow) String() string {
	return fmt.Sprintf("%s -> %s via %s %s %s", f.Pod, f.Remote, f.Node, protoName(f.Proto), f.State())
}

// Reservation is a tuple held for a host socket or a flow netfilter NATed to
// the node address (docs/behaviour.md §8), keyed as the reply would arrive; they live in
// ipm_hostres4/6, LRU maps apart from the mappings.
type Reservation struct {
	Proto    uint8
	Node     netip.AddrPort // the host's side
	Remote   netip.AddrPort
	Flags    Flags
	LastSeen time.Duration // newer of creation and last packet
}

// State is the reserved flow's lifecycle stage.
func (r Reservation) State() string {
	return state(r.Proto, r.Flags, r.Flags&flagReplied != 0)
}

// Host is the node's side of the reserved tuple.
func (r Reservation) Host() netip.AddrPort { return r.Node }

func (r Reservation) timeout(t Timeouts) time.Duration { return timeout(r.Proto, r.State(), t) }

func state(proto uint8, flags Flags, replied bool) string {
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

// longest is the longest a flow of proto can live after its last packet, in
// any state.
func (t Timeouts) longest(proto uint8) time.Duration {
	switch proto {
	case unix.IPPROTO_TCP:
		return max(t.TCPSyn, t.TCPEstablished, t.TCPFin, t.TCPRst)
	case unix.IPPROTO_UDP:
		return max(t.UDP, t.UDPStream)
	}
	return t.ICMP
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

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	}
	return fmt.Sprintf("proto-%d", p)
}

func isICMP(proto uint8) bool { return proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6 }

// replyKey is the ingress key that belongs to an egress half.
func replyKey(k tuple, e half) tuple {
	r := tuple{Src: k.Dst, Dst: e.Addr, Sport: k.Dport, Dport: e.Port, Proto: k.Proto, Dir: dirIngress}
	if isICMP(k.Proto) {
		r.Sport = 0
	}
	return r
}

// originalKey is the egress key that belongs to an ingress half.
func originalKey(k tuple, e half) tuple {
	o := tuple{Src: e.Addr, Dst: k.Src, Sport: e.Port, Dport: k.Sport, Proto: k.Proto, Dir: dirEgress}
	if isICMP(k.Proto) {
		o.Dport = 0
	}
	return o
}

func makeFlow(k tuple, out, in half, hasIn bool) Flow {
	return Flow{
		Proto:    k.Proto,
		Pod:      netip.AddrPortFrom(k.Src, k.Sport),
		Remote:   netip.AddrPortFrom(k.Dst, k.Dport),
		Node:     netip.AddrPortFrom(out.Addr, out.Port),
		Flags:    flowFlags(k.Proto, out.Flags&^flagPeerFin, in.Flags),
		Replied:  in.LastSeen != 0,
		HasIn:    hasIn,
		LastSeen: max(out.LastSeen, in.LastSeen, out.Created),
	}
}

// egressView is the flow as its egress half alone tells it: the datapath
// copies the reply half's activity into the egress half (a reply came, the
// remote's RST or FIN, its last packet to within about a second;
// bpf/reply_mirror.h), so the expiry decides most flows without reading
// their reply half. The copy only ever lags: a flow this view calls
// expired is read again, both halves, before anything is deleted.
func egressView(k tuple, out half) Flow {
	// The reply half as the copy tells it: the remote's FIN, and a reply
	// no later than the egress half's own time, or none.
	var in half
	copied := out.Flags | out.ReplyFlags
	if copied&flagPeerFin != 0 {
		in.Flags = flagFin
	}
	in.Flags |= out.ReplyFlags & flagRst
	if copied&flagReplied != 0 {
		in.LastSeen = max(out.LastSeen, out.Created)
	}
	return makeFlow(k, out, in, true)
}

// flowFlags are the flags that decide a flow's state, from both halves: the
// datapath sets FIN and RST only when plausible (a remote's in the pod's
// window) and clears them when a SYN starts the tuple afresh. A TCP
// connection is closing only once both sides sent their FIN: a half-closed
// connection still carries data the other way, for as long as it likes, and
// keeps the established timeout.
func flowFlags(proto uint8, out, in Flags) Flags {
	f := out | in
	if proto == unix.IPPROTO_TCP && (out&flagFin == 0 || in&flagFin == 0) {
		f &^= flagFin
	}
	return f
}

func makeReservation(k tuple, e half) Reservation {
	return Reservation{
		Proto:    k.Proto,
		Node:     netip.AddrPortFrom(k.Dst, k.Dport),
		Remote:   netip.AddrPortFrom(k.Src, k.Sport),
		Flags:    e.Flags,
		LastSeen: max(e.LastSeen, e.Created),
	}
}

// lookupReplyHalf reads the reply half of the flow whose egress key is k
// and reply key rk, if it is still that flow's: the datapath may have removed
// the flow and given its node port, towards the same remote, to a new flow,
// whose reply half then lies under rk. Another flow's reply half is neither
// judged with this flow nor deleted with it.
func (t *NATTable) lookupReplyHalf(k, rk tuple) (half, bool) {
	in, ok := t.c.lookup(t.m, rk)
	if !ok || in.Kind != kindMasq || originalKey(rk, in) != k {
		return half{}, false
	}
	return in, true
}

// removeFlowIfExpired re-reads a flow's halves and deletes them if it is
// still expired: the reply half first, so a packet racing with the deletion
// finds no mapping in ingress rather than a reply half that outlives its
// flow.
// It returns the flow as it read it (ok false when the egress half was gone
// already) and whether it deleted it.
func (t *NATTable) removeFlowIfExpired(k tuple, to Timeouts) (f Flow, ok, gone bool, err error) {
	out, ok := t.c.lookup(t.m, k)
	if !ok {
		return Flow{}, false, false, nil // gone already
	}
	rk := replyKey(k, out)
	in, hasIn := t.lookupReplyHalf(k, rk)
	f = makeFlow(k, out, in, hasIn)
	if Now()-f.LastSeen <= f.Timeout(to) {
		return f, true, false, nil
	}
	if hasIn {
		if err := t.c.remove(t.m, rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return f, true, false, fmt.Errorf("delete reply half: %w", err)
		}
	}
	if err := t.c.remove(t.m, k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return f, true, false, fmt.Errorf("delete egress half: %w", err)
	}
	return f, true, true, nil
}

// removeReservationIfExpired re-reads a host reservation and deletes it if
// its flow has been idle for longer than its state allows.
func (t *NATTable) removeReservationIfExpired(k tuple, to Timeouts) bool {
	e, ok := t.c.lookup(t.hostres, k)
	if !ok {
		return false
	}
	r := makeReservation(k, e)
	if Now()-r.LastSeen <= r.timeout(to) {
		return false
	}
	// Counted before the deletion, taken back if it fails: a count read
	// in between is then one too low, never one too high, which the
	// eviction count (added - removed - left) would keep.
	t.hostresRemoved.Add(1)
	if t.c.remove(t.hostres, k) != nil {
		t.hostresRemoved.Add(^uint64(0))
		return false
	}
	return true
}
