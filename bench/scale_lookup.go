package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// The control of the scale phase's datapath figures: the bare hash lookup.
// The datapath costs more per packet in a table at 90 % than in one holding
// only the cycle's flows. If that difference is the kernel's hash map
// (longer bucket chains, cache and TLB misses across hundreds of MB) rather
// than the datapath's own work, a program that does nothing but look up the
// same keys in the same tables shows the same difference. This one does
// that: per run it takes the next flow of the egress cycle (a counter mod
// k), builds that flow's key on the stack exactly as putCycle writes it,
// and calls bpf_map_lookup_elem on ipm_nat4. No packet parsing, no
// rewrite, no other map; it returns TC_ACT_OK. It is run like the datapath
// (BPF_PROG_TEST_RUN, same repeats, samples interleaved with the other
// table's), so the test run's own cost is in both figures and cancels in
// their difference. The established egress path does exactly one lookup of
// ipm_nat4 per packet, so egress minus this is the rest of its work; the
// ingress path may add a second (the egress half, when a reply-half copy is
// due), which stays in its remainder.
//
// A second variant (touch) also writes the entry it found: it reads
// last_seen_ns and stores it back, a no-op in value that dirties the
// value's cache line as the datapath's touch_entry does. In the kernel's
// preallocated hash map an element is 104 bytes here (48 of header, the
// 16-byte key, the 40-byte value at offset 64), not line-aligned, so the
// value mostly lies on another cache line than the key, which the bare
// lookup never reads; this variant shows what reaching it adds in each
// table.

// lookupProg is the control program (bare, or with the write) on one env's
// NAT table, with its counter map: one entry of {runs, hits uint64}.
type lookupProg struct {
	prog *ebpf.Program
	ctr  *ebpf.Map
}

// lastSeenOff is last_seen_ns's offset in the NAT entry.
const lastSeenOff = int16(unsafe.Offsetof(loader.BPFIpmNatEntry{}.LastSeenNs))

// lookupCounters is the counter map's value.
type lookupCounters struct{ Runs, Hits uint64 }

// newLookupProg loads the program for a cycle of k egress flows in nat;
// touch: also rewrite the found entry's last_seen_ns with its own value.
func newLookupProg(nat *ebpf.Map, k int, touch bool) (*lookupProg, error) {
	if k < 2 || k > 65536 {
		return nil, fmt.Errorf("cycle of %d flows: want 2 to 65536", k)
	}
	ctr, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("bare lookup: counter map: %w", err)
	}
	// The key of cycle flow 0 as putCycle writes it; the program replaces
	// its source address (the first word) by flow i's. The other three
	// words (daddr; sport, dport; proto, dir, pad) are the same for every
	// flow of the cycle, stored as immediates in the host's layout.
	var key0 bytes.Buffer
	if err := binary.Write(&key0, binary.NativeEndian, natKey(loader.BPFIpmDirIPM_DIR_EGRESS, cycleAt(cycleEgressBase, 0), cycleServer)); err != nil || key0.Len() != 16 {
		ctr.Close()
		return nil, fmt.Errorf("bare lookup: the NAT key is %d bytes, want 16 (%v)", key0.Len(), err)
	}
	word := func(n int) int32 { return int32(binary.NativeEndian.Uint32(key0.Bytes()[4*n:])) }
	base := cycleEgressBase.As4()
	baseHost := int32(binary.BigEndian.Uint32(base[:])) // 10.244.0.0 fits in an int32

	const keyOff = -24 // the NAT key, 16 bytes at fp-24
	insns := asm.Instructions{
		// r7 = &counters (key 0 at fp-4); none: return.
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, ctr.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
		// r8 = runs; runs++.
		asm.LoadMem(asm.R8, asm.R7, 0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		// i = runs mod k; saddr = htonl(10.244.0.0 + i).
		asm.Mod.Imm(asm.R8, int32(k)),
		asm.Add.Imm(asm.R8, baseHost),
		asm.HostTo(asm.BE, asm.R8, asm.Word),
		asm.StoreMem(asm.RFP, keyOff, asm.R8, asm.Word),
		asm.StoreImm(asm.RFP, keyOff+4, int64(word(1)), asm.Word),
		asm.StoreImm(asm.RFP, keyOff+8, int64(word(2)), asm.Word),
		asm.StoreImm(asm.RFP, keyOff+12, int64(word(3)), asm.Word),
		// The lookup measured.
		asm.LoadMapPtr(asm.R1, nat.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		// A hit: hits++.
		asm.LoadMem(asm.R1, asm.R7, 8, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 8, asm.R1, asm.DWord),
	}
	if touch {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R0, lastSeenOff, asm.DWord),
			asm.StoreMem(asm.R0, lastSeenOff, asm.R1, asm.DWord))
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), // TC_ACT_OK
		asm.Return())
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		ctr.Close()
		return nil, fmt.Errorf("load the bare-lookup program: %w", err)
	}
	return &lookupProg{prog: prog, ctr: ctr}, nil
}

func (l *lookupProg) close() {
	l.prog.Close()
	l.ctr.Close()
}

func (l *lookupProg) counters() (lookupCounters, error) {
	var c lookupCounters
	err := l.ctr.Lookup(uint32(0), &c)
	return c, err
}

// run runs the program repeat times on frame (which it does not read) and
// checks that every run found its key: a miss means the keys built here
// are not the ones putCycle wrote, and the figure would time a miss.
func (l *lookupProg) run(frame []byte, repeat int) (time.Duration, error) {
	before, err := l.counters()
	if err != nil {
		return 0, err
	}
	// An interrupted run starts again from the beginning: count from there.
	ret, per, err := l.prog.Benchmark(append([]byte(nil), frame...), repeat, func() {
		if b, err := l.counters(); err == nil {
			before = b
		}
	})
	if err != nil {
		return 0, fmt.Errorf("bare lookup: test run: %w", err)
	}
	if ret != 0 {
		return 0, fmt.Errorf("bare lookup: returned %d, want TC_ACT_OK", int32(ret))
	}
	after, err := l.counters()
	if err != nil {
		return 0, err
	}
	runs, hits := after.Runs-before.Runs, after.Hits-before.Hits
	if runs != uint64(repeat) || hits != runs {
		return 0, fmt.Errorf("bare lookup: %d runs (want %d), %d hits: the program's keys are not the cycle's", runs, repeat, hits)
	}
	return per, nil
}
