// Command report turns the result directories that test/kernels/run.sh
// leaves (one per kernel) into a Markdown matrix: kernel, whether each
// program loads and what the verifier counted, the tests passed and failed,
// the wall time and the VM's verdict. Failures are listed after the table.
//
//	go run ./test/kernels/report DIR...
//
// Each DIR holds meta.json (run.sh), results.jsonl (the VM's ttyS1:
// verifierstats lines and one {"suite","exit"} line per suite), prog.out and
// e2e.out (the VM's ttyS2 and ttyS3, `-test.v=test2json` streams, which `go
// tool test2json` decodes).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

type meta struct {
	Series      string `json:"series"`
	Package     string `json:"package"`
	Version     string `json:"version"`
	Modes       string `json:"modes"`
	QemuExit    int    `json:"qemu_exit"`
	Verdict     string `json:"verdict"`
	WallSeconds int    `json:"wall_seconds"`
	SMP         int    `json:"smp"`
}

// line is one line of results.jsonl: a verifierstats result or a suite exit.
type line struct {
	Program     string   `json:"program"`
	Kernel      string   `json:"kernel"`
	Insns       int      `json:"insns"`
	Loaded      bool     `json:"loaded"`
	Processed   int      `json:"processed"`
	Verified    uint32   `json:"verified"`
	TotalStates int      `json:"total_states"`
	PeakStates  int      `json:"peak_states"`
	StackDepth  string   `json:"stack_depth"`
	Error       string   `json:"error"`
	Log         []string `json:"log"`
	LogTail     []string `json:"log_tail"`

	Suite string `json:"suite"`
	Exit  *int   `json:"exit"`
}

// tally counts test results of one suite (subtests included).
type tally struct {
	ran                  bool
	pass, fail, skip     int
	failed               []string
	exit                 *int
	topPass, topFail     int
	elapsed              float64
	packageFailedWithout bool // the binary failed without a failing test (panic, timeout, build)
}

func (t tally) String() string {
	if !t.ran {
		if t.exit != nil {
			return fmt.Sprintf("no output (exit %d)", *t.exit)
		}
		return "not run"
	}
	s := fmt.Sprintf("%d passed, %d failed", t.pass, t.fail)
	if t.skip > 0 {
		s += fmt.Sprintf(", %d skipped", t.skip)
	}
	if t.packageFailedWithout {
		s += ", binary failed"
	}
	return s
}

type kernel struct {
	dir      string
	meta     meta
	progs    []line
	kernel   string
	prog     tally
	e2e      tally
	problems []string
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: report DIR...")
		os.Exit(2)
	}
	var ks []*kernel
	for _, dir := range os.Args[1:] {
		k, err := read(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		ks = append(ks, k)
	}
	write(os.Stdout, ks)
}

func read(dir string) (*kernel, error) {
	k := &kernel{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &k.meta); err != nil {
		return nil, fmt.Errorf("%s/meta.json: %w", dir, err)
	}
	exits := map[string]*int{}
	if b, err := os.ReadFile(filepath.Join(dir, "results.jsonl")); err == nil {
		for _, raw := range strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n") {
			raw = strings.TrimSpace(raw)
			if !strings.HasPrefix(raw, "{") {
				continue
			}
			var l line
			if err := json.Unmarshal([]byte(raw), &l); err != nil {
				k.problems = append(k.problems, fmt.Sprintf("results.jsonl: %v: %q", err, raw))
				continue
			}
			switch {
			case l.Program != "":
				k.progs = append(k.progs, l)
				k.kernel = l.Kernel
			case l.Suite != "":
				exits[l.Suite] = l.Exit
			}
		}
	}
	k.prog = count(filepath.Join(dir, "prog.out"), "prog")
	k.prog.exit = exits["prog"]
	k.e2e = count(filepath.Join(dir, "e2e.out"), "e2e")
	k.e2e.exit = exits["e2e"]
	for _, t := range []*tally{&k.prog, &k.e2e} {
		if t.exit != nil && *t.exit != 0 && t.fail == 0 {
			t.packageFailedWithout = true
		}
	}
	return k, nil
}

// event is one `go tool test2json` event.
type event struct {
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// count decodes a `-test.v=test2json` stream with `go tool test2json`.
func count(path, name string) tally {
	var t tally
	raw, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(raw)) == 0 {
		return t
	}
	t.ran = true
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "tool", "test2json", "-p", name)
	cmd.Stdin = bytes.NewReader(bytes.ReplaceAll(raw, []byte("\r"), nil))
	out, err := cmd.Output()
	if err != nil {
		t.packageFailedWithout = true
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if e.Test == "" {
			if e.Action == "pass" || e.Action == "fail" {
				t.elapsed = e.Elapsed
			}
			continue
		}
		top := !strings.Contains(e.Test, "/")
		switch e.Action {
		case "pass":
			t.pass++
			if top {
				t.topPass++
			}
		case "fail":
			t.fail++
			t.failed = append(t.failed, e.Test)
			if top {
				t.topFail++
			}
		case "skip":
			t.skip++
		}
	}
	return t
}

func write(w *os.File, ks []*kernel) {
	// Program names, in a stable order, over every kernel.
	names := map[string]bool{}
	for _, k := range ks {
		for _, p := range k.progs {
			names[p.Program] = true
		}
	}
	var progs []string
	for n := range names {
		progs = append(progs, n)
	}
	sort.Strings(progs)

	hdr := []string{"kernel", "Debian package", "attach modes", "builds that load"}
	for _, p := range progs {
		hdr = append(hdr, p+" insns processed")
	}
	hdr = append(hdr, "program tests (test/prog)", "end to end (test/e2e)", "wall time", "verdict")
	fmt.Fprintf(w, "| %s |\n", strings.Join(hdr, " | "))
	fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(hdr)))
	for _, k := range ks {
		kern := k.kernel
		if kern == "" {
			kern = k.meta.Series
		}
		// Which builds of the object (loader/variant.go) loaded whole.
		loads := "not run"
		if len(k.progs) > 0 {
			var builds []string
			for _, b := range []string{"helpers", "kern-ctx"} {
				ok, seen := true, false
				for _, p := range k.progs {
					if strings.HasSuffix(p.Program, "("+b+")") {
						seen = true
						ok = ok && p.Loaded
					}
				}
				if seen && ok {
					builds = append(builds, b)
				}
			}
			loads = strings.Join(builds, ", ")
			if len(builds) == 0 {
				loads = "**no**"
			}
		}
		row := []string{kern, k.meta.Package + " " + k.meta.Version, strings.ReplaceAll(k.meta.Modes, ",", ", "), loads}
		for _, name := range progs {
			cell := "-"
			for _, p := range k.progs {
				if p.Program != name {
					continue
				}
				if !p.Loaded && p.Processed == 0 {
					cell = "not loaded"
					break
				}
				if !p.Loaded {
					cell = fmt.Sprintf("rejected after %d", p.Processed)
					break
				}
				cell = fmt.Sprintf("%d (of %d; %d states, stack %s)", p.Processed, p.Insns, p.TotalStates, p.StackDepth)
			}
			row = append(row, cell)
		}
		row = append(row, k.prog.String(), k.e2e.String(),
			fmt.Sprintf("%dm%02ds", k.meta.WallSeconds/60, k.meta.WallSeconds%60), k.meta.Verdict)
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}

	for _, k := range ks {
		var notes []string
		for _, p := range k.progs {
			if p.Loaded {
				continue
			}
			notes = append(notes, fmt.Sprintf("%s rejected: %s", p.Program, p.Error))
			if len(p.Log) > 0 {
				notes = append(notes, "verifier log (statistics level):\n\n    "+strings.Join(p.Log, "\n    ")+"\n")
			}
			if len(p.LogTail) > 0 {
				notes = append(notes, "end of the verifier log:\n\n    "+strings.Join(p.LogTail, "\n    ")+"\n")
			}
		}
		for _, s := range []struct {
			name string
			t    tally
		}{{"program tests", k.prog}, {"end to end", k.e2e}} {
			if len(s.t.failed) > 0 {
				notes = append(notes, fmt.Sprintf("%s failed: %s", s.name, strings.Join(s.t.failed, ", ")))
			}
			if s.t.packageFailedWithout {
				notes = append(notes, fmt.Sprintf("%s: the test binary failed without a failing test (see %s)", s.name, k.dir))
			}
		}
		notes = append(notes, k.problems...)
		if len(notes) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s %s):\n\n", k.meta.Series, k.meta.Package, k.meta.Version)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}
