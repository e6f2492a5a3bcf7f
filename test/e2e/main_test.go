package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

// TestMain builds the agent once for every test of the package (as root
// only; without root every test skips). A failed build does not stop the
// harness self-check; the agent tests then fail with the build output.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		// Tests load small programs of their own (a foreign tc user);
		// 5.10 still charges BPF memory to RLIMIT_MEMLOCK.
		if err := rlimit.RemoveMemlock(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: raise RLIMIT_MEMLOCK:", err)
			return 1
		}
		dir, err := os.MkdirTemp("", "ipme-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		agentBin, agentBuildErr = buildAgent(dir)
		if agentBuildErr != nil {
			fmt.Fprintf(os.Stderr, "e2e: agent tests will fail: %v\n", agentBuildErr)
		}
	}
	return m.Run()
}
