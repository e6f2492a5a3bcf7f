package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The x_tables ABI (linux/netfilter/x_tables.h, netfilter_ipv4/ip_tables.h,
// netfilter_ipv6/ip6_tables.h) as laid out on 64-bit kernels, the only ones
// this agent runs on. iptables-legacy changes a table the same way: it reads
// the whole table with IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES, edits the
// blob, writes it back with IPT_SO_SET_REPLACE and restores the counters
// with IPT_SO_SET_ADD_COUNTERS.
const (
	soGetInfo        = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	soGetEntries     = 65 // IPT_SO_GET_ENTRIES
	soSetReplace     = 64 // IPT_SO_SET_REPLACE
	soSetAddCounters = 65 // IPT_SO_SET_ADD_COUNTERS

	tableNameLen    = 32 // XT_TABLE_MAXNAMELEN
	numHooks        = 5  // NF_INET_NUMHOOKS
	hookPostrouting = 4  // NF_INET_POST_ROUTING

	getInfoSize     = tableNameLen + 4 + 2*numHooks*4 + 4 + 4 // struct ipt_getinfo
	getEntriesHdr   = 40                                      // struct ipt_get_entries, padded for its u64 counters
	replaceHdr      = 96                                      // struct ipt_replace, with its counters pointer at 88
	countersInfoHdr = 40                                      // struct xt_counters_info
	counterSize     = 16                                      // struct xt_counters

	targetHdr      = 32 // struct xt_entry_target up to its data: u16 size, name[29], u8 revision
	matchHdr       = 32 // struct xt_entry_match, same layout
	standardTarget = ""
	errorTarget    = "ERROR"

	// Verdicts of a standard target that are not jumps (XT_RETURN and
	// -NF_verdict-1); a jump is the byte offset of its target in the table.
	verdictDrop   = -1
	verdictAccept = -2
	verdictQueue  = -4
	verdictReturn = -5

	natRandomFully = 0x10 // NF_NAT_RANGE_PROTO_RANDOM_FULLY

	invSrcIP = 0x08 // IPT_INV_SRCIP, IP6T_INV_SRCIP
	invDstIP = 0x10 // IPT_INV_DSTIP, IP6T_INV_DSTIP
)

var hookNames = [numHooks]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

var native = binary.NativeEndian

// xtFamily is where the fields of struct ipt_entry or ip6t_entry are.
type xtFamily struct {
	family    Family
	procNames string // file in /proc/net listing the family's tables
	domain    int
	level     int
	entrySize int // sizeof(struct ipt_entry): the matches start here
	addrLen   int
	srcAt     int // ip.src; dst, smsk and dmsk follow at addrLen steps
	flagsAt   int
	invAt     int
	gotoFlag  byte // IPT_F_GOTO, IP6T_F_GOTO
	// targetOffAt is the offset of target_offset (after the ip header and
	// nfcache); next_offset follows it.
	targetOffAt int
}

// targetOffsetAt is the offset of target_offset; next_offset follows it.
func (f *xtFamily) targetOffsetAt() int { return f.targetOffAt }

var xtFamilies = map[Family]*xtFamily{
	IPv4: {family: IPv4, procNames: "ip_tables_names", domain: unix.AF_INET, level: unix.SOL_IP,
		entrySize: 112, addrLen: 4, srcAt: 0, flagsAt: 82, invAt: 83, gotoFlag: 0x02, targetOffAt: 88},
	IPv6: {family: IPv6, procNames: "ip6_tables_names", domain: unix.AF_INET6, level: unix.SOL_IPV6,
		entrySize: 168, addrLen: 16, srcAt: 0, flagsAt: 131, invAt: 132, gotoFlag: 0x04, targetOffAt: 140},
}

// Legacy is the iptables-legacy (x_tables) backend.
type Legacy struct {
	// ProcNet is where ip_tables_names is read: the network namespace of
	// the calling thread by default.
	ProcNet string
	// LockFile is the lock that iptables-legacy and kube-proxy take; empty
	// means $XTABLES_LOCKFILE or /run/xtables.lock.
	LockFile    string
	LockTimeout time.Duration
}

// NewLegacy returns the backend for the calling thread's network namespace.
func NewLegacy() *Legacy {
	return &Legacy{ProcNet: "/proc/thread-self/net", LockTimeout: 10 * time.Second}
}

// Name implements Backend.
func (l *Legacy) Name() string { return BackendLegacy }

// Remove implements Backend. It opens the nat table only when the kernel
// already lists it: asking for a table that does not exist would create it.
func (l *Legacy) Remove(family Family, chain string) (*Removal, error) {
	f := xtFamilies[family]
	names, err := os.ReadFile(filepath.Join(l.ProcNet, f.procNames))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s (the kernel's x_tables for %s are not loaded)", ErrUnavailable, f.procNames, family)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.procNames, err)
	}
	if !slices.Contains(strings.Fields(string(names)), NATTable) {
		return nil, fmt.Errorf("%w: %s does not list a %s table", ErrUnavailable, f.procNames, NATTable)
	}
	if strconv.IntSize != 64 {
		return nil, fmt.Errorf("%w: the x_tables layout is only known here for 64-bit kernels", ErrUnavailable)
	}

	unlock, err := l.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	// Any inet socket reaches the x_tables socket options, which need
	// CAP_NET_ADMIN; a UDP one (unlike iptables' raw one) needs no
	// CAP_NET_RAW.
	fd, err := unix.Socket(f.domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(fd)

	// The kernel refuses a replace with EAGAIN when the table changed size
	// since it was read (another writer without the lock): read it again.
	for attempt := 1; ; attempt++ {
		r, err := removeOnce(fd, f, chain)
		if errors.Is(err, unix.EAGAIN) && attempt < 3 {
			continue
		}
		return r, err
	}
}

func removeOnce(fd int, f *xtFamily, chain string) (*Removal, error) {
	info, blob, err := readTable(fd, f, NATTable)
	if err != nil {
		return nil, err
	}
	t, err := parseTable(f, info, blob)
	if err != nil {
		return nil, err
	}
	p, err := t.plan(chain)
	if err != nil || p == nil {
		return nil, err
	}
	next, err := t.rebuild(p.remove)
	if err != nil {
		return nil, err
	}
	old, err := replaceTable(fd, f, next, info.numEntries)
	if err != nil {
		return nil, fmt.Errorf("replace the %s table: %w", NATTable, err)
	}
	// The kernel zeroes the counters of a new table; give every kept rule
	// back what it had counted, as iptables-legacy does.
	if err := addCounters(fd, f, NATTable, next.counters(old)); err != nil {
		klog.V(2).InfoS("Could not restore the counters of the iptables-legacy nat table", "family", f.family, "err", err)
	}
	r := &Removal{Backend: BackendLegacy, Family: f.family, Chain: chain}
	for _, i := range p.jumps {
		r.Jumps = append(r.Jumps, t.render(i))
	}
	for _, i := range p.rules {
		r.Rules = append(r.Rules, t.render(i))
	}
	return r, nil
}

// lock takes the xtables lock if the file can be opened (a container sees
// the node's only when /run/xtables.lock is mounted into it).
func (l *Legacy) lock() (func(), error) {
	path := l.LockFile
	if path == "" {
		path = os.Getenv("XTABLES_LOCKFILE")
	}
	if path == "" {
		path = "/run/xtables.lock"
	}
	file, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		klog.V(2).InfoS("Changing the iptables-legacy nat table without the xtables lock", "lockFile", path, "err", err)
		return func() {}, nil
	}
	deadline := time.Now().Add(l.LockTimeout)
	for {
		err := unix.Flock(int(file.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { file.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			file.Close()
			return nil, fmt.Errorf("take the xtables lock %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// xtInfo is struct ipt_getinfo.
type xtInfo struct {
	validHooks uint32
	hookEntry  [numHooks]uint32
	underflow  [numHooks]uint32
	numEntries uint32
	size       uint32
}

func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

func setsockopt(fd, level, opt int, buf []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// readTable reads a table's header and entries.
func readTable(fd int, f *xtFamily, name string) (xtInfo, []byte, error) {
	var info xtInfo
	buf := make([]byte, getInfoSize)
	copy(buf, name)
	if err := getsockopt(fd, f.level, soGetInfo, buf); err != nil {
		return info, nil, fmt.Errorf("read the %s table's header: %w", name, err)
	}
	info.validHooks = native.Uint32(buf[32:])
	for h := range numHooks {
		info.hookEntry[h] = native.Uint32(buf[36+4*h:])
		info.underflow[h] = native.Uint32(buf[56+4*h:])
	}
	info.numEntries = native.Uint32(buf[76:])
	info.size = native.Uint32(buf[80:])

	ents := make([]byte, getEntriesHdr+int(info.size))
	copy(ents, name)
	native.PutUint32(ents[tableNameLen:], info.size)
	if err := getsockopt(fd, f.level, soGetEntries, ents); err != nil {
		return info, nil, fmt.Errorf("read the %s table's entries: %w", name, err)
	}
	return info, ents[getEntriesHdr:], nil
}

// newTable is a table to write: its entries and where its hooks start.
type newTable struct {
	info    xtInfo
	blob    []byte
	fromOld []int // index of each new entry in the old table
}

// counters maps the old table's counters (in entry order) to the new one.
func (n *newTable) counters(old []byte) []byte {
	out := make([]byte, counterSize*len(n.fromOld))
	for i, o := range n.fromOld {
		if (o+1)*counterSize <= len(old) {
			copy(out[i*counterSize:], old[o*counterSize:(o+1)*counterSize])
		}
	}
	return out
}

// replaceTable writes the new table and returns the old one's counters.
func replaceTable(fd int, f *xtFamily, n *newTable, oldEntries uint32) ([]byte, error) {
	counters := make([]byte, counterSize*int(oldEntries))
	buf := make([]byte, replaceHdr+len(n.blob))
	copy(buf, NATTable)
	native.PutUint32(buf[32:], n.info.validHooks)
	native.PutUint32(buf[36:], n.info.numEntries)
	native.PutUint32(buf[40:], n.info.size)
	for h := range numHooks {
		native.PutUint32(buf[44+4*h:], n.info.hookEntry[h])
		native.PutUint32(buf[64+4*h:], n.info.underflow[h])
	}
	// num_counters must be the old table's number of entries: the kernel
	// refuses the replace when another writer changed it meanwhile.
	native.PutUint32(buf[84:], oldEntries)
	native.PutUint64(buf[88:], uint64(uintptr(unsafe.Pointer(&counters[0]))))
	copy(buf[replaceHdr:], n.blob)
	err := setsockopt(fd, f.level, soSetReplace, buf)
	runtime.KeepAlive(counters)
	return counters, err
}

func addCounters(fd int, f *xtFamily, name string, counters []byte) error {
	buf := make([]byte, countersInfoHdr+len(counters))
	copy(buf, name)
	native.PutUint32(buf[tableNameLen:], uint32(len(counters)/counterSize))
	copy(buf[countersInfoHdr:], counters)
	return setsockopt(fd, f.level, soSetAddCounters, buf)
}

// xtEntry is one rule of a table (or a chain head, a chain's policy or
// RETURN, or the table's end).
type xtEntry struct {
	off, size int
	target    string // standardTarget, errorTarget or an extension's name
	verdict   int32  // of a standard target
	errName   string // of an ERROR target: the user chain it heads, or "ERROR" at the end
	chain     string // the chain the entry belongs to
}

// xtTable is a parsed table.
type xtTable struct {
	fam     *xtFamily
	info    xtInfo
	blob    []byte
	entries []xtEntry
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// parseTable checks the layout of every entry before anything relies on it.
func parseTable(f *xtFamily, info xtInfo, blob []byte) (*xtTable, error) {
	if int(info.size) != len(blob) {
		return nil, fmt.Errorf("table size %d, but %d bytes read", info.size, len(blob))
	}
	t := &xtTable{fam: f, info: info, blob: blob}
	starts := map[int]string{}
	for h := range numHooks {
		if info.validHooks&(1<<h) != 0 {
			starts[int(info.hookEntry[h])] = hookNames[h]
		}
	}
	chain := ""
	for off := 0; off < len(blob); {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("malformed entry at offset %d: %s", off, fmt.Sprintf(format, args...))
		}
		if len(blob)-off < f.entrySize {
			return nil, bad("%d bytes left, an entry has %d", len(blob)-off, f.entrySize)
		}
		e := blob[off:]
		tOff := int(native.Uint16(e[f.targetOffsetAt():]))
		next := int(native.Uint16(e[f.targetOffsetAt()+2:]))
		if next < f.entrySize || next%8 != 0 || next > len(e) || tOff < f.entrySize || tOff+targetHdr > next {
			return nil, bad("target_offset %d, next_offset %d", tOff, next)
		}
		tSize := int(native.Uint16(e[tOff:]))
		if tSize < targetHdr || tOff+tSize > next {
			return nil, bad("target size %d", tSize)
		}
		ent := xtEntry{off: off, size: next, target: cstring(e[tOff+2 : tOff+31])}
		switch ent.target {
		case standardTarget:
			if tSize < targetHdr+4 {
				return nil, bad("standard target of %d bytes", tSize)
			}
			ent.verdict = int32(native.Uint32(e[tOff+targetHdr:]))
		case errorTarget:
			ent.errName = cstring(e[tOff+targetHdr : tOff+tSize])
			chain = ent.errName
		}
		if name, ok := starts[off]; ok {
			chain = name
		}
		ent.chain = chain
		t.entries = append(t.entries, ent)
		off += next
	}
	if len(t.entries) != int(info.numEntries) {
		return nil, fmt.Errorf("%d entries, the header says %d", len(t.entries), info.numEntries)
	}
	if last := t.entries[len(t.entries)-1]; last.target != errorTarget || last.errName != errorTarget {
		return nil, errors.New("the table does not end with its ERROR entry")
	}
	return t, nil
}

// plan is what to remove: entry indexes.
type plan struct {
	remove map[int]bool
	jumps  []int // POSTROUTING rules that jump to the chain
	rules  []int // the chain's rules, without its head and its RETURN
}

// plan finds the user chain and the POSTROUTING rules that jump to it. It
// returns nil when the chain is absent, and an error (changing nothing)
// when a rule elsewhere still jumps to it.
func (t *xtTable) plan(chain string) (*plan, error) {
	last := len(t.entries) - 1
	head := slices.IndexFunc(t.entries[:last], func(e xtEntry) bool {
		return e.target == errorTarget && e.errName == chain
	})
	if head < 0 {
		return nil, nil
	}
	end := head + 1
	for t.entries[end].target != errorTarget {
		end++
	}
	if ret := t.entries[end-1]; end-1 == head || ret.target != standardTarget || ret.verdict != verdictReturn {
		return nil, fmt.Errorf("chain %s does not end with its RETURN entry", chain)
	}
	p := &plan{remove: map[int]bool{}}
	for i := head; i < end; i++ {
		p.remove[i] = true
		if i != head && i != end-1 {
			p.rules = append(p.rules, i)
		}
	}
	lo, hi := t.entries[head].off, t.entries[end].off
	post := t.info.validHooks&(1<<hookPostrouting) != 0
	for i, e := range t.entries {
		if p.remove[i] || e.target != standardTarget || e.verdict < 0 || int(e.verdict) < lo || int(e.verdict) >= hi {
			continue
		}
		if !post || e.chain != PostroutingChain || e.off == int(t.info.underflow[hookPostrouting]) {
			return nil, fmt.Errorf("a rule of chain %s jumps to %s (%s): left everything in place", e.chain, chain, t.render(i))
		}
		p.jumps = append(p.jumps, i)
		p.remove[i] = true
	}
	return p, nil
}

// rebuild lays the kept entries out again and moves every jump, hook entry
// and underflow with them. A target that was removed becomes the next kept
// entry: that is what a fall-through to a removed jump (a rule without -j
// before it) or a hook starting at a removed jump means.
func (t *xtTable) rebuild(remove map[int]bool) (*newTable, error) {
	newOff := make([]int, len(t.entries)+1)
	size := 0
	for i, e := range t.entries {
		newOff[i] = size
		if !remove[i] {
			size += e.size
		}
	}
	newOff[len(t.entries)] = size
	moved := func(old uint32) (uint32, error) {
		i, found := slices.BinarySearchFunc(t.entries, int(old), func(e xtEntry, off int) int { return e.off - off })
		if !found {
			return 0, fmt.Errorf("offset %d is not the start of an entry", old)
		}
		if newOff[i] == size {
			return 0, fmt.Errorf("offset %d leads past the last kept entry", old)
		}
		return uint32(newOff[i]), nil
	}

	n := &newTable{info: t.info, blob: make([]byte, 0, size)}
	var err error
	for h := range numHooks {
		if t.info.validHooks&(1<<h) == 0 {
			continue
		}
		if n.info.hookEntry[h], err = moved(t.info.hookEntry[h]); err != nil {
			return nil, err
		}
		if n.info.underflow[h], err = moved(t.info.underflow[h]); err != nil {
			return nil, err
		}
	}
	for i, e := range t.entries {
		if remove[i] {
			continue
		}
		start := len(n.blob)
		n.blob = append(n.blob, t.blob[e.off:e.off+e.size]...)
		n.fromOld = append(n.fromOld, i)
		if e.target == standardTarget && e.verdict >= 0 {
			v, err := moved(uint32(e.verdict))
			if err != nil {
				return nil, fmt.Errorf("rule of chain %s: %w", e.chain, err)
			}
			tOff := int(native.Uint16(n.blob[start+t.fam.targetOffsetAt():]))
			native.PutUint32(n.blob[start+tOff+targetHdr:], v)
		}
	}
	n.info.numEntries = uint32(len(n.fromOld))
	n.info.size = uint32(size)
	return n, nil
}

// render writes entry i the way iptables-save would, for the parts that
// tell rules apart in a log: addresses, matches (with comments) and target.
func (t *xtTable) render(i int) string {
	e := t.entries[i]
	f := t.fam
	raw := t.blob[e.off : e.off+e.size]
	parts := []string{"-A", e.chain}
	for k, opt := range []struct {
		flag string
		inv  byte
	}{{"-s", invSrcIP}, {"-d", invDstIP}} {
		addr := raw[f.srcAt+k*f.addrLen : f.srcAt+(k+1)*f.addrLen]
		mask := raw[f.srcAt+(k+2)*f.addrLen : f.srcAt+(k+3)*f.addrLen]
		ones := 0
		for _, b := range mask {
			ones += bits.OnesCount8(b)
		}
		if ones == 0 {
			continue
		}
		a, _ := netip.AddrFromSlice(addr)
		if raw[f.invAt]&opt.inv != 0 {
			parts = append(parts, "!")
		}
		parts = append(parts, opt.flag, netip.PrefixFrom(a, ones).String())
	}
	tOff := int(native.Uint16(raw[f.targetOffsetAt():]))
	for m := f.entrySize; m+matchHdr <= tOff; {
		size := int(native.Uint16(raw[m:]))
		if size < matchHdr || m+size > tOff {
			break
		}
		name := cstring(raw[m+2 : m+31])
		parts = append(parts, "-m", name)
		data := raw[m+matchHdr : m+size]
		switch {
		case name == "comment":
			parts = append(parts, "--comment", quote(cstring(data)))
		case name == "addrtype" && len(data) >= 8:
			// struct xt_addrtype_info (revision 0: two u32 inverts) or
			// xt_addrtype_info_v1 (flags: 1 inverts the source, 2 the
			// destination).
			src, dst, v := native.Uint16(data), native.Uint16(data[2:]), native.Uint32(data[4:])
			invSrc, invDst := v&1 != 0, v&2 != 0
			if raw[m+31] == 0 {
				invSrc, invDst = v != 0, len(data) >= 12 && native.Uint32(data[8:]) != 0
			}
			parts = append(parts, addrtypeArgs(src, dst, invSrc, invDst)...)
		}
		m += size
	}
	switch {
	case e.target != standardTarget:
		parts = append(parts, "-j", e.target)
		// MASQUERADE's range flags: struct nf_nat_ipv4_multi_range_compat
		// (a count, then the first range's flags) for IPv4, struct
		// nf_nat_range for IPv6.
		flagsAt := tOff + targetHdr
		if f.family == IPv4 {
			flagsAt += 4
		}
		if e.target == "MASQUERADE" && flagsAt+4 <= len(raw) && native.Uint32(raw[flagsAt:])&natRandomFully != 0 {
			parts = append(parts, "--random-fully")
		}
	case e.verdict == verdictAccept:
		parts = append(parts, "-j", "ACCEPT")
	case e.verdict == verdictDrop:
		parts = append(parts, "-j", "DROP")
	case e.verdict == verdictReturn:
		parts = append(parts, "-j", "RETURN")
	case e.verdict == verdictQueue:
		parts = append(parts, "-j", "QUEUE")
	case int(e.verdict) == e.off+e.size:
		// falls through to the next rule: no target
	default:
		flag := "-j"
		if raw[f.flagsAt]&f.gotoFlag != 0 {
			flag = "-g"
		}
		parts = append(parts, flag, t.chainAt(int(e.verdict)))
	}
	return strings.Join(parts, " ")
}

// chainAt names the chain that an entry offset belongs to.
func (t *xtTable) chainAt(off int) string {
	i, found := slices.BinarySearchFunc(t.entries, off, func(e xtEntry, off int) int { return e.off - off })
	if !found {
		return fmt.Sprintf("offset-%d", off)
	}
	return t.entries[i].chain
}
