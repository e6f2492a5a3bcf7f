package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Block verdicts of ipm_cidr4_dir, as enum ipm_block_verdict in
// bpf/ipmasq.h: two bits per /24.
const (
	blockMasq   = 0 // masqueraded: no non-masquerade prefix decides any of the /24
	blockNoMasq = 1 // a prefix of /24 or shorter covers all of it, no mapping into it
	blockTrie   = 2 // longer prefixes of the other verdict reach into it: the trie decides
	// blockNoMasqMapped is blockNoMasq where flows masqueraded before the
	// config changed may still hold mappings: the datapath looks flows up
	// first. SettleDir turns it into blockNoMasq once none is left.
	blockNoMasqMapped = 3
)

// settleGrace is how long after a flip SettleDir waits before trusting a
// NAT table read: a packet that saw the old index can still create a
// mapping into a /24 the new set covers, within microseconds.
const settleGrace = time.Second

// dirHalf is the number of entries of one half of ipm_cidr4_dir: one per /16.
const dirHalf = 1 << 16

// dirChunk bounds one batch write, and so the memory a full write needs.
const dirChunk = 4096

type dirBlock = loader.BPFIpmCidr4Block

// BlockVerdict reads the verdict of /24 number n24 (its third octet) of the
// /16 that b covers: two bits, as struct ipm_cidr4_block in bpf/ipmasq.h
// lays them out and cidr4_block_verdict in bpf/nat.h reads them.
func BlockVerdict(b *loader.BPFIpmCidr4Block, n24 uint8) uint8 {
	return b.Verdicts[n24/4] >> (n24 % 4 * 2) & 3
}

// setBlockVerdict writes the verdict BlockVerdict reads.
func setBlockVerdict(b *dirBlock, n24, v uint8) {
	shift := n24 % 4 * 2
	b.Verdicts[n24/4] = b.Verdicts[n24/4]&^(3<<shift) | v<<shift
}

// ReadDirVerdict reads the verdict of a's /24 from one half of the
// ipm_cidr4_dir map m (for tests).
func ReadDirVerdict(m *ebpf.Map, half uint32, a netip.Addr) (uint8, error) {
	a4 := a.As4()
	var b dirBlock
	if err := m.Lookup(half<<16|uint32(a4[0])<<8|uint32(a4[1]), &b); err != nil {
		return 0, err
	}
	return BlockVerdict(&b, a4[2]), nil
}

// dirBlocks computes the entries of one half of ipm_cidr4_dir for the IPv4
// prefixes of set; entries that are blockMasq throughout are left out. The
// longest matching prefix decides, as in the trie: prefixes of /24 or
// shorter are painted shortest first, so a longer one (an exception, or a
// non-masquerade prefix inside an exception) overwrites the /24s it covers;
// then a /24 that a longer prefix of the other verdict reaches into is sent
// to the trie.
func dirBlocks(set CIDRSet) map[uint16]dirBlock {
	out := map[uint16]dirBlock{}
	verdictOf := func(o Origin) uint8 {
		if o == Masquerade {
			return blockMasq
		}
		return blockNoMasq
	}
	set24 := func(n16, n24 uint32, v uint8) {
		b := out[uint16(n16)]
		setBlockVerdict(&b, uint8(n24), v)
		out[uint16(n16)] = b
	}
	var short, long []netip.Prefix
	for p := range set {
		switch {
		case !p.Addr().Is4():
		case p.Bits() <= 24:
			short = append(short, p)
		default:
			long = append(long, p)
		}
	}
	slices.SortFunc(short, func(a, b netip.Prefix) int { return a.Bits() - b.Bits() })
	for _, p := range short {
		v := verdictOf(set[p])
		addr := addrUint32(p.Addr())
		if bits := p.Bits(); bits <= 16 {
			var full dirBlock
			for i := range full.Verdicts {
				full.Verdicts[i] = v * 0x55 // v in all four slots
			}
			first := addr >> 16
			for n := uint32(0); n < 1<<(16-bits); n++ {
				out[uint16(first+n)] = full
			}
		} else {
			first := (addr >> 8) & 0xff
			for n := uint32(0); n < 1<<(24-bits); n++ {
				set24(addr>>16, first+n, v)
			}
		}
	}
	for _, p := range long {
		addr := addrUint32(p.Addr())
		b := out[uint16(addr>>16)]
		if cur := BlockVerdict(&b, uint8(addr>>8)); cur != blockTrie && cur != verdictOf(set[p]) {
			set24(addr>>16, (addr>>8)&0xff, blockTrie)
		}
	}
	for n, b := range out {
		if b == (dirBlock{}) {
			delete(out, n)
		}
	}
	return out
}

// dirVerdict reads the verdict of the /24 holding a from entries made by
// dirBlocks (for tests and the debug command).
func dirVerdict(blocks map[uint16]dirBlock, a netip.Addr) uint8 {
	a4 := a.As4()
	b := blocks[uint16(a4[0])<<8|uint16(a4[1])]
	return BlockVerdict(&b, a4[2])
}

// markMapped turns blockNoMasq into blockNoMasqMapped in want wherever the
// active half (nil: not known) did not say blockNoMasq: flows into such a
// /24 may have been masqueraded and keep their mappings.
func markMapped(want, active map[uint16]dirBlock) {
	for n, b := range want {
		a, known := active[n]
		changed := false
		for i, w := range b.Verdicts {
			// Slots (two bits) that hold exactly blockNoMasq (01).
			nm := w &^ (w >> 1) & 0x55
			if known {
				nm &^= a.Verdicts[i] &^ (a.Verdicts[i] >> 1) & 0x55
			}
			if nm != 0 {
				b.Verdicts[i] = w | nm<<1 // 01 -> 11
				changed = true
			}
		}
		if changed {
			want[n] = b
		}
	}
}

// cidrDir writes the halves of ipm_cidr4_dir, each together with the trie of
// the same index. It remembers what it wrote into each half so that a new set
// costs only the entries that change; a half it has not written since it
// started (nil) is written whole.
type cidrDir struct {
	m    *ebpf.Map
	held [2]map[uint16]dirBlock
	// oneByOne is set once the kernel refused a batch write.
	oneByOne bool
}

// write makes half hold want. The half must be idle: entries are rewritten
// one by one.
func (d *cidrDir) write(half uint32, want map[uint16]dirBlock) error {
	old := d.held[half]
	d.held[half] = nil // unknown until the write completes
	var keys []uint32
	var vals []dirBlock
	flush := func() error {
		err := d.put(keys, vals)
		keys, vals = keys[:0], vals[:0]
		return err
	}
	add := func(n16 uint16, v dirBlock) error {
		keys = append(keys, half<<16|uint32(n16))
		vals = append(vals, v)
		if len(keys) == dirChunk {
			return flush()
		}
		return nil
	}
	if old == nil {
		for n := 0; n < dirHalf; n++ {
			if err := add(uint16(n), want[uint16(n)]); err != nil {
				return err
			}
		}
	} else {
		for n, v := range want {
			if old[n] != v {
				if err := add(n, v); err != nil {
					return err
				}
			}
		}
		for n := range old {
			if _, ok := want[n]; !ok {
				if err := add(n, dirBlock{}); err != nil {
					return err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	d.held[half] = want
	return nil
}

// put writes entries, in one batch where the kernel takes batches (arrays
// do from 5.6 on).
func (d *cidrDir) put(keys []uint32, vals []dirBlock) error {
	if len(keys) == 0 {
		return nil
	}
	if !d.oneByOne {
		_, err := d.m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("write ipm_cidr4_dir: %w", err)
		}
		d.oneByOne = true
	}
	for i := range keys {
		if err := d.m.Put(keys[i], vals[i]); err != nil {
			return fmt.Errorf("write ipm_cidr4_dir: %w", err)
		}
	}
	return nil
}

// forget marks both halves unknown, so the next write of each is whole.
func (d *cidrDir) forget() { d.held = [2]map[uint16]dirBlock{} }

// WriteCIDR4Dir writes half of ipm_cidr4_dir whole for the IPv4 prefixes of
// set, for callers that write the tries themselves (the bench) rather than
// through NonMasq.
func WriteCIDR4Dir(m *ebpf.Map, half uint32, set CIDRSet) error {
	d := cidrDir{m: m}
	return d.write(half, dirBlocks(set))
}

// syncDir writes the idle half of the /24 table for set, the new contents of
// the idle tries. The first time in a process it also rewrites the active
// half from the active tries: the table may be new (an upgrade from a
// datapath without it, whose programs never read it) or half-written by an
// agent that died; when it was right already, the same bytes are written
// again, which no reader can notice.
func (n *NonMasq) syncDir(idle int, set CIDRSet) error {
	if n.dir.m == nil {
		return nil
	}
	active := 1 - idle
	if !n.dirSynced {
		held := n.held[active]
		if held == nil {
			var err error
			if held, err = n.read(active); err != nil {
				return err
			}
		}
		// Which /24s hold mappings is not known here: every covered
		// one is marked until SettleDir has looked.
		blocks := dirBlocks(held)
		markMapped(blocks, nil)
		if err := n.dir.write(uint32(active), blocks); err != nil {
			return err
		}
		n.dirSynced = true
	}
	want := dirBlocks(set)
	markMapped(want, n.dir.held[active])
	return n.dir.write(uint32(idle), want)
}

// SettleDir turns blockNoMasqMapped into blockNoMasq in the active half for
// every /24 that holds no mapping: mapped holds the /24s (address >> 8) of
// the IPv4 destinations with a mapping, read from the NAT table starting at
// readAt. It writes the active half in place, which is safe because each
// change only spares a lookup that would find nothing. Returns how many /24s
// it settled.
func (n *NonMasq) SettleDir(mapped *Set24, readAt time.Time) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	active := n.settings.ActiveCIDRs()
	held := n.dir.held[active]
	if n.dir.m == nil || held == nil || !n.retired.Before(readAt.Add(-settleGrace)) {
		// Not known, or the read may have missed mappings made through
		// the retired index.
		return 0, nil
	}
	var keys []uint32
	var vals []dirBlock
	settled := 0
	for n16, b := range held {
		changed := false
		for slot := range uint32(256) {
			if BlockVerdict(&b, uint8(slot)) != blockNoMasqMapped || mapped.Has(uint32(n16)<<8|slot) {
				continue
			}
			setBlockVerdict(&b, uint8(slot), blockNoMasq)
			changed = true
			settled++
		}
		if changed {
			keys = append(keys, uint32(active)<<16|uint32(n16))
			vals = append(vals, b)
		}
	}
	for i := 0; i < len(keys); i += dirChunk {
		end := min(i+dirChunk, len(keys))
		if err := n.dir.put(keys[i:end], vals[i:end]); err != nil {
			n.dir.held[active] = nil
			return 0, err
		}
		for j := i; j < end; j++ {
			held[uint16(keys[j])] = vals[j]
		}
	}
	return settled, nil
}
