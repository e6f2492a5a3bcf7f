package maps

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// The LRU maps of the datapath (host reservations, records of flows opened
// from outside or non-masqueraded, first fragments) make room for a new
// entry by evicting the least recently used one, silently: the kernel
// counts no evictions. They are derived instead. The programs count the
// entries they add (a key that was not there: lru_*_new) and the host
// reservations they remove (lru_hostres_reclaimed), the agent counts what
// its expiry removes, and a walk counts the entries left; what was added
// and is neither removed nor left was evicted:
//
//	evicted = added - removed - left
//
// Counted from the first Update (the counters and the maps may be older
// than the agent), and never decreasing.

// fragTTL is how long a first fragment's record is of use
// (IPM_FRAG_TTL_NS in bpf/frag.h, the reassembly timeout). Older records
// are removed by Update, so that recycling them is not taken for
// evictions of live ones.
const fragTTL = 30 * time.Second

// Eviction is the derived eviction count of one LRU map of one family.
type Eviction struct {
	Map     string // hostres, inbound, nomasq_tcp or frag
	Family  Family
	Evicted uint64
}

// lruMap is one LRU map and where its additions and removals are counted.
type lruMap struct {
	Eviction
	added     func(*loader.BPFIpmCounters) uint64
	removedDP func(*loader.BPFIpmCounters) uint64 // nil: the programs remove none
	removed   func() uint64                       // removed by the agent
	count     func(expire bool) (int, error)      // entries left
	base      int64                               // added - removed - left at the first Update
	based     bool                                // base is set
}

// LRUEvictions derives the evictions of the LRU maps of both families.
type LRUEvictions struct {
	counters *Counters
	maps     []*lruMap
	// Pace, when set, runs between the chunks of a walk.
	Pace func() error

	mu   sync.Mutex // guards out
	out  []Eviction
	frag [2]atomic.Uint64 // stale fragment records Update removed, per family
}

// NewLRUEvictions follows the LRU maps of d. The NAT tables and record maps
// (index 0 IPv4, 1 IPv6) must be the ones whose Collect the agent runs, so
// that their removals are not taken for evictions.
func NewLRUEvictions(d *loader.Datapath, nats [2]*NATTable, inbound, nomasq [2]*Inbound) *LRUEvictions {
	e := &LRUEvictions{counters: NewCounters(d)}
	hostres := [2]*ebpf.Map{d.Maps.IpmHostres4, d.Maps.IpmHostres6}
	frags := [2]*ebpf.Map{d.Maps.IpmFrag4, d.Maps.IpmFrag6}
	for i, fam := range []Family{IPv4, IPv6} {
		nat, in, nm := nats[i], inbound[i], nomasq[i]
		fragRemoved := &e.frag[i]
		var countHostres, countInbound, countNomasq, countFrag func(bool) (int, error)
		if fam == IPv4 {
			countHostres = counter[NATKey, NATEntry](hostres[i], e)
			countInbound = counter[NATKey, loader.BPFIpmInbound](in.m, e)
			countNomasq = counter[NATKey, loader.BPFIpmInbound](nm.m, e)
			countFrag = fragCounter[loader.BPFIpmFragKey](frags[i], e, fragRemoved,
				func(v *loader.BPFIpmFragEntry) uint64 { return v.CreatedNs })
		} else {
			countHostres = counter[loader.BPFIpmNat6Key, loader.BPFIpmNat6Entry](hostres[i], e)
			countInbound = counter[loader.BPFIpmNat6Key, loader.BPFIpmInbound](in.m, e)
			countNomasq = counter[loader.BPFIpmNat6Key, loader.BPFIpmInbound](nm.m, e)
			countFrag = fragCounter[loader.BPFIpmFrag6Key](frags[i], e, fragRemoved,
				func(v *loader.BPFIpmFrag6Entry) uint64 { return v.CreatedNs })
		}
		e.maps = append(e.maps,
			&lruMap{Eviction: Eviction{Map: "hostres", Family: fam},
				added:     func(c *loader.BPFIpmCounters) uint64 { return c.LruHostresNew },
				removedDP: func(c *loader.BPFIpmCounters) uint64 { return c.LruHostresReclaimed },
				removed:   nat.ReservationsRemoved, count: countHostres},
			&lruMap{Eviction: Eviction{Map: "inbound", Family: fam},
				added:   func(c *loader.BPFIpmCounters) uint64 { return c.LruInboundNew },
				removed: in.Removed, count: countInbound},
			&lruMap{Eviction: Eviction{Map: "nomasq_tcp", Family: fam},
				added:   func(c *loader.BPFIpmCounters) uint64 { return c.LruNomasqTcpNew },
				removed: nm.Removed, count: countNomasq},
			&lruMap{Eviction: Eviction{Map: "frag", Family: fam},
				added:   func(c *loader.BPFIpmCounters) uint64 { return c.LruFragNew },
				removed: fragRemoved.Load, count: countFrag},
		)
	}
	return e
}

// counter counts the entries of m.
func counter[K, V any](m *ebpf.Map, e *LRUEvictions) func(bool) (int, error) {
	var w walker[K, V]
	return func(bool) (int, error) {
		n := 0
		err := w.walk(m, e.Pace, func(*K, *V) { n++ })
		return n, err
	}
}

// fragCounter counts the entries of a fragment map and, with expire,
// removes the records older than fragTTL (read again just before), which
// the programs ignore anyway, counting them in removed.
func fragCounter[K, V any](m *ebpf.Map, e *LRUEvictions, removed *atomic.Uint64, created func(*V) uint64) func(bool) (int, error) {
	var w walker[K, V]
	return func(expire bool) (int, error) {
		n := 0
		stale := func(v *V) bool { return Now()-time.Duration(created(v)) > fragTTL }
		err := w.walk(m, e.Pace, func(k *K, v *V) {
			if expire && stale(v) {
				var again V
				if m.Lookup(k, &again) == nil && stale(&again) && m.Delete(k) == nil {
					removed.Add(1)
					return
				}
			}
			n++
		})
		return n, err
	}
}

// Update walks the LRU maps and brings the eviction counts up to date. The
// counters are read on the side that can only make a count too low, never
// too high, so that a count, which never decreases, never runs ahead of the
// truth: a map's first pass (its base) reads the additions after its walk
// and the removals before it, the later passes the other way round; an
// entry added or removed during a walk at worst goes uncounted until the
// next pass. A map whose walk fails keeps its count.
func (e *LRUEvictions) Update() error {
	var errs []error
	read := func() (c [2]loader.BPFIpmCounters, err error) {
		for _, f := range []Family{IPv4, IPv6} {
			if c[f], err = e.counters.ReadFamily(f); err != nil {
				return c, err
			}
		}
		return c, nil
	}
	removedBefore := make([]uint64, len(e.maps))
	for i, m := range e.maps {
		removedBefore[i] = m.removed()
	}
	before, err := read()
	if err != nil {
		return err
	}
	left := make([]int, len(e.maps))
	failed := make([]bool, len(e.maps))
	for i, m := range e.maps {
		// Stale fragment records go only once the base is taken: removed
		// during the base's walk they would count as neither removed
		// nor left.
		left[i], err = m.count(m.based)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s entries: %w", m.Map, err))
			failed[i] = true
		}
	}
	after, err := read()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.out = e.out[:0]
	for i, m := range e.maps {
		if !failed[i] {
			added, removedDP, removed := &after[m.Family], &before[m.Family], removedBefore[i]
			if m.based {
				added, removedDP, removed = &before[m.Family], &after[m.Family], m.removed()
			}
			v := int64(m.added(added)) - int64(removed) - int64(left[i])
			if m.removedDP != nil {
				v -= int64(m.removedDP(removedDP))
			}
			switch {
			case !m.based:
				m.base, m.based = v, true
			case v-m.base > int64(m.Evicted):
				m.Evicted = uint64(v - m.base)
			}
		}
		e.out = append(e.out, m.Eviction)
	}
	return errors.Join(errs...)
}

// Read returns the eviction counts as of the last Update: every LRU map of
// IPv4 (hostres, inbound, nomasq_tcp, frag), then of IPv6.
func (e *LRUEvictions) Read() []Eviction {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Eviction(nil), e.out...)
}
