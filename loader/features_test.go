package loader

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The kernel floor is 5.10 (docs/behaviour.md §16). This test reads the embedded object
// without loading it (no privileges) and fails on anything the object uses
// that 5.10 does not have. It is a static check; `make test-kernels` proves
// the same by loading and running the object on a real 5.10.

// lastHelper510 is the last helper that Linux 5.10 has: helper IDs grow by
// one per helper (include/uapi/linux/bpf.h), and bpf_redirect_peer (155) is
// the last one of 5.10. The next, bpf_task_storage_get (156), is 5.11.
const lastHelper510 = asm.FnRedirectPeer

// lastMapType510 is the last map type of Linux 5.10
// (BPF_MAP_TYPE_INODE_STORAGE, 28); task storage (29) is 5.11.
const lastMapType510 = ebpf.InodeStorage

// newerHelpers names the helpers that docs/behaviour.md §16 warns about and the kernel
// that added them, for a clearer message than "newer than 5.10".
var newerHelpers = map[asm.BuiltinFunc]string{
	asm.FnCheckMtu:         "5.12",
	asm.FnForEachMapElem:   "5.13",
	asm.FnTimerInit:        "5.15",
	asm.FnTimerSetCallback: "5.15",
	asm.FnTimerStart:       "5.15",
	asm.FnTimerCancel:      "5.15",
	asm.FnLoop:             "5.17",
}

// kernelFloorViolations lists every instruction of prog that needs a kernel
// newer than 5.10, and records the helpers it calls in helpers.
func kernelFloorViolations(prog *ebpf.ProgramSpec, helpers map[asm.BuiltinFunc]bool) []string {
	var bad []string
	for i, ins := range prog.Instructions {
		at := func(format string, a ...any) {
			bad = append(bad, fmt.Sprintf("%s insn %d (%v): %s", prog.Name, i, ins, fmt.Sprintf(format, a...)))
		}
		op := ins.OpCode
		switch {
		case ins.IsKfuncCall():
			at("kfunc call (5.13+)")
		case ins.IsBuiltinCall():
			fn := asm.BuiltinFunc(ins.Constant)
			helpers[fn] = true
			if v, ok := newerHelpers[fn]; ok {
				at("helper %v is %s+", fn, v)
			} else if fn > lastHelper510 {
				at("helper %v is newer than 5.10", fn)
			}
		case ins.IsLoadOfFunctionPointer():
			at("callback function pointer (5.13+, bpf_loop / for_each / timers)")
		case op.Class() == asm.StXClass && op.Mode() == asm.AtomicMode:
			// Only BPF_ADD without BPF_FETCH (the old XADD) predates 5.12.
			if a := op.AtomicOp(); a != asm.AddAtomic {
				at("atomic %v is 5.12+ (a used __sync_fetch_and_add result, xchg or cmpxchg)", a)
			}
		case op.Class() == asm.LdXClass && op.Mode() == asm.MemSXMode:
			at("sign-extending load (cpu v4, 6.6+)")
		case op.Class().IsALU() && ins.Offset != 0 &&
			(op.ALUOp() == asm.Div || op.ALUOp() == asm.Mod || op.ALUOp() == asm.Mov):
			at("signed division or sign-extending move (cpu v4, 6.6+)")
		case op.Class() == asm.ALU64Class && op.ALUOp() == asm.Swap:
			at("unconditional byte swap (cpu v4, 6.6+)")
		case op.Class() == asm.Jump32Class && op.JumpOp() == asm.Ja:
			at("32-bit offset jump gotol (cpu v4, 6.6+)")
		}
	}
	return bad
}

// mapTypeViolations checks a map (and an inner map) against 5.10.
func mapTypeViolations(m *ebpf.MapSpec) []string {
	var bad []string
	if m.Type > lastMapType510 {
		bad = append(bad, fmt.Sprintf("map %s: type %v is newer than 5.10", m.Name, m.Type))
	}
	if m.InnerMap != nil {
		bad = append(bad, mapTypeViolations(m.InnerMap)...)
	}
	return bad
}

func TestKernelFloor(t *testing.T) {
	spec, err := LoadBPF()
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	helpers := map[asm.BuiltinFunc]bool{}
	var progs []string
	for name, p := range spec.Programs {
		progs = append(progs, fmt.Sprintf("%s (%v, %d insns)", name, p.Type, len(p.Instructions)))
		if p.Type != ebpf.SchedCLS {
			bad = append(bad, fmt.Sprintf("program %s: type %v, want SchedCLS (attachable by cls_bpf on 5.10)", name, p.Type))
		}
		bad = append(bad, kernelFloorViolations(p, helpers)...)
	}
	var mapTypes []string
	for name, m := range spec.Maps {
		mapTypes = append(mapTypes, fmt.Sprintf("%s: %v", name, m.Type))
		bad = append(bad, mapTypeViolations(m)...)
	}
	var helperNames []string
	for fn := range helpers {
		helperNames = append(helperNames, fn.String())
	}
	sort.Strings(progs)
	sort.Strings(helperNames)
	sort.Strings(mapTypes)
	t.Logf("programs: %s", strings.Join(progs, ", "))
	t.Logf("helpers: %s", strings.Join(helperNames, ", "))
	t.Logf("maps: %s", strings.Join(mapTypes, ", "))
	if len(helpers) == 0 || len(mapTypes) == 0 {
		t.Errorf("found %d helpers and %d maps in the object: the check saw nothing", len(helpers), len(mapTypes))
	}
	for _, b := range bad {
		t.Error(b)
	}
}

// TestKernelFloorCatchesNewer feeds the check what it must refuse, so that a
// silent pass of TestKernelFloor means something.
func TestKernelFloorCatchesNewer(t *testing.T) {
	cases := map[string]asm.Instruction{
		"bpf_loop":          asm.FnLoop.Call(),
		"bpf_check_mtu":     asm.FnCheckMtu.Call(),
		"bpf_timer_init":    asm.FnTimerInit.Call(),
		"for_each_map_elem": asm.FnForEachMapElem.Call(),
		"task storage":      asm.FnTaskStorageGet.Call(),
		"fetch add":         asm.FetchAdd.Mem(asm.R1, asm.R2, asm.DWord, 0),
		"xchg":              asm.Xchg.Mem(asm.R1, asm.R2, asm.Word, 0),
		"cmpxchg":           asm.CmpXchg.Mem(asm.R1, asm.R2, asm.DWord, 0),
		"atomic or":         asm.OrAtomic.Mem(asm.R1, asm.R2, asm.DWord, 0),
		"sign-extending ld": asm.LoadMemSX(asm.R1, asm.R2, 0, asm.Word),
		"callback pointer":  asm.Instruction{OpCode: asm.LoadImmOp(asm.DWord), Src: asm.PseudoFunc, Constant: -1},
	}
	for name, ins := range cases {
		p := &ebpf.ProgramSpec{Name: "probe", Instructions: asm.Instructions{ins, asm.Return()}}
		if got := kernelFloorViolations(p, map[asm.BuiltinFunc]bool{}); len(got) != 1 {
			t.Errorf("%s: %d violations %v, want 1", name, len(got), got)
		}
	}
	ok := asm.Instructions{
		asm.FnMapLookupElem.Call(), asm.FnRedirectPeer.Call(), asm.FnL4CsumReplace.Call(),
		asm.AddAtomic.Mem(asm.R1, asm.R2, asm.DWord, 0), asm.Return(),
	}
	if got := kernelFloorViolations(&ebpf.ProgramSpec{Name: "ok", Instructions: ok}, map[asm.BuiltinFunc]bool{}); len(got) != 0 {
		t.Errorf("5.10 instructions reported: %v", got)
	}
	if got := mapTypeViolations(&ebpf.MapSpec{Name: "m", Type: ebpf.BloomFilter}); len(got) != 1 {
		t.Errorf("bloom filter map: %v, want one violation", got)
	}
	if got := mapTypeViolations(&ebpf.MapSpec{Name: "m", Type: ebpf.ArrayOfMaps, InnerMap: &ebpf.MapSpec{Name: "in", Type: ebpf.LPMTrie}}); len(got) != 0 {
		t.Errorf("array of LPM tries: %v, want none", got)
	}
}

// TestKernCtxBuild: the kern-ctx build may go beyond 5.10 only by what it is
// for (the kfunc bpf_cast_to_kern_ctx, 6.2, and bpf_ktime_get_coarse_ns,
// 5.11); kernels without them load the helpers build instead (variant.go).
func TestKernCtxBuild(t *testing.T) {
	spec, err := LoadBPFKern()
	if err != nil {
		t.Fatal(err)
	}
	kfuncs := 0
	for _, p := range spec.Programs {
		for _, b := range kernelFloorViolations(p, map[asm.BuiltinFunc]bool{}) {
			switch {
			case strings.Contains(b, "kfunc call"):
				kfuncs++
			case strings.Contains(b, asm.FnKtimeGetCoarseNs.String()):
			default:
				t.Error(b)
			}
		}
	}
	if kfuncs == 0 {
		t.Error("the kern-ctx build calls no kfunc: it was built without IPM_KERN_CTX")
	}
	for name, m := range spec.Maps {
		if base, err := LoadBPF(); err != nil || !reflect.DeepEqual(base.Maps[name], m) {
			t.Errorf("map %s differs between the builds (%v): they share pinned maps", name, err)
		}
	}
}

// An unknown IPM_DATAPATH_VARIANT is refused before the pin directory is
// created or any map is opened.
func TestUnknownVariantTouchesNothing(t *testing.T) {
	t.Setenv(VariantEnv, "fast")
	dir := filepath.Join(t.TempDir(), "pins")
	_, err := Open(Options{PinPath: dir})
	if err == nil || !strings.Contains(err.Error(), `unknown datapath variant "fast"`) {
		t.Fatalf("Open with %s=fast: %v, want an error naming it", VariantEnv, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the pin directory exists after a refused variant: %v", err)
	}
}
