package maps

import (
	"errors"
	"fmt"
	"time"
)

// FlowClass is a protocol and a state, the labels flows are counted by.
type FlowClass struct {
	Proto uint8
	State string
}

// PassStats is what one walk of a family's NAT table and host reservations
// found: the metrics report the last complete one instead of reading the
// table at scrape time.
type PassStats struct {
	Entries  int // entries in the NAT table, both halves and others
	Flows    map[FlowClass]int
	Reserved int // host reservations
	Orphans  int // reply halves without their egress half
	Removed  int // entries the pass deleted
	Scanned  int // entries read from both maps
	// Complete is false when a walk stopped early: the counts then miss
	// what it did not reach.
	Complete bool
}

// LastPass is the result of the last Collect; the zero PassStats before the
// first. Safe to call while a Collect runs (the metrics scrape does).
func (t *NATTable) LastPass() PassStats {
	if p := t.last.Load(); p != nil {
		return *p
	}
	return PassStats{}
}

// Snapshot is one pass over the table.
type Snapshot struct {
	Flows    []Flow
	Reserved []Reservation
	Orphans  int // reply halves without their egress half
	Entries  int
}

// Visitor receives the entries of a Walk one at a time; either may be nil.
type Visitor struct {
	Flow        func(Flow)
	Reservation func(Reservation)
}

// Walk streams the table: each flow (found from its egress half, with a
// direct lookup of its reply half) and each host reservation goes to v as
// it is read, so a walk holds no more than one chunk of the table. Entries
// change under it. It returns the counts; an error reading one of the two
// maps does not stop the other.
func (t *NATTable) Walk(v Visitor) (PassStats, error) {
	s := PassStats{Flows: map[FlowClass]int{}}
	errNAT := t.walkNAT(&s, func(_ tuple, f Flow, _ bool) {
		s.Flows[FlowClass{f.Proto, f.State()}]++
		if v.Flow != nil {
			v.Flow(f)
		}
	}, func(k tuple, e half) {
		if _, ok := t.c.lookup(t.m, originalKey(k, e)); !ok {
			s.Orphans++
		}
	})
	if errNAT != nil {
		errNAT = fmt.Errorf("read NAT table: %w", errNAT)
	}
	errRes := t.c.walk(t.hostres, t.Pace, func(k tuple, e half) {
		s.Reserved++
		s.Scanned++
		if v.Reservation != nil {
			v.Reservation(makeReservation(k, e))
		}
	})
	if errRes != nil {
		errRes = fmt.Errorf("read host reservations: %w", errRes)
	}
	s.Complete = errNAT == nil && errRes == nil
	return s, errors.Join(errNAT, errRes)
}

// walkNAT streams the NAT table, counting every entry in s, and hands each
// masquerade half on: an egress half with its flow (found with a direct
// lookup of the reply half; hasReply when that exists) to egress, a reply
// half to ingress.
func (t *NATTable) walkNAT(s *PassStats, egress func(k tuple, f Flow, hasReply bool), ingress func(k tuple, e half)) error {
	return t.c.walk(t.m, t.Pace, func(k tuple, e half) {
		s.Entries++
		s.Scanned++
		if e.Kind != kindMasq {
			return
		}
		switch k.Dir {
		case dirEgress:
			in, ok := t.lookupReplyHalf(k, replyKey(k, e))
			egress(k, makeFlow(k, e, in, ok), ok)
		case dirIngress:
			ingress(k, e)
		}
	})
}

// Read walks the table once into memory, for tests and small tables; the
// agent streams with Walk and Collect instead.
func (t *NATTable) Read() (Snapshot, error) {
	var snap Snapshot
	s, err := t.Walk(Visitor{
		Flow:        func(f Flow) { snap.Flows = append(snap.Flows, f) },
		Reservation: func(r Reservation) { snap.Reserved = append(snap.Reserved, r) },
	})
	if err != nil {
		return Snapshot{}, err
	}
	snap.Orphans, snap.Entries = s.Orphans, s.Entries
	return snap, nil
}

// Collect deletes the flows whose timeout has passed (both halves
// together), idle host reservations, and reply halves left without their
// egress half. It streams the table and decides each flow by its egress
// half, which carries what the datapath copied from the reply half
// (egressView); only a flow that looks expired is read again, both halves,
// just before deletion, and kept if a packet used it meanwhile. A reply
// half is checked for its egress half only once it has been idle longer
// than any flow of its protocol may be: until then it is counted with its
// egress half, and an orphan among them is one the datapath's port
// allocation reclaims when it needs the port. An error in the NAT table's
// walk does not stop the reservations' walk, nor the other way round; the
// removal counts what was deleted before any error.
func (t *NATTable) Collect(to Timeouts) (removed int, err error) {
	readAt := time.Now()
	if t.building == nil {
		t.building = NewSet24()
	}
	t.building.Clear()
	s := PassStats{Flows: map[FlowClass]int{}}
	var classes flowCounts
	var errs []error
	natGone := 0 // entries deleted from the NAT table
	errNAT := t.c.walk(t.m, t.Pace, func(k tuple, e half) {
		s.Entries++
		s.Scanned++
		if e.Kind != kindMasq {
			return
		}
		now := Now()
		if k.Dir == dirIngress {
			t.collectReplyHalf(&s, &natGone, k, e, now, to)
			return
		}
		f := egressView(k, e)
		if now-f.LastSeen > f.Timeout(to) {
			exact, ok, gone, err := t.removeFlowIfExpired(k, to)
			if err != nil {
				errs = append(errs, err)
			}
			if !ok {
				return // deleted meanwhile
			}
			if gone {
				s.Removed++
				natGone++
				if exact.HasIn {
					natGone++ // its reply half
				}
				return
			}
			f = exact
		}
		t.building.Add(block24(f.Remote.Addr()))
		classes.add(f)
	})
	classes.into(s.Flows)
	if errNAT != nil {
		errs = append(errs, fmt.Errorf("read NAT table: %w", errNAT))
	}
	errRes := t.c.walk(t.hostres, t.Pace, func(k tuple, e half) {
		s.Scanned++
		r := makeReservation(k, e)
		if Now()-r.LastSeen > r.timeout(to) && t.removeReservationIfExpired(k, to) {
			s.Removed++
			return
		}
		s.Reserved++
	})
	if errRes != nil {
		errs = append(errs, fmt.Errorf("read host reservations: %w", errRes))
	}
	s.Entries -= natGone
	s.Complete = errNAT == nil && errRes == nil
	t.last.Store(&s)
	if errNAT == nil {
		// Only a complete walk of the mappings may settle /24s: a
		// partial one would call blocks with live flows empty.
		t.mapped, t.building = t.building, t.mapped
		t.readAt = readAt
	}
	return s.Removed, errors.Join(errs...)
}

// collectReplyHalf decides a reply half of the NAT table: one idle for
// longer than any flow of its protocol lives is looked up with its egress
// half, and deleted when that is gone (after the RST timeout, which also
// gives a mapping being created on another CPU the time to get its egress
// half).
func (t *NATTable) collectReplyHalf(s *PassStats, natGone *int, k tuple, e half, now time.Duration, to Timeouts) {
	idle := now - max(e.LastSeen, e.Created)
	if idle <= to.longest(k.Proto) {
		return // counted with its egress half
	}
	if _, ok := t.c.lookup(t.m, originalKey(k, e)); ok {
		return // a flow only the pod still talks on
	}
	if idle <= to.TCPRst {
		s.Orphans++
		return
	}
	if t.c.remove(t.m, k) == nil {
		s.Removed++
		*natGone++
	}
}

// flowCounts counts flows by protocol and state, indexed instead of hashing
// a FlowClass with its string at every entry of a pass.
type flowCounts [256][len(flowStates)]int

// flowStates are the values of Flow.State.
var flowStates = [...]string{"opening", "established", "closing", "reset"}

func (c *flowCounts) add(f Flow) {
	st := f.State()
	for i, name := range flowStates {
		if name == st {
			c[f.Proto][i]++
			return
		}
	}
}

// into adds the counts to m.
func (c *flowCounts) into(m map[FlowClass]int) {
	for proto := range c {
		for i, v := range c[proto] {
			if v != 0 {
				m[FlowClass{uint8(proto), flowStates[i]}] += v
			}
		}
	}
}
