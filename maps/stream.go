package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// walkChunk is how many entries one batch read returns: large enough that a
// million-entry table takes a few thousand syscalls, small enough that the
// buffers stay a few tens of KiB.
const walkChunk = 1024

// walkChunkMax bounds the buffer growth when a hash bucket holds more
// entries than a chunk (the kernel then answers ENOSPC).
const walkChunkMax = 1 << 16

// walker reads one map in chunks into buffers it reuses, so that a walk costs
// the same memory at any table size. Each entry is handed to fn as soon as it
// is read: nothing of the table is kept.
type walker[K, V any] struct {
	keys []K
	vals []V
}

// walk reads every entry of m once, calling pace between chunks (the caller
// spreads a pass over its interval, and stops it early by returning an
// error, which walk returns) and fn for each entry. The kernel's batch
// cursor is a bucket position, not a key, so entries that an LRU evicts or
// the collector deletes meanwhile never abort the walk; kernels without batch
// reads fall back to key iteration, which restarts when its key vanished and
// then reports an error after handing over what it read.
func (w *walker[K, V]) walk(m *ebpf.Map, pace func() error, fn func(*K, *V)) error {
	if len(w.keys) == 0 {
		w.keys, w.vals = make([]K, walkChunk), make([]V, walkChunk)
	}
	var cursor ebpf.MapBatchCursor
	first := true
	for {
		n, err := m.BatchLookup(&cursor, w.keys, w.vals, nil)
		if first && errors.Is(err, ebpf.ErrNotSupported) {
			return w.iterate(m, pace, fn)
		}
		if errors.Is(err, unix.ENOSPC) && n == 0 && len(w.keys) < walkChunkMax {
			// A bucket larger than the buffer: grow and read it again
			// from the same cursor.
			w.keys, w.vals = make([]K, 4*len(w.keys)), make([]V, 4*len(w.vals))
			continue
		}
		first = false
		for i := 0; i < n; i++ {
			fn(&w.keys[i], &w.vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the end
		}
		if err != nil {
			return fmt.Errorf("read map %s in chunks: %w", m, err)
		}
		if pace != nil {
			if err := pace(); err != nil {
				return err
			}
		}
	}
}

// iterate is walk for kernels without batch reads.
func (w *walker[K, V]) iterate(m *ebpf.Map, pace func() error, fn func(*K, *V)) error {
	k, v := &w.keys[0], &w.vals[0]
	it := m.Iterate()
	for i := 1; it.Next(k, v); i++ {
		fn(k, v)
		if pace != nil && i%walkChunk == 0 {
			if err := pace(); err != nil {
				return err
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate map %s: %w", m, err)
	}
	return nil
}

// Set24 is a set of IPv4 /24s (address >> 8) as a bitmap: 2 MiB at any
// number of flows, where a Go map grows with them.
type Set24 struct{ bits []uint64 }

// NewSet24 is an empty set.
func NewSet24() *Set24 { return &Set24{bits: make([]uint64, 1<<24/64)} }

// Add puts block b into the set.
func (s *Set24) Add(b uint32) { s.bits[(b&0xffffff)/64] |= 1 << (b % 64) }

// Has tells whether block b is in the set.
func (s *Set24) Has(b uint32) bool { return s.bits[(b&0xffffff)/64]&(1<<(b%64)) != 0 }

// Clear empties the set, keeping its memory.
func (s *Set24) Clear() { clear(s.bits) }
