package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Origin says why a prefix is in the set, and so its verdict.
type Origin = loader.BPFIpmCidrOrigin

const (
	Configured = loader.BPFIpmCidrOriginIPM_CIDR_CONFIGURED // not masqueraded: nonMasqueradeCIDRs
	LinkLocal  = loader.BPFIpmCidrOriginIPM_CIDR_LINK_LOCAL // not masqueraded: link-local by default
	// Masquerade marks an exception (masqueradeCIDRs): masqueraded
	// although a shorter prefix of the set covers it.
	Masquerade = loader.BPFIpmCidrOriginIPM_CIDR_MASQUERADE
)

// CIDRSet is a set of prefixes of both families, masked, each with the
// origin that gives its verdict; for an address the longest prefix that
// contains it decides.
type CIDRSet map[netip.Prefix]Origin

// WithExceptions adds masquerade exceptions to s and returns it. An
// exception replaces the same prefix with another origin (the config
// rejects that case before it gets here).
func (s CIDRSet) WithExceptions(exceptions []netip.Prefix) CIDRSet {
	for _, p := range exceptions {
		s[p.Masked()] = Masquerade
	}
	return s
}

// Decide returns the prefix of s that decides for a (the longest that
// contains it) and whether a is masqueraded; ok is false when no prefix
// contains a, which means masqueraded.
func (s CIDRSet) Decide(a netip.Addr) (p netip.Prefix, masquerade, ok bool) {
	for bits := a.BitLen(); bits >= 0; bits-- {
		q, err := a.Prefix(bits)
		if err != nil {
			break
		}
		if o, found := s[q]; found {
			return q, o == Masquerade, true
		}
	}
	return netip.Prefix{}, true, false
}

// NewCIDRSet builds the set the datapath needs from the effective set (the
// configured prefixes plus the implied link-local ones); a prefix that is
// also in configured is marked "configured", the others "link-local".
func NewCIDRSet(configured, effective []netip.Prefix) CIDRSet {
	s := make(CIDRSet, len(effective))
	for _, p := range effective {
		s[p.Masked()] = LinkLocal
	}
	for _, p := range configured {
		if _, ok := s[p.Masked()]; ok {
			s[p.Masked()] = Configured
		}
	}
	return s
}

// Diff returns what must be written to and deleted from a trie holding old so
// that it holds new.
func Diff(old, new CIDRSet) (upsert CIDRSet, remove []netip.Prefix) {
	upsert = CIDRSet{}
	for p, o := range new {
		if oldO, ok := old[p]; !ok || oldO != o {
			upsert[p] = o
		}
	}
	for p := range old {
		if _, ok := new[p]; !ok {
			remove = append(remove, p)
		}
	}
	return upsert, remove
}

// retireGrace is how long a trie that just stopped deciding is left alone:
// a program that read the old index finishes in microseconds, so this is
// far beyond any packet still looking at it.
const retireGrace = 50 * time.Millisecond

// NonMasq owns the non-masquerade tries, two per family, and the index that
// says which of each pair decides. A new set is written into the idle tries
// and made active with one write for both families, so the datapath never
// sees a mix of two configurations.
//
// NonMasq remembers what it wrote into each pair of tries, so a new set costs
// only the writes of its difference to the idle pair, in one batch per family
// and operation where the kernel takes batches. A pair it has not written (a
// restart on pinned tries, a failed write, Forget) is read back once first.
type NonMasq struct {
	mu       sync.Mutex
	tries4   [2]*ebpf.Map
	tries6   [2]*ebpf.Map
	settings *Settings
	retired  time.Time
	// held is what each pair of tries holds, both families; nil when it is
	// not known.
	held [2]CIDRSet
	// oneByOne is set once the kernel refused a batch operation on a trie
	// (LPM tries take batches only on newer kernels): from then on every
	// prefix is written with its own system call.
	oneByOne bool
	// batchUpdate and batchDelete are the batch operations, replaceable so
	// that a test can play a kernel that refuses them.
	batchUpdate func(m *ebpf.Map, keys, values any) (int, error)
	batchDelete func(m *ebpf.Map, keys any) (int, error)
	// dir is the IPv4 /24 table in front of the tries (cidrdir.go),
	// written with each pair; dirSynced is false until this process has
	// written the active half too (cidrdir.go: syncDir).
	dir       cidrDir
	dirSynced bool
}

func NewNonMasq(d *loader.Datapath, s *Settings) *NonMasq {
	n := newNonMasq([2]*ebpf.Map{d.Maps.IpmCidr40, d.Maps.IpmCidr41}, [2]*ebpf.Map{d.Maps.IpmCidr60, d.Maps.IpmCidr61}, s)
	n.dir.m = d.Maps.IpmCidr4Dir
	return n
}

func newNonMasq(tries4, tries6 [2]*ebpf.Map, s *Settings) *NonMasq {
	return &NonMasq{
		tries4:   tries4,
		tries6:   tries6,
		settings: s,
		batchUpdate: func(m *ebpf.Map, keys, values any) (int, error) {
			return m.BatchUpdate(keys, values, nil)
		},
		batchDelete: func(m *ebpf.Map, keys any) (int, error) {
			return m.BatchDelete(keys, nil)
		},
	}
}

// Apply makes set the active non-masquerade set. NonMasq keeps a copy of set.
func (n *NonMasq) Apply(set CIDRSet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if wait := retireGrace - time.Since(n.retired); wait > 0 {
		// The idle pair decided until wait ago (two applies in quick
		// succession): a program may still be reading it.
		time.Sleep(wait)
	}
	idle := 1 - n.settings.ActiveCIDRs()
	current := n.held[idle]
	if current == nil {
		var err error
		if current, err = n.read(idle); err != nil {
			return err
		}
	}
	// Unknown until the write is complete: a failure half way leaves the
	// pair holding neither set.
	n.held[idle] = nil
	if err := n.write(idle, current, set); err != nil {
		return err
	}
	if err := n.syncDir(idle, set); err != nil {
		return err
	}
	if err := n.settings.SetActiveCIDRs(idle); err != nil {
		return err
	}
	n.retired = time.Now()
	// In effect now; the copy is off the critical path.
	n.held[idle] = maps.Clone(set)
	return nil
}

// Forget drops what NonMasq remembers of the tries, so the next Apply reads
// the idle pair back instead of trusting its own record: the periodic full
// resync repairs a trie changed behind the agent's back.
func (n *NonMasq) Forget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.held = [2]CIDRSet{}
	n.dir.forget()
}

// Active returns the set that decides now, read from the tries.
func (n *NonMasq) Active() (CIDRSet, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.read(n.settings.ActiveCIDRs())
}

// read reads pair i of the tries back.
func (n *NonMasq) read(i int) (CIDRSet, error) {
	set, err := readTrie(n.tries4[i])
	if err != nil {
		return nil, fmt.Errorf("read trie %s: %w", mapName(n.tries4[i]), err)
	}
	set6, err := readTrie(n.tries6[i])
	if err != nil {
		return nil, fmt.Errorf("read trie %s: %w", mapName(n.tries6[i]), err)
	}
	for p, o := range set6 {
		set[p] = o
	}
	return set, nil
}

// write makes pair i of the tries, which holds current, hold want: it
// deletes what want lacks first, so a trie never holds more than the larger
// of the two sets, then writes what is new or has another origin.
func (n *NonMasq) write(i int, current, want CIDRSet) error {
	var del4, del6 []netip.Prefix
	for p := range current {
		if _, ok := want[p]; ok {
			continue
		}
		if p.Addr().Is4() {
			del4 = append(del4, p)
		} else {
			del6 = append(del6, p)
		}
	}
	put4 := make([]netip.Prefix, 0, len(want))
	val4 := make([]loader.BPFIpmCidrValue, 0, len(want))
	var put6 []netip.Prefix
	var val6 []loader.BPFIpmCidrValue
	for p, o := range want {
		if old, ok := current[p]; ok && old == o {
			continue
		}
		if p.Addr().Is4() {
			put4 = append(put4, p)
			val4 = append(val4, loader.BPFIpmCidrValue{Origin: o})
		} else {
			put6 = append(put6, p)
			val6 = append(val6, loader.BPFIpmCidrValue{Origin: o})
		}
	}
	if err := deleteKeys(n, n.tries4[i], del4, cidrKey4); err != nil {
		return err
	}
	if err := deleteKeys(n, n.tries6[i], del6, cidrKey6); err != nil {
		return err
	}
	if err := putKeys(n, n.tries4[i], put4, val4, cidrKey4); err != nil {
		return err
	}
	return putKeys(n, n.tries6[i], put6, val6, cidrKey6)
}

// keysOf turns prefixes into trie keys.
func keysOf[K any](ps []netip.Prefix, key func(netip.Prefix) K) []K {
	keys := make([]K, len(ps))
	for i, p := range ps {
		keys[i] = key(p)
	}
	return keys
}

// batchRefused reports whether a batch operation failed because the kernel
// does not offer it for this map type (before LPM tries had batch
// operations the kernel answered ENOTSUPP; EINVAL is taken the same way, as
// the per-element retry names the culprit if there is one).
func batchRefused(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL)
}

// deleteKeys deletes prefixes from an idle trie: in one batch unless
// n.oneByOne, else (or when the kernel refuses the batch, which sets
// n.oneByOne) one by one. A prefix already absent is not an error.
func deleteKeys[K any](n *NonMasq, m *ebpf.Map, ps []netip.Prefix, key func(netip.Prefix) K) error {
	if len(ps) == 0 {
		return nil
	}
	keys := keysOf(ps, key)
	done := 0
	if !n.oneByOne {
		var err error
		done, err = n.batchDelete(m, keys)
		switch {
		case err == nil:
			return nil
		case batchRefused(err):
			klog.V(2).InfoS("Kernel refused a batch delete from a trie; deleting one by one", "map", mapName(m), "err", err)
			n.oneByOne, done = true, 0
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// The batch stops at a key that is gone already: go on
			// from there one by one.
		default:
			return fmt.Errorf("delete %d prefixes from idle trie %s: %w", len(ps), mapName(m), err)
		}
	}
	for i := done; i < len(keys); i++ {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s from idle trie %s: %w", ps[i], mapName(m), err)
		}
	}
	return nil
}

// putKeys writes prefixes and their values into an idle trie: in one batch
// unless n.oneByOne, else (or when the kernel refuses the batch, which sets
// n.oneByOne) one by one.
func putKeys[K any](n *NonMasq, m *ebpf.Map, ps []netip.Prefix, values []loader.BPFIpmCidrValue, key func(netip.Prefix) K) error {
	if len(ps) == 0 {
		return nil
	}
	keys := keysOf(ps, key)
	if !n.oneByOne {
		_, err := n.batchUpdate(m, keys, values)
		if err == nil {
			return nil
		}
		if !batchRefused(err) {
			return fmt.Errorf("write %d prefixes to idle trie %s: %w", len(ps), mapName(m), err)
		}
		klog.V(2).InfoS("Kernel refused a batch write to a trie; writing one by one", "map", mapName(m), "err", err)
		n.oneByOne = true
	}
	for i := range keys {
		if err := m.Put(&keys[i], &values[i]); err != nil {
			return fmt.Errorf("write %s to idle trie %s: %w", ps[i], mapName(m), err)
		}
	}
	return nil
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil {
		return info.Name
	}
	return "?"
}

func cidrKey4(p netip.Prefix) loader.BPFIpmCidr4Key {
	return loader.BPFIpmCidr4Key{Prefixlen: uint32(p.Bits()), Addr: AddrToBE(p.Addr())}
}

func cidrKey6(p netip.Prefix) loader.BPFIpmCidr6Key {
	return loader.BPFIpmCidr6Key{Prefixlen: uint32(p.Bits()), Addr: addr6ToBE(p.Addr())}
}

// readTrie reads a trie of either family: the key size tells which.
func readTrie(m *ebpf.Map) (CIDRSet, error) {
	set := CIDRSet{}
	var v loader.BPFIpmCidrValue
	it := m.Iterate()
	if m.KeySize() == uint32(binary.Size(loader.BPFIpmCidr6Key{})) {
		var k loader.BPFIpmCidr6Key
		for it.Next(&k, &v) {
			set[netip.PrefixFrom(addr6FromBE(k.Addr), int(k.Prefixlen))] = v.Origin
		}
	} else {
		var k loader.BPFIpmCidr4Key
		for it.Next(&k, &v) {
			set[netip.PrefixFrom(AddrFromBE(k.Addr), int(k.Prefixlen))] = v.Origin
		}
	}
	return set, it.Err()
}
