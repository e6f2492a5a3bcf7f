// Command verifierstats loads each program of the datapath object on the
// running kernel and prints one JSON line per program: whether the verifier
// accepted it and how many instructions it processed. `make test-kernels`
// runs it inside each VM; it needs root (CAP_BPF, CAP_SYS_ADMIN).
//
// Each program is loaded on its own (with fresh maps), so one rejected
// program does not hide the figures of the other. A rejected program is
// loaded again at the instruction log level and the end of that log, which
// names the failing instruction and the reason, is printed with it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Result is one program on this kernel.
type Result struct {
	Kernel  string `json:"kernel"`
	Program string `json:"program"`
	Insns   int    `json:"insns"`  // instructions in the object
	Loaded  bool   `json:"loaded"` // accepted by the verifier
	// Processed is "processed N insns" from the verifier's statistics:
	// instructions walked over all paths, the figure that the 1M limit
	// bounds (5.2+).
	Processed int `json:"processed,omitempty"`
	// Verified is bpf_prog_info.verified_insns (5.16+); 0 when absent.
	Verified    uint32   `json:"verified,omitempty"`
	TotalStates int      `json:"total_states,omitempty"`
	PeakStates  int      `json:"peak_states,omitempty"`
	StackDepth  string   `json:"stack_depth,omitempty"`
	Error       string   `json:"error,omitempty"`
	Log         []string `json:"log,omitempty"`      // statistics-level log of a rejected program: the reason
	LogTail     []string `json:"log_tail,omitempty"` // end of the instruction-level log of a rejected program
}

var (
	processedRe  = regexp.MustCompile(`processed (\d+) insns .*total_states (\d+) peak_states (\d+)`)
	processedOld = regexp.MustCompile(`processed (\d+) insns`)
	stackRe      = regexp.MustCompile(`stack depth ([0-9+]+)`)
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "verifierstats:", err)
		os.Exit(1)
	}
}

func run() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	// Both builds of the object (loader/variant.go): the helpers build
	// must load everywhere; the kern-ctx build needs 6.2 and kernel BTF, and
	// where it does not load the agent falls back, so its rejection is
	// reported but fails the run only on a kernel that should take it.
	enc := json.NewEncoder(os.Stdout)
	failed := false
	for _, b := range []struct {
		variant  loader.Variant
		spec     func() (*ebpf.CollectionSpec, error)
		required bool
	}{
		{loader.VariantHelpers, loader.LoadBPF, true},
		{loader.VariantKernCtx, loader.LoadBPFKern, kernCtxExpected(kernel)},
	} {
		spec, err := b.spec()
		if err != nil {
			return err
		}
		var names []string
		for name := range spec.Programs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			r := load(spec, name)
			r.Kernel = kernel
			r.Program = fmt.Sprintf("%s (%s)", name, b.variant)
			if !r.Loaded && b.required {
				failed = true
			}
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	}
	if failed {
		return errors.New("the verifier rejected a program")
	}
	return nil
}

// kernCtxExpected reports whether a kernel should load the kern-ctx build:
// 6.2 or newer (bpf_cast_to_kern_ctx) with BTF.
func kernCtxExpected(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return false
	}
	return major > 6 || major == 6 && minor >= 2
}

// load loads program name alone, with the maps it references.
func load(spec *ebpf.CollectionSpec, name string) Result {
	r := Result{Program: name, Insns: len(spec.Programs[name].Instructions)}
	one := spec.Copy()
	for n := range one.Programs {
		if n != name {
			delete(one.Programs, n)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		r.Error = fmt.Sprintf("%v", err)
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			// At the statistics level the log is the reason and the figures.
			r.Log = verr.Log
			r.parseStats(strings.Join(verr.Log, "\n"))
		}
		// Again with the whole log, for the failing instruction.
		_, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
			// Large enough at once: before 6.4 a full buffer keeps the
			// head of the log, and every retry verifies the program again.
			Programs: ebpf.ProgramOptions{
				LogLevel:     ebpf.LogLevelInstruction | ebpf.LogLevelBranch | ebpf.LogLevelStats,
				LogSizeStart: 256 << 20,
			},
		})
		if errors.As(err, &verr) {
			log := verr.Log
			if len(log) > 60 {
				log = log[len(log)-60:]
			}
			r.LogTail = log
		}
		return r
	}
	defer coll.Close()
	p := coll.Programs[name]
	r.Loaded = true
	r.parseStats(p.VerifierLog)
	if info, err := p.Info(); err == nil {
		r.Verified, _ = info.VerifiedInstructions()
	}
	return r
}

// parseStats reads the statistics lines that end every verifier log (also
// the log of a rejected program: how far the verifier got).
func (r *Result) parseStats(log string) {
	if m := processedRe.FindStringSubmatch(log); m != nil {
		r.Processed, _ = strconv.Atoi(m[1])
		r.TotalStates, _ = strconv.Atoi(m[2])
		r.PeakStates, _ = strconv.Atoi(m[3])
	} else if m := processedOld.FindStringSubmatch(log); m != nil {
		r.Processed, _ = strconv.Atoi(m[1])
	}
	if m := stackRe.FindStringSubmatch(log); m != nil {
		r.StackDepth = m[1]
	}
}
