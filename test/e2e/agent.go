package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Log lines of the agent that the harness waits for.
const (
	LogDatapathReady = "Datapath ready"         // after attach, maps filled; once per start
	LogApplied       = "Applied configuration"  // after every successful config apply
	LogRejected      = "Rejected configuration" // for every invalid config file
)

// ReadyTimeout bounds the agent's start until LogDatapathReady.
const ReadyTimeout = 30 * time.Second

// StopTimeout bounds the agent's exit after a signal.
const StopTimeout = 10 * time.Second

// AttachModes are the values of --attach-mode that every agent test runs
// with: tcx and tc, or the comma-separated list in $IPME_ATTACH_MODES (a kernel
// before 6.6 has no tcx, so `make test-kernels` sets "tc" there).
var AttachModes = attachModes()

func attachModes() []string {
	if v := os.Getenv("IPME_ATTACH_MODES"); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"tcx", "tc"}
}

// agentBin is the binary built once by TestMain; agentBuildErr says why there
// is none.
var (
	agentBin      string
	agentBuildErr = errors.New("agent binary not built (TestMain did not run as root)")
)

// buildAgent builds ./cmd/ip-masq-agent of this module into dir, or uses the
// binary named by $IPME_AGENT_BIN.
func buildAgent(dir string) (string, error) {
	if p := os.Getenv("IPME_AGENT_BIN"); p != "" {
		return p, nil
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(dir, "ip-masq-agent")
	cmd := exec.Command(goTool, "build", "-o", bin, "./cmd/ip-masq-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ip-masq-agent: %w\n%s", err, out)
	}
	return bin, nil
}

// logBuffer collects the output of every run of one agent.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// AgentOptions configure StartAgent.
type AgentOptions struct {
	Mode       string   // --attach-mode
	Config     string   // content of a fresh config file; ignored when ConfigPath is set
	ConfigPath string   // --config as given; the caller owns the file (may be a symlink)
	ExtraArgs  []string // appended to the standard flags
	Wrapper    []string // a command that execs the agent, e.g. setpriv with capability options
}

// Agent is the agent binary running in the node namespace of a topology.
type Agent struct {
	Topo       *Topology
	ConfigPath string   // --config
	BPFFS      string   // the test's own bpffs mount
	PinPath    string   // --pin-path, inside BPFFS
	Args       []string // every argument after the binary
	Wrapper    []string // runs the binary (ip netns exec NODE WRAPPER... BINARY ARGS...)
	Env        []string // added to the test's environment for the next Start

	t    testing.TB
	logs logBuffer
	runs int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // of the last run, once exited is closed
}

// requireAgent fails the test when the agent binary could not be built.
func requireAgent(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if agentBuildErr != nil {
		t.Fatalf("no agent binary: %v", agentBuildErr)
	}
}

// mountBPFFS mounts a fresh bpffs on a temporary directory of the test (in
// the test process's mount namespace, which `ip netns exec` copies for the
// agent) and unmounts it in cleanup, so that pins outlive the agent process
// but not the test.
func mountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// StartAgent mounts a bpffs, writes the config (unless opts.ConfigPath is
// set), starts the agent in tp.Node and waits for LogDatapathReady. t.Cleanup
// kills a still running agent, and logs its output when the test failed.
func StartAgent(t testing.TB, tp *Topology, opts AgentOptions) *Agent {
	t.Helper()
	requireAgent(t)
	a := &Agent{Topo: tp, t: t, ConfigPath: opts.ConfigPath, Wrapper: opts.Wrapper}
	a.BPFFS = mountBPFFS(t)
	a.PinPath = filepath.Join(a.BPFFS, "ipm")
	if a.ConfigPath == "" {
		a.ConfigPath = filepath.Join(t.TempDir(), "ip-masq-agent")
		if err := os.WriteFile(a.ConfigPath, []byte(opts.Config), 0o644); err != nil {
			t.Fatalf("write config: %v", err)
		}
	}
	a.Args = append([]string{
		"--config=" + a.ConfigPath,
		"--interfaces=" + Uplink,
		"--pin-path=" + a.PinPath,
		"--attach-mode=" + opts.Mode,
		"--v=2",
	}, opts.ExtraArgs...)
	// Registered after the bpffs mount, so it runs before the unmount.
	t.Cleanup(func() {
		if a.Running() {
			a.signal(syscall.SIGKILL)
			a.wait(StopTimeout)
		}
		if t.Failed() {
			t.Logf("agent output (%s %s):\n%s", agentBin, strings.Join(a.Args, " "), a.logs.String())
		}
	})
	a.Start(t)
	return a
}

// Start starts the agent (again) with the same arguments and waits for
// LogDatapathReady of this run.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	if a.Running() {
		t.Fatal("agent: start: already running")
	}
	a.runs++
	run := a.runs
	fmt.Fprintf(&a.logs, "=== run %d: %s\n", run, time.Now().Format(time.RFC3339Nano))
	from := a.logs.Len()
	argv := append(append([]string{"netns", "exec", a.Topo.Node.Name}, a.Wrapper...), agentBin)
	cmd := exec.Command("ip", append(argv, a.Args...)...)
	if a.Env != nil {
		cmd.Env = append(os.Environ(), a.Env...)
	}
	cmd.Stdout = &a.logs
	cmd.Stderr = &a.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("agent: start: %v", err)
	}
	exited := make(chan struct{})
	a.mu.Lock()
	a.cmd, a.exited, a.err = cmd, exited, nil
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.err = err
		a.mu.Unlock()
		fmt.Fprintf(&a.logs, "=== run %d exited: %v\n", run, err)
		close(exited)
	}()
	if err := a.WaitLog(LogDatapathReady, from, ReadyTimeout); err != nil {
		t.Fatalf("agent: start (run %d, pid %d): %v", run, cmd.Process.Pid, err)
	}
}

// Running reports whether the agent process of the last Start still runs.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.exited == nil {
		return false
	}
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// Pid is the process id of the last run (`ip netns exec` execs the agent in
// place, so this is the agent itself).
func (a *Agent) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd.Process.Pid
}

func (a *Agent) signal(sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd.Process.Signal(sig)
}

// wait waits up to timeout for the last run to exit; it reports whether it
// exited and its exit error.
func (a *Agent) wait(timeout time.Duration) (bool, error) {
	a.mu.Lock()
	exited := a.exited
	a.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-exited:
	default:
		select {
		case <-exited:
		case <-timer.C:
			return false, nil
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return true, a.err
}

// Stop sends sig (SIGTERM or SIGKILL) and waits up to StopTimeout for the
// exit; it fails the test if the agent does not exit. It returns the exit
// error (nil for exit status 0).
func (a *Agent) Stop(t testing.TB, sig syscall.Signal) error {
	t.Helper()
	if !a.Running() {
		_, err := a.wait(0)
		t.Fatalf("agent: stop: not running (exited: %v)", err)
	}
	if err := a.signal(sig); err != nil {
		t.Fatalf("agent: send %v: %v", sig, err)
	}
	start := time.Now()
	ok, err := a.wait(StopTimeout)
	if !ok {
		t.Fatalf("agent: still running %v after %v", StopTimeout, sig)
	}
	t.Logf("agent: exited %v after %v: %v", time.Since(start).Round(time.Millisecond), sig, err)
	return err
}

// Restart stops the agent with sig and starts it again.
func (a *Agent) Restart(t testing.TB, sig syscall.Signal) {
	t.Helper()
	a.Stop(t, sig)
	a.Start(t)
}

// Logs returns everything the agent wrote so far, over all runs.
func (a *Agent) Logs() string { return a.logs.String() }

// LogOffset is the current length of the logs, to pass to WaitLog as from.
func (a *Agent) LogOffset() int { return a.logs.Len() }

// WaitLog waits until substr appears in the logs after offset from. It fails
// early when the agent exits.
func (a *Agent) WaitLog(substr string, from int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		logs := a.logs.String()
		if from <= len(logs) && strings.Contains(logs[from:], substr) {
			return nil
		}
		if !a.Running() {
			_, err := a.wait(0)
			return fmt.Errorf("agent exited (%v) before logging %q", err, substr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent did not log %q within %v", substr, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// --- configuration files ---------------------------------------------------

// WriteConfigRename writes content to a new file in the directory of path and
// renames it over path (how editors and most tools replace a file).
func WriteConfigRename(t testing.TB, path, content string) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-config-")
	if err != nil {
		t.Fatalf("write config: %v", err)
	}
	if _, err := tmp.WriteString(content); err != nil {
		t.Fatalf("write config: %v", err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatalf("write config: %v", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatalf("write config: %v", err)
	}
}

// WriteConfigInPlace truncates path and writes content into the same inode,
// so a reader can briefly see an empty or partial file.
func WriteConfigInPlace(t testing.TB, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatalf("write config in place: %v", err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatalf("write config in place: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("write config in place: %v", err)
	}
}

// ConfigMapDir imitates a kubelet ConfigMap volume (its AtomicWriter):
//
//	DIR/ip-masq-agent -> ..data/ip-masq-agent
//	DIR/..data        -> ..<generation>
//	DIR/..<generation>/ip-masq-agent
//
// An update writes a new generation directory, points a temporary symlink at
// it, renames that over ..data and removes the old generation. The file's own
// name sees no event at all.
type ConfigMapDir struct {
	Dir string
	Key string // file name, "ip-masq-agent"
	gen int
}

// NewConfigMapDir creates the volume with content under a temporary directory.
func NewConfigMapDir(t testing.TB, content string) *ConfigMapDir {
	t.Helper()
	c := &ConfigMapDir{Dir: t.TempDir(), Key: "ip-masq-agent"}
	c.Update(t, content)
	if err := os.Symlink(filepath.Join("..data", c.Key), c.Path()); err != nil {
		t.Fatalf("configmap: %v", err)
	}
	return c
}

// Path is the file to pass as --config.
func (c *ConfigMapDir) Path() string { return filepath.Join(c.Dir, c.Key) }

// Update swaps in a new generation holding content.
func (c *ConfigMapDir) Update(t testing.TB, content string) {
	t.Helper()
	old := fmt.Sprintf("..%d", c.gen)
	c.gen++
	gen := fmt.Sprintf("..%d", c.gen)
	if err := os.Mkdir(filepath.Join(c.Dir, gen), 0o755); err != nil {
		t.Fatalf("configmap: %v", err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, gen, c.Key), []byte(content), 0o644); err != nil {
		t.Fatalf("configmap: %v", err)
	}
	tmp := filepath.Join(c.Dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		t.Fatalf("configmap: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(c.Dir, "..data")); err != nil {
		t.Fatalf("configmap: %v", err)
	}
	if c.gen > 1 {
		if err := os.RemoveAll(filepath.Join(c.Dir, old)); err != nil {
			t.Fatalf("configmap: %v", err)
		}
	}
}
